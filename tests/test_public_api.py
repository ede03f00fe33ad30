"""The public API the layout must keep: every name of `sd_softprompt.__all__`, the trainer, the CLI entry point."""

import importlib
import subprocess
import sys

import sd_softprompt

# What the package promised before its modules moved into folders (0.1.0); a name may be added, never lost.
PROMISED = {
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
    "SoftPrompt",
    "load_soft_prompt",
    "load_soft_prompts",
    "loaded_soft_prompts",
    "LoadedSoftPrompt",
    "unload_soft_prompt",
    "load_bundle",
    "bundle_into_lora",
    "lora_weights",
    "mix",
    "concat",
    "scale",
    "interpolate",
    "detect_family",
    "FAMILIES",
    "TrainConfig",
}


def test_every_public_name_resolves():
    assert set(sd_softprompt.__all__) >= PROMISED
    for name in sd_softprompt.__all__:
        assert getattr(sd_softprompt, name) is not None, name


def test_the_trainer_and_the_cli_entry_point_keep_their_paths():
    from sd_softprompt.train import TrainConfig, train

    assert callable(train) and TrainConfig is sd_softprompt.TrainConfig
    entry = importlib.import_module("sd_softprompt.cli")
    assert callable(entry.main)  # pyproject's sd-softprompt = "sd_softprompt.cli:main"


def test_importing_the_package_or_a_config_stays_cheap():
    # the facade and train/config.py import neither torch nor diffusers (a config is plain data)
    code = "import sys, sd_softprompt, sd_softprompt.train.config; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
