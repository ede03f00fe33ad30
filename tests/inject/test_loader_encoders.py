"""load_soft_prompt(..., encoders=[...]): one encoder's vectors at a time (Flux and SDXL tiny pipelines).

The chosen encoders get the file's vectors; every other encoder gets the tokens as zero rows, so the prompt
tokenizes alike everywhere and what it does there does not depend on the file's vectors for it."""

from __future__ import annotations

import pytest
import torch

from sd_softprompt.errors import ConfigError
from sd_softprompt.families import detect_family
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, loaded_soft_prompts, unload_soft_prompt

PROMPT = "[v1][v2] misty lake"


def _soft(pipe, seed: int) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    return SoftPrompt(
        {
            e.key: torch.randn(2, getattr(pipe, e.text_encoder).get_input_embeddings().weight.shape[1], generator=g)
            for e in detect_family(pipe).encoders
        }
    )


def _encode(pipe):
    with torch.no_grad():
        return detect_family(pipe).encode(pipe, [PROMPT])


def _rows(pipe, encoder) -> torch.Tensor:
    ids = getattr(pipe, encoder.tokenizer).convert_tokens_to_ids(["[v1]", "[v2]"])
    return getattr(pipe, encoder.text_encoder).get_input_embeddings().weight[ids].detach()


@pytest.mark.parametrize("build", ["flux", "sdxl"])
def test_only_the_chosen_encoders_vectors_load(build, request):
    pipe = request.getfixturevalue(build)
    family = detect_family(pipe)
    first, second = family.encoders
    a, b = _soft(pipe, 0), _soft(pipe, 1)
    b.vectors[first.key] = a.vectors[first.key]  # b differs from a in the second encoder's vectors only

    load_soft_prompt(pipe, a, encoders=[first.key])
    entry = loaded_soft_prompts(pipe)[0]
    assert (entry.encoders, entry.blank) == ((first.key,), (second.key,))
    assert torch.equal(_rows(pipe, first), a.vectors[first.key])
    assert torch.equal(_rows(pipe, second), torch.zeros_like(_rows(pipe, second)))  # the tokens, no content
    with_a = _encode(pipe)
    unload_soft_prompt(pipe)
    load_soft_prompt(pipe, b, encoders=[first.key])
    with_b = _encode(pipe)
    unload_soft_prompt(pipe)
    for key in with_a:  # the second encoder's vectors were left out: they change nothing
        assert torch.equal(with_a[key], with_b[key])
    load_soft_prompt(pipe, a)
    full_a = _encode(pipe)
    unload_soft_prompt(pipe)
    load_soft_prompt(pipe, b)
    full_b = _encode(pipe)
    unload_soft_prompt(pipe)
    assert any(not torch.equal(full_a[k], full_b[k]) for k in full_a)  # loaded, they do


def test_flux_t5_alone_leaves_the_clip_vector_without_soft_content(flux):
    a, b = _soft(flux, 0), _soft(flux, 1)
    b.vectors["t5xxl"] = a.vectors["t5xxl"]  # b differs only in its CLIP vectors
    states = []
    for soft in (a, b):
        load_soft_prompt(flux, soft, encoders=["t5xxl"])
        states.append(_encode(flux))
        unload_soft_prompt(flux)
    assert torch.equal(states[0]["pooled"], states[1]["pooled"]) and torch.equal(
        states[0]["states"], states[1]["states"]
    )


@pytest.mark.parametrize("build", ["flux", "sdxl"])
def test_unloading_restores_every_encoder_exactly(build, request):
    pipe = request.getfixturevalue(build)
    family = detect_family(pipe)
    before = {
        e.key: (len(getattr(pipe, e.tokenizer)), getattr(pipe, e.text_encoder).get_input_embeddings().weight.clone())
        for e in family.encoders
    }
    load_soft_prompt(pipe, _soft(pipe, 0), encoders=[family.keys[-1]])
    unload_soft_prompt(pipe)
    for e in family.encoders:
        assert len(getattr(pipe, e.tokenizer)) == before[e.key][0]
        assert torch.equal(getattr(pipe, e.text_encoder).get_input_embeddings().weight, before[e.key][1])


def test_keys_the_pipeline_or_the_file_lack_are_refused_before_anything_loads(sdxl, flux):
    with pytest.raises(ConfigError, match="t5xxl: a sdxl pipeline's encoders are clip_l, clip_g"):
        load_soft_prompt(sdxl, _soft(sdxl, 0), encoders=["t5xxl"])
    clip_only = SoftPrompt({"clip_l": _soft(flux, 0).vectors["clip_l"]})
    with pytest.raises(ConfigError, match="has no t5xxl vectors .it has clip_l"):
        load_soft_prompt(flux, clip_only, encoders=["t5xxl"])
    assert not loaded_soft_prompts(sdxl) and not loaded_soft_prompts(flux)
