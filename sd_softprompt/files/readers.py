"""Reading: path -> file(s) -> content -> layout reader -> Decoded (vectors, metadata, notes).

The dict's keys say which tool wrote a file (one reader table, first match wins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import FormatError, InvalidVectorsError, listed
from .keys import (
    DIFFUSERS_FILE,
    ENCODER_KEYS,
    KEY_ALIASES,
    OUT_SUFFIX,
    REAL_WIDTHS,
    UNASSIGNED,
    UNDERSTOOD_LAYOUTS,
    WIDTH_TO_KEY,
)
from .safe_read import PNG_CHUNK, read_content, read_png_embedding, sniff


@dataclass
class Decoded:
    """What a layout reader found in one file."""

    vectors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    source_format: str
    notes: list[str] = field(default_factory=list)


_Reader = Callable[[dict, dict[str, str], str], Decoded]


def resolve(path: Path) -> list[Path]:
    """The file(s) to read for ``path``: itself, or a diffusers output folder's file(s)."""
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder; check the path")
    if not path.is_dir():
        return [path]
    for suffix in (".safetensors", ".bin"):
        first = path / f"{DIFFUSERS_FILE}{suffix}"
        second = path / f"{DIFFUSERS_FILE}_2{suffix}"
        if first.is_file():
            return [first, second] if second.is_file() else [first]
    raise FormatError(
        f"{path}: no embedding file in this folder; looked for {DIFFUSERS_FILE}.safetensors "
        f"(+ {DIFFUSERS_FILE}_2.safetensors for SDXL) and {DIFFUSERS_FILE}.bin"
    )


def decode(path: Path, token: str | None) -> Decoded:
    """Read one file and pick its layout reader from the reader table."""
    if sniff(path) == "png":
        return _decode_png(path)
    content, header = read_content(path)
    if isinstance(content, torch.Tensor):
        # A bare tensor (diffusers accepts these with an explicit token) has no name of its own.
        name = (token or path.stem).strip("<>") or path.stem
        return Decoded({_key_for_width(content): content}, {"name": name}, "tensor")
    if not isinstance(content, dict):
        raise FormatError(
            f"{path}: holds a {type(content).__name__}, not a dict of tensors; understood: {UNDERSTOOD_LAYOUTS}"
        )
    return decode_content(content, header, str(path))


def decode_content(content: dict, header: dict[str, str], src: str) -> Decoded:
    """Pick the layout reader for a dict of tensors (a file's, or one embedding of a LoRA bundle)."""
    if not content:
        raise InvalidVectorsError(f"{src}: holds no tensors; it is not a usable embedding")
    for matches, reader in _READERS:
        if matches(content):
            return reader(content, header, src)
    raise FormatError(
        f"{src}: unknown embedding layout ({len(content)} keys: {listed(sorted(map(str, content)), 3, 24)}); "
        f"understood: {UNDERSTOOD_LAYOUTS}"
    )


def _decode_png(path: Path) -> Decoded:
    """An A1111 embedding image: its .pt dict, read by the A1111 reader."""
    content = read_png_embedding(path)
    if not isinstance(content, dict) or "string_to_param" not in content:
        raise FormatError(f"{path}: the {PNG_CHUNK} chunk holds no string_to_param; not an A1111 embedding image")
    decoded = _read_a1111(content, {}, str(path))
    decoded.source_format = "a1111-png"
    return decoded


def _key_for_width(tensor: torch.Tensor) -> str:
    """Encoder key guessed from the vector width; UNASSIGNED when no real encoder has it."""
    width = int(tensor.shape[-1]) if tensor.dim() else 0
    return WIDTH_TO_KEY.get(width, UNASSIGNED)


def _base_key(key: str) -> str:
    return key[: -len(OUT_SUFFIX)] if key.endswith(OUT_SUFFIX) else key


def _is_encoder_keyed(content: dict) -> bool:
    known = set(ENCODER_KEYS) | set(KEY_ALIASES)
    inputs = [key for key in content if isinstance(key, str) and not key.endswith(OUT_SUFFIX)]
    return bool(inputs) and all(isinstance(k, str) and _base_key(k) in known for k in content)


