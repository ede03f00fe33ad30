"""Reading a folder of pictures (training pictures, CLIP-I reference pictures): which files, how each is read,
how a training picture becomes a tensor, its caption.

Pictures are read as a viewer shows them: EXIF orientation applied, 16-bit greys scaled (not clipped) to 8 bits.
The memory one picture costs is bounded before its pixels are decoded: the header's size is checked first
(Image.open reads no pixels), a JPEG is decoded at the smallest scale that still covers the training resolution
(`Image.draft`), and pictures that are absurdly long and thin, or too many pixels to decode, are refused.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps

from ..errors import ConfigError, printable, shorten

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
# Longest side / shortest side: training keeps the centre square, which of a picture longer than this holds
# less than a quarter; a 1 x 60000 strip is not a picture of anything.
MAX_ASPECT = 4.0
MAX_PIXELS = 64 * 2**20  # decoded pixels (after a JPEG's draft scaling): 64 MP is 192 MB as RGB
MAX_CAPTION_BYTES = 64 * 1024  # a caption is a sentence; this is far past any encoder's window
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # 16-bit greys (PNG), read by Pillow as integers
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
    """Image files in a folder and warnings for the other files; ConfigError if there are none, or for a
    picture whose header already says it cannot be used (checked without decoding any pixels).
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
    for image in images:
        with _opened(image) as img:
            _check_size(image, img.size)
    return images, [f"skipped {printable(p.name, 80)}: not a png/jpg/jpeg/webp image" for p in skipped]


class _opened:
    """``Image.open`` (the header only) with every way a file can fail turned into one line naming it."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Image.Image:
        if not self.path.is_file():  # a FIFO or a device would block or never end
            raise ConfigError(f"{_name(self.path)}: not a regular file; give picture files")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check says it
                self.img = Image.open(self.path)
        except Image.DecompressionBombError:  # Pillow's own limit, past ours: the header's size is all it read
            raise ConfigError(
                f"{_name(self.path)}: more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP, more than the "
                f"{MAX_PIXELS / 1e6:.0f} MP a picture may have here; scale it down"
            ) from None
        except Exception as e:  # PIL raises many types for bad files
            raise _unreadable(self.path, e) from None
        return self.img

    def __exit__(self, kind, error, trace) -> None:
        self.img.close()
        if isinstance(error, Exception) and not isinstance(error, ConfigError):  # not Ctrl-C
            raise _unreadable(self.path, error) from None


def _name(path: Path) -> str:
    return printable(str(path), 120)


def _unreadable(path: Path, error: BaseException) -> ConfigError:
    reason = shorten(printable(str(error).replace(str(path), "").strip(" '\"") or type(error).__name__), 80)
    return ConfigError(f"{_name(path)}: cannot read this image ({reason}); remove it or replace it")


def _check_size(path: Path, size: tuple[int, int], decoded: bool = False) -> None:
    """Refuse pictures no training crop can use, and pictures too big to decode, naming the file."""
    width, height = size
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT:
        raise ConfigError(
            f"{_name(path)}: {width}x{height} pixels, longer than {MAX_ASPECT:g}:1; training keeps the centre "
            f"square: crop the picture to what matters, or remove it"
        )
    if width * height > MAX_PIXELS:
        what = "decodes to" if decoded else "is"
        raise ConfigError(
            f"{_name(path)}: {what} {width}x{height} pixels ({width * height / 1e6:.0f} MP), more than the "
            f"{MAX_PIXELS / 1e6:.0f} MP a picture may have here; scale it down"
        )


def read_image(path: Path, resolution: int | None = None) -> Image.Image:
    """One picture as RGB, as a viewer shows it (EXIF orientation, 16-bit greys scaled); ConfigError naming the
    file if it cannot be read or used. ``resolution``: the smallest short side needed; a JPEG is decoded at the
    smallest scale that still has it (1/2, 1/4, 1/8 of the stored size), so its memory follows the need."""
    path = Path(path)
    with _opened(path) as img:
        _check_size(path, img.size)
        if resolution:
            img.draft("RGB", (resolution, resolution))  # JPEG only; a no-op for other formats
        _check_size(path, img.size, decoded=True)
        img = ImageOps.exif_transpose(img)  # decodes; a new image (the file is closed here, not when collected)
        if img.mode in _SIXTEEN_BIT:  # convert("RGB") would clip 16-bit values at 255: mid-grey as white
            img = img.convert("I").point(lambda v: v * (1 / 257) + 0.5).convert("L")
        return img.convert("RGB")


def read_images(folder: str, flag: str = "--images") -> tuple[list[Image.Image], list[str]]:
    """Every picture of a folder (sorted by name) as RGB, and warnings for the files that are not pictures."""
    paths, warnings_ = scan_images(folder, flag)
    return [read_image(p) for p in paths], warnings_


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """Centre-crop the largest square, resize it to `resolution`, scale to [-1, 1]; CHW float.

    The crop comes first, so resizing never makes more than `resolution`² pixels."""
    img = read_image(path, resolution)
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.resize((resolution, resolution), Image.BICUBIC, box=(left, top, left + side, top + side))
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1


def caption_for(path: Path, soft_text: str, tokens: list[str]) -> str | None:
    """A same-name .txt caption with the soft tokens put where {} (or the tokens themselves) mark the spot;
    ConfigError naming the caption file if it is not UTF-8 text."""
    side = path.with_suffix(".txt")
    if not side.is_file():
        return None
    try:
        with open(side, "rb") as handle:
            raw = handle.read(MAX_CAPTION_BYTES + 1)
        if len(raw) > MAX_CAPTION_BYTES:
            raise ConfigError(
                f"{_name(side)}: a caption of more than {MAX_CAPTION_BYTES // 1024} KB; a caption is a sentence "
                f"the text encoder reads (at most a few hundred characters)"
            )
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{_name(side)}: the caption is not UTF-8 text (byte {e.start}); save it as UTF-8 or remove it"
        ) from None
    except OSError as e:
        raise ConfigError(f"{_name(side)}: cannot read this caption ({e.strerror or e})") from None
    if "{}" in text:
        return text.replace("{}", soft_text)
    if any(t in text for t in tokens):
        return text
    return f"{soft_text} {text}".strip()


def fingerprint(folder: str) -> str:
    """A hash of a picture folder's contents (the pictures and their captions: names and bytes): what resuming
    compares, so that a checkpoint never continues on other pictures, wherever the folder now is. Hashed once
    while the files' names, sizes and times stay as they are (a run saves many checkpoints)."""
    paths, _ = scan_images(folder)
    parts = [part for path in paths for part in (path, path.with_suffix(".txt")) if part.is_file()]
    listing = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in parts)
    if listing not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for part in parts:
            digest.update(f"{part.name}\0{part.stat().st_size}\0".encode("utf-8", "surrogateescape"))
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _FINGERPRINTS.clear()  # one folder at a time is what a run needs
        _FINGERPRINTS[listing] = digest.hexdigest()[:32]
    return _FINGERPRINTS[listing]


_FINGERPRINTS: dict[tuple, str] = {}
