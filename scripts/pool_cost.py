"""The cost of the text-mode denoiser loss's target pool (issue #22): how many noisy latents per context are
needed for the same held-out fidelity, at the SD 1.5 and SDXL architecture sizes, and what they cost.

Text mode (`--loss denoiser`, the default) predicts the hard prompt's denoiser outputs once, on a pool of
`--probe-pool` noisy latents per context (12 contexts), before step 1, then trains the vectors to match those
frozen targets; `--loss denoiser-fresh` draws new noisy latents every step and predicts the hard prompt's
output alongside (no pool, one more denoiser forward per step). For each architecture and each pool size
(and denoiser-fresh) this trains a soft prompt with this package's trainer (`sd_softprompt.train.train`,
same target, vectors, steps, batch and seed) and reports:

- pool s: seconds spent predicting the pool's targets (`TextObjective._pool_targets`, timed around it);
- s/step: seconds per step after the first (the steps timed with train()'s `around_step` hook);
- held-out D: the package's measure (`train.measure`: D(p) = mean ||f(x_t, t, enc(p)) - f(x_t, t, enc(hard))||^2,
  alone and composed with the held-out EVAL_CONTEXTS) on a fixed set of noisy latents that no pool contains
  (measure.Probe seed 12345, the trainer's own measure seed; pools are drawn from seed + 7), the same set for
  every run, as a ratio to D(first N words) and D(empty), the baselines distance_report uses for a target
  that fits the window. The reference and the baselines are predicted once per architecture, not per run (the
  trainer's own final measure, which would predict them again each run, is skipped here).
- in-pool loss: the trainer's fixed-batch loss after training (on pool latents; on fresh ones for
  denoiser-fresh), beside the held-out D: a gap between the two is the pool being overfitted.

The weights are random (built in code from the real configs, scripts/bench_models.py; nothing is
downloaded), so fidelity F cannot be judged in pictures: D on held-out latents stands for it. The latents
are smaller than the models' own (--latent, default 16x16: 128 px) so that the run fits a CPU.

    python scripts/pool_cost.py --tiny --out /tmp/pool-tiny                  # tiny pipelines, seconds
    python scripts/pool_cost.py --archs sd1 sdxl --pools 1 2 4 8 16 32 --sdxl-pools 1 4 --noise-seeds 1 \\
        --sdxl-noise-seeds --steps 12 --batch-size 2 --latent 16 --eval-samples 4 --threads 1 \\
        --out pool-cost                  # real sizes on 1 CPU thread: 46 min (docs/performance.md)
    python scripts/pool_cost.py --device cuda --dtype bf16 --latent 64 --sdxl-latent 128 --steps 100 \\
        --batch-size 4 --eval-samples 16 --out pool-cost-gpu                 # the models' own sizes, a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET = "image of serene landscape at sunrise with trees mountains and lake"
NAMES = {"sd1": "SD 1.5 (UNet + CLIP-L)", "sdxl": "SDXL (UNet + CLIP-L + bigG)"}


def build_pipeline(arch: str, tiny: bool, device: str, dtype: str):
    """A real-size (or, --tiny, the test suite's tiny) pipeline with random weights, frozen, on the device."""
    from bench_models import build

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    torch.manual_seed(0)
    torch.set_default_dtype(torch_dtype)  # built directly in the dtype, on the device (bench_models)
    try:
        with torch.device(device):
            pipe = build(f"{arch}-tiny" if tiny else arch)
    finally:
        torch.set_default_dtype(torch.float32)
    pipe.to(device, torch_dtype)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _clock() -> tuple[float, float]:
    _sync()
    return time.perf_counter(), time.process_time()


class HeldOut:
    """distance_report's D on one fixed probe, with the reference and the baselines predicted once.

    The same computation as measure.distance_report (predictions, distance, join, first_words, the
    EVAL_CONTEXTS, the whole hard prompt encoded by encode_long as the reference) for a target that fits the
    encoder's window; only the soft prompt is predicted again for each run."""

    def __init__(self, pipe, family, target: str, vectors: int, probe, contexts):
        from sd_softprompt.train.measure import distance, first_words, join, predictions

        self.pipe, self.family, self.probe, self.target = pipe, family, probe, target
        self.where = {"alone": [""], "composed": [c for c in contexts if c]}
        self.refs = {
            c: predictions(pipe, family, join(target, c), probe, encode=family.encode_long)
            for cs in self.where.values()
            for c in cs
        }
        self._distance, self._join, self._predictions = distance, join, predictions
        self.baselines = {
            name: self.d(p) for name, p in (("first_n_words", first_words(target, vectors)), ("empty", ""))
        }

    def d(self, prompt: str) -> dict[str, float]:
        """D of `prompt` alone and composed (mean over the held-out contexts)."""
        out = {}
        for where, contexts in self.where.items():
            ds = [
                self._distance(
                    self._predictions(self.pipe, self.family, self._join(prompt, c), self.probe), self.refs[c]
                )
                for c in contexts
            ]
            out[where] = sum(ds) / len(ds)
        return out

    def report(self, soft_text: str) -> dict:
        d = self.d(soft_text)
        return {
            where: {"D": d[where]}
            | {f"ratio_to_{name}": d[where] / max(base[where], 1e-12) for name, base in self.baselines.items()}
            for where in d
        }


@contextmanager
def no_final_measure():
    """The trainer's own final D (baselines predicted again for every run) is skipped: HeldOut takes it."""
    from sd_softprompt.train.objectives import TextObjective

    TextObjective.measured = False
    try:
        yield
    finally:
        TextObjective.measured = True


@contextmanager
def pool_clock():
    """(wall, CPU) seconds of each call of the denoiser loss's pool (TextObjective._pool_targets)."""
    from sd_softprompt.train.objectives import TextObjective

    real, spent = TextObjective._pool_targets, []

    def timed(self, size):
        w, c = _clock()
        real(self, size)
        w1, c1 = _clock()
        spent.append((w1 - w, c1 - c))

    TextObjective._pool_targets = timed
    try:
        yield spent
    finally:
        TextObjective._pool_targets = real


def config(args, arch: str, out: Path, pool: int | None, latent: int, seed: int):
    from sd_softprompt.train import TrainConfig

    return TrainConfig(
        model=f"random-{arch}",
        out=str(out),
        mode="text",
        target=args.target,
        vectors=args.vectors,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        seed=seed,
        loss="denoiser" if pool else "denoiser-fresh",
        probe_pool=pool or 1,
        probe_size=latent * 8,
        eval_samples=1,  # unused: the trainer's final measure is HeldOut's (no_final_measure)
        checkpoint_every=0,
        device=args.device,
        mixed_precision={"fp32": "no"}.get(args.dtype, args.dtype),
        model_card=False,
        progress=False,
    )


def run_one(pipe, args, arch: str, pool: int | None, latent: int, held: HeldOut, tmp: Path, seed: int) -> dict:
    """Train one soft prompt (pool = latents per context; None: denoiser-fresh) and measure it held out."""
    from sd_softprompt.files.softprompt import SoftPrompt
    from sd_softprompt.inject.loader import load_soft_prompt, unload_soft_prompt
    from sd_softprompt.train import train

    marks: list[tuple[float, float]] = []

    @contextmanager
    def around_step(step: int):
        yield
        marks.append(_clock())

    cfg = config(args, arch, tmp / f"{arch}-{pool or 'fresh'}-{seed}.safetensors", pool, latent, seed)
    start = _clock()
    with no_final_measure(), pool_clock() as spent:
        result = train(cfg, pipe=pipe, around_step=around_step)
    run_s = _clock()[0] - start[0]
    tokens = load_soft_prompt(pipe, SoftPrompt.load(result.soft_prompt))
    try:
        d = held.report("".join(tokens))
    finally:
        unload_soft_prompt(pipe, tokens)
    m = result.metrics
    timed = len(marks) - 1  # after the first step (warm-up: allocator, first-call costs)
    pool_wall, pool_cpu = spent[0] if spent else (0.0, 0.0)
    from sd_softprompt.train.objectives import CONTEXTS

    return {
        "arch": arch,
        "loss": cfg.loss,
        "probe_pool": pool,
        "pool_latents": len(CONTEXTS) * pool if pool else 0,  # the trainer's contexts (no --context added)
        "pool_wall_s": pool_wall,
        "pool_cpu_s": pool_cpu,
        "setup_wall_s": m["setup_time_s"],
        "s_per_step_wall": (marks[-1][0] - marks[0][0]) / timed if timed > 0 else m["wall_time_s"] / cfg.steps,
        "s_per_step_cpu": (marks[-1][1] - marks[0][1]) / timed if timed > 0 else None,
        "steps": cfg.steps,
        "seed": seed,
        "run_wall_s": run_s,
        "loss_first": m["loss_first"],
        "loss_last": m["loss_last"],
        "in_pool_loss_after": m["fixed_batch_loss"]["after"],
        "held_out": d,
    }


def initial_row(pipe, args, arch: str, latent: int, held: HeldOut, tmp: Path) -> dict:
    """The held-out D of the initial vectors (--init hard: the target's token embeddings), before any step."""
    from sd_softprompt.families import detect_family
    from sd_softprompt.files.softprompt import SoftPrompt
    from sd_softprompt.inject.loader import load_soft_prompt, unload_soft_prompt
    from sd_softprompt.train.rows import initial_vectors

    cfg = config(args, arch, tmp / "init.safetensors", 1, latent, args.seed)
    init = initial_vectors(pipe, detect_family(pipe), cfg, torch.Generator().manual_seed(cfg.seed))
    tokens = load_soft_prompt(pipe, SoftPrompt(vectors=init))
    try:
        d = held.report("".join(tokens))
    finally:
        unload_soft_prompt(pipe, tokens)
    return {"arch": arch, "loss": "initial vectors (step 0)", "probe_pool": None, "held_out": d}


def sweep(args, arch: str, pools: list[int], latent: int, out: dict, write) -> None:
    from sd_softprompt.families import detect_family
    from sd_softprompt.train.measure import EVAL_CONTEXTS, Probe

    t0 = _clock()
    pipe = build_pipeline(arch, args.tiny, args.device, args.dtype)
    build_s = _clock()[0] - t0[0]
    family = detect_family(pipe)
    probe = Probe.make(pipe, family, args.eval_samples, latent * 8, seed=12345)  # the trainer's measure seed
    t0 = _clock()
    held = HeldOut(pipe, family, args.target, args.vectors, probe, EVAL_CONTEXTS)
    entry = {
        "arch": arch,
        "name": NAMES[arch] + (" (--tiny)" if args.tiny else ""),
        "latent": [latent, latent],
        "pixels": latent * 8,
        "build_s": build_s,
        "held_out_latents": args.eval_samples,
        "held_out_contexts": list(EVAL_CONTEXTS),
        "baselines": held.baselines,
        "baselines_wall_s": _clock()[0] - t0[0],
        "rows": [],
    }
    out["archs"].append(entry)
    print(f"{arch}: built in {build_s:.0f} s; baselines {held.baselines}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        entry["rows"].append(initial_row(pipe, args, arch, latent, held, Path(tmp)))
        plan = [(pool, args.seed) for pool in pools] + ([(None, args.seed)] if args.fresh else [])
        noise = args.sdxl_noise_seeds if arch == "sdxl" and args.sdxl_noise_seeds is not None else args.noise_seeds
        plan += [(min(pools), s) for s in noise]  # the seed-to-seed spread, on the cheapest pool
        for pool, seed in plan:
            row = run_one(pipe, args, arch, pool, latent, held, Path(tmp), seed)
            entry["rows"].append(row)
            h = row["held_out"]
            print(
                f"{arch} {row['loss']} pool {pool} seed {seed}: pool {row['pool_wall_s']:.1f} s, {row['s_per_step_wall']:.2f} s/step, "
                f"held-out D/D(first N) alone {h['alone']['ratio_to_first_n_words']:.3f} composed "
                f"{h['composed']['ratio_to_first_n_words']:.3f}, in-pool loss {row['in_pool_loss_after']:.4f} "
                f"(run {row['run_wall_s']:.0f} s)",
                flush=True,
            )
            write()
    del pipe


def markdown(report: dict) -> str:
    a = report["settings"]
    lines = [
        f'Target pool sweep ({report["date"]}, {report["machine"]}): target "{a["target"]}", {a["vectors"]} vectors, '
        f"{a['steps']} steps, batch {a['batch_size']}, lr {a['lr']}, warm-up {a['warmup']}, seed {a['seed']}, "
        f"{a['dtype']}, random weights"
        + (" (--tiny: the test suite's tiny pipelines, not the real architectures)" if a["tiny"] else "")
        + ".",
        "",
        "| architecture | latents | loss | pool per context (latents) | pool s (wall / CPU) | s/step (wall / CPU) "
        "| held-out D / D(first N words): alone, composed | D / D(empty): alone, composed | in-pool loss after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x, fmt=".3f"):
        return format(x, fmt) if isinstance(x, (int, float)) else "–"

    def order(r):  # the initial vectors, the pools from small to large, denoiser-fresh; other seeds last
        return (
            r.get("seed", a["seed"]) != a["seed"],
            r.get("steps") is not None,
            r["probe_pool"] is None,
            r["probe_pool"] or 0,
        )

    for e in report["archs"]:
        lat = f"{e['latent'][0]}x{e['latent'][1]} ({e['pixels']} px)"
        for r in sorted(e["rows"], key=order):
            h = r["held_out"]
            pool = f"{r['probe_pool']} ({r['pool_latents']})" if r.get("probe_pool") else "–"
            timing = r.get("s_per_step_wall")
            loss = r["loss"] + (f", seed {r['seed']}" if r.get("seed", a["seed"]) != a["seed"] else "")
            lines.append(
                f"| {e['name']} | {lat} | {loss} | {pool} | "
                + (f"{f(r['pool_wall_s'], '.1f')} / {f(r['pool_cpu_s'], '.1f')}" if timing is not None else "–")
                + " | "
                + (f"{f(r['s_per_step_wall'], '.2f')} / {f(r['s_per_step_cpu'], '.2f')}" if timing is not None else "–")
                + f" | {f(h['alone']['ratio_to_first_n_words'])}, {f(h['composed']['ratio_to_first_n_words'])} "
                f"| {f(h['alone']['ratio_to_empty'])}, {f(h['composed']['ratio_to_empty'])} "
                f"| {f(r.get('in_pool_loss_after'), '.4f')} |"
            )
    lines += [
        "",
        "Held-out D: the package's measure on "
        + ", ".join(f"{e['held_out_latents']} noisy latents (seed 12345) for {e['arch']}" for e in report["archs"])
        + ", none of them in any pool (pools: seed + 7), alone and composed with the held-out contexts "
        f"{report['archs'][0]['held_out_contexts'][1:] if report['archs'] else ''}; lower is better, 1.0 = no better "
        "than the baseline. Random weights: F cannot be judged in pictures, D on held-out latents stands for it.",
        f"Command: `{report['command']}` ({report['total_wall_s']:.0f} s wall in all).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the test suite's tiny pipelines (seconds on a CPU)")
    p.add_argument("--archs", nargs="+", choices=list(NAMES), default=list(NAMES))
    p.add_argument("--pools", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32], help="--probe-pool values")
    p.add_argument("--sdxl-pools", nargs="+", type=int, help="SDXL's --probe-pool values (default: --pools)")
    p.add_argument("--no-fresh", dest="fresh", action="store_false", help="leave out --loss denoiser-fresh")
    p.add_argument("--latent", type=int, help="latent side (default 16; --tiny: 8)")
    p.add_argument("--sdxl-latent", type=int, help="SDXL's latent side (default: --latent)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--vectors", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument(
        "--warmup", type=int, default=0, help="warm-up steps (the trainer's default, 20, is longer than the run)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-seeds", nargs="*", type=int, default=[], help="the smallest pool again with these seeds")
    p.add_argument("--sdxl-noise-seeds", nargs="*", type=int, help="SDXL's --noise-seeds (default: --noise-seeds)")
    p.add_argument("--target", default=TARGET)
    p.add_argument("--eval-samples", type=int, default=4, help="held-out noisy latents")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--machine", default=None, help="what to call this machine in the output")
    p.add_argument("--out", default="pool-cost", help="folder for pool_cost.json and pool_cost.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    latent = args.latent or (8 if args.tiny else 16)
    command = " ".join(
        shlex.quote(a) for a in ["python", "scripts/pool_cost.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print(command, flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": args.machine
        or (
            torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else f"CPU, {torch.get_num_threads()} thread(s)"
        ),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "machine")} | {"latent": latent},
        "archs": [],
        "total_wall_s": 0.0,
    }

    def write() -> None:
        report["total_wall_s"] = time.perf_counter() - start
        report["load_average_end"] = os.getloadavg()
        (out_dir / "pool_cost.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / "pool_cost.md").write_text(markdown(report))

    for arch in args.archs:
        pools = args.sdxl_pools if arch == "sdxl" and args.sdxl_pools else args.pools
        side = args.sdxl_latent if arch == "sdxl" and args.sdxl_latent else latent
        sweep(args, arch, pools, side, report, write)
    write()
    print(markdown(report))


if __name__ == "__main__":
    main()
