"""Soft-prompt files: one in-memory type, plus readers and writers for each tool's layout.

Reading is by content, never by file extension: the first bytes say safetensors, torch.save zip,
legacy pickle or PNG (an A1111 embedding image), and the dict's keys say which tool wrote it (one
reader table). Writing goes through one writer table, keyed by format and then by layout (single
encoder, SDXL pair, Flux).
Pickles are only ever opened with ``torch.load(weights_only=True)``; embedding images are read as
JSON data only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .errors import FormatError, InvalidVectorsError, SoftPromptError, UnsafeFileError

__all__ = [
    "ENCODER_KEYS",
    "REAL_WIDTHS",
    "UNASSIGNED",
    "FORMATS",
    "FORMAT_VERSION",
    "MAX_VECTORS",
    "default_tokens",
    "SoftPrompt",
    "convert",
]

ENCODER_KEYS = ("clip_l", "clip_h", "clip_g", "t5xxl")
REAL_WIDTHS = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280, "t5xxl": 4096}
UNASSIGNED = "*"
FORMATS = ("native", "diffusers", "a1111", "kohya", "onetrainer")
FORMAT_VERSION = "sd-softprompt/1"
MAX_VECTORS = 75

PathLike = str | os.PathLike

# Keys other tools use for the same encoders (diffusers' Flux script and OneTrainer write "t5").
_KEY_ALIASES = {"t5": "t5xxl"}
_OUT_SUFFIX = "_out"  # OneTrainer's output-embedding vectors: not input embeddings, so not ours
_WIDTH_TO_KEY = {width: key for key, width in REAL_WIDTHS.items()}

_FAMILY_BY_KEYS = {
    frozenset({"clip_l"}): "sd1",
    frozenset({"clip_h"}): "sd2",
    frozenset({"clip_l", "clip_g"}): "sdxl",
    frozenset({"clip_l", "t5xxl"}): "flux",
    frozenset({"t5xxl"}): "flux",
}

_UNDERSTOOD_LAYOUTS = (
    "native/ComfyUI clip_l|clip_h|clip_g|t5xxl, diffusers {token: tensor}, "
    "A1111 string_to_param, kohya emb_params, OneTrainer emp_params"
)
_DIFFUSERS_FILE = "learned_embeds"

# A1111 "embedding images": the .pt dict as base64 JSON in this PNG text chunk, tensors written by
# its EmbeddingEncoder as {"TORCHTENSOR": nested lists} (modules/textual_inversion/image_embedding.py).
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK = "sd-ti-embedding"
_PNG_TENSOR = "TORCHTENSOR"
_MAX_PNG_EMBEDDING = 64 * 1024 * 1024  # decoded bytes; a 75 x 4096 embedding is well under 10 MB


def default_tokens(n: int) -> list[str]:
    """Placeholder tokens ``[v1] .. [vN]``."""
    return [f"[v{i}]" for i in range(1, n + 1)]


# --------------------------------------------------------------------------------------------
# The in-memory soft prompt
# --------------------------------------------------------------------------------------------


@dataclass
class SoftPrompt:
    """Learned embedding vectors for one or more text encoders, all with the same count N."""

    vectors: dict[str, torch.Tensor]
    tokens: list[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "native"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vectors = {key: _as_rows(value) for key, value in self.vectors.items()}
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
        return self.metadata.get("family") or _FAMILY_BY_KEYS.get(frozenset(self.vectors))

    @property
    def name(self) -> str:
        return self.metadata.get("name") or "softprompt"

    def validate(self, source: str = "<memory>") -> None:
        """Raise InvalidVectorsError unless every tensor is a usable set of N finite vectors."""
        _check_keys(self.vectors, source)
        for key, tensor in self.vectors.items():
            _check_tensor(key, tensor, source)
        _check_counts(self.vectors, source)
        _check_tokens(self.tokens, self.num_vectors, source)

    @classmethod
    def load(cls, path: PathLike | Sequence[PathLike], token: str | None = None) -> SoftPrompt:
        """Read any understood file, folder, or diffusers SDXL pair of files.

        ``token`` names the soft prompt (metadata["name"]); a file holding a bare tensor has no
        name of its own and falls back to the file stem.
        """
        if isinstance(path, (list, tuple)):
            return _load_pair(path, token)
        files = _resolve(Path(path))
        if len(files) == 2:
            return _load_pair(files, token)
        return _load_file(files[0], token)

    def save(self, path: PathLike, format: str = "native") -> list[Path]:
        """Write in ``format`` (one of FORMATS) atomically; return the paths written."""
        writer = _WRITERS.get(format)
        if writer is None:
            raise SoftPromptError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
        self.validate(source=str(path))
        return writer(self, Path(path))


def convert(src: PathLike | Sequence[PathLike], to: str, out: PathLike) -> list[Path]:
    """Load ``src`` in whatever layout it has and save it as format ``to`` at ``out``."""
    return SoftPrompt.load(src).save(out, format=to)


def _as_rows(value: Any) -> Any:
    # A single vector [d] is one row; other shapes are left for validate() to judge.
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.unsqueeze(0) if value.dim() == 1 else value
    return value


# --------------------------------------------------------------------------------------------
# Validation: one check per concern, messages name the file and the fix
# --------------------------------------------------------------------------------------------


def _check_keys(vectors: dict[str, Any], source: str) -> None:
    if not vectors:
        raise InvalidVectorsError(f"{source}: holds no vectors; a soft prompt needs at least one [N, width] tensor")
    for key in vectors:
        if key != UNASSIGNED and key not in ENCODER_KEYS:
            raise InvalidVectorsError(f"{source}: unknown encoder key {key!r}; use one of {', '.join(ENCODER_KEYS)}")
    if UNASSIGNED in vectors and len(vectors) > 1:
        raise InvalidVectorsError(
            f"{source}: {UNASSIGNED!r} (encoder picked later by width) must be the only key; "
            f"name the encoders of {sorted(vectors)} instead"
        )


def _check_tensor(key: str, tensor: Any, source: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidVectorsError(
            f"{source}: {key} is a {type(tensor).__name__}, not a tensor; expected [N, width] floats"
        )
    if tensor.dim() != 2:
        raise InvalidVectorsError(
            f"{source}: {key} has shape {list(tensor.shape)}; expected [N, width] (N vectors of the encoder's width)"
        )
    if not tensor.is_floating_point():
        raise InvalidVectorsError(
            f"{source}: {key} is {tensor.dtype}; vectors must be floating point (float32, float16 or bfloat16)"
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


def _check_counts(vectors: dict[str, torch.Tensor], source: str) -> None:
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


def _check_tokens(tokens: list[str] | None, n: int, source: str) -> None:
    tokens = tokens or []
    if len(tokens) != n:
        raise InvalidVectorsError(
            f"{source}: {len(tokens)} tokens for {n} vectors; give one token per vector (or none, for [v1]..[v{n}])"
        )
    if any(not isinstance(t, str) or not t.strip() for t in tokens):
        raise InvalidVectorsError(f"{source}: tokens must be non-empty strings, got {tokens}")
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
    if duplicates:
        raise InvalidVectorsError(f"{source}: tokens repeat {duplicates}; each token must be unique")


# --------------------------------------------------------------------------------------------
# Reading: path -> file(s) -> raw content -> layout reader -> SoftPrompt
# --------------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    """What a layout reader found in one file."""

    vectors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    source_format: str
    notes: list[str] = field(default_factory=list)


_Reader = Callable[[dict, dict[str, str], str], _Decoded]


def _resolve(path: Path) -> list[Path]:
    """The file(s) to read for ``path``: itself, or a diffusers output folder's file(s)."""
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder; check the path")
    if not path.is_dir():
        return [path]
    for suffix in (".safetensors", ".bin"):
        first = path / f"{_DIFFUSERS_FILE}{suffix}"
        second = path / f"{_DIFFUSERS_FILE}_2{suffix}"
        if first.is_file():
            return [first, second] if second.is_file() else [first]
    raise FormatError(
        f"{path}: no embedding file in this folder; looked for {_DIFFUSERS_FILE}.safetensors "
        f"(+ {_DIFFUSERS_FILE}_2.safetensors for SDXL) and {_DIFFUSERS_FILE}.bin"
    )


