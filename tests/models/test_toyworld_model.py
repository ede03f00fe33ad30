"""Behaviour on the shipped toy-world model: soft prompts that carry meaning, measured in pictures (F).

Each test trains a soft prompt in seconds and judges the pipeline's own pictures; the random tiny
pipelines stay for the family and format tests.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, unload_soft_prompt
from sd_softprompt.models.pipeline import load_pipeline
from sd_softprompt.models.toyworld import fidelity as fid
from sd_softprompt.models.toyworld.model import MODEL_DIR, NAME
from sd_softprompt.models.toyworld.world import MISSION, NEGATIVE_EVAL_POSITIVES, UNNAMED, mission_caption, render
from sd_softprompt.train import TrainConfig, train

SEEDS = (0, 1, 2, 3)
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def toy():
    assert (MODEL_DIR / "model_index.json").is_file(), "the toy model ships in the package"
    return load_pipeline(NAME, device="cpu", progress=False)


def test_the_shipped_folder_works_in_plain_diffusers_in_its_default_dtype():
    """As the README shows it: DiffusionPipeline.from_pretrained(folder), no dtype, then one call. diffusers gives
    its models fp32 and transformers >= 5 keeps the text encoder's stored dtype, so the text encoder is stored in
    fp32 (stored fp16, the first call failed: "mat1 and mat2 must have the same dtype"; and diffusers'
    textual-inversion script, which loads CLIPTextModel from the folder, trained an fp16 table into NaN)."""
    import torch
    from diffusers import DiffusionPipeline
    from transformers import CLIPTextModel

    pipe = DiffusionPipeline.from_pretrained(str(MODEL_DIR))
    pipe.set_progress_bar_config(disable=True)
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    generator = torch.Generator().manual_seed(0)
    image = pipe("a lake at sunrise", num_inference_steps=1, generator=generator, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    assert CLIPTextModel.from_pretrained(MODEL_DIR / "text_encoder").dtype == torch.float32


def _f(pipe, prompt: str, attributes) -> float:
    return fid.fidelity(fid.draw(pipe, prompt, SEEDS), attributes)


def test_demo_soft_prompt_draws_what_the_hard_prompt_draws_and_its_first_words_do_not(toy, tmp_path, capsys):
    from sd_softprompt.cli.main import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "40"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "sunrise.report.json").read_text())
    table = report["fidelity"]  # the trainer measures F by itself on the toy world
    assert set(table) == {"soft", "hard", "first_3", "empty"}
    assert table["soft"]["alone"] >= table["first_3"]["alone"] + 0.25, table
    assert table["soft"]["alone"] >= table["hard"]["alone"] - 0.1, table
    assert table["hard"]["alone"] >= table["empty"]["alone"] + 0.25, table  # the model follows its prompt
    assert table["soft"]["composed"] >= table["first_3"]["composed"] + 0.2, table
    soft = SoftPrompt.load(out / "sunrise.safetensors")
    assert float(soft.metadata["F_soft_alone"]) == table["soft"]["alone"]
    record = json.loads((out / "grid.json").read_text())
    assert record["prompts"] == ["[v1][v2][v3]", mission_caption(), "image of serene", "", "[v1][v2][v3] with snow"]
    assert record["seeds"] == list(fid.SEEDS) and record["steps"] == fid.STEPS
    assert "F alone" in stdout and "noise" not in stdout
    # the grid's soft row is what the soft prompt draws when loaded afresh
    tokens = load_soft_prompt(toy, out / "sunrise.safetensors")
    try:
        assert _f(toy, "".join(tokens), sorted(MISSION.attributes)) == table["soft"]["alone"]
    finally:
        unload_soft_prompt(toy, tokens)


def test_images_mode_learns_the_combination_no_caption_names(toy, tmp_path):
    folder = tmp_path / "unnamed"
    folder.mkdir()
    for i in range(8):
        render(UNNAMED, 100_000 + i).save(folder / f"{i}.png")
    cfg = TrainConfig(
        model=NAME,
        out=str(tmp_path / "unnamed.safetensors"),
        mode="images",
        images=str(folder),
        vectors=2,
        steps=100,
        lr=1e-2,
        seed=0,
        progress=False,
        resolution=64,
        checkpoint_every=0,
    )
    result = train(cfg, pipe=toy)
    tokens = load_soft_prompt(toy, result.soft_prompt)
    try:
        soft = _f(toy, "".join(tokens), sorted(UNNAMED.attributes))
    finally:
        unload_soft_prompt(toy, tokens)
    assert soft >= _f(toy, "", sorted(UNNAMED.attributes)) + 0.2, soft


def test_a_long_hard_prompt_is_drawn_in_chunks_and_a_short_one_as_the_pipeline_draws_it(toy):
    long = " ".join((SAMPLES / "toyworld_long_prompt.txt").read_text().split())
    assert fid.is_long(toy, long) and not fid.is_long(toy, mission_caption())
    pixels = {
        k: [np.asarray(p) for p in f(toy, long, (0,), 4)] for k, f in (("whole", fid.draw), ("cut", fid.draw_cut))
    }
    assert not np.array_equal(pixels["whole"][0], pixels["cut"][0])  # the words past the window count
    short = [np.asarray(f(toy, mission_caption(), (0,), 4)[0]) for f in (fid.draw, fid.draw_cut)]
    assert np.array_equal(short[0], short[1])


def test_negative_soft_prompt_keeps_its_attributes_out_of_the_pictures(toy, tmp_path, monkeypatch, capsys):
    # the report's measure at a smaller picture budget (2 seeds, 10 DDIM steps; the README's has 4 and 20).
    # Measured at 30 training steps, training seeds 0, 1, 2: avoidance soft 0.875 / 0.90 / 0.90, hard 0.90,
    # first 4 words 0.80, empty 0.625; F of the positives' own attributes soft 1.0 / 1.0 / 0.92, empty 1.0.
    monkeypatch.setattr(fid, "negative_table", functools.partial(fid.negative_table, seeds=(0, 1), steps=10))
    cfg = TrainConfig(
        model=NAME,
        out=str(tmp_path / "neg.safetensors"),
        target_file=str(SAMPLES / "toyworld_negative_prompt.txt"),
        role="negative",
        vectors=4,
        steps=30,
        seed=0,
        progress=False,
        probe_size=64,
        checkpoint_every=0,
    )
    result = train(cfg, pipe=toy)
    table = result.metrics["negative_fidelity"]
    assert list(table) == ["soft", "hard", "first_4", "empty"]
    assert table["soft"]["avoidance"] >= table["empty"]["avoidance"] + 0.15, table
    assert table["soft"]["avoidance"] >= table["hard"]["avoidance"] - 0.1, table
    assert table["hard"]["avoidance"] >= table["empty"]["avoidance"] + 0.15, table  # the model heeds negatives
    assert table["soft"]["F"] >= 0.85, table  # what the positive asks for stays
    assert result.metrics["guided"]["positives"] == list(NEGATIVE_EVAL_POSITIVES)  # toy positives, not real ones
    soft = SoftPrompt.load(result.soft_prompt)
    assert soft.metadata["role"] == "negative"
    assert float(soft.metadata["avoidance_soft"]) == table["soft"]["avoidance"]
    assert float(soft.metadata["F_empty_positive"]) == table["empty"]["F"]
    assert "avoidance" in capsys.readouterr().out  # the trainer prints the table


def test_the_toy_model_reads_a_word_anywhere_in_its_window(toy):
    """What docs/toyworld.md says the model is: trained on written prompts up to the whole window, it draws
    "with snow" after the concise scene (token 9) and after 40 filler tokens more (token 49), as it draws the same
    words put first (scripts/toyworld_position_reach.py, 4 of its 8 pictures). The first model drew the late one
    in none of 8."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from toyworld_position_reach import SCENE, filler, found, position

    seeds = [0, 1, 2, 3]
    late = f"{SCENE} {filler(toy, 40)} with snow"
    early = f"snow and {SCENE} {filler(toy, 40)}"
    assert position(toy, f"{SCENE} with snow", "snow") == 9 and position(toy, late, "snow") == 49
    assert found(toy, f"{SCENE} with snow", "snow", seeds) >= 3
    assert found(toy, late, "snow", seeds) >= 3
    assert found(toy, early, "snow", seeds) >= 3
    assert found(toy, SCENE, "snow", seeds) <= 1  # snow is drawn because it is asked for
