"""Load a diffusers pipeline from a hub id or a local folder, with one-line errors.

Whatever goes wrong (no such folder, a folder that is not a saved pipeline, a hub id that cannot be
reached, an unknown pipeline class) comes back as a ConfigError / UnsupportedPipelineError, never as a
diffusers traceback. The pipeline's own components are kept as they are (safety checker included).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import ConfigError
from ..families import FAMILIES, detect_family, families_of_class
from .builtin import BUILTIN_MODELS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
_HINT = "pass a hub id like stabilityai/stable-diffusion-xl-base-1.0 or a folder saved with save_pretrained"
_CHECKPOINT_SUFFIXES = {".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".gguf"}


def resolve_device(device: str | None = None) -> str:
    """``device`` checked against what this machine has; default cuda if available, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r}: not a torch device; use cpu, cuda, cuda:1 or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here; use --device cpu")
    return device


def resolve_dtype(dtype: str | None, device: str, pipeline_class: str | None = None) -> torch.dtype:
    """fp32 | fp16 | bf16; default fp32 on the CPU (half precision is slow or missing there), else fp16,
    except bf16 where the family prefers it and the GPU has it (Flux overflows fp16 and draws black images)."""
    if dtype is None:
        if torch.device(device).type == "cpu":
            return torch.float32
        if any(f.prefers_bf16 for f in families_of_class(pipeline_class)) and _has_bf16(device):
            return torch.bfloat16
        return torch.float16
    name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if name not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def built_in_model(model: str) -> str:
    """The folder a built-in model's name (``toyworld``) stands for; any other ``model`` as it is."""
    entry = BUILTIN_MODELS.get(model)
    if entry is None:
        return model
    if not (entry.folder / "model_index.json").is_file():
        raise ConfigError(
            f"{model}: the built-in model is not in this install ({entry.folder} has no model_index.json); "
            f"{entry.how_to_get}"
        )
    return str(entry.folder)


def load_pipeline(model: str, device: str | None = None, dtype: str | None = None, *, progress: bool = True):
    """A diffusers pipeline from a hub id, a local folder or a built-in name (``toyworld``), moved to
    ``device`` in ``dtype``.

    ``progress`` switches the pipeline's own denoising progress bar (set_progress_bar_config).
    """
    model = built_in_model(model)
    device = resolve_device(device)
    chosen = resolve_dtype(dtype, device) if dtype else None  # a bad name fails before anything is read
    local = _local_folder(model)
    torch_dtype = chosen or resolve_dtype(None, device, _pipeline_class(model, local))
    pipe = _from_pretrained(model, torch_dtype, local)
    detect_family(pipe)  # an unsupported class fails here, before any soft prompt is touched
    pipe = pipe.to(device)
    # leave=False: a grid draws many images; their denoising bars go once done, under the grid's own bar.
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    return pipe


def _local_folder(model: str) -> Path | None:
    """The pipeline folder ``model`` names, None for a hub id; ConfigError for a bad local path."""
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() in _CHECKPOINT_SUFFIXES:
            raise ConfigError(
                f"{model}: a single-file checkpoint, not a diffusers pipeline folder; convert it once with "
                f"diffusers' from_single_file(...).save_pretrained(FOLDER), or {_HINT}"
            )
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"{model}: not a diffusers pipeline folder (no model_index.json); {_HINT}")
        return path
    if _looks_like_path(model):
        raise ConfigError(f"{model}: no such folder; {_HINT}")
    return None


def _pipeline_class(model: str, local: Path | None) -> str | None:
    """The pipeline class, as a dtype hint only: a local folder's model_index.json says it; for a hub
    id, a family's name in the id is taken at its word (FLUX.1-dev...) rather than asking the network twice."""
    if local is None:
        bare = "".join(c for c in model.lower() if c.isalnum())  # Qwen/Qwen-Image -> qwenqwenimage
        named = [f for f in FAMILIES.values() if f.name.replace("_", "") in bare]
        return named[0].pipelines[0] if named else None
    try:
        return json.loads((local / "model_index.json").read_text("utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None  # the real load reports what is wrong with the file


def _has_bf16(device: str) -> bool:
    kind = torch.device(device).type
    return kind != "cuda" or torch.cuda.is_bf16_supported()


def _looks_like_path(model: str) -> bool:
    # Hub ids are "owner/name": one slash, no leading dot/tilde/slash, no file suffix.
    return (
        os.path.isabs(model)
        or model.startswith((".", "~"))
        or "\\" in model
        or model.count("/") != 1
        or Path(model).suffix.lower() in _CHECKPOINT_SUFFIXES
    )


def _from_pretrained(model: str, torch_dtype: torch.dtype, local: Path | None):
    from diffusers import DiffusionPipeline

    try:
        if local is not None:
            # Loading bars for a local folder are a second of noise above the one line a failure prints.
            with _quiet_loading():
                return DiffusionPipeline.from_pretrained(str(local), **_dtype_kwarg(torch_dtype))
        return DiffusionPipeline.from_pretrained(model, **_dtype_kwarg(torch_dtype))
    except (OSError, ValueError, ImportError, KeyError, TypeError, RuntimeError) as error:
        reason = _first_line(error)
        if local is not None:
            raise ConfigError(f"{model}: could not load the pipeline in this folder ({reason})") from None
        raise ConfigError(f"{model}: could not load it from the Hugging Face hub ({reason}); {_hub_advice()}") from None


def _dtype_kwarg(torch_dtype: torch.dtype) -> dict:
    # diffusers renamed torch_dtype to dtype (and warns on the old name); older releases only know torch_dtype.
    from diffusers.pipelines import pipeline_utils

    return {"dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype": torch_dtype}


def _hub_advice() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set, so only models already in the local cache load; unset it or pass a local folder"
    return "check the id and the network; gated models need `hf auth login`; or pass a local folder"


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Turn diffusers' and transformers' loading bars off for the block, then back to how they were."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
