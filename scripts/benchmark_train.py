"""Training speed at real architecture size, with random weights (nothing is downloaded), or on a given model.

Every run prints steps/s, samples/s, FLOPs per step (torch.utils.flop_counter), achieved TFLOP/s and, on a
GPU with a known peak, the fraction of peak (MFU); then a per-phase profile of a few steps (torch.profiler
ranges: text encoder forward, denoiser forward, backward, optimizer, host syncs). --against runs other
trainers on the same pipeline, interleaved with this one (A, B, A, B, ...), and prints the median ratio:

- `--against diffusers`: diffusers' own examples/textual_inversion/textual_inversion.py, from the checkout
  --diffusers-repo names (a work tree, a bare git repository, or the script), patched only where this
  machine needs it (scripts/diffusers_script.py; the patches are listed in the output). The pipeline is
  saved to a temporary folder in fp32 for it to load; it and this package's trainer each run as a whole
  child process per round, and the figure is CPU (and wall) seconds per step between the clock readings
  after step --first-mark and after the last step; the whole processes' seconds (imports, loading, set-up
  included) are reported beside it.
- `--against diffusers-like`: the re-implementation of that script's per-step work in
  scripts/bench_reference.py, in this process (labelled "diffusers-like recipe" in the output).
- `--against REV`: this package's trainer at a git revision, in this process.

    python scripts/benchmark_train.py --model toyworld --mode images --resolution 64 --vectors 1 --steps 30 \\
        --threads 1 --profile-steps 0 --against diffusers --diffusers-repo ~/diffusers --rounds 5
    python scripts/benchmark_train.py --family sd1-mid --mode images --resolution 128 --vectors 1 --steps 15 \\
        --threads 1 --profile-steps 0 --against diffusers --diffusers-repo ~/diffusers --rounds 5
    python scripts/benchmark_train.py --family sd1-mid --mode images --resolution 128 --vectors 1 --steps 3 \\
        --threads 1 --against 5dfed1b --against diffusers-like --rounds 7     # in-process references
    python scripts/benchmark_train.py --family flux --mode text --loss denoiser --device cuda --dtype bf16
    python scripts/benchmark_train.py --model path/to/pipeline --mode images --device cuda   # any pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from bench_models import FAMILIES, build
from PIL import Image
from torch.profiler import ProfilerActivity, profile, record_function, schedule
from torch.utils.flop_counter import FlopCounterMode

from sd_softprompt.families import detect_family
from sd_softprompt.train import TrainConfig, train

PHASES = ["text encoder", "denoiser forward", "backward", "optimizer", "host sync"]
# dense peak TFLOP/s by device-name fragment: (bf16/fp16 tensor cores, tf32, fp32)
PEAKS = {"H200": (989.4, 494.7, 66.9), "H100": (989.4, 494.7, 66.9), "A100": (312.0, 156.0, 19.5), "L4": (121, 60, 30)}


def peak_tflops(device: str, dtype: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for fragment, (half, tf32, fp32) in PEAKS.items():
        if fragment in name:
            if "PCIe" in name and fragment == "H100":
                half, tf32, fp32 = 756.0, 378.0, 51.2
            return half if dtype != "fp32" else tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32
    return None


def load(args):
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.model:
        from sd_softprompt.models.pipeline import load_pipeline

        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, progress=False)
    else:
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)  # build the frozen models directly in the training dtype, on the device
        with torch.device(args.device):
            pipe = build(args.family)
        torch.set_default_dtype(torch.float32)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    denoiser = getattr(pipe, detect_family(pipe).denoiser)
    if args.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if args.compile_blocks:  # regional compilation: each repeated block (diffusers' _repeated_blocks)
        denoiser.compile_repeated_blocks()
    return pipe


def config(args, tmp: Path, images: Path | None, steps: int, cls=TrainConfig):
    return cls(
        model=args.model or f"random-{args.family}",
        out=str(tmp / "bench.safetensors"),
        mode=args.mode,
        target="image of serene landscape at sunrise with trees mountains and lake",
        images=str(images) if images else None,
        vectors=args.vectors,
        steps=steps,
        batch_size=args.batch_size,
        resolution=args.resolution,
        loss=args.loss,
        mixed_precision={"fp32": "no"}.get(args.dtype, args.dtype),
        checkpoint_every=0,
        eval_samples=2,
        probe_size=args.probe_size,
        probe_pool=args.probe_pool,
        device=args.device,
        init="random",
        warmup=0,
        progress=False,
    )


@contextmanager
def labelled(modules: dict[str, list[torch.nn.Module]]):
    """Each module's forward inside a profiler range named after its phase."""

    def wrap(forward, name):
        def run(*a, **k):
            with record_function(name):
                return forward(*a, **k)

        return run

    for name, ms in modules.items():
        for m in ms:
            m.forward = wrap(m.forward, name)
    try:
        yield
    finally:
        for ms in modules.values():
            for m in ms:
                del m.forward


