"""The toy judge's figures: accuracy on held-out renders, and agreement with the caption on the toy
pipeline's own generations: from captions of scenes it never saw in training (held out: compositions of
attributes it learned apart), and, for comparison, of scenes it was trained on.

    python scripts/judge_toyworld.py                      # both, with the shipped model
    python scripts/judge_toyworld.py --renders-only       # the first figure only (no model needed)

Decisions per picture: the time of day (one of four) and each of the six flags (shown or not), and, where the
scenes have styles, the medium and the light (one of three each); a figure is the share of decisions the judge
gets right, per attribute and over all ("all decisions" and "whole scene" count the first seven only, as
before styles existed; "styles" both style decisions).

Generations, three sets: held-out scenes from the short captions in the plain look (the first model's figure),
trained scenes the same way, and held-out scenes in random styles from prompts written as people write them
(world.written_prompt: synonyms, filler, up to the window).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.models.toyworld import fidelity as fid  # noqa: E402
from sd_softprompt.models.toyworld.judge import augment, judge  # noqa: E402
from sd_softprompt.models.toyworld.world import (  # noqa: E402
    FLAGS,
    HELD_OUT,
    UNNAMED,
    Scene,
    caption,
    random_scene,
    render,
    written_prompt,
)

STYLE_DECISIONS = ("medium", "light")


def decisions(truth: Scene, seen: Scene, styles: bool = False) -> dict[str, bool]:
    out = {"time": truth.time == seen.time}
    out.update({flag: (flag in truth.flags) == (flag in seen.flags) for flag in FLAGS})
    if styles:
        out.update({"medium": truth.medium == seen.medium, "light": truth.light == seen.light})
    return out


def summarise(rows: list[dict[str, bool]]) -> dict[str, float]:
    keys = rows[0].keys()
    per = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    first = [[v for k, v in r.items() if k not in STYLE_DECISIONS] for r in rows]
    per["all decisions"] = round(float(np.mean([v for r in first for v in r])), 4)
    per["whole scene"] = round(float(np.mean([all(r) for r in first])), 4)
    if STYLE_DECISIONS[0] in keys:
        per["styles"] = round(float(np.mean([r[k] for r in rows for k in STYLE_DECISIONS])), 4)
        per["whole scene with styles"] = round(float(np.mean([all(r.values()) for r in rows])), 4)
    return per


def on_renders(n: int, seed: int, styled: float = 0.0) -> dict[str, float]:
    """Held-out renders (seeds no training picture uses), half of them blurred, shifted and noised."""
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    rows = []
    for i in range(n):
        scene = random_scene(rng, styled=styled)
        picture = render(scene, 10**9 + i)
        if i % 2:
            picture = augment(picture, noise)
        rows.append(decisions(scene, judge(picture), styles=styled > 0))
    return summarise(rows)


def on_generations(
    pipe,
    scenes,
    captions_per_scene: int,
    seeds: list[int],
    steps: int,
    guidance: float,
    styled: float = 0.0,
    written: bool = False,
):
    """The pipeline's pictures for captions of ``scenes``: the judge's reading against the caption. With
    ``styled``, each caption's scene takes a random style and the caption is a written prompt; with ``written``
    alone, the scene keeps the plain look and the caption is a written prompt."""
    rng = random.Random(0)
    rows = []
    for scene in scenes:
        for _ in range(captions_per_scene):
            if written and not styled:
                truth, text = scene, written_prompt(scene, rng)
            elif styled:
                styled_scene = random_scene(rng, styled=styled)
                truth = Scene(scene.time, scene.flags, styled_scene.medium, styled_scene.light)
                text = written_prompt(truth, rng)
            else:
                truth, text = scene, caption(scene, rng)
            for picture in fid.draw(pipe, text, seeds, steps, guidance):
                rows.append(decisions(truth, judge(picture), styles=bool(styled)))
    return summarise(rows), len(rows)


def trained_scenes(n: int) -> list[Scene]:
    """n scenes the model was trained on (not held out, not the unnamed combination), for comparison."""
    exclude = frozenset(HELD_OUT) | {UNNAMED}
    rng = random.Random(11)
    out: list[Scene] = []
    while len(out) < n:
        scene = random_scene(rng, exclude)
        if scene not in out and len(scene.flags) >= 2:
            out.append(scene)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument("--renders", type=int, default=2000)
    p.add_argument("--captions", type=int, default=2, help="captions per held-out scene")
    p.add_argument("--seeds", type=int, nargs="+", default=list(fid.SEEDS))
    p.add_argument("--steps", type=int, default=fid.STEPS)
    p.add_argument("--guidance", type=float, default=fid.GUIDANCE)
    p.add_argument("--renders-only", action="store_true")
    p.add_argument("--styled", type=float, default=0.3, help="chance of a style per scene in the styled sets")
    p.add_argument("--no-styles", action="store_true", help="the first model's sets only (plain renders, captions)")
    p.add_argument(
        "--written",
        action="store_true",
        help="add held-out scenes in the plain look from written prompts (a model trained on them without styles)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {"renders": {"pictures": args.renders, "accuracy": on_renders(args.renders, seed=1)}}
    if not args.no_styles:
        styled = on_renders(args.renders, seed=2, styled=args.styled)
        result["styled_renders"] = {"pictures": args.renders, "styled": args.styled, "accuracy": styled}
    if not args.renders_only:
        from sd_softprompt.models.pipeline import load_pipeline

        pipe = load_pipeline(args.model, device="cpu", progress=False)
        settings = {"steps": args.steps, "guidance": args.guidance, "seeds": args.seeds}
        # held-out scenes: compositions the model never saw; trained scenes: new pictures of seen ones
        sets = [
            ("held_out_scenes", HELD_OUT, 0.0, False),
            ("trained_scenes", trained_scenes(len(HELD_OUT)), 0.0, False),
        ]
        if args.written:
            sets.append(("held_out_scenes_written", HELD_OUT, 0.0, True))
        if not args.no_styles:
            sets.append(("held_out_scenes_styled_written", HELD_OUT, args.styled, True))
        for name, scenes, styled, written in sets:
            agreement, count = on_generations(
                pipe, scenes, args.captions, args.seeds, args.steps, args.guidance, styled, written
            )
            result[name] = {"scenes": len(scenes), "pictures": count, **settings, "agreement": agreement}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
