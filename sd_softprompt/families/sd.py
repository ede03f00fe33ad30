"""Stable Diffusion 1.x and 2.x: one CLIP text encoder (OpenAI CLIP-L or OpenCLIP-H), a UNet, and the
UNet parts that SDXL shares."""

from __future__ import annotations

from .base import Chunked, Cond, Encoder, Family, Segments
from .clip import CLIP_L, chunk_inputs, chunk_weighted_inputs, clip_chunks


def encode_sd(pipe, prompts: list[str]) -> Cond:
    states, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, False)
    return {"states": states}


def encode_sd_long(pipe, prompts: list[str]) -> Cond:
    states = _encode_chunks(pipe, chunk_inputs(pipe, pipe.tokenizer, prompts))
    return {"states": states.flatten(1, 2)}


def encode_sd_weighted(pipe, prompts: list[Segments]) -> Chunked:
    ids, weights = chunk_weighted_inputs(pipe, pipe.tokenizer, prompts)
    return Chunked([_encode_chunks(pipe, ids)], weights, None)


def _encode_chunks(pipe, ids):
    """[B, C, 77] chunk ids -> [B, C, 77, D] states."""
    mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):  # as the pipeline does
        mask = (ids != pipe.tokenizer.pad_token_id) | (ids == pipe.tokenizer.eos_token_id)
        mask = mask.view(-1, ids.shape[-1]).long().to(pipe.text_encoder.device)
    out, (b, c) = clip_chunks(pipe.text_encoder, ids, attention_mask=mask)
    states = out[0]
    return states.reshape(b, c, states.shape[1], states.shape[2])


def embeds_call_sd(cond: Cond, negative: Cond) -> dict:
    return {"prompt": None, "prompt_embeds": cond["states"], "negative_prompt_embeds": negative["states"]}


def no_negative_sd(pipe, batch: int) -> Cond:
    return encode_sd(pipe, [""] * batch)


def _predict_sd(pipe, x_t, t, cond: Cond):
    return pipe.unet(x_t, t, encoder_hidden_states=cond["states"].to(x_t.dtype)).sample


def negative_call(pipe, negative_prompt: str | None) -> dict:
    """The pipeline-call arguments for a negative prompt, for the pipelines that take one as it is."""
    return {} if negative_prompt is None else {"negative_prompt": negative_prompt}


def _unet_size(pipe) -> int:
    return int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


def _unet_latent(pipe, height: int, width: int):
    return (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


# The UNet half of a Family row, shared with SDXL.
UNET = dict(
    latent_shape=_unet_latent,
    objective="scheduler",
    denoiser="unet",
    latent_patch=1,
    native_size=_unet_size,
    call_kwargs=negative_call,
)
_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")


def _openclip_h(pipe) -> bool:
    # SD 1.x and 2.x share pipeline classes: OpenCLIP-H (SD 2.x) uses gelu, OpenAI CLIP-L (SD 1.x) quick_gelu.
    return pipe.text_encoder.config.hidden_act == "gelu"


_SD = dict(
    encode=encode_sd,
    predict=_predict_sd,
    guidance=7.5,
    pipelines=_PIPELINES,
    state_tokenizers=("tokenizer",),
    encode_long=encode_sd_long,
    no_negative=no_negative_sd,
    encode_weighted=encode_sd_weighted,
    embeds_call=embeds_call_sd,
    **UNET,
)
SD1 = Family("sd1", "Stable Diffusion 1.x", (CLIP_L,), matches=lambda pipe: not _openclip_h(pipe), **_SD)
SD2 = Family(
    "sd2", "Stable Diffusion 2.x", (Encoder("clip_h", "tokenizer", "text_encoder", 1024),), matches=_openclip_h, **_SD
)