def instrumented(pipe, cfg: TrainConfig, steps: int) -> tuple[dict, dict]:
    """One run: step 0 under a FLOP counter, step 1 a warm-up, then `steps` profiled steps. Returns the FLOPs
    per step and the phases' seconds per step."""
    family = detect_family(pipe)
    cuda = pipe.unet.device.type == "cuda" if hasattr(pipe, "unet") else pipe.transformer.device.type == "cuda"
    counter = FlopCounterMode(display=False)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=steps))

    @contextmanager
    def around(step):
        with counter if step == 0 else record_function("step"):
            yield
        if cuda:
            torch.cuda.synchronize()
        prof.step()

    parts = {
        "text encoder": [getattr(pipe, e.text_encoder) for e in family.encoders],
        "denoiser forward": [getattr(pipe, family.denoiser)],
    }
    with labelled(parts), prof:
        train(cfg, pipe=pipe, around_step=around)
    totals = {e.key: (e.device_time_total if cuda else e.cpu_time_total) for e in prof.key_averages()}
    phases = {name: totals.get(name, 0.0) / steps / 1e6 for name in ["step", *PHASES]}
    phases["other"] = phases["step"] - sum(phases[p] for p in PHASES)
    return {"per_step": counter.get_total_flops()}, phases


@contextmanager
def loss_clock(objectives, mode: str):
    """(wall, CPU) clock readings at each call of the objective's loss: the fixed-batch loss, one per step, the
    fixed-batch loss again. Between the first step's and the last reading lie the steps alone, in any revision."""
    cls = objectives.OBJECTIVES[mode]
    real, marks = cls.loss, []

    def loss(self, generator):
        marks.append((time.perf_counter(), time.process_time()))
        return real(self, generator)

    cls.loss = loss
    try:
        yield marks
    finally:
        cls.loss = real