def _load_file(path: Path, token: str | None) -> SoftPrompt:
    decoded = _decode(path, token)
    return _build(decoded, token, str(path))


def _load_pair(paths: Sequence[PathLike], token: str | None) -> SoftPrompt:
    """A diffusers SDXL pair: first file is CLIP-L, second is OpenCLIP-bigG."""
    if len(paths) != 2:
        raise FormatError(
            f"{list(map(str, paths))}: give one path, or two for a diffusers SDXL pair (clip_l file, then clip_g file)"
        )
    first, second = (_single_tensor(_decode(_existing(p), token), p) for p in paths)
    metadata = {**second[1], **first[1]}
    decoded = _Decoded({"clip_l": first[0], "clip_g": second[0]}, metadata, "diffusers-sdxl-pair")
    return _build(decoded, token, " + ".join(str(p) for p in paths))


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file; an SDXL pair needs two embedding files")
    return path


def _single_tensor(decoded: _Decoded, path: PathLike) -> tuple[torch.Tensor, dict[str, str]]:
    if len(decoded.vectors) != 1:
        raise FormatError(f"{path}: holds {sorted(decoded.vectors)}; each file of an SDXL pair holds one tensor")
    return next(iter(decoded.vectors.values())), decoded.metadata


def _build(decoded: _Decoded, token: str | None, source: str) -> SoftPrompt:
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
    notes.append(f"ignored the header's tokens {raw!r}: not a JSON list of {n} strings")
    return None


