"""The one in-memory type of a soft prompt, and reading one from a path (any layout, a pair, a LoRA bundle) and
writing it in a format.

Reading is by content, never by file extension (safe_read.py: the container; readers.py: which tool's layout);
writing goes through one writer table keyed by format and then by layout (writers.py); the checks are in
validation.py; conversion and bundling into a LoRA in convert.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FormatError, SoftPromptError, SourceError, listed, shorten
from .bundles import bundle_names, bundle_tokens, looks_like_lora, read_bundle
from .keys import FAMILY_BY_KEYS, FORMATS, PathLike, default_tokens
from .readers import Decoded, decode, resolve
from .validation import WIDENED, check_counts, check_keys, check_tensor, check_tokens, dtype_name
from .writers import WRITERS

__all__ = ["SoftPrompt", "check_source", "load_bundle"]


@dataclass
class SoftPrompt:
    """Learned embedding vectors for one or more text encoders, all with the same count N."""

    vectors: dict[str, torch.Tensor]
    tokens: list[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "native"
    notes: list[str] = field(default_factory=list)
    origin: str | None = field(default=None, compare=False)  # the file(s) it was read from, for messages
    # What the last validate() passed: tensors (by identity and in-place version) and tokens. A file is
    # checked when read; handing the object on (CLI -> loader) then costs no second pass over the vectors.
    _checked: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.vectors = {key: _as_rows(value) for key, value in self.vectors.items()}
        for key, value in self.vectors.items():
            if isinstance(value, torch.Tensor) and value.dtype in WIDENED:
                self.vectors[key] = value.float()
                self.notes.append(f"{key}: {dtype_name(value.dtype)} vectors widened to float32")
        self.tokens = default_tokens(self.num_vectors) if self.tokens is None else list(self.tokens)

    @property
    def num_vectors(self) -> int:
        """N, read from the first encoder (validate checks that all agree)."""
        first = next(iter(self.vectors.values()), None)
        if not isinstance(first, torch.Tensor) or first.dim() == 0:
            return 0
        return int(first.shape[0])

    @property
    def family(self) -> str | None:
        """``metadata["family"]`` if set, else inferred from the encoder keys."""
        return self.metadata.get("family") or FAMILY_BY_KEYS.get(frozenset(self.vectors))

    @property
    def name(self) -> str:
        return self.metadata.get("name") or "softprompt"

    def validate(self, source: str = "<memory>") -> None:
        """Raise InvalidVectorsError unless every tensor is a usable set of N finite vectors."""
        signature = self._signature()
        if self._checked is not None and _same(signature, self._checked):
            return
        check_keys(self.vectors, source)
        for key, tensor in self.vectors.items():
            check_tensor(key, tensor, source)
        check_counts(self.vectors, source)
        check_tokens(self.tokens, self.num_vectors, source)
        self._checked = signature

    def _signature(self) -> tuple:
        # The tensors themselves (held, so that no new tensor can take a checked one's id) and their versions.
        tensors = tuple((key, t, getattr(t, "_version", None)) for key, t in self.vectors.items())
        return tensors, tuple(self.tokens or ())

    @classmethod
    def load(cls, path: PathLike | Sequence[PathLike], token: str | None = None) -> SoftPrompt:
        """Read any understood file, folder, or diffusers SDXL pair of files.

        ``token`` names the soft prompt (metadata["name"]); a file holding a bare tensor has no
        name of its own and falls back to the file stem.
        """
        check_source(path)
        if isinstance(path, (list, tuple)):
            return _load_pair(path, token)
        files = resolve(Path(path))
        if len(files) == 2:
            return _load_pair(files, token)
        return _load_file(files[0], token)

    def save(self, path: PathLike, format: str = "native") -> list[Path]:
        """Write in ``format`` (one of FORMATS) atomically; return the paths written."""
        writer = WRITERS.get(format)
        if writer is None:
            raise SoftPromptError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
        self.validate(source=str(path))
        return writer(self, Path(path))


def check_source(source: object, soft_prompt_ok: bool = False) -> None:
    """SourceError unless ``source`` is a path, a list of paths (a pair) or, where taken, a SoftPrompt: None, a
    number or bytes would otherwise end in a bare TypeError from deep inside pathlib."""
    paths = source if isinstance(source, (list, tuple)) else [source]
    if isinstance(source, SoftPrompt) and soft_prompt_ok:
        return
    if not paths or not all(isinstance(p, (str, os.PathLike)) and not isinstance(p, SoftPrompt) for p in paths):
        kinds = (
            "a file path, [clip_l file, clip_g file] or a SoftPrompt"
            if soft_prompt_ok
            else "a file path or [clip_l file, clip_g file]"
        )
        raise SourceError(
            f"{shorten(repr(source), 40)} ({type(source).__name__}) is not a soft prompt source: give {kinds}"
        )


def _same(a: tuple, b: tuple) -> bool:
    (tensors_a, tokens_a), (tensors_b, tokens_b) = a, b
    return (
        tokens_a == tokens_b
        and len(tensors_a) == len(tensors_b)
        and all(ka == kb and ta is tb and va == vb for (ka, ta, va), (kb, tb, vb) in zip(tensors_a, tensors_b))
    )


def load_bundle(path: PathLike) -> dict[str, SoftPrompt]:
    """Every soft prompt bundled in a LoRA file, by name, in file order ({} when it has none).

    Each gets the tokens ``NAME, NAME_1, ..., NAME_{N-1}``, so ``NAME`` in a prompt expands to all N (the
    pipelines' ``maybe_convert_prompt``), as A1111 and diffusers' multi-vector embeddings are used.
    """
    out = {}
    for name, (decoded, recorded) in read_bundle(Path(path)).items():
        metadata = {k: v for k, v in recorded.items() if k != "tokens"} | {"name": name}
        soft = SoftPrompt(decoded.vectors, metadata=metadata, source_format=decoded.source_format)
        soft.notes = list(decoded.notes)
        soft.tokens = bundle_tokens(name, soft.num_vectors)
        soft.origin = f"{path}::{name}"
        soft.validate(soft.origin)
        out[name] = soft
    return out


def _as_rows(value: Any) -> Any:
    # A single vector [d] is one row; other shapes are left for validate() to judge.
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.unsqueeze(0) if value.dim() == 1 else value
    return value


# ---- path -> SoftPrompt ------------------------------------------------------------------


def _load_file(path: Path, token: str | None) -> SoftPrompt:
    names = bundle_names(path)
    if len(names) == 1:
        return load_bundle(path)[names[0]]
    if names:
        raise FormatError(
            f"{path}: a LoRA file with {len(names)} bundled embeddings ({', '.join(names)}); load them all with "
            f"load_soft_prompt(pipe, path) / --soft, or pick one: load_bundle(path)[name], convert --embedding NAME"
        )
    if looks_like_lora(path):
        raise FormatError(
            f"{path}: a LoRA file without bundled embeddings (no bundle_emb.* keys); load its weights with "
            f"pipe.load_lora_weights, or add a soft prompt: convert SOFT --to bundle --lora {path} --out NEW"
        )
    decoded = decode(path, token)
    return _build(decoded, token, str(path))


def _load_pair(paths: Sequence[PathLike], token: str | None) -> SoftPrompt:
    """A diffusers SDXL pair: first file is CLIP-L, second is OpenCLIP-bigG."""
    if len(paths) != 2:
        raise FormatError(
            f"{list(map(str, paths))}: give one path, or two for a diffusers SDXL pair (clip_l file, then clip_g file)"
        )
    first, second = (_single_tensor(decode(_existing(p), token), p) for p in paths)
    metadata = {**second[1], **first[1]}
    decoded = Decoded({"clip_l": first[0], "clip_g": second[0]}, metadata, "diffusers-sdxl-pair")
    return _build(decoded, token, " + ".join(str(p) for p in paths))


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file; an SDXL pair needs two embedding files")
    return path


def _single_tensor(decoded: Decoded, path: PathLike) -> tuple[torch.Tensor, dict[str, str]]:
    if len(decoded.vectors) != 1:
        raise FormatError(
            f"{path}: holds {listed(sorted(decoded.vectors))}; each file of an SDXL pair holds one tensor"
        )
    return next(iter(decoded.vectors.values())), decoded.metadata


def _build(decoded: Decoded, token: str | None, source: str) -> SoftPrompt:
    metadata = dict(decoded.metadata)
    if token:
        metadata["name"] = token.strip("<>") or token
    prompt = SoftPrompt(
        vectors=decoded.vectors,
        metadata=metadata,
        source_format=decoded.source_format,
        notes=list(decoded.notes),
    )
    prompt.tokens = _stored_tokens(metadata, prompt.num_vectors, prompt.notes) or prompt.tokens
    prompt.origin = source
    prompt.validate(source=source)
    return prompt


def _stored_tokens(metadata: dict[str, str], n: int, notes: list[str]) -> list[str] | None:
    """Tokens a native save recorded in the header, if they still fit the vectors."""
    raw = metadata.pop("tokens", None)
    if raw is None:
        return None
    try:
        tokens = json.loads(raw)
    except ValueError:
        tokens = None
    if isinstance(tokens, list) and len(tokens) == n and all(isinstance(t, str) for t in tokens):
        return tokens
    notes.append(f"ignored the header's tokens {shorten(repr(raw))}: not a JSON list of {n} strings")
    return None