def interleaved(pipe, args, tmp: Path, images: Path | None) -> dict:
    """Wall and CPU seconds per step of this trainer and each --against one, alternating (A, B, A, B, ...),
    `rounds` times; medians. On a shared CPU the CPU seconds (one thread) hardly feel the other jobs; the wall
    seconds do. On a GPU the wall seconds are the figure."""
    from bench_reference import diffusers_like_steps, trainer_at

    from sd_softprompt.train import objectives

    def trainer(train_fn, cfg_cls, objectives_module):
        def run():
            start = time.perf_counter(), time.process_time()
            with loss_clock(objectives_module, args.mode) as marks:
                train_fn(config(args, tmp, images, args.steps, cfg_cls), pipe=pipe)
            (w0, c0), (w1, c1) = marks[1], marks[-1]
            # setup: from the call to the first (fixed-batch) loss: latents, targets, the denoiser-loss pool
            return (w1 - w0) / args.steps, (c1 - c0) / args.steps, marks[0][0] - start[0], marks[0][1] - start[1]

        return run

    runners = {"this tree": trainer(train, TrainConfig, objectives)}
    for ref in args.against:
        if ref == "diffusers":
            continue  # separate child processes: against_script
        if ref == "diffusers-like":
            pics = sorted(images.glob("*.png"))
            runners["diffusers-like recipe (re-implementation)"] = lambda pics=pics: diffusers_like_steps(
                pipe, pics, args.steps, args.batch_size, args.resolution
            )
        else:
            runners[f"trainer at {ref}"] = trainer(*trainer_at(ref))
    times: dict[str, list[tuple[float, ...]]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            times[name].append(run())
    out = {}
    for clock, i in (("wall", 0), ("cpu", 1)):
        medians = {name: statistics.median(t[i] for t in ts) for name, ts in times.items()}
        ours = [t[i] for t in times["this tree"]]
        out[clock] = {
            name: {
                "s_per_step": m,
                "this_tree_faster_by": m / medians["this tree"],
                # the same round's runs side by side: what the other jobs on the machine did, both felt
                "paired_ratio_median": statistics.median(t[i] / o for t, o in zip(times[name], ours)),
                "all": [t[i] for t in times[name]],
            }
            for name, m in medians.items()
        }
        for name, ts in times.items():
            if len(ts[0]) > 2:  # the trainers' setup
                out[clock][name]["setup_s"] = statistics.median(t[i + 2] for t in ts)
    return out


def against_script(pipe, args, tmp: Path, images: Path) -> dict:
    """diffusers' own script and this package's trainer, each a child process per round, interleaved."""
    import dataclasses

    from diffusers_script import (
        child_env,
        model_folder,
        ours_command,
        per_step,
        prepare,
        save_pipeline,
        script_command,
        timed_child,
    )

    if args.mode != "images":
        raise SystemExit("--against diffusers: diffusers' script trains on pictures: --mode images")
    if not args.diffusers_repo:
        raise SystemExit("--against diffusers needs --diffusers-repo (a diffusers checkout, or the script)")
    runner, patches = prepare(args.diffusers_repo, tmp / "diffusers-script")
    model = tmp / "pipeline"
    notes = save_pipeline(pipe, model, model_folder(args.model))
    env = child_env(args.threads)
    first, last = args.first_mark, args.steps
    cfg = dataclasses.asdict(config(args, tmp, images, last))
    cfg |= {"model": str(model), "target": None, "init": "hard", "warmup": TrainConfig.warmup, "checkpoint_every": 0}
    cfg |= {"mixed_precision": {"fp32": "no"}.get(args.dtype, args.dtype)}
    mp = {"fp32": "no"}.get(args.dtype, args.dtype)
    commands = {
        "this tree": ours_command(cfg, tmp / "ours.log", setup={"threads": args.threads}),
        "diffusers' script": script_command(
            runner,
            model,
            images,
            tmp / "script-out",
            last,
            args.batch_size,
            args.resolution,
            save_steps=first,
            initializer=args.initializer,
            vectors=args.vectors,
            mixed_precision=mp,
        ),
    }
    if args.short_steps:  # the same two at --short-steps steps: per step from whole processes' differences
        short = dict(cfg, steps=args.short_steps)
        commands["this tree, short"] = ours_command(short, tmp / "ours.log", setup={"threads": args.threads})
        cmd = list(commands["diffusers' script"])
        cmd = [f"--max_train_steps={args.short_steps}" if c.startswith("--max_train_steps=") else c for c in cmd]
        commands["diffusers' script, short"] = [
            f"--save_steps={args.short_steps}" if c.startswith("--save_steps=") else c for c in cmd
        ]
    logs = {name: tmp / ("ours.log" if name.startswith("this") else "script.log") for name in commands}
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for r in range(args.rounds):
        for name, cmd in commands.items():
            res = timed_child(cmd, env, logs[name])
            if name.endswith(", short"):
                runs[name].append({"process_cpu_s": res["cpu_s"], "process_wall_s": res["wall_s"]})
                print(f"round {r + 1}: {name}: process {res['cpu_s']:.1f} CPU s", flush=True)
                continue
            cpu, wall = per_step(res["marks"], first, last)
            runs[name].append({"cpu_s_per_step": cpu, "wall_s_per_step": wall, "process_cpu_s": res["cpu_s"]})
            runs[name][-1]["threads"] = res.get("threads") or next(
                (m["threads"] for m in res["marks"] if "threads" in m), None
            )
            print(f"round {r + 1}: {name}: {cpu:.4f} CPU s/step, process {res['cpu_s']:.1f} CPU s", flush=True)
    notes.append(f"both children run with OMP_NUM_THREADS={args.threads} (--threads)" if args.threads else "")
    out: dict = {"patches": patches, "pipeline_notes": [n for n in notes if n], "steps": [first, last]}
    out["commands"] = {k: " ".join(v) for k, v in commands.items()}
    ours = runs["this tree"]
    for name in [n for n in runs if n.endswith(", short")]:
        long, short = runs.pop(name.removesuffix(", short")), runs.pop(name)
        n = last - args.short_steps
        diffs = [(a["process_cpu_s"] - b["process_cpu_s"]) / n for a, b in zip(long, short)]
        out[f"{name.removesuffix(', short')}: whole processes, {args.short_steps} vs {last} steps"] = {
            "cpu_s_per_step_median": statistics.median(diffs),
            "all": diffs,
            "short_process_cpu_s": [b["process_cpu_s"] for b in short],
        }
        runs[name.removesuffix(", short")] = long
    for name, rs in runs.items():
        cpu = [r["cpu_s_per_step"] for r in rs]
        out[name] = {
            "cpu_s_per_step_median": statistics.median(cpu),
            "cpu_s_per_step_min_max": [min(cpu), max(cpu)],
            "wall_s_per_step_median": statistics.median(r["wall_s_per_step"] for r in rs),
            "process_cpu_s_median": statistics.median(r["process_cpu_s"] for r in rs),
            "paired_ratio_vs_this_tree": sorted(r["cpu_s_per_step"] / o["cpu_s_per_step"] for r, o in zip(rs, ours)),
            "all": rs,
        }
    ratios = out["diffusers' script"]["paired_ratio_vs_this_tree"]
    out["cpu_ratio_median"] = statistics.median(ratios)
    out["cpu_ratio_min_max"] = [min(ratios), max(ratios)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=FAMILIES, default="sd1-mid")
    p.add_argument("--model", help="a diffusers pipeline (hub id or folder) instead of a random architecture")
    p.add_argument("--mode", choices=["text", "images"], default="text")
    p.add_argument("--loss", default="sequence")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--vectors", type=int, default=4)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--probe-size", type=int, default=256)
    p.add_argument("--probe-pool", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true", help="the denoiser in channels-last memory format")
    p.add_argument("--compile-blocks", action="store_true", help="torch.compile the denoiser's repeated blocks")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--profile-steps", type=int, default=4, help="steps in the per-phase profile (0: none)")
    p.add_argument(
        "--against",
        action="append",
        default=[],
        help="'diffusers' (its own script, --diffusers-repo), 'diffusers-like' (the re-implementation), or a git rev",
    )
    p.add_argument("--diffusers-repo", help="--against diffusers: a diffusers checkout (or bare repo, or the script)")
    p.add_argument("--initializer", default="photo", help="--against diffusers: the script's --initializer_token")
    p.add_argument("--short-steps", type=int, help="--against diffusers: also whole processes at this many steps")
    p.add_argument("--first-mark", type=int, default=3, help="--against diffusers: per step from this step's end")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds for --against")
    p.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU (default: a table of GPUs)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load(args)
    out: dict = {
        k: getattr(args, k)
        for k in (
            "family",
            "model",
            "mode",
            "loss",
            "device",
            "dtype",
            "batch_size",
            "vectors",
            "channels_last",
            "compile_blocks",
        )
    }
    out |= {"resolution": args.resolution if args.mode == "images" else None, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp, images = Path(tmp), None
        if args.mode == "images":
            images = tmp / "pics"
            images.mkdir()
            g = torch.Generator().manual_seed(0)
            for i in range(4):
                pixels = (torch.rand(args.resolution, args.resolution, 3, generator=g) * 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(images / f"{i}.png")
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        m = train(config(args, tmp, images, args.steps), pipe=pipe).metrics
        out |= {k: m[k] for k in ("setup_time_s", "steps_per_s", "wall_time_s", "peak_memory_mb")}
        out["samples_per_s"] = m["steps_per_s"] * args.batch_size
        if args.profile_steps:
            flops, phases = instrumented(pipe, config(args, tmp, images, args.profile_steps + 2), args.profile_steps)
            out |= {"flops_per_step": flops, "phases_s_per_step": phases}
            out["achieved_tflops"] = flops["per_step"] * m["steps_per_s"] / 1e12
            peak = args.peak_tflops or peak_tflops(args.device, args.dtype)
            out["mfu"] = out["achieved_tflops"] / peak if peak else None
        if any(a != "diffusers" for a in args.against):
            out["interleaved"] = interleaved(pipe, args, tmp, images)
        if "diffusers" in args.against:
            out["against_diffusers_script"] = against_script(pipe, args, tmp, images)
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
