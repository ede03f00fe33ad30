"""Images mode on the toy world: learn the combination no training caption names from 8 renders of it.

    python scripts/toyworld_images_mode.py                      # night + snow + house + lake, 2 vectors
    python scripts/toyworld_images_mode.py --steps 300 --lr 1e-2 --seeds 0 1 2

Renders 8 pictures of the scene, trains a soft prompt on them (images mode, the denoiser's own loss), and
prints F against the scene's attributes for: the soft prompt, the scene named in words (a caption the model
never saw in training), and the empty prompt. Mean over training seeds; pictures at fidelity.SEEDS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_softprompt.inject.loader import load_soft_prompt, unload_soft_prompt  # noqa: E402
from sd_softprompt.models.pipeline import load_pipeline  # noqa: E402
from sd_softprompt.models.toyworld import fidelity as fid  # noqa: E402
from sd_softprompt.models.toyworld.world import UNNAMED, Scene, render  # noqa: E402
from sd_softprompt.train import TrainConfig, train  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default=",".join(sorted(UNNAMED.attributes)), help="attributes, comma-separated")
    p.add_argument("--vectors", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--model", default="toyworld", help="the toy world, or a folder train_toyworld.py wrote")
    args = p.parse_args(argv)
    try:
        scene = Scene.parse(args.scene)
    except ValueError as error:
        p.exit(2, f"--scene {args.scene}: {error}\n")
    torch.set_num_threads(1)
    reference = sorted(scene.attributes)
    words = " and ".join(sorted(scene.flags)) + f" at {scene.time}"
    pipe = load_pipeline(args.model, device="cpu", progress=False)
    result = {"scene": scene.key(), "words": words, "args": vars(args)}
    result["F_words"] = fid.fidelity(fid.draw(pipe, words), reference)
    result["F_empty"] = fid.fidelity(fid.draw(pipe, ""), reference)
    soft = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pictures"
        folder.mkdir()
        for i in range(8):
            render(scene, 100_000 + i).save(folder / f"{i}.png")
        for seed in args.seeds:
            cfg = TrainConfig(
                model=args.model,
                out=str(Path(tmp) / f"soft-{seed}.safetensors"),
                mode="images",
                images=str(folder),
                vectors=args.vectors,
                steps=args.steps,
                lr=args.lr,
                batch_size=args.batch_size,
                seed=seed,
                resolution=64,
                progress=False,
                checkpoint_every=0,
            )
            tokens = load_soft_prompt(pipe, train(cfg, pipe=pipe).soft_prompt)
            soft.append(fid.fidelity(fid.draw(pipe, "".join(tokens)), reference))
            unload_soft_prompt(pipe, tokens)
    result["F_soft_per_seed"] = soft
    result["F_soft"] = statistics.mean(soft)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
