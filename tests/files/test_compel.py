"""compel, the prompt library diffusers' own docs use, on soft prompts this package loaded: its unweighted
conditioning equals the pipeline's encode_prompt (states and pooled vectors), and the soft tokens move it."""

from __future__ import annotations

import pytest
import torch
from compel import CompelForFlux, CompelForSD, CompelForSDXL

from sd_softprompt.families import FAMILIES
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt

WRAPPERS = {"sd1": CompelForSD, "sd2": CompelForSD, "sdxl": CompelForSDXL, "flux": CompelForFlux}


def soft_for(pipe, family: str) -> SoftPrompt:
    """3 vectors per encoder at a few times the vocabulary's norm, so that they visibly move the states."""
    g = torch.Generator().manual_seed(0)
    vectors = {}
    for e in FAMILIES[family].encoders:
        table = getattr(pipe, e.text_encoder).get_input_embeddings().weight.detach()
        v = torch.randn(3, table.shape[1], generator=g)
        vectors[e.key] = v / v.norm(dim=1, keepdim=True) * table.norm(dim=1).mean() * 3
    return SoftPrompt(vectors, metadata={"name": "sun", "family": family})


def conditioning(pipe, family: str, prompt: str) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{part: (compel's, encode_prompt's)} for the token states and, where the family has one, the pooled vector."""
    got = WRAPPERS[family](pipe)(prompt)
    if family == "flux":  # compel pads T5 to its tokenizer's window; the pipeline to max_sequence_length
        states, pooled, _ = pipe.encode_prompt(prompt, None, max_sequence_length=pipe.tokenizer_2.model_max_length)
        return {"states": (got.embeds, states), "pooled": (got.pooled_embeds, pooled)}
    if family == "sdxl":
        states, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        return {"states": (got.embeds, states), "pooled": (got.pooled_embeds, pooled)}
    states, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    return {"states": (got.embeds, states)}


@pytest.mark.parametrize("family", list(WRAPPERS))
def test_compel_conditioning_equals_encode_prompt_with_loaded_soft_tokens(family, request, tmp_path):
    pipe = request.getfixturevalue(family)
    plain = conditioning(pipe, family, "mountain view")
    (path,) = soft_for(pipe, family).save(tmp_path / "sun.safetensors")
    tokens = load_soft_prompt(pipe, path)
    prompt = f"{''.join(tokens)} mountain view"
    with torch.no_grad():
        parts = conditioning(pipe, family, prompt)
    for part, (compel_says, pipeline_says) in parts.items():
        assert compel_says.shape == pipeline_says.shape, part
        assert torch.allclose(compel_says, pipeline_says, atol=1e-5), (part, (compel_says - pipeline_says).abs().max())
    # the soft tokens reached compel's conditioning: it is not the plain prompt's
    assert not torch.allclose(parts["states"][0], plain["states"][0], atol=1e-3)


def test_compel_pools_sdxl_at_end_of_text_as_the_pipeline_does_with_our_loader(sdxl, tmp_path):
    """The pooled-output trap (families.md): with our loader the projection is read at end-of-text, for compel too."""
    load_soft_prompt(sdxl, soft_for(sdxl, "sdxl"))
    prompt = "[v1][v2][v3] mountain view"
    pooled = CompelForSDXL(sdxl)(prompt).pooled_embeds
    ids = sdxl.tokenizer_2(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    eos = (ids[0] == sdxl.tokenizer_2.eos_token_id).nonzero()[0].item()
    with torch.no_grad():
        out = sdxl.text_encoder_2(ids)
        expected = sdxl.text_encoder_2.text_projection(out.last_hidden_state[0, eos])
    assert torch.allclose(pooled[0], expected, atol=1e-5)
