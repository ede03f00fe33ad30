"""Prompt fidelity in pictures: F(prompt | reference attributes) on the toy world's pipeline.

F = the share of the reference attributes the judge finds, averaged over K pictures drawn with fixed
seeds, steps and guidance. For a text-mode soft prompt the table compares it with the hard prompt it
stands for, the hard prompt's first N words and the empty prompt, alone and composed with a context
attribute ("with snow": then snow counts too). A hard prompt longer than the window is drawn in chunks, as
A1111 and ComfyUI encode it, and the table adds "truncated": what the pipeline alone draws from it.

A negative prompt (``negative_table``) is drawn under held-out positives that leave the model room
(world.NEGATIVE_EVAL_POSITIVES): how much of what it names stays out of the pictures (avoidance), and how
much of what the positive names stays in (F).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from ...render.scoring import Reference
from .judge import JudgeScorer
from .world import FLAGS, NEGATIVE_EVAL_POSITIVES, TIMES, named_attributes

SEEDS = (0, 1, 2, 3)
STEPS = 20
GUIDANCE = 4.0
SIZE = 64
COMPOSE = "with snow"


def attributes_in(text: str) -> tuple[str, ...]:
    """The toy-world times and flags a text names, in the order it names them, by their words and synonyms
    ("... dawn with pines ..." -> sunrise, trees: world.named_attributes), which the shipped model reads. Styles
    are left out: the shipped model was trained on written prompts without them (docs/toyworld.md)."""
    return tuple(a for a in named_attributes(text) if a in TIMES + FLAGS)


def draw(
    pipe,
    prompt: str,
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    negative: str = "",
):
    """K pictures of ``prompt`` (with ``negative`` as the negative prompt), one per seed, in one batched call
    (a generator per seed). A prompt or negative longer than the text encoder's window is encoded in 75-token
    chunks, as A1111 and ComfyUI do (the pipeline alone would cut it: ``draw_cut`` draws that)."""
    if not (is_long(pipe, prompt) or is_long(pipe, negative)):
        return draw_cut(pipe, prompt, seeds, steps, guidance, negative)
    import torch

    from ...families import detect_family

    family = detect_family(pipe)
    with torch.inference_mode():
        states = family.encode_long(pipe, [prompt])["states"]
        unconditional = family.encode_long(pipe, [negative])["states"]
        empty = family.encode_long(pipe, [""])["states"]
        # the shorter side gets empty chunks, as A1111 pads it, so both have one length
        chunks = max(states.shape[1], unconditional.shape[1])

        def padded(x):
            return torch.cat([x, empty.repeat(1, (chunks - x.shape[1]) // empty.shape[1], 1)], dim=1)

        return draw_states(pipe, padded(states), padded(unconditional), seeds, steps, guidance)


def draw_states(
    pipe,
    states,
    unconditional,
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
):
    """K pictures, one per seed, from given text-encoder states [1, L, d] of the prompt and of the negative
    (one length): the pipeline's own sampler, a generator per seed, as ``draw`` seeds it."""
    import torch

    return pipe(
        prompt_embeds=states,
        negative_prompt_embeds=unconditional,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=SIZE,
        width=SIZE,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
    ).images


def draw_cut(
    pipe,
    prompt: str,
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    negative: str = "",
):
    """K pictures of ``prompt`` as the pipeline draws it (prompt and negative cut at the window when longer)."""
    from ...render.generate import generate_batch

    return generate_batch(pipe, prompt, list(seeds), steps, guidance, SIZE, SIZE, negative_prompt=negative or None)


def is_long(pipe, prompt: str) -> bool:
    """Whether ``prompt`` has more tokens than the pipeline's text encoder window (start and end aside)."""
    return len(pipe.tokenizer(prompt).input_ids) > pipe.tokenizer.model_max_length


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
    first = " ".join(target.split()[:words])
    # a target longer than the window: "hard" is the whole prompt in chunks (A1111, ComfyUI), "truncated"
    # what the pipeline draws from it (diffusers cuts it at the window)
    rows = {"soft": (soft, draw), "hard": (target, draw)}
    if is_long(pipe, target):
        rows["truncated"] = (target, draw_cut)
    rows |= {f"first_{words}": (first, draw), "empty": ("", draw)}
    drawn = {} if pictures is None else pictures
    table: dict[str, dict[str, float]] = {}
    for name, (prompt, drawer) in rows.items():
        composed = f"{prompt} {compose}".strip()
        alone = drawer(pipe, prompt, seeds, steps, guidance)
        with_context = drawer(pipe, composed, seeds, steps, guidance)
        for text, pictures_of_text in ((prompt, alone), (composed, with_context)):
            if drawer is draw and not is_long(pipe, text):  # what a grid of this prompt would show
                drawn[text] = pictures_of_text
        table[name] = {
            "alone": round(fidelity(alone, reference), 4),
            "composed": round(fidelity(with_context, composed_reference), 4),
        }
    return table


def negative_table(
    pipe,
    soft: str,
    target: str,
    words: int,
    *,
    positives: Sequence[str] = NEGATIVE_EVAL_POSITIVES,
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
) -> dict[str, dict[str, float | None]]:
    """A negative prompt in pictures: each held-out positive drawn with the soft negative, the hard one (in
    chunks when longer than the window; then "truncated" too, cut at it), its first ``words`` words and the
    empty negative. Per row, averaged over the positives (each its K pictures):

    - avoidance: 1 - the share of the negative's attributes (those the positive does not name) the judge finds;
    - F: the share of the positive's own attributes found (None when no positive names any): that the
      negative does not remove what was asked.
    """
    unwanted = attributes_in(target)
    first = " ".join(target.split()[:words])
    rows = {"soft": (soft, draw), "hard": (target, draw)}
    if is_long(pipe, target):
        rows["truncated"] = (target, draw_cut)
    rows |= {f"first_{words}": (first, draw), "empty": ("", draw)}
    table: dict[str, dict[str, float | None]] = {}
    for name, (negative, drawer) in rows.items():
        found, wanted = [], []
        for positive in positives:
            own = attributes_in(positive)
            avoid = [a for a in unwanted if a not in own]
            pictures = drawer(pipe, positive, seeds, steps, guidance, negative)
            if avoid:
                found.append(fidelity(pictures, avoid))
            if own:
                wanted.append(fidelity(pictures, own))
        table[name] = {
            "avoidance": round(1 - sum(found) / len(found), 4) if found else None,
            "F": round(sum(wanted) / len(wanted), 4) if wanted else None,
        }
    return table


def format_negative_table(table: dict[str, dict[str, float | None]]) -> str:
    def cell(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}"

    lines = [f"{'negative':<10} {'avoidance':>9} {'F positive':>10}"]
    lines += [f"{name:<10} {cell(row['avoidance'], 9)} {cell(row['F'], 10)}" for name, row in table.items()]
    return "\n".join(lines)


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'prompt':<10} {'F alone':>8} {'F composed':>11}"]
    lines += [f"{name:<10} {row['alone']:>8.2f} {row['composed']:>11.2f}" for name, row in table.items()]
    return "\n".join(lines)
