"""Chroma: T5-XXL alone (states and the attention mask the pipeline builds from its tokenizer's), a Flux-like
transformer without the pooled CLIP vector, trained by flow matching on 2x2-packed latents; real classifier-free
guidance with a negative prompt (default "")."""

from __future__ import annotations

import torch

from .base import Cond, Encoder, Family
from .sd import negative_call

# ChromaPipeline's default T5 window; the tiny pipelines' tokenizer is shorter, and the window follows it.
CHROMA_MAX_SEQUENCE_LENGTH = 512
CHROMA_T5 = Encoder("t5xxl", "tokenizer", "text_encoder", 4096)  # ComfyUI's key (comfy/text_encoders/chroma.py)


def _window(pipe) -> int:
    return min(CHROMA_MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length)


def _encode(pipe, prompts: list[str], window: int) -> Cond:
    # "mask": the prompt's tokens, its end-of-text and one padding position, as the transformer attends to them
    states, _, mask, *_ = pipe.encode_prompt(
        prompt=prompts, device=pipe.text_encoder.device, do_classifier_free_guidance=False, max_sequence_length=window
    )
    return {"states": states, "mask": mask}


def encode_chroma(pipe, prompts: list[str]) -> Cond:
    return _encode(pipe, prompts, _window(pipe))


def encode_chroma_long(pipe, prompts: list[str]) -> Cond:
    """T5 takes the whole prompt (relative positions; ComfyUI does not cut it either)."""
    longest = max(len(pipe.tokenizer(p).input_ids) for p in prompts)
    return _encode(pipe, prompts, max(_window(pipe), longest))


def no_negative_chroma(pipe, batch: int) -> Cond:
    return encode_chroma(pipe, [""] * batch)


def _predict_chroma(pipe, x_t, t, cond: Cond):
    """x_t: unpacked latents [B, C, h, w]; t: sigmas in [0, 1]. Returns the velocity, unpacked."""
    b, c, h, w = x_t.shape
    packed = pipe._pack_latents(x_t, b, c, h, w)
    img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
    states = cond["states"].to(x_t.dtype)
    txt_ids = torch.zeros(states.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
    mask = pipe._prepare_attention_mask(b, packed.shape[1], x_t.dtype, cond["mask"].to(x_t.device, x_t.dtype))
    out = pipe.transformer(
        hidden_states=packed,
        timestep=t.to(x_t.dtype),
        encoder_hidden_states=states,
        txt_ids=txt_ids,
        img_ids=img_ids,
        attention_mask=mask,
        return_dict=False,
    )[0]
    return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)


def _chroma_call(pipe, negative_prompt: str | None) -> dict:
    window = _window(pipe)
    return negative_call(pipe, negative_prompt) | (
        {} if window == CHROMA_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}
    )


def _chroma_size(pipe) -> int:
    return pipe.default_sample_size * pipe.vae_scale_factor  # 1024 px on the real model


def _chroma_latent(pipe, height: int, width: int):
    f = pipe.vae_scale_factor * 2  # 2x2-packed latents: an even latent grid
    return (pipe.transformer.config.in_channels // 4, 2 * (height // f), 2 * (width // f))


CHROMA = Family(
    "chroma",
    "Chroma",
    (CHROMA_T5,),
    encode_chroma,
    _predict_chroma,
    latent_shape=_chroma_latent,
    objective="flow",
    denoiser="transformer",
    latent_patch=2,
    native_size=_chroma_size,
    guidance=5.0,  # ChromaPipeline's default
    call_kwargs=_chroma_call,
    pipelines=("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"),
    state_tokenizers=("tokenizer",),
    encode_long=encode_chroma_long,
    no_negative=no_negative_chroma,
    prefers_bf16=True,
    # ComfyUI (native t5xxl key), diffusers (ChromaPipeline has load_textual_inversion), OneTrainer ("t5")
    formats=("native", "diffusers", "onetrainer", "comfyui"),  # ComfyUI asks for t5xxl
)
