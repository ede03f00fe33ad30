"""Stable Diffusion 3: two CLIPs and T5-XXL (a 77-position CLIP segment, then T5's), an MMDiT transformer
trained by flow matching."""

from __future__ import annotations

import torch

from .base import Cond, Encoder, Family
from .clip import chunk_inputs, clip_chunks
from .sd import negative_call

# SD3's default T5 window; the tiny pipelines' T5 tokenizer is shorter, and the window follows it.
SD3_MAX_SEQUENCE_LENGTH = 256


def sd3_window(pipe) -> int:
    return min(SD3_MAX_SEQUENCE_LENGTH, pipe.tokenizer_3.model_max_length)


def encode_sd3(pipe, prompts: list[str]) -> Cond:
    # states: both CLIPs' penultimate states joined along the width (padded to T5's), then T5's along the
    # sequence; pooled: both CLIPs' pooled projections joined
    states, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        prompt_3=None,
        device=pipe.text_encoder.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        max_sequence_length=sd3_window(pipe),
    )
    return {"states": states, "pooled": pooled}


def encode_sd3_long(pipe, prompts: list[str]) -> Cond:
    """Both CLIPs chunked (penultimate states joined along the width, padded to T5's), T5 uncut after them;
    pooled: both CLIPs' from the first chunk. ComfyUI's long SD3 prompts, with A1111's chunk boundaries."""
    clip, pooled = [], []
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = chunk_inputs(pipe, tokenizer, prompts)
        out, (b, c) = clip_chunks(text_encoder, ids, output_hidden_states=True)
        pooled.append(out[0].view(b, c, -1)[:, 0])
        clip.append(out.hidden_states[-2].reshape(b, c * ids.shape[-1], -1))
    window = sd3_window(pipe)
    longest = max(len(pipe.tokenizer_3(p).input_ids) for p in prompts)
    t5 = pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=max(window, longest), device=clip[0].device)
    clip_states = torch.cat(clip, dim=-1).to(t5.dtype)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5.shape[-1] - clip_states.shape[-1]))
    return {"states": torch.cat([clip_states, t5], dim=-2), "pooled": torch.cat(pooled, dim=-1)}


def no_negative_sd3(pipe, batch: int) -> Cond:
    return encode_sd3(pipe, [""] * batch)


def _predict_sd3(pipe, x_t, t, cond: Cond):
    """x_t: latents [B, C, h, w]; t: sigmas in [0, 1] (the transformer takes them x 1000, as the pipeline's
    scheduler timesteps are). Returns the velocity."""
    return pipe.transformer(
        hidden_states=x_t,
        timestep=(t * pipe.scheduler.config.num_train_timesteps).to(x_t.dtype),
        encoder_hidden_states=cond["states"].to(x_t.dtype),
        pooled_projections=cond["pooled"].to(x_t.dtype),
        return_dict=False,
    )[0]


def _sd3_call(pipe, negative_prompt: str | None) -> dict:
    window = sd3_window(pipe)
    return negative_call(pipe, negative_prompt) | (
        {} if window == SD3_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}
    )


def _sd3_max_side(pipe) -> int | None:
    """The transformer crops its position embeddings from a grid of pos_embed_max_size patches a side."""
    grid = pipe.transformer.config.get("pos_embed_max_size")
    return grid * pipe.transformer.config.patch_size * pipe.vae_scale_factor if grid else None  # 3072 px on SD3


def _sd3_size(pipe) -> int:
    return int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor  # 1024 px on the real model


def _sd3_latent(pipe, height: int, width: int):
    return (pipe.transformer.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


SD3 = Family(
    "sd3",
    "Stable Diffusion 3",
    (
        Encoder("clip_l", "tokenizer", "text_encoder", 768),
        Encoder("clip_g", "tokenizer_2", "text_encoder_2", 1280),
        Encoder("t5xxl", "tokenizer_3", "text_encoder_3", 4096),
    ),
    encode_sd3,
    _predict_sd3,
    latent_shape=_sd3_latent,
    objective="flow",
    denoiser="transformer",
    latent_patch=2,  # the transformer's 2x2 patches
    native_size=_sd3_size,
    guidance=7.0,
    call_kwargs=_sd3_call,
    pipelines=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    state_tokenizers=("tokenizer", "tokenizer_3"),  # a 77-position CLIP segment, then T5's
    encode_long=encode_sd3_long,
    no_negative=no_negative_sd3,
    # ComfyUI and OneTrainer read SD3 embeddings; diffusers' SD3 has no loader
    formats=("native", "onetrainer", "comfyui"),
    max_side=_sd3_max_side,
)
