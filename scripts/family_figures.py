"""Text mode on every family's tiny pipeline: D(soft) against the first-N-words and empty baselines.

    python scripts/family_figures.py                      # every family, the docs/families.md table
    python scripts/family_figures.py --families sdxl sana --steps 60

The settings of tests/families/test_families.py::test_text_mode_beats_baselines (3 vectors, the default
denoiser loss, probe 64 px, 6 noisy latents; PixArt-Sigma's tiny DiT barely reads its text and gets lr 2e-2).
The tiny pipelines have random weights: the figures show that training reaches what each family's
conditioning lets through, not what a real checkpoint draws. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sd_softprompt.models import tiny
from sd_softprompt.train import TrainConfig, train

HARD = "image of serene landscape at sunrise with trees mountains and lake"
LR = {"pixart_sigma": 2e-2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(tiny.BUILDERS), choices=list(tiny.BUILDERS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| family | D(soft) / D(first N words), alone / composed | D(soft) / D(empty), alone / composed | s |")
    print("|---|---|---|---|")
    for family in args.families:
        pipe = tiny.BUILDERS[family](seed=0)
        with tempfile.TemporaryDirectory() as folder:
            cfg = TrainConfig(
                model=f"tiny-{family}",
                out=str(Path(folder) / "s.safetensors"),
                target=HARD,
                vectors=3,
                steps=args.steps,
                lr=LR.get(family, 5e-3),
                progress=False,
                probe_size=64,
                eval_samples=6,
                checkpoint_every=0,
            )
            t0 = time.process_time()
            d = train(cfg, pipe=pipe).metrics["distance"]
            cpu = time.process_time() - t0
        first = " / ".join(f"{d[w]['ratio_to_first_n_words']:.3f}" for w in ("alone", "composed"))
        empty = " / ".join(f"{d[w]['ratio_to_empty']:.3f}" for w in ("alone", "composed"))
        print(f"| `{family}` | {first} | {empty} | {cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
