"""Prompt weighting, "(words:1.2)", as A1111 and ComfyUI read and apply it (render/weighting.py), on the tiny SD1
and SDXL pipelines: the parse, each tool's formula position by position, weight 1.0 as no weight bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_softprompt.cli.parser import WEIGHTINGS as CLI_WEIGHTINGS
from sd_softprompt.errors import ConfigError
from sd_softprompt.families import detect_family
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt
from sd_softprompt.render.generate import generate
from sd_softprompt.render.weighting import (
    WEIGHTINGS,
    apply_weights,
    encode_weighted_prompt,
    parse_weights,
    weighted_call,
)

FAST = dict(steps=2, guidance=5.0, height=64, width=64)
LONG = ", ".join(["a misty lake at sunrise with tall trees"] * 12)  # about 100 tokens: two chunks


@pytest.mark.parametrize(
    "prompt, segments",
    [
        # A1111's own doctests (modules/prompt_parser.py), square brackets aside
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) on a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" on a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        # a weighted soft prompt; square brackets are the soft tokens' names, not A1111's de-emphasis
        ("([v1][v2][v3]:1.2) mountain view", [("[v1][v2][v3]", 1.2), (" mountain view", 1.0)]),
        ("[v1] (a: 0.5 ) b:c", [("[v1] ", 1.0), ("a", 0.5), (" b:c", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_as_a1111(prompt, segments):
    assert parse_weights(prompt) == segments


def test_a_weight_that_is_no_number_is_one_line():
    with pytest.raises(ConfigError, match="'1.2.3' is not a weight"):
        parse_weights("(lake:1.2.3)")


def test_the_cli_offers_the_tools_weighting_offers():
    assert CLI_WEIGHTINGS == WEIGHTINGS


def _positions(tokenizer, before: str, words: str) -> slice:
    """The positions `words` take in a chunk that starts with the start token and `before`'s tokens."""
    first = 1 + len(tokenizer(before, add_special_tokens=False).input_ids) if before else 1
    return slice(first, first + len(tokenizer(words, add_special_tokens=False).input_ids))


def _plain_parts(pipe, family, prompt: str) -> list[torch.Tensor]:
    """Each encoder's states of the unweighted prompt, [1, 77, D], and the pooled vector (or None)."""
    with torch.no_grad():
        chunked = family.encode_weighted(pipe, [[(prompt, 1.0)]])
    return [p[:, 0] for p in chunked.parts], chunked.pooled


@pytest.mark.parametrize("build", ["sd1", "sdxl"])
@pytest.mark.parametrize("w", [1.3, 0.6])
def test_a1111_multiplies_and_restores_the_mean_per_encoder(build, w, request):
    pipe = request.getfixturevalue(build)
    family = detect_family(pipe)
    parts, pooled = _plain_parts(pipe, family, "a mountain view at dawn")
    cond = encode_weighted_prompt(pipe, f"a (mountain view:{w}) at dawn", "a1111", family)
    where = _positions(pipe.tokenizer, "a", "mountain view")
    expected = []
    for z in parts:  # A1111 weights each CLIP on its own (SDXL: clip_l, then clip_g)
        m = torch.ones(z.shape[1])
        m[where] = w
        scaled = z * m[None, :, None]
        expected.append(scaled * (z.mean() / scaled.mean()))
    torch.testing.assert_close(cond["states"], torch.cat(expected, -1), rtol=0, atol=1e-6)
    assert not torch.allclose(cond["states"], torch.cat(parts, -1))
    if pooled is not None:  # the pooled vector stays the unweighted prompt's
        assert torch.equal(cond["pooled"], pooled)


@pytest.mark.parametrize("build", ["sd1", "sdxl"])
def test_comfyui_moves_weighted_positions_from_the_empty_prompt(build, request):
    pipe = request.getfixturevalue(build)
    family = detect_family(pipe)
    w = 1.4
    plain = torch.cat(_plain_parts(pipe, family, "a mountain view at dawn")[0], -1)[0]
    empty = torch.cat(_plain_parts(pipe, family, "")[0], -1)[0]
    states = encode_weighted_prompt(pipe, f"a (mountain view:{w}) at dawn", "comfyui", family)["states"][0]
    where = _positions(pipe.tokenizer, "a", "mountain view")
    torch.testing.assert_close(states[where], (plain[where] - empty[where]) * w + empty[where], rtol=0, atol=1e-6)
    others = torch.ones(states.shape[0], dtype=torch.bool)
    others[where] = False
    assert torch.equal(states[others], plain[others])  # weight 1: untouched


