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


# ============================================================================== checkpoints (issue 21)
CHECKPOINT_MUTANTS = 60


def _checkpoint_run(tmp_path):
    """A small valid checkpoint of a text-mode run, the run's config, and fresh vectors and optimizer to resume."""
    from sd_softprompt.train.checkpoints import checkpoint_path, save_checkpoint
    from sd_softprompt.train.config import TrainConfig

    cfg = TrainConfig(model="tiny", out=str(tmp_path / "run.safetensors"), target="a lake", vectors=2, steps=4)
    params = {"clip_l": torch.nn.Parameter(_vectors(2, 32))}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr)
    params["clip_l"].sum().backward()
    optimizer.step()
    save_checkpoint(checkpoint_path(cfg.out_path), cfg, 2, params, optimizer, [0.5, 0.25])
    return cfg, checkpoint_path(cfg.out_path)


def _state_edits(state: dict, rng: random.Random) -> dict:
    """A structural edit of a loaded checkpoint: a field of another type, shape or value."""
    junk = rng.choice([None, 7, -1, 2**70, "x" * 300, [1, 2], {"a": 1}, torch.ones(3), float("nan")])
    choice = rng.randrange(8)
    if choice == 0:
        state[rng.choice(sorted(state))] = junk
    elif choice == 1:
        state["run"][rng.choice(sorted(state["run"]))] = junk
    elif choice == 2:
        state["step"] = rng.choice([-1, 0, 3, 999, True, 2.5, "2"])
    elif choice == 3:
        state["vectors"]["clip_l"] = rng.choice(
            [
                torch.ones(2, 64),
                torch.ones(3, 32),
                torch.ones(32),
                torch.zeros(2, 32, dtype=torch.int64),
                torch.full((2, 32), float("inf")),
                torch.ones(2, 32, dtype=torch.complex64),
                torch.ones(2, 32).half(),
            ]
        )
    elif choice == 4:
        state["vectors"] = rng.choice([{}, {"clip_g": torch.ones(2, 32)}, [torch.ones(2, 32)], None])
    elif choice == 5:
        moments = next(iter(state["optimizer"]["state"].values()))
        moments[rng.choice(["exp_avg", "exp_avg_sq", "step"])] = rng.choice(
            [torch.ones(5), torch.full((2, 32), float("nan")), None, "x", torch.ones(2, 32, 2)]
        )
    elif choice == 6:
        state["optimizer"] = rng.choice(
            [{}, {"state": {}, "param_groups": []}, {"param_groups": [{"params": [0, 1]}]}, junk]
        )
    else:
        state["losses"] = rng.choice([[0.5], [0.5, float("nan")], ["a", "b"], None, [0.5] * 3])
    return state


def _checkpoint_outcome(path, cfg) -> str | None:
    """None when the checkpoint resumes (and one optimizer step runs) or is refused in one line; else what escaped."""
    from sd_softprompt.errors import ConfigError
    from sd_softprompt.train.checkpoints import load_checkpoint, restore

    params = {"clip_l": torch.nn.Parameter(torch.zeros(2, 32))}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr)
    try:
        state = load_checkpoint(path, cfg)
        restore(path, state, params, optimizer)
        params["clip_l"].sum().backward()
        optimizer.step()
    except ConfigError as error:
        text = str(error)
        return None if "\n" not in text and len(text) < 300 else f"message not one short line: {text[:200]!r}"
    except Exception as error:  # noqa: BLE001 (catching everything is what the test is for)
        return f"{type(error).__name__}: {str(error)[:200]}\n{traceback.format_exc(limit=-3)}"
    if not torch.isfinite(params["clip_l"]).all():
        return "resumed to non-finite vectors"
    return None


def test_checkpoint_mutants_resume_or_are_refused(tmp_path):
    cfg, path = _checkpoint_run(tmp_path)
    original = path.read_bytes()
    assert _checkpoint_outcome(path, cfg) is None  # the unmutated checkpoint resumes
    rng = random.Random("fuzz-checkpoint")
    escaped, refused = [], 0
    for i in range(CHECKPOINT_MUTANTS):
        if i % 2:
            path.write_bytes(MUTATIONS[i % 3](original, rng))  # flip_bits, truncate, overwrite: the zip's bytes
        else:
            state = torch.load(io.BytesIO(original), weights_only=True)
            path.write_bytes(_torch_bytes(_state_edits(state, rng)))
        problem = _checkpoint_outcome(path, cfg)
        if problem:
            escaped.append(f"mutant {i}: {problem}")
        else:
            try:
                from sd_softprompt.train.checkpoints import load_checkpoint

                load_checkpoint(path, cfg)
            except Exception:  # noqa: BLE001
                refused += 1
    assert not escaped, f"{len(escaped)} of {CHECKPOINT_MUTANTS} escaped:\n" + "\n".join(escaped[:5])
    assert refused > CHECKPOINT_MUTANTS // 3


# ============================================================================== picture folders (issue 21)
PICTURE_MUTANTS = 80


