"""Fuzzing the readers: seeded random mutations of valid files (bit flips, truncations, header edits). Each mutant
either loads as finite floating-point vectors or is refused with a SoftPromptError; no other exception escapes."""

from __future__ import annotations

import io
import json
import random
import struct
import traceback

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from sd_softprompt.errors import SoftPromptError
from sd_softprompt.files.softprompt import SoftPrompt

MUTANTS_PER_FILE = 120


def _vectors(n: int, width: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(n * width)) * 0.3


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def valid_files() -> dict[str, bytes]:
    """A native SDXL-keyed file, an A1111 .pt and a diffusers file in both its containers."""
    native = SoftPrompt({"clip_l": _vectors(3, 768), "clip_g": _vectors(3, 1280)}, metadata={"name": "sun"})
    header = {"format": "sd-softprompt/1", "name": "sun", "tokens": json.dumps(native.tokens), "family": "sdxl"}
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": _vectors(2, 768)},
        "name": "cat",
        "step": 500,
        "sd_checkpoint": "45dee52b",
        "sd_checkpoint_name": "v1-5",
    }
    return {
        "native.safetensors": safetensors_bytes(dict(native.vectors), metadata=header),
        "a1111.pt": _torch_bytes(a1111),
        "learned_embeds.safetensors": safetensors_bytes({"<cat>": _vectors(2, 768)}, metadata={"format": "pt"}),
        "learned_embeds.bin": _torch_bytes({"<cat>": _vectors(1, 768)}),
    }


# ---- mutations ------------------------------------------------------------------------------------------
def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 8, 64])):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.choice([rng.randrange(16), rng.randrange(len(data))])]


def overwrite(data: bytes, rng: random.Random) -> bytes:
    """A run of random bytes (or 0xFF, which makes NaN/inf-looking floats) somewhere in the file."""
    out = bytearray(data)
    start, size = rng.randrange(len(out)), rng.randrange(1, 64)
    fill = bytes(rng.randrange(256) for _ in range(size)) if rng.random() < 0.5 else b"\xff" * size
    out[start : start + size] = fill[: len(out) - start]
    return bytes(out)


def _header_values(rng: random.Random) -> list:
    return [
        rng.choice(["F8_E4M3", "F4", "I64", "BOOL", "C64", "F64", "BF16", "F16", "XX"]),
        [rng.randrange(-2, 5), rng.randrange(0, 1300)],
        [rng.randrange(4)],
        [0, 2**62],
        [0, 0],
        [],
        "x" * rng.randrange(100),
        -1,
        None,
        {"a": [1, 2]},
        2**70,
        1e308,
    ]


def edit_header(data: bytes, rng: random.Random) -> bytes:
    """safetensors: change one field of the JSON header (dtype, shape, offsets, metadata) or its length."""
    if len(data) < 8:
        return data
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError:  # a torch zip: edit the bytes of its pickle instead
        return overwrite(data, rng)
    body = data[8 + length :]
    choice = rng.randrange(6)
    if choice == 0:  # the declared header length
        return struct.pack("<Q", rng.choice([0, 1, length - 1, length + 1, 2**63, len(data)])) + data[8:]
    key = rng.choice(sorted(header))
    if choice == 1 and key != "__metadata__":
        header[key][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(_header_values(rng))
    elif choice == 2:  # metadata: tokens, family, name
        meta = header.setdefault("__metadata__", {})
        meta[rng.choice(["tokens", "family", "name", "format"])] = rng.choice(
            ["[1, 2]", '["a"]', "[" * 1000, "x" * 5000, '["a b", "c"]', "sdxl", "flux", "", "null"]
        )
    elif choice == 3:  # rename or add a tensor key
        entry = header.pop(key)
        header[rng.choice(["clip_x", "t5", "", "clip_l_out", "string_to_param", "emb_params", "k" * 300])] = entry
    elif choice == 4:  # drop a key
        header.pop(key)
    else:  # a non-object where an object belongs
        header[key] = rng.choice(_header_values(rng))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "U8": 1, "BOOL": 1}


def retype_header(data: bytes, rng: random.Random) -> bytes:
    """safetensors: a consistent header edit: another dtype (and a shape that fits the same bytes), a zero-sized
    tensor, or the same bytes seen as another shape. The file stays readable; the vectors are what change."""
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError:
        return flip_bits(data, rng)
    key = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[key]
    start, end = entry["data_offsets"]
    choice = rng.randrange(3)
    if choice == 0:
        entry["dtype"] = rng.choice(sorted(_ITEM_BYTES))
        count = (end - start) // _ITEM_BYTES[entry["dtype"]]
        rows = rng.choice([d for d in (1, 2, 3, 4, 6) if count % d == 0])
        entry["shape"] = [rows, count // rows]
        entry["data_offsets"] = [start, start + count * _ITEM_BYTES[entry["dtype"]]]
    elif choice == 1:
        entry["shape"] = rng.choice([[3, 0], [0, 768], [0], [0, 0, 5]])
        entry["data_offsets"] = [start, start]
    else:
        count = (end - start) // _ITEM_BYTES.get(entry["dtype"], 4)
        entry["shape"] = rng.choice([[count], [1, 1, count], [count, 1], [1, count]])
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


MUTATIONS = [flip_bits, truncate, overwrite, edit_header, retype_header]


def _outcome(path) -> str | None:
    """None when the file loads as finite float vectors or is refused as it should be; else what escaped."""
    try:
        soft = SoftPrompt.load(path)
    except SoftPromptError as error:
        text = str(error)
        return None if "\n" not in text and len(text) < 1000 else f"message not one short line: {text[:200]!r}"
    except Exception as error:  # noqa: BLE001 (catching everything is what the test is for)
        return f"{type(error).__name__}: {str(error)[:200]}\n{traceback.format_exc(limit=-3)}"
    for key, vectors in soft.vectors.items():
        if not vectors.is_floating_point() or vectors.dim() != 2 or 0 in vectors.shape:
            return f"loaded {key} {vectors.dtype} {list(vectors.shape)}: not N >= 1 vectors of a width >= 1"
        if not torch.isfinite(vectors).all():
            return f"loaded {key} with non-finite values"
    return None


@pytest.mark.parametrize("name", list(valid_files()))
def test_mutants_load_cleanly_or_are_refused(name, tmp_path):
    original = valid_files()[name]
    SoftPrompt.load(_write(tmp_path / name, original))  # the unmutated file is valid
    rng = random.Random(f"fuzz-{name}")
    escaped, outcomes = [], {"loaded": 0, "refused": 0}
    for i in range(MUTANTS_PER_FILE):
        mutation = MUTATIONS[i % len(MUTATIONS)]
        path = _write(tmp_path / f"m{i}-{name}", mutation(original, rng))
        problem = _outcome(path)
        if problem:
            escaped.append(f"mutant {i} ({mutation.__name__}): {problem}")
        else:
            try:
                SoftPrompt.load(path)
                outcomes["loaded"] += 1
            except SoftPromptError:
                outcomes["refused"] += 1
        path.unlink()
    assert not escaped, f"{len(escaped)} of {MUTANTS_PER_FILE} escaped:\n" + "\n".join(escaped[:5])
    assert outcomes["refused"] > MUTANTS_PER_FILE // 4  # the mutations do break files...
    assert outcomes["loaded"] > 0  # ...and some (a flipped bit in a float) still load


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
