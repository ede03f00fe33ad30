"""Resume and the files a training run writes (issue 21): a checkpoint continues only the run that wrote it, a
checkpoint is never lost to a run without --resume, and the soft prompt and its report are replaced together
or not at all. Each refusal is one short line and exit 2, with the files on disk as they were."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from sd_softprompt.train import trainer
from tests.test_hardening import assert_one_line_error, files_in, run_cli, train_argv
from tests.test_hardening_images import images_argv, pattern


def crash_after_training(monkeypatch) -> None:
    """The run stops after its last step (its last checkpoint written), before the soft prompt is."""

    def crash(*args):
        raise KeyboardInterrupt("crashed")

    monkeypatch.setattr(trainer, "_finish", crash)


def unfinished_run(capsys, monkeypatch, argv: list[str]) -> bytes:
    """Run ``argv`` so that it stops before writing, leaving its checkpoint; the checkpoint's bytes."""
    with monkeypatch.context() as m:
        crash_after_training(m)
        code, _, err = run_cli(capsys, *argv)
    assert code == 130, err
    return Path("run.checkpoint.pt").read_bytes()


@pytest.fixture
def sdxl_dir(tiny_dirs):
    return tiny_dirs("sdxl")


# ------------------------------------------------------------------------------ what differs, in one line
def test_resume_with_other_encoders_names_them(sdxl_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(sdxl_dir, "run.safetensors", "--checkpoint-every", "1")
    saved = unfinished_run(capsys, monkeypatch, argv)
    line = assert_one_line_error(*run_cli(capsys, *argv, "--resume", "--encoders", "clip_l")[::2])
    assert "run.checkpoint.pt: a checkpoint of another run: --encoders clip_l (checkpoint: unset)" in line
    assert "--vectors" not in line and "--target" not in line  # only what differs
    assert files_in(tmp_path) == ["run.checkpoint.pt"] and Path("run.checkpoint.pt").read_bytes() == saved
    # What may change on resume (how long, how fast) does not stop it.
    code, _, err = run_cli(capsys, *argv, "--resume", "--lr", "0.001", "--steps", "3")
    assert code == 0, err
    assert files_in(tmp_path) == ["README.md", "run.config.toml", "run.report.json", "run.safetensors"]


def test_resume_with_other_vectors_is_a_short_line(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--checkpoint-every", "1")
    unfinished_run(capsys, monkeypatch, argv)
    line = assert_one_line_error(*run_cli(capsys, *argv, "--resume", "--vectors", "3", "--seed", "5")[::2])
    assert "--vectors 3 (checkpoint: 2), --seed 5 (checkpoint: 0)" in line and len(line) < 200, line


def test_resume_on_other_pictures_is_refused_and_a_moved_folder_is_not(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, seed in (("pics", 0), ("other", 1)):
        (tmp_path / name).mkdir()
        pattern(40, 40, seed).save(tmp_path / name / "a.png")
    argv = images_argv(tiny_dirs("sd1"), tmp_path / "pics", "--checkpoint-every", "1", out="run.safetensors")
    saved = unfinished_run(capsys, monkeypatch, argv)
    other = images_argv(tiny_dirs("sd1"), tmp_path / "other", "--checkpoint-every", "1", out="run.safetensors")
    line = assert_one_line_error(*run_cli(capsys, *other, "--resume")[::2], "--images (other pictures)")
    assert Path("run.checkpoint.pt").read_bytes() == saved
    # The same pictures under another name: the same run.
    shutil.copytree(tmp_path / "pics", tmp_path / "moved")
    moved = images_argv(tiny_dirs("sd1"), tmp_path / "moved", "--checkpoint-every", "1", out="run.safetensors")
    code, out, err = run_cli(capsys, *moved, "--resume")
    assert code == 0 and "resuming from run.checkpoint.pt at step 1" in out, err
    del line


# ------------------------------------------------------------------------------ checkpoints that are not one
def test_a_checkpoint_that_is_not_a_dict_or_has_other_widths(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--checkpoint-every", "1")
    torch.save([1, 2, 3], "run.checkpoint.pt")
    line = assert_one_line_error(*run_cli(capsys, *argv, "--resume")[::2], "run.checkpoint.pt")
    assert "holds a list, not a training checkpoint; delete it to start over" in line
    Path("run.checkpoint.pt").unlink()
    unfinished_run(capsys, monkeypatch, argv)
    state = torch.load("run.checkpoint.pt", weights_only=True)
    state["vectors"] = {"clip_l": torch.randn(2, 64)}  # the right settings, vectors of another width
    torch.save(state, "run.checkpoint.pt")
    line = assert_one_line_error(*run_cli(capsys, *argv, "--resume")[::2], "run.checkpoint.pt")
    assert "its clip_l vectors are 2x64, this model's are 2x32" in line
    assert files_in(tmp_path) == ["run.checkpoint.pt"]


def test_a_checkpoint_that_is_a_fifo_does_not_hang(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkfifo("run.checkpoint.pt")
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--resume")
    assert_one_line_error(*run_cli(capsys, *argv)[::2], "run.checkpoint.pt: not a regular file")


def test_a_nan_checkpoint_is_not_advised_for_resuming(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--checkpoint-every", "1")
    unfinished_run(capsys, monkeypatch, argv)
    state = torch.load("run.checkpoint.pt", weights_only=True)
    state["vectors"]["clip_l"][0, 3] = float("nan")
    torch.save(state, "run.checkpoint.pt")
    line = assert_one_line_error(*run_cli(capsys, *argv, "--resume")[::2], "run.checkpoint.pt")
    assert "non-finite" in line and "delete it" in line and "--resume" not in line


def test_an_unfinished_runs_checkpoint_is_kept_by_a_run_without_resume(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--checkpoint-every", "1")
    saved = unfinished_run(capsys, monkeypatch, argv)
    line = assert_one_line_error(*run_cli(capsys, *argv)[::2], "run.checkpoint.pt")
    assert "an unfinished run's checkpoint (step 2) is there; add --resume to continue it" in line
    assert files_in(tmp_path) == ["run.checkpoint.pt"] and Path("run.checkpoint.pt").read_bytes() == saved


# ------------------------------------------------------------------------------ the soft prompt and its report
def finished_pair(capsys, argv) -> dict[str, bytes]:
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    return {name: Path(name).read_bytes() for name in ("run.safetensors", "run.report.json")}


def test_a_folder_where_the_report_goes_keeps_the_old_soft_prompt(tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors")
    old = finished_pair(capsys, argv)
    Path("run.report.json").unlink()
    Path("run.report.json").mkdir()
    line = assert_one_line_error(*run_cli(capsys, *argv, "--seed", "1")[::2], "run.report.json: a folder")
    assert "choose another --out" in line
    assert files_in(tmp_path) == ["README.md", "run.config.toml", "run.report.json", "run.safetensors"]
    assert Path("run.safetensors").read_bytes() == old["run.safetensors"]


@pytest.mark.parametrize("error", [errno.EACCES, errno.EPERM, errno.EISDIR])
def test_a_report_that_cannot_be_replaced_keeps_the_old_pair(error, tiny_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--checkpoint-every", "1")
    old = finished_pair(capsys, argv)
    real = os.replace

    def locked(src, dst):  # the report is locked (or turns into a folder) after the soft prompt landed
        if Path(dst).name == "run.report.json" and Path(src).name.endswith(".tmp"):
            raise OSError(error, os.strerror(error), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", locked)
    line = assert_one_line_error(*run_cli(capsys, *argv, "--seed", "1")[::2], "run.report.json: cannot write it")
    assert "--resume" in line  # the run's last checkpoint is kept, and said
    assert files_in(tmp_path) == [
        "README.md",
        "run.checkpoint.pt",
        "run.config.toml",
        "run.report.json",
        "run.safetensors",
    ]
    for name, data in old.items():
        assert Path(name).read_bytes() == data, name


def test_a_new_lr_on_resume_takes_effect(tiny_dirs, tmp_path, capsys, monkeypatch):
    """What MAY_CHANGE must change: a diverged run is told to resume with a lower --lr."""
    from sd_softprompt.files.softprompt import SoftPrompt

    monkeypatch.chdir(tmp_path)
    argv = train_argv(tiny_dirs("sd1"), "run.safetensors", "--checkpoint-every", "1", "--steps", "1")
    unfinished_run(capsys, monkeypatch, argv)
    shutil.copy("run.checkpoint.pt", "saved.pt")
    vectors = {}
    for lr in ("0.005", "0.5"):  # 0.005: the run's own
        shutil.copy("saved.pt", "run.checkpoint.pt")
        code, _, err = run_cli(capsys, *argv, "--resume", "--steps", "3", "--lr", lr)
        assert code == 0, err
        vectors[lr] = SoftPrompt.load("run.safetensors").vectors["clip_l"]
    moved = {lr: float((v - vectors["0.005"]).norm()) for lr, v in vectors.items()}
    assert moved["0.5"] > 0.1, moved


def test_the_settings_a_resume_may_change_are_fields_of_the_config():
    """MAY_CHANGE names real TrainConfig fields, and every output-only field (logging, card, upload) is in it, so
    adding one of those does not block --resume."""
    import dataclasses

    from sd_softprompt.train.checkpoints import MAY_CHANGE
    from sd_softprompt.train.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert names >= MAY_CHANGE
    assert {"log_with", "log_dir", "model_card", "push_to_hub", "progress", "out"} <= MAY_CHANGE
