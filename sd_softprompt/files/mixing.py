"""Combine soft prompts: weighted sums, concatenation, scaling, and the points between two of them.

Every result is a new `SoftPrompt` whose metadata records what it was made of (``metadata["mix"]``, JSON:
the operation, each source and its weight, the strength), so a saved mix says where it came from. The
arithmetic runs in float32 and the result takes the inputs' common dtype; a weight of 0 drops its term
and a weight of 1 leaves its vectors as they are, so weights (1, 0) give the first soft prompt bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import torch

from ..errors import MixError
from .keys import PathLike
from .softprompt import SoftPrompt

Source = SoftPrompt | PathLike


def mix(
    sources: Sequence[Source],
    weights: Sequence[float] | None = None,
    *,
    strength: float = 1.0,
    name: str | None = None,
) -> SoftPrompt:
    """Weighted sum of soft prompts of one family and one N (default weights: the mean), times `strength`.

    Example:

    ```py
    from sd_softprompt import mix

    evening = mix(["dawn.safetensors", "dusk.safetensors"], weights=[0.7, 0.3])
    evening.save("evening.safetensors")
    ```
    """
    named = _read(sources)
    weights = [1.0 / len(named)] * len(named) if weights is None else [float(w) for w in weights]
    if len(weights) != len(named):
        raise MixError(f"{len(named)} soft prompts but {len(weights)} weights; give one weight per soft prompt")
    _check_numbers(weights + [strength])
    _check_compatible(named, same_count=True)
    vectors = {}
    for key in named[0][1].vectors:
        terms = [(w, soft.vectors[key]) for w, (_, soft) in zip(weights, named) if w != 0]
        if not terms:
            raise MixError("every weight is 0; the sum would be all zeros: give at least one soft prompt a weight")
        vectors[key] = _scaled(_weighted_sum(terms), strength, _dtype(named, key))
    return _result(named, vectors, named[0][1].tokens, "sum", weights, strength, name)


def concat(sources: Sequence[Source], *, strength: float = 1.0, name: str | None = None) -> SoftPrompt:
    """The soft prompts' vectors one after another (N1 + N2 + ... tokens), times `strength`.

    The tokens are the sources' own, joined, when they are all different; else ``[v1]..[vN]``.
    """
    named = _read(sources)
    _check_numbers([strength])
    _check_compatible(named, same_count=False)
    vectors = {
        key: _scaled(torch.cat([soft.vectors[key].float() for _, soft in named]), strength, _dtype(named, key))
        for key in named[0][1].vectors
    }
    tokens = [t for _, soft in named for t in soft.tokens]
    return _result(named, vectors, tokens if len(set(tokens)) == len(tokens) else None, "concat", None, strength, name)


def scale(source: Source, strength: float, *, name: str | None = None) -> SoftPrompt:
    """One soft prompt with every vector multiplied by `strength`."""
    return mix([source], [1.0], strength=strength, name=name)


def interpolate(a: Source, b: Source, t: float, *, name: str | None = None) -> SoftPrompt:
    """The point `t` of the way from `a` (t=0, bit for bit) to `b` (t=1): weights (1 - t, t)."""
    return mix([a, b], [1.0 - t, t], name=name)


# ------------------------------------------------------------------------------------------ helpers
def _read(sources: Sequence[Source]) -> list[tuple[str, SoftPrompt]]:
    """(how to name it in messages and metadata, the soft prompt) for each source."""
    if isinstance(sources, (str, SoftPrompt)) or not sources:
        raise MixError("give a list of at least one soft prompt (file or SoftPrompt) to combine")
    named = []
    for source in sources:
        if isinstance(source, SoftPrompt):
            name = source.origin or f"<memory>: {source.name}"  # origin: the file(s) it was read from
            source.validate(name)
            named.append((name, source))
        else:
            named.append((str(source), SoftPrompt.load(source)))
    return named


def _check_numbers(numbers: list[float]) -> None:
    bad = [n for n in numbers if not math.isfinite(n)]
    if bad:
        raise MixError(f"weights and strength must be finite numbers, got {bad[0]}")


def _describe(soft: SoftPrompt) -> str:
    return f"{' + '.join(sorted(soft.vectors))} ({soft.family or 'family unknown'})"


def _check_compatible(named: list[tuple[str, SoftPrompt]], same_count: bool) -> None:
    """One family, one width per encoder and (for a sum) one N, or one line naming the two files that differ."""
    first_name, first = named[0]
    for other_name, other in named[1:]:
        if set(other.vectors) != set(first.vectors) or (first.family and other.family and first.family != other.family):
            raise MixError(
                f"{first_name} holds {_describe(first)} but {other_name} holds {_describe(other)}; "
                f"only soft prompts of one model family combine"
            )
        for key, vectors in first.vectors.items():
            if other.vectors[key].shape[1] != vectors.shape[1]:
                raise MixError(
                    f"{first_name}: {key} is {vectors.shape[1]} wide but {other_name}: {key} is "
                    f"{other.vectors[key].shape[1]} wide; they were trained for different models"
                )
        if same_count and other.num_vectors != first.num_vectors:
            raise MixError(
                f"{first_name} has {first.num_vectors} vectors but {other_name} has {other.num_vectors}; "
                f"a weighted sum needs the same N (concatenate them instead: --concat)"
            )


def _weighted_sum(terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    # Start from the first term rather than from zeros (0 + -0.0 is +0.0), and leave weight-1 terms untouched.
    total = None
    for weight, vectors in terms:
        term = vectors.float() if weight == 1 else vectors.float() * weight
        total = term if total is None else total + term
    return total


def _scaled(vectors: torch.Tensor, strength: float, dtype: torch.dtype) -> torch.Tensor:
    out = (vectors.clone() if strength == 1 else vectors * strength).to(dtype)  # never the source's own tensor
    if not bool(torch.isfinite(out).all()):
        # The inputs were checked finite: the result is too large for its dtype (not a diverged training run).
        raise MixError(
            f"the result (strength {strength:g}) is too large for {str(dtype).replace('torch.', '')}: it overflows "
            f"past {torch.finfo(dtype).max:.3g} to inf; use a smaller strength or smaller weights"
        )
    return out


def _dtype(named: list[tuple[str, SoftPrompt]], key: str) -> torch.dtype:
    dtype = named[0][1].vectors[key].dtype
    for _, soft in named[1:]:
        dtype = torch.promote_types(dtype, soft.vectors[key].dtype)
    return dtype


def _result(
    named: list[tuple[str, SoftPrompt]],
    vectors: dict[str, torch.Tensor],
    tokens: list[str] | None,
    op: str,
    weights: list[float] | None,
    strength: float,
    name: str | None,
) -> SoftPrompt:
    record = {"op": op, "sources": [source for source, _ in named]}
    if weights is not None:
        record["weights"] = weights
    record["strength"] = strength
    metadata = {"name": name or "mix", "mix": json.dumps(record)}
    family = named[0][1].family
    if family:
        metadata["family"] = family
    result = SoftPrompt(vectors=vectors, tokens=tokens, metadata=metadata)
    result.validate(f"the {op} of {', '.join(source for source, _ in named)}")
    return result
