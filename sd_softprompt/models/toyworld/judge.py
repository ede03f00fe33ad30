"""The judge: reads a 64x64 picture and says which toy-world attributes it shows.

A deterministic reader of the renderer's own colours and places, not a trained classifier: each attribute
is a big shape in a colour nothing else uses (world.py), so a handful of colour masks over fixed regions
read it, and there is nothing to train, ship or drift. Its figures (scripts/judge_toyworld.py): accuracy
on held-out renders under blur, noise and colour shifts, and agreement with the caption on the toy
pipeline's own generations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ...errors import ConfigError
from ...render.scoring import Reference
from .world import HORIZON, SIZE, SKY, TIMES, Scene

# The band of rows where the horizon may lie in a generated picture: readings stay clear of it.
_SKY_TOP = slice(0, 6)
_PEAKS = slice(18, HORIZON - 2)
_GROUND = slice(HORIZON + 3, SIZE)
_CLOUD_ROWS = slice(1, 13)


@dataclass(frozen=True)
class Reading:
    """What the judge saw: the scene and the evidence behind each attribute (shares of pixels, in [0, 1])."""

    scene: Scene
    evidence: dict[str, float]


def _as_array(picture) -> np.ndarray:
    if isinstance(picture, Image.Image):
        picture = picture.convert("RGB")
        if picture.size != (SIZE, SIZE):
            picture = picture.resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(picture, dtype=np.float32)
    array = np.asarray(picture, dtype=np.float32)
    if array.shape != (SIZE, SIZE, 3):
        raise ValueError(f"judge reads {SIZE}x{SIZE} RGB pictures, got an array of shape {array.shape}")
    return array


def _share(mask: np.ndarray) -> float:
    return float(mask.mean())


def read(picture) -> Reading:
    """The attributes ``picture`` (a PIL image or an HxWx3 uint8 array) shows, with their evidence."""
    x = _as_array(picture)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hi, lo = x.max(-1), x.min(-1)
    chroma = hi - lo

    # time of day: the top rows' mean colour, nearest of the four skies' top colours
    sky = x[_SKY_TOP].reshape(-1, 3)
    cloudless = sky[(sky.max(-1) - sky.min(-1) >= 45) | (sky.min(-1) <= 110)]
    top = np.median(cloudless if len(cloudless) > 20 else sky, axis=0)  # median: the sun or moon is a minority
    distances = {t: float(np.linalg.norm(top - np.array(SKY[t][0], np.float32))) for t in TIMES}
    time = min(distances, key=distances.__getitem__)

    grey = (chroma < 55) & (hi > 90) & (hi < 175)  # rock: a dull grey-violet
    white = (chroma < 45) & (lo > 185)
    blue = (b > r + 60) & (b > g + 40) & (hi < 235)
    pine = (g > r + 20) & (g > b + 15) & (g < 118)
    red = (r > 140) & (r > g + 90) & (r > b + 90)

    evidence = {
        "mountains": _share((grey | white)[_PEAKS]),
        "lake": _share(blue[_GROUND]),
        "trees": _share(pine[HORIZON - 14 :]),
        "snow": _share(white[_GROUND]),
        "clouds": _share(((chroma < 50) & (lo > 110))[_CLOUD_ROWS]),
        "house": _share(red[HORIZON + 1 :]),
    }
    flags = frozenset(k for k, v in evidence.items() if v >= THRESHOLDS[k])
    return Reading(Scene(time, flags), evidence)


# Least share of pixels that counts as "shows it" (set from renders: scripts/judge_toyworld.py prints
# the evidence each attribute gives when present and when absent).
THRESHOLDS = {"mountains": 0.45, "lake": 0.05, "trees": 0.04, "snow": 0.3, "clouds": 0.12, "house": 0.02}


def judge(picture) -> Scene:
    """The scene ``picture`` shows."""
    return read(picture).scene


def found(picture, attributes) -> float:
    """The share of ``attributes`` (names from world.ATTRIBUTES) that ``picture`` shows."""
    attributes = list(attributes)
    shown = judge(picture).attributes
    return sum(a in shown for a in attributes) / len(attributes)


def augment(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A render made to look generated: blur, a colour shift and pixel noise."""
    picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.2))))
    x = np.asarray(picture, dtype=np.float32)
    x = x * rng.uniform(0.93, 1.07, size=3) + rng.uniform(-12, 12, size=3)
    x = x + rng.normal(0.0, rng.uniform(0.0, 8.0), size=x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


class JudgeScorer:
    """The scoring interface (scoring.Scorer) for the toy world: F(pictures | reference attributes)."""

    def score(self, images: Sequence[Image.Image], reference: Reference) -> dict[str, float]:
        if not reference.attributes:
            raise ConfigError("the toy judge scores against attributes: give the reference some (e.g. sunrise, lake)")
        if not images:
            raise ConfigError("no pictures to score")
        return {"F": sum(found(image, reference.attributes) for image in images) / len(images)}
