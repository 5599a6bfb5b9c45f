"""The ``segment`` benchmark runs at ``--smoke`` size and records sane figures.

The figures of a smoke run (64 x 64 phantoms, 4 epochs) mean nothing; nothing here
asserts a quality or a speed, only that every case and model was scored against the
phantom's ground truth and the result holds what the protocol asks for.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import segment  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_segment_benchmark_smoke(tmp_path):
    cache = tmp_path / "cache"
    result = segment.main(["--smoke", "--out", str(tmp_path), "--cache", str(cache), "--quiet"])
    path = Path(result["path"])
    assert path == tmp_path / "segment.json"
    record = json.loads(path.read_text())
    assert record["benchmark"] == "segment" and record["params"]["smoke"] is True
    assert record["machine"]["cores"] >= 1 and "commit" in record["git"]
    assert record["notes"] and all(isinstance(v, int) for v in record["seeds"].values())
    # test phantoms are outside the U-Net's training and validation seeds
    assert all(s >= 300 for s in record["params"]["test_seeds"])
    assert all(100 <= s < 200 for s in record["params"]["forest_seeds"])
    assert (tmp_path / "segment.png").stat().st_size > 10_000
    # reconstructions were cached for reruns
    assert len(list((cache / "smoke").glob("*.npz"))) >= 2

    figures = record["figures"]
    cases = figures["cases"]
    p = record["params"]
    assert {(c["family"], c["seed"]) for c in cases} == {
        (f, s) for f in p["families"] for s in p["test_seeds"]
    }
    size = p["size"]
    for case in cases:
        phantom = segment.make_phantom(case["family"], case["seed"], size=size)
        n_instances = len(np.unique(phantom.instances[phantom.instances > 0]))
        for model in ("unet", "forest"):
            r = case[model]
            ious = list(r["per_class_iou"].values())
            assert len(ious) == 4
            assert all(v is None or 0.0 <= v <= 1.0 for v in ious)
            assert 0.0 <= r["ece"] <= 1.0 and 0.0 <= r["pixel_accuracy"] <= 1.0
            assert r["uncertainty_auroc"] is None or 0.0 <= r["uncertainty_auroc"] <= 1.0
            assert len(r["diameters_px"]) == r["count"]
            assert len(r["diameters_px_truth"]) == r["count_truth"]
            # the truth is the phantom's own particles (those of >= 20 px in the box)
            assert 0 < r["count_truth"] <= n_instances
            assert r["count_error"] == pytest.approx(
                (r["count"] - r["count_truth"]) / r["count_truth"]
            )
            assert math.isclose(sum(r["phase_fractions"].values()), 1.0, rel_tol=1e-6)
    for model in ("unet", "forest"):
        speed = figures["speed"][model]
        assert speed["seconds"] > 0 and speed["megapixels_per_s"] > 0
    assert set(figures["targets_met"]) >= {
        "mean_iou", "ece", "uncertainty_auroc", "beats_forest_on_iou", "count",
        "median_diameter", "snapshot_seconds",
    }  # fmt: skip


def test_segment_benchmark_scores_a_perfect_segmentation_as_perfect():
    """``score`` against a segmentation equal to the truth: IoU 1, no count error."""
    from synaps_agent.segment.base import SegmentationResult

    phantom = segment.make_phantom("P-dense", 300)  # native scale, 384 x 384
    truth = phantom.labels.astype(np.int8)
    probs = np.eye(4, dtype=np.float32)[truth].transpose(2, 0, 1)
    probs = 0.96 * probs + 0.01  # confidence 0.97, right everywhere
    entropy = np.full(truth.shape, 0.1, np.float32)
    entropy[:, :3] = 0.2  # anything: no pixel is wrong
    result = SegmentationResult(probs, truth, entropy, np.zeros_like(entropy), entropy)
    measured = np.ones(truth.shape, bool)
    r = segment.score(result, truth, measured, phantom.instances)
    assert r["mean_iou"] == pytest.approx(1.0)
    assert r["pixel_accuracy"] == 1.0
    assert r["ece"] == pytest.approx(0.03, abs=1e-4)  # confidence 0.97, accuracy 1
    assert r["uncertainty_auroc"] is None or math.isnan(r["uncertainty_auroc"])
    # particle_instances on the true labels finds the phantom's particles (within ~1 %)
    assert abs(r["count_error"]) <= 0.03, (r["count"], r["count_truth"])
    assert abs(r["median_diameter_error"]) <= 0.03