def test_a_weighted_soft_prompt_weights_its_tokens_positions(sd1):
    family = detect_family(sd1)
    g = torch.Generator().manual_seed(0)
    load_soft_prompt(sd1, SoftPrompt({"clip_l": torch.randn(3, 32, generator=g)}))
    plain = _plain_parts(sd1, family, "[v1][v2][v3] mountain view")[0][0][0]
    empty = _plain_parts(sd1, family, "")[0][0][0]
    states = encode_weighted_prompt(sd1, "([v1][v2][v3]:1.2) mountain view", "comfyui", family)["states"][0]
    torch.testing.assert_close(states[1:4], (plain[1:4] - empty[1:4]) * 1.2 + empty[1:4], rtol=0, atol=1e-6)
    assert torch.equal(states[4:], plain[4:])


@pytest.mark.parametrize("build", ["sd1", "sdxl"])
@pytest.mark.parametrize("mode", WEIGHTINGS)
def test_weight_one_is_no_weight_bit_for_bit(build, mode, request):
    pipe = request.getfixturevalue(build)
    pipe.set_progress_bar_config(disable=True)
    family = detect_family(pipe)
    g = torch.Generator().manual_seed(1)
    load_soft_prompt(pipe, SoftPrompt({e.key: torch.randn(3, e_width(pipe, e), generator=g) for e in family.encoders}))
    prompt = "[v1][v2][v3] mountain view"
    plain = np.asarray(generate(pipe, prompt, 0, **FAST))
    one = np.asarray(generate(pipe, "([v1][v2][v3]:1.0) mountain view", 0, **FAST, weighting=mode))
    assert np.array_equal(one, plain)
    # the formula itself at weight 1 changes nothing either, and the pipeline given those states draws the same
    with torch.no_grad():
        chunked = family.encode_weighted(pipe, [parse_weights("([v1][v2][v3]:1.0) mountain view")])
        cond = apply_weights(pipe, family, chunked, mode)
        assert torch.equal(cond["states"], family.encode_long(pipe, [prompt])["states"])
        call = family.embeds_call(cond, family.no_negative(pipe, 1))
        generator = [torch.Generator().manual_seed(0)]
        drawn = pipe(**call, num_inference_steps=2, guidance_scale=5.0, height=64, width=64, generator=generator)
    assert np.array_equal(np.asarray(drawn.images[0]), plain)
    # and a weight other than 1 does change the picture
    assert not np.array_equal(
        np.asarray(generate(pipe, "([v1][v2][v3]:1.5) mountain view", 0, **FAST, weighting=mode)), plain
    )


def e_width(pipe, encoder) -> int:
    return getattr(pipe, encoder.text_encoder).get_input_embeddings().weight.shape[1]


@pytest.mark.parametrize("mode", WEIGHTINGS)
def test_long_prompts_are_chunked_and_the_negative_made_as_long_as_each_tool_does(sd1, mode):
    family = detect_family(sd1)
    call = weighted_call(sd1, family, f"({LONG}:1.1)", "dark", mode)
    states, negative = call["prompt_embeds"], call["negative_prompt_embeds"]
    assert call["prompt"] is None and states.shape[1] == 154 and negative.shape == states.shape
    with torch.no_grad():
        empty, dark = (family.encode_long(sd1, [p])["states"] for p in ("", "dark"))
    torch.testing.assert_close(negative[:, :77], dark, rtol=0, atol=1e-6)
    # A1111 pads the shorter with the empty prompt's chunk; ComfyUI repeats it to a common length
    torch.testing.assert_close(negative[:, 77:], empty if mode == "a1111" else dark, rtol=0, atol=1e-6)
    # no negative: the pipeline's own empty negative, chunk after chunk
    alone = weighted_call(sd1, family, f"({LONG}:1.1)", None, mode)["negative_prompt_embeds"]
    torch.testing.assert_close(alone, empty.repeat(1, 2, 1), rtol=0, atol=1e-6)


def test_a_family_without_weighting_is_refused_in_one_line(flux):
    with pytest.raises(ConfigError, match="take no weights here.*sd1, sd2, sdxl"):
        generate(flux, "(lake:1.2)", 0, **FAST, weighting="a1111")
    with pytest.raises(ConfigError, match="a1111 or comfyui"):
        generate(flux, "lake", 0, **FAST, weighting="invoke")
