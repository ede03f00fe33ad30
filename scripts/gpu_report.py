"""One prepared GPU run: samples/s, peak memory and MFU of this package's trainer at the real architectures
(random weights, nothing downloaded), and diffusers' own textual-inversion script beside it for SD 1.5.

    python scripts/gpu_report.py --diffusers-repo ~/diffusers --out gpu-report      # one GPU, < 8 minutes
    python scripts/gpu_report.py --tiny --device cpu --diffusers-repo ~/diffusers   # a try-out on the CPU

Rows, in the order they run (each a child process, so that one row's memory and compiled code do not
reach the next): SD 1.5 at 512 px (images and text mode), SDXL and Flux-dev at 1024 px (images mode), bf16,
batch --batch-size (--large-batch-size at 1024 px); then SD 1.5 images, this package against diffusers'
script, both loading the same pipeline saved to a temporary folder (fp32 on disk, the script's
--mixed_precision bf16, this package's --mixed-precision bf16), each a whole process; then SD 1.5 images
with channels-last, with torch.compile (regional: the denoiser's repeated blocks), with both, and SDXL /
Flux with torch.compile.

Per row: --warmup steps are run and not counted (compilation happens there), then --steps timed steps
(the device synchronised at each step's end); samples/s = batch x timed steps / their seconds; peak memory
= torch.cuda.max_memory_allocated over the run (weights included); MFU = FLOPs per step (counted once per
architecture and mode with torch.utils.flop_counter, eager, on the first warm-up step) x steps/s / the
device's dense bf16 peak (benchmark_train.PEAKS); the script's row is given the same FLOPs per step as this
package's (its extra VAE encode each step is not counted as useful work). Rows that would start past --budget-s (default 450 s:
7.5 minutes) are skipped and listed as skipped. Writes OUT/gpu_report.json and OUT/gpu_report.md.

--pool-sweep adds one more row group after those, under the same budget: scripts/pool_cost.py (the text-mode
denoiser loss's target pool, --probe-pool 1 to 32 per context and --loss denoiser-fresh, against held-out D)
for SD 1.5 at 64x64 latents and SDXL at 128x128 (the models' own 512 / 1024 px), each a child process;
its table is appended to gpu_report.md and its figures kept under "pool_sweep" in gpu_report.json
(--pool-sweep-only: those rows alone). Give it room in --budget-s: after the other rows, the default leaves none.

--tiny swaps the architectures for the test suite's tiny pipelines at 64 px (and the script's row for the
tiny SD1), to try the whole run out on a CPU. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rows(tiny: bool) -> list[dict]:
    """The rows, in priority order."""
    sd1, sdxl, flux = ("sd1-tiny", "sdxl-tiny", "flux-tiny") if tiny else ("sd1", "sdxl", "flux")
    small, large = (64, 64) if tiny else (512, 1024)
    base = [
        {"family": sd1, "mode": "images", "resolution": small},
        {"family": sd1, "mode": "text", "resolution": small},
        {"family": sdxl, "mode": "images", "resolution": large, "large": True},
        {"family": flux, "mode": "images", "resolution": large, "large": True},
    ]
    variants = [
        {"family": sd1, "mode": "images", "resolution": small, "channels_last": True},
        {"family": sd1, "mode": "images", "resolution": small, "compile": True},
        {"family": sd1, "mode": "images", "resolution": small, "channels_last": True, "compile": True},
        {"family": sdxl, "mode": "images", "resolution": large, "large": True, "compile": True},
        {"family": flux, "mode": "images", "resolution": large, "large": True, "compile": True},
    ]
    script = [
        {"family": sd1, "mode": "images", "resolution": small, "trainer": "this package, from the saved folder"},
        {"family": sd1, "mode": "images", "resolution": small, "trainer": "diffusers' script"},
    ]
    return base + script + variants


def label(row: dict) -> str:
    opts = [o for o in ("channels_last", "compile") if row.get(o)]
    return f"{row['family']} {row['mode']} {row['resolution']}px" + (f" +{'+'.join(opts)}" if opts else "")


# ---------------------------------------------------------------- the child: one row of this package's trainer
def child(spec: dict) -> dict:
    """Builds the architecture on the device, trains warm-up + timed steps, returns the row's figures."""
    import torch
    from bench_models import build
    from benchmark_train import peak_tflops
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    from sd_softprompt.families import detect_family
    from sd_softprompt.train import TrainConfig, train

    device, dtype = spec["device"], {"bf16": torch.bfloat16, "fp32": torch.float32}[spec["dtype"]]
    cuda = device.startswith("cuda")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        pipe = build(spec["family"])
    torch.set_default_dtype(torch.float32)
    pipe.to(device, dtype)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    denoiser = getattr(pipe, detect_family(pipe).denoiser)
    if spec.get("channels_last"):
        denoiser.to(memory_format=torch.channels_last)
    if spec.get("compile"):
        denoiser.compile_repeated_blocks()
    build_s = time.perf_counter() - t0
    warmup, steps = spec["warmup"], spec["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        images = None
        if spec["mode"] == "images":
            images = Path(tmp) / "pics"
            images.mkdir()
            g = torch.Generator().manual_seed(0)
            for i in range(4):
                px = (torch.rand(spec["resolution"], spec["resolution"], 3, generator=g) * 255).to(torch.uint8)
                Image.fromarray(px.numpy()).save(images / f"{i}.png")
        cfg = TrainConfig(
            model=f"random-{spec['family']}",
            out=str(Path(tmp) / "soft.safetensors"),
            mode=spec["mode"],
            target=None if spec["mode"] == "images" else "image of serene landscape at sunrise with mountains",
            images=str(images) if images else None,
            vectors=spec["vectors"],
            steps=warmup + steps,
            batch_size=spec["batch_size"],
            resolution=spec["resolution"],
            mixed_precision=spec["dtype"] if spec["dtype"] != "fp32" else "no",
            checkpoint_every=0,
            eval_samples=1,
            probe_size=spec["resolution"] if spec["mode"] == "text" else None,
            device=device,
            progress=False,
        )
        counter = FlopCounterMode(display=False) if spec.get("count_flops") else None
        marks: list[float] = []

        from contextlib import contextmanager, nullcontext

        @contextmanager
        def around_step(step: int):
            with counter if (counter is not None and step == 0) else nullcontext():
                yield
            if cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train(cfg, pipe=pipe, around_step=around_step)
    seconds = marks[-1] - marks[warmup - 1]
    out = {
        "build_s": build_s,
        "samples_per_s": spec["batch_size"] * steps / seconds,
        "s_per_step": seconds / steps,
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "flops_per_step": counter.get_total_flops() if counter is not None else None,
        "peak_tflops": peak_tflops(device, spec["dtype"]),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
    }
    return out


# ------------------------------------------------------------------------------------ the parent
def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    from diffusers_script import child_env

    try:
        proc = subprocess.run(
            cmd, env=child_env(spec.get("threads")), capture_output=True, text=True, timeout=max(timeout, 1)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at the budget ({timeout:.0f} s left)"}
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def script_pair(args, sd1: str, resolution: int, tmp: Path, timeout: float) -> dict[str, dict]:
    """SD 1.5 images: this package and diffusers' script, each a child process on the same saved folder."""
    import torch
    from bench_models import build
    from diffusers_script import child_env, ours_command, per_step, prepare, save_pipeline, script_command
    from diffusers_script import timed_child as timed
    from PIL import Image

    runner, patches = prepare(args.diffusers_repo, tmp / "script")
    torch.manual_seed(0)
    model = tmp / "pipeline"
    save_pipeline(build(sd1), model)
    images = tmp / "pics"
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        px = (torch.rand(resolution, resolution, 3, generator=g) * 255).to(torch.uint8)
        Image.fromarray(px.numpy()).save(images / f"{i}.png")
    w, last = args.warmup, args.warmup + args.steps
    mp = args.dtype if args.dtype != "fp32" else "no"
    cfg = {
        "model": str(model),
        "out": str(tmp / "ours.safetensors"),
        "mode": "images",
        "images": str(images),
        "vectors": args.vectors,
        "steps": last,
        "batch_size": args.batch_size,
        "resolution": resolution,
        "mixed_precision": mp,
        "checkpoint_every": 0,
        "eval_samples": 1,
        "device": args.device,
        "progress": False,
    }
    env = child_env(args.threads)
    # the script saves its embeddings every `w` steps: the marks at steps w and last (a multiple of w)
    last = w * -(-last // w)
    cfg["steps"] = last
    commands = {
        "ours": ours_command(cfg, tmp / "ours.log", setup={"threads": args.threads, "dtype": args.dtype}),
        "script": script_command(
            runner,
            model,
            images,
            tmp / "script-out",
            last,
            args.batch_size,
            resolution,
            save_steps=w,
            initializer="photo",
            vectors=args.vectors,
            mixed_precision=mp,
        ),
    }
    out = {}
    start = time.perf_counter()
    for name, cmd in commands.items():
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            out[name] = {"error": "skipped: past the time budget"}
            continue
        try:
            res = timed(cmd, env, tmp / f"{name}.log", timeout=left)
        except RuntimeError as error:
            out[name] = {"error": str(error).splitlines()[-1]}
            continue
        _, wall = per_step(res["marks"], w, last)
        out[name] = {
            "samples_per_s": args.batch_size / wall,
            "s_per_step": wall,
            "peak_memory_mb": res.get("peak_memory_mb"),
            "process_wall_s": res["wall_s"],
        }
    out["patches"] = patches
    return out


def pool_sweep(args, tmp: Path, left: float) -> list[dict]:
    """scripts/pool_cost.py per architecture, each a child process within the time left: its report, or an error."""
    from diffusers_script import child_env

    out = []
    start = time.perf_counter()
    for arch, latent in (("sd1", 64), ("sdxl", 128)):
        remaining = left - (time.perf_counter() - start)
        if remaining <= 0:
            out.append({"arch": arch, "error": "skipped: past the budget"})
            continue
        folder = tmp / f"pool-{arch}"
        cmd = [sys.executable, str(HERE / "pool_cost.py"), "--archs", arch, "--out", str(folder)]
        cmd += ["--device", args.device, "--dtype", args.dtype, "--steps", str(2 if args.tiny else args.pool_steps)]
        cmd += ["--batch-size", str(args.batch_size), "--eval-samples", str(args.pool_eval_samples)]
        cmd += ["--tiny"] if args.tiny else ["--latent", str(latent)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        try:
            proc = subprocess.run(cmd, env=child_env(args.threads), capture_output=True, text=True, timeout=remaining)
        except subprocess.TimeoutExpired:
            out.append({"arch": arch, "error": f"stopped at the budget ({remaining:.0f} s left)"})
            continue
        if proc.returncode:
            err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"
            out.append({"arch": arch, "error": err})
            continue
        out.append(json.loads((folder / "pool_cost.json").read_text()) | {"arch": arch})
        out[-1]["markdown"] = (folder / "pool_cost.md").read_text()
        print(out[-1]["markdown"], flush=True)
    return out


def markdown(report: dict) -> str:
    lines = [
        f"GPU report: {report['device_name']}, {report['dtype']}, "
        f"{report['vectors']} vector(s), {report['warmup']} warm-up + {report['steps']} timed steps per row"
        + (" (--tiny: the test suite's tiny pipelines, not the real architectures)" if report["tiny"] else ""),
        "",
        "| row | trainer | batch | samples/s | s/step | peak memory (MiB) | TFLOP/step | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if not report["rows"]:  # --pool-sweep-only
        lines = lines[:1]

    def f(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) else "–"

    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['trainer']} | {r.get('batch_size', '')} | {r['error']} | | | | |")
            continue
        tf = r.get("flops_per_step")
        lines.append(
            f"| {r['row']} | {r['trainer']} | {r['batch_size']} | {f(r['samples_per_s'], '.3g')} | {f(r['s_per_step'], '.4g')} | "
            f"{f(r.get('peak_memory_mb'), '.0f')} | {f(tf / 1e12 if tf else None, '.3g')} | "
            f"{f(r.get('mfu'), '.1%') if r.get('mfu') is not None else '–'} |"
        )
    lines += ["", f"Total {report['total_s']:.0f} s (budget {report['budget_s']:.0f} s)."]
    if report["skipped"]:
        lines.append(f"Skipped past the budget: {', '.join(report['skipped'])}.")
    if report.get("patches"):
        lines += ["", "diffusers' script, patched at run time:"] + [f"- {p}" for p in report["patches"]]
    for sweep in report.get("pool_sweep", []):  # --pool-sweep: scripts/pool_cost.py's tables
        lines += ["", f"## The target pool, {sweep['arch']}", ""]
        lines += [sweep["markdown"].rstrip()] if "markdown" in sweep else [sweep["error"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help="the tiny pipelines at 64 px: try the run out on a CPU")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--large-batch-size", type=int, default=2, help="batch of the 1024 px rows (SDXL, Flux)")
    p.add_argument("--vectors", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5, help="steps per row not timed (compilation, allocator)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--threads", type=int, help="torch CPU threads in each child")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: benchmark_train.PEAKS)")
    p.add_argument("--budget-s", type=float, default=450.0, help="no row starts past this many seconds")
    p.add_argument("--diffusers-repo", help="a diffusers checkout (or bare repo, or the script) for its row")
    p.add_argument("--out", default="gpu-report", help="folder for gpu_report.json and gpu_report.md")
    p.add_argument("--pool-sweep", action="store_true", help="also scripts/pool_cost.py for SD 1.5 and SDXL, last")
    p.add_argument("--pool-sweep-only", action="store_true", help="the --pool-sweep rows alone")
    p.add_argument("--pool-steps", type=int, default=100, help="--pool-sweep: steps per training run")
    p.add_argument("--pool-eval-samples", type=int, default=16, help="--pool-sweep: held-out noisy latents")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    start = time.perf_counter()
    done, skipped, flops = [], [], {}
    patches: list[str] = []
    plan = [] if args.pool_sweep_only else rows(args.tiny)
    device_name = args.device
    i = 0
    with tempfile.TemporaryDirectory() as tmp:
        while i < len(plan):
            row = plan[i]
            left = args.budget_s - (time.perf_counter() - start)
            if "trainer" in row:  # the pair: this package and diffusers' script from one saved folder
                pair = plan[i : i + 2]
                i += 2
                if left <= 0 or not args.diffusers_repo:
                    why = "skipped: no --diffusers-repo" if not args.diffusers_repo else "skipped: past the budget"
                    for r in pair:
                        done.append({"row": label(r), "trainer": r["trainer"], "error": why})
                        skipped += [f"{label(r)} ({r['trainer']})"] if left <= 0 else []
                    continue
                res = script_pair(args, row["family"], row["resolution"], Path(tmp), left)
                patches = res.pop("patches")
                for r, key in zip(pair, ("ours", "script")):
                    entry = {"row": label(r), "trainer": r["trainer"], "batch_size": args.batch_size, **res[key]}
                    fl = flops.get((r["family"], r["mode"], r["resolution"]))
                    if fl and "s_per_step" in entry:
                        entry["flops_per_step"] = fl[0]
                        entry["mfu"] = fl[0] / entry["s_per_step"] / 1e12 / fl[1] if fl[1] else None
                    done.append(entry)
                print(json.dumps(done[-2:]), flush=True)
                continue
            i += 1
            if left <= 0:
                skipped.append(label(row))
                done.append({"row": label(row), "trainer": "this package", "error": "skipped: past the budget"})
                continue
            key = (row["family"], row["mode"], row["resolution"])
            spec = {
                **row,
                "device": args.device,
                "dtype": args.dtype,
                "batch_size": args.large_batch_size if row.get("large") else args.batch_size,
                "vectors": args.vectors,
                "warmup": args.warmup,
                "steps": args.steps,
                "threads": args.threads,
                "count_flops": key not in flops and not row.get("compile"),
            }
            t0 = time.perf_counter()
            res = run_child(spec, left)
            entry = {"row": label(row), "trainer": "this package", "batch_size": spec["batch_size"], **res}
            entry["row_s"] = time.perf_counter() - t0
            if res.get("flops_per_step"):
                flops[key] = (res["flops_per_step"], args.peak_tflops or res.get("peak_tflops"))
            if key in flops and "s_per_step" in res:
                fl, peak = flops[key]
                entry["flops_per_step"] = fl
                entry["achieved_tflops"] = fl / res["s_per_step"] / 1e12
                entry["mfu"] = entry["achieved_tflops"] / peak if peak else None
            device_name = res.get("device_name", device_name)
            done.append(entry)
            print(json.dumps(entry), flush=True)
        sweeps = []
        if args.pool_sweep or args.pool_sweep_only:
            sweeps = pool_sweep(args, Path(tmp), args.budget_s - (time.perf_counter() - start))
            skipped += [f"pool sweep {s['arch']}" for s in sweeps if "past the budget" in s.get("error", "")]
    report = {
        "device_name": device_name,
        "tiny": args.tiny,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "vectors": args.vectors,
        "warmup": args.warmup,
        "steps": args.steps,
        "budget_s": args.budget_s,
        "total_s": time.perf_counter() - start,
        "skipped": skipped,
        "patches": patches,
        "rows": done,
        "load_average": os.getloadavg(),
    }
    if args.pool_sweep or args.pool_sweep_only:
        report["pool_sweep"] = sweeps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_report.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
