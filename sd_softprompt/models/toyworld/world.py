"""The toy world: seeded 64x64 landscapes drawn from a handful of attributes, and captions for them.

Every object is a big flat shape in a colour no other attribute uses, and every style a whole-picture
pattern or palette (a medium: brush strokes or pencil hatching; a light: golden or misty), so that a small
diffusion model learns it on a CPU and a deterministic judge (judge.py) can read it back. Captions come two
ways: the seven short phrasings the first model was trained on (``caption``), and prompts written the way
people write them (``written_prompt``): synonyms, sentences and tag lists, quality and filler tags, from a
few tokens up to the whole window.
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
# Styles: the first of each is the plain look (what a caption that names no style draws).
MEDIUMS = ("photo", "painting", "sketch")  # painting: vertical brush strokes; sketch: hatched ground
LIGHTS = ("clear", "golden", "misty")  # golden: a warm palette; misty: washed towards a grey haze
STYLES = MEDIUMS + LIGHTS
ATTRIBUTES = TIMES + FLAGS + STYLES  # everything the judge reads

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
HATCH = (45, 45, 52)  # a sketch's pencil lines
STROKE = 20  # a painting's brush strokes: +-20 in every channel, in vertical bands 4 px wide
PERIOD = 8  # of the strokes (across) and of the hatching (along the diagonal)
# a light: x -> x * gain + offset (golden), or a blend towards the haze (misty)
GOLDEN = ((0.85, 0.75, 0.45), (38.0, 30.0, 0.0))  # nothing clips: the judge undoes it exactly
MIST = ((0.55, 0.55, 0.55), (54.0, 60.75, 74.25))  # 0.55 x + 0.45 (120, 135, 165): a blue-grey haze
LIGHT_MAPS = {"golden": GOLDEN, "misty": MIST}


@dataclass(frozen=True)
class Scene:
    """What a picture shows: a time of day, the set of flags (mountains, lake, trees, snow, ...), a medium
    and a light (by default the plain look: a photo in clear light)."""

    time: str
    flags: frozenset[str] = field(default_factory=frozenset)
    medium: str = MEDIUMS[0]
    light: str = LIGHTS[0]

    def __post_init__(self) -> None:
        if self.time not in TIMES:
            raise ValueError(f"time {self.time!r}: choose one of {', '.join(TIMES)}")
        unknown = set(self.flags) - set(FLAGS)
        if unknown:
            raise ValueError(f"unknown attributes {sorted(unknown)}: choose from {', '.join(FLAGS + STYLES)}")
        for value, choices in ((self.medium, MEDIUMS), (self.light, LIGHTS)):
            if value not in choices:
                raise ValueError(f"{value!r}: choose one of {', '.join(choices)}")
        object.__setattr__(self, "flags", frozenset(self.flags))

    @property
    def attributes(self) -> frozenset[str]:
        return self.flags | {self.time, self.medium, self.light}

    @property
    def plain(self) -> Scene:
        """The same time and flags in the plain look (what held-out scenes are kept apart by)."""
        return Scene(self.time, self.flags)

    @classmethod
    def of(cls, *attributes: str) -> Scene:
        """Scene.of("sunrise", "trees", "lake"), Scene.of("night", "house", "painting", "misty")."""
        times = [a for a in attributes if a in TIMES]
        if len(times) != 1:
            raise ValueError(f"{attributes}: name exactly one time of day ({', '.join(TIMES)})")
        style = {}
        for name, choices in (("medium", MEDIUMS), ("light", LIGHTS)):
            named = [a for a in attributes if a in choices]
            if len(named) > 1:
                raise ValueError(f"{attributes}: name at most one {name} ({', '.join(choices)})")
            style[name] = named[0] if named else choices[0]
        rest = frozenset(a for a in attributes if a not in TIMES and a not in STYLES)
        return cls(times[0], rest, **style)

    @classmethod
    def parse(cls, text: str) -> Scene:
        """Scene.parse("sunrise,trees,lake"): attributes separated by commas (a command line's --scene)."""
        return cls.of(*[a.strip() for a in text.split(",") if a.strip()])

    def key(self) -> str:
        """ "noon+lake+trees"; a style other than the plain look is appended ("...+painting+misty")."""
        styles = [s for s in (self.medium, self.light) if s not in (MEDIUMS[0], LIGHTS[0])]
        return "+".join([self.time, *sorted(self.flags), *styles])


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


def random_scene(rng: random.Random, exclude: frozenset[Scene] = frozenset(), styled: float = 0.0) -> Scene:
    """A random scene whose plain look is not in ``exclude``; with ``styled`` > 0, each of its medium and light
    is other than plain with that probability (split evenly). ``styled=0`` draws as the first model's data did."""
    while True:
        scene = Scene(rng.choice(TIMES), frozenset(f for f in FLAGS if rng.random() < 0.5))
        if styled:
            medium = rng.choice(MEDIUMS[1:]) if rng.random() < styled else MEDIUMS[0]
            light = rng.choice(LIGHTS[1:]) if rng.random() < styled else LIGHTS[0]
            scene = Scene(scene.time, scene.flags, medium, light)
        if scene.plain not in exclude:
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
    # (the plain look draws exactly what the first model was trained on: styles take no numbers from rng)
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
    if scene.medium == "sketch":  # pencil hatching on the open ground (x + y = c), under what stands on it
        top, bottom = HORIZON + 1, SIZE - 4  # the last rows stay bare: the judge reads the light there
        for c in range(top, top + 2 * SIZE):
            if c % PERIOD < 3:
                draw.line([(c - top, top), (c - bottom, bottom)], fill=HATCH)
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
    if scene.medium == "painting" or scene.light != LIGHTS[0]:
        x = np.asarray(image, dtype=np.float32)
        if scene.medium == "painting":
            x = x + np.where(np.arange(SIZE) % PERIOD < PERIOD // 2, STROKE, -STROKE)[None, :, None]
        image = Image.fromarray(np.clip(apply_light(x, scene.light), 0, 255).round().astype(np.uint8))
    return image


def apply_light(x: np.ndarray, light: str) -> np.ndarray:
    """An HxWx3 float picture in ``light`` (unclipped)."""
    if light not in LIGHT_MAPS:
        return x
    gain, offset = LIGHT_MAPS[light]
    return x * np.array(gain, np.float32) + np.array(offset, np.float32)


def undo_light(x: np.ndarray, light: str) -> np.ndarray:
    """The inverse of ``apply_light``: what the picture would be in clear light."""
    if light not in LIGHT_MAPS:
        return x
    gain, offset = LIGHT_MAPS[light]
    return (x - np.array(offset, np.float32)) / np.array(gain, np.float32)


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


def short_caption(scene: Scene, rng: random.Random) -> str:
    """A short phrasing (``caption``'s) that names the scene's style too: its medium where the phrasing
    names one ("painting of ...", "a photo of ..."; in front where it names none), its light at the end.
    (``caption`` alone is what the first model was trained on: there "painting of" drew the plain look.)"""
    text = caption(scene, rng)
    said = {"photo": "a photo of", "painting": "painting of", "sketch": "sketch of"}[scene.medium]
    for phrase in ("painting of ", "a photo of "):
        if text.startswith(phrase):
            text = f"{said} {text[len(phrase) :]}"
            break
    else:
        if scene.medium != MEDIUMS[0]:
            text = f"{said} {text}"
    return text if scene.light == LIGHTS[0] else f"{text}, {scene.light}"


def captions_vocabulary() -> list[str]:
    """Every word a caption may use."""
    words = set(_TIME_WORDS.values()) | set(_FLAG_WORDS.values())
    for template in _TEMPLATES + _BARE:
        words |= set(template.replace("{time}", "").replace("{things}", "").split())
    words.add("and")
    return sorted(words)


def mission_caption() -> str:
    return "image of serene landscape at sunrise with trees mountains and lake"


# ---------------------------------------------------------------- prompts as people write them
# Each attribute's words (one whole-word token each); the first is the one the short captions use. A word
# here means that attribute wherever it stands; no filler word below is one of them.
SYNONYMS = {
    "sunrise": ("sunrise", "dawn", "daybreak", "morning"),
    "noon": ("noon", "midday", "daytime", "day"),
    "sunset": ("sunset", "dusk", "evening", "twilight"),
    "night": ("night", "nighttime", "moonlit", "midnight"),
    "mountains": ("mountains", "mountain", "peaks", "alps"),
    "lake": ("lake", "pond", "lagoon", "water"),
    "trees": ("trees", "forest", "pines", "woods"),
    "snow": ("snow", "snowy", "winter", "frost"),
    "clouds": ("clouds", "cloudy", "cloud", "overcast"),
    "house": ("house", "cabin", "cottage", "hut"),
    "photo": ("photo", "photograph", "photography"),
    "painting": ("painting", "painted", "brushstrokes"),
    "sketch": ("sketch", "drawing", "pencil", "sketched"),
    "clear": ("clear",),
    "golden": ("golden", "amber", "gilded"),
    "misty": ("misty", "mist", "foggy", "hazy"),
}
ATTRIBUTE_OF_WORD = {word: attribute for attribute, words in SYNONYMS.items() for word in words}

# How an attribute is said in a prompt: {w} is one of its words.
_PHRASES = {
    "sunrise": ("at {w}", "{w}", "during {w}", "early {w}", "soft {w}"),
    "noon": ("at {w}", "{w}", "in the {w}", "bright {w}", "sunny {w}"),
    "sunset": ("at {w}", "{w}", "during {w}", "late {w}", "{w} sky"),
    "night": ("at {w}", "{w}", "under the moon at {w}", "starry {w}", "dark {w}"),
    "mountains": ("{w}", "tall {w}", "rocky {w}", "distant {w}", "majestic {w}"),
    "lake": ("{w}", "a calm {w}", "blue {w}", "still {w}", "a small {w}"),
    "trees": ("{w}", "tall {w}", "green {w}", "dense {w}", "evergreen {w}"),
    "snow": ("{w}", "fresh snow", "covered in snow", "{w} ground", "deep snow"),
    "clouds": ("{w}", "fluffy clouds", "white clouds", "{w} sky", "drifting clouds"),
    "house": ("a {w}", "a red {w}", "a small {w}", "a wooden {w}", "a lonely {w}"),
    "photo": ("a {w}", "{w}", "a {w} of", "professional {w}", "film {w}"),
    "painting": ("an oil painting", "{w}", "a painting of", "{w} on canvas", "impressionist painting"),
    "sketch": ("a sketch", "{w}", "a drawing of", "charcoal sketch", "{w} on paper"),
    "clear": ("{w} sky", "{w} air", "{w} light"),
    "golden": ("{w} light", "{w} hour glow", "warm {w} light", "bathed in {w} light", "{w} tones"),
    "misty": ("{w}", "{w} air", "in the mist", "{w} atmosphere", "veiled in mist"),
}
FILLER = (
    "masterpiece",
    "best quality",
    "highly detailed",
    "ultra detailed",
    "uhd",
    "hdr",
    "hd",
    "sharp focus",
    "trending on artstation",
    "award winning",
    "intricate",
    "beautiful",
    "stunning",
    "breathtaking",
    "serene",
    "peaceful",
    "tranquil",
    "quiet",
    "calm",
    "scenic",
    "nature",
    "scenery",
    "wallpaper",
    "wide angle",
    "cinematic",
    "epic",
    "vast",
    "atmospheric",
    "dramatic composition",
    "rule of thirds",
    "vibrant",
    "detailed",
    "high resolution",
    "professional",
    "featured",
    "by a famous artist",
    "landscape",
    "view",
    "outdoors",
    "no people",
    "simple background",
    "centered",
    "wholesome",
    "lovely",
)
_OPENERS = ("", "a", "an image of a", "a view of a", "a beautiful", "a serene", "a wide")
_SCENES = ("landscape", "scene", "view", "vista", "countryside", "scenery")


def _say(attribute: str, rng: random.Random) -> str:
    return rng.choice(_PHRASES[attribute]).format(w=rng.choice(SYNONYMS[attribute]))


def _sentence(scene: Scene, said: dict[str, str], rng: random.Random) -> str:
    things = [said[f] for f in FLAGS if f in said]
    rng.shuffle(things)
    medium = said.get(scene.medium, "")
    head = f"{medium} {rng.choice(_OPENERS)} {rng.choice(_SCENES)}".split()
    parts = [" ".join(head)]
    if things:
        parts.append("with " + (", ".join(things[:-1]) + " and " + things[-1] if len(things) > 1 else things[0]))
    time_words = said[scene.time]
    if time_words.split()[0] not in ("at", "during", "under", "in"):
        time_words = f"at {time_words}"
    parts.insert(rng.randrange(1, len(parts) + 1), time_words)
    text = " ".join(parts)
    if scene.light in said:
        text = f"{text}, {said[scene.light]}" if rng.random() < 0.6 else f"{said[scene.light]} {text}"
    return text


def written_prompt(scene: Scene, rng: random.Random, max_tokens: int = 75) -> str:
    """A prompt for ``scene`` as people write them: a sentence, a tag list or both, attributes in synonyms and
    any order, with quality and filler tags, from a few tokens up to ``max_tokens`` (the window). It names
    every attribute of the scene (the plain style only sometimes, as "photo" or "clear sky")."""
    said = {a: _say(a, rng) for a in scene.attributes if a not in (MEDIUMS[0], LIGHTS[0]) or rng.random() < 0.2}
    form = rng.choice(("sentence", "tags", "both"))
    if form == "tags":
        parts = list(said.values())
        rng.shuffle(parts)
    else:
        parts = [_sentence(scene, said, rng)]
    budget = rng.randint(token_count(", ".join(parts)), max_tokens)
    filler = list(FILLER)
    rng.shuffle(filler)
    for tag in filler:  # filler tags until the drawn length; the attributes' own parts never go
        longer = parts + [tag]
        if token_count(", ".join(longer)) > budget:
            break
        at = rng.randrange(len(parts) + 1) if form != "sentence" else len(parts)
        parts.insert(max(at, 1) if form == "both" else at, tag)
    text = ", ".join(parts)
    if token_count(text) > max_tokens:  # a scene with everything in long phrasings: the short caption instead
        return short_caption(scene, rng)
    return text


def concise(attributes) -> str:
    """The shortest prompt naming ``attributes`` in the short captions' words: "painting of house and lake at
    sunset, misty" (the ceiling a user expects of a few vectors standing for a long prompt). Of a time, medium or
    light named twice (a prompt may contradict itself), the first named counts, as ``Scene.of`` would refuse it."""
    attributes = list(attributes)
    things = [f for f in FLAGS if f in attributes]
    time = next((t for t in attributes if t in TIMES), "noon")
    medium = next((m for m in attributes if m in MEDIUMS), None)
    text = f"{' and '.join(things)} at {time}" if things else f"landscape at {time}"
    if medium is not None:
        text = f"{'a photo' if medium == 'photo' else medium} of {text}"
    light = next((a for a in attributes if a in LIGHTS), None)
    return text if light is None else f"{text}, {light}"


def token_count(text: str) -> int:
    """The toy tokenizer's token count for ``text`` (start and end aside): a token per word and per comma."""
    return len(text.replace(",", " , ").split())


def named_attributes(text: str) -> tuple[str, ...]:
    """The attributes a text names, in the order it names them, by their words ("... dawn with pines ...")."""
    words = text.replace(",", " ").split()
    return tuple(dict.fromkeys(ATTRIBUTE_OF_WORD[w] for w in words if w in ATTRIBUTE_OF_WORD))


def prompts_vocabulary() -> list[str]:
    """Every word a written prompt may use, beyond the short captions'."""
    words: set[str] = {w for ws in SYNONYMS.values() for w in ws}
    for texts in (*_PHRASES.values(), FILLER, _OPENERS, _SCENES):
        for text in texts:
            words |= set(text.replace("{w}", "").split())
    words |= {"with", "and", "at"}
    return sorted(words - set(captions_vocabulary()))
