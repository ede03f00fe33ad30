"""`sd-softprompt grid --clip-model`: CLIP-T / CLIP-I per grid row, offline with a tiny random CLIPModel."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sd_softprompt import cli
from sd_softprompt.models.pipeline import load_pipeline
from sd_softprompt.render.generate import generate_batch
from sd_softprompt.render.scoring import ClipScorer, Reference, score_rows

FAST = ["--steps", "2", "--height", "64", "--width", "64"]
PROMPTS = ["mountain view", "a lake at night"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the fixtures printed, keep only the command's
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """Two reference pictures (png, jpg) and a file that is not a picture (skipped with a warning)."""
    folder = tmp_path_factory.mktemp("reference")
    Image.new("RGB", (40, 48), (200, 120, 40)).save(folder / "a.png")
    Image.new("RGB", (64, 64), (20, 60, 200)).save(folder / "b.jpg")
    (folder / "notes.md").write_text("not a picture")
    return folder


def _grid_argv(model: str, out, *extra) -> list:
    argv = ["grid", "--model", model, "--prompt", PROMPTS[0], "--compare", PROMPTS[1], "--seeds", "0", "1"]
    return [*argv, *FAST, "--device", "cpu", "--out", out, *extra]


def test_score_rows_gives_one_score_dict_per_row_in_order():
    class Count:  # the smallest Scorer: the number of pictures in the row
        def score(self, images, reference):
            return {"n": float(len(images))}

    rows = [[Image.new("RGB", (8, 8))] * k for k in (1, 3, 2)]
    assert score_rows(rows, Reference(prompt="x"), Count()) == [{"n": 1.0}, {"n": 3.0}, {"n": 2.0}]


def test_grid_clip_scores_equal_the_scorer_on_the_same_pictures(
    tiny_dirs, tiny_clip_dir, reference_dir, tmp_path, capsys
):
    out = tmp_path / "scored.png"
    argv = _grid_argv(tiny_dirs("sd1"), out, "--clip-model", tiny_clip_dir)
    code, stdout, stderr = _run(capsys, *argv, "--reference-prompt", "a mountain", "--reference-images", reference_dir)
    assert code == 0, stderr
    assert "skipped notes.md" in stderr
    scores = json.loads(out.with_suffix(".json").read_text())["scores"]
    assert scores["scorer"] == f"clip:{tiny_clip_dir}"
    assert scores["reference_prompt"] == "a mountain" and scores["reference_images"] == 2
    assert [row["prompt"] for row in scores["rows"]] == PROMPTS

    # The same pictures, drawn again through the Python API (a seed gives the same picture), scored directly.
    pipe = load_pipeline(tiny_dirs("sd1"), device="cpu")
    scorer = ClipScorer(tiny_clip_dir)
    pictures = [Image.open(reference_dir / name).convert("RGB") for name in ("a.png", "b.jpg")]
    reference = Reference(prompt="a mountain", images=pictures)
    lines = stdout.strip().splitlines()[2:]  # after "wrote grid" and "wrote record"
    assert len(lines) == len(PROMPTS)
    for prompt, row, line in zip(PROMPTS, scores["rows"], lines):
        expected = scorer.score(generate_batch(pipe, prompt, [0, 1], 2, 7.5, 64, 64), reference)
        assert set(expected) == {"clip_t", "clip_i"}
        assert row["clip_t"] == pytest.approx(expected["clip_t"], abs=1e-6)
        assert row["clip_i"] == pytest.approx(expected["clip_i"], abs=1e-6)
        assert line == f"clip_t {row['clip_t']:.4f}  clip_i {row['clip_i']:.4f}  {prompt}"


def test_grid_clip_with_a_prompt_only_scores_clip_t(tiny_dirs, tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "t.png"
    code, stdout, stderr = _run(
        capsys, *_grid_argv(tiny_dirs("sd1"), out, "--clip-model", tiny_clip_dir, "--reference-prompt", "a lake")
    )
    assert code == 0, stderr
    rows = json.loads(out.with_suffix(".json").read_text())["scores"]["rows"]
    assert [set(row) for row in rows] == [{"prompt", "clip_t"}] * 2
    assert stdout.strip().splitlines()[-1].startswith("clip_t ") and "clip_i" not in stdout


def test_grid_without_clip_model_has_no_scores(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "plain.png"
    code, _, stderr = _run(capsys, *_grid_argv(tiny_dirs("sd1"), out))
    assert code == 0, stderr
    assert "scores" not in json.loads(out.with_suffix(".json").read_text())


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--clip-model", "CLIP"], "--reference-prompt TEXT (CLIP-T) and/or --reference-images DIR"),
        (["--clip-model", "MISSING", "--reference-prompt", "x"], "could not load a CLIPModel"),
        (["--clip-model", "CLIP", "--reference-images", "EMPTY"], "no png/jpg/jpeg/webp images"),
        (["--clip-model", "CLIP", "--reference-images", "MISSING"], "--reference-images takes a folder"),
        (["--reference-prompt", "x"], "add --clip-model"),
        (["--clip-model", "CLIP", "--reference-prompt", "x", "--interpolate", "a", "b"], "--interpolate"),
    ],
    ids=[
        "no-reference",
        "bad-clip-model",
        "empty-reference-folder",
        "missing-reference-folder",
        "no-clip-model",
        "interpolate",
    ],
)
def test_bad_clip_options_are_one_line_and_write_nothing(extra, names, tiny_dirs, tiny_clip_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    swap = {"CLIP": tiny_clip_dir, "MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty"}
    out = tmp_path / "grid.png"
    code, stdout, stderr = _run(capsys, *_grid_argv(tiny_dirs("sd1"), out, *[swap.get(a, a) for a in extra]))
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("sd-softprompt: error: ") and names in lines[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists() and not out.with_suffix(".json").exists()
