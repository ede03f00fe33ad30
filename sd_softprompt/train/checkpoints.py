"""Training checkpoints: the vectors, optimizer state, step and seed, written atomically, and resumed only by
the run they belong to."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, WriteError
from ..files.atomic import atomic_write, bytes_writer, torch_bytes
from .config import TrainConfig


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.stem + ".checkpoint.pt")


def _run_key(cfg: TrainConfig) -> dict:
    """What a checkpoint must agree on to be resumed (not steps: the total may be extended)."""
    return {
        "model": cfg.model,
        "mode": cfg.mode,
        "role": cfg.role,
        "target": cfg.target or "",
        "vectors": cfg.vectors,
        "loss": cfg.loss,
    }


def save_checkpoint(path: Path, cfg: TrainConfig, step: int, vectors, optimizer, losses: list[float]) -> None:
    state = {
        "run": _run_key(cfg),
        "step": step,
        "vectors": {k: v.detach().cpu().clone() for k, v in vectors.items()},
        "optimizer": optimizer.state_dict(),
        # The data RNG is re-seeded from (seed, step, rank) every step, so (seed, step) is its whole state.
        "rng": {"seed": cfg.seed, "torch": torch.get_rng_state()},
        "losses": losses,
    }
    atomic_write([(path, bytes_writer(torch_bytes(state)))])  # in memory first: see atomic.py


def resume_hint(cfg: TrainConfig) -> str:
    """Where the run's last checkpoint is and how to go on from it, or that there is none yet."""
    ckpt = checkpoint_path(cfg.out_path)
    if not ckpt.exists():
        every = f"one every {cfg.checkpoint_every} steps" if cfg.checkpoint_every else "--checkpoint-every 0"
        return f"no checkpoint was written yet ({every}); rerunning starts over"
    try:
        step = f" (step {int(torch.load(ckpt, map_location='cpu', weights_only=True)['step'])})"
    except Exception:  # unreadable: still the file to resume from or delete, as --resume will say
        step = ""
    return f"the last checkpoint is {ckpt}{step}: rerun the same command with --resume to continue from it"


def save_checkpoint_or_warn(
    path: Path, cfg: TrainConfig, step: int, vectors, optimizer, losses: list[float], log
) -> None:
    """A checkpoint that cannot be written (full disk) is not worth stopping for: the previous one is kept."""
    try:
        save_checkpoint(path, cfg, step, vectors, optimizer, losses)
    except WriteError as error:
        log(f"warning: step {step}: {error}; the previous checkpoint is kept and training goes on")


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"{path}: cannot read this checkpoint ({type(e).__name__}); delete it to start over"
        ) from None
    if state.get("run") != _run_key(cfg):
        raise ConfigError(
            f"{path}: this checkpoint is from another run ({state.get('run')}); delete it or change --out"
        )
    return state
