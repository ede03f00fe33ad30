"""Validation of a soft prompt's contents: one check per concern, messages that name the file and the fix.

Plain functions over the vectors and tokens, so the type (softprompt.py) and anything else can run them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidVectorsError, listed, shorten
from .keys import ENCODER_KEYS, MAX_VECTORS, UNASSIGNED

# Floating dtypes torch can only store, not compute with (isfinite, norm, matmul): widened to float32 on the
# way in. float4_e2m1fn_x2 is not here: torch cannot even convert it, so validation refuses it.
WIDENED = {
    torch.float8_e4m3fn,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2,
    torch.float8_e5m2fnuz,
    *([torch.float8_e8m0fnu] if hasattr(torch, "float8_e8m0fnu") else []),
}
_USABLE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_keys(vectors: dict[str, Any], source: str) -> None:
    if not vectors:
        raise InvalidVectorsError(f"{source}: holds no vectors; a soft prompt needs at least one [N, width] tensor")
    for key in vectors:
        if key != UNASSIGNED and key not in ENCODER_KEYS:
            raise InvalidVectorsError(
                f"{source}: unknown encoder key {shorten(repr(key), 40)}; use one of {', '.join(ENCODER_KEYS)}"
            )
    if UNASSIGNED in vectors and len(vectors) > 1:
        raise InvalidVectorsError(
            f"{source}: {UNASSIGNED!r} (encoder picked later by width) must be the only key; "
            f"name the encoders of {sorted(vectors)} instead"
        )


def check_tensor(key: str, tensor: Any, source: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidVectorsError(
            f"{source}: {key} is a {type(tensor).__name__}, not a tensor; expected [N, width] floats"
        )
    if tensor.dim() != 2:
        raise InvalidVectorsError(
            f"{source}: {key} has shape {list(tensor.shape)}; expected [N, width] (N vectors of the encoder's width)"
        )
    if tensor.dtype not in _USABLE_FLOATS:
        kind = "a floating dtype torch cannot convert" if tensor.is_floating_point() else "not floating point"
        raise InvalidVectorsError(
            f"{source}: {key} is {dtype_name(tensor.dtype)} ({kind}); "
            f"re-export the vectors as float32, float16 or bfloat16"
        )
    n, width = tensor.shape
    if n == 0:
        raise InvalidVectorsError(
            f"{source}: {key} holds 0 vectors (shape [0, {width}]); a soft prompt needs at least one"
        )
    if width == 0:
        raise InvalidVectorsError(
            f"{source}: {key} has zero width (shape [{n}, 0]); vectors need the encoder's width, e.g. 768 for clip_l"
        )
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise InvalidVectorsError(
            f"{source}: {key} has {bad} non-finite values (NaN/inf); training diverged: "
            f"use an earlier checkpoint or a lower learning rate"
        )
    zero_rows = (tensor == 0).all(dim=1).nonzero().flatten().tolist()
    if zero_rows:
        raise InvalidVectorsError(
            f"{source}: vector {zero_rows[0] + 1} of {key} is all zeros; it carries nothing: retrain it or drop it"
        )


def check_counts(vectors: dict[str, torch.Tensor], source: str) -> None:
    counts = {key: int(tensor.shape[0]) for key, tensor in vectors.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{key} {n}" for key, n in counts.items())
        raise InvalidVectorsError(
            f"{source}: encoders disagree on the number of vectors ({listed}); every encoder needs one vector per token"
        )
    n = next(iter(counts.values()))
    if n > MAX_VECTORS:
        raise InvalidVectorsError(
            f"{source}: {n} vectors, more than the {MAX_VECTORS} a 77-token CLIP window can hold; "
            f"keep at most {MAX_VECTORS}"
        )


def check_tokens(tokens: list[str] | None, n: int, source: str) -> None:
    tokens = tokens or []
    if len(tokens) != n:
        raise InvalidVectorsError(
            f"{source}: {len(tokens)} tokens for {n} vectors; give one token per vector (or none, for [v1]..[v{n}])"
        )
    if any(not isinstance(t, str) or not t.strip() for t in tokens):
        raise InvalidVectorsError(f"{source}: tokens must be non-empty strings, got {listed(tokens)}")
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
    if duplicates:
        raise InvalidVectorsError(f"{source}: tokens repeat {listed(duplicates)}; each token must be unique")
