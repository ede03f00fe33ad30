"""The CLI in-process on tiny saved pipelines: each command's output, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sd_softprompt import cli
from sd_softprompt.cli import parser as cli_parser
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.train import TrainConfig, TrainResult

FAST = ["--steps", "2", "--height", "64", "--width", "64"]
COMMANDS = ["generate", "grid", "inspect", "demo", "convert", "mix", "train"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Soft prompt files: one for the tiny SD1 model, one SDXL-shaped, one garbage."""
    root = tmp_path_factory.mktemp("soft")
    g = torch.Generator().manual_seed(0)
    SoftPrompt({"clip_l": torch.randn(3, 32, generator=g) * 0.3}, metadata={"name": "sun"}).save(
        root / "sd1.safetensors"
    )
    SoftPrompt({"clip_l": torch.randn(3, 32, generator=g), "clip_g": torch.randn(3, 48, generator=g)}).save(
        root / "sdxl.safetensors"
    )
    SoftPrompt({"clip_l": torch.randn(3, 32, generator=g), "t5xxl": torch.randn(3, 48, generator=g)}).save(
        root / "flux.safetensors"
    )
    sd3 = {"clip_l": torch.randn(3, 32, generator=g), "clip_g": torch.randn(3, 48, generator=g)}
    SoftPrompt(sd3 | {"t5xxl": torch.randn(3, 96, generator=g)}).save(root / "sd3.safetensors")
    (root / "garbage.safetensors").write_bytes(b"this is not an embedding" * 8)
    (root / "not-a-pipeline").mkdir()
    (root / "empty").mkdir()
    return {
        "empty_dir": root / "empty",
        "sd1": root / "sd1.safetensors",
        "sdxl": root / "sdxl.safetensors",
        "flux": root / "flux.safetensors",
        "sd3": root / "sd3.safetensors",
        "garbage": root / "garbage.safetensors",
        "missing": root / "missing.safetensors",
        "not_a_pipeline": root / "not-a-pipeline",
        "no_model": root / "no-such-model",
    }


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the fixtures printed (building tiny models), keep only the command's
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------ commands
def test_generate(tiny_dirs, files, tmp_path, capsys):
    out = tmp_path / "one.png"
    code, stdout, _ = _run(
        capsys,
        "generate",
        "--model",
        tiny_dirs("sd1"),
        "--soft",
        files["sd1"],
        "--prompt",
        "[v1][v2][v3] mountain view",
        "--seed",
        "3",
        *FAST,
        "--out",
        out,
    )
    assert code == 0 and str(out) in stdout
    assert Image.open(out).size == (64, 64)