def _decode(path: Path, token: str | None) -> _Decoded:
    """Read one file and pick its layout reader from the reader table."""
    if _sniff(path) == "png":
        return _decode_png(path)
    content, header = _read_content(path)
    if isinstance(content, torch.Tensor):
        # A bare tensor (diffusers accepts these with an explicit token) has no name of its own.
        name = (token or path.stem).strip("<>") or path.stem
        return _Decoded({_key_for_width(content): content}, {"name": name}, "tensor")
    if not isinstance(content, dict):
        raise FormatError(
            f"{path}: holds a {type(content).__name__}, not a dict of tensors; understood: {_UNDERSTOOD_LAYOUTS}"
        )
    if not content:
        raise InvalidVectorsError(f"{path}: holds no tensors; it is not a usable embedding")
    for matches, reader in _READERS:
        if matches(content):
            return reader(content, header, str(path))
    raise FormatError(
        f"{path}: unknown embedding layout; keys found: {sorted(map(str, content))}; understood: {_UNDERSTOOD_LAYOUTS}"
    )


# ---- bytes -> content -----------------------------------------------------------------------


def _read_content(path: Path) -> tuple[Any, dict[str, str]]:
    """(what the file holds, safetensors header metadata)."""
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return _read_pickle(path), {}


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(9)
    if not head:
        raise FormatError(f"{path}: empty file; re-export or re-download it")
    # safetensors: 8-byte little-endian header length, then the JSON header's "{".
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"  # torch.save's default format
    if head.startswith(b"\x80"):
        return "pickle"  # legacy torch.save
    if head.startswith(_PNG_MAGIC):
        return "png"  # maybe an A1111 embedding image
    raise FormatError(
        f"{path}: not an embedding file; understood are .safetensors, torch.save files "
        f"(zip or legacy pickle) and A1111 embedding PNGs: {_UNDERSTOOD_LAYOUTS}"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as error:  # the Rust reader raises its own types for truncated/corrupt files
        raise FormatError(
            f"{path}: unreadable safetensors file (truncated or corrupt: {_first_line(error)}); "
            f"re-export or re-download it"
        ) from None
    return tensors, header


def _read_pickle(path: Path) -> Any:
    try:
        # A file object, not the path: torch.load routes paths ending in ".safetensors" to the
        # safetensors reader, and the content (already sniffed) is what decides here.
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol-version chatter, not useful to users
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error)
        if isinstance(error, pickle.UnpicklingError) or "weights_only" in message:
            raise UnsafeFileError(_refusal(path, message)) from None
        raise FormatError(
            f"{path}: unreadable torch file (truncated or corrupt: {_first_line(error)}); re-export or re-download it"
        ) from None


