"""Flux: CLIP-L (the pooled vector only) and T5-XXL (the states), a guidance-distilled transformer trained by
flow matching on 2x2-packed latents; no negative prompt."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Cond, Encoder, Family
from .clip import CLIP_L

# Flux's default is 512 T5 positions; the padding states after the prompt are what they are, so a
# shorter window gives the same prompt states for prompts that fit (and is what people use for speed).
FLUX_MAX_SEQUENCE_LENGTH = 512
FLUX_GUIDANCE = 3.5  # the pipeline's default guidance for guidance-distilled (dev) checkpoints


def _window(pipe) -> int:
    return min(FLUX_MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length)


def encode_flux(pipe, prompts: list[str]) -> Cond:
    states, pooled, _ = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, device=pipe.text_encoder_2.device, max_sequence_length=_window(pipe)
    )
    return {"states": states, "pooled": pooled}


def encode_flux_long(pipe, prompts: list[str]) -> Cond:
    """T5 takes the whole prompt (relative positions; ComfyUI does not cut it either); CLIP gives only the
    pooled vector, which every tool takes from the first 77 positions."""
    longest = max(len(pipe.tokenizer_2(p).input_ids) for p in prompts)
    states, pooled, _ = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        device=pipe.text_encoder_2.device,
        max_sequence_length=max(_window(pipe), longest),
    )
    return {"states": states, "pooled": pooled}


def no_negative_flux(pipe, batch: int) -> None:
    return None  # guidance-distilled: no classifier-free guidance, no negative prompt


def _predict_flux(pipe, x_t, t, cond: Cond):
    """x_t: unpacked latents [B, C, h, w]; t: sigmas in [0, 1]. Returns the velocity, unpacked."""
    b, c, h, w = x_t.shape
    packed = pipe._pack_latents(x_t, b, c, h, w)
    img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
    states = cond["states"].to(x_t.dtype)
    txt_ids = torch.zeros(states.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full((b,), FLUX_GUIDANCE, device=x_t.device, dtype=torch.float32)
    out = pipe.transformer(
        hidden_states=packed,
        timestep=t.to(x_t.dtype),
        guidance=guidance,
        pooled_projections=cond["pooled"].to(x_t.dtype),
        encoder_hidden_states=states,
        txt_ids=txt_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)


def _flux_call(pipe, negative_prompt: str | None) -> dict:
    if negative_prompt:
        raise ConfigError("Flux is guidance-distilled and takes no negative prompt; leave --negative-prompt out")
    # Encode with the T5 window training uses; it differs from the pipeline's default (512) only for
    # checkpoints whose tokenizer is shorter (schnell: 256).
    window = _window(pipe)
    return {} if window == FLUX_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}


def _flux_size(pipe) -> int:
    return 128 * pipe.vae_scale_factor  # FluxPipeline.default_sample_size: 1024 px on the real model


def _flux_latent(pipe, height: int, width: int):
    # Flux packs 2x2 latent patches, so the latent grid must be even.
    f = pipe.vae_scale_factor * 2
    return (pipe.transformer.config.in_channels // 4, 2 * (height // f), 2 * (width // f))


FLUX = Family(
    "flux",
    "Flux",
    (CLIP_L, Encoder("t5xxl", "tokenizer_2", "text_encoder_2", 4096)),
    encode_flux,
    _predict_flux,
    latent_shape=_flux_latent,
    objective="flow",
    denoiser="transformer",
    latent_patch=2,
    native_size=_flux_size,
    guidance=FLUX_GUIDANCE,
    call_kwargs=_flux_call,
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    state_tokenizers=("tokenizer_2",),  # the states are T5's; CLIP-L gives the pooled vector
    encode_long=encode_flux_long,
    no_negative=no_negative_flux,
    prefers_bf16=True,
    formats=("native", "diffusers", "onetrainer", "comfyui"),  # A1111, kohya and InvokeAI have no Flux embeddings
)
