"""Compare the text-mode loss designs by denoiser-space distance D and, on the toy world, by pictures (F).

For each family and loss design, train a soft prompt on a model (default: the built-in tiny ones, random
weights, CPU) and print D(soft)/D(first N words) and D(soft)/D(empty), alone and composed with held-out
context words. On the toy world (--model toyworld) it also prints F(soft) and F(soft) - F(hard), alone and
composed with "with snow", and ranks the losses by F. The README's figures come from this script.

    python scripts/compare_losses.py                              # tiny sd1/sdxl/flux, 3 seeds
    python scripts/compare_losses.py --model toyworld --seeds 0 1 --steps 60   # D and F in pictures
    python scripts/compare_losses.py --model runwayml/stable-diffusion-v1-5 --steps 400 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from sd_softprompt.models import tiny
from sd_softprompt.train import TrainConfig, train
from sd_softprompt.train.losses import LOSSES

HARD = "image of serene landscape at sunrise with trees mountains and lake"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a diffusers pipeline (hub id or folder); default: the tiny ones")
    p.add_argument("--families", nargs="+", default=["sd1", "sdxl", "flux"], help="tiny families to use")
    p.add_argument("--losses", nargs="+", default=list(LOSSES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--vectors", type=int, default=3)
    p.add_argument("--target", default=HARD)
    p.add_argument("--device", default=None)
    p.add_argument("--probe-size", type=int, default=None)
    p.add_argument("--json", help="also write all figures here")
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = (
            {"model": args.model} if args.model else {f: str(tiny.save_tiny(f, Path(tmp) / f)) for f in args.families}
        )
        for name, model in models.items():
            for loss in args.losses:
                ratios: dict[str, list[float]] = {}
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    cfg = TrainConfig(
                        model=model,
                        out=str(Path(tmp) / f"{name}-{loss}-{seed}.safetensors"),
                        target=args.target,
                        vectors=args.vectors,
                        steps=args.steps,
                        loss=loss,
                        seed=seed,
                        progress=False,
                        checkpoint_every=0,
                        probe_size=args.probe_size or (64 if not args.model else None),
                        device=args.device,
                    )
                    metrics = train(cfg).metrics
                    d = metrics["distance"]
                    for where in ("alone", "composed"):
                        for r in ("ratio_to_first_n_words", "ratio_to_empty"):
                            ratios.setdefault(f"{where}/{r}", []).append(d[where][r])
                        if "fidelity" in metrics:  # the toy world: F in pictures too
                            f = metrics["fidelity"]
                            ratios.setdefault(f"{where}/F_soft", []).append(f["soft"][where])
                            ratios.setdefault(f"{where}/F_soft_minus_hard", []).append(
                                f["soft"][where] - f["hard"][where]
                            )
                row = {"model": name, "loss": loss, **{k: statistics.mean(v) for k, v in ratios.items()}}
                rows.append(row)
                print(
                    f"{name:6s} {loss:9s} alone: {row['alone/ratio_to_first_n_words']:.3f} / {row['alone/ratio_to_empty']:.3f}"
                    f"   composed: {row['composed/ratio_to_first_n_words']:.3f} / {row['composed/ratio_to_empty']:.3f}"
                    f"   (D(soft)/D(first N words) / D(soft)/D(empty), mean of {len(args.seeds)} seeds)",
                    flush=True,
                )
                if "alone/F_soft" in row:
                    print(
                        f"{'':6s} {'':9s} F(soft) alone {row['alone/F_soft']:.3f} (vs hard {row['alone/F_soft_minus_hard']:+.3f})"
                        f"   composed {row['composed/F_soft']:.3f} (vs hard {row['composed/F_soft_minus_hard']:+.3f})",
                        flush=True,
                    )
    ranked = sorted((r for r in rows if "alone/F_soft" in r), key=lambda r: -(r["alone/F_soft"] + r["composed/F_soft"]))
    if ranked:
        print(
            "by F (alone + composed): "
            + ", ".join(f"{r['loss']} {r['alone/F_soft'] + r['composed/F_soft']:.3f}" for r in ranked)
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
