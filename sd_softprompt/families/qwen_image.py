"""Qwen-Image: the language model of Qwen2.5-VL 7B (its last, normed states) read through the pipeline's chat
template, a dual-stream MMDiT on 2x2-packed latents of a per-channel normalised VAE, flow matching; classifier-
free guidance (`true_cfg_scale`) only when a negative prompt is given.

The pipeline writes "<|im_start|>system\\n<instruction><|im_end|>\\n<|im_start|>user\\n<prompt><|im_end|>\\n
<|im_start|>assistant\\n", drops its first 34 tokens (`prompt_template_encode_start_idx`: the system turn and
the user header) from the states and pads them to the batch's longest prompt with a mask. The states are the
prompt's, then the five tokens that close the turn. A soft token's vectors sit where the prompt's words do; the
template's tokens are Qwen's own. Conditioning is padded to a fixed window with masked zeros (`pad_states`),
which the transformer's masked attention ignores, so that prompts of any length stack.

Key: "qwen25_7b", ComfyUI's key for this encoder (comfy/text_encoders/qwen_image.py; ComfyUI builds its tokenizer
without an embedding directory, so it reads no embedding files here); OneTrainer has no Qwen-Image embeddings
and diffusers no textual-inversion loader for the pipeline, so files are written native only."""

from __future__ import annotations

import torch

from .base import Cond, Encoder, Family
from .llm import pad_states, prompt_span
from .sd import negative_call

QWEN_IMAGE_MAX_SEQUENCE_LENGTH = 512  # the pipeline call's default window (states after the dropped template)
QWEN_IMAGE_MAX_STATES = 1024  # the most states the pipeline's tokenization keeps (tokenizer_max_length)

QWEN25_7B = Encoder("qwen25_7b", "tokenizer", "text_encoder", 3584)


def _window(pipe) -> int:
    return min(QWEN_IMAGE_MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length)


def qwen_image_state_ids(pipe, prompt: str, window: int | None = None) -> list[int]:
    """The ids the states stand on, unpadded: the template around the prompt, its first tokens dropped, cut to
    the window."""
    ids = pipe.tokenizer(pipe.prompt_template_encode.format(prompt)).input_ids
    return ids[pipe.prompt_template_encode_start_idx :][: window or _window(pipe)]


def _encode(pipe, prompts: list[str], window: int) -> Cond:
    states, mask = pipe.encode_prompt(prompts, device=pipe.text_encoder.device, max_sequence_length=window)
    if mask is None:  # the pipeline drops a mask with nothing masked
        mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
    return pad_states({"states": states, "mask": mask}, window)


def encode_qwen_image(pipe, prompts: list[str]) -> Cond:
    return _encode(pipe, prompts, _window(pipe))


def encode_qwen_image_long(pipe, prompts: list[str]) -> Cond:
    """The whole prompt, up to the 1024 states the pipeline's tokenization keeps (Qwen has rotary positions)."""
    longest = max(len(qwen_image_state_ids(pipe, p, window=1 << 20)) for p in prompts)
    return _encode(pipe, prompts, min(max(_window(pipe), longest), QWEN_IMAGE_MAX_STATES))


def no_negative_qwen_image(pipe, batch: int) -> None:
    return None  # without a negative prompt the pipeline runs no classifier-free guidance


def _predict_qwen_image(pipe, x_t, t, cond: Cond):
    """x_t: unpacked latents [B, C, h, w]; t: sigmas in [0, 1] (the pipeline passes timestep / 1000). Returns the
    velocity, unpacked."""
    b, c, h, w = x_t.shape
    f = pipe.vae_scale_factor
    out = pipe.transformer(
        hidden_states=pipe._pack_latents(x_t, b, c, h, w),
        timestep=t.to(x_t.dtype),
        encoder_hidden_states=cond["states"].to(x_t.dtype),
        encoder_hidden_states_mask=cond["mask"],
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        return_dict=False,
    )[0]
    return pipe._unpack_latents(out, h * f, w * f, f)[:, :, 0]  # [B, C, 1, h, w]: one frame


def _qwen_image_latents(pipe, images: torch.Tensor) -> torch.Tensor:
    """The VAE (a one-frame video autoencoder) normalised per channel by its latents_mean / latents_std, as the
    pipeline's image-to-image encoding does."""
    vae = pipe.vae
    z = vae.encode(images[:, :, None]).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(z)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(z)
    return (z - mean) / std


def _qwen_image_call(pipe, negative_prompt: str | None) -> dict:
    window = _window(pipe)
    return negative_call(pipe, negative_prompt) | (
        {} if window == QWEN_IMAGE_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}
    )


def _qwen_image_size(pipe) -> int:
    return pipe.default_sample_size * pipe.vae_scale_factor  # 1024 px


def _qwen_image_latent(pipe, height: int, width: int):
    # 2x2 packed latents: the latent grid must be even
    f = pipe.vae_scale_factor * 2
    return (pipe.transformer.config.in_channels // 4, 2 * (height // f), 2 * (width // f))


def _prompt_window(pipe) -> int:
    return _window(pipe) - len(qwen_image_state_ids(pipe, ""))


QWEN_IMAGE = Family(
    "qwen_image",
    "Qwen-Image",
    (QWEN25_7B,),
    encode_qwen_image,
    _predict_qwen_image,
    latent_shape=_qwen_image_latent,
    objective="flow",
    denoiser="transformer",
    latent_patch=2,
    native_size=_qwen_image_size,
    guidance=4.0,  # true_cfg_scale, with a negative prompt
    call_kwargs=_qwen_image_call,
    pipelines=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
    state_tokenizers=("tokenizer",),
    encode_long=encode_qwen_image_long,
    no_negative=no_negative_qwen_image,
    prefers_bf16=True,
    formats=("native",),
    prompt_span=prompt_span(qwen_image_state_ids),
    prompt_window=_prompt_window,
    vae_latents=_qwen_image_latents,
    guidance_arg="true_cfg_scale",
)
