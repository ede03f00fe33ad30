"""Lumina Image 2.0: Gemma 2 2B (its penultimate states) read through the pipeline's system prompt, a Lumina 2
DiT on 16-channel VAE latents, flow matching with the time reversed (the transformer takes 1 - sigma and
predicts x0 - noise).

The pipeline writes "<system prompt> <Prompt Start> <prompt>", pads on the right to 256 tokens and passes the
attention mask; the negative prompt goes without the system prompt. A soft token's vectors sit where the
prompt's words do, after "<Prompt Start>"; the system prompt's tokens are Gemma's own.

Key: "gemma2_2b", ComfyUI's key for Lumina 2's text encoder (comfy/text_encoders/lumina2.py); the same key and
width as Sana's, so a file's family comes from its metadata or the pipeline it is loaded into. diffusers has no
textual-inversion loader for Lumina 2, so files are written native only."""

from __future__ import annotations

from .base import Cond, Family
from .llm import prompt_span
from .sana import GEMMA2_2B
from .sd import negative_call

LUMINA2_MAX_SEQUENCE_LENGTH = 256  # the pipeline's default window
PROMPT_START = " <Prompt Start> "  # what the pipeline writes between its system prompt and the prompt


def _window(pipe) -> int:
    return min(LUMINA2_MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length)


def _encode(pipe, prompts: list[str], window: int) -> Cond:
    states, mask, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, device=pipe.text_encoder.device, max_sequence_length=window
    )
    return {"states": states, "mask": mask}


def encode_lumina2(pipe, prompts: list[str]) -> Cond:
    return _encode(pipe, prompts, _window(pipe))


def lumina2_state_ids(pipe, prompt: str, window: int | None = None) -> list[int]:
    """The ids the states stand on, unpadded: system prompt, separator and prompt, cut to the window."""
    ids = pipe.tokenizer(pipe.system_prompt + PROMPT_START + prompt).input_ids
    return ids[: window or _window(pipe)]


def encode_lumina2_long(pipe, prompts: list[str]) -> Cond:
    """The whole prompt: a window wide enough for the longest (Gemma has rotary positions)."""
    longest = max(len(lumina2_state_ids(pipe, p, window=1 << 20)) for p in prompts)
    return _encode(pipe, prompts, max(_window(pipe), longest))


def no_negative_lumina2(pipe, batch: int) -> Cond:
    # the pipeline's negative: "" without the system prompt
    states, mask = pipe._get_gemma_prompt_embeds(
        [""] * batch, device=pipe.text_encoder.device, max_sequence_length=_window(pipe)
    )
    return {"states": states, "mask": mask}


def _predict_lumina2(pipe, x_t, t, cond: Cond):
    """x_t: latents [B, C, h, w]; t: sigmas in [0, 1]. The transformer runs on reversed time and predicts
    x0 - noise; returns the velocity noise - x0."""
    out = pipe.transformer(
        hidden_states=x_t,
        timestep=(1 - t).to(x_t.dtype),
        encoder_hidden_states=cond["states"].to(x_t.dtype),
        encoder_attention_mask=cond["mask"],
        return_dict=False,
    )[0]
    return -out


def _lumina2_call(pipe, negative_prompt: str | None) -> dict:
    window = _window(pipe)
    return negative_call(pipe, negative_prompt) | (
        {} if window == LUMINA2_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}
    )


def _lumina2_max_side(pipe) -> int | None:
    """The RoPE tables hold axes_lens[1] rows and axes_lens[2] columns of patches (512 on the real model)."""
    config = pipe.transformer.config
    return min(config.axes_lens[1:]) * config.patch_size * pipe.vae_scale_factor  # 8192 px on the real model


def _lumina2_size(pipe) -> int:
    return int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor  # 1024 px on the real model


def _lumina2_latent(pipe, height: int, width: int):
    f = pipe.vae_scale_factor
    return (pipe.transformer.config.in_channels, height // f, width // f)


def _prompt_window(pipe) -> int:
    return _window(pipe) - len(lumina2_state_ids(pipe, ""))


LUMINA2 = Family(
    "lumina2",
    "Lumina Image 2.0",
    (GEMMA2_2B,),
    encode_lumina2,
    _predict_lumina2,
    latent_shape=_lumina2_latent,
    objective="flow",
    denoiser="transformer",
    latent_patch=2,  # the transformer's 2x2 patches
    native_size=_lumina2_size,
    guidance=4.0,
    call_kwargs=_lumina2_call,
    pipelines=("Lumina2Pipeline",),
    state_tokenizers=("tokenizer",),
    encode_long=encode_lumina2_long,
    no_negative=no_negative_lumina2,
    prefers_bf16=True,  # Gemma 2 overflows in fp16
    formats=("native", "comfyui"),  # ComfyUI's Lumina 2 tokenizer asks for gemma2_2b
    prompt_span=prompt_span(lumina2_state_ids),
    prompt_window=_prompt_window,
    max_side=_lumina2_max_side,
)
