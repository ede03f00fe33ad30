"""The toy world's renderer, captions, tokenizer, judge and scorers (no trained model needed)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sd_softprompt.errors import ConfigError
from sd_softprompt.models.toyworld import model as toy
from sd_softprompt.models.toyworld.judge import JudgeScorer, augment, judge, read
from sd_softprompt.models.toyworld.world import (
    ATTRIBUTE_OF_WORD,
    FILLER,
    FLAGS,
    HELD_OUT,
    LIGHTS,
    MEDIUMS,
    MISSION,
    STYLES,
    TIMES,
    UNNAMED,
    Scene,
    apply_light,
    caption,
    concise,
    mission_caption,
    named_attributes,
    random_scene,
    render,
    render_array,
    short_caption,
    token_count,
    undo_light,
    written_prompt,
)
from sd_softprompt.render.scoring import ClipScorer, Reference


def test_render_is_seeded_and_each_seed_moves_shapes():
    scene = Scene.of("sunset", "trees", "house")
    assert np.array_equal(render_array(scene, 3), render_array(scene, 3))
    assert not np.array_equal(render_array(scene, 3), render_array(scene, 4))
    assert render(scene).size == (64, 64)


@pytest.mark.parametrize("flag", FLAGS)
def test_each_attribute_changes_many_pixels(flag):
    # "visible at 64 px": adding one attribute repaints a sizeable part of the picture
    base = Scene.of("noon", *(f for f in ("mountains",) if f != flag))
    more = Scene(base.time, base.flags | {flag})
    changed = (render_array(base, 0) != render_array(more, 0)).any(-1).mean()
    assert changed > 0.03, flag


def test_the_plain_look_draws_what_the_first_model_was_trained_on():
    # sha1 of 200 random plain scenes' renders as world.py drew them before styles existed (commit 8e4167e):
    # the shipped model went on training from a model trained on exactly these pictures
    import hashlib

    rng, digest = random.Random(0), hashlib.sha1()
    for i in range(200):
        digest.update(render_array(random_scene(rng), i).tobytes())
    assert digest.hexdigest() == "d3485874ac274bfd972a74012df2cce17120fad6"


@pytest.mark.parametrize("style", STYLES[1:3] + STYLES[4:])
def test_each_style_changes_the_whole_picture_and_a_light_is_undone_exactly(style):
    base = Scene.of("noon", "lake", "trees")
    styled = Scene.of("noon", "lake", "trees", style)
    changed = (render_array(base, 0) != render_array(styled, 0)).any(-1).mean()
    assert changed > (0.9 if style in LIGHTS else 0.25), style
    x = render_array(base, 0).astype(np.float32)
    assert np.allclose(undo_light(apply_light(x, style), style), x, atol=1e-3)
    assert apply_light(x, style).max() <= 255.0 and apply_light(x, style).min() >= 0.0  # nothing clips


def test_scene_rejects_unknown_attributes_with_a_message():
    assert Scene.parse(" night, snow,house ,lake") == UNNAMED
    with pytest.raises(ValueError, match="unknown attributes"):
        Scene.parse("noon,volcano")
    with pytest.raises(ValueError, match="unknown attributes"):
        Scene.of("noon", "volcano")
    with pytest.raises(ValueError, match="exactly one time"):
        Scene.of("noon", "night")
    with pytest.raises(ValueError, match="at most one medium"):
        Scene.of("noon", "painting", "sketch")
    styled = Scene.of("night", "house", "painting", "misty")
    assert (styled.medium, styled.light, styled.key()) == ("painting", "misty", "night+house+painting+misty")
    assert styled.plain == Scene.of("night", "house") and Scene.of("noon").attributes == {"noon", "photo", "clear"}


def test_captions_name_exactly_the_scene_and_vary_in_phrasing():
    rng = random.Random(0)
    texts = {caption(MISSION, rng) for _ in range(200)}
    assert mission_caption() in texts  # the mission's own sentence is one of the phrasings
    assert len(texts) > 20
    for _ in range(200):  # the first model's phrasings: "a photo of" and "painting of" were only words then
        scene = random_scene(rng)
        named = set(named_attributes(caption(scene, rng))) - {"photo", "painting"}
        assert named == scene.attributes - {MEDIUMS[0], LIGHTS[0]}
    for _ in range(200):  # the short phrasings of the styled world say the style, "painting of" only for one
        scene = random_scene(rng, styled=0.5)
        named = set(named_attributes(short_caption(scene, rng)))
        assert scene.attributes - {MEDIUMS[0], LIGHTS[0]} <= named <= scene.attributes


def test_written_prompts_name_every_attribute_in_many_words_and_fit_the_window():
    tokenizer = toy.tokenizer()
    rng = random.Random(5)
    lengths, words = [], set()
    for _ in range(400):
        scene = random_scene(rng, styled=0.5)
        text = written_prompt(scene, rng)
        named = set(named_attributes(text))
        assert scene.attributes - {MEDIUMS[0], LIGHTS[0]} <= named <= scene.attributes, text
        assert token_count(text) == len(tokenizer(text).input_ids) - 2 <= 75, text
        lengths.append(token_count(text))
        words |= set(text.replace(",", " ").split())
    assert min(lengths) < 15 and max(lengths) > 65  # from a few tokens up to the whole window
    assert {"dawn", "dusk", "pines", "cabin", "foggy", "pencil"} <= words  # synonyms, not just the first words
    assert {"masterpiece", "highly", "artstation"} <= words
    for tag in FILLER:  # filler is filler: no tag names an attribute
        assert not set(tag.split()) & set(ATTRIBUTE_OF_WORD), tag
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"], word


def test_the_concise_restatement_names_what_the_long_prompt_names():
    for text in ("an oil painting of a cabin at dusk, distant peaks, hazy", "dawn, pines, a pond, golden light"):
        short = concise(named_attributes(text))
        assert set(named_attributes(short)) == set(named_attributes(text)) and token_count(short) < 12, short
    # a prompt that names two times: the first counts, no error
    assert concise(named_attributes("dusk, then night, pines")) == "trees at sunset"


def test_training_scenes_exclude_the_unnamed_combination_and_held_out_scenes():
    rng = random.Random(1)
    exclude = frozenset(HELD_OUT) | {UNNAMED}
    drawn = {random_scene(rng, exclude) for _ in range(3000)}
    assert not drawn & exclude
    styled = [random_scene(rng, exclude, styled=0.3) for _ in range(3000)]
    assert not {s.plain for s in styled} & exclude  # in no style either
    assert 0.4 < sum(s.medium == MEDIUMS[0] and s.light == LIGHTS[0] for s in styled) / 3000 < 0.6
    assert MISSION not in exclude


def test_tokenizer_has_every_caption_word_whole_with_real_bpe_merges():
    tokenizer = toy.tokenizer()
    rng = random.Random(2)
    words = {w for _ in range(300) for w in caption(random_scene(rng), rng).replace(",", " ").split()}
    for word in words | {"mountain", "view", "oil", "painting"}:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    assert tokenizer.tokenize("sunrisey") != ["sunrisey</w>"]  # unknown words fall back to BPE pieces
    assert len(toy.merges()) > 100
    assert toy.text_encoder(len(tokenizer)).config.eos_token_id == 2  # legacy id, as real SD checkpoints


def test_judge_reads_renders_and_augmented_renders():
    rng, noise = random.Random(3), np.random.default_rng(3)
    scenes = [random_scene(rng) for _ in range(60)]
    assert all(judge(render(s, 77 + i)) == s for i, s in enumerate(scenes))
    augmented = [judge(augment(render(s, 77 + i), noise)) == s for i, s in enumerate(scenes)]
    assert sum(augmented) >= 57


def test_judge_reads_styles_on_renders_and_augmented_renders():
    rng, noise = random.Random(6), np.random.default_rng(6)
    scenes = [random_scene(rng, styled=0.6) for _ in range(80)]
    assert sum((s.medium, s.light) != (MEDIUMS[0], LIGHTS[0]) for s in scenes) > 50
    assert all(judge(render(s, 99 + i)) == s for i, s in enumerate(scenes))
    augmented = [judge(augment(render(s, 99 + i), noise)) for i, s in enumerate(scenes)]
    assert sum(a.medium == s.medium and a.light == s.light for a, s in zip(augmented, scenes)) >= 76
    assert sum(a == s for a, s in zip(augmented, scenes)) >= 60  # misty, undone, doubles the noise: 65 now


@pytest.mark.parametrize("attribute", FLAGS + STYLES[1:3] + STYLES[4:] + ("time",))
def test_judge_tells_apart_pictures_that_differ_in_one_attribute(attribute):
    for seed in range(4):
        base = Scene.of(TIMES[seed], "mountains") if attribute != "mountains" else Scene.of(TIMES[seed], "lake")
        if attribute == "time":
            other = Scene(TIMES[(seed + 1) % 4], base.flags)
        elif attribute in STYLES:
            other = Scene.of(base.time, *base.flags, attribute)
        else:
            other = Scene(base.time, base.flags | {attribute})
        a, b = judge(render(base, seed)), judge(render(other, seed))
        assert a == base and b == other
        assert a.attributes ^ b.attributes == base.attributes ^ other.attributes


def test_judge_refuses_a_picture_of_the_wrong_shape():
    with pytest.raises(ValueError, match="64x64 RGB"):
        read(np.zeros((32, 32, 3), np.uint8))


def test_judge_scorer_is_the_share_of_reference_attributes_found():
    pictures = [render(Scene.of("sunrise", "trees", "lake"), s) for s in range(2)]
    scorer = JudgeScorer()
    assert scorer.score(pictures, Reference(attributes=("sunrise", "trees", "lake")))["F"] == 1.0
    assert scorer.score(pictures, Reference(attributes=("sunrise", "mountains")))["F"] == 0.5
    with pytest.raises(ConfigError, match="attributes"):
        scorer.score(pictures, Reference(prompt="sunrise"))


def test_clip_scorer_loads_a_clip_model_folder_and_scores_t_and_i(tiny_clip_dir):
    scorer = ClipScorer(tiny_clip_dir)
    sunrise = [render(Scene.of("sunrise", "lake"), s) for s in range(3)]
    night = [render(Scene.of("night", "house", "snow"), s) for s in range(3)]
    same = scorer.score(sunrise, Reference(prompt="sunrise lake", images=sunrise))
    other = scorer.score(sunrise, Reference(prompt="sunrise lake", images=night))
    assert same["clip_i"] > other["clip_i"]
    assert same["clip_i"] == pytest.approx(scorer.score(sunrise, Reference(images=sunrise))["clip_i"])
    assert -1.0 <= same["clip_t"] <= 1.0 and same["clip_t"] == other["clip_t"]
    assert "clip_t" not in scorer.score(sunrise, Reference(images=night))


def test_clip_scorer_says_what_is_wrong(tmp_path, tiny_clip):
    with pytest.raises(ConfigError, match="could not load a CLIPModel"):
        ClipScorer(str(tmp_path / "missing"))
    scorer = ClipScorer.from_parts(*tiny_clip())
    with pytest.raises(ConfigError, match="reference prompt"):
        scorer.score([render(Scene.of("noon"))], Reference())


def test_built_in_name_says_how_to_get_a_missing_toy_model(monkeypatch, tmp_path):
    import dataclasses

    from sd_softprompt.models.builtin import BUILTIN_MODELS
    from sd_softprompt.models.pipeline import built_in_model

    monkeypatch.setitem(BUILTIN_MODELS, "toyworld", dataclasses.replace(BUILTIN_MODELS["toyworld"], folder=tmp_path))
    with pytest.raises(ConfigError, match="train_toyworld.py"):
        built_in_model("toyworld")
    assert built_in_model("some/model") == "some/model"


def test_is_toyworld_reads_the_trainers_mark_in_the_pipeline_folder(tmp_path):
    from types import SimpleNamespace

    def pipe_from(folder):
        return SimpleNamespace(config=SimpleNamespace(_name_or_path=str(folder)))

    assert not toy.is_toyworld(pipe_from(tmp_path))
    (tmp_path / "toyworld.json").write_text("{}", "utf-8")
    assert toy.is_toyworld(pipe_from(tmp_path))
    assert not toy.is_toyworld(SimpleNamespace())


def test_negative_prompts_get_the_toy_worlds_own_positives_and_other_models_keep_theirs(tmp_path):
    from pathlib import Path
    from types import SimpleNamespace

    from sd_softprompt.models.toyworld.world import (
        NEGATIVE_EVAL_POSITIVES,
        NEGATIVE_TRAIN_POSITIVES,
        captions_vocabulary,
    )
    from sd_softprompt.train.measure import EVAL_POSITIVES
    from sd_softprompt.train.objectives import TRAIN_POSITIVES, positives_for

    (tmp_path / "toyworld.json").write_text("{}", "utf-8")
    toy_pipe = SimpleNamespace(config=SimpleNamespace(_name_or_path=str(tmp_path)))
    assert positives_for(toy_pipe).train == list(NEGATIVE_TRAIN_POSITIVES)
    assert positives_for(toy_pipe).eval == list(NEGATIVE_EVAL_POSITIVES)
    other = positives_for(SimpleNamespace())
    assert other.train == TRAIN_POSITIVES and other.eval == EVAL_POSITIVES
    # held out, in the captions' words, leaving the model room: no time of day named
    assert not set(NEGATIVE_TRAIN_POSITIVES) & set(NEGATIVE_EVAL_POSITIVES)
    negative = (Path(__file__).resolve().parents[2] / "samples" / "toyworld_negative_prompt.txt").read_text()
    vocabulary = set(captions_vocabulary())
    for text in (*NEGATIVE_TRAIN_POSITIVES, *NEGATIVE_EVAL_POSITIVES, negative):
        assert set(text.replace(",", " ").split()) <= vocabulary, text
    for positive in (*NEGATIVE_TRAIN_POSITIVES, *NEGATIVE_EVAL_POSITIVES):
        assert not set(named_attributes(positive)) & set(TIMES + named_attributes(negative)), positive
