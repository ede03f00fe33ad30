"""diffusers' own examples/textual_inversion/textual_inversion.py, run as a separate process beside this
package's trainer, for scripts/benchmark_train.py --against diffusers, scripts/time_to_fidelity.py and
scripts/gpu_report.py.

Nothing of diffusers' code is kept in this repository: `prepare(source, folder)` copies the script from the
checkout the user points to (a work tree, a bare git repository, or the script itself) into a temporary
folder, applies the patches this machine needs, each listed in what it returns (and in every report), and
writes a runner beside it that wraps the script's `save_progress` to record the process's CPU and wall
clock at each save (`--save_steps K`: the embeddings at steps K, 2K, ...). The script itself runs unchanged
otherwise: its data set and loader, VAE encode every step, the full embedding table in AdamW, the restore
of the other rows, accelerate.

`ours_main` is the same kind of child process for this package's public trainer (`train(TrainConfig)`):
it loads the same saved pipeline folder, trains, and records the clocks (and, at checked steps, the soft
vectors) after each step. Both children's CPU seconds count from process start: imports, loading and
set-up included.

`save_pipeline(pipe, folder)` writes a pipeline for the script to load (`--pretrained_model_name_or_path`),
every component in fp32: the shipped toy world has an fp16 text encoder, in which diffusers' script trains
into NaN (its AdamW updates the fp16 table itself).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = "examples/textual_inversion/textual_inversion.py"

# (what and why, the text to replace, its replacement)
PATCHES = [
    (
        "torchvision is not installed here (its wheels fail beside this torch): `from torchvision import "
        "transforms` dropped and `transforms.RandomHorizontalFlip(p)` replaced by the same flip in PIL "
        "(`torch.rand(1) < p`, the same draw torchvision makes)",
        [
            ("from torchvision import transforms\n", ""),
            (
                "self.flip_transform = transforms.RandomHorizontalFlip(p=self.flip_p)",
                "self.flip_transform = lambda im, p=self.flip_p: (\n"
                "            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < p else im\n"
                "        )",
            ),
        ],
    ),
]


def script_text(source: str | Path) -> tuple[str, str]:
    """The script's text and where it came from: `source` is the script, a diffusers work tree, or a bare
    git repository of diffusers (its HEAD)."""
    source = Path(source)
    if source.is_file():
        return source.read_text(), str(source)
    if (source / SCRIPT).is_file():
        return (source / SCRIPT).read_text(), str(source / SCRIPT)
    if (source / "HEAD").is_file() and (source / "objects").is_dir():
        rev = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        text = subprocess.run(
            ["git", "-C", str(source), "show", f"HEAD:{SCRIPT}"], check=True, capture_output=True, text=True
        ).stdout
        return text, f"{source} at {rev[:12]}:{SCRIPT}"
    raise SystemExit(f"--diffusers-repo {source}: neither the script nor a diffusers checkout holding {SCRIPT}")


def _needs_version_patch(text: str) -> str | None:
    """The script's check_min_version("X"), if the installed diffusers is older than X (else None)."""
    import diffusers
    from packaging import version

    m = re.search(r'check_min_version\("([^"]+)"\)', text)
    if m and version.parse(diffusers.__version__) < version.parse(m.group(1)):
        return m.group(0)
    return None


RUNNER = '''"""Runs the patched textual_inversion.py with save_progress wrapped to record the clocks (benchmark use)."""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import textual_inversion as ti

LOG = os.environ["TI_BENCH_LOG"]
real = ti.save_progress


def mark(what):
    with open(LOG, "a") as f:
        f.write(json.dumps({"at": what, "cpu_s": time.process_time(), "time": time.time(),
                            "threads": torch.get_num_threads()}) + "\\n")


def save_progress(text_encoder, placeholder_token_ids, accelerator, args, save_path, **kw):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    name = os.path.basename(save_path)
    step = name.split("-steps-")[1].split(".")[0] if "-steps-" in name else "end"
    mark(step)
    real(text_encoder, placeholder_token_ids, accelerator, args, save_path, **kw)
    if step == "end" and torch.cuda.is_available():
        with open(LOG, "a") as f:
            f.write(json.dumps({"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20}) + "\\n")


ti.save_progress = save_progress
mark("start")
sys.argv = ["textual_inversion.py"] + sys.argv[1:]
ti.main()
'''


