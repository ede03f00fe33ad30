"""Time to fidelity on the toy world: steps and seconds until a soft prompt draws what it should.

    python scripts/time_to_fidelity.py                         # images and text mode, the README's figures
    python scripts/time_to_fidelity.py --mode images --seeds 0 1 --every 10

Images mode: the 8 renders of world.UNNAMED (night, snow, house, lake: no training caption names it).
  A = this package's trainer as a user gets it (TrainConfig defaults: lr 5e-3 constant after 20 warm-up
      steps, latents encoded once, only the N vectors in AdamW);
  B = the diffusers-script-like recipe of scripts/bench_reference.py (lr 5e-4 constant, the VAE encode every
      step, AdamW over the whole embedding table, the other rows restored), 1 vector as that script's default.
Text mode: the demo's target ("image of serene landscape at sunrise with trees mountains and lake"), 3
  vectors: A = the defaults (denoiser loss, its target pool computed before step 1); B = the same trainer at
  lr 5e-4 (diffusers' script has no text mode; its learning rate is the only part of its recipe that applies).

Every --every steps the soft prompt as learned so far is drawn (fidelity.SEEDS: 4 pictures, 20 DDIM steps,
guidance 4) and F is judged against the reference attributes; drawing is not timed. Both schedules are
constant, so a run checked at step s is the run a user would stop at s. Reported per run: the F curve, the
final F, the first step from which F stays within 0.05 of the final F ("settled"), and the first step at
which F reaches the lower of the two runs' final F ("common"), each with the training process's CPU
seconds to it (set-up included: latent cache, target pool) and wall seconds. CPU seconds are the figure to
compare on a shared machine. F moves in steps of 1/(4 pictures x attributes): 1/16 here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_reference import diffusers_like_steps  # noqa: E402

from sd_softprompt.models.pipeline import load_pipeline  # noqa: E402
from sd_softprompt.models.toyworld import fidelity as fid  # noqa: E402
from sd_softprompt.models.toyworld.world import UNNAMED, mission_caption, render  # noqa: E402
from sd_softprompt.train import TrainConfig, train  # noqa: E402


class Clock:
    """CPU and wall seconds since start, less the time spent judging."""

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def now(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall

    @contextmanager
    def paused(self):
        c, w = time.process_time(), time.perf_counter()
        yield
        self.cpu += time.process_time() - c
        self.wall += time.perf_counter() - w


def judged(pipe, prompt: str, reference: list[str]) -> float:
    return fid.fidelity(fid.draw(pipe, prompt), reference)


def run_trainer(pipe, cfg: TrainConfig, reference: list[str], every: int) -> list[dict]:
    """This package's trainer; F of its vectors every `every` steps (they are live in the pipe's encoder)."""
    soft = "".join(f"[v{i + 1}]" for i in range(cfg.vectors))
    curve: list[dict] = []
    clock = Clock()

    @contextmanager
    def around_step(step: int):
        yield
        if (step + 1) % every == 0:
            cpu, wall = clock.now()
            with clock.paused():
                curve.append({"step": step + 1, "F": judged(pipe, soft, reference), "cpu_s": cpu, "wall_s": wall})

    train(cfg, pipe=pipe, around_step=around_step)
    return curve


def run_recipe(pipe, images: list[Path], steps: int, reference: list[str], every: int, seed: int) -> list[dict]:
    """The diffusers-script-like recipe; F of its placeholder every `every` steps."""
    curve: list[dict] = []
    clock = Clock()

    def probe(step: int, view, placeholder: str) -> None:
        if step % every == 0:
            cpu, wall = clock.now()
            with clock.paused():
                view.set_progress_bar_config(disable=True)
                curve.append({"step": step, "F": judged(view, placeholder, reference), "cpu_s": cpu, "wall_s": wall})

    diffusers_like_steps(pipe, images, steps, batch_size=4, resolution=64, seed=seed, probe=probe)
    return curve


def first_settled(curve: list[dict], tolerance: float = 0.05) -> dict:
    """The first checked step from which F stays within `tolerance` of the final F."""
    final = curve[-1]["F"]
    for i, point in enumerate(curve):
        if all(abs(p["F"] - final) <= tolerance + 1e-9 for p in curve[i:]):
            return point
    return curve[-1]


def first_reaching(curve: list[dict], level: float) -> dict | None:
    return next((p for p in curve if p["F"] >= level - 1e-9), None)


def summary(curves: dict[str, list[dict]]) -> dict[str, dict]:
    common = min(c[-1]["F"] for c in curves.values())
    out = {}
    for name, curve in curves.items():
        reach = first_reaching(curve, common)
        out[name] = {
            "final_F": curve[-1]["F"],
            "settled": first_settled(curve),
            "common_F": common,
            "common": reach,
            "curve": [(p["step"], p["F"]) for p in curve],
            "cpu_s_per_step": round(curve[-1]["cpu_s"] / curve[-1]["step"], 4),
        }
    return out


def images_mode(pipe, args, seed: int, folder: Path) -> dict:
    reference = sorted(UNNAMED.attributes)
    images = sorted(folder.glob("*.png"))
    cfg = TrainConfig(
        model="toyworld",
        out=str(folder.parent / f"images-{seed}.safetensors"),
        mode="images",
        images=str(folder),
        vectors=args.vectors,
        steps=args.steps_images,
        seed=seed,
        resolution=64,
        progress=False,
        checkpoint_every=0,
    )
    curves = {"this package (defaults)": run_trainer(pipe, cfg, reference, args.every)}
    if args.snr_gamma is not None:
        weighted = dataclasses.replace(cfg, snr_gamma=args.snr_gamma)
        curves[f"same, min-SNR gamma {args.snr_gamma:g}"] = run_trainer(pipe, weighted, reference, args.every)
    curves["diffusers-like recipe"] = run_recipe(pipe, images, args.recipe_steps_images, reference, args.every, seed)
    return summary(curves)


def text_mode(pipe, args, seed: int, folder: Path) -> dict:
    target = mission_caption()
    reference = list(fid.attributes_in(target))
    curves = {}
    for name, lr, steps in (
        ("this package (defaults)", TrainConfig.lr, args.steps_text),
        ("same, lr 5e-4", 5e-4, args.recipe_steps_text),
    ):
        cfg = TrainConfig(
            model="toyworld",
            out=str(folder / f"text-{seed}-{lr}.safetensors"),
            target=target,
            vectors=3,
            steps=steps,
            lr=lr,
            seed=seed,
            probe_size=64,
            progress=False,
            checkpoint_every=0,
        )
        curves[name] = run_trainer(pipe, cfg, reference, args.every_text)
    return summary(curves)


def cell(point: dict | None) -> str:
    if point is None:
        return "not reached"
    return f"{point['step']} steps, {point['cpu_s']:.0f} CPU s ({point['wall_s']:.0f} wall)"


def markdown(results: dict) -> str:
    lines = [
        "| mode | run | seed | final F | F within 0.05 of final from | F ≥ lower final F at | CPU s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, per_seed in results.items():
        for seed, runs in per_seed.items():
            for name, r in runs.items():
                lines.append(
                    f"| {mode} | {name} | {seed} | {r['final_F']:.2f} | {cell(r['settled'])} | "
                    f"{cell(r['common'])} (F {r['common_F']:.2f}) | {r['cpu_s_per_step']:.3f} |"
                )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyworld")
    p.add_argument("--mode", choices=["images", "text", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--vectors", type=int, default=1, help="images mode, both runs (diffusers' default is 1)")
    p.add_argument("--steps-images", type=int, default=200)
    p.add_argument("--recipe-steps-images", type=int, default=400)
    p.add_argument("--every", type=int, default=20, help="images mode: judge every K steps")
    p.add_argument("--steps-text", type=int, default=100)
    p.add_argument("--recipe-steps-text", type=int, default=300)
    p.add_argument("--every-text", type=int, default=10)
    p.add_argument("--snr-gamma", type=float, help="images mode: also the defaults with min-SNR weighting")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, device="cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    modes = ["images", "text"] if args.mode == "both" else [args.mode]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pictures"
        folder.mkdir()
        for i in range(8):  # the renders toyworld_images_mode.py trains on
            render(UNNAMED, 100_000 + i).save(folder / f"{i}.png")
        for mode in modes:
            run = images_mode if mode == "images" else text_mode
            results[mode] = {
                seed: run(pipe, args, seed, folder if mode == "images" else Path(tmp)) for seed in args.seeds
            }
            print(json.dumps(results[mode], indent=1, default=str), flush=True)
    table = markdown(results)
    print(table)
    for mode, per_seed in results.items():
        for name in next(iter(per_seed.values())):
            cpu = [r[name]["settled"]["cpu_s"] for r in per_seed.values()]
            print(f"{mode} / {name}: settled after {statistics.mean(cpu):.0f} CPU s (mean of {len(cpu)} seeds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
