"""Fair scoring of a scan: its stored frames reconstructed offline with one fixed engine.

The live IoU depends on how far the live reconstruction got (the machine's load); the
fair IoU depends only on the stored frames, so it is reproducible and comparable across
strategies at equal budgets.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from synaps_agent.experiment import (
    OfflineScoring,
    default_segmenter,
    offline_iou_curve,
    offline_iou_scores,
    run_strategies,
    segmentation_ceiling,
)
from synaps_agent.sim_devices.phantoms import make_phantom

SIZE, SEED, CASE = 56, 430, "P-sparse"


@pytest.fixture(scope="module")
def segmenter():
    return default_segmenter()


@pytest.fixture(scope="module")
def scanned(catalog, segmenter):
    """A raster and a random scan of the same region, fairly scored with 40 epochs."""
    scoring = OfflineScoring(epochs=40)
    outcomes = run_strategies(
        catalog, ("raster", "random"), case=CASE, size=SIZE, seed=SEED, final_epochs=5,
        segmenter=segmenter, scoring=scoring, log=lambda *a: None,
    )  # fmt: skip
    return outcomes, scoring


def _roi():
    half = SIZE / 2 - 12
    return (slice(int(SIZE / 2 - half), int(SIZE / 2 + half)),) * 2


@pytest.mark.slow
def test_fair_curve_is_reproducible_and_tracks_coverage(catalog, segmenter, scanned):
    outcomes, scoring = scanned
    raster, random = outcomes["raster"], outcomes["random"]
    phantom = make_phantom(CASE, SEED, size=SIZE)
    budgets = [n for n, _ in raster.fair_curve]
    # seeds, every eighth of raster's exposures up to a half (the adaptive budget), all
    assert budgets == sorted(budgets) and budgets[-1] == raster.exposures == 121
    assert [n for n, _ in random.fair_curve][-1] == random.exposures == 60
    # same frames, same engine -> the same numbers, to the last digit
    again = offline_iou_curve(catalog, raster.raw_uid, phantom, _roi(), segmenter, budgets, scoring)
    assert again == raster.fair_curve
    # against ground truth: the full raster segments the region well; a quarter of the
    # raster (its first rows) leaves most of the region unmeasured and scores far lower
    ious = dict(raster.fair_curve)
    assert ious[raster.exposures] > 0.6
    assert ious[raster.exposures] > ious[raster.exposures // 4] + 0.2
    # the final IoU is the fair one; the live one is kept
    assert raster.final_iou == ious[raster.exposures]
    assert 0.0 < raster.live_final_iou <= 1.0
    # the fair time curve: one point per budget, on the simulated clock
    assert len(raster.time_curve()) == len(raster.fair_curve)


@pytest.mark.slow
def test_fair_curve_with_repeats_is_the_mean_over_engine_seeds(catalog, segmenter, scanned):
    outcomes, scoring = scanned
    random = outcomes["random"]
    phantom = make_phantom(CASE, SEED, size=SIZE)
    budgets = [n for n, _ in random.fair_curve][-2:]
    args = (catalog, random.raw_uid, phantom, _roi(), segmenter, budgets)
    per_seed = [
        dict(offline_iou_curve(*args, OfflineScoring(epochs=scoring.epochs, seed=s)))
        for s in (0, 1)
    ]
    mean = offline_iou_curve(*args, OfflineScoring(epochs=scoring.epochs, repeats=2))
    assert [n for n, _ in mean] == budgets
    for n, iou in mean:
        assert iou == pytest.approx((per_seed[0][n] + per_seed[1][n]) / 2, abs=1e-12)
    assert per_seed[0] == dict(random.fair_curve[-2:])  # seed 0 alone: the run's own score
    # each seed's IoU is kept, in seed order: the score's own spread
    scores = offline_iou_scores(*args, OfflineScoring(epochs=scoring.epochs, repeats=2))
    assert scores == [(n, [per_seed[0][n], per_seed[1][n]]) for n in budgets]
    assert random.fair_scores[-2:] == [(n, [per_seed[0][n]]) for n in budgets]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="repeats"):
            OfflineScoring(repeats=bad)


class _FixedLabels:
    """A segmenter that answers with given labels whatever the image."""

    num_classes = 4

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def segment(self, image, coverage=None):
        assert image.shape == self.labels.shape  # it was given the phantom's whole object
        return SimpleNamespace(labels=self.labels)


def test_segmentation_ceiling_scores_the_true_object_over_the_region():
    phantom = make_phantom(CASE, SEED, size=SIZE)
    labels = np.asarray(phantom.labels)
    # the true labels score 1 over the region; shifted by two pixels they do not, and
    # neither does a segmentation that sees background everywhere
    assert segmentation_ceiling(phantom, _FixedLabels(labels), _roi()) == 1.0
    shifted = segmentation_ceiling(phantom, _FixedLabels(np.roll(labels, 2, axis=1)), _roi())
    assert 0.3 < shifted < 0.95
    assert segmentation_ceiling(phantom, _FixedLabels(np.zeros_like(labels)), _roi()) < 0.5
    # a wrong label outside the region does not count
    outside = labels.copy()
    outside[: _roi()[0].start] = (outside[: _roi()[0].start] + 1) % 4
    assert segmentation_ceiling(phantom, _FixedLabels(outside), _roi()) == 1.0


@pytest.mark.slow
def test_outcomes_carry_the_segmenters_ceiling(segmenter, scanned):
    outcomes, _ = scanned
    phantom = make_phantom(CASE, SEED, size=SIZE)
    ceiling = segmentation_ceiling(phantom, segmenter, _roi())
    assert all(o.ceiling_iou == ceiling for o in outcomes.values())
    # the shipped segmenter on the true object is good, and a full raster's reconstruction
    # segments about as well as the true object (its slight blur may score a little above)
    assert ceiling > 0.75
    assert abs(outcomes["raster"].final_iou - ceiling) < 0.1


@pytest.mark.parametrize(
    ("name", "value"),
    [("epochs", 0), ("epochs", "300"), ("epochs", 2.5), ("epochs", True),
     ("repeats", 0), ("repeats", "3"), ("repeats", 1.5), ("repeats", float("nan")),
     ("repeats", None)],
)  # fmt: skip
def test_offline_scoring_names_a_bad_setting(name, value):
    with pytest.raises(ValueError, match=f"OfflineScoring.{name} must be a positive integer"):
        OfflineScoring(**{name: value})


def test_offline_scoring_takes_whole_numbers_of_any_type():
    scoring = OfflineScoring(epochs=300.0, repeats=np.int64(3))
    assert (scoring.epochs, scoring.repeats) == (300, 3)
    assert type(scoring.epochs) is int and type(scoring.repeats) is int


@pytest.mark.slow
def test_fair_curve_refuses_bad_input(catalog, segmenter, scanned):
    outcomes, _ = scanned
    phantom = make_phantom(CASE, SEED, size=SIZE)
    uid = outcomes["raster"].raw_uid
    with pytest.raises(ValueError, match="budgets"):
        offline_iou_curve(catalog, uid, phantom, _roi(), segmenter, [0, 10])
    with pytest.raises(ValueError, match="epochs"):
        OfflineScoring(epochs=0)
    for fractions in ((0.0, 0.5), (0.5, 1.5)):
        with pytest.raises(ValueError, match="score_fractions"):
            run_strategies(catalog, ("raster",), case=CASE, size=SIZE, seed=SEED,
                           score_fractions=fractions)  # fmt: skip
    assert np.isfinite(outcomes["random"].final_iou)
