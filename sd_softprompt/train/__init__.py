"""Training a soft prompt: the config, its checks, data, losses, objectives, checkpoints, and the loop.

from sd_softprompt.train import TrainConfig, train
train(TrainConfig(model="toyworld", out="sun.safetensors", target="sunrise with trees", vectors=2))
"""

from .trainer import TrainConfig, TrainingDiverged, TrainResult, check_config, train, unused_in_loop

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "check_config", "train", "unused_in_loop"]