def test_grid_with_two_soft_files_renamed(tiny_dirs, files, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    code, stdout, _ = _run(
        capsys,
        "grid",
        "--model",
        tiny_dirs("sd1"),
        "--soft",
        files["sd1"],
        "--soft",
        f"{files['sd1']}=<a>,<b>,<c>",
        "--prompt",
        "[v1][v2][v3] mountain view",
        "--compare",
        "<a><b><c> mountain view",
        "--compare",
        "mountain view",
        "--seeds",
        "0",
        "1",
        *FAST,
        "--out",
        out,
    )
    assert code == 0 and str(out) in stdout and str(out.with_suffix(".json")) in stdout
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["prompts"] == ["[v1][v2][v3] mountain view", "<a><b><c> mountain view", "mountain view"]
    assert record["seeds"] == [0, 1] and record["guidance"] == 7.5
    assert record["soft_tokens"] == ["[v1]", "[v2]", "[v3]", "<a>", "<b>", "<c>"]
    assert record["soft_prompt_files"] == [str(files["sd1"])] * 2
    assert Image.open(out).size[1] > 3 * 64


def test_overflowing_prompt_is_warned_about(tiny_dirs, files, tmp_path, capsys):
    long_prompt = "[v1][v2][v3] " + "mountain " * 80
    code, _, stderr = _run(
        capsys,
        "generate",
        "--model",
        tiny_dirs("sd1"),
        "--soft",
        files["sd1"],
        "--prompt",
        long_prompt,
        *FAST,
        "--out",
        tmp_path / "long.png",
    )
    assert code == 0 and "sd-softprompt: warning:" in stderr and "3 of them soft tokens" in stderr


def test_inspect(tiny_dirs, files, capsys):
    code, stdout, _ = _run(capsys, "inspect", files["sd1"])
    assert code == 0 and "native" in stdout and "clip_l: 3 x 32" in stdout and "nearest" not in stdout
    code, stdout, _ = _run(capsys, "inspect", files["sd1"], "--model", tiny_dirs("sd1"), "--top-k", "2", "--json")
    report = json.loads(stdout)
    assert code == 0 and report["model"]["family"] == "sd1"
    assert [len(n) for n in report["encoders"][0]["nearest"]] == [2, 2, 2]


def test_sd3_train_one_encoder_then_inspect_and_grid(tiny_dirs, files, tmp_path, capsys):
    """SD3 through the CLI: train T5's vectors only (--encoders), inspect the file against the model, grid it."""
    model, soft = tiny_dirs("sd3"), tmp_path / "sd3.safetensors"
    code, stdout, _ = _run(
        capsys, "train", "--model", model, "--target", "a misty lake at sunrise", "--vectors", "2", "--steps", "3",
        "--loss", "sequence", "--encoders", "t5xxl", "--eval-samples", "2", "--probe-size", "64", "--out", soft,
    )  # fmt: skip
    assert code == 0 and str(soft) in stdout
    trained = SoftPrompt.load(soft)
    assert trained.metadata["family"] == "sd3" and trained.metadata["trained_encoders"] == "t5xxl"
    assert {k: tuple(v.shape) for k, v in trained.vectors.items()} == {
        "clip_l": (2, 32),
        "clip_g": (2, 48),
        "t5xxl": (2, 96),
    }
    code, stdout, _ = _run(capsys, "inspect", soft, "--model", model, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["model"]["family"] == "sd3"
    assert sorted(e["text_encoder"] for e in report["encoders"]) == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    out = tmp_path / "sd3grid.png"
    code, _, _ = _run(
        capsys,
        "grid",
        "--model",
        model,
        "--soft",
        soft,
        "--prompt",
        "[v1][v2] lake",
        "--seeds",
        "0",
        *FAST,
        "--out",
        out,
    )
    record = json.loads(out.with_suffix(".json").read_text())
    assert code == 0 and record["family"] == "sd3" and record["guidance"] == 7.0


def test_convert(files, tmp_path, capsys):
    out = tmp_path / "sun.pt"
    code, stdout, _ = _run(capsys, "convert", files["sd1"], "--to", "a1111", "--out", out)
    assert code == 0 and str(out) in stdout
    converted = SoftPrompt.load(out)
    assert converted.source_format == "a1111"
    (vectors,) = converted.vectors.values()  # A1111 files do not name the encoder
    assert torch.equal(vectors, SoftPrompt.load(files["sd1"]).vectors["clip_l"])


def test_demo_on_a_tiny_random_pipeline(tmp_path, capsys):
    code, stdout, _ = _run(capsys, "demo", "--family", "sd1", "--out", tmp_path / "demo", "--steps", "3")
    assert code == 0
    for name in ("grid.png", "grid.json", "inspect.txt", "sunrise.safetensors", "tiny-sd1/model_index.json"):
        assert (tmp_path / "demo" / name).is_file(), name
        assert name.split("/")[0] in stdout
    assert f"{tmp_path / 'demo'}/" in stdout
    assert "noise" in stdout
    record = json.loads((tmp_path / "demo" / "grid.json").read_text())
    assert record["prompts"][0] == "[v1][v2][v3] mountain view"
    assert record["prompts"][2] == "image of serene mountain view" and record["seeds"] == [0, 1, 2]


def test_train_maps_every_flag_to_the_config(monkeypatch, tmp_path, capsys):
    # importlib, not `import ... as`: the package's lazy `train` export may shadow the submodule's name
    train_module = importlib.import_module("sd_softprompt.train")

    seen = {}

    def fake_train(config):
        seen["config"] = config
        metrics = {"distance": {"alone": {"ratio_to_first_n_words": 0.25, "D": {"soft": 1.0}}}}
        return TrainResult(Path(config.out), Path(config.out).with_suffix(".report.json"), metrics)

    monkeypatch.setattr(train_module, "train", fake_train, raising=False)
    code, stdout, _ = _run(
        capsys,
        "train",
        "--model",
        "m",
        "--out",
        tmp_path / "s.safetensors",
        "--mode",
        "images",
        "--images",
        "pics",
        "--vectors",
        "2",
        "--steps",
        "7",
        "--lr",
        "0.1",
        "--batch-size",
        "3",
        "--grad-accum",
        "2",
        "--warmup",
        "1",
        "--schedule",
        "cosine",
        "--max-grad-norm",
        "0.5",
        "--seed",
        "9",
        "--mixed-precision",
        "bf16",
        "--init",
        "words",
        "--init-words",
        "sunny hill",
        "--context",
        "a",
        "--context",
        "b c",
        "--loss",
        "full",
        "--norm-weight",
        "0.2",
        "--encoders",
        "clip_l",
        "--tokens",
        "<x>",
        "<y>",
        "--resolution",
        "256",
        "--no-flip",
        "--style",
        "--validate-every",
        "5",
        "--validation-prompt",
        "p {}",
        "--checkpoint-every",
        "4",
        "--resume",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert code == 0
    config = seen["config"]
    assert (config.mode, config.images, config.vectors, config.steps, config.lr) == ("images", "pics", 2, 7, 0.1)
    assert (config.batch_size, config.grad_accum, config.warmup, config.schedule) == (3, 2, 1, "cosine")
    assert (config.max_grad_norm, config.seed, config.mixed_precision, config.init) == (0.5, 9, "bf16", "words")
    assert (config.init_words, config.context, config.loss, config.norm_weight) == (
        "sunny hill",
        ["a", "b c"],
        "full",
        0.2,
    )
    assert (config.encoders, config.tokens, config.resolution) == (["clip_l"], ["<x>", "<y>"], 256)
    assert (config.flip, config.style, config.validate_every, config.validation_prompts) == (False, True, 5, ["p {}"])
    assert (config.checkpoint_every, config.resume, config.device, config.progress) == (4, True, "cpu", False)
    assert str(tmp_path / "s.safetensors") in stdout and "s.report.json" in stdout
    assert "distance.alone.ratio_to_first_n_words  0.25" in stdout

    _run(capsys, "train", "--model", "m", "--out", "o.safetensors")
    assert seen["config"] == TrainConfig(model="m", out="o.safetensors")  # untouched flags keep the defaults


def test_every_train_config_field_has_a_flag_and_its_help_from_the_config():
    fields = dataclasses.fields(TrainConfig)
    assert all(f.metadata["help"] for f in fields)  # the help lives once, in train/config.py
    train_parser = next(
        a for a in cli_parser.build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train"
    )[1]
    dests = {a.dest: a for a in train_parser._actions}
    for f in fields:
        assert f.name in dests, f"TrainConfig.{f.name} has no flag"
        assert dests[f.name].help.startswith(f.metadata["help"])
    flags = [flag for flag, _ in cli_parser.train_flags(TrainConfig).values()]
    assert len(flags) == len(set(flags)) == len(fields)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command, capsys):
    code, stdout, _ = _run(capsys, command, "--help")
    assert code == 0 and "example:" in stdout and f"sd-softprompt {command}" in stdout


# ---------------------------------------------------------------------------------- bad input
def _bad_cases():
    # (name, argv builder(model_dir, files, out) , what the error must name)
    gen = lambda model, soft: ["generate", "--model", model, *soft, "--prompt", "[v1] x", *FAST]  # noqa: E731
    grid = lambda model, soft: ["grid", "--model", model, *soft, "--prompt", "[v1] x", "--seeds", "0", *FAST]  # noqa: E731
    cases = []
    for name, build in (("generate", gen), ("grid", grid)):
        cases += [
            (f"{name}-missing-soft", lambda d, f, b=build: b(d, ["--soft", f["missing"]]), "missing"),
            (f"{name}-garbage-soft", lambda d, f, b=build: b(d, ["--soft", f["garbage"]]), "garbage"),
            (f"{name}-width-mismatch", lambda d, f, b=build: b(d, ["--soft", f["sdxl"]]), "sdxl"),
            (f"{name}-missing-model", lambda d, f, b=build: b(f["no_model"], ["--soft", f["sd1"]]), "no-such-model"),
            (f"{name}-not-a-pipeline", lambda d, f, b=build: b(f["not_a_pipeline"], []), "not-a-pipeline"),
        ]
    cases += [
        ("inspect-missing", lambda d, f: ["inspect", f["missing"]], "missing"),
        ("inspect-garbage", lambda d, f: ["inspect", f["garbage"], "--model", d], "garbage"),
        ("inspect-width-mismatch", lambda d, f: ["inspect", f["sdxl"], "--model", d], "sdxl"),
        (
            "inspect-not-a-pipeline",
            lambda d, f: ["inspect", f["sd1"], "--model", f["not_a_pipeline"]],
            "not-a-pipeline",
        ),
        ("convert-missing", lambda d, f: ["convert", f["missing"], "--to", "kohya"], "missing"),
        ("convert-garbage", lambda d, f: ["convert", f["garbage"], "--to", "kohya"], "garbage"),
        ("convert-no-layout", lambda d, f: ["convert", f["flux"], "--to", "a1111"], "a1111 cannot hold a flux"),
        ("convert-sd3-no-layout", lambda d, f: ["convert", f["sd3"], "--to", "diffusers"], "native, onetrainer"),
        (
            "train-missing-model",
            lambda d, f: ["train", "--model", f["no_model"], "--target", "a b c", "--steps", "1"],
            "no-such-model",
        ),
        ("train-missing-target", lambda d, f: ["train", "--model", d, "--mode", "text"], "--target is required"),
        (
            "train-zero-vectors",
            lambda d, f: ["train", "--model", d, "--target", "a b", "--vectors", "0"],
            "--vectors must be",
        ),
        (
            "train-missing-folder",
            lambda d, f: ["train", "--model", d, "--mode", "images", "--images", f["missing"]],
            "not a folder",
        ),
        (
            "train-empty-folder",
            lambda d, f: ["train", "--model", d, "--mode", "images", "--images", f["empty_dir"]],
            "no png/jpg",
        ),
        (
            "train-unwritable-out",
            lambda d, f: ["train", "--model", d, "--target", "a b", "--out", f["garbage"] / "x.safetensors"],
            "cannot write there",
        ),
    ]
    return cases


@pytest.mark.parametrize("name, build, names", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_is_one_line_and_writes_nothing(name, build, names, tiny_dirs, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = build(tiny_dirs("sd1"), files)
    if "--out" not in argv and argv[0] != "inspect":
        argv += ["--out", tmp_path / ("out.safetensors" if argv[0] in ("train", "convert") else "out.png")]
    code, stdout, stderr = _run(capsys, *argv)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("sd-softprompt: error: "), stderr
    assert names in lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["grid", "--model", "m"], ["generate", "--steps", "x"], ["nope"], []])
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2


def test_package_import_is_cheap_and_exports_lazily():
    code = (
        "import sys, sd_softprompt as s; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
        "assert s.__version__ == '0.1.0'; assert s.SoftPrompt.__name__ == 'SoftPrompt'; "
        "assert callable(s.load_soft_prompt) and callable(s.unload_soft_prompt) and callable(s.detect_family); "
        "assert 'sdxl' in s.FAMILIES and s.TrainConfig.__name__ == 'TrainConfig'; "
        "assert issubclass(s.WidthMismatchError, s.SoftPromptError)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_grid_per_encoder_and_weighting(tiny_dirs, files, tmp_path, capsys):
    """grid --per-encoder --weighting: a row per encoder subset, the prompt read as ComfyUI weights it."""
    out = tmp_path / "enc.png"
    prompt = "([v1][v2][v3]:1.2) mountain view"
    code, stdout, stderr = _run(
        capsys, "grid", "--model", tiny_dirs("sdxl"), "--soft", files["sdxl"], "--prompt", prompt,
        "--per-encoder", "--weighting", "comfyui", "--compare", "mountain view", "--seeds", "0", *FAST, "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["per_encoder"] == [["clip_l", "clip_g"], ["clip_l"], ["clip_g"], [], None]
    assert record["weighting"] == "comfyui" and record["prompts"] == [prompt] * 4 + ["mountain view"]
    code, _, stderr = _run(capsys, "grid", "--model", tiny_dirs("sdxl"), "--prompt", "x", "--per-encoder", *FAST)
    assert code == 2 and "add --soft FILE" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = _run(
        capsys, "generate", "--model", tiny_dirs("flux"), "--prompt", "(x:2)", "--weighting", "a1111", *FAST
    )
    assert code == 2 and "take no weights here" in stderr and len(stderr.strip().splitlines()) == 1
