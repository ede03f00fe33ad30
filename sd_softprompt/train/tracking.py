"""Experiment tracking (`--log-with tensorboard|wandb`) through accelerate's trackers.

What is logged: ``loss`` at every step, ``lr`` and each encoder's mean vector norm (``norm/<key>``) whenever the
loop reads its losses back (every 10 steps, and before anything is written), each validation grid as an image
(``validation``), and at the end the figures the report holds: the fixed-batch loss and, where measured, the
distance ratios D (``distance/...``) and the toy world's F (``fidelity/...``). Without --log-with every
function here does nothing: accelerate has no trackers then.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import TrainConfig

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # --log-with -> the package it needs
PROJECT = "sd-softprompt"  # the wandb project


def check_tracker(cfg: TrainConfig) -> None:
    """Refuse a tracker whose package is missing before anything loads (accelerate would drop it silently)."""
    if cfg.log_with is None:
        if cfg.log_dir is not None:
            raise ConfigError("--log-dir is where --log-with writes its logs; add --log-with tensorboard (or wandb)")
        return
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if cfg.log_with not in TRACKERS:
        raise ConfigError(f"--log-with {cfg.log_with!r}: choose {' or '.join(TRACKERS)}")
    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[cfg.log_with]()
    if not available:
        package = TRACKERS[cfg.log_with]
        raise ConfigError(f"--log-with {cfg.log_with}: the {package} package is not installed; pip install {package}")


def log_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.log_dir) if cfg.log_dir else cfg.out_path.with_name(cfg.out_path.stem + ".logs")


def accelerator_options(cfg: TrainConfig) -> dict:
    """The Accelerator's keywords for the run's tracker (none without --log-with)."""
    if cfg.log_with is None:
        return {}
    return {"log_with": cfg.log_with, "project_dir": str(log_dir(cfg))}


def start_tracking(accelerator, cfg: TrainConfig) -> None:
    """Start the tracker with the run's settings as its hyperparameters; a run's logs get their own folder
    (tensorboard: <log dir>/<out stem>-<start time>; wandb: a run of that name in the sd-softprompt project)."""
    if cfg.log_with is None:
        return
    run = f"{cfg.out_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    hparams = {k: v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in _config(cfg)}
    if cfg.log_with == "wandb":
        accelerator.init_trackers(PROJECT, config=hparams, init_kwargs={"wandb": {"name": run}})
    else:
        accelerator.init_trackers(run, config=hparams)


def _config(cfg: TrainConfig):
    from dataclasses import asdict

    return [(k, v) for k, v in asdict(cfg).items() if k != "progress"]


def log_steps(accelerator, losses: list[float], first: int, lr: float, vectors: dict[str, torch.Tensor]) -> None:
    """The losses read back since index `first` (loss i is step i + 1's), then the learning rate and the mean
    vector norms at the last of them."""
    if not accelerator.trackers or len(losses) <= first:
        return
    for i in range(first, len(losses)):
        accelerator.log({"loss": losses[i]}, step=i + 1)
    with torch.no_grad():
        norms = {f"norm/{k}": v.detach().float().norm(dim=1).mean().item() for k, v in vectors.items()}
    accelerator.log({"lr": lr, **norms}, step=len(losses))


def log_image(accelerator, name: str, path: Path, step: int) -> None:
    """A picture written to `path` (a validation grid), as the trackers take images."""
    if not accelerator.trackers:
        return
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: pixels[None]}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({name: [pixels]}, step=step)


def log_final(accelerator, metrics: dict, step: int) -> None:
    """The report's figures: the fixed-batch loss, and D and F where they were measured."""
    if not accelerator.trackers:
        return
    values = {f"fixed_batch_loss/{k}": v for k, v in metrics.get("fixed_batch_loss", {}).items()}
    for section in ("distance", "guided", "fidelity", "negative_fidelity"):
        values |= _numbers(metrics.get(section), section)
    accelerator.log(values, step=step)


def _numbers(value, prefix: str) -> dict[str, float]:
    """The numeric leaves of a nested report section, keyed by their path."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            out |= _numbers(item, f"{prefix}/{key}")
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def finish_tracking(accelerator) -> None:
    if accelerator.trackers:
        accelerator.end_training()