def _picture_bytes() -> dict[str, bytes]:
    """A PNG, a JPEG with an EXIF block (orientation 6) and a 16-bit PNG, all small."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = Image.fromarray((torch.rand(24, 40, 3, generator=g) * 255).to(torch.uint8).numpy())
    out = {}
    for name, save in (
        ("a.png", lambda buf: pixels.save(buf, format="PNG")),
        ("b.jpg", lambda buf: pixels.save(buf, format="JPEG", exif=_exif(6), quality=90)),
        (
            "c.png",
            lambda buf: Image.fromarray((torch.rand(20, 20, generator=g) * 65535).int().numpy().astype("uint16")).save(
                buf, format="PNG"
            ),
        ),
    ):
        buffer = io.BytesIO()
        save(buffer)
        out[name] = buffer.getvalue()
    return out


def _exif(orientation: int):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def mutate_picture(data: bytes, rng: random.Random) -> bytes:
    """A picture's header (PNG IHDR sizes, JPEG markers), its EXIF block or its bytes, mutated."""
    choice = rng.randrange(5)
    if choice == 0 and data.startswith(b"\x89PNG"):  # IHDR width/height, with a CRC that still matches (or not)
        import zlib

        ihdr = bytearray(data[16:29])
        size = rng.choice([0, 1, 7, 60000, 2**31 - 1, 2**32 - 1, rng.randrange(1, 5000)])
        struct.pack_into(">I", ihdr, rng.choice([0, 4]), size)
        crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) if rng.random() < 0.8 else b"\0\0\0\0"
        return data[:16] + bytes(ihdr) + crc + data[33:]
    if choice == 1 and b"Exif\0\0" in data:  # the EXIF block: random bytes, or another orientation value
        start = data.index(b"Exif\0\0") + 6
        if rng.random() < 0.5:
            return overwrite(data[: start + 40], rng) + data[start + 40 :]
        at = data.find(b"\x01\x12", start)
        if at > 0:
            value = rng.choice([0, 2, 4, 5, 7, 9, 255, 65535])
            return data[: at + 8] + struct.pack(">H", value) + data[at + 10 :]
    if choice == 2 and data.startswith(b"\xff\xd8"):  # a JPEG frame size (SOF0 height, width)
        at = data.find(b"\xff\xc0")
        if at > 0:
            h, w = rng.choice(
                [(0, 40), (65535, 65535), (1, 65535), (24, 0), (rng.randrange(1, 9000), rng.randrange(1, 9000))]
            )
            return data[: at + 5] + struct.pack(">HH", h, w) + data[at + 9 :]
    return rng.choice([flip_bits, truncate, overwrite])(data, rng)


def _caption(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"\xff\xfe\x00a\x00b",
            "une photo à Paris".encode("latin-1"),
            b"a photo of {}" * rng.randrange(1, 200),
            b"\x00\x1b[2J{}\r\n",
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
            b"x" * 70_000,
            "日本の{}写真".encode(),
            b"",
        ]
    )


def _picture_outcome(folder) -> str | None:
    """None when every picture reads as a [-1, 1] tensor with its caption, or the folder is refused in one
    line; else what escaped."""
    from sd_softprompt.errors import ConfigError
    from sd_softprompt.train.data import caption_for, load_image, read_image, scan_images

    try:
        paths, _ = scan_images(str(folder))
        for path in paths:
            x = load_image(path, 32)
            read_image(path)  # a CLIP-I reference picture: the same reader, no draft
            caption_for(path, "[v1]", ["[v1]"])
            if x.shape != (3, 32, 32) or not torch.isfinite(x).all() or x.abs().max() > 1:
                return f"{path.name}: read as {list(x.shape)}, range {float(x.min())}..{float(x.max())}"
    except ConfigError as error:
        text = str(error)
        bad = "\n" in text or len(text) >= 300 or "\x1b" in text
        return f"message not one short, escaped line: {text[:200]!r}" if bad else None
    except Exception as error:  # noqa: BLE001 (catching everything is what the test is for)
        return f"{type(error).__name__}: {str(error)[:200]}\n{traceback.format_exc(limit=-3)}"
    return None


def test_picture_folder_mutants_read_or_are_refused(tmp_path):
    import warnings

    pictures = _picture_bytes()
    rng = random.Random("fuzz-pictures")
    escaped, outcomes = [], {"read": 0, "refused": 0}
    for i in range(PICTURE_MUTANTS):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        name = sorted(pictures)[i % len(pictures)]
        (folder / name).write_bytes(mutate_picture(pictures[name], rng) if i % 4 else pictures[name])
        if i % 3 == 0:
            (folder / name).with_suffix(".txt").write_bytes(_caption(rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "corrupt EXIF" chatter
            problem = _picture_outcome(folder)
        if problem:
            escaped.append(f"mutant {i} ({name}): {problem}")
        else:
            from sd_softprompt.errors import ConfigError
            from sd_softprompt.train.data import load_image, scan_images

            try:
                for path in scan_images(str(folder))[0]:
                    load_image(path, 32)
                outcomes["read"] += 1
            except ConfigError:
                outcomes["refused"] += 1
    assert not escaped, f"{len(escaped)} of {PICTURE_MUTANTS} escaped:\n" + "\n".join(escaped[:5])
    assert outcomes["refused"] > PICTURE_MUTANTS // 5 and outcomes["read"] > PICTURE_MUTANTS // 5, outcomes
