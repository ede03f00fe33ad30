"""End to end, offline, on a CPU in about a minute (65 s measured): train a soft prompt, load it, draw a grid, inspect it.

By default on the toy world (the built-in ``toyworld`` model): a small pipeline trained on rendered landscapes, so the
grid shows scenes and the judge measures fidelity in pictures (F). ``--family sd1|sdxl|flux`` runs the same
steps on a tiny random-weight pipeline instead: its images are noise; it shows that every step runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..families import FAMILIES
from ..files.atomic import atomic_write
from ..inject.inspection import format_inspection, inspect_file
from ..inject.loader import load_soft_prompt
from ..models.pipeline import load_pipeline
from ..models.tiny import save_tiny
from ..render.generate import run_grid

TARGET = "image of serene landscape at sunrise with trees mountains and lake"
CONTEXT = "mountain view"
VECTORS = 3
TRAIN_STEPS = 150  # text mode on a tiny model: seconds
TOYWORLD_STEPS = 60  # text mode on the toy world: about half the demo's time goes to drawing the F pictures
GENERATE_STEPS = 8
SIZE = 64  # the tiny models' and the toy world's native size
SEEDS = [0, 1, 2]
DEMO_FAMILIES = ("sd1", "sdxl", "flux")


def demo_prompts(tokens: list[str]) -> list[str]:
    """Tiny-model grid rows: the soft prompt, the hard prompt it stands for, the hard prompt cut to as many
    words, the bare context."""
    return [
        f"{''.join(tokens)} {CONTEXT}",
        f"{TARGET} {CONTEXT}",
        f"{' '.join(TARGET.split()[: len(tokens)])} {CONTEXT}",
        CONTEXT,
    ]


def toyworld_rows(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Toy-world grid rows (prompts, labels): the rows the F table measures, alone and one composed."""
    from ..models.toyworld.fidelity import COMPOSE

    soft, first = "".join(tokens), " ".join(TARGET.split()[: len(tokens)])
    prompts = [soft, TARGET, first, "", f"{soft} {COMPOSE}"]
    labels = [f"soft: {soft}", f"hard: {TARGET}", f"first {len(tokens)} words: {first}", "empty prompt", prompts[4]]
    return prompts, labels


