"""`train()`: set up a run, hand it to the loop (loop.py), then measure and write the soft prompt.

text   (prompt distillation): make "<soft> <context>" act like "<hard prompt> <context>" on the frozen
                              denoiser (or, with --loss sequence, on the encoders' states alone); no images
images (textual inversion):   the denoiser's own loss on cached VAE latents of a folder of pictures

The settings are config.py's (checked by checks.py), the loop with its step and schedule loop.py's, the
objectives objectives.py's and the losses losses.py's, the trainable rows rows.py's, checkpoints
checkpoints.py's. A built-in model's own measure (the toy world's F in pictures) is looked up from its entry
in models/builtin.py.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..errors import ConfigError, TrainingDiverged, WriteError
from ..families import Family, detect_family, prompt_tokens
from ..files.atomic import atomic_write, together, write_json
from ..files.softprompt import SoftPrompt
from ..inject.loader import load_soft_prompt, unload_soft_prompt
from ..models.builtin import builtin_of
from .card import card_path, model_card, push
from .checkpoints import check_before_run, checkpoint_path, resume_hint
from .checks import check_config, read_target
from .config import TrainConfig
from .config_file import config_toml
from .loop import LoopResult, Run, StepHook, lr_factor, run_loop, unused_in_loop
from .measure import EVAL_CONTEXTS, Probe, distance_report, join, negative_report
from .objectives import positives_for, training_resolution
from .rows import auto_vectors, initial_vectors, moved_to, vocab_norm
from .tracking import accelerator_options, finish_tracking, log_final, log_image, start_tracking

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "check_config",
    "lr_factor",
    "train",
    "unused_in_loop",
]


@dataclass
class TrainResult:
    soft_prompt: Path  # the written soft prompt file
    report: Path  # the report JSON beside it
    metrics: dict  # what the report holds
    pictures: dict = field(default_factory=dict)  # toy world: the pictures F judged, by prompt (one per seed)
    config: Path | None = None  # <out stem>.config.toml: `train --config` on it repeats the run
    card: Path | None = None  # the model card (README.md beside the soft prompt), unless --no-model-card
    hub_url: str | None = None  # with --push-to-hub: the commit uploaded


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _setup(cfg: TrainConfig, pipe) -> tuple[Run, TrainConfig]:
    """The loop's Run, and the config with what the model decides filled in (--vectors auto)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps its mixed-precision setting in a process-wide singleton; reset it (not the process
    # group) so that train() can be called again in the same process with another precision.
    AcceleratorState._reset_state()
    try:
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu", **accelerator_options(cfg)
        )
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"--mixed-precision {cfg.mixed_precision}: not available here ({e})") from None
    log = (lambda m: print(f"sd-softprompt: {m}", flush=True)) if accelerator.is_main_process else (lambda m: None)
    if pipe is None:
        from ..models.pipeline import load_pipeline

        dtype = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[
            cfg.mixed_precision
        ]  # frozen models in the training dtype
        pipe = load_pipeline(cfg.model, device=str(accelerator.device), dtype=dtype, progress=False)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    family = detect_family(pipe)
    if cfg.role == "negative" or cfg.negative_prompt:
        try:  # the family's own refusal (Flux takes no negative prompt), before any work
            family.call_kwargs(pipe, cfg.negative_prompt or cfg.target)
        except ConfigError as e:
            if cfg.role != "negative":
                raise
            raise ConfigError(f"--role negative: {str(e).split(';')[0]}; leave --role negative out") from None
    keys = cfg.encoders or list(family.keys)
    unknown = [k for k in keys if k not in family.keys]
    if unknown:
        raise ConfigError(f"--encoders {unknown}: a {family.name} model has {', '.join(family.keys)}")
    if cfg.vectors == "auto":  # N from the target's length, in the tokens this model's encoders count
        cfg = replace(cfg, vectors=auto_vectors(pipe, family, cfg.target))
        log(f"--vectors auto: {cfg.vectors} vectors for the {prompt_tokens(pipe, family, cfg.target)[0]}-token target")
    # Initial vectors go in like any soft prompt; the trained encoders then read their rows from params.
    if cfg.init == "hard" and not cfg.target:
        log(
            "--init hard without --target: starting from random vectors at the vocabulary's norm "
            "(--init words --init-words WORD starts from a word for what the pictures show)"
        )
    init = initial_vectors(pipe, family, cfg, torch.Generator().manual_seed(cfg.seed))
    soft = SoftPrompt(vectors=init, tokens=cfg.tokens)
    tokens = load_soft_prompt(pipe, soft, family=family, allow_shadowing=cfg.allow_shadowing)
    vectors = {k: torch.nn.Parameter(init[k].to(accelerator.device, torch.float32)) for k in keys}
    return Run(accelerator, pipe, family, tokens, init, vectors, log), cfg


