"""Mixing soft prompts: weighted sum, concatenation, strength, interpolation grid; CLI `mix` and `grid --interpolate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageChops

from sd_softprompt import cli
from sd_softprompt.errors import MixError
from sd_softprompt.files.mixing import concat, interpolate, mix, scale
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt, loaded_soft_prompts, loaded_tokens, unload_soft_prompt
from sd_softprompt.render.generate import generate, run_interpolation
from sd_softprompt.render.grid import grid_geometry


def soft(n=3, seed=0, keys=(("clip_l", 32),), dtype=torch.float32, family="sd1", name=None) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    vectors = {key: (torch.randn(n, width, generator=g) * 0.4).to(dtype) for key, width in keys}
    return SoftPrompt(vectors, metadata={"family": family, "name": name or f"s{seed}"})


SDXL = (("clip_l", 32), ("clip_g", 48))


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.fixture
def ab(tmp_path) -> tuple[str, str]:
    a, b = soft(seed=1), soft(seed=2)
    a.vectors["clip_l"][0, 0] = -0.0  # a negative zero must survive too
    return str(a.save(tmp_path / "a.safetensors")[0]), str(b.save(tmp_path / "b.safetensors")[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_weights_one_zero_give_a_bit_for_bit(dtype):
    a, b = soft(seed=1, keys=SDXL, dtype=dtype, family="sdxl"), soft(seed=2, keys=SDXL, dtype=dtype, family="sdxl")
    a.vectors["clip_g"][1, 2] = -0.0
    for result in (mix([a, b], [1, 0]), interpolate(a, b, 0.0)):
        for key in a.vectors:
            assert result.vectors[key].dtype == dtype and bits(result.vectors[key]) == bits(a.vectors[key])
        assert result.tokens == a.tokens and result.family == "sdxl"
    end = interpolate(a, b, 1.0)
    assert all(torch.equal(end.vectors[k], b.vectors[k]) for k in b.vectors)


def test_weighted_sum_and_mean_and_strength():
    a, b = soft(seed=1), soft(seed=2)
    got = mix([a, b], [0.7, 0.3], strength=2.0).vectors["clip_l"]
    assert torch.allclose(got, 2.0 * (0.7 * a.vectors["clip_l"] + 0.3 * b.vectors["clip_l"]), atol=1e-6)
    mean = mix([a, b]).vectors["clip_l"]
    assert torch.allclose(mean, (a.vectors["clip_l"] + b.vectors["clip_l"]) / 2, atol=1e-6)
    assert torch.equal(scale(a, 1.5).vectors["clip_l"], a.vectors["clip_l"] * 1.5)
    assert scale(a, 1.0).vectors["clip_l"] is not a.vectors["clip_l"]  # a copy, not the source's tensor


def test_concat_loads_as_n1_plus_n2_tokens(sd1):
    a, b = soft(n=2, seed=1), soft(n=3, seed=2)
    both = concat([a, b])
    assert both.num_vectors == 5 and both.tokens == [f"[v{i}]" for i in range(1, 6)]  # sources' [v1].. clash
    tokens = load_soft_prompt(sd1, both)
    assert tokens == both.tokens
    rows = sd1.text_encoder.get_input_embeddings().weight[sd1.tokenizer.convert_tokens_to_ids(tokens)]
    assert torch.equal(rows, torch.cat([a.vectors["clip_l"], b.vectors["clip_l"]]))
    a.tokens, b.tokens = ["<a1>", "<a2>"], ["<b1>", "<b2>", "<b3>"]
    assert concat([a, b]).tokens == ["<a1>", "<a2>", "<b1>", "<b2>", "<b3>"]  # distinct: kept


def test_metadata_records_sources_and_weights(ab, tmp_path):
    a, b = ab
    out = mix([a, b], [0.25, 0.75], name="evening").save(tmp_path / "m.safetensors")[0]
    back = SoftPrompt.load(out)
    record = json.loads(back.metadata["mix"])
    assert record == {"op": "sum", "sources": [a, b], "weights": [0.25, 0.75], "strength": 1.0}
    assert back.metadata["family"] == "sd1" and back.name == "evening"
    assert json.loads(concat([a, b]).metadata["mix"])["op"] == "concat"


@pytest.mark.parametrize(
    "other, message",
    [
        (soft(keys=SDXL, family="sdxl"), r"clip_g \+ clip_l \(sdxl\).*one model family"),
        (soft(keys=(("clip_l", 32),), family="flux"), r"\(flux\).*one model family"),
        (soft(keys=(("clip_l", 40),)), r"32 wide.*40 wide"),
        (soft(n=4), r"3 vectors.*4.*same N.*concat"),
    ],
    ids=["family-keys", "family-metadata", "width", "count"],
)
def test_what_cannot_be_combined_is_refused(other, message, tmp_path):
    a = str(soft(seed=1).save(tmp_path / "a.safetensors")[0])
    b = str(other.save(tmp_path / "b.safetensors")[0])
    with pytest.raises(MixError, match=message) as error:
        mix([a, b])
    assert a in str(error.value) and b in str(error.value)
    with pytest.raises(MixError, match="finite"):
        mix([a, a], [1.0, float("nan")])
    with pytest.raises(MixError, match="every weight is 0"):
        mix([a, a], [0, 0])


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_mix_concat_strength(ab, tmp_path, capsys):
    a, b = ab
    out = tmp_path / "m.safetensors"
    code, stdout, _ = _run(capsys, "mix", a, b, "--weights", "1", "0", "--out", out)
    assert code == 0 and str(out) in stdout
    assert bits(SoftPrompt.load(out).vectors["clip_l"]) == bits(SoftPrompt.load(a).vectors["clip_l"])
    code, _, _ = _run(capsys, "mix", a, b, "--concat", "--strength", "0.5", "--out", out)
    back = SoftPrompt.load(out)
    assert code == 0 and back.num_vectors == 6
    assert json.loads(back.metadata["mix"]) == {"op": "concat", "sources": [a, b], "strength": 0.5}


@pytest.mark.parametrize(
    "argv, names",
    [
        (lambda a, b, x: ["mix", a, x, "--out"], "one model family"),
        (lambda a, b, x: ["mix", a, b, "--weights", "1", "--out"], "2 soft prompts but 1 weights"),
        (lambda a, b, x: ["mix", a, b, "--concat", "--weights", "1", "1", "--out"], "--concat"),
        (lambda a, b, x: ["mix", a, "missing.safetensors", "--out"], "missing.safetensors"),
    ],
    ids=["family", "weights", "concat-weights", "missing"],
)
def test_cli_mix_errors_are_one_line_exit_2(argv, names, ab, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = str(soft(keys=SDXL, family="sdxl").save(tmp_path / "x.safetensors")[0])
    before = set(tmp_path.iterdir())
    code, stdout, stderr = _run(capsys, *argv(*ab, x), tmp_path / "out.safetensors")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sd-softprompt: error: ") and names in lines[0]
    assert stdout == "" and set(tmp_path.iterdir()) == before


def test_interpolation_grid_ends_are_a_and_b_with_the_same_seed(sd1, ab, tmp_path):
    a, b = ab
    settings = dict(steps=2, guidance=7.5, height=64, width=64)
    grid, record = run_interpolation(
        sd1, a, b, "[v1][v2][v3] lake", [0], 3, model_name="tiny", out=tmp_path / "g.png", progress=False, **settings
    )
    assert loaded_tokens(sd1) == [] and loaded_soft_prompts(sd1) == []  # the points were unloaded
    meta = json.loads(record.read_text())
    assert meta["interpolate"]["t"] == [0.0, 0.5, 1.0] and meta["seeds"] == [0]
    image = Image.open(grid).convert("RGB")
    geo = grid_geometry(
        1, 3, 64, 64, row_labels=["seed 0"], col_labels=["t=0 (A)", "t=0.5", "t=1 (B)"], caption="x" * 200
    )
    cells = [image.crop(box) for box in _cells(image, geo)]
    for source, cell in ((a, cells[0]), (b, cells[2])):
        load_soft_prompt(sd1, source)
        alone = generate(sd1, "[v1][v2][v3] lake", 0, **settings)
        unload_soft_prompt(sd1)
        assert ImageChops.difference(alone, cell).getbbox() is None
    assert ImageChops.difference(cells[0], cells[1]).getbbox() is not None


def _cells(image, geo):
    """The three cell boxes, found from the bottom edge: the caption's height depends on its text."""
    shift = image.size[1] - geo.size[1]
    return [(x0, y0 + shift, x1, y1 + shift) for x0, y0, x1, y1 in geo.cells[0]]


def test_interpolation_refuses_a_prompt_without_a_tokens(sd1, ab, tmp_path):
    from sd_softprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="none of A's tokens"):
        run_interpolation(
            sd1, *ab, "lake", [0], 3, steps=1, guidance=7.5, height=64, width=64, model_name="t", out=tmp_path / "g.png"
        )
    assert list(tmp_path.glob("g.*")) == []


def test_cli_grid_interpolate(tiny_dirs, ab, tmp_path, capsys):
    out = tmp_path / "row.png"
    code, stdout, _ = _run(
        capsys,
        "grid",
        "--model",
        tiny_dirs("sd1"),
        "--interpolate",
        *ab,
        "--interpolate-steps",
        "4",
        "--prompt",
        "[v1][v2][v3] lake",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--height",
        "64",
        "--width",
        "64",
        "--out",
        out,
    )
    assert code == 0 and str(out) in stdout
    record = json.loads(out.with_suffix(".json").read_text())
    assert len(record["interpolate"]["t"]) == 4 and record["interpolate"]["a"] == ab[0]
    assert Path(out).exists()
