"""Model families: the one place that knows how SD 1.x/2.x, SDXL, SD3 and Flux differ.

A `Family` says which text encoders a pipeline has (and the soft prompt file key of each), how the
pipeline turns prompts into the conditioning its denoiser consumes, how to call that denoiser, and what
the denoiser is trained to predict. Everything else in the package is written against this table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError, UnsupportedPipelineError

Cond = dict[str, torch.Tensor]  # "states": [B, L, D] token states; "pooled": [B, P] when the family has one


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


# ---------------------------------------------------------------- prompt encoding, as the pipelines do it
def _encode_sd(pipe, prompts: list[str]) -> Cond:
    states, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, False)
    return {"states": states}


def _encode_sdxl(pipe, prompts: list[str]) -> Cond:
    states, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, device=pipe.text_encoder_2.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return {"states": states, "pooled": pooled}


# Flux's default is 512 T5 positions; the padding states after the prompt are what they are, so a
# shorter window gives the same prompt states for prompts that fit (and is what people use for speed).
FLUX_MAX_SEQUENCE_LENGTH = 512


def _encode_flux(pipe, prompts: list[str]) -> Cond:
    msl = min(FLUX_MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length)
    states, pooled, _ = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, device=pipe.text_encoder_2.device, max_sequence_length=msl
    )
    return {"states": states, "pooled": pooled}


# SD3's default T5 window; the tiny pipelines' T5 tokenizer is shorter, and the window follows it.
SD3_MAX_SEQUENCE_LENGTH = 256


def _sd3_window(pipe) -> int:
    return min(SD3_MAX_SEQUENCE_LENGTH, pipe.tokenizer_3.model_max_length)


def _encode_sd3(pipe, prompts: list[str]) -> Cond:
    # states: both CLIPs' penultimate states joined along the width (padded to T5's), then T5's along the
    # sequence; pooled: both CLIPs' pooled projections joined
    states, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        prompt_3=None,
        device=pipe.text_encoder.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        max_sequence_length=_sd3_window(pipe),
    )
    return {"states": states, "pooled": pooled}


def _no_negative_sd(pipe, batch: int) -> Cond:
    return _encode_sd(pipe, [""] * batch)


def _no_negative_sdxl(pipe, batch: int) -> Cond:
    empty = _encode_sdxl(pipe, [""] * batch)
    if pipe.config.get("force_zeros_for_empty_prompt", False):  # the base model's default: zeros, not ""
        empty = {k: torch.zeros_like(v) for k, v in empty.items()}
    return empty


def _no_negative_flux(pipe, batch: int) -> None:
    return None  # guidance-distilled: no classifier-free guidance, no negative prompt


def _no_negative_sd3(pipe, batch: int) -> Cond:
    return _encode_sd3(pipe, [""] * batch)


# ---------------------------------------------------------------- long prompts, as A1111 / ComfyUI encode them
# The pipelines cut a prompt at the encoder's window (CLIP: 77 positions, 75 prompt tokens). A1111
# (modules/sd_hijack_clip.py) and ComfyUI (comfy/sd1_clip.py) instead split it into 75-token chunks, wrap
# each in start/end-of-text padded to 77, encode the chunks separately and concatenate their states along
# the sequence; the pooled vector comes from the first chunk. A1111's boundaries are followed here: a
# chunk that fills up within COMMA_BACKTRACK tokens of a comma ends at the comma, and "BREAK" ends a chunk.
CHUNK = 75
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def chunk_token_ids(tokenizer, prompt: str) -> list[list[int]]:
    """The prompt's token ids in chunks of at most CHUNK, split where A1111 splits them (no special tokens)."""
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[list[int]] = []
    chunk: list[int] = []
    last_comma = -1
    for n, part in enumerate(_BREAK.split(prompt)):
        if n:  # a BREAK before this part ends the chunk, even an empty one
            chunks.append(chunk)
            chunk, last_comma = [], -1
        for token in tokenizer(part, add_special_tokens=False, truncation=False).input_ids if part else []:
            if token == comma:
                last_comma = len(chunk)
            elif len(chunk) == CHUNK and last_comma != -1 and len(chunk) - last_comma <= COMMA_BACKTRACK:
                # the words after the last comma move to the next chunk rather than being split
                chunks.append(chunk[: last_comma + 1])
                chunk, last_comma = chunk[last_comma + 1 :], -1
            if len(chunk) == CHUNK:
                chunks.append(chunk)
                chunk, last_comma = [], -1
            chunk.append(token)
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


def _chunk_inputs(pipe, tokenizer, prompts: list[str]) -> torch.Tensor:
    """[B, C, 77] ids: each chunk as the tokenizer pads one prompt (start, tokens, end, padding); prompts
    with fewer chunks get empty chunks, as A1111 pads a batch."""
    convert = getattr(pipe, "maybe_convert_prompt", None)  # expands multi-vector aliases, as the pipelines do
    per_prompt = [chunk_token_ids(tokenizer, convert(p, tokenizer) if convert else p) for p in prompts]
    count = max(len(c) for c in per_prompt)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [
        [[bos, *c, eos] + [pad] * (CHUNK - len(c)) for c in chunks + [[]] * (count - len(chunks))]
        for chunks in per_prompt
    ]
    return torch.tensor(rows)


