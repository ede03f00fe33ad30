"""Training checkpoints: the vectors, optimizer state, step and seed, written atomically, and resumed only by
the run they belong to.

A checkpoint records every setting that changes what is learned (all of TrainConfig but `MAY_CHANGE`, with
the picture folder as a hash of its contents), and `--resume` continues it only when they all agree: otherwise
one short line names the settings that differ. A checkpoint left by an unfinished run is never overwritten by
a run without `--resume`: the run is refused, saying how to continue the checkpoint or start over.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import torch

from ..errors import ConfigError, WriteError, shorten
from ..files.atomic import atomic_write, bytes_writer, torch_bytes
from .config import TrainConfig
from .data import fingerprint

VERSION = 2  # 1: the first layout, whose "run" held six settings
# Settings a resumed run may change: how long and how fast it goes (a diverged run resumes with a lower --lr),
# and what it writes and shows besides the vectors. Every other field, new ones included, must agree.
MAY_CHANGE = frozenset(
    {
        "out",
        "steps",
        "lr",
        "warmup",
        "schedule",
        "max_grad_norm",
        "mixed_precision",
        "checkpoint_every",
        "resume",
        "validate_every",
        "validation_prompts",
        "validation_seeds",
        "negative_prompt",
        "name",
        "eval_samples",
        "device",
        "offload",
        "progress",
        "allow_shadowing",
        "target_file",  # read into target, which is compared
        "log_with",  # where the run is logged, its card and its upload: nothing of what is learned
        "log_dir",
        "model_card",
        "push_to_hub",
    }
)


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.stem + ".checkpoint.pt")


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def _run_key(cfg: TrainConfig) -> dict:
    """What a checkpoint must agree on to be resumed: every setting but MAY_CHANGE; the picture folder by content."""
    key = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig) if f.name not in MAY_CHANGE}
    key["images"] = fingerprint(cfg.images) if cfg.mode == "images" and cfg.images else None
    return key


def _flag(name: str) -> str:
    for f in fields(TrainConfig):
        if f.name == name:
            return f.metadata.get("flag") or "--" + name.replace("_", "-")
    return name


def _shown(value) -> str:
    return "unset" if value is None else shorten(" ".join(map(str, value)) if isinstance(value, list) else value, 24)


def _differences(recorded: dict, key: dict) -> str:
    """``--encoders clip_l (checkpoint: unset), --images (other pictures)``: the first few settings that differ."""
    differ = [name for name in key if recorded.get(name, ...) != key[name]]
    differ += [name for name in recorded if name not in key]
    parts = []
    for name in differ[:3]:
        if name == "images":
            parts.append("--images (other pictures)")
        elif name not in key:
            parts.append(f"{shorten(name, 24)} (only the checkpoint's)")
        else:
            parts.append(f"{_flag(name)} {_shown(key[name])} (checkpoint: {_shown(recorded.get(name))})")
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    return ", ".join(parts) + more


def save_checkpoint(path: Path, cfg: TrainConfig, step: int, vectors, optimizer, losses: list[float]) -> None:
    state = {
        "version": VERSION,
        "run": _run_key(cfg),
        "step": step,
        "vectors": {k: v.detach().cpu().clone() for k, v in vectors.items()},
        "optimizer": optimizer.state_dict(),
        # The data RNG is re-seeded from (seed, step, rank) every step, so (seed, step) is its whole state.
        "rng": {"seed": cfg.seed, "torch": torch.get_rng_state()},
        "losses": losses,
    }
    atomic_write([(path, bytes_writer(torch_bytes(state)))])  # in memory first: see atomic.py


def _read(path: Path):
    """The checkpoint's contents, or ConfigError; never opens what is not a regular file (a FIFO would block)."""
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file where the checkpoint belongs; remove it or change --out")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"{path}: cannot read this checkpoint ({type(e).__name__}); delete it to start over"
        ) from None


def _step_of(path: Path) -> str:
    try:
        return f" (step {int(_read(path)['step'])})"
    except Exception:  # unreadable: still the file to resume from or delete, as --resume will say
        return ""


def resume_hint(cfg: TrainConfig) -> str:
    """Where the run's last checkpoint is and how to go on from it, or that there is none yet."""
    ckpt = checkpoint_path(cfg.out_path)
    if not ckpt.exists():
        every = f"one every {cfg.checkpoint_every} steps" if cfg.checkpoint_every else "--checkpoint-every 0"
        return f"no checkpoint was written yet ({every}); rerunning starts over"
    return f"the last checkpoint is {ckpt}{_step_of(ckpt)}: rerun the same command with --resume to continue from it"