def train(cfg: TrainConfig, pipe=None, *, around_step: StepHook | None = None) -> TrainResult:
    """Train a soft prompt; write it (native .safetensors) and a report JSON beside it.

    `pipe`: an already loaded pipeline to train against (its device and dtype are used as they are; it is
    left as it came); by default `cfg.model` is loaded in the dtype that `cfg.mixed_precision` names.
    `around_step(step)`: a context manager wrapped around each step's work (loss, backward, optimizer), for
    instruments such as a profiler or a FLOP counter (scripts/benchmark_train.py); the step's phases are
    labelled with torch.profiler.record_function.

    Example:

    ```py
    from sd_softprompt.train import TrainConfig, train

    cfg = TrainConfig(
        model="toyworld",  # the shipped toy model, offline; a hub id or folder trains a real one
        out="sunrise.safetensors",
        target="image of serene landscape at sunrise with trees mountains and lake",
        vectors=3,
    )
    result = train(cfg)  # sunrise.safetensors and sunrise.report.json
    print(result.metrics["distance"]["alone"]["ratio_to_first_n_words"])
    ```
    """
    cfg = read_target(cfg)
    check_config(cfg)
    check_before_run(cfg)  # a leftover checkpoint, or one of another run: refused before the model loads
    try:
        run, cfg = _setup(cfg, pipe)
        cfg = replace(cfg, resolution=training_resolution(run.pipe, run.family, cfg))  # the model's, unless given
        grids: list[Path] = []  # this run's validation grids

        def validate(step: int) -> None:
            grids.append(_validate(run.pipe, run.family, cfg, "".join(run.tokens), step))
            log_image(run.accelerator, "validation", grids[-1], step)

        try:
            start_tracking(run.accelerator, cfg)
            done = run_loop(cfg, run, around_step or (lambda step: nullcontext()), validate)
            return _finish(cfg, run, done, grids[-1] if grids else None)
        finally:
            unload_soft_prompt(run.pipe, run.tokens, family=run.family)  # also after an error
            finish_tracking(run.accelerator)
    except KeyboardInterrupt:
        # Ctrl-C: say what survives. The CLI prints "interrupted; <this>" and exits 130.
        raise KeyboardInterrupt(resume_hint(cfg)) from None


