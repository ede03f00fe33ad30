"""Images mode trains at the model's own size unless --resolution says otherwise."""

from __future__ import annotations

from PIL import Image

from sd_softprompt.families import FAMILIES
from sd_softprompt.models import tiny
from sd_softprompt.train import TrainConfig, train
from sd_softprompt.train.objectives import ImageObjective


def _config(tmp_path, **kw) -> TrainConfig:
    folder = tmp_path / "pics"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (256, 256), (200, 40, 40)).save(folder / "a.png")
    base = {"model": "tiny", "out": str(tmp_path / "s.safetensors"), "mode": "images", "images": str(folder)}
    return TrainConfig(**(base | {"progress": False, "flip": False, "checkpoint_every": 0} | kw))


def _latent_side(pipe, cfg) -> int:
    return ImageObjective(pipe, FAMILIES["sd1"], cfg, ["<s>"], log=lambda m: None).latents.shape[-1]


def test_the_default_resolution_is_the_models_and_resolution_overrides_it(tmp_path):
    assert TrainConfig(model="m", out="o.safetensors").resolution is None  # "the model's"
    pipe = tiny.build_sd(1)
    assert FAMILIES["sd1"].native_size(pipe) == 64  # the tiny UNet: 8x8 latents, an 8x VAE
    assert _latent_side(pipe, _config(tmp_path)) == 8
    pipe.unet.register_to_config(sample_size=16)  # a model made for 128 px pictures
    assert _latent_side(pipe, _config(tmp_path)) == 16
    assert _latent_side(pipe, _config(tmp_path, resolution=32)) == 4


def test_the_report_names_the_resolution_trained_at(tmp_path, sd1):
    result = train(_config(tmp_path, steps=1, vectors=1), pipe=sd1)
    assert result.metrics["config"]["resolution"] == 64
