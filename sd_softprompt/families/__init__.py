"""Model families: the one place that knows how SD 1.x/2.x, SDXL, SD3 and Flux differ.

A `Family` says which text encoders a pipeline has (and the soft prompt file key of each), how the
pipeline turns prompts into the conditioning its denoiser consumes, how to call that denoiser, and what
the denoiser is trained to predict. Everything else in the package is written against this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, UnsupportedPipelineError
from .encoding import (  # noqa: F401 (CHUNK, chunk_token_ids: re-exported)
    CHUNK,
    FLUX_MAX_SEQUENCE_LENGTH,
    SD3_MAX_SEQUENCE_LENGTH,
    Cond,
    chunk_token_ids,
    encode_flux,
    encode_flux_long,
    encode_sd,
    encode_sd3,
    encode_sd3_long,
    encode_sd_long,
    encode_sdxl,
    encode_sdxl_long,
    no_negative_flux,
    no_negative_sd,
    no_negative_sd3,
    no_negative_sdxl,
    sd3_window,
)


@dataclass(frozen=True)
class Encoder:
    key: str  # tensor key in the soft prompt file (ComfyUI / A1111 convention)
    tokenizer: str  # pipeline attribute names
    text_encoder: str
    width: int  # its input width on the real checkpoints (a file's bare tensor is matched to a key by it)


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    encoders: tuple[Encoder, ...]
    encode: Callable[[Any, list[str]], Cond]  # (pipe, prompts) -> conditioning, differentiable
    predict: Callable[[Any, torch.Tensor, torch.Tensor, Cond], torch.Tensor]  # (pipe, x_t, t, cond) -> output
    latent_shape: Callable[[Any, int, int], tuple[int, ...]]  # (pipe, height, width) -> one sample's latent
    objective: str  # "scheduler" (epsilon / v_prediction, read from its config) or "flow"
    denoiser: str  # pipeline attribute of the denoiser: "unet" or "transformer"
    latent_patch: int  # latent pixels per denoiser token side (Flux packs 2x2): sizes step by VAE factor x this
    native_size: Callable[[Any], int]  # (pipe) -> the model's default image size in pixels
    guidance: float  # the pipeline's usual guidance scale (Flux dev: distilled guidance)
    call_kwargs: Callable[[Any, str | None], dict]  # (pipe, negative prompt) -> extra pipeline-call arguments
    pipelines: tuple[str, ...]  # diffusers pipeline classes of this family
    # Tokenizers whose tokens make up the conditioning's sequence ("states"), in order; each but the last
    # fills its model_max_length positions. Sets where a soft prompt's states line up with a hard prompt's.
    state_tokenizers: tuple[str, ...]
    # (pipe, prompts) -> conditioning of prompts longer than the window, as A1111 / ComfyUI encode them
    # (CLIP: 75-token chunks, states concatenated); the same as `encode` for prompts that fit
    encode_long: Callable[[Any, list[str]], Cond]
    # (pipe, batch) -> what the pipeline's guidance uses when no negative prompt is given (None: no guidance)
    no_negative: Callable[[Any, int], Cond | None]
    matches: Callable[[Any], bool] = lambda pipe: True  # tells apart families that share pipeline classes
    prefers_bf16: bool = False  # half precision on a GPU: bf16 where it has it (fp16 overflows, black images)
    formats: tuple[str, ...] | None = None  # file formats whose tools read its soft prompts; None: every one

    def encoder(self, key: str) -> Encoder:
        return next(e for e in self.encoders if e.key == key)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.encoders)


def prompt_tokens(pipe, family: Family, prompt: str) -> tuple[int, int]:
    """(the prompt's tokens, the tokens one window holds) for the encoders that set the denoiser's states
    (CLIP: 75 of 77 positions; Flux: T5; SD3: CLIP's window, then T5's): the first window it overflows."""
    for name in family.state_tokenizers:
        tokenizer = getattr(pipe, name)
        specials = len(tokenizer("").input_ids)  # start/end-of-text the tokenizer adds
        n, window = len(tokenizer(prompt, add_special_tokens=False).input_ids), tokenizer.model_max_length - specials
        if n > window:
            break
    return n, window


def fits_window(pipe, family: Family, prompt: str) -> bool:
    """Whether the pipeline's own encoding takes the whole prompt (else it cuts it to the window)."""
    n, window = prompt_tokens(pipe, family, prompt)
    return n <= window


# ---------------------------------------------------------------- denoisers
def _predict_sd(pipe, x_t, t, cond: Cond):
    return pipe.unet(x_t, t, encoder_hidden_states=cond["states"].to(x_t.dtype)).sample


def _predict_sdxl(pipe, x_t, t, cond: Cond):
    h, w = (s * pipe.vae_scale_factor for s in x_t.shape[-2:])
    # (original size, crop top-left, target size), as the pipeline builds them for an uncropped image
    time_ids = torch.tensor([h, w, 0, 0, h, w], device=x_t.device, dtype=x_t.dtype).repeat(x_t.shape[0], 1)
    added = {"text_embeds": cond["pooled"].to(x_t.dtype), "time_ids": time_ids}
    return pipe.unet(x_t, t, encoder_hidden_states=cond["states"].to(x_t.dtype), added_cond_kwargs=added).sample


FLUX_GUIDANCE = 3.5  # the pipeline's default guidance for guidance-distilled (dev) checkpoints


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


def _sd_call(pipe, negative_prompt: str | None) -> dict:
    return {} if negative_prompt is None else {"negative_prompt": negative_prompt}


def _flux_call(pipe, negative_prompt: str | None) -> dict:
    if negative_prompt:
        raise ConfigError("Flux is guidance-distilled and takes no negative prompt; leave --negative-prompt out")
    # Encode with the T5 window training uses; it differs from the pipeline's default (512) only for
    # checkpoints whose tokenizer is shorter (schnell: 256).
    window = min(FLUX_MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length)
    return {} if window == FLUX_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}


