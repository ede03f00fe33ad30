"""Bytes -> content, safely: which container a file is (by its first bytes, never its name), then its data.

Pickles are only ever opened with ``torch.load(weights_only=True)``; a refusal names what the pickle wanted to
import (read with pickletools, nothing is run). Embedding images are read as JSON data only.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open

from ..errors import FormatError, UnsafeFileError, listed
from .keys import UNDERSTOOD_LAYOUTS

# A1111 "embedding images": the .pt dict as base64 JSON in this PNG text chunk, tensors written by
# its EmbeddingEncoder as {"TORCHTENSOR": nested lists} (modules/textual_inversion/image_embedding.py).
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_CHUNK = "sd-ti-embedding"
_PNG_TENSOR = "TORCHTENSOR"
MAX_PNG_EMBEDDING = 64 * 1024 * 1024  # decoded bytes; a 75 x 4096 embedding is well under 10 MB


def read_content(path: Path) -> tuple[Any, dict[str, str]]:
    """(what the file holds, safetensors header metadata)."""
    kind = sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return _read_pickle(path), {}


def sniff(path: Path) -> str:
    if not path.is_file():  # opening a FIFO would wait for a writer forever, a device read forever
        what = "a folder" if path.is_dir() else "no such file" if not path.exists() else "not a regular file"
        raise FormatError(f"{path}: {what}; give an embedding file (.safetensors, .pt, .bin)")
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
        f"(zip or legacy pickle) and A1111 embedding PNGs: {UNDERSTOOD_LAYOUTS}"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as error:  # the Rust reader raises its own types for truncated/corrupt files
        raise FormatError(
            f"{path}: unreadable safetensors file (truncated or corrupt: {first_line(error)}); "
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
            f"{path}: unreadable torch file (truncated or corrupt: {first_line(error)}); re-export or re-download it"
        ) from None


def read_png_embedding(path: Path) -> Any:
    """The JSON document in the PNG's sd-ti-embedding text chunk, tensors as float32."""
    try:
        with Image.open(path) as image:
            # info has the chunks before the pixels (where A1111 writes it); text also reads those
            # after them, but decodes the pixels to get there.
            text = image.info.get(PNG_CHUNK)
            if not isinstance(text, str):
                text = getattr(image, "text", {}).get(PNG_CHUNK)
    except Exception as error:  # PIL's own types for truncated/corrupt files and oversized chunks
        raise FormatError(
            f"{path}: unreadable PNG (truncated or corrupt: {first_line(error)}); re-export or re-download it"
        ) from None
    if not isinstance(text, str):
        raise FormatError(
            f"{path}: a PNG without an {PNG_CHUNK} text chunk; embeddings hidden only in the pixels "
            f"are not read, save it from A1111 as .pt or .safetensors"
        )
    if len(text) // 4 * 3 > MAX_PNG_EMBEDDING:
        raise FormatError(
            f"{path}: the {PNG_CHUNK} chunk decodes to about {len(text) // 4 * 3 >> 20} MB, more than "
            f"the {MAX_PNG_EMBEDDING >> 20} MB an embedding needs; refused"
        )
    try:
        return json.loads(base64.b64decode(text, validate=True), object_hook=_png_tensor)
    except (ValueError, TypeError, RecursionError) as error:  # binascii, JSON, UTF-8, ragged lists
        raise FormatError(
            f"{path}: the {PNG_CHUNK} chunk is not base64 of an A1111 embedding's JSON "
            f"({first_line(error)}); save it from A1111 as .pt or .safetensors"
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
        reason = f"the pickle asks to run code ({listed(list(dict.fromkeys(wanted)), 3)})"
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


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]
