"""The ``autonomy_tomo`` benchmark runs at ``--smoke`` size and records sane figures.

Smoke sizes say nothing about the adaptive scan's quality; here every strategy must have
scanned the angles it was given, been reconstructed and scored against the phantom's
ground truth, and the headline must follow from the rows it was computed from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import autonomy_tomo  # noqa: E402
from synaps_agent.agent.angles import angular_gaps  # noqa: E402


def test_truth_scores_itself_perfectly_and_noise_worse(tmp_path):
    from synaps_agent.sim_devices.beamline import make_sim_beamline
    from synaps_agent.sim_devices.phantoms import make_phantom

    bl = make_sim_beamline(make_phantom("T-electrode", 11, size=16), tmp_path)
    truth = autonomy_tomo.Truth(bl)
    perfect = truth.score(truth.mu)
    assert perfect["rel_error"] == 0.0
    assert perfect["solid_iou"] == pytest.approx(1.0)
    assert perfect["ssim"] == pytest.approx(1.0)
    noisy = truth.mu + np.random.default_rng(0).normal(0, truth.mu.std(), truth.mu.shape)
    worse = truth.score(noisy.astype(np.float32))
    assert 0.2 < worse["rel_error"] < 2 and worse["ssim"] < 0.9 and worse["solid_iou"] < 0.98
    umap = truth.uncertainty(truth.mu[:4])
    assert umap.shape == truth.mu.shape[1:] and 0 <= umap.min() and umap.max() <= 1
    assert np.all(umap[~truth.mask[0]] == 0)
    with pytest.raises(ValueError, match="reconstruction shape"):
        truth.score(truth.mu[:-1])
    with pytest.raises(ValueError, match="unknown strategy 'spiral'"):
        autonomy_tomo.run_strategy("spiral", 4, autonomy_tomo._params(True), tmp_path)
    with pytest.raises(ValueError, match="unknown dose 'half'"):
        autonomy_tomo.run_strategy("uniform", 4, autonomy_tomo._params(True), tmp_path, "half")


def test_fewest_angles_reads_the_rows():
    reference = {"strategy": "uniform", "dose": "exposure", "angles": 40, "rel_error": 0.5,
                 "solid_iou": 0.8}  # fmt: skip
    rows = [
        reference,
        {"strategy": "uniform", "dose": "exposure", "angles": 20, "rel_error": 0.6,
         "solid_iou": 0.79},
        {"strategy": "golden", "dose": "exposure", "angles": 20, "rel_error": 0.52,
         "solid_iou": 0.7},
        {"strategy": "adaptive", "dose": "exposure", "angles": 10, "rel_error": 0.9,
         "solid_iou": 0.5},
        {"strategy": "adaptive", "dose": "exposure", "angles": 20, "rel_error": 0.51,
         "solid_iou": 0.785},
        {"strategy": "adaptive", "dose": "total", "angles": 10, "rel_error": 0.5,
         "solid_iou": 0.8},
    ]  # fmt: skip
    head = autonomy_tomo.fewest_angles(rows, reference, 0.05)
    assert head["uniform, same exposure"] == {"angles_rel_error": None,
                                              "fraction_rel_error": None,
                                              "angles_iou": 20, "fraction_iou": 0.5}  # fmt: skip
    golden = head["golden, same exposure"]
    assert golden["angles_rel_error"] == 20 and golden["angles_iou"] is None
    assert head["adaptive, same exposure"]["fraction_rel_error"] == 0.5
    assert head["adaptive, same total"]["fraction_rel_error"] == 0.25
    assert "uniform, same total" not in head  # no such rows


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_autonomy_tomo_smoke(tmp_path):
    result = autonomy_tomo.main(["--smoke", "--out", str(tmp_path), "--quiet"])
    record = json.loads(Path(result["path"]).read_text())
    assert record["benchmark"] == "autonomy_tomo" and record["params"]["smoke"] is True
    assert all(seed > 9 for seed in record["seeds"].values())  # outside development seeds
    assert (tmp_path / "autonomy_tomo.png").stat().st_size > 10_000
    figures, params = record["figures"], record["params"]
    n, budgets = params["num_angles"], params["budgets"]
    rows = figures["rows"]
    assert len(rows) == 1 + len(budgets) * len(autonomy_tomo.STRATEGIES) * 2
    for row in rows:  # every scan measured exactly its budget, each angle once
        theta = np.asarray(row["chosen_angles"])
        assert row["angles"] == row["budget"] == len(theta)
        assert np.all((theta >= 0) & (theta <= 180))
        assert len(np.unique(np.round(theta % 180, 3))) == len(theta)
        assert 0 < row["rel_error"] < 5 and -1 < row["ssim"] < 1 and 0 < row["solid_iou"] < 1
        expected = 1e4 * (n / row["angles"] if row["dose"] == "total" else 1.0)
        assert row["photons_per_pixel"] == pytest.approx(expected)
    reference = rows[0]
    assert reference["strategy"] == "uniform" and reference["angles"] == n
    np.testing.assert_allclose(np.diff(reference["chosen_angles"]), 180.0 / n, atol=1e-6)
    adaptive = [r for r in rows if r["strategy"] in ("adaptive", "unconstrained")]
    assert all(r["told"] > 0 and r["decisions"] > 0 for r in adaptive)  # the agent chose
    for r in adaptive:  # never two views closer than the duplicate tolerance
        gaps = angular_gaps(r["chosen_angles"])
        assert gaps.min() > params["min_spacing"] * 180.0 / r["angles"]
        assert r["largest_gap"] == pytest.approx(gaps.max())
        if r["strategy"] == "adaptive":  # from uniform seeds, nearly uniform at the end
            assert r["largest_gap"] <= 1.25 * 180.0 / r["angles"] + 0.25
    # more angles, better reconstruction: the full set beats a quarter of it, uniformly;
    # and the same angles with more dose are better
    quarter = {r["dose"]: r for r in rows
               if r["strategy"] == "uniform" and r["angles"] == n // 4}  # fmt: skip
    assert reference["rel_error"] < 0.8 * quarter["exposure"]["rel_error"]
    assert reference["solid_iou"] > quarter["exposure"]["solid_iou"]
    assert quarter["total"]["rel_error"] < 0.9 * quarter["exposure"]["rel_error"]
    assert figures["headline"] == autonomy_tomo.fewest_angles(rows, reference,
                                                              params["tolerance"])  # fmt: skip
