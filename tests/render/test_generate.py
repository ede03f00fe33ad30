"""generate / run_grid / load_pipeline on the tiny pipelines: 2 steps, 64x64."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sd_softprompt.errors import ConfigError, UnsupportedPipelineError
from sd_softprompt.families import detect_family
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, loaded_soft_prompts, unload_soft_prompt
from sd_softprompt.models.pipeline import load_pipeline, resolve_dtype
from sd_softprompt.render.generate import generate, grid_caption, run_grid
from sd_softprompt.render.grid import grid_geometry

FAST = dict(steps=2, guidance=5.0, height=64, width=64)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe, prompt, seed=0, negative_prompt=None):
    return np.asarray(generate(pipe, prompt, seed, negative_prompt=negative_prompt, **FAST))


def _soft(pipe, seed: int, n: int = 3) -> SoftPrompt:
    """Random vectors for every encoder at a norm a few times its vocabulary's, so they visibly steer the
    tiny model."""
    g = torch.Generator().manual_seed(seed)
    vectors = {}
    for encoder in detect_family(pipe).encoders:
        table = getattr(pipe, encoder.text_encoder).get_input_embeddings().weight.detach()
        v = torch.randn(n, table.shape[1], generator=g)
        vectors[encoder.key] = v / v.norm(dim=1, keepdim=True) * table.norm(dim=1).mean() * 5
    return SoftPrompt(vectors)


def test_grid_size_labels_and_record(sd1, tmp_path):
    pipe = _quiet(sd1)
    prompts, seeds = ["mountain view", "a red house by the lake at sunset"], [0, 1, 2]
    grid_path, json_path = run_grid(pipe, prompts, seeds, model_name="tiny-sd1", out=tmp_path / "grid.png", **FAST)

    assert grid_path == tmp_path / "grid.png" and json_path == tmp_path / "grid.json"
    geometry = grid_geometry(
        2,
        3,
        64,
        64,
        row_labels=prompts,
        col_labels=[f"seed {s}" for s in seeds],
        caption=grid_caption("tiny-sd1", 2, 5.0, 64, 64),
    )
    grid = Image.open(grid_path)
    assert grid.size == geometry.size
    assert geometry.caption_lines[0] == "tiny-sd1 · 2 steps · guidance 5 · 64x64"

    record = json.loads(json_path.read_text())
    assert record["prompts"] == prompts and record["seeds"] == seeds
    assert record["family"] == "sd1" and record["model"] == "tiny-sd1"
    assert (record["steps"], record["guidance"], record["height"], record["width"]) == (2, 5.0, 64, 64)
    assert len(record["timings"]["per_row_s"]) == 2 and record["version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "grid.png"]  # no temp files left

    # Every cell is exactly what generate gives for its row's prompt and its column's seed.
    cell = np.asarray(grid.convert("RGB").crop(geometry.cells[1][2]))
    assert np.array_equal(cell, _draw(pipe, prompts[1], seed=2))


def test_same_seed_same_image_other_seed_other_image(sd1):
    pipe = _quiet(sd1)
    first, again, other = (
        _draw(pipe, "mountain view", 0),
        _draw(pipe, "mountain view", 0),
        _draw(pipe, "mountain view", 1),
    )
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_soft_prompt_changes_the_image(sd1):
    pipe = _quiet(sd1)
    plain = _draw(pipe, "mountain view")
    load_soft_prompt(pipe, _soft(pipe, 0))
    with_a = _draw(pipe, "[v1][v2][v3] mountain view")
    load_soft_prompt(pipe, _soft(pipe, 1), replace=True)
    with_b = _draw(pipe, "[v1][v2][v3] mountain view")
    assert np.abs(with_a.astype(int) - plain).mean() > 1
    assert np.abs(with_a.astype(int) - with_b).mean() > 1  # the vectors matter, not just the extra tokens


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_soft_prompt_changes_the_picture_and_unload_restores_it(family, request):
    pipe = _quiet(request.getfixturevalue(family))
    negative = None if family == "flux" else "blurry"  # Flux takes no negative prompt (tested below)
    plain = _draw(pipe, "[v1][v2][v3] mountain view", negative_prompt=negative)
    assert plain.shape == (64, 64, 3)
    load_soft_prompt(pipe, _soft(pipe, 0))
    steered = _draw(pipe, "[v1][v2][v3] mountain view", negative_prompt=negative)
    assert np.abs(steered.astype(int) - plain).mean() > 1
    unload_soft_prompt(pipe)
    assert np.array_equal(_draw(pipe, "[v1][v2][v3] mountain view", negative_prompt=negative), plain)


def test_flux_refuses_a_negative_prompt(flux):
    with pytest.raises(ConfigError, match="no negative prompt"):
        _draw(flux, "mountain view", negative_prompt="blurry")


def test_bad_settings(sd1, flux, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 8"):
        generate(sd1, "x", 0, 2, 5.0, 60, 64)
    with pytest.raises(ConfigError, match="multiple of 16"):
        generate(flux, "x", 0, 2, 5.0, 64, 72)
    with pytest.raises(ConfigError, match="at least 1"):
        generate(sd1, "x", 0, 0, 5.0, 64, 64)
    with pytest.raises(ConfigError, match="Pillow"):
        run_grid(sd1, ["x"], [0], model_name="m", out=tmp_path / "grid.txt", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_load_pipeline_from_folder(tiny_dirs):
    pipe = load_pipeline(tiny_dirs("sd1"), dtype="fp32")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
    assert pipe.safety_checker is None


def test_load_pipeline_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"no model_index\.json.*save_pretrained"):
        load_pipeline(str(tmp_path))
    with pytest.raises(ConfigError, match="no such folder"):
        load_pipeline(str(tmp_path / "missing"))
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    with pytest.raises(ConfigError, match="single-file checkpoint"):
        load_pipeline(str(checkpoint))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="nobody-here/no-such-model: could not load it from the Hugging Face hub"):
        load_pipeline("nobody-here/no-such-model")
    with pytest.raises(ConfigError, match="fp32, fp16, bf16"):
        load_pipeline(str(tmp_path), dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            load_pipeline(str(tmp_path), device="cuda")


def test_unsupported_pipeline_class(tmp_path):
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(UnsupportedPipelineError, match="DDPMPipeline is not supported"):
        load_pipeline(str(tmp_path / "ddpm"))


def test_default_dtype():
    assert resolve_dtype(None, "cpu", "FluxPipeline") == torch.float32
    assert resolve_dtype(None, "mps", "StableDiffusionXLPipeline") == torch.float16
    assert resolve_dtype(None, "mps", "FluxPipeline") == torch.bfloat16  # fp16 overflows in Flux
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype("float16", "cpu") == torch.float16


def test_per_encoder_grid_draws_a_row_per_encoder_subset(flux, tmp_path):
    """Flux: rows for clip_l + t5xxl, clip_l, t5xxl and none; each row what generate draws with only those
    encoders' vectors loaded; afterwards every vector is loaded again."""
    from sd_softprompt.render.generate import generate_batch, run_encoder_grid

    pipe = _quiet(flux)
    soft, prompt, seeds = _soft(pipe, 0), "[v1][v2][v3] mountain view", [0, 1]
    # a grid row is one batched call; on the CPU a batch may differ from single calls in the last bit
    row = lambda p: np.asarray(generate_batch(pipe, p, seeds, 2, 5.0, 64, 64)[1])  # noqa: E731
    load_soft_prompt(pipe, soft)
    full = row(prompt)
    grid_path, json_path = run_encoder_grid(
        pipe, [soft], prompt, seeds, compare=["mountain view"], model_name="tiny-flux", out=tmp_path / "g.png", **FAST
    )
    record = json.loads(json_path.read_text())
    subsets = [["clip_l", "t5xxl"], ["clip_l"], ["t5xxl"], []]
    assert record["per_encoder"] == subsets + [None]
    assert record["prompts"] == [prompt] * 4 + ["mountain view"]
    labels = [f"{prompt} | vectors: {' + '.join(s) if s else 'none'}" for s in subsets] + ["mountain view"]
    geometry = grid_geometry(
        5,
        2,
        64,
        64,
        row_labels=labels,
        col_labels=["seed 0", "seed 1"],
        caption=grid_caption("tiny-flux", 2, 5.0, 64, 64),
    )
    grid = Image.open(grid_path).convert("RGB")
    assert grid.size == geometry.size
    cells = [np.asarray(grid.crop(geometry.cells[r][1])) for r in range(5)]
    assert np.array_equal(cells[0], full)  # every encoder: the usual load
    assert all(not np.array_equal(cells[0], cells[r]) for r in (1, 2, 3))
    assert [(e.encoders, e.blank) for e in loaded_soft_prompts(pipe)] == [(("clip_l", "t5xxl"), ())]  # as before
    unload_soft_prompt(pipe)
    for r, keys in ((1, ["clip_l"]), (2, ["t5xxl"]), (3, [])):
        load_soft_prompt(pipe, soft, encoders=keys)
        assert np.array_equal(cells[r], row(prompt)), keys
        unload_soft_prompt(pipe)
    assert np.array_equal(cells[4], row("mountain view"))


def test_the_grid_bar_counts_only_the_pictures_it_draws(sd1, tmp_path, monkeypatch):
    """Rows reused from pictures already drawn (the demo's) are not counted as drawn, so the bar's count and rate
    are the drawing's (the demo's bar said "390167.81image/s" over 20 reused pictures)."""
    import sd_softprompt.render.generate as generate_module

    bars = []

    class Bar:
        def __init__(self, total, disable, **kwargs):
            self.total, self.disable, self.n = total, disable, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n

    monkeypatch.setattr(generate_module, "tqdm", Bar)
    pipe, seeds = _quiet(sd1), [0, 1]
    drawn = {"mountain view": [Image.new("RGB", (64, 64))] * len(seeds)}
    run_grid(pipe, ["mountain view", "a red house"], seeds, model_name="t", out=tmp_path / "a.png", drawn=drawn, **FAST)
    assert (bars[0].total, bars[0].n, bars[0].disable) == (2, 2, False)  # one row drawn, one reused
    run_grid(pipe, ["mountain view"], seeds, model_name="t", out=tmp_path / "b.png", drawn=drawn, **FAST)
    assert (bars[1].total, bars[1].n, bars[1].disable) == (0, 0, True)  # nothing drawn: no bar