def check_before_run(cfg: TrainConfig) -> None:
    """Before the model loads: no folder where the run's files go, no unfinished run's checkpoint overwritten
    by a run without --resume, and with --resume a checkpoint of this very run."""
    ckpt, report = checkpoint_path(cfg.out_path), report_path(cfg.out_path)
    for path, what in ((report, "report"), (ckpt, "checkpoint")):
        if path.is_dir():
            raise ConfigError(f"{path}: a folder where the run writes its {what}; move it or choose another --out")
    if not ckpt.exists():
        return
    if not cfg.resume:
        raise ConfigError(
            f"{ckpt}: an unfinished run's checkpoint{_step_of(ckpt)} is there; add --resume to continue it, "
            f"or delete it to start over"
        )
    load_checkpoint(ckpt, cfg, resolved=False)


def save_checkpoint_or_warn(
    path: Path, cfg: TrainConfig, step: int, vectors, optimizer, losses: list[float], log
) -> None:
    """A checkpoint that cannot be written (full disk) is not worth stopping for: the previous one is kept.
    Neither is one whose vectors are not finite: the previous one stays the last good one."""
    if not all(bool(torch.isfinite(v).all()) for v in vectors.values()):
        log(f"warning: step {step}: the vectors are not finite (NaN/inf); the previous checkpoint is kept")
        return
    try:
        save_checkpoint(path, cfg, step, vectors, optimizer, losses)
    except WriteError as error:
        log(f"warning: step {step}: {error}; the previous checkpoint is kept and training goes on")


def _finite(value) -> bool:
    """Whether every tensor and number in a (nested) checkpoint value is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


# Settings left unset (None) are the model's own, known only once it is loaded (--resolution: its native size):
# before the model loads they are compared only when given.
RESOLVED_LATER = ("resolution", "vectors")  # --vectors auto: N from the target, counted by the model's tokenizer


def load_checkpoint(path: Path, cfg: TrainConfig, *, resolved: bool = True) -> dict:
    """The checkpoint of this run, checked: its layout, its settings against `cfg`, finite numbers.

    `resolved=False`: `cfg` as given, before the model resolves RESOLVED_LATER (the trainer checks again after)."""
    state = _read(path)
    fix = "delete it to start over"
    if not isinstance(state, dict) or not isinstance(state.get("run"), dict):
        raise ConfigError(f"{path}: holds a {type(state).__name__}, not a training checkpoint; {fix}")
    if state.get("version") != VERSION:
        raise ConfigError(f"{path}: a checkpoint from another version of sd-softprompt; {fix}")
    key, recorded = _run_key(cfg), state["run"]
    if not resolved:
        unset = [name for name in RESOLVED_LATER if key.get(name) in (None, "auto")]
        key = {k: v for k, v in key.items() if k not in unset}
        recorded = {k: v for k, v in recorded.items() if k not in unset}
    if recorded != key:
        raise ConfigError(
            f"{path}: a checkpoint of another run: {_differences(recorded, key)}; resume with its settings, or {fix}"
        )
    step, vectors, losses = state.get("step"), state.get("vectors"), state.get("losses")
    if (
        not isinstance(step, int)
        or not isinstance(vectors, dict)
        or not all(isinstance(v, torch.Tensor) and v.dim() == 2 for v in vectors.values())
        or not isinstance(state.get("optimizer"), dict)
        or not isinstance(losses, list)
        or len(losses) != step
    ):
        raise ConfigError(f"{path}: a damaged checkpoint (its step, vectors, optimizer or losses); {fix}")
    if step > cfg.steps:
        raise ConfigError(
            f"{path}: the checkpoint is at step {step}, past --steps {cfg.steps}; give --steps {step} or more"
        )
    if not _finite([vectors, state["optimizer"], losses]):
        raise ConfigError(
            f"{path}: holds non-finite numbers (NaN/inf) at step {step}: it cannot be continued; "
            f"{fix} (a lower --lr keeps a new run finite)"
        )
    return state


def restore(path: Path, state: dict, vectors: dict, optimizer) -> None:
    """Put a checked checkpoint's vectors and optimizer state into this run's; ConfigError if they do not fit."""
    for k, v in vectors.items():
        saved = state["vectors"].get(k)
        if saved is None or saved.shape != v.shape:
            got = "none" if saved is None else "x".join(map(str, saved.shape))
            raise ConfigError(
                f"{path}: its {k} vectors are {got}, this model's are {'x'.join(map(str, v.shape))}: "
                f"written for another model; delete it to start over"
            )
    try:
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # torch's own checks raise several types
        raise ConfigError(
            f"{path}: its optimizer state does not fit this run ({type(e).__name__}); delete it"
        ) from None
    # load_state_dict checks the groups, not the moments: a wrong-shaped one would fail at the first step.
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            if any(
                not isinstance(value, torch.Tensor)
                or (value.numel() != 1 if name == "step" else value.shape != param.shape)
                or not value.is_floating_point()
                for name, value in moments.items()
            ):
                raise ConfigError(f"{path}: its optimizer state does not fit this run's vectors; delete it")
    with torch.no_grad():
        for k, v in vectors.items():
            v.copy_(state["vectors"][k])
