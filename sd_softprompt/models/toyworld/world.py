"""The toy world: seeded 64x64 landscapes drawn from a handful of attributes, and captions for them.

Every attribute is a big flat shape in a colour no other attribute uses, so that a small diffusion
model learns it in minutes on a CPU and a deterministic judge (judge.py) can read it back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
HORIZON = 38  # first ground row
TIMES = ("sunrise", "noon", "sunset", "night")
OBJECTS = ("mountains", "lake", "trees")  # the mission's objects
EXTRAS = ("snow", "clouds", "house")  # attributes no distillation target uses: for composition
FLAGS = OBJECTS + EXTRAS
ATTRIBUTES = TIMES + FLAGS  # everything the judge reads

# sky: (top colour, horizon colour), sun or moon: (colour, centre x, centre y, radius)
SKY = {
    "sunrise": ((250, 160, 200), (255, 205, 120)),
    "noon": ((50, 120, 230), (150, 205, 250)),
    "sunset": ((80, 30, 110), (235, 75, 35)),
    "night": ((8, 8, 35), (30, 30, 80)),
}
SUN = {
    "sunrise": ((255, 245, 150), 14, 27, 7),
    "noon": ((255, 225, 60), 32, 9, 6),
    "sunset": ((255, 125, 20), 50, 27, 7),
    "night": ((240, 225, 140), 50, 10, 5),
}
GRASS = (70, 155, 60)
SNOW = (238, 242, 248)
ROCK = (115, 110, 128)
LAKE = (30, 80, 200)
PINE = (20, 85, 35)
TRUNK = (90, 55, 25)
WALL = (205, 35, 35)
ROOF = (70, 35, 20)
CLOUD = {"night": (140, 140, 160)}
CLOUD_DAY = (250, 250, 250)


@dataclass(frozen=True)
class Scene:
    """What a picture shows: a time of day and the set of flags (mountains, lake, trees, snow, ...)."""

    time: str
    flags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.time not in TIMES:
            raise ValueError(f"time {self.time!r}: choose one of {', '.join(TIMES)}")
        unknown = set(self.flags) - set(FLAGS)
        if unknown:
            raise ValueError(f"unknown attributes {sorted(unknown)}: choose from {', '.join(FLAGS)}")
        object.__setattr__(self, "flags", frozenset(self.flags))

    @property
    def attributes(self) -> frozenset[str]:
        return self.flags | {self.time}

    @classmethod
    def of(cls, *attributes: str) -> Scene:
        """Scene.of("sunrise", "trees", "lake")."""
        times = [a for a in attributes if a in TIMES]
        if len(times) != 1:
            raise ValueError(f"{attributes}: name exactly one time of day ({', '.join(TIMES)})")
        return cls(times[0], frozenset(a for a in attributes if a not in TIMES))

    @classmethod
    def parse(cls, text: str) -> Scene:
        """Scene.parse("sunrise,trees,lake"): attributes separated by commas (a command line's --scene)."""
        return cls.of(*[a.strip() for a in text.split(",") if a.strip()])

    def key(self) -> str:
        return "+".join([self.time, *sorted(self.flags)])


MISSION = Scene.of("sunrise", "trees", "mountains", "lake")
# Held out of training captions altogether: images mode must find it from pictures alone.
UNNAMED = Scene.of("night", "snow", "house", "lake")


def all_scenes() -> list[Scene]:
    out = []
    for time in TIMES:
        for mask in range(1 << len(FLAGS)):
            out.append(Scene(time, frozenset(f for i, f in enumerate(FLAGS) if mask >> i & 1)))
    return out


def _held_out() -> tuple[Scene, ...]:
    # Never in training: their captions test whether the model composes what it learned separately.
    pool = [s for s in all_scenes() if s not in (MISSION, UNNAMED) and len(s.flags) >= 2]
    return tuple(random.Random(8).sample(pool, 12))


def random_scene(rng: random.Random, exclude: frozenset[Scene] = frozenset()) -> Scene:
    while True:
        scene = Scene(rng.choice(TIMES), frozenset(f for f in FLAGS if rng.random() < 0.5))
        if scene not in exclude:
            return scene


HELD_OUT = _held_out()

# Positive prompts for negative prompts. Every training caption names every attribute of its scene, so a
# caption tells the model what is absent too: a negative can only steer what a prompt leaves open. These
# name no time of day (which every caption has) and a flag or two, and the model fills the rest in: with no
# negative it draws sunset, night or mountains in a third to all of their pictures (README). Training draws
# from the first; the second, held out, is what the measures use (fidelity.negative_table, the guided D).
NEGATIVE_TRAIN_POSITIVES = (
    "landscape",
    "lake",
    "house",
    "view of trees",
    "painting of trees",
    "a photo of lake",
    "painting of house",
    "house and lake",
    "trees and house",
    "image of serene landscape",
    "view of lake",
)
NEGATIVE_EVAL_POSITIVES = ("trees", "trees and lake", "a photo of trees", "")


# ---------------------------------------------------------------- drawing
def _lerp(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def render(scene: Scene, seed: int = 0) -> Image.Image:
    """The scene as a 64x64 RGB picture; ``seed`` moves shapes about (same seed, same pixels)."""
    rng = random.Random(f"{scene.key()}/{seed}")
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    top, horizon = SKY[scene.time]
    for y in range(HORIZON):
        draw.line([(0, y), (SIZE, y)], fill=_lerp(top, horizon, y / (HORIZON - 1)))
    if scene.time == "night":
        for _ in range(12):
            x, y = rng.randrange(SIZE), rng.randrange(HORIZON - 10)
            draw.point((x, y), fill=(230, 230, 230))
    colour, cx, cy, r = SUN[scene.time]
    cx, cy = cx + rng.randint(-3, 3), cy + rng.randint(-2, 2)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    if scene.time == "night":  # a crescent: the sky bites the moon
        bite = _lerp(top, horizon, (cy - 3) / (HORIZON - 1))
        draw.ellipse([cx - r + 3, cy - r - 2, cx + r + 3, cy + r - 2], fill=bite)
    if "clouds" in scene.flags:
        fill = CLOUD.get(scene.time, CLOUD_DAY)
        for x0 in (rng.randint(2, 12), rng.randint(30, 42)):
            y0 = rng.randint(6, 9)
            draw.ellipse([x0, y0 - 4, x0 + 20, y0 + 4], fill=fill)
            draw.ellipse([x0 + 5, y0 - 7, x0 + 15, y0 + 1], fill=fill)
    ground = SNOW if "snow" in scene.flags else GRASS
    if "mountains" in scene.flags:
        peaks = [(rng.randint(6, 16), rng.randint(14, 19)), (rng.randint(28, 36), rng.randint(12, 17))]
        peaks.append((rng.randint(48, 58), rng.randint(15, 20)))
        for px, py in peaks:
            half = HORIZON - py + 6
            draw.polygon([(px - half, HORIZON), (px, py), (px + half, HORIZON)], fill=ROCK)
            if "snow" in scene.flags:
                cap = (HORIZON - py) // 3
                draw.polygon([(px - cap, py + cap), (px, py), (px + cap, py + cap)], fill=SNOW)
    draw.rectangle([0, HORIZON, SIZE, SIZE], fill=ground)
    if "lake" in scene.flags:
        cx = rng.randint(26, 38)
        draw.ellipse([cx - 20, 45, cx + 20, 58], fill=LAKE)
    if "trees" in scene.flags:
        xs = sorted(rng.sample(range(2, 62, 6), 4))
        for x in xs:
            base = rng.randint(46, 60)
            height = rng.randint(15, 20)
            draw.rectangle([x - 1, base - 2, x + 1, base + 2], fill=TRUNK)
            draw.polygon([(x - 5, base - 2), (x, base - height), (x + 5, base - 2)], fill=PINE)
    if "house" in scene.flags:
        hx = rng.choice((rng.randint(4, 10), rng.randint(42, 48)))
        hy = rng.randint(40, 44)
        draw.rectangle([hx, hy, hx + 13, hy + 10], fill=WALL)
        draw.polygon([(hx - 2, hy), (hx + 7, hy - 7), (hx + 16, hy)], fill=ROOF)
    return image


def render_array(scene: Scene, seed: int = 0) -> np.ndarray:
    return np.asarray(render(scene, seed))


# ---------------------------------------------------------------- captions
_TIME_WORDS = {"sunrise": "sunrise", "noon": "noon", "sunset": "sunset", "night": "night"}
_FLAG_WORDS = {
    "mountains": "mountains",
    "lake": "lake",
    "trees": "trees",
    "snow": "snow",
    "clouds": "clouds",
    "house": "house",
}
_TEMPLATES = (
    "image of serene landscape at {time} with {things}",
    "{time} landscape with {things}",
    "{things} at {time}",
    "a photo of {things} at {time}",
    "landscape at {time} with {things}",
    "painting of {things} at {time}",
    "{time} view of {things}",
)
_BARE = (
    "image of serene landscape at {time}",
    "landscape at {time}",
    "{time} landscape",
    "empty landscape at {time}",
)


def _things(words: list[str], rng: random.Random) -> str:
    if len(words) == 1:
        return words[0]
    joiner = rng.choice((" and ", " "))
    if joiner == " ":  # the mission's own style: "trees mountains and lake"
        return " ".join(words[:-1]) + " and " + words[-1]
    return ", ".join(words[:-1]) + " and " + words[-1] if rng.random() < 0.5 else joiner.join(words)


def caption(scene: Scene, rng: random.Random) -> str:
    """One caption naming every attribute of ``scene``, in a random phrasing and word order."""
    words = [_FLAG_WORDS[f] for f in FLAGS if f in scene.flags]
    rng.shuffle(words)
    time = _TIME_WORDS[scene.time]
    if not words:
        return rng.choice(_BARE).format(time=time)
    return rng.choice(_TEMPLATES).format(time=time, things=_things(words, rng))


def captions_vocabulary() -> list[str]:
    """Every word a caption may use."""
    words = set(_TIME_WORDS.values()) | set(_FLAG_WORDS.values())
    for template in _TEMPLATES + _BARE:
        words |= set(template.replace("{time}", "").replace("{things}", "").split())
    words.add("and")
    return sorted(words)


def mission_caption() -> str:
    return "image of serene landscape at sunrise with trees mountains and lake"
