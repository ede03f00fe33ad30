"""scripts/pool_cost.py on the tiny SD1 pipeline: its held-out D is the package's measure, its pool is timed
only where there is one, and the trainer is left as it was (its final measure and pool untouched)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
pool_cost = pytest.importorskip("pool_cost")


def test_held_out_is_distance_report(sd1):
    from sd_softprompt.families import detect_family
    from sd_softprompt.train.measure import EVAL_CONTEXTS, Probe, distance_report

    family = detect_family(sd1)
    probe = Probe.make(sd1, family, 2, 64, seed=12345)
    held = pool_cost.HeldOut(sd1, family, pool_cost.TARGET, 3, probe, EVAL_CONTEXTS)
    want = distance_report(sd1, family, "mountain lake", pool_cost.TARGET, 3, probe)
    got = held.report("mountain lake")
    for where in ("alone", "composed"):
        for key in ("ratio_to_first_n_words", "ratio_to_empty"):
            assert got[where][key] == pytest.approx(want[where][key], rel=1e-5)


def test_sweep_rows(tmp_path):
    from sd_softprompt.train.objectives import TextObjective

    real_pool, measured = TextObjective._pool_targets, TextObjective.measured
    pool_cost.main(
        ["--tiny", "--archs", "sd1", "--pools", "2", "--steps", "2", "--eval-samples", "1"] + ["--out", str(tmp_path)]
    )
    report = json.loads((tmp_path / "pool_cost.json").read_text())
    rows = {r["loss"]: r for r in report["archs"][0]["rows"]}
    assert set(rows) == {"initial vectors (step 0)", "denoiser", "denoiser-fresh"}
    assert rows["denoiser"]["pool_latents"] == 24 and rows["denoiser"]["pool_wall_s"] > 0  # 12 contexts x 2
    assert rows["denoiser-fresh"]["pool_latents"] == 0 and rows["denoiser-fresh"]["pool_wall_s"] == 0
    for r in rows.values():
        assert r["held_out"]["alone"]["ratio_to_first_n_words"] > 0
    assert "| denoiser-fresh |" in (tmp_path / "pool_cost.md").read_text()
    assert (TextObjective._pool_targets, TextObjective.measured) == (real_pool, measured)
