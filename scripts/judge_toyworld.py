"""The toy judge's figures: accuracy on held-out renders, and agreement with the caption on the toy
pipeline's own generations: from captions of scenes it never saw in training (held out: compositions of
attributes it learned apart), and, for comparison, of scenes it was trained on.

    python scripts/judge_toyworld.py                      # both, with the shipped model
    python scripts/judge_toyworld.py --renders-only       # the first figure only (no model needed)

Decisions per picture: the time of day (one of four) and each of the six flags (shown or not); a
figure is the share of decisions the judge gets right, per attribute and over all.
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
from sd_softprompt.models.toyworld.world import FLAGS, HELD_OUT, UNNAMED, Scene, caption, random_scene, render


def decisions(truth: Scene, seen: Scene) -> dict[str, bool]:
    out = {"time": truth.time == seen.time}
    out.update({flag: (flag in truth.flags) == (flag in seen.flags) for flag in FLAGS})
    return out


def summarise(rows: list[dict[str, bool]]) -> dict[str, float]:
    keys = rows[0].keys()
    per = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    per["all decisions"] = round(float(np.mean([v for r in rows for v in r.values()])), 4)
    per["whole scene"] = round(float(np.mean([all(r.values()) for r in rows])), 4)
    return per


def on_renders(n: int, seed: int) -> dict[str, float]:
    """Held-out renders (seeds no training picture uses), half of them blurred, shifted and noised."""
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    rows = []
    for i in range(n):
        scene = random_scene(rng)
        picture = render(scene, 10**9 + i)
        if i % 2:
            picture = augment(picture, noise)
        rows.append(decisions(scene, judge(picture)))
    return summarise(rows)


def on_generations(pipe, scenes, captions_per_scene: int, seeds: list[int], steps: int, guidance: float):
    """The pipeline's pictures for captions of ``scenes``: the judge's reading against the caption."""
    rng = random.Random(0)
    rows = []
    for scene in scenes:
        for _ in range(captions_per_scene):
            text = caption(scene, rng)
            for picture in fid.draw(pipe, text, seeds, steps, guidance):
                rows.append(decisions(scene, judge(picture)))
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
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {"renders": {"pictures": args.renders, "accuracy": on_renders(args.renders, seed=1)}}
    if not args.renders_only:
        from sd_softprompt.models.pipeline import load_pipeline

        pipe = load_pipeline(args.model, device="cpu", progress=False)
        settings = {"steps": args.steps, "guidance": args.guidance, "seeds": args.seeds}
        # held-out scenes: compositions the model never saw; trained scenes: new pictures of seen ones
        for name, scenes in (("held_out_scenes", HELD_OUT), ("trained_scenes", trained_scenes(len(HELD_OUT)))):
            agreement, count = on_generations(pipe, scenes, args.captions, args.seeds, args.steps, args.guidance)
            result[name] = {"scenes": len(scenes), "pictures": count, **settings, "agreement": agreement}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
