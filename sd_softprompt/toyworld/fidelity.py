"""Prompt fidelity in pictures: F(prompt | reference attributes) on the toy world's pipeline.

F = the share of the reference attributes the judge finds, averaged over K pictures drawn with fixed
seeds, steps and guidance. For a text-mode soft prompt the table compares it with the hard prompt it
stands for, the hard prompt's first N words and the empty prompt, alone and composed with a context
attribute ("with snow": then snow counts too).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from ..scoring import Reference
from .judge import JudgeScorer
from .world import ATTRIBUTES

SEEDS = (0, 1, 2, 3)
STEPS = 20
GUIDANCE = 4.0
SIZE = 64
COMPOSE = "with snow"


def attributes_in(text: str) -> tuple[str, ...]:
    """The toy-world attributes a text names, in the order it names them ("... sunrise with trees ...")."""
    words = text.replace(",", " ").split()
    return tuple(dict.fromkeys(w for w in words if w in ATTRIBUTES))


def draw(pipe, prompt: str, seeds: Sequence[int] = SEEDS, steps: int = STEPS, guidance: float = GUIDANCE):
    """K pictures of ``prompt``, one per seed, in one batched call (a generator per seed)."""
    from ..generate import generate_batch

    return generate_batch(pipe, prompt, list(seeds), steps, guidance, SIZE, SIZE)


def fidelity(images: Sequence[Image.Image], attributes: Sequence[str]) -> float:
    return JudgeScorer().score(images, Reference(attributes=tuple(attributes)))["F"]


def fidelity_table(
    pipe,
    soft: str,
    target: str,
    words: int,
    *,
    compose: str = COMPOSE,
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    pictures: dict[str, list[Image.Image]] | None = None,
) -> dict[str, dict[str, float]]:
    """F of the soft prompt, the hard prompt, its first ``words`` words and the empty prompt, each alone
    (reference: the target's attributes) and composed with ``compose`` (reference: those + compose's).
    ``pictures``, if given, receives what was judged: prompt -> one picture per seed."""
    reference = attributes_in(target)
    composed_reference = tuple(dict.fromkeys(reference + attributes_in(compose)))
    rows = {"soft": soft, "hard": target, f"first_{words}": " ".join(target.split()[:words]), "empty": ""}
    drawn = {} if pictures is None else pictures
    table: dict[str, dict[str, float]] = {}
    for name, prompt in rows.items():
        composed = f"{prompt} {compose}".strip()
        for text in (prompt, composed):
            drawn[text] = draw(pipe, text, seeds, steps, guidance)
        table[name] = {
            "alone": round(fidelity(drawn[prompt], reference), 4),
            "composed": round(fidelity(drawn[composed], composed_reference), 4),
        }
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'prompt':<10} {'F alone':>8} {'F composed':>11}"]
    lines += [f"{name:<10} {row['alone']:>8.2f} {row['composed']:>11.2f}" for name, row in table.items()]
    return "\n".join(lines)
