"""Soft prompts (learned prompt embeddings) for diffusers pipelines: SD 1.x/2.x, SDXL, SD3 and Flux.

    from sd_softprompt import load_soft_prompt
    load_soft_prompt(pipe, "sunrise.safetensors")
    pipe("[v1][v2][v3] mountain view")

Only the errors are imported eagerly; everything else (torch, diffusers) loads on first use, so
``import sd_softprompt`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    ConfigError,
    FormatError,
    InvalidVectorsError,
    MixError,
    SoftPromptError,
    SourceError,
    TokenCollisionError,
    TrainingDiverged,
    UnsafeFileError,
    UnsupportedPipelineError,
    WidthMismatchError,
    WriteError,
)

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "SoftPrompt": "files.softprompt",
    "load_soft_prompt": "inject.loader",
    "load_soft_prompts": "inject.loader",
    "loaded_soft_prompts": "inject.loader",
    "LoadedSoftPrompt": "inject.loader",
    "unload_soft_prompt": "inject.loader",
    "load_bundle": "files.softprompt",
    "bundle_into_lora": "files.convert",
    "lora_weights": "files.bundles",
    "mix": "files.mixing",
    "concat": "files.mixing",
    "scale": "files.mixing",
    "interpolate": "files.mixing",
    "detect_family": "families",
    "FAMILIES": "families",
    "TrainConfig": "train.config",  # the trainer itself: from sd_softprompt.train import train
}

__all__ = [
    "__version__",
    "SoftPromptError",
    "FormatError",
    "UnsafeFileError",
    "InvalidVectorsError",
    "WidthMismatchError",
    "TokenCollisionError",
    "MixError",
    "TrainingDiverged",
    "UnsupportedPipelineError",
    "ConfigError",
    "WriteError",
    "SourceError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (not in {module.__name__} yet)") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