def _read_encoder_keyed(content: dict, header: dict[str, str], src: str) -> Decoded:
    """native / ComfyUI / A1111-SDXL / kohya-SDXL / OneTrainer multi-encoder files."""
    notes: list[str] = []
    dropped = sorted(key for key in content if key.endswith(OUT_SUFFIX))
    if dropped:
        notes.append(f"ignored OneTrainer output-embedding keys {', '.join(dropped)}")
    vectors: dict[str, Any] = {}
    for key, value in content.items():
        if key.endswith(OUT_SUFFIX):
            continue
        target = KEY_ALIASES.get(key, key)
        if key != target and target in content:
            notes.append(f"ignored {key}: {target} is also present")
            continue
        vectors[target] = value
    vectors = _comfy_sd2_key(vectors, notes)
    return Decoded(vectors, dict(header), _guess_keyed_source(content, header), notes)


def _comfy_sd2_key(vectors: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    # ComfyUI's SD2 tokenizer looks embeddings up under "clip_l" (SDTokenizer's default key),
    # so SD2 files written for ComfyUI may hold OpenCLIP-H vectors under "clip_l".
    only = vectors.get("clip_l")
    if len(vectors) == 1 and isinstance(only, torch.Tensor) and only.shape[-1] == REAL_WIDTHS["clip_h"]:
        notes.append("clip_l holds 1024-wide (OpenCLIP-H, SD2) vectors, as ComfyUI keys them: read as clip_h")
        return {"clip_h": only}
    return vectors


def _guess_keyed_source(content: dict, header: dict[str, str]) -> str:
    if header.get("format", "").startswith("sd-softprompt"):
        return "native"
    if "t5" in content or any(key.endswith(OUT_SUFFIX) for key in content):
        return "onetrainer"
    return "comfyui"


def _single_key_reader(key: str, source_format: str) -> _Reader:
    """Reader for a one-tensor layout stored under a fixed key (kohya, OneTrainer SD1)."""

    def read(content: dict, header: dict[str, str], src: str) -> Decoded:
        notes = []
        if f"{key}{OUT_SUFFIX}" in content:
            notes.append(f"ignored OneTrainer output-embedding key {key}{OUT_SUFFIX}")
        tensor = content[key]
        return Decoded(_width_keyed(tensor, src, key), dict(header), source_format, notes)

    return read


def _width_keyed(tensor: Any, src: str, where: str) -> dict[str, Any]:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidVectorsError(f"{src}: {where} is a {type(tensor).__name__}, not a tensor")
    return {_key_for_width(tensor): tensor}


# A1111 .pt field -> metadata key.
_A1111_FIELDS = (
    ("name", "name"),
    ("step", "steps"),
    ("sd_checkpoint_name", "base_model"),
    ("sd_checkpoint", "base_model_hash"),
)


def _read_a1111(content: dict, header: dict[str, str], src: str) -> Decoded:
    """A1111/Forge .pt: ``string_to_param["*"]`` plus name, step and checkpoint fields."""
    params = content["string_to_param"]
    if not isinstance(params, dict) or not params:
        raise FormatError(f"{src}: string_to_param is not a dict of tensors; the file is damaged")
    if "*" not in params and len(params) > 1:
        raise FormatError(
            f"{src}: string_to_param holds several terms ({listed(sorted(map(str, params)))}); expected one"
        )
    tensor = params.get("*", next(iter(params.values())))
    metadata = dict(header)
    for field_name, meta_key in _A1111_FIELDS:
        value = content.get(field_name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            metadata[meta_key] = str(value)
    return Decoded(_width_keyed(tensor, src, "string_to_param"), metadata, "a1111")


def _read_diffusers(content: dict, header: dict[str, str], src: str) -> Decoded:
    """diffusers ``{token: tensor}``: the one key is the placeholder token."""
    token, tensor = next(iter(content.items()))
    metadata = dict(header)
    metadata.setdefault("name", str(token).strip("<>") or str(token))
    return Decoded(_width_keyed(tensor, src, repr(token)), metadata, "diffusers")


def _is_diffusers(content: dict) -> bool:
    return len(content) == 1 and isinstance(next(iter(content.values())), torch.Tensor)


# Order matters: specific keys before the diffusers catch-all (one key of any name).
_READERS: list[tuple[Callable[[dict], bool], _Reader]] = [
    (_is_encoder_keyed, _read_encoder_keyed),
    (lambda c: set(c) == {"emb_params"}, _single_key_reader("emb_params", "kohya")),
    (
        lambda c: "emp_params" in c and set(c) <= {"emp_params", "emp_params_out"},
        _single_key_reader("emp_params", "onetrainer"),  # sic: OneTrainer's SD1/2 key
    ),
    (lambda c: "string_to_param" in c, _read_a1111),
    (_is_diffusers, _read_diffusers),
]