def _sd3_call(pipe, negative_prompt: str | None) -> dict:
    window = sd3_window(pipe)
    return _sd_call(pipe, negative_prompt) | (
        {} if window == SD3_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}
    )


def _unet_size(pipe) -> int:
    return int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


def _flux_size(pipe) -> int:
    return 128 * pipe.vae_scale_factor  # FluxPipeline.default_sample_size: 1024 px on the real model


def _sd3_size(pipe) -> int:
    return int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor  # 1024 px on the real model


def _sd3_latent(pipe, height: int, width: int):
    return (pipe.transformer.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


def _unet_latent(pipe, height: int, width: int):
    return (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)


def _flux_latent(pipe, height: int, width: int):
    # Flux packs 2x2 latent patches, so the latent grid must be even.
    f = pipe.vae_scale_factor * 2
    return (pipe.transformer.config.in_channels // 4, 2 * (height // f), 2 * (width // f))


CLIP_L = Encoder("clip_l", "tokenizer", "text_encoder", 768)
CLIP_G = Encoder("clip_g", "tokenizer_2", "text_encoder_2", 1280)
_UNET = dict(
    latent_shape=_unet_latent,
    objective="scheduler",
    denoiser="unet",
    latent_patch=1,
    native_size=_unet_size,
    call_kwargs=_sd_call,
)
_SD = dict(encode_long=encode_sd_long, no_negative=no_negative_sd, **_UNET)
_SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")


def _openclip_h(pipe) -> bool:
    # SD 1.x and 2.x share pipeline classes: OpenCLIP-H (SD 2.x) uses gelu, OpenAI CLIP-L (SD 1.x) quick_gelu.
    return pipe.text_encoder.config.hidden_act == "gelu"


FAMILIES: dict[str, Family] = {
    "sd1": Family(
        "sd1",
        "Stable Diffusion 1.x",
        (CLIP_L,),
        encode_sd,
        _predict_sd,
        guidance=7.5,
        pipelines=_SD_PIPELINES,
        state_tokenizers=("tokenizer",),
        matches=lambda pipe: not _openclip_h(pipe),
        **_SD,
    ),
    "sd2": Family(
        "sd2",
        "Stable Diffusion 2.x",
        (Encoder("clip_h", "tokenizer", "text_encoder", 1024),),
        encode_sd,
        _predict_sd,
        guidance=7.5,
        pipelines=_SD_PIPELINES,
        state_tokenizers=("tokenizer",),
        matches=_openclip_h,
        **_SD,
    ),
    "sdxl": Family(
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
        **_UNET,
    ),
    "sd3": Family(
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
        formats=("native", "onetrainer"),  # ComfyUI and OneTrainer read SD3 embeddings; diffusers' SD3 has no loader
    ),
    "flux": Family(
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
        formats=("native", "diffusers", "onetrainer"),  # A1111 and kohya have no Flux embeddings
    ),
}


def families_of_class(class_name: str | None) -> list[Family]:
    """The families whose pipelines have this class name (SD 1.x and 2.x share theirs)."""
    return [f for f in FAMILIES.values() if class_name in f.pipelines]


def detect_family(pipe) -> Family:
    """The family of a diffusers pipeline, from its class (and, where families share one, its encoders)."""
    name = type(pipe).__name__
    found = [f for f in families_of_class(name) if f.matches(pipe)]
    if not found:
        supported = ", ".join(f"{f.title} ({f.name})" for f in FAMILIES.values())
        raise UnsupportedPipelineError(f"{name} is not supported; supported families: {supported}")
    missing = [e.text_encoder for e in found[0].encoders if getattr(pipe, e.text_encoder, None) is None]
    if missing:  # e.g. SD3 loaded without its T5 to save memory
        raise UnsupportedPipelineError(
            f"{name} without {', '.join(missing)}: soft prompts need every text encoder of a {found[0].title} "
            f"pipeline; load it with all of them"
        )
    return found[0]


def prediction_type(pipe, family: Family) -> str:
    """What the denoiser predicts: 'epsilon', 'v_prediction' (from the scheduler config) or 'flow'."""
    if family.objective == "flow":
        return "flow"
    return pipe.scheduler.config.get("prediction_type", "epsilon")