def _decode_png(path: Path) -> _Decoded:
    """An A1111 embedding image: its .pt dict, read by the A1111 reader."""
    content = _read_png_embedding(path)
    if not isinstance(content, dict) or "string_to_param" not in content:
        raise FormatError(f"{path}: the {_PNG_CHUNK} chunk holds no string_to_param; not an A1111 embedding image")
    decoded = _read_a1111(content, {}, str(path))
    decoded.source_format = "a1111-png"
    return decoded


def _read_png_embedding(path: Path) -> Any:
    """The JSON document in the PNG's sd-ti-embedding text chunk, tensors as float32."""
    try:
        with Image.open(path) as image:
            # info has the chunks before the pixels (where A1111 writes it); text also reads those
            # after them, but decodes the pixels to get there.
            text = image.info.get(_PNG_CHUNK)
            if not isinstance(text, str):
                text = getattr(image, "text", {}).get(_PNG_CHUNK)
    except Exception as error:  # PIL's own types for truncated/corrupt files and oversized chunks
        raise FormatError(
            f"{path}: unreadable PNG (truncated or corrupt: {_first_line(error)}); re-export or re-download it"
        ) from None
    if not isinstance(text, str):
        raise FormatError(
            f"{path}: a PNG without an {_PNG_CHUNK} text chunk; embeddings hidden only in the pixels "
            f"are not read, save it from A1111 as .pt or .safetensors"
        )
    if len(text) // 4 * 3 > _MAX_PNG_EMBEDDING:
        raise FormatError(
            f"{path}: the {_PNG_CHUNK} chunk decodes to about {len(text) // 4 * 3 >> 20} MB, more than "
            f"the {_MAX_PNG_EMBEDDING >> 20} MB an embedding needs; refused"
        )
    try:
        return json.loads(base64.b64decode(text, validate=True), object_hook=_png_tensor)
    except (ValueError, TypeError, RecursionError) as error:  # binascii, JSON, UTF-8, ragged lists
        raise FormatError(
            f"{path}: the {_PNG_CHUNK} chunk is not base64 of an A1111 embedding's JSON "
            f"({_first_line(error)}); save it from A1111 as .pt or .safetensors"
        ) from None


def _png_tensor(obj: dict) -> Any:
    # A1111's EmbeddingDecoder.object_hook, minus numpy's float64: lists of numbers only.
    if _PNG_TENSOR in obj:
        return torch.tensor(obj[_PNG_TENSOR], dtype=torch.float32)
    return obj


def _refusal(path: Path, message: str) -> str:
    # Prefer what the stream itself imports beyond torch: the loader names only the first refusal,
    # which in a plain pickle is often torch's own tensor hook rather than the payload.
    wanted = _foreign_globals(path) or re.findall(r"GLOBAL ([\w.]+)", message)
    if wanted:
        reason = f"the pickle asks to run code ({', '.join(dict.fromkeys(wanted))})"
    else:
        reason = f"the pickle is not plain data the safe loader accepts ({_loader_reason(message)})"
    return f"{path}: refused: {reason}; embedding files are data only. Ask for a .safetensors version."


# Globals plain tensor data uses (torch's own rebuild hooks, OrderedDict, protocol-2 bytes):
# not worth naming as the payload.
_DATA_GLOBALS = (
    "torch.",
    "collections.OrderedDict",
    "_codecs.encode",
    "builtins.set",
    "builtins.frozenset",
    "__builtin__.set",
    "__builtin__.frozenset",
)


def _foreign_globals(path: Path) -> list[str]:
    """Names a raw pickle imports, other than torch's own; for the message only.

    pickletools only disassembles the byte stream: nothing is imported or run.
    """
    names: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(_pickle_stream(path)):
            if isinstance(arg, str):
                strings.append(arg)
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                names.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:
        pass  # a malformed stream: report what was seen before it
    return [name for name in names if not name.startswith(_DATA_GLOBALS)]


