"""Reading a folder of pictures (training pictures, CLIP-I reference pictures): which files, how each is read,
how a training picture becomes a tensor, its caption."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
OBJECT_TEMPLATES = [
    "a photo of {}",
    "a rendering of {}",
    "a close-up photo of {}",
    "a bright photo of {}",
    "a good photo of {}",
    "a photo of the {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a picture in the style of {}",
    "an illustration in the style of {}",
]


def scan_images(folder: str | None, flag: str = "--images") -> tuple[list[Path], list[str]]:
    """Image files in a folder and warnings for the other files; ConfigError if there are none.
    ``flag``: the option that named the folder, for the messages."""
    if not folder:
        raise ConfigError("--images is required in images mode: a folder of png/jpg/jpeg/webp pictures")
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a folder; {flag} takes a folder of png/jpg/jpeg/webp pictures")
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES and p.suffix.lower() != ".txt"]
    if not images:
        raise ConfigError(f"{path}: no png/jpg/jpeg/webp images in this folder ({flag})")
    return images, [f"skipped {p.name}: not a png/jpg/jpeg/webp image" for p in skipped]


def read_image(path: Path) -> Image.Image:
    """One picture as RGB; ConfigError naming the file if Pillow cannot read it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # a copy: the file is closed here, not when the picture is collected
    except Exception as e:  # PIL raises many types for bad files
        raise ConfigError(f"{path}: cannot read this image ({e}); remove it or replace it") from None


def read_images(folder: str, flag: str = "--images") -> tuple[list[Image.Image], list[str]]:
    """Every picture of a folder (sorted by name) as RGB, and warnings for the files that are not pictures."""
    paths, warnings = scan_images(folder, flag)
    return [read_image(p) for p in paths], warnings


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """Resize the short side to `resolution`, centre-crop, scale to [-1, 1]; CHW float."""
    img = read_image(path)
    scale = resolution / min(img.size)
    img = img.resize(
        (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))), Image.BICUBIC
    )
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1


def caption_for(path: Path, soft_text: str, tokens: list[str]) -> str | None:
    """A same-name .txt caption with the soft tokens put where {} (or the tokens themselves) mark the spot."""
    side = path.with_suffix(".txt")
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").strip()
    if "{}" in text:
        return text.replace("{}", soft_text)
    if any(t in text for t in tokens):
        return text
    return f"{soft_text} {text}".strip()
