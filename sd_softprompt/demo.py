"""End to end, offline, on a CPU in about a minute: tiny model -> train -> load -> grid -> inspect.

The tiny model has random weights, so its images are noise: the demo shows that every step runs and
what each one writes, not what a soft prompt looks like on a real model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .errors import ConfigError
from .families import FAMILIES
from .generate import run_grid
from .inspection import format_inspection, inspect_file
from .loader import load_soft_prompt
from .pipeline import load_pipeline
from .tiny import save_tiny

TARGET = "image of serene landscape at sunrise with trees mountains and lake"
CONTEXT = "mountain view"
VECTORS = 3
TRAIN_STEPS = 150  # text mode on a tiny model: seconds
GENERATE_STEPS = 8
SIZE = 64  # the tiny models' native size
SEEDS = [0, 1, 2]
DEMO_FAMILIES = ("sd1", "sdxl", "flux")


def demo_prompts(tokens: list[str]) -> list[str]:
    """Grid rows: the soft prompt, the hard prompt it stands for, the hard prompt cut to as many words, the bare context."""
    return [
        f"{''.join(tokens)} {CONTEXT}",
        f"{TARGET} {CONTEXT}",
        f"{' '.join(TARGET.split()[: len(tokens)])} {CONTEXT}",
        CONTEXT,
    ]


def run_demo(
    out_dir: str | Path = "samples/demo",
    family: str = "sd1",
    steps: int = TRAIN_STEPS,
    seed: int = 0,
    *,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole demo into ``out_dir``; return what was written where (and the training metrics)."""
    if family not in DEMO_FAMILIES:
        raise ConfigError(f"demo family {family!r}: choose one of {', '.join(DEMO_FAMILIES)}")
    with _one_cpu_thread():
        return _run(Path(out_dir), family, steps, seed, device, progress)


@contextlib.contextmanager
def _one_cpu_thread() -> Iterator[None]:
    """Tiny models' ops are too small to gain from threads, and on a busy machine threads that wait
    for each other make every op ~100x slower: run the demo on one CPU thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(out_dir: Path, family: str, steps: int, seed: int, device: str | None, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    model_dir = save_tiny(family, out_dir / f"tiny-{family}", seed=seed)
    pipe = load_pipeline(str(model_dir), device=device, progress=progress)
    soft_path = out_dir / "sunrise.safetensors"

    trained = _train(pipe, model_dir, soft_path, steps, seed, device, progress)

    tokens = load_soft_prompt(pipe, trained["soft_prompt"])
    grid, grid_json = run_grid(
        pipe,
        demo_prompts(tokens),
        SEEDS,
        steps=GENERATE_STEPS,
        guidance=FAMILIES[family].guidance,
        height=SIZE,
        width=SIZE,
        model_name=f"tiny-{family} (random weights)",
        out=out_dir / "grid.png",
        soft_files=[str(trained["soft_prompt"])],
        progress=progress,
    )
    inspect_path = out_dir / "inspect.txt"
    report = format_inspection(inspect_file(trained["soft_prompt"], pipe))
    atomic_write([(inspect_path, lambda tmp: tmp.write_text(report + "\n", "utf-8"))])
    return {
        "family": family,
        "model_dir": model_dir,
        **trained,
        "grid": grid,
        "grid_json": grid_json,
        "inspect": inspect_path,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _train(pipe, model_dir: Path, out: Path, steps: int, seed: int, device: str | None, progress: bool) -> dict:
    """Text-mode training of the sunrise soft prompt on the demo's pipeline."""
    from .train import TrainConfig, train

    config = TrainConfig(
        model=str(model_dir),
        out=str(out),
        mode="text",
        target=TARGET,
        vectors=VECTORS,
        steps=steps,
        seed=seed,
        name="sunrise",
        device=device,
        progress=progress,
        probe_size=SIZE,  # the tiny model's own image size keeps the measure at a fraction of a second
    )
    result = train(config, pipe=pipe)
    return {"soft_prompt": result.soft_prompt, "report": result.report, "metrics": result.metrics}


def describe(result: dict[str, Any]) -> str:
    """Where everything went, and what the pictures are (noise)."""
    lines = [
        f"demo ({result['family']}) done in {result['seconds']} s, everything under {Path(result['grid']).parent}/",
        f"  tiny model    {result['model_dir']}",
        f"  soft prompt   {result['soft_prompt']}  (trained in text mode)",
    ]
    lines.append(f"  train report  {result['report']}")
    lines += [
        f"  grid          {result['grid']}  (+ {Path(result['grid_json']).name}: what was run)",
        f"  inspection    {result['inspect']}",
        "",
        "The tiny model has random weights, so every image in the grid is noise. The demo shows that",
        "training, loading, generating, comparing and inspecting run end to end; for real pictures,",
        "run the same commands with --model on a real pipeline (e.g. stabilityai/stable-diffusion-xl-base-1.0).",
    ]
    return "\n".join(lines)