def _pickle_stream(path: Path) -> io.BytesIO:
    """The pickle bytes of a legacy file, or the data.pkl member of a torch.save zip."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = next(name for name in archive.namelist() if name.endswith("data.pkl"))
            data = archive.read(member)
    return io.BytesIO(data)


def _loader_reason(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Check the", "Please file")
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or ["unknown reason"])[0][:120]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


# ---- layout readers --------------------------------------------------------------------------


def _key_for_width(tensor: torch.Tensor) -> str:
    """Encoder key guessed from the vector width; UNASSIGNED when no real encoder has it."""
    width = int(tensor.shape[-1]) if tensor.dim() else 0
    return _WIDTH_TO_KEY.get(width, UNASSIGNED)


def _base_key(key: str) -> str:
    return key[: -len(_OUT_SUFFIX)] if key.endswith(_OUT_SUFFIX) else key


def _is_encoder_keyed(content: dict) -> bool:
    known = set(ENCODER_KEYS) | set(_KEY_ALIASES)
    inputs = [key for key in content if isinstance(key, str) and not key.endswith(_OUT_SUFFIX)]
    return bool(inputs) and all(isinstance(k, str) and _base_key(k) in known for k in content)


def _read_encoder_keyed(content: dict, header: dict[str, str], src: str) -> _Decoded:
    """native / ComfyUI / A1111-SDXL / kohya-SDXL / OneTrainer multi-encoder files."""
    notes: list[str] = []
    dropped = sorted(key for key in content if key.endswith(_OUT_SUFFIX))
    if dropped:
        notes.append(f"ignored OneTrainer output-embedding keys {', '.join(dropped)}")
    vectors: dict[str, Any] = {}
    for key, value in content.items():
        if key.endswith(_OUT_SUFFIX):
            continue
        target = _KEY_ALIASES.get(key, key)
        if key != target and target in content:
            notes.append(f"ignored {key}: {target} is also present")
            continue
        vectors[target] = value
    vectors = _comfy_sd2_key(vectors, notes)
    return _Decoded(vectors, dict(header), _guess_keyed_source(content, header), notes)


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
    if "t5" in content or any(key.endswith(_OUT_SUFFIX) for key in content):
        return "onetrainer"
    return "comfyui"


def _single_key_reader(key: str, source_format: str) -> _Reader:
    """Reader for a one-tensor layout stored under a fixed key (kohya, OneTrainer SD1)."""

    def read(content: dict, header: dict[str, str], src: str) -> _Decoded:
        notes = []
        if f"{key}{_OUT_SUFFIX}" in content:
            notes.append(f"ignored OneTrainer output-embedding key {key}{_OUT_SUFFIX}")
        tensor = content[key]
        return _Decoded(_width_keyed(tensor, src, key), dict(header), source_format, notes)

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


def _read_a1111(content: dict, header: dict[str, str], src: str) -> _Decoded:
    """A1111/Forge .pt: ``string_to_param["*"]`` plus name, step and checkpoint fields."""
    params = content["string_to_param"]
    if not isinstance(params, dict) or not params:
        raise FormatError(f"{src}: string_to_param is not a dict of tensors; the file is damaged")
    if "*" not in params and len(params) > 1:
        raise FormatError(f"{src}: string_to_param holds several terms {sorted(params)}; expected one")
    tensor = params.get("*", next(iter(params.values())))
    metadata = dict(header)
    for field_name, meta_key in _A1111_FIELDS:
        value = content.get(field_name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            metadata[meta_key] = str(value)
    return _Decoded(_width_keyed(tensor, src, "string_to_param"), metadata, "a1111")


def _read_diffusers(content: dict, header: dict[str, str], src: str) -> _Decoded:
    """diffusers ``{token: tensor}``: the one key is the placeholder token."""
    token, tensor = next(iter(content.items()))
    metadata = dict(header)
    metadata.setdefault("name", str(token).strip("<>") or str(token))
    return _Decoded(_width_keyed(tensor, src, repr(token)), metadata, "diffusers")


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


# --------------------------------------------------------------------------------------------
# Writing: format -> layout -> writer; every file goes through _atomic_write
# --------------------------------------------------------------------------------------------

_Writer = Callable[[SoftPrompt, Path], list[Path]]

_FAMILY_LAYOUT = {"sd1": "single", "sd2": "single", "sdxl": "sdxl", "flux": "flux"}
_LAYOUT_FITS: dict[str, Callable[[frozenset], bool]] = {
    "single": lambda keys: len(keys) == 1,
    "sdxl": lambda keys: keys == {"clip_l", "clip_g"},
    "flux": lambda keys: "t5xxl" in keys and keys <= {"clip_l", "t5xxl"},
}
_LAYOUT_SHAPES = {
    "single": "one encoder's vectors",
    "sdxl": "clip_l + clip_g",
    "flux": "clip_l + t5xxl",
}


def _layout(prompt: SoftPrompt) -> str:
    """'single', 'sdxl' or 'flux': which file layout this soft prompt needs."""
    keys = frozenset(prompt.vectors)
    family = prompt.family
    if family is None and len(keys) == 1:
        return "single"  # e.g. UNASSIGNED: single-tensor layouts do not name the encoder
    layout = _FAMILY_LAYOUT.get(family or "")
    if layout is None:
        raise SoftPromptError(
            f"no file layout for encoders {sorted(keys)} (family {family or 'unknown'}); "
            f"set metadata['family'] to one of {', '.join(_FAMILY_LAYOUT)}, or save as native"
        )
    if not _LAYOUT_FITS[layout](keys):
        raise SoftPromptError(
            f"a {family} soft prompt holds {_LAYOUT_SHAPES[layout]}, this one holds "
            f"{' + '.join(sorted(keys))}; fix metadata['family'] or the encoder keys"
        )
    return layout


def _header(prompt: SoftPrompt, format_tag: str) -> dict[str, str]:
    """safetensors header: the user's metadata plus what a reload needs (name, tokens)."""
    header = {str(key): str(value) for key, value in prompt.metadata.items()}
    header.update(format=format_tag, name=prompt.name, tokens=json.dumps(prompt.tokens))
    if prompt.family:
        header.setdefault("family", prompt.family)
    return header


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous()


