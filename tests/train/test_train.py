import json

import pytest
import torch
from PIL import Image

from sd_softprompt.errors import ConfigError
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.models import tiny
from sd_softprompt.train import objectives
from sd_softprompt.train.trainer import TrainConfig, TrainingDiverged, checkpoint_path, train

HARD = "image of serene landscape at sunrise with trees mountains and lake"


def text_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        model="tiny-sd1",
        out=str(tmp_path / "sunrise.safetensors"),
        target=HARD,
        vectors=3,
        steps=80,
        lr=5e-3,
        progress=False,
        probe_size=64,
        eval_samples=6,
        checkpoint_every=0,
    )
    return TrainConfig(**(base | kw))


def make_images(folder, n=2, size=48):
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(size, size + 8, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "img0.txt").write_text("a photo of {} on a table")
    (folder / "notes.md").write_text("not an image")
    return folder


def test_text_mode_beats_baselines_alone_and_composed(tmp_path, sd1):
    result = train(text_config(tmp_path), pipe=sd1)
    d = result.metrics["distance"]
    for where in ("alone", "composed"):
        assert d[where]["ratio_to_first_n_words"] < 0.5, d[where]
        assert d[where]["ratio_to_empty"] < 0.2, d[where]
    assert result.metrics["fixed_batch_loss"]["after"] < 0.5 * result.metrics["fixed_batch_loss"]["before"]
    # file and report written, metadata as promised
    soft = SoftPrompt.load(result.soft_prompt)
    assert soft.tokens == ["[v1]", "[v2]", "[v3]"]
    assert soft.vectors["clip_l"].dtype == torch.float32 and soft.vectors["clip_l"].shape == (3, 32)
    md = soft.metadata
    assert (md["objective"], md["steps"], md["target"], md["family"]) == ("text", "80", HARD, "sd1")
    report = json.loads(result.report.read_text())
    assert len(report["losses"]) == 80 and report["distance"]["alone"]["D"]["soft"] > 0
    # the pipeline is left as it was
    assert "[v1]" not in sd1.tokenizer.get_vocab()


def test_only_vectors_are_trained(tmp_path, sd1):
    before = {k: v.clone() for k, v in sd1.text_encoder.state_dict().items()}
    train(text_config(tmp_path, steps=3), pipe=sd1)
    after = sd1.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_image_mode_runs_and_lowers_loss(tmp_path, sd1, capsys):
    folder = make_images(tmp_path / "pics")
    cfg = TrainConfig(
        model="tiny-sd1",
        out=str(tmp_path / "ti.safetensors"),
        mode="images",
        images=str(folder),
        vectors=2,
        steps=40,
        lr=2e-2,
        resolution=64,
        batch_size=4,
        init="random",
        progress=False,
        checkpoint_every=0,
    )
    result = train(cfg, pipe=sd1)
    assert "skipped notes.md" in capsys.readouterr().out
    fixed = result.metrics["fixed_batch_loss"]
    assert fixed["after"] < fixed["before"], fixed
    assert SoftPrompt.load(result.soft_prompt).metadata["objective"] == "image"


def test_nan_keeps_checkpoint_and_resume_matches_uninterrupted(tmp_path, sd1, monkeypatch):
    full = train(text_config(tmp_path / "a", steps=6, checkpoint_every=3, loss="sequence"), pipe=sd1)
    want = SoftPrompt.load(full.soft_prompt).vectors["clip_l"]

    cfg = text_config(tmp_path / "b", steps=6, checkpoint_every=3, loss="sequence")
    real = objectives.cond_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        value = real(*args)
        return value * float("nan") if calls["n"] == 5 else value  # 1 fixed-batch call, then steps 1..

    monkeypatch.setattr(objectives, "cond_loss", poisoned)
    # step 4's loss is read back with step 6's (before the checkpoint due then): named, and nothing written
    with pytest.raises(TrainingDiverged, match="step 4: the loss is nan.*last good checkpoint"):
        train(cfg, pipe=sd1)
    assert checkpoint_path(cfg.out_path).exists() and not cfg.out_path.exists()
    assert torch.load(checkpoint_path(cfg.out_path), weights_only=True)["step"] == 3
    monkeypatch.setattr(objectives, "cond_loss", real)

    resumed = train(text_config(tmp_path / "b", steps=6, checkpoint_every=3, loss="sequence", resume=True), pipe=sd1)
    assert len(resumed.metrics["losses"]) == 6
    assert torch.allclose(SoftPrompt.load(resumed.soft_prompt).vectors["clip_l"], want, atol=1e-6)
    assert not checkpoint_path(cfg.out_path).exists()