def _clip_chunks(text_encoder, ids: torch.Tensor, **kw):
    """Run a CLIP encoder on [B, C, 77] chunk ids as B*C prompts."""
    b, c, n = ids.shape
    return text_encoder(ids.view(b * c, n).to(text_encoder.device), **kw), (b, c)


def _encode_sd_long(pipe, prompts: list[str]) -> Cond:
    ids = _chunk_inputs(pipe, pipe.tokenizer, prompts)
    mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):  # as the pipeline does
        mask = (ids != pipe.tokenizer.pad_token_id) | (ids == pipe.tokenizer.eos_token_id)
        mask = mask.view(-1, ids.shape[-1]).long().to(pipe.text_encoder.device)
    out, (b, c) = _clip_chunks(pipe.text_encoder, ids, attention_mask=mask)
    states = out[0]
    return {"states": states.reshape(b, c * states.shape[1], states.shape[2])}


def _encode_sdxl_long(pipe, prompts: list[str]) -> Cond:
    states, pooled = [], None
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = _chunk_inputs(pipe, tokenizer, prompts)
        if states and ids.shape[1] != states[0].shape[1]:
            raise ValueError("the two SDXL tokenizers split this prompt into different numbers of chunks")
        out, (b, c) = _clip_chunks(text_encoder, ids, output_hidden_states=True)
        if out[0].ndim == 2:  # the projected pooled output of encoder 2, from the first chunk
            pooled = out[0].view(b, c, -1)[:, 0]
        states.append(out.hidden_states[-2].reshape(b, c, ids.shape[-1], -1))
    states = torch.cat(states, dim=-1)
    return {"states": states.flatten(1, 2), "pooled": pooled}


def _encode_flux_long(pipe, prompts: list[str]) -> Cond:
    """T5 takes the whole prompt (relative positions; ComfyUI does not cut it either); CLIP gives only the
    pooled vector, which every tool takes from the first 77 positions."""
    window = min(FLUX_MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length)
    longest = max(len(pipe.tokenizer_2(p).input_ids) for p in prompts)
    states, pooled, _ = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, device=pipe.text_encoder_2.device, max_sequence_length=max(window, longest)
    )
    return {"states": states, "pooled": pooled}


def _encode_sd3_long(pipe, prompts: list[str]) -> Cond:
    """Both CLIPs chunked (penultimate states joined along the width, padded to T5's), T5 uncut after them;
    pooled: both CLIPs' from the first chunk. ComfyUI's long SD3 prompts, with A1111's chunk boundaries."""
    clip, pooled = [], []
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = _chunk_inputs(pipe, tokenizer, prompts)
        out, (b, c) = _clip_chunks(text_encoder, ids, output_hidden_states=True)
        pooled.append(out[0].view(b, c, -1)[:, 0])
        clip.append(out.hidden_states[-2].reshape(b, c * ids.shape[-1], -1))
    window = _sd3_window(pipe)
    longest = max(len(pipe.tokenizer_3(p).input_ids) for p in prompts)
    t5 = pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=max(window, longest), device=clip[0].device)
    clip_states = torch.cat(clip, dim=-1).to(t5.dtype)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5.shape[-1] - clip_states.shape[-1]))
    return {"states": torch.cat([clip_states, t5], dim=-2), "pooled": torch.cat(pooled, dim=-1)}


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
    window = _sd3_window(pipe)
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
_SD = dict(encode_long=_encode_sd_long, no_negative=_no_negative_sd, **_UNET)
_SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")


def _openclip_h(pipe) -> bool:
    # SD 1.x and 2.x share pipeline classes: OpenCLIP-H (SD 2.x) uses gelu, OpenAI CLIP-L (SD 1.x) quick_gelu.
    return pipe.text_encoder.config.hidden_act == "gelu"


FAMILIES: dict[str, Family] = {
    "sd1": Family(
        "sd1",
        "Stable Diffusion 1.x",
        (CLIP_L,),
        _encode_sd,
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
        _encode_sd,
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
        _encode_sdxl,
        _predict_sdxl,
        guidance=5.0,
        pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
        state_tokenizers=("tokenizer_2",),  # both CLIPs tokenize alike; their states are joined along the width
        encode_long=_encode_sdxl_long,
        no_negative=_no_negative_sdxl,
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
        _encode_sd3,
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
        encode_long=_encode_sd3_long,
        no_negative=_no_negative_sd3,
        formats=("native", "onetrainer"),  # ComfyUI and OneTrainer read SD3 embeddings; diffusers' SD3 has no loader
    ),
    "flux": Family(
        "flux",
        "Flux",
        (CLIP_L, Encoder("t5xxl", "tokenizer_2", "text_encoder_2", 4096)),
        _encode_flux,
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
        encode_long=_encode_flux_long,
        no_negative=_no_negative_flux,
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