def _safe_stem(name: str) -> str:
    # File names come from user-chosen names; keep them to characters every filesystem accepts.
    stem = "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in name).strip(" .")
    return stem or "softprompt"


def _file_target(path: Path, prompt: SoftPrompt, suffix: str) -> Path:
    """An existing folder gets ``<name><suffix>`` inside it; a bare name gets the suffix."""
    if path.is_dir():
        return path / f"{_safe_stem(prompt.name)}{suffix}"
    return path if path.suffix else path.with_suffix(suffix)


def _safetensors_job(target: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]):
    tensors = {key: _cpu(tensor) for key, tensor in tensors.items()}
    return target, lambda tmp: save_file(tensors, str(tmp), metadata=header)


def _only(prompt: SoftPrompt) -> torch.Tensor:
    return next(iter(prompt.vectors.values()))


# ---- one writer per format (and layout) -----------------------------------------------------


def _write_native(prompt: SoftPrompt, path: Path) -> list[Path]:
    if UNASSIGNED in prompt.vectors:
        raise SoftPromptError(
            f"{path}: the encoder of these vectors is not known yet ({UNASSIGNED!r}); load it into a "
            f"pipeline first (it picks the encoder by width) or key it by one of {', '.join(ENCODER_KEYS)}"
        )
    target = _file_target(path, prompt, ".safetensors")
    return atomic_write([_safetensors_job(target, prompt.vectors, _header(prompt, FORMAT_VERSION))])


def _diffusers_target(path: Path, second: bool = False) -> Path:
    """diffusers' convention: a folder (or bare name) holds learned_embeds[_2].safetensors."""
    suffix = "_2" if second else ""
    if path.is_dir() or not path.suffix:
        return path / f"{_DIFFUSERS_FILE}{suffix}.safetensors"
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


def _diffusers_token(prompt: SoftPrompt) -> str:
    return f"<{prompt.name}>"


def _write_diffusers_single(prompt: SoftPrompt, path: Path) -> list[Path]:
    tensors = {_diffusers_token(prompt): _only(prompt)}
    return atomic_write([_safetensors_job(_diffusers_target(path), tensors, _header(prompt, "pt"))])


