"""Long prompts: chunked as A1111 / ComfyUI encode them, and distilled into one window."""

import pytest
import torch

from sd_softprompt.families import CHUNK, chunk_token_ids, detect_family, fits_window
from sd_softprompt.models import tiny

# 24 clauses, about 150 tokens on the tiny tokenizers: two CLIP windows' worth
LONG = ", ".join(
    [
        "image of serene landscape at sunrise",
        "tall mountains and a calm lake",
        "golden light over misty hills",
        "old stone bridge near a river",
        "red house with a small garden",
        "flowers in a green field",
        "clouds in a bright blue sky",
        "a horse and a dog on the road",
        "snow on the mountain",
        "highly detailed oil painting",
        "cinematic lighting",
        "vivid colorful masterpiece",
        "trees and rocks in the valley",
        "a castle on a hill",
        "birds over the water",
        "soft morning light",
        "a quiet street in the city",
        "a cat near the house",
        "stars and the moon at night",
        "rain over the sea",
        "a woman with brown hair",
        "a small boat on the ocean",
        "purple and orange flowers",
        "watercolor and pencil sketch style",
    ]
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.clip_tokenizer()


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_chunks_follow_a1111(tokenizer):
    cat, dog = ids(tokenizer, "cat")[0], ids(tokenizer, "dog")[0]
    comma = tokenizer.get_vocab()[",</w>"]
    # a prompt that fits is one chunk; the empty prompt is one empty chunk
    assert chunk_token_ids(tokenizer, "cat dog") == [[cat, dog]]
    assert chunk_token_ids(tokenizer, "") == [[]]
    # 150 tokens without commas: two full chunks; one more token opens a third
    assert [len(c) for c in chunk_token_ids(tokenizer, " ".join(["cat"] * 150))] == [CHUNK, CHUNK]
    assert [len(c) for c in chunk_token_ids(tokenizer, " ".join(["cat"] * 151))] == [CHUNK, CHUNK, 1]
    # a comma within 20 tokens of a full chunk's end: the words after it move to the next chunk
    near = chunk_token_ids(tokenizer, " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10))
    assert near == [[cat] * 70 + [comma], [dog] * 10]
    # a comma further back: the chunk is cut at 75 tokens
    far = chunk_token_ids(tokenizer, " ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 30))
    assert [len(c) for c in far] == [CHUNK, 6] and far[0][50] == comma
    # BREAK ends a chunk
    assert chunk_token_ids(tokenizer, "cat BREAK dog") == [[cat], [dog]]
    assert chunk_token_ids(tokenizer, "BREAK dog") == [[], [dog]]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sd3", "flux"])
def test_long_encoding_is_the_pipelines_for_short_prompts_and_chunked_for_long(family):
    pipe = tiny.BUILDERS[family]()
    fam = detect_family(pipe)
    with torch.no_grad():
        short = "image of serene landscape at sunrise"
        a, b = fam.encode(pipe, [short]), fam.encode_long(pipe, [short])
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
        assert not fits_window(pipe, fam, LONG) and fits_window(pipe, fam, short)
        cut, full = fam.encode(pipe, [LONG]), fam.encode_long(pipe, [LONG])
    assert full["states"].shape[1] > cut["states"].shape[1]
    if family == "sd3":  # chunked CLIP states, then T5's (uncut)
        clip = 77 * len(chunk_token_ids(pipe.tokenizer, LONG))
        t5 = fam.encode_long(pipe, [LONG])["states"].shape[1] - clip
        assert t5 == len(pipe.tokenizer_3(LONG).input_ids) > pipe.tokenizer_3.model_max_length
    if family in ("flux", "sd3"):
        return  # T5 sees the whole prompt at once: no chunks (checked above: longer states)
    n = len(ids(getattr(pipe, fam.encoders[-1].tokenizer), LONG))
    chunks = full["states"].shape[1] // 77
    assert full["states"].shape[1] == 77 * chunks and chunks == len(chunk_token_ids(pipe.tokenizer, LONG)) >= 2
    assert n > CHUNK
    # each chunk is encoded on its own: the second chunk's states are the encoding of its tokens alone
    second = pipe.tokenizer.decode(chunk_token_ids(pipe.tokenizer, LONG)[1])
    with torch.no_grad():
        alone = fam.encode(pipe, [second])["states"]
    torch.testing.assert_close(full["states"][:, 77:154], alone, rtol=0, atol=1e-5)
    if "pooled" in cut:  # pooled from the first chunk, as A1111 and ComfyUI take it
        first = pipe.tokenizer.decode(chunk_token_ids(pipe.tokenizer, LONG)[0])
        with torch.no_grad():
            torch.testing.assert_close(full["pooled"], fam.encode(pipe, [first])["pooled"], rtol=0, atol=1e-5)


def test_batch_pads_with_empty_chunks():
    pipe = tiny.build_sd(1)
    fam = detect_family(pipe)
    with torch.no_grad():
        both = fam.encode_long(pipe, [LONG, "a cat"])["states"]
        cat = fam.encode(pipe, ["a cat"])["states"]
        empty = fam.encode(pipe, [""])["states"]
    assert both.shape[0] == 2 and both.shape[1] > 77
    torch.testing.assert_close(both[1:, :77], cat, rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1:, 77:154], empty, rtol=0, atol=1e-5)


def long_config(tmp_path, **kw):
    from sd_softprompt.train import TrainConfig

    base = dict(
        model="tiny-sd1",
        out=str(tmp_path / "long.safetensors"),
        vectors=8,
        steps=80,
        progress=False,
        probe_size=64,
        eval_samples=6,
        checkpoint_every=0,
    )
    return TrainConfig(**(base | kw))


def test_long_target_trains_and_beats_the_truncated_prompt(tmp_path, sd1):
    """150 tokens from a file, distilled into 8 vectors: closer to the whole (chunked) prompt than the
    pipeline's own encoding of it, which drops everything after the 75th token."""
    from sd_softprompt.files.softprompt import SoftPrompt
    from sd_softprompt.train import train

    target = tmp_path / "long.txt"
    target.write_text(LONG.replace(", ", ",\n"), encoding="utf-8")  # newlines read as spaces
    result = train(long_config(tmp_path, target_file=str(target)), pipe=sd1)
    d = result.metrics["distance"]
    assert d["long_target"] is True
    for where in ("alone", "composed"):
        assert d[where]["D"]["truncated"] > 0  # the cut prompt is not the whole one
        assert d[where]["ratio_to_truncated"] < 0.6, d[where]
        assert d[where]["ratio_to_empty"] < 0.1, d[where]
    soft = SoftPrompt.load(result.soft_prompt)
    assert soft.metadata["target"] == " ".join(LONG.split()) and float(soft.metadata["alone_ratio_to_truncated"]) < 0.6


def test_short_target_report_has_no_truncated_baseline(tmp_path, sd1):
    from sd_softprompt.train import train

    d = train(long_config(tmp_path, target="image of serene landscape", steps=2), pipe=sd1).metrics["distance"]
    assert d["long_target"] is False and "truncated" not in d["alone"]["D"]


def test_state_losses_refuse_a_long_target(tmp_path, sd1):
    from sd_softprompt.errors import ConfigError
    from sd_softprompt.train import train

    with pytest.raises(ConfigError, match="use --loss denoiser"):
        train(long_config(tmp_path, target=LONG, loss="sequence", steps=2), pipe=sd1)
    assert not (tmp_path / "long.safetensors").exists()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: dict(target="x", target_file=str(p / "t.txt")), "not both"),
        (lambda p: dict(target_file=str(p / "missing.txt")), "missing.txt: cannot read it"),
        (lambda p: dict(target_file=str(p / "empty.txt")), "empty.txt: the file is empty"),
        (lambda p: dict(target_file=str(p / "latin1.txt")), "latin1.txt: not UTF-8"),
    ],
)
def test_target_file_errors(tmp_path, setup, message):
    from sd_softprompt.cli.main import main

    (tmp_path / "t.txt").write_text("a cat")
    (tmp_path / "empty.txt").write_text(" \n ")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    args = ["train", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o.safetensors")]
    for key, value in setup(tmp_path).items():
        args += [f"--{key.replace('_', '-')}", value]
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args) == 2
    assert message in err.getvalue() and err.getvalue().count("\n") == 1


@pytest.mark.parametrize("family", sorted(tiny.NOT_OURS))
def test_long_target_beats_the_truncated_prompt_on_configs_we_did_not_choose(tmp_path, family):
    """The same on diffusers' own fast-test SD and SDXL (tiny.NOT_OURS): a 150-token target in --vectors auto
    (31 here) comes within half of the truncated prompt's distance from the whole prompt, alone and composed."""
    from sd_softprompt.train import train

    pipe = tiny.NOT_OURS[family]()
    result = train(long_config(tmp_path, target=LONG, vectors="auto", steps=60, probe_pool=8), pipe=pipe)
    d = result.metrics["distance"]
    assert d["target_tokens"] > 150 and result.metrics["config"]["vectors"] == 31
    for where in ("alone", "composed"):
        assert d[where]["ratio_to_truncated"] < 0.5, d[where]
        assert d[where]["ratio_to_first_n_words"] < 0.5, d[where]