def prepare(source: str | Path, folder: Path) -> tuple[Path, list[str]]:
    """The patched copy's runner in `folder`, and the patches applied (with where the script came from)."""
    text, origin = script_text(source)
    applied = [f"source: {origin}"]
    for why, edits in PATCHES:
        for old, new in edits:
            if old not in text:
                raise SystemExit(f"diffusers' script changed: cannot apply the patch ({why}): {old!r} not found")
            text = text.replace(old, new)
        applied.append(why)
    check = _needs_version_patch(text)
    if check:
        import diffusers

        text = text.replace(check, f"pass  # {check}")
        applied.append(f"{check} removed (installed diffusers is {diffusers.__version__})")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "textual_inversion.py").write_text(text)
    (folder / "run_textual_inversion.py").write_text(RUNNER)
    return folder / "run_textual_inversion.py", applied


def model_folder(model: str | None) -> Path | None:
    """The folder a --model name loads from, where it is one on disk (the toy world's included)."""
    if model == "toyworld":
        from sd_softprompt.models import toyworld

        return Path(toyworld.__file__).parent / "model"
    return Path(model) if model and Path(model).is_dir() else None


def stored_dtypes(folder: Path | None) -> dict[str, str]:
    """Each component's dtype as stored in `folder`'s safetensors files (its first tensor's)."""
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*/*.safetensors")) if folder else []:
        with safe_open(str(f), "pt") as st:
            out[f.parent.name] = str(st.get_tensor(next(iter(st.keys()))).dtype).replace("torch.", "")
    return out


def save_pipeline(pipe, folder: Path, source: Path | None = None) -> list[str]:
    """`pipe` saved for the script, all in fp32; returns notes on what was converted (against the dtypes
    stored in `source`, the folder it was loaded from, when given)."""
    import torch

    notes = [
        f"{name}: stored in {dtype} in {source}; the copy the script loads is fp32"
        for name, dtype in stored_dtypes(source).items()
        if dtype != "float32"
    ]
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and next(module.parameters()).dtype != torch.float32:
            notes.append(f"{name} converted from {next(module.parameters()).dtype} to fp32 in the saved copy")
            module.to(torch.float32)
    pipe.save_pretrained(folder, safe_serialization=True)
    return notes


def child_env(threads: int | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "scripts"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def timed_child(cmd: list[str], env: dict, log: Path, quiet: bool = True, timeout: float | None = None) -> dict:
    """Runs `cmd`; the whole process's CPU seconds (rusage) and wall seconds, and the marks it logged. Past
    `timeout` seconds the child is killed and RuntimeError raised."""
    log.unlink(missing_ok=True)
    env = dict(env, TI_BENCH_LOG=str(log))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE if quiet else None, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"stopped at the time budget ({timeout:.0f} s)") from None
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{(err or '')[-3000:]}")
    marks, extra = [], {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "at" in rec:
            rec["wall_s"] = rec.pop("time") - t0
            marks.append(rec)
        else:
            extra |= rec
    return {"wall_s": wall, "cpu_s": cpu, "marks": marks, **extra}


def script_command(
    runner: Path,
    model: Path,
    images: Path,
    out: Path,
    steps: int,
    batch_size: int,
    resolution: int,
    save_steps: int,
    initializer: str,
    seed: int = 0,
    lr: float = 5e-4,
    scale_lr: bool = True,
    vectors: int = 1,
    mixed_precision: str = "no",
    extra: list[str] | None = None,
) -> list[str]:
    """The script's documented recipe (its README: lr 5e-4 with --scale_lr, constant, no warm-up) at this
    batch size, one process, no tracker."""
    cmd = [
        sys.executable,
        str(runner),
        f"--pretrained_model_name_or_path={model}",
        f"--train_data_dir={images}",
        "--learnable_property=object",
        "--placeholder_token=<concept>",
        f"--initializer_token={initializer}",
        f"--resolution={resolution}",
        f"--train_batch_size={batch_size}",
        f"--max_train_steps={steps}",
        f"--learning_rate={lr}",
        "--lr_scheduler=constant",
        "--lr_warmup_steps=0",
        f"--save_steps={save_steps}",
        f"--checkpointing_steps={10**9}",
        f"--num_vectors={vectors}",
        f"--seed={seed}",
        f"--mixed_precision={mixed_precision}",
        "--report_to=all",  # no tracker is installed here: 'all' starts none (the default, tensorboard, fails)
        f"--output_dir={out}",
    ]
    if scale_lr:
        cmd.append("--scale_lr")
    return cmd + (extra or [])


def ours_command(cfg: dict, log: Path, save_at: list[int] | None = None, setup: dict | None = None) -> list[str]:
    """This package's trainer in a child process: `cfg` the TrainConfig fields."""
    payload = {"cfg": cfg, "save_at": save_at or [], "setup": setup or {}}
    return [sys.executable, str(Path(__file__).resolve()), "ours", json.dumps(payload), str(log)]


def ours_main(payload: str, log: str) -> None:
    """The child: `train(TrainConfig(**cfg))`, with the clocks (and, at `save_at` steps, the soft vectors)
    recorded after each step."""
    import torch

    from sd_softprompt.train import TrainConfig, train

    args = json.loads(payload)
    if args["setup"].get("threads"):
        torch.set_num_threads(args["setup"]["threads"])
    save_at = set(args["save_at"])
    saved: dict[str, torch.Tensor] = {}
    records = [{"at": "start", "cpu_s": time.process_time(), "time": time.time()}]
    cfg = TrainConfig(**args["cfg"])
    cuda = (cfg.device or "").startswith("cuda")
    holder: dict = {}

    from contextlib import contextmanager

    @contextmanager
    def around_step(step: int):
        yield
        if cuda:
            torch.cuda.synchronize()
        records.append({"at": str(step + 1), "cpu_s": time.process_time(), "time": time.time()})
        if step + 1 in save_at:
            pipe = holder.get("pipe")
            emb = pipe.text_encoder.get_input_embeddings()
            saved[str(step + 1)] = emb.vectors.detach().float().cpu().clone()

    pipe = None
    if args["setup"].get("compile") or args["setup"].get("channels_last") or save_at:
        from sd_softprompt.families import detect_family
        from sd_softprompt.models.pipeline import load_pipeline

        pipe = load_pipeline(cfg.model, device=cfg.device, dtype=args["setup"].get("dtype"), progress=False)
        denoiser = getattr(pipe, detect_family(pipe).denoiser)
        if args["setup"].get("channels_last"):
            denoiser.to(memory_format=torch.channels_last)
        if args["setup"].get("compile"):
            denoiser.compile_repeated_blocks()
        holder["pipe"] = pipe
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train(cfg, pipe=pipe, around_step=around_step)
    records.append({"at": "end", "cpu_s": time.process_time(), "time": time.time()})
    records.append({"threads": torch.get_num_threads()})
    if cuda:
        records.append({"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20})
    if saved:
        import safetensors.torch

        safetensors.torch.save_file(saved, log + ".vectors.safetensors")
    Path(log).write_text("".join(json.dumps(r) + "\n" for r in records))


def per_step(marks: list[dict], first: int, last: int) -> tuple[float, float]:
    """CPU and wall seconds per step between the marks at steps `first` and `last`."""
    at = {m["at"]: m for m in marks}
    a, b = at[str(first)], at[str(last)]
    return (b["cpu_s"] - a["cpu_s"]) / (last - first), (b["wall_s"] - a["wall_s"]) / (last - first)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "ours":
        ours_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: diffusers_script.py ours PAYLOAD LOG  (a child of the benchmark scripts)")