def _write_diffusers_pair(prompt: SoftPrompt, path: Path) -> list[Path]:
    # diffusers' SDXL script: one file per text encoder, same token in both.
    token, header = _diffusers_token(prompt), _header(prompt, "pt")
    return atomic_write(
        [
            _safetensors_job(_diffusers_target(path), {token: prompt.vectors["clip_l"]}, header),
            _safetensors_job(_diffusers_target(path, second=True), {token: prompt.vectors["clip_g"]}, header),
        ]
    )


def _keyed_writer(file_keys: dict[str, str], target: Callable[[Path, SoftPrompt], Path]) -> _Writer:
    """Writer for one safetensors file whose keys are the encoders, renamed by ``file_keys``."""

    def write(prompt: SoftPrompt, path: Path) -> list[Path]:
        tensors = {file_keys.get(key, key): tensor for key, tensor in prompt.vectors.items()}
        return atomic_write([_safetensors_job(target(path, prompt), tensors, _header(prompt, "pt"))])

    return write


def _single_key_writer(file_key: str) -> _Writer:
    """Writer for a one-tensor safetensors layout under a fixed key (kohya, OneTrainer SD1/2)."""

    def write(prompt: SoftPrompt, path: Path) -> list[Path]:
        target = _file_target(path, prompt, ".safetensors")
        return atomic_write([_safetensors_job(target, {file_key: _only(prompt)}, _header(prompt, "pt"))])

    return write


def _write_a1111_pt(prompt: SoftPrompt, path: Path) -> list[Path]:
    # Only dicts, tensors, str, int and None: readable with torch.load(weights_only=True).
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": _cpu(_only(prompt))},
        "name": prompt.name,
        "step": _int_or_zero(prompt.metadata.get("steps")),
        "sd_checkpoint": prompt.metadata.get("base_model_hash"),
        "sd_checkpoint_name": prompt.metadata.get("base_model"),
    }
    target = _file_target(path, prompt, ".pt")
    return atomic_write([(target, lambda tmp: torch.save(data, tmp))])


def _int_or_zero(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _in_file(path: Path, prompt: SoftPrompt) -> Path:
    return _file_target(path, prompt, ".safetensors")


def _in_diffusers_file(path: Path, prompt: SoftPrompt) -> Path:
    return _diffusers_target(path)


_SAME_KEYS: dict[str, str] = {}
_T5_AS_T5 = {"t5xxl": "t5"}  # diffusers' Flux script and OneTrainer call the T5 vectors "t5"

_LAYOUT_WRITERS: dict[str, dict[str, _Writer]] = {
    "diffusers": {
        "single": _write_diffusers_single,
        "sdxl": _write_diffusers_pair,
        "flux": _keyed_writer(_T5_AS_T5, _in_diffusers_file),
    },
    "a1111": {"single": _write_a1111_pt, "sdxl": _keyed_writer(_SAME_KEYS, _in_file)},
    "kohya": {"single": _single_key_writer("emb_params"), "sdxl": _keyed_writer(_SAME_KEYS, _in_file)},
    "onetrainer": {
        "single": _single_key_writer("emp_params"),  # sic: OneTrainer's key
        "sdxl": _keyed_writer(_SAME_KEYS, _in_file),
        "flux": _keyed_writer(_T5_AS_T5, _in_file),
    },
}


def _by_layout(format_name: str) -> _Writer:
    """Dispatch to the format's writer for this soft prompt's layout, or say who can hold it."""
    table = _LAYOUT_WRITERS[format_name]

    def write(prompt: SoftPrompt, path: Path) -> list[Path]:
        layout = _layout(prompt)
        writer = table.get(layout)
        if writer is None:
            able = ["native"] + [name for name, t in _LAYOUT_WRITERS.items() if layout in t]
            raise SoftPromptError(
                f"{format_name} cannot hold a {prompt.family or layout} soft prompt "
                f"({' + '.join(sorted(prompt.vectors))}); formats that can: {', '.join(able)}"
            )
        return writer(prompt, path)

    return write


_WRITERS: dict[str, _Writer] = {
    "native": _write_native,
    **{name: _by_layout(name) for name in _LAYOUT_WRITERS},
}
