"""Figures for long-prompt compression and negative soft prompts, on the tiny random-weight pipelines.

Long: the ~150-token samples/long_prompt.txt distilled into N vectors; D(soft) against the whole prompt
encoded in 75-token chunks (A1111 / ComfyUI), next to the prompt as the pipeline encodes it (cut to the
window), its first N words and "". Negative: samples/negative_prompt.txt distilled with --role negative;
the guided measure D_guided on held-out positive prompts, soft vs the hard negative cut to the window, its
first N words, and no negative (Flux takes no negative prompt). Mean over seeds; prints a Markdown table.

    OMP_NUM_THREADS=1 python scripts/measure_long_negative.py --seeds 0 1 2 --steps 150 --vectors 8

The tiny pipelines have random weights: these figures show the method works end to end and how the
baselines compare on these models, not what a real checkpoint will give.

--not-ours: the long prompt only, on pipelines whose configs this project did not choose (tiny.NOT_OURS:
diffusers' own fast-test SD and SDXL), for each --targets file (default samples/long_prompt.txt and
samples/long_prompt_repeating.txt, whose chunks repeat one another, so that the cut prompt is already close);
--vectors takes auto.

    OMP_NUM_THREADS=1 python scripts/measure_long_negative.py --not-ours --vectors auto --steps 300 --seeds 0 1 2

--toyworld: the negative in pictures instead, on a trained model (--model, default the shipped toy world):
samples/toyworld_negative_prompt.txt distilled with --role negative per seed; each held-out toy positive
(world.NEGATIVE_EVAL_POSITIVES) drawn with the soft negative, the hard one, its first N words and none
(fidelity.SEEDS, STEPS, GUIDANCE); avoidance of the negative's attributes and F of the positive's own.

    OMP_NUM_THREADS=1 python scripts/measure_long_negative.py --toyworld --seeds 0 1 2 --steps 100 --vectors 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from sd_softprompt.families import detect_family
from sd_softprompt.models import tiny
from sd_softprompt.train import TrainConfig, train
from sd_softprompt.train.config import vector_count
from sd_softprompt.train.measure import EVAL_POSITIVES

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def run(
    family: str, role: str, seed: int, steps: int, vectors, folder: Path, builders=tiny.BUILDERS, target=None, **kw
) -> dict:
    pipe = builders[family](seed=seed)
    target = target or SAMPLES / ("negative_prompt.txt" if role == "negative" else "long_prompt.txt")
    cfg = TrainConfig(
        model=f"tiny-{family}",
        out=str(folder / f"{family}-{role}-{seed}-{Path(target).stem}.safetensors"),
        target_file=str(target),
        role=role,
        vectors=vectors,
        steps=steps,
        seed=seed,
        progress=False,
        probe_size=64,
        eval_samples=8,
        checkpoint_every=0,
        **kw,
    )
    return train(cfg, pipe=pipe).metrics


def mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f}"


def toyworld(model: str, seeds: list[int], steps: int, vectors: int, folder: Path) -> dict:
    """The toy negative trained once per seed on ``model``; its metrics (with the table in pictures) by seed."""
    from sd_softprompt.models.pipeline import load_pipeline

    pipe = load_pipeline(model, device="cpu", progress=False)
    runs = {}
    for seed in seeds:
        cfg = TrainConfig(
            model=model,
            out=str(folder / f"toyworld-negative-{seed}.safetensors"),
            target_file=str(SAMPLES / "toyworld_negative_prompt.txt"),
            role="negative",
            vectors=vectors,
            steps=steps,
            seed=seed,
            progress=False,
            probe_size=64,
            checkpoint_every=0,
        )
        runs[seed] = train(cfg, pipe=pipe).metrics
    return runs


def print_toyworld(runs: dict, args) -> None:
    from sd_softprompt.models.toyworld import fidelity as fid
    from sd_softprompt.models.toyworld.world import NEGATIVE_EVAL_POSITIVES

    target = " ".join((SAMPLES / "toyworld_negative_prompt.txt").read_text().split())
    seeds = list(runs)
    print(
        f"Toy-world negative {target!r} ({args.vectors} vectors, {args.steps} steps, training seeds {seeds}) on"
        f" {args.model}; held-out positives {list(NEGATIVE_EVAL_POSITIVES)}, picture seeds {list(fid.SEEDS)},"
        f" {fid.STEPS} DDIM steps, guidance {fid.GUIDANCE}:\n"
    )
    print("| negative | avoidance | F positive | per training seed (avoidance / F) |")
    print("|---|---|---|---|")
    for name in next(iter(runs.values()))["negative_fidelity"]:
        rows = [m["negative_fidelity"][name] for m in runs.values()]
        cells = [mean([r[c] for r in rows]) if rows[0][c] is not None else "-" for c in ("avoidance", "F")]
        each = ", ".join(f"{r['avoidance']:.3f} / {r['F']:.3f}" for r in rows)
        print(f"| {name} | " + " | ".join(cells) + f" | {each} |")
    ratios = [m["guided"]["soft_ratio_to_empty"] for m in runs.values()]
    print(f"\nGuided measure on the same positives, D_guided(soft) / D_guided(no negative): {mean(ratios)}")


def not_ours(args, folder: Path) -> dict:
    """Long targets on tiny.NOT_OURS: D(soft) / D(baseline) per family and target, mean and range over seeds."""
    runs = {}
    print(
        f"{args.steps} steps, --vectors {args.vectors}, --schedule {args.schedule}, --batch-size {args.batch_size}, "
        f"--pool {args.pool}, seeds {args.seeds}; "
        "D(soft) / D(baseline), mean (min-max):\n"
    )
    print("| pipeline | target | tokens | N | where | / truncated | / first N words | / empty |")
    print("|---|---|---|---|---|---|---|---|")
    for family in [f for f in tiny.NOT_OURS if f in args.families]:
        for target in args.targets:
            ms = [
                run(
                    family,
                    "positive",
                    s,
                    args.steps,
                    args.vectors,
                    folder,
                    tiny.NOT_OURS,
                    target,
                    schedule=args.schedule,
                    batch_size=args.batch_size,
                    pool=args.pool,
                )
                for s in args.seeds
            ]
            runs[f"{family}/{Path(target).name}"] = ms
            n = ms[0]["config"]["vectors"]
            for where in ("alone", "composed"):
                cells = []
                for b in ("truncated", "first_n_words", "empty"):
                    r = [m["distance"][where][f"ratio_to_{b}"] for m in ms]
                    cells.append(f"{statistics.fmean(r):.3f} ({min(r):.3f}-{max(r):.3f})")
                tokens = ms[0]["distance"]["target_tokens"]
                print(
                    f"| {family} (diffusers' tests) | {Path(target).name} | {tokens} | {n} | {where} | "
                    + " | ".join(cells)
                    + " |",
                    flush=True,
                )
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["sd1", "sd2", "sdxl", "flux"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--vectors", type=vector_count, default=8, help="a number, or auto (the trainer's rule)")
    p.add_argument("--not-ours", action="store_true", help="long prompts on diffusers' fast-test SD and SDXL")
    p.add_argument("--targets", nargs="+", default=[SAMPLES / "long_prompt.txt", SAMPLES / "long_prompt_repeating.txt"])
    p.add_argument("--schedule", default="constant", help="the trainer's --schedule (constant or cosine)")
    p.add_argument("--batch-size", type=int, default=4, help="with --not-ours: the trainer's --batch-size")
    p.add_argument(
        "--pool", choices=("noise", "sampler"), default="noise", help="with --not-ours: the trainer's --pool"
    )
    p.add_argument("--json", help="also write every run's figures here")
    p.add_argument("--toyworld", action="store_true", help="the negative in pictures on a trained toy-world model")
    p.add_argument("--model", default="toyworld", help="with --toyworld: the model (a folder train_toyworld.py wrote)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.toyworld:
        with tempfile.TemporaryDirectory() as tmp:
            runs = toyworld(args.model, args.seeds, args.steps, args.vectors, Path(tmp))
        print_toyworld(runs, args)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
        return 0
    if args.not_ours:
        with tempfile.TemporaryDirectory() as tmp:
            runs = not_ours(args, Path(tmp))
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
        return 0
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for role in ("positive", "negative"):
                pipe = tiny.BUILDERS[family]()
                if role == "negative" and detect_family(pipe).no_negative(pipe, 1) is None:
                    continue  # guidance-distilled (Flux): no negative prompt, train refuses it
                runs[f"{family}/{role}"] = [
                    run(family, role, s, args.steps, args.vectors, Path(tmp)) for s in args.seeds
                ]
    print(f"Long prompt ({args.vectors} vectors, {args.steps} steps, seeds {args.seeds}); D(soft) / D(baseline):\n")
    print("| family | target tokens | where | / truncated | / first N words | / empty |")
    print("|---|---|---|---|---|---|")
    for key, ms in runs.items():
        family, role = key.split("/")
        if role != "positive":
            continue
        for where in ("alone", "composed"):
            cells = [
                mean([m["distance"][where][f"ratio_to_{b}"] for m in ms])
                for b in ("truncated", "first_n_words", "empty")
            ]
            print(f"| {family} | {ms[0]['distance']['target_tokens']} | {where} | " + " | ".join(cells) + " |")
    print(
        f"\nNegative prompt, guided measure on {len(EVAL_POSITIVES)} held-out positives x 10 sampler steps"
        f" ({args.vectors} vectors, {args.steps} steps); D_guided(x) / D_guided(no negative):\n"
    )
    print("| family | negative tokens | soft | truncated | first N words |")
    print("|---|---|---|---|---|")
    for key, ms in runs.items():
        family, role = key.split("/")
        if role != "negative":
            continue
        cells = [
            mean([m["guided"].get(f"{c}_ratio_to_empty", float("nan")) for m in ms])
            for c in ("soft", "truncated", "first_n_words")
        ]
        print(f"| {family} | {ms[0]['distance']['target_tokens']} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
