"""A training config's checks: everything that can be refused before a model is loaded or a file written."""

from __future__ import annotations

import math
import os
from dataclasses import fields, replace
from pathlib import Path

from ..errors import ConfigError, listed
from ..files.keys import MAX_VECTORS
from ..inject.token_checks import check_token_names
from .card import check_push
from .config import TrainConfig
from .data import scan_images
from .losses import get_loss
from .objectives import OBJECTIVES
from .tracking import check_tracker


def read_target(cfg: TrainConfig) -> TrainConfig:
    """The config with --target-file's text as its target (whitespace runs, newlines included, as spaces)."""
    if not cfg.target_file:
        return cfg
    if cfg.target:
        raise ConfigError("give the hard prompt once: --target or --target-file, not both")
    path = Path(cfg.target_file)
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise ConfigError(f"{path}: not a regular file; --target-file takes a text file holding the prompt")
    try:
        text = " ".join(path.read_text(encoding="utf-8").split())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; --target-file takes a text file holding the prompt") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e}); --target-file takes a text file") from None
    if not text:
        raise ConfigError(f"{path}: the file is empty; put the prompt to distil in it")
    return replace(cfg, target=text, target_file=None)


def check_config(cfg: TrainConfig) -> None:
    """Refuse bad input before anything is loaded or written."""
    if cfg.role not in ("positive", "negative"):
        raise ConfigError(f"--role must be positive or negative, not {cfg.role!r}")
    if cfg.role == "negative" and (cfg.mode != "text" or cfg.context):
        raise ConfigError("--role negative distils a negative prompt, used alone: --mode text, and no --context")
    if cfg.mode not in OBJECTIVES:
        raise ConfigError(f"--mode must be one of {', '.join(OBJECTIVES)}, not {cfg.mode!r}")
    if cfg.snr_gamma is not None and cfg.mode != "images":
        raise ConfigError("--snr-gamma weights the images-mode denoising loss; leave it out in text mode")
    if cfg.mode == "text" and not (cfg.target or "").strip():
        raise ConfigError(
            '--target is required in text mode: the hard prompt to distil, e.g. --target "image of serene landscape at sunrise"'
        )
    if cfg.mode == "images":
        scan_images(cfg.images)
    if cfg.vectors == "auto":
        if cfg.mode != "text":
            raise ConfigError("--vectors auto picks N from the --target's length (text mode); give a number here")
        if cfg.tokens is not None:
            raise ConfigError(
                "--vectors auto picks N once the model is loaded; with --tokens give --vectors as a number"
            )
    elif isinstance(cfg.vectors, bool) or not isinstance(cfg.vectors, int) or not 1 <= cfg.vectors <= MAX_VECTORS:
        raise ConfigError(f"--vectors must be between 1 and {MAX_VECTORS} or auto, not {cfg.vectors}")
    _check_numbers(cfg)
    if cfg.tokens is not None:
        tokens = list(cfg.tokens)
        if len(tokens) != cfg.vectors or len(set(tokens)) != len(tokens):
            raise ConfigError(
                f"--tokens {listed(tokens)}: give {cfg.vectors} different names, one per vector (--vectors {cfg.vectors})"
            )
        check_token_names(tokens, "--tokens")  # whitespace; words of the vocabulary need the model
    get_loss(cfg.loss)  # ConfigError naming the losses for any other name
    if cfg.pool not in ("noise", "sampler"):
        raise ConfigError(f"--pool must be noise or sampler, not {cfg.pool!r}")
    if cfg.pool_guidance is not None and cfg.pool != "sampler":
        raise ConfigError(
            "--pool-guidance sets the guidance of --pool sampler's runs; add --pool sampler or leave it out"
        )
    if cfg.pool == "sampler" and (cfg.mode != "text" or cfg.role == "negative" or not get_loss(cfg.loss).pooled):
        raise ConfigError(
            "--pool sampler is for a prompt's denoiser loss (--mode text --loss denoiser); a negative prompt is "
            "always trained on sampler runs of its positives"
        )
    if cfg.init not in ("hard", "random", "words", "mean") or (cfg.init == "words" and not cfg.init_words):
        raise ConfigError('--init must be hard, random, words or mean (words needs --init-words "...")')
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"--mixed-precision must be no, fp16 or bf16, not {cfg.mixed_precision!r}")
    if cfg.schedule not in ("constant", "cosine"):
        raise ConfigError(f"--schedule must be constant or cosine, not {cfg.schedule!r}")
    out = cfg.out_path
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"{out}: --out must be a .safetensors file (convert to other formats with sd-softprompt convert)"
        )
    if out.is_dir():
        raise ConfigError(f"{out}: --out is a folder; give a file name ending in .safetensors")
    parent = out.parent if str(out.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(f"{out}: cannot write there ({probe} is not a writable folder); choose another --out")
    check_tracker(cfg)  # a tracker whose package is missing
    check_push(cfg.push_to_hub)  # a bad repo id, offline, not logged in: refused now, not after the run


# flag -> (field, smallest meaningful value, whether that value itself is allowed, whole numbers only)
_NUMBERS = {
    "--steps": ("steps", 1, True, True),
    "--lr": ("lr", 0, False, False),
    "--batch-size": ("batch_size", 1, True, True),
    "--grad-accum": ("grad_accum", 1, True, True),
    "--warmup": ("warmup", 0, True, True),
    "--max-grad-norm": ("max_grad_norm", 0, False, False),
    "--norm-weight": ("norm_weight", 0, True, False),
    "--resolution": ("resolution", 8, True, True),
    "--validate-every": ("validate_every", 0, True, True),
    "--checkpoint-every": ("checkpoint_every", 0, True, True),
    "--probe-pool": ("probe_pool", 1, True, True),
    "--pool-guidance": ("pool_guidance", 0, True, False),
    "--eval-samples": ("eval_samples", 1, True, True),
    "--probe-size": ("probe_size", 8, True, True),
    "--snr-gamma": ("snr_gamma", 0, False, False),
    "--seed": ("seed", 0, True, True),
}
MAX_SEED = 2**32 - 1  # the loop derives per-step seeds from it; torch takes at most 64 bits


def _check_numbers(cfg: TrainConfig) -> None:
    """Every numeric setting finite and in its meaningful range (argparse's float() takes "nan" and "inf")."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for flag, (name, low, low_ok, whole) in _NUMBERS.items():
        value = getattr(cfg, name)
        if value is None and name in ("probe_size", "snr_gamma", "resolution", "pool_guidance"):
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (
            not number
            or not math.isfinite(value)
            or (whole and value != int(value))
            or value < low
            or (value == low and not low_ok)
        ):
            kind = "a whole number" if whole else "a finite number"
            bound = f"{'at least' if low_ok else 'above'} {low}"
            default = "" if defaults[name] is None else f" (default {defaults[name]})"
            shown = f"{value:g}" if number else repr(value)
            raise ConfigError(f"{flag} {shown}: must be {kind} {bound}{default}")
    seeds = [cfg.seed, *cfg.validation_seeds]
    if any(not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds):
        raise ConfigError(f"--seed / --validation-seeds {listed(seeds)}: seeds are whole numbers from 0 to {MAX_SEED}")
