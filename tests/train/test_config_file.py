"""`train --config run.toml`: a TOML run equals the same flags; the resolved config written beside the output
repeats the run; bad files are refused in one line naming the key."""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path

import pytest
import torch

from sd_softprompt import cli
from sd_softprompt.errors import ConfigError
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.train import TrainConfig, TrainResult
from sd_softprompt.train.config_file import config_toml, dumps, load_config, read_config, tomllib  # tomli on 3.10


def test_the_writer_round_trips_through_tomllib():
    values = {
        "text": 'a "quoted" back\\slash, tab\t, newline\n, bell\x07, del\x7f, é 日本 🌄',
        "empty": "",
        "whole": -3,
        "big": 2**40,
        "real": 5e-3,
        "tiny": 1e-05,
        "huge": 1e16,
        "negative": -0.0,
        "yes": True,
        "no": False,
        "words": ["a b", 'c"d', ""],
        "numbers": [0, 1, 2],
        "reals": [0.5, 2.0],
        "none": [],
        "key with space": 1,
    }
    assert tomllib.loads(dumps(values)) == values
    assert "none" not in tomllib.loads(dumps({"none": None}))  # TOML has no null: left out
    back = tomllib.loads(dumps({"nan": math.nan, "inf": math.inf}))
    assert math.isnan(back["nan"]) and back["inf"] == math.inf


def test_every_field_round_trips_through_the_written_config(tmp_path):
    cfg = TrainConfig(
        model="owner/model",
        out=str(tmp_path / "x.safetensors"),
        mode="images",
        images="pics",
        vectors=2,
        lr=1e-4,
        context=["oil painting", 'say "hi"'],
        encoders=["clip_l"],
        tokens=["<a>", "<b>"],
        flip=False,
        offload=False,
        validation_prompts=["a photo of {}"],
        validation_seeds=[3, 4],
        snr_gamma=5.0,
        probe_size=64,
        log_with="tensorboard",
        model_card=False,
        push_to_hub="me/x",
    )
    path = tmp_path / "x.config.toml"
    path.write_text(config_toml(cfg), encoding="utf-8")
    assert "no-flip = true" in path.read_text() and "batch-size = 4" in path.read_text()  # the flags' names
    assert load_config(path) == cfg
    assert load_config(path, steps=7) == dataclasses.replace(cfg, steps=7)


def test_keys_are_the_flags_names_with_dashes_or_underscores(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "m"\nout = "o.safetensors"\nbatch_size = 2\ngrad-accum = 3\nno-flip = true\n'
        'validation-prompt = ["p {}"]\ncontext = "one"\nlr = 1\n',
        encoding="utf-8",
    )
    values = read_config(path)
    assert values == {
        "model": "m",
        "out": "o.safetensors",
        "batch_size": 2,
        "grad_accum": 3,
        "flip": False,
        "validation_prompts": ["p {}"],
        "context": ["one"],  # one value for a repeatable flag: a list of one
        "lr": 1.0,
    }
    assert isinstance(values["lr"], float)


@pytest.mark.parametrize(
    "text, message",
    [
        ("stpes = 3", "unknown key 'stpes' .did you mean steps\\?"),
        ("steps = '300'", "steps = '300': must be a whole number"),
        ("steps = true", "steps = True: must be a whole number"),
        ("lr = 'fast'", "lr = 'fast': must be a number"),
        ("no-flip = 1", "no-flip = 1: must be true or false"),
        ("mode = 'video'", "mode = 'video': must be one of text, images"),
        ("validation-seeds = [0, 'one']", "validation-seeds = 'one': must be a whole number"),
        ("[train]\nsteps = 3", "\\[train\\] is a table; the config is flat"),
        ("steps = 3\nsteps = 4", "not valid TOML"),
        ("batch-size = 2\nbatch_size = 3", "batch_size is given twice"),
        ("steps 3", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as error:
        read_config(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        read_config(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b'target = "caf\xe9"')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config(tmp_path / "latin1.toml")


def _seen_config(monkeypatch, capsys, *argv) -> TrainConfig:
    """The TrainConfig the CLI hands to train() for these arguments (train itself replaced)."""
    train_module = importlib.import_module("sd_softprompt.train")
    seen = {}

    def fake_train(config):
        seen["config"] = config
        return TrainResult(Path(config.out), Path(config.out).with_suffix(".report.json"), {})

    monkeypatch.setattr(train_module, "train", fake_train, raising=False)
    code = cli.main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    return seen["config"]


def test_a_toml_run_is_the_same_flags_and_flags_override_it(tmp_path, monkeypatch, capsys):
    flags = ["--model", "m", "--out", "o.safetensors", "--target", "a lake", "--steps", "7", "--lr", "0.01"]
    flags += ["--no-flip", "--context", "x", "--context", "y z", "--validation-seeds", "3", "4"]
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "m"\nout = "o.safetensors"\ntarget = "a lake"\nsteps = 7\nlr = 0.01\nno-flip = true\n'
        'context = ["x", "y z"]\nvalidation-seeds = [3, 4]\n',
        encoding="utf-8",
    )
    by_flags = _seen_config(monkeypatch, capsys, "train", *flags)
    assert _seen_config(monkeypatch, capsys, "train", "--config", path) == by_flags
    overridden = _seen_config(monkeypatch, capsys, "train", "--config", path, "--steps", "9", "--context", "w")
    assert overridden == dataclasses.replace(by_flags, steps=9, context=["w"])  # a flag replaces, lists too
    # --model and --out may come from the file, but must come from somewhere
    path.write_text('target = "a lake"\n', encoding="utf-8")
    code = cli.main(["train", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "required: --model, --out" in err and str(path) in err and len(err.splitlines()) == 1
    path.write_text("stpes = 3\n", encoding="utf-8")
    assert cli.main(["train", "--config", str(path), "--model", "m", "--out", "o.safetensors"]) == 2
    assert "unknown key 'stpes'" in capsys.readouterr().err


def test_a_run_repeats_from_its_written_config(tiny_dirs, tmp_path, capsys):
    """For real: the config a run wrote beside its output, given back to --config, trains the same vectors.
    (That a TOML file and the same flags give train() the same config is the test above.)"""
    model = tiny_dirs("sd1")
    flags = ["--target", "a misty lake at sunrise", "--vectors", "2", "--steps", "3", "--loss", "sequence"]
    flags += ["--eval-samples", "2", "--probe-size", "64", "--checkpoint-every", "0", "--no-progress"]
    assert cli.main(["train", "--model", model, *flags, "--out", str(tmp_path / "flags.safetensors")]) == 0
    written = tmp_path / "flags.config.toml"
    assert read_config(written)["out"] == str(tmp_path / "flags.safetensors")
    assert cli.main(["train", "--config", str(written), "--out", str(tmp_path / "again.safetensors")]) == 0
    capsys.readouterr()
    first, again = (SoftPrompt.load(tmp_path / f"{n}.safetensors").vectors["clip_l"] for n in ("flags", "again"))
    assert torch.equal(first, again)
    # the second run's own config: the same settings but for its --out
    configs = [read_config(tmp_path / f"{n}.config.toml") for n in ("flags", "again")]
    assert configs[1] == configs[0] | {"out": str(tmp_path / "again.safetensors")}