def _finish(cfg: TrainConfig, run: Run, done: LoopResult, grid: Path | None = None) -> TrainResult:
    """Measure, then write the soft prompt, its report, its config and its model card (main process), drop the
    checkpoint, and push to the Hub if asked. `grid`: the last validation grid drawn."""
    pipe, family, acc, losses = run.pipe, run.family, run.accelerator, done.losses
    # Encoders left out of --encoders keep their initial vectors: the file then behaves as in training.
    final = dict(run.init) | {k: v.detach().float().cpu() for k, v in run.vectors.items()}
    soft = SoftPrompt(vectors=final, tokens=run.tokens)
    load_soft_prompt(pipe, soft, replace=True, family=family, allow_shadowing=cfg.allow_shadowing)
    metrics = {
        "mode": cfg.mode,
        "family": family.name,
        "steps": cfg.steps,
        "losses": losses,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        # the same batch (contexts or images, noise, timesteps) before and after: a noise-free progress figure
        "fixed_batch_loss": done.fixed_batch_loss,
        "setup_time_s": done.setup_s,
        "wall_time_s": done.loop_s,  # the steps alone
        "steps_per_s": (cfg.steps - done.first_step) / done.loop_s if done.loop_s > 0 else None,
        "peak_memory_mb": _peak_memory_mb(acc.device),
        "processes": acc.num_processes,
        # every process must end with the same vectors (gradients are averaged by hand): 0.0 says they did
        "process_vector_spread": _spread_between_processes(acc, run.vectors),
        "vector_norms": {k: v.norm(dim=1).tolist() for k, v in final.items()},
        "vocab_mean_norm": {k: vocab_norm(pipe, family.encoder(k)) for k in final},
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
    }
    soft.metadata = {
        "name": cfg.name or cfg.out_path.stem,
        "family": family.name,
        "objective": done.objective.name,
        "role": cfg.role,
        "steps": str(cfg.steps),
        "target": cfg.target or "",
        "base_model": cfg.model,
        "trained_encoders": ",".join(run.vectors),
        "loss": done.objective.metadata_loss,
        "loss_last": f"{losses[-1]:.6g}",
    }
    report = cfg.out_path.with_name(cfg.out_path.stem + ".report.json")
    config = cfg.out_path.with_name(cfg.out_path.stem + ".config.toml")
    card = card_path(cfg) if cfg.model_card else None
    pictures: dict = {}
    url = None
    if acc.is_main_process:
        if done.objective.measured:
            probe = Probe.make(pipe, family, cfg.eval_samples, cfg.probe_size, seed=12345)
            soft_text, negative = "".join(run.tokens), cfg.role == "negative"
            contexts = [""] if negative else EVAL_CONTEXTS  # a negative prompt is used alone
            metrics["distance"] = distance_report(pipe, family, soft_text, cfg.target, cfg.vectors, probe, contexts)
            for where in ("alone", "composed"):
                for ratio in ("ratio_to_first_n_words", "ratio_to_empty", "ratio_to_truncated"):
                    if ratio in metrics["distance"].get(where, {}):
                        soft.metadata[f"{where}_{ratio}"] = f"{metrics['distance'][where][ratio]:.4g}"
            if negative:
                metrics["guided"] = negative_report(
                    pipe, family, soft_text, cfg.target, cfg.vectors, cfg.probe_size, positives=positives_for(pipe).eval
                )
                soft.metadata["guided_ratio_to_empty"] = f"{metrics['guided']['soft_ratio_to_empty']:.4g}"
        if cfg.mode == "text" and cfg.target:
            pictures = _pictures_measure(pipe, "".join(run.tokens), cfg, metrics, soft.metadata, run.log)
        log_final(acc, metrics, cfg.steps)
        beside = cfg.out_path.parent
        grid_name = Path(os.path.relpath(grid, beside)).as_posix() if grid is not None else None
        try:
            with together():  # the soft prompt, its report, config and card: all or none
                soft.save(cfg.out_path)
                write_json(report, metrics)
                _write_text(config, config_toml(cfg))
                if card is not None:
                    names = {"soft prompt": cfg.out_path.name, "report": report.name, "config": config.name}
                    _write_text(card, model_card(cfg, family, run.tokens, metrics, grid_name, names))
        except WriteError as error:
            raise WriteError(f"{error}; {resume_hint(cfg)}") from None
        checkpoint_path(cfg.out_path).unlink(missing_ok=True)  # the finished file supersedes the checkpoint
        if cfg.push_to_hub:
            files = {p.name: p for p in (cfg.out_path, report, config)}
            files |= {"README.md": card} if card is not None else {}
            files |= {grid_name: grid} if grid is not None else {}
            url = push(cfg.push_to_hub, files, f"sd-softprompt: {cfg.out_path.name} ({cfg.steps} steps)")
            run.log(f"pushed {len(files)} files to {url}")
    acc.wait_for_everyone()
    return TrainResult(cfg.out_path, report, metrics, pictures, config, card, url)


