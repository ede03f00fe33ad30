"""The training run's settings: one field per `train` flag, each with its help in its metadata.

This module imports nothing from the package, so anything can read a config; the CLI builds its `train`
flags from these fields (cli/parser.py), and checks.py validates a config before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def vector_count(text: str | int) -> int | str:
    """--vectors: a whole number, or "auto" (text mode: the trainer picks N from the target's length)."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    if isinstance(text, bool) or (not isinstance(text, int) and not str(text).strip().isdigit()):
        raise ValueError(f"{text!r} is not a whole number or auto")
    return int(text)


def option(default: Any = None, help: str = "", *, flag: str | None = None, factory: Any = None, **argparse) -> Any:
    """A field whose metadata carries its flag's help and argparse keywords (flag: default --field-name)."""
    metadata = {"help": help, "flag": flag, "argparse": argparse}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if argparse.get("required"):
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a run needs; the CLI's `train` flags map one to one onto these fields."""

    model: str = option(help="hub id or local folder of a diffusers pipeline", required=True)
    out: str = option(help="soft prompt file to write (.safetensors); a report JSON goes beside it", required=True)
    mode: str = option("text", "text: distil a hard prompt; images: textual inversion", choices=("text", "images"))
    target: str | None = option(None, "text mode: the hard prompt to distil (longer than the window is fine)")
    target_file: str | None = option(None, "text mode: read the hard prompt from a UTF-8 text file", metavar="FILE")
    role: str = option(
        "positive",
        "text mode: a prompt, or a negative prompt (meant for negative_prompt)",
        choices=("positive", "negative"),
    )
    negative_prompt: str | None = option(
        None, "validation grids' negative prompt; {} stands for the soft tokens (SD, SDXL, SD3)"
    )
    images: str | None = option(None, "images mode: folder of pictures (+ optional same-name .txt captions)")
    vectors: int | str = option(
        4,
        "number of soft vectors N, or auto (text mode: one per 5 tokens of the --target, 2 to 32)",
        type=vector_count,
        metavar="N",
    )
    steps: int = option(300, "optimizer steps", type=int)
    lr: float = option(5e-3, "learning rate", type=float)
    batch_size: int = option(4, "batch size", type=int)
    grad_accum: int = option(1, "gradient accumulation steps", type=int)
    warmup: int = option(20, "linear warm-up steps", type=int)
    schedule: str = option("constant", "learning-rate schedule: constant or cosine")
    max_grad_norm: float = option(1.0, "gradient clipping norm", type=float)
    snr_gamma: float | None = option(
        None,
        "images mode: min-SNR weighting of the denoising loss (Hang et al. 2023, e.g. 5); DDPM models only",
        type=float,
    )
    seed: int = option(0, "seed", type=int)
    mixed_precision: str = option(
        "no", "the frozen models' precision (the vectors stay fp32)", choices=("no", "fp16", "bf16")
    )
    init: str = option(
        "hard",
        "initial vectors: hard (the --target's token embeddings, each token once; random without one), random, "
        "words, or mean (every vector the mean of the vocabulary's embeddings)",
    )
    init_words: str | None = option(None, "with --init words: the words to start from")
    context: list[str] = option(
        help="extra context suffix, added to the built-in ones (repeatable)",
        factory=list,
        action="append",
        metavar="TEXT",
    )
    loss: str = option(
        "denoiser", "text mode: denoiser, sequence (no denoiser needed per step), full or denoiser-fresh"
    )
    norm_weight: float = option(0.0, "pull vector norms towards the vocabulary's mean norm (0: off)", type=float)
    encoders: list[str] | None = option(
        None, "train only these encoder keys (e.g. t5xxl); default all", nargs="+", metavar="KEY"
    )
    tokens: list[str] | None = option(None, "placeholder token names (default [v1]..[vN])", nargs="+", metavar="TOKEN")
    allow_shadowing: bool = option(
        False, "allow --tokens that are words of the model's vocabulary (they replace it)", action="store_true"
    )
    name: str | None = option(None, "name stored in the file (default: the file stem)")
    # images mode
    resolution: int | None = option(None, "images mode: training resolution (default: the model's own size)", type=int)
    flip: bool = option(True, "images mode: no random horizontal flips", flag="--no-flip", action="store_false")
    style: bool = option(False, "images mode: style captions instead of object captions", action="store_true")
    validate_every: int = option(0, "steps between validation grids (0: none)", type=int)
    validation_prompts: list[str] = option(
        help="validation prompt (repeatable)",
        flag="--validation-prompt",
        factory=list,
        action="append",
        metavar="PROMPT",
    )
    validation_seeds: list[int] = option(
        help="validation seeds", factory=lambda: [0, 1], type=int, nargs="+", metavar="SEED"
    )
    # bookkeeping
    checkpoint_every: int = option(100, "steps between checkpoints", type=int)
    resume: bool = option(False, "continue from the checkpoint beside --out", action="store_true")
    probe_pool: int = option(
        32, "denoiser loss: noisy latents per context whose hard-prompt targets are computed once", type=int
    )
    pool: str = option(
        "noise",
        "denoiser loss, text mode: the latents the hard prompt's targets are taken on: noise (random noise at "
        "random timesteps) or sampler (every step of guided runs of the hard prompt, as the pictures are drawn)",
        choices=("noise", "sampler"),
    )
    pool_guidance: float | None = option(
        None, "--pool sampler: the guidance scale of its runs (default: the family's usual, SD 7.5)", type=float
    )
    eval_samples: int = option(8, "noisy latents in the denoiser-distance probe", type=int)
    probe_size: int | None = option(
        None,
        "image size of the probe and, in text mode, of validation grids (default: the model's, at most 512)",
        type=int,
    )
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    offload: bool = option(
        True,
        "keep the VAE (and, in text mode with a state loss, the denoiser) on the device during training",
        flag="--no-offload",
        action="store_false",
    )
    progress: bool = option(True, "no progress bar", flag="--no-progress", action="store_false")
    # what users of other trainers expect around a run: trackers, a model card, the Hub
    log_with: str | None = option(
        None,
        "log the loss, learning rate, vector norms, validation grids and the final D / F through accelerate's "
        "tracker: tensorboard or wandb (pip install tensorboard / wandb)",
        choices=("tensorboard", "wandb"),
    )
    log_dir: str | None = option(
        None, "with --log-with: the logs' folder, one subfolder per run (default: <out stem>.logs beside --out)"
    )
    model_card: bool = option(
        True,
        "no model card (README.md in the Hub's format: tokens, base model, how to load, figures) beside --out",
        flag="--no-model-card",
        action="store_false",
    )
    push_to_hub: str | None = option(
        None,
        "upload the soft prompt, report, config, model card and last validation grid to this Hub model repo "
        "(created if missing; log in first: hf auth login)",
        metavar="REPO",
    )

    @property
    def out_path(self) -> Path:
        return Path(self.out)