def test_bf16_frozen_models_fp32_vectors(tmp_path):
    pipe = tiny.build_sd(1).to(dtype=torch.bfloat16)
    result = train(text_config(tmp_path, steps=3, mixed_precision="bf16"), pipe=pipe)
    assert SoftPrompt.load(result.soft_prompt).vectors["clip_l"].dtype == torch.float32
    assert pipe.unet.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(target=None), "--target is required"),
        (dict(vectors=0), "--vectors must be between 1"),
        (dict(mode="images", images="MISSING"), "not a folder"),
        (dict(mode="images", images="EMPTY"), "no png/jpg/jpeg/webp"),
        (dict(out="FILE/x.safetensors"), "cannot write there"),
        (dict(out="OUTDIR"), "must be a .safetensors file"),
    ],
)
def test_bad_input_one_clear_error_and_nothing_written(tmp_path, change, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("a file, not a folder")
    where = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty", "OUTDIR": tmp_path}
    change = {
        k: str(where.get(v, v)).replace("FILE", str(tmp_path / "afile")) if isinstance(v, str) else v
        for k, v in change.items()
    }
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=message):
        train(text_config(tmp_path, **change))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_validation_grids_next_to_checkpoints(tmp_path, sd1):
    folder = make_images(tmp_path / "pics")
    cfg = TrainConfig(
        model="tiny-sd1",
        out=str(tmp_path / "ti.safetensors"),
        mode="images",
        images=str(folder),
        vectors=2,
        steps=4,
        resolution=64,
        batch_size=2,
        init="random",
        progress=False,
        checkpoint_every=0,
        validate_every=2,
        validation_prompts=["a photo of {} on a table"],
        validation_seeds=[0, 1],
    )
    train(cfg, pipe=sd1)
    grids = sorted((tmp_path / "ti.validation").glob("*.png"))
    assert [g.name for g in grids] == ["step_000002.png", "step_000004.png"]
    record = json.loads(grids[0].with_suffix(".json").read_text())
    assert record["prompts"] == ["a photo of [v1][v2] on a table"] and record["seeds"] == [0, 1]


@pytest.mark.parametrize(
    "family, mode, loss, parked",
    [
        ("sd1", "text", "sequence", ["vae", "unet"]),
        ("sd1", "text", "denoiser", ["vae"]),
        ("sd1", "images", "denoiser", ["vae"]),
        ("flux", "text", "full", ["vae", "transformer"]),
    ],
)
def test_parts_parked_during_the_loop(family, mode, loss, parked):
    from sd_softprompt.families import FAMILIES
    from sd_softprompt.train.trainer import unused_in_loop

    cfg = TrainConfig(model="m", out="o.safetensors", mode=mode, loss=loss)
    assert unused_in_loop(cfg, FAMILIES[family]) == parked


def test_losses_read_back_every_few_steps_and_before_each_checkpoint(monkeypatch):
    from sd_softprompt.train import loop as steps

    losses = steps.StepLosses([0.5])
    reads = []
    real = torch.stack
    monkeypatch.setattr(steps.torch, "stack", lambda xs: reads.append(len(xs)) or real(xs))
    for s in range(3):
        losses.add(s, torch.tensor(float(s)))
    assert losses.values == [0.5] and reads == []  # nothing read yet: no host sync
    assert losses.read() is None and losses.values == [0.5, 0.0, 1.0, 2.0] and reads == [3]
    losses.add(3, torch.tensor(1.0))
    losses.add(4, torch.tensor(float("inf")))
    losses.add(5, torch.tensor(float("nan")))
    assert losses.read() == (4, float("inf")) and losses.values[-1] == 1.0  # the first non-finite one
    assert losses.read() is None  # nothing pending
