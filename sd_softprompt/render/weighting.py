"""Prompt weighting as A1111 and ComfyUI read it: ``(words:1.2)``, ``([v1][v2][v3]:1.2)``, ``(words)`` for 1.1.

The prompt is cut into (text, weight) segments, encoded in 75-token chunks as both tools encode a prompt (the
family's `encode_weighted`), and the weights then move each position's states by the formula of the tool named:

- ``a1111`` (modules/sd_emphasis.py, "Original"): multiply each position's states by its weight, then rescale
  the chunk so that its mean is what it was: ``z' = z * w * mean(z) / mean(z * w)``, per encoder and chunk.
- ``comfyui`` (comfy/sd1_clip.py, ``encode_token_weights``): move each weighted position from the empty
  prompt's state at that position: ``z' = (z - z_empty) * w + z_empty``; positions of weight 1 are untouched.

The pooled vector (SDXL) stays the unweighted prompt's, in both. A prompt with no weight other than 1 that fits
the window goes to the pipeline as plain text, so weight 1.0 is no weight, bit for bit.
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import ConfigError, shorten
from ..families import FAMILIES, Cond, Family, fits_window
from ..families.base import Chunked, Segments

WEIGHTINGS = ("a1111", "comfyui")
EMPHASIS = 1.1  # "(words)" without a number, in both tools

# A1111's parse_prompt_attention pieces, less its square brackets: the escapes \( \) \[ \] \\, "(", ":1.2)",
# ")", text, a lone ":" or "\".
_PIECE = re.compile(r"\\[()\[\]\\]|\\|\(|:\s*([+-]?[.\d]+)\s*\)|\)|[^\\():]+|:")


def parse_weights(prompt: str) -> Segments:
    """The prompt as (text, weight) segments: ``(words)`` x1.1, ``(words:1.3)`` x1.3, nested brackets multiply,
    an unclosed ``(`` weights the rest (as A1111 does), ``\\(`` ``\\)`` ``\\[`` ``\\]`` are plain brackets. Square brackets stay
    text (soft tokens are named ``[v1]``), so A1111's ``[words]`` (divide by 1.1) is not read: write
    ``(words:0.9)``. Adjacent segments of one weight are merged."""
    out: list[list] = []
    opened: list[int] = []  # where each open bracket's segments start

    def multiply(start: int, factor: float) -> None:
        for segment in out[start:]:
            segment[1] *= factor

    for match in _PIECE.finditer(prompt):
        text, number = match.group(0), match.group(1)
        if len(text) == 2 and text[0] == "\\":
            out.append([text[1], 1.0])
        elif text == "(":
            opened.append(len(out))
        elif number is not None and opened:
            try:
                weight = float(number)
            except ValueError:
                raise ConfigError(
                    f"prompt {shorten(prompt)!r}: {number!r} is not a weight; write (words:1.2)"
                ) from None
            multiply(opened.pop(), weight)
        elif text == ")" and opened:
            multiply(opened.pop(), EMPHASIS)
        else:
            out.append([text, 1.0])
    for start in opened:
        multiply(start, EMPHASIS)
    merged: list[list] = []
    for text, weight in out:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged] or [("", 1.0)]


def plain_text(segments: Segments) -> str:
    """The prompt the segments spell, without the weighting syntax."""
    return "".join(text for text, _ in segments)


def is_weighted(segments: Segments) -> bool:
    return any(weight != 1.0 for _, weight in segments)


def check_weighting(family: Family, mode: str) -> None:
    """ConfigError for a mode that is not a tool's, or a family that takes no weights."""
    if mode not in WEIGHTINGS:
        raise ConfigError(f"--weighting {mode!r}: choose {' or '.join(WEIGHTINGS)} (the tool whose formula to use)")
    if family.encode_weighted is None:
        able = ", ".join(f.name for f in FAMILIES.values() if f.encode_weighted is not None)
        raise ConfigError(
            f"--weighting: {family.title} prompts take no weights here (families that do: {able}); "
            f"leave --weighting out"
        )


def apply_weights(pipe, family: Family, chunked: Chunked, mode: str) -> Cond:
    """The conditioning of an encoded batch with its weights applied by `mode`'s formula."""
    if mode == "a1111":
        parts = [_a1111(z, _weights(chunked, z)) for z in chunked.parts]
    else:
        empty = family.encode_weighted(pipe, [[("", 1.0)]])  # [1, 1, T, D] per encoder
        parts = [_comfyui(z, e[:, :1], _weights(chunked, z)) for z, e in zip(chunked.parts, empty.parts)]
    return chunked.cond(parts)


def _weights(chunked: Chunked, z: torch.Tensor) -> torch.Tensor:
    return chunked.weights.to(z.device, z.dtype).unsqueeze(-1)  # [B, C, T, 1]


def _a1111(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A1111: scale by the weights, then restore each chunk's mean (over its positions and width)."""
    mean = z.mean(dim=(-2, -1), keepdim=True)
    z = z * w
    return z * (mean / z.mean(dim=(-2, -1), keepdim=True))


def _comfyui(z: torch.Tensor, empty: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """ComfyUI: interpolate each weighted position from the empty prompt's state there."""
    return torch.where(w != 1, (z - empty) * w + empty, z)


def encode_weighted_prompt(pipe, prompt: str, mode: str, family: Family) -> Cond:
    """A weighted prompt's conditioning (states [1, C x 77, D], and the pooled vector where the family has one)."""
    check_weighting(family, mode)
    with torch.inference_mode():
        return apply_weights(pipe, family, family.encode_weighted(pipe, [parse_weights(prompt)]), mode)


def weighted_call(pipe, family: Family, prompt: str, negative_prompt: str | None, mode: str) -> dict:
    """The pipeline-call arguments that draw `prompt` (and `negative_prompt`) weighted as `mode` weights them:
    plain text when nothing is weighted and both fit the window (then exactly the pipeline's own encoding),
    else the weighted conditioning, precomputed (positive and negative of one length, as `mode` pads them)."""
    check_weighting(family, mode)
    positive = parse_weights(prompt)
    negative = parse_weights(negative_prompt) if negative_prompt is not None else None
    texts = [plain_text(s) for s in (positive, negative) if s is not None]
    if not any(is_weighted(s) for s in (positive, negative) if s is not None) and all(
        fits_window(pipe, family, t) for t in texts
    ):
        return {"prompt": texts[0], **family.call_kwargs(pipe, texts[1] if negative is not None else None)}
    with torch.inference_mode():
        cond = apply_weights(pipe, family, family.encode_weighted(pipe, [positive]), mode)
        if negative is not None:
            uncond = apply_weights(pipe, family, family.encode_weighted(pipe, [negative]), mode)
        else:
            uncond = family.no_negative(pipe, 1)
            if uncond is None:  # a family without guidance has nothing to pair the prompt with
                raise ConfigError(f"--weighting: {family.title} pipelines take no precomputed negative")
        empty = family.encode_weighted(pipe, [[("", 1.0)]]).cond()
        cond, uncond = _same_length(cond, uncond, empty, mode)
    return family.embeds_call(cond, uncond)


def _same_length(cond: Cond, uncond: Cond, empty: Cond, mode: str) -> tuple[Cond, Cond]:
    """Prompt and negative of different chunk counts: A1111 pads the shorter with the empty prompt's chunk
    (the "no negative" states themselves, when that is the shorter one), ComfyUI repeats both to a common
    multiple of their lengths."""
    a, b = cond["states"].shape[1], uncond["states"].shape[1]
    if a == b:
        return cond, uncond
    if mode == "comfyui":
        n = math.lcm(a, b)
        return _states(cond, cond["states"].repeat(1, n // a, 1)), _states(
            uncond, uncond["states"].repeat(1, n // b, 1)
        )
    if a < b:
        return _padded(cond, empty, b), uncond
    if torch.count_nonzero(uncond["states"]) == 0:  # SDXL's zeros for "no negative" stay zeros
        return cond, _states(uncond, uncond["states"].new_zeros(cond["states"].shape[0], a, uncond["states"].shape[2]))
    return cond, _padded(uncond, empty, a)


def _padded(cond: Cond, empty: Cond, length: int) -> Cond:
    """`cond` with the empty prompt's chunk appended until its states are `length` long."""
    states, chunk = cond["states"], empty["states"].to(cond["states"])
    return _states(cond, torch.cat([states, chunk.repeat(1, (length - states.shape[1]) // chunk.shape[1], 1)], 1))


def _states(cond: Cond, states: torch.Tensor) -> Cond:
    return {**cond, "states": states}
