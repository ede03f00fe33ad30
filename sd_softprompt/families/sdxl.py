"""Stable Diffusion XL: two CLIP text encoders (CLIP-L and OpenCLIP-bigG, states joined along the width; the
pooled vector from bigG) and a UNet that also takes the pooled vector and the size ids."""

from __future__ import annotations

import torch

from .base import Chunked, Cond, Family, Segments
from .clip import CLIP_G, CLIP_L, chunk_weighted_inputs, clip_chunks
from .sd import UNET


def encode_sdxl(pipe, prompts: list[str]) -> Cond:
    states, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, device=pipe.text_encoder_2.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return {"states": states, "pooled": pooled}


def encode_sdxl_long(pipe, prompts: list[str]) -> Cond:
    return encode_sdxl_weighted(pipe, [[(p, 1.0)] for p in prompts]).cond()


def encode_sdxl_weighted(pipe, prompts: list[Segments]) -> Chunked:
    """Both CLIPs' penultimate states, chunk by chunk (kept apart: A1111 weights each encoder on its own),
    and bigG's pooled vector from the first chunk."""
    parts, pooled, weights = [], None, None
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids, weights = chunk_weighted_inputs(pipe, tokenizer, prompts)
        if parts and ids.shape[1] != parts[0].shape[1]:
            raise ValueError("the two SDXL tokenizers split this prompt into different numbers of chunks")
        out, (b, c) = clip_chunks(text_encoder, ids, output_hidden_states=True)
        if out[0].ndim == 2:  # the projected pooled output of encoder 2, from the first chunk
            pooled = out[0].view(b, c, -1)[:, 0]
        parts.append(out.hidden_states[-2].reshape(b, c, ids.shape[-1], -1))
    return Chunked(parts, weights, pooled)


def embeds_call_sdxl(cond: Cond, negative: Cond) -> dict:
    return {
        "prompt": None,
        "prompt_embeds": cond["states"],
        "pooled_prompt_embeds": cond["pooled"],
        "negative_prompt_embeds": negative["states"],
        "negative_pooled_prompt_embeds": negative["pooled"],
    }


def no_negative_sdxl(pipe, batch: int) -> Cond:
    empty = encode_sdxl(pipe, [""] * batch)
    if pipe.config.get("force_zeros_for_empty_prompt", False):  # the base model's default: zeros, not ""
        empty = {k: torch.zeros_like(v) for k, v in empty.items()}
    return empty


def _predict_sdxl(pipe, x_t, t, cond: Cond):
    h, w = (s * pipe.vae_scale_factor for s in x_t.shape[-2:])
    # (original size, crop top-left, target size), as the pipeline builds them for an uncropped image
    time_ids = torch.tensor([h, w, 0, 0, h, w], device=x_t.device, dtype=x_t.dtype).repeat(x_t.shape[0], 1)
    added = {"text_embeds": cond["pooled"].to(x_t.dtype), "time_ids": time_ids}
    return pipe.unet(x_t, t, encoder_hidden_states=cond["states"].to(x_t.dtype), added_cond_kwargs=added).sample


SDXL = Family(
    "sdxl",
    "Stable Diffusion XL",
    (CLIP_L, CLIP_G),
    encode_sdxl,
    _predict_sdxl,
    guidance=5.0,
    pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    state_tokenizers=("tokenizer_2",),  # both CLIPs tokenize alike; their states are joined along the width
    encode_long=encode_sdxl_long,
    no_negative=no_negative_sdxl,
    encode_weighted=encode_sdxl_weighted,
    embeds_call=embeds_call_sdxl,
    **UNET,
)