def _write_text(path: Path, text: str) -> None:
    atomic_write([(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))])


def _spread_between_processes(acc, vectors: dict[str, torch.nn.Parameter]) -> float:
    """The largest difference between any process's trained vectors and the main process's."""
    flat = torch.cat([v.detach().float().flatten() for v in vectors.values()]).unsqueeze(0)
    every = acc.gather(flat)  # [processes, numbers]; one process: itself
    return (every - every[:1]).abs().max().item()


def _pictures_measure(pipe, soft_text: str, cfg: TrainConfig, metrics: dict, metadata: dict, log) -> dict:
    """On a built-in model with a picture measure (the toy world), fidelity in pictures. A prompt: F of the
    soft prompt and its baselines, alone and composed (``fidelity``; returns the pictures judged, by prompt,
    so a caller may show them without drawing them again). A negative (--role negative): avoidance and F of
    held-out positives drawn with it and its baselines (``negative_fidelity``), printed too."""
    pictures: dict = {}
    model = builtin_of(pipe)
    if model is None or model.fidelity is None:
        return pictures
    if cfg.role == "negative":
        table = model.negative_fidelity(pipe, soft_text, cfg.target, cfg.vectors, positives_for(pipe).eval)
        metrics["negative_fidelity"] = table
        for name, row in table.items():
            for column, key in (("avoidance", f"avoidance_{name}"), ("F", f"F_{name}_positive")):
                if row[column] is not None:
                    metadata[key] = f"{row[column]:.4g}"
        log(
            "the negative in pictures (held-out positives; avoidance of its attributes, F of theirs):\n"
            + model.format_negative_fidelity(table)
        )
        return pictures
    metrics["fidelity"] = model.fidelity(pipe, soft_text, cfg.target, cfg.vectors, pictures)
    for name, row in metrics["fidelity"].items():
        for where, value in row.items():
            metadata[f"F_{name}_{where}"] = f"{value:.4g}"
    return pictures


def _validate(pipe, family: Family, cfg: TrainConfig, soft_text: str, step: int) -> Path:
    """A small grid of the validation prompts at fixed seeds, next to the checkpoints; its path.

    A negative soft prompt is shown as what it is for: the first validation prompt (default: a held-out
    positive) drawn with the soft negative, the hard negative and none."""
    from ..render.generate import run_grid

    prompts = [p.replace("{}", soft_text) for p in cfg.validation_prompts]
    negative = cfg.negative_prompt.replace("{}", soft_text) if cfg.negative_prompt else None
    labels = None
    if cfg.role == "negative":
        positive = prompts[0] if prompts else positives_for(pipe).eval[0]
        prompts, negative = [positive] * 3, [soft_text, cfg.target, None]
        labels = [
            f"{positive} | negative: {soft_text}",
            f"{positive} | negative: the hard one",
            f"{positive} | no negative",
        ]
    elif not prompts:
        prompts = (
            [join(soft_text, "mountain view"), join(cfg.target, "mountain view")]
            if cfg.mode == "text"
            else [f"a photo of {soft_text}"]
        )
    folder = cfg.out_path.with_name(cfg.out_path.stem + ".validation")  # atomic_write makes it
    # text mode has no training pictures: draw at the size it measures at (--probe-size), if one is set
    size = cfg.probe_size if cfg.mode == "text" and cfg.probe_size else min(cfg.resolution, 512)
    device = pipe.text_encoder.device  # parked parts come back for the grid
    with moved_to(pipe, ["vae", family.denoiser], device):
        return run_grid(
            pipe,
            prompts,
            cfg.validation_seeds,
            steps=20,
            guidance=5.0,
            height=size,
            width=size,
            model_name=cfg.model,
            out=folder / f"step_{step:06d}.png",
            negative_prompt=negative,
            progress=False,
            family=family,
            labels=labels,
        )[0]
