"""What every family file fills in: its text encoders (`Encoder`), its `Family` row, and the helpers that read
a pipeline through a row (window fit, prediction type). Nothing here names a family."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Cond = dict[str, torch.Tensor]  # "states": [B, L, D] token states; "pooled": [B, P] when the family has one
Segments = list[tuple[str, float]]  # a prompt as (text, weight) pieces: A1111 / ComfyUI's "(words:1.2)"


@dataclass
class Chunked:
    """Prompts encoded in chunks as A1111 / ComfyUI encode them, before any weight is applied."""

    parts: list[torch.Tensor]  # per text encoder whose states the denoiser reads, [B, C, T, D_e], chunk by chunk
    weights: torch.Tensor  # [B, C, T]: each position's weight (1 for start, end and padding tokens)
    pooled: torch.Tensor | None  # [B, P], from the first chunk, unweighted (as both tools take it)

    def cond(self, parts: list[torch.Tensor] | None = None) -> Cond:
        """The conditioning: the parts (these, or the weighted ones given) joined along the width, the chunks
        one after another along the sequence."""
        states = torch.cat(parts if parts is not None else self.parts, dim=-1).flatten(1, 2)
        return {"states": states} if self.pooled is None else {"states": states, "pooled": self.pooled}


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
    # Pipelines that wrap the prompt in a template (LLM encoders): (pipe, prompt) -> (first position, token
    # count) of the prompt in the states, and (pipe) -> the prompt tokens the pipeline keeps. None: the prompt
    # follows the tokenizer's start token, and the window is model_max_length less the tokenizer's specials.
    prompt_span: Callable[[Any, str], tuple[int, int]] | None = None
    prompt_window: Callable[[Any], int] | None = None
    lowercases_prompts: bool = False  # the pipeline lowercases prompts (PixArt): a token with capitals never matches
    # (pipe, images [B, 3, H, W] in [-1, 1]) -> the latents the denoiser works on, for VAEs whose latents the
    # pipeline normalises its own way (per-channel mean/std, batch-norm statistics, patchified). None: the VAE's
    # mode, shifted by its shift_factor and scaled by its scaling_factor.
    vae_latents: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    guidance_arg: str = "guidance_scale"  # the pipeline-call argument that takes the guidance scale
    # Prompt weighting ("(words:1.2)", render/weighting.py): (pipe, prompts as segments) -> their chunked encoding
    # before weights, and (cond, negative cond) -> the pipeline-call arguments that hand it over precomputed.
    # None: the family takes no weights.
    encode_weighted: Callable[[Any, list[Segments]], Chunked] | None = None
    embeds_call: Callable[[Cond, Cond], dict] | None = None
    # What the diffusers pipeline itself demands of a picture's sides, beyond whole latent patches: a multiple
    # (Sana's pipeline checks 32 whatever the VAE), and (pipe) -> the largest side its positions reach (SD3's
    # position-embedding grid, Lumina 2's RoPE table), None where there is none.
    size_multiple: int = 1
    max_side: Callable[[Any], int | None] = lambda pipe: None

    def encoder(self, key: str) -> Encoder:
        return next(e for e in self.encoders if e.key == key)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.encoders)


def tokenizer_of(pipe, name: str):
    """The tokenizer at the pipeline attribute `name`: the object itself, or the tokenizer inside it where the
    pipeline keeps a processor there (Flux.2: a PixtralProcessor, whose chat template tokenizes with it)."""
    found = getattr(pipe, name)
    from transformers import ProcessorMixin

    return found.tokenizer if isinstance(found, ProcessorMixin) else found


def prompt_tokens(pipe, family: Family, prompt: str) -> tuple[int, int]:
    """(the prompt's tokens, the tokens one window holds) for the encoders that set the denoiser's states
    (CLIP: 75 of 77 positions; Flux: T5; SD3: CLIP's window, then T5's): the first window it overflows."""
    if family.prompt_span is not None:  # a template around the prompt: count the prompt's tokens inside it
        return family.prompt_span(pipe, prompt)[1], family.prompt_window(pipe)
    for name in family.state_tokenizers:
        tokenizer = tokenizer_of(pipe, name)
        specials = len(tokenizer("").input_ids)  # start/end-of-text the tokenizer adds
        n, window = (
            len(tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids),
            tokenizer.model_max_length - specials,
        )
        if n > window:
            break
    return n, window


def size_rule(pipe, family: Family) -> tuple[int, int | None]:
    """(the multiple a picture's sides must be, the largest side or None) for this pipeline."""
    return math.lcm(pipe.vae_scale_factor * family.latent_patch, family.size_multiple), family.max_side(pipe)


def fits_window(pipe, family: Family, prompt: str) -> bool:
    """Whether the pipeline's own encoding takes the whole prompt (else it cuts it to the window)."""
    n, window = prompt_tokens(pipe, family, prompt)
    return n <= window


def prediction_type(pipe, family: Family) -> str:
    """What the denoiser predicts: 'epsilon', 'v_prediction' (from the scheduler config) or 'flow'."""
    if family.objective == "flow":
        return "flow"
    return pipe.scheduler.config.get("prediction_type", "epsilon")
