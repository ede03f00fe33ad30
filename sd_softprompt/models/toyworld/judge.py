"""The judge: reads a 64x64 picture and says which toy-world attributes it shows.

A deterministic reader of the renderer's own colours and places, not a trained classifier: each object
is a big shape in a colour nothing else uses (world.py), so a handful of colour masks over fixed regions
read it, and there is nothing to train, ship or drift. A light is read first, from the colour of the open
ground at the bottom (grass or snow, in each light); the rest is read with the light undone. A medium is a
pattern of one frequency (brush strokes across, hatching along the ground's diagonal), read as the
picture's amplitude at that frequency. Its figures (scripts/judge_toyworld.py): accuracy
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
from .world import GRASS, HORIZON, LIGHTS, MEDIUMS, PERIOD, SIZE, SKY, SNOW, TIMES, Scene, apply_light, undo_light

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


# The bottom rows are open ground in every scene (grass or snow: the lake, trees, house and a sketch's hatching
# end above them). Their colour and the sky's top colour say the light: each light's ground colours (grass,
# snow) and top-of-sky colours (four times of day) are the references.
_BOTTOM = slice(SIZE - 3, SIZE)
_GROUNDS = {light: np.array([apply_light(np.array(c, np.float32), light) for c in (GRASS, SNOW)]) for light in LIGHTS}
_TOPS = {light: np.array([apply_light(np.array(SKY[t][0], np.float32), light) for t in TIMES]) for light in LIGHTS}


def read_light(x: np.ndarray) -> tuple[str, dict[str, float]]:
    """The light whose references are nearest the bottom rows' median colour plus nearest the top rows'. Each
    bottom column is averaged with the one half a stroke period on, so that a painting's strokes (+-) cancel."""
    columns = np.median(x[_BOTTOM], axis=0)
    ground = np.median((columns + np.roll(columns, PERIOD // 2, axis=0)) / 2, axis=0)
    top = np.median(x[_SKY_TOP].reshape(-1, 3), axis=0)
    costs = {
        light: float(
            np.linalg.norm(_GROUNDS[light] - ground, axis=1).min() + np.linalg.norm(_TOPS[light] - top, axis=1).min()
        )
        for light in LIGHTS
    }
    best = min(costs, key=costs.__getitem__)
    return (best if costs[best] < LIGHT_MARGIN * costs[LIGHTS[0]] else LIGHTS[0]), costs


def _amplitude(grey: np.ndarray, fx: float, fy: float) -> float:
    """The amplitude of ``grey``'s component at (fx, fy) cycles per pixel, in grey levels (phase aside)."""
    ys, xs = np.mgrid[: grey.shape[0], : grey.shape[1]]
    wave = np.exp(-2j * np.pi * (fx * xs + fy * ys))
    return float(2 * abs((grey * wave).mean()))


def _open_ground(x: np.ndarray) -> np.ndarray:
    """The hatched rows' grey, what stands on the ground (lake, trees, house) set to the open ground's mean:
    the edges of those shapes have diagonal energy too, and a hatching is read on open ground only."""
    band = x[HORIZON + 1 : SIZE - 4]
    grey = band.mean(-1)
    chroma = band.max(-1) - band.min(-1)
    # grass, snow, pencil and their blends: near grass, or without colour (the objects all have some)
    open_ground = (np.linalg.norm(band - np.array(GRASS, np.float32), axis=-1) < 75) | (chroma < 45)
    fill = grey[open_ground].mean() if open_ground.any() else grey.mean()
    return np.where(open_ground, grey, fill)


_STROKE_ROWS = 26  # strokes are read in the sky above the trees' tops: trees on snow stand in a row too


def read_medium(x: np.ndarray) -> tuple[str, dict[str, float]]:
    """Brush strokes: vertical bands, read in the sky; hatching: diagonal lines, read on the open ground."""
    evidence = {
        "painting": _amplitude(x[:_STROKE_ROWS].mean(-1), 1 / PERIOD, 0.0),
        "sketch": _amplitude(_open_ground(x), 1 / PERIOD, 1 / PERIOD),
    }
    shown = {m: evidence[m] / THRESHOLDS[m] for m in evidence if evidence[m] >= THRESHOLDS[m]}
    return (max(shown, key=shown.__getitem__) if shown else MEDIUMS[0]), evidence


def _solid(mask: np.ndarray) -> np.ndarray:
    """``mask`` opened by a 3x3 square (eroded, then grown back): shapes keep their area, the thin lines where
    a sketch's hatching meets grass go."""

    def neighbours(m: np.ndarray, combine) -> np.ndarray:
        padded, out = np.pad(m, 1, constant_values=combine is np.logical_and), m.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out = combine(out, padded[dy : dy + m.shape[0], dx : dx + m.shape[1]])
        return out

    return neighbours(neighbours(mask, np.logical_and), np.logical_or) & mask


def read(picture) -> Reading:
    """The attributes ``picture`` (a PIL image or an HxWx3 uint8 array) shows, with their evidence."""
    x = _as_array(picture)
    light, light_costs = read_light(x)
    x = np.clip(undo_light(x, light), 0, 255)
    medium, medium_evidence = read_medium(x)
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
        "trees": _share((_solid(pine) if medium == "sketch" else pine)[HORIZON - 14 :]),
        # of the ground not under a sketch's hatching
        "snow": _share(((chroma < 45) & (lo > 120))[_GROUND]) / max(1e-3, 1 - _share((hi < 80)[_GROUND])),
        "clouds": _share(((chroma < 50) & (lo > 110))[_CLOUD_ROWS]),
        "house": _share(red[HORIZON + 1 :]),
    }
    flags = frozenset(k for k, v in evidence.items() if v >= THRESHOLDS[k])
    evidence |= medium_evidence | {f"ground_{k}": v for k, v in light_costs.items()}
    return Reading(Scene(time, flags, medium, light), evidence)


# Least share of pixels that counts as "shows it" (set from renders: scripts/judge_toyworld.py prints
# the evidence each attribute gives when present and when absent); for a medium, the least amplitude of
# its pattern in grey levels (the renderer draws about 25 for strokes, 25-110 for hatching).
THRESHOLDS = {
    "mountains": 0.45,
    "lake": 0.05,
    "trees": 0.04,
    "snow": 0.3,
    "clouds": 0.12,
    "house": 0.02,
    "painting": 8.0,
    "sketch": 8.0,
}
# Another light than clear only where its references are this much nearer than clear's (generated plain pictures
# stray from the palette; scripts/judge_toyworld.py reads them)
LIGHT_MARGIN = 0.5


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
