"""Flux.2 Klein: Qwen3 (4B, or 8B for Klein 9B) read through its chat template with thinking off, three of its
intermediate layers' states (9, 18, 27) stacked along the width, a Flux.2 transformer on 2x2-patchified,
batch-norm normalised VAE latents, flow matching. The base models take classifier-free guidance against the
empty prompt; the distilled ones (`is_distilled`) none.

The pipeline writes "<|im_start|>user\\n<prompt><|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n",
pads it on the right to 512 tokens and passes no mask on to the transformer (the padding's states count, as
T5's do in Flux). A soft token's vectors sit where the prompt's words do, after the user header; the template's
tokens are Qwen's own.

Keys: "qwen3_4b" (2560 wide) and "qwen3_8b" (4096), ComfyUI's keys for Klein's encoders (comfy/text_encoders/
flux.py; ComfyUI's Klein tokenizers read embedding files under them). One row per encoder width, told apart by
the encoder's width. OneTrainer has no Flux.2 embeddings and diffusers no textual-inversion loader for the
pipeline, so files are written native only."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Cond, Encoder, Family
from .llm import prompt_span

KLEIN_MAX_SEQUENCE_LENGTH = 512  # the pipeline's default window
KLEIN_GUIDANCE = 4.0  # the pipeline's default (the base models' classifier-free guidance)

QWEN3_4B = Encoder("qwen3_4b", "tokenizer", "text_encoder", 2560)
QWEN3_8B = Encoder("qwen3_8b", "tokenizer", "text_encoder", 4096)


def _window(pipe) -> int:
    return min(KLEIN_MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length)


def _chat(pipe, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return pipe.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )


def klein_state_ids(pipe, prompt: str, window: int | None = None) -> list[int]:
    """The ids the states stand on, unpadded: the chat template around the prompt, cut to the window."""
    return pipe.tokenizer(_chat(pipe, prompt)).input_ids[: window or _window(pipe)]


def _encode(pipe, prompts: list[str], window: int) -> Cond:
    states, _ = pipe.encode_prompt(prompts, device=pipe.text_encoder.device, max_sequence_length=window)
    return {"states": states}


def encode_klein(pipe, prompts: list[str]) -> Cond:
    return _encode(pipe, prompts, _window(pipe))


def encode_klein_long(pipe, prompts: list[str]) -> Cond:
    """The whole prompt: a window wide enough for the longest (Qwen has rotary positions)."""
    longest = max(len(klein_state_ids(pipe, p, window=1 << 20)) for p in prompts)
    return _encode(pipe, prompts, max(_window(pipe), longest))


def no_negative_klein(pipe, batch: int) -> Cond | None:
    # the base models guide against the empty prompt in the chat template; the distilled ones do not guide
    return None if pipe.config.is_distilled else encode_klein(pipe, [""] * batch)


def predict_flux2(pipe, x_t, t, cond: Cond):
    """The Flux.2 transformer's step (Klein and Flux.2 [dev] share it; a guidance embedding gets 4.0, both
    pipelines' default). x_t: patchified latents [B, C, h, w] (as the pipeline denoises them); t: sigmas in
    [0, 1]. Returns the velocity, in the same layout."""
    b, c, h, w = x_t.shape
    states = cond["states"].to(x_t.dtype)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full((b,), KLEIN_GUIDANCE, device=x_t.device, dtype=torch.float32)
    out = pipe.transformer(
        hidden_states=x_t.reshape(b, c, h * w).permute(0, 2, 1),
        timestep=t.to(x_t.dtype),
        guidance=guidance,
        encoder_hidden_states=states,
        txt_ids=pipe._prepare_text_ids(states).to(x_t.device),
        img_ids=pipe._prepare_latent_ids(x_t).to(x_t.device),
        return_dict=False,
    )[0]
    return out.permute(0, 2, 1).reshape(b, c, h, w)  # tokens are row-major over the latent grid


def flux2_vae_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """The VAE's mode, patchified 2x2 and normalised by its batch-norm statistics, as the pipeline encodes a
    reference image."""
    vae = pipe.vae
    z = pipe._patchify_latents(vae.encode(images).latent_dist.mode())
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
    return (z - mean) / std


def _klein_call(pipe, negative_prompt: str | None) -> dict:
    window = _window(pipe)
    kwargs = {} if window == KLEIN_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}
    if negative_prompt is not None:
        if pipe.config.is_distilled:
            raise ConfigError(
                "this Flux.2 Klein checkpoint is guidance-distilled and takes no negative prompt; "
                "leave --negative-prompt out"
            )
        # the pipeline takes a negative prompt only as embeddings: encode it as it would
        with torch.no_grad():
            kwargs["negative_prompt_embeds"] = encode_klein(pipe, [negative_prompt])["states"]
    return kwargs


def flux2_size(pipe) -> int:
    return pipe.default_sample_size * pipe.vae_scale_factor  # 1024 px


def flux2_latent_shape(pipe, height: int, width: int):
    f = pipe.vae_scale_factor * 2  # 2x2 patches of the VAE's latents
    return (pipe.transformer.config.in_channels, height // f, width // f)


def _prompt_window(pipe) -> int:
    return _window(pipe) - len(klein_state_ids(pipe, ""))


def _is_8b(pipe) -> bool:
    return pipe.text_encoder.get_input_embeddings().weight.shape[1] == QWEN3_8B.width


# What the Flux.2 transformer and its VAE decide, the same for Klein and Flux.2 [dev] (flux2.py).
FLUX2_DENOISER = dict(
    predict=predict_flux2,
    latent_shape=flux2_latent_shape,
    objective="flow",
    denoiser="transformer",
    latent_patch=2,
    native_size=flux2_size,
    prefers_bf16=True,
    vae_latents=flux2_vae_latents,
)
_KLEIN = dict(
    FLUX2_DENOISER,
    encode=encode_klein,
    guidance=KLEIN_GUIDANCE,
    call_kwargs=_klein_call,
    pipelines=("Flux2KleinPipeline",),
    state_tokenizers=("tokenizer",),
    encode_long=encode_klein_long,
    no_negative=no_negative_klein,
    formats=("native", "comfyui"),  # ComfyUI: qwen3_4b / qwen3_8b
    prompt_span=prompt_span(klein_state_ids),
    prompt_window=_prompt_window,
)
FLUX2_KLEIN = Family("flux2_klein", "Flux.2 Klein 4B", (QWEN3_4B,), matches=lambda pipe: not _is_8b(pipe), **_KLEIN)
FLUX2_KLEIN_9B = Family("flux2_klein_9b", "Flux.2 Klein 9B", (QWEN3_8B,), matches=_is_8b, **_KLEIN)
