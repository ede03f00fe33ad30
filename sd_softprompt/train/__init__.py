"""Training a soft prompt: the config, its checks, data, losses, objectives, checkpoints, and the loop.

    from sd_softprompt.train import TrainConfig, train
    train(TrainConfig(model="toyworld", out="sun.safetensors", target="sunrise with trees", vectors=2))

`TrainConfig` (config.py) imports nothing; the trainer and everything it needs load on first use, so reading
or building a config stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import TrainConfig

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "check_config",
    "load_config",
    "train",
    "unused_in_loop",
]
_MODULES = {"load_config": ".config_file"}  # the rest: .trainer


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(_MODULES.get(name, ".trainer"), __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
