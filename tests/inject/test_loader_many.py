"""Several soft prompts in one pipeline: load_soft_prompts, loaded_soft_prompts, unload one of several."""

import itertools

import pytest
import torch

from sd_softprompt.errors import TokenCollisionError
from sd_softprompt.families import detect_family
from sd_softprompt.inject.loader import (
    load_soft_prompt,
    load_soft_prompts,
    loaded_soft_prompts,
    loaded_tokens,
    unload_soft_prompt,
)
from tests.inject.test_loader import assert_same, encode, snapshot, soft_for

NAMES = ("a", "b", "c")


def write_files(pipe, tmp_path, n=(2, 3, 1)):
    """Three native files with their own tokens <a1>.., <b1>.., <c1>.."""
    paths = []
    for i, (name, count) in enumerate(zip(NAMES, n)):
        soft = soft_for(pipe, n=count, seed=10 + i)
        soft.tokens = [f"<{name}{k}>" for k in range(1, count + 1)]
        soft.metadata["name"] = name
        paths += soft.save(tmp_path / f"{name}.safetensors")
    return [str(p) for p in paths]


def test_one_call_equals_one_call_per_file_and_lists_each_file(sd1, tmp_path):
    paths = write_files(sd1, tmp_path)
    before = snapshot(sd1)
    for path in paths:
        load_soft_prompt(sd1, path)
    one_by_one = snapshot(sd1)
    unload_soft_prompt(sd1)
    assert_same(snapshot(sd1), before)

    tokens = load_soft_prompts(sd1, paths)
    assert tokens == [["<a1>", "<a2>"], ["<b1>", "<b2>", "<b3>"], ["<c1>"]]
    assert_same(snapshot(sd1), one_by_one)  # same vocabulary, ids and table rows
    entries = loaded_soft_prompts(sd1)
    assert [e.source for e in entries] == paths
    assert [list(e.tokens) for e in entries] == tokens
    assert {e.family for e in entries} == {"sd1"}
    assert [e.metadata["name"] for e in entries] == list(NAMES)
    assert all(e.encoders == ("clip_l",) for e in entries)
    # each file's tokens encode with its own vectors
    row = sd1.text_encoder.get_input_embeddings().weight[sd1.tokenizer.convert_tokens_to_ids("<b3>")]
    assert torch.equal(row, soft_for(sd1, n=3, seed=11).vectors["clip_l"][2])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_unload_in_any_order_restores_exactly(family, request, tmp_path):
    pipe = request.getfixturevalue(family)
    paths = write_files(pipe, tmp_path)
    before = snapshot(pipe)
    # what the pipeline looks like with each subset of the files loaded in one call, fresh
    expected = {}
    for r in range(len(paths) + 1):
        for subset in itertools.combinations(range(len(paths)), r):
            if subset:
                load_soft_prompts(pipe, [paths[i] for i in subset])
            expected[subset] = snapshot(pipe)
            unload_soft_prompt(pipe)
    assert_same(expected[()], before)

    for order in itertools.permutations(range(len(paths))):
        load_soft_prompts(pipe, paths)
        left = list(range(len(paths)))
        for i in order:
            unload_soft_prompt(pipe, list(loaded_soft_prompts(pipe)[left.index(i)].tokens))
            left.remove(i)
            assert [e.source for e in loaded_soft_prompts(pipe)] == [paths[j] for j in left]
            assert_same(snapshot(pipe), expected[tuple(left)])
        assert loaded_tokens(pipe) == [] and loaded_soft_prompts(pipe) == []
    assert_same(snapshot(pipe), before)


def test_clash_between_files_refused_naming_both_before_anything_changes(sd1, tmp_path):
    a, b, _ = write_files(sd1, tmp_path)
    clash = soft_for(sd1, n=2, seed=5)
    clash.tokens = ["<x>", "<b2>"]
    clash_path = str(clash.save(tmp_path / "clash.safetensors")[0])
    before = snapshot(sd1)
    with pytest.raises(TokenCollisionError) as error:
        load_soft_prompts(sd1, [a, b, clash_path])
    assert b in str(error.value) and clash_path in str(error.value) and "<b2>" in str(error.value)
    assert_same(snapshot(sd1), before)
    assert loaded_soft_prompts(sd1) == []
    # renaming one file's tokens resolves it
    load_soft_prompts(sd1, [a, b, clash_path], tokens=[None, None, ["<x>", "<y>"]])
    assert [list(e.tokens) for e in loaded_soft_prompts(sd1)][2] == ["<x>", "<y>"]


def test_clash_with_loaded_tokens_refused_and_untouched(sd1, tmp_path):
    a, b, c = write_files(sd1, tmp_path)
    load_soft_prompt(sd1, a)
    before = snapshot(sd1)
    with pytest.raises(TokenCollisionError, match=r"<a1>.*replace=True"):
        load_soft_prompts(sd1, [b, a])
    assert_same(snapshot(sd1), before)
    assert [e.source for e in loaded_soft_prompts(sd1)] == [a]
    load_soft_prompts(sd1, [b, a], replace=True)
    assert [e.source for e in loaded_soft_prompts(sd1)] == [b, a]


def test_each_table_grows_once(sdxl, tmp_path, monkeypatch):
    paths = write_files(sdxl, tmp_path)
    calls = {"text_encoder": 0, "text_encoder_2": 0}
    for name in calls:
        module = getattr(sdxl, name)
        original = module.set_input_embeddings

        def counting(new, name=name, original=original):
            calls[name] += 1
            return original(new)

        monkeypatch.setattr(module, "set_input_embeddings", counting)
    load_soft_prompts(sdxl, paths)
    assert calls == {"text_encoder": 1, "text_encoder_2": 1}
    for encoder in detect_family(sdxl).encoders:
        vocab = getattr(sdxl, encoder.tokenizer).get_vocab()
        assert all(t in vocab for e in loaded_soft_prompts(sdxl) for t in e.tokens)


def test_in_memory_and_sdxl_pair_mix(sdxl, tmp_path):
    pair_soft = soft_for(sdxl, n=2, seed=3)
    pair = [str(p) for p in pair_soft.save(tmp_path / "pair", format="diffusers")]
    memory = soft_for(sdxl, n=1, seed=4)
    load_soft_prompts(sdxl, [pair, memory], tokens=[["<p1>", "<p2>"], ["<m>"]], aliases=["<pair>", None])
    entries = loaded_soft_prompts(sdxl)
    assert entries[0].source == " + ".join(pair) and entries[0].alias == "<pair>"
    assert entries[1].source == "<memory>: sunrise" and entries[1].encoders == ("clip_l", "clip_g")
    assert torch.equal(encode(sdxl, "<pair> lake")["states"], encode(sdxl, "<p1><p2> lake")["states"])
    unload_soft_prompt(sdxl, ["<p1>", "<p2>"])
    assert "maybe_convert_prompt" not in sdxl.__dict__  # the alias went with its tokens
    assert [e.source for e in loaded_soft_prompts(sdxl)] == ["<memory>: sunrise"]
