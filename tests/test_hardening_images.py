"""Hostile picture folders (issue 21): pictures are read as a viewer shows them, or refused in one line naming
the file, with the memory of reading one bounded by what the training resolution needs. The pictures are built
here; "what a viewer shows" is what PIL shows after ImageOps.exif_transpose."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sd_softprompt.errors import ConfigError
from sd_softprompt.train.data import load_image, read_image, read_images
from tests.test_hardening import assert_one_line_error, files_in, run_cli


def pattern(width: int, height: int, seed: int = 0) -> Image.Image:
    """Blocks of colour with no symmetry, so that a rotation or a flip shows."""
    g = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(4, 6, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(blocks).resize((width, height), Image.NEAREST)


def images_argv(model: str, folder: Path, *extra: str, out: str = "ti.safetensors") -> list[str]:
    fast = ["--steps", "1", "--vectors", "1", "--batch-size", "1", "--init", "random", "--checkpoint-every", "0"]
    mode = ["--mode", "images", "--images", str(folder), "--resolution", "32"]
    return ["train", "--model", model, *mode, *fast, "--no-progress", "--out", out, *extra]


# ------------------------------------------------------------------------------ as a viewer shows them
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_is_read_as_a_viewer_shows_it(tmp_path, orientation):
    stored = pattern(48, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation  # 3: upside down, 6: turned right, 8: turned left
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "photo.jpg") as img:
        shown = ImageOps.exif_transpose(img).convert("RGB")
    shown.save(tmp_path / "shown.png")  # the same pixels, losslessly, upright
    assert read_image(tmp_path / "photo.jpg").size == shown.size
    assert torch.equal(load_image(tmp_path / "photo.jpg", 32), load_image(tmp_path / "shown.png", 32))
    # The stored (sideways) pixels are something else: the comparison can fail.
    stored_rgb = Image.open(tmp_path / "photo.jpg").convert("RGB")
    stored_rgb.save(tmp_path / "stored.png")
    assert not torch.allclose(load_image(tmp_path / "stored.png", 32), load_image(tmp_path / "shown.png", 32), atol=0.1)
    # CLIP-I reference pictures are read the same way.
    pictures, _ = read_images(str(tmp_path))
    assert pictures[0].size == shown.size


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")  # what Pillow gives for 16-bit greys
    Image.fromarray((values / 257).round().astype(np.uint8)).convert("RGB").save(tmp_path / "eight.png")
    assert torch.equal(load_image(tmp_path / "deep.png", 32), load_image(tmp_path / "eight.png", 32))
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "grey.png")
    assert abs(float(load_image(tmp_path / "grey.png", 16).mean())) < 0.01  # mid-grey, not white (1.0)


def test_a_big_jpeg_is_decoded_at_the_scale_training_needs(tmp_path):
    pattern(1024, 768).save(tmp_path / "big.jpg", quality=90)
    assert read_image(tmp_path / "big.jpg", 64).size == (128, 96)  # 1/8 of the stored size: 64x fewer pixels
    assert read_image(tmp_path / "big.jpg").size == (1024, 768)
    small = load_image(tmp_path / "big.jpg", 64)
    with Image.open(tmp_path / "big.jpg") as img:  # the full decode, cropped and resized the same way
        full = img.convert("RGB").resize((64, 64), Image.BICUBIC, box=(128, 0, 896, 768))
    want = torch.from_numpy(np.asarray(full).copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert small.shape == (3, 64, 64) and (small - want).abs().mean() < 0.05


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height, with almost no pixel data: what the header check must refuse
    before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("size", [(1, 60000), (4000, 1), (9000, 9000), (20000, 20000)])
def test_absurd_picture_sizes_are_refused_before_decoding(size, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "pics"
    folder.mkdir()
    pattern(40, 40).save(folder / "a.png")
    if size == (1, 60000):  # a real one: 200 KB of PNG, 2.9 GB once resized the old way
        Image.fromarray((np.arange(60000) % 251).astype(np.uint8).reshape(60000, 1)).convert("RGB").save(
            folder / "b.png"
        )
    else:
        png_header_only(folder / "b.png", *size)
    # Refused before the model loads: the model name is not even looked at.
    line = assert_one_line_error(*run_cli(capsys, *images_argv("no-such-model", folder, "--resolution", "128"))[::2])
    assert "b.png" in line
    if size[0] == size[1]:  # 9000x9000: past ours; 20000x20000: past Pillow's own limit too (header alone read)
        assert "MP), more than the 67 MP" in line or "MP, more than the 67 MP" in line
        assert line.endswith("a picture may have here; scale it down")
    else:
        assert f"{size[0]}x{size[1]} pixels, longer than 4:1" in line
    assert files_in(tmp_path) == ["pics"]
    with pytest.raises(ConfigError, match="b.png"):
        load_image(folder / "b.png", 128)


def test_a_picture_that_is_not_a_regular_file_does_not_hang(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ConfigError, match="pipe.png: not a regular file"):
        read_image(tmp_path / "pipe.png")


# ------------------------------------------------------------------------------ captions
def test_a_caption_that_is_not_utf8_is_one_line(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "pics"
    folder.mkdir()
    pattern(40, 40).save(folder / "a.png")
    (folder / "a.txt").write_bytes("une photo de {} à Paris".encode("latin-1"))
    line = assert_one_line_error(*run_cli(capsys, *images_argv(tiny_dirs("sd1"), folder))[::2], "a.txt", "UTF-8")
    assert "save it as UTF-8" in line and files_in(tmp_path) == ["pics"]


def test_a_caption_that_pushes_the_soft_tokens_past_the_window_is_refused(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "pics"
    folder.mkdir()
    pattern(40, 40).save(folder / "a.png")
    words = " ".join(["a lake with trees and mountains"] * 20)  # 120 words: past CLIP's 75 tokens
    (folder / "a.txt").write_text(f"{words} in the style of {{}}", encoding="utf-8")
    line = assert_one_line_error(*run_cli(capsys, *images_argv(tiny_dirs("sd1"), folder))[::2], "a.txt", "window")
    assert "learn nothing" in line and files_in(tmp_path) == ["pics"]
    # The soft tokens first: the caption's end is cut, and the run says so.
    (folder / "a.txt").write_text(f"{{}} {words}", encoding="utf-8")
    code, out, err = run_cli(capsys, *images_argv(tiny_dirs("sd1"), folder))
    assert code == 0, err
    assert "a.txt: the caption is" in out and "are cut to fit the window" in out
    assert files_in(tmp_path) == ["README.md", "pics", "ti.config.toml", "ti.report.json", "ti.safetensors"]