def run_demo(
    out_dir: str | Path = "samples/demo",
    family: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    *,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole demo into ``out_dir``; return what was written where (and the training metrics).

    ``family`` None: the toy world; ``sd1``/``sdxl``/``flux``: that family's tiny random-weight pipeline."""
    if family is not None and family not in DEMO_FAMILIES:
        raise ConfigError(f"demo family {family!r}: choose one of {', '.join(DEMO_FAMILIES)}")
    with _one_cpu_thread():
        if family is None:
            return _run_toyworld(Path(out_dir), steps or TOYWORLD_STEPS, seed, device, progress)
        return _run_tiny(Path(out_dir), family, steps or TRAIN_STEPS, seed, device, progress)


@contextlib.contextmanager
def _one_cpu_thread() -> Iterator[None]:
    """Small models' ops are too small to gain from threads, and on a busy machine threads that wait
    for each other make every op ~100x slower: run the demo on one CPU thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_toyworld(out_dir: Path, steps: int, seed: int, device: str | None, progress: bool) -> dict[str, Any]:
    from ..models.toyworld import fidelity as fid
    from ..models.toyworld.model import NAME

    started = time.perf_counter()
    pipe = load_pipeline(NAME, device=device, progress=progress)
    trained = _train(pipe, NAME, out_dir / "sunrise.safetensors", steps, seed, device, progress)
    tokens = load_soft_prompt(pipe, trained["soft_prompt"])
    prompts, labels = toyworld_rows(tokens)
    # the pictures the F table judged: same seeds, steps and guidance
    grid, grid_json = run_grid(
        pipe,
        prompts,
        list(fid.SEEDS),
        steps=fid.STEPS,
        guidance=fid.GUIDANCE,
        height=fid.SIZE,
        width=fid.SIZE,
        model_name=f"{NAME} (trained on rendered landscapes)",
        out=out_dir / "grid.png",
        soft_files=[str(trained["soft_prompt"])],
        progress=progress,
        labels=labels,
        drawn=trained["pictures"],
    )
    return {
        "model": NAME,
        "model_dir": pipe.config._name_or_path,
        **{k: v for k, v in trained.items() if k != "pictures"},
        "grid": grid,
        "grid_json": grid_json,
        "inspect": _write_inspection(out_dir, trained["soft_prompt"], pipe),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _run_tiny(out_dir: Path, family: str, steps: int, seed: int, device: str | None, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    model_dir = save_tiny(family, out_dir / f"tiny-{family}", seed=seed)
    pipe = load_pipeline(str(model_dir), device=device, progress=progress)
    trained = _train(pipe, str(model_dir), out_dir / "sunrise.safetensors", steps, seed, device, progress)
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
    return {
        "family": family,
        "model_dir": model_dir,
        **{k: v for k, v in trained.items() if k != "pictures"},
        "grid": grid,
        "grid_json": grid_json,
        "inspect": _write_inspection(out_dir, trained["soft_prompt"], pipe),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _write_inspection(out_dir: Path, soft_prompt: Path, pipe) -> Path:
    path = out_dir / "inspect.txt"
    report = format_inspection(inspect_file(soft_prompt, pipe))
    atomic_write([(path, lambda tmp: tmp.write_text(report + "\n", "utf-8"))])
    return path


def _train(pipe, model: str, out: Path, steps: int, seed: int, device: str | None, progress: bool) -> dict:
    """Text-mode training of the sunrise soft prompt on the demo's pipeline."""
    from ..train import TrainConfig, train

    config = TrainConfig(
        model=model,
        out=str(out),
        mode="text",
        target=TARGET,
        vectors=VECTORS,
        steps=steps,
        seed=seed,
        name="sunrise",
        device=device,
        progress=progress,
        probe_size=SIZE,  # the model's own image size keeps the measure at a fraction of a second
    )
    result = train(config, pipe=pipe)
    return {
        "soft_prompt": result.soft_prompt,
        "report": result.report,
        "metrics": result.metrics,
        "pictures": result.pictures,
    }


def describe(result: dict[str, Any]) -> str:
    """Where everything went, and what the pictures show (on the toy world, the F table; else noise)."""
    toy = "fidelity" in (result.get("metrics") or {})
    what = f"toy world, {result['model_dir']}" if toy else f"tiny-{result.get('family')}, {result['model_dir']}"
    lines = [
        f"demo done in {result['seconds']} s, everything under {Path(result['grid']).parent}/",
        f"  model         {what}",
        f"  soft prompt   {result['soft_prompt']}  (3 vectors, text mode, from: {TARGET})",
        f"  train report  {result['report']}",
        f"  grid          {result['grid']}  (+ {Path(result['grid_json']).name}: what was run)",
        f"  inspection    {result['inspect']}",
        "",
    ]
    if toy:
        from ..models.toyworld.fidelity import COMPOSE, SEEDS, format_table

        lines += [
            f"Prompt fidelity F: the share of the hard prompt's attributes the toy judge finds in {len(SEEDS)} pictures",
            f"(the grid's). Alone: sunrise, trees, mountains, lake; composed ('{COMPOSE}' appended): snow too.",
            format_table(result["metrics"]["fidelity"]),
        ]
    else:
        lines += [
            "The tiny model has random weights, so every image in the grid is noise. The demo shows that",
            "training, loading, generating, comparing and inspecting run end to end; for pictures that mean",
            "something run it without --family (the toy world), or the same commands with --model on a real",
            "pipeline (e.g. stabilityai/stable-diffusion-xl-base-1.0).",
        ]
    return "\n".join(lines)
