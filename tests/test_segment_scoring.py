"""Segmentation scores on hand-made cases with known values."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.segment.scoring import (
    boundary_f1,
    confusion_matrix,
    expected_calibration_error,
    mean_iou,
    per_class_dice,
    per_class_iou,
    uncertainty_auroc,
)

TRUTH = np.array([[0, 0, 1, 1]])
PRED = np.array([[0, 1, 1, 1]])


def test_confusion_matrix_rows_truth_columns_pred():
    cm = confusion_matrix(PRED, TRUTH)
    expected = np.zeros((4, 4), int)
    expected[0, 0], expected[0, 1], expected[1, 1] = 1, 1, 2
    np.testing.assert_array_equal(cm, expected)
    assert confusion_matrix(PRED, TRUTH, mask=np.array([[True, False, True, True]])).sum() == 3


def test_iou_and_dice_known_values():
    iou = per_class_iou(PRED, TRUTH)
    np.testing.assert_allclose(iou[:2], [0.5, 2 / 3])
    assert np.isnan(iou[2:]).all()  # absent from both maps
    assert mean_iou(PRED, TRUTH) == pytest.approx((0.5 + 2 / 3) / 2)
    dice = per_class_dice(PRED, TRUTH)
    np.testing.assert_allclose(dice[:2], [2 / 3, 0.8])
    assert np.isnan(dice[2:]).all()
    # A class present in the truth only scores 0, not NaN.
    iou = per_class_iou(np.zeros((1, 4), int), np.array([[0, 0, 3, 3]]))
    np.testing.assert_allclose(iou, [0.5, np.nan, np.nan, 0.0])
    # Masking out the wrong pixel gives a perfect score.
    mask = np.array([[True, False, True, True]])
    assert mean_iou(PRED, TRUTH, mask=mask) == pytest.approx(1.0)


def _disk_map(shape=(64, 64), center=(32, 32), radius=12, value=2):
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int8)
    labels[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2] = value
    return labels


def test_boundary_f1_identical_shifted_and_per_class():
    truth = _disk_map()
    truth[5:15, 36:54] = 1
    assert boundary_f1(truth, truth) == 1.0
    assert boundary_f1(np.roll(truth, 1, axis=1), truth, tolerance_px=2) == 1.0
    far = boundary_f1(np.roll(truth, 6, axis=1), truth, tolerance_px=2)
    assert far < 0.5
    assert boundary_f1(np.roll(truth, 6, axis=1), truth, tolerance_px=8) == 1.0
    per = boundary_f1(np.roll(truth, 6, axis=1), truth, tolerance_px=2, average="per_class")
    assert per.shape == (4,) and np.isnan(per[3]) and np.all(per[:3] < 0.7)
    np.testing.assert_array_equal(
        boundary_f1(truth, truth, average="per_class"), [1.0, 1.0, 1.0, np.nan]
    )
    # No boundary in either map: perfect; boundary in only one: zero.
    flat = np.zeros((16, 16), int)
    assert boundary_f1(flat, flat) == 1.0
    assert boundary_f1(flat, _disk_map((16, 16), (8, 8), 4)) == 0.0
    # Mask: only the boundaries inside it count.
    mask = np.zeros(truth.shape, bool)
    mask[:, :20] = True
    shifted = truth.copy()
    shifted[:, 30:] = np.roll(truth, 6, axis=1)[:, 30:]
    assert boundary_f1(shifted, truth, mask=mask) == 1.0
    assert boundary_f1(shifted, truth) < 1.0


def test_boundary_f1_works_in_3d():
    truth = np.zeros((20, 20, 20), int)
    truth[5:15, 5:15, 5:15] = 2
    assert boundary_f1(truth, truth) == 1.0
    assert boundary_f1(np.roll(truth, 4, axis=(0, 1, 2)), truth, tolerance_px=1) < 0.5


def _two_class_probs(confidence: np.ndarray, correct: np.ndarray):
    """Probabilities (2, N) with top-label confidence/correctness as given; truth (N,)."""
    probs = np.stack([confidence, 1.0 - confidence])  # predicted class is 0
    truth = np.where(correct, 0, 1)
    return probs[:, None, :], truth[None, :]


def test_ece_perfectly_calibrated_is_zero():
    conf, correct = [], []
    for c in (0.55, 0.7, 0.8, 0.95):
        n = 200
        conf.append(np.full(n, c))
        correct.append(np.arange(n) < round(c * n))
    probs, truth = _two_class_probs(np.concatenate(conf), np.concatenate(correct))
    assert expected_calibration_error(probs, truth) == pytest.approx(0.0, abs=1e-12)


def test_ece_random_calibrated_is_small():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 200_000)
    probs, truth = _two_class_probs(conf, rng.random(conf.size) < conf)
    assert expected_calibration_error(probs, truth) < 0.01


def test_ece_over_confident_matches_analytic_value():
    # All at confidence 0.9 with 60 % accuracy: ECE = 0.3.
    n = 1000
    probs, truth = _two_class_probs(np.full(n, 0.9), np.arange(n) < 600)
    assert expected_calibration_error(probs, truth) == pytest.approx(0.3)
    # Half at 0.9 / 70 % correct, half calibrated at 0.6: ECE = 0.5 * 0.2 = 0.1.
    conf = np.concatenate([np.full(n, 0.9), np.full(n, 0.6)])
    correct = np.concatenate([np.arange(n) < 700, np.arange(n) < 600])
    probs, truth = _two_class_probs(conf, correct)
    assert expected_calibration_error(probs, truth) == pytest.approx(0.1)
    # The mask selects the over-confident half only.
    mask = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])[None, :]
    assert expected_calibration_error(probs, truth, mask=mask) == pytest.approx(0.2)


def test_uncertainty_auroc():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (64, 64))
    pred = truth.copy()
    wrong = rng.random(truth.shape) < 0.2
    pred[wrong] = (truth[wrong] + 1) % 4
    uncertainty = np.where(wrong, 0.9, 0.1) + 0.05 * rng.random(truth.shape)
    assert uncertainty_auroc(uncertainty, pred, truth) == pytest.approx(1.0)
    assert uncertainty_auroc(-uncertainty, pred, truth) == pytest.approx(0.0)
    assert uncertainty_auroc(rng.random(truth.shape), pred, truth) == pytest.approx(0.5, abs=0.05)
    assert np.isnan(uncertainty_auroc(uncertainty, truth, truth))
    assert np.isnan(uncertainty_auroc(uncertainty, (truth + 1) % 4, truth))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="does not match"):
        per_class_iou(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer"):
        mean_iou(np.zeros((3, 3)), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion_matrix(np.full((3, 3), 4), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="outside"):
        per_class_dice(np.full((3, 3), -1), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="mask"):
        mean_iou(np.zeros((3, 3), int), np.zeros((3, 3), int), mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="mask"):
        mean_iou(np.zeros((3, 3), int), np.zeros((3, 3), int), mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="empty"):
        mean_iou(np.zeros((0,), int), np.zeros((0,), int))
    with pytest.raises(ValueError, match="average"):
        boundary_f1(np.zeros((3, 3), int), np.zeros((3, 3), int), average="macro")
    probs = np.full((4, 3, 3), 0.25)
    with pytest.raises(ValueError, match="does not match"):
        expected_calibration_error(probs, np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(probs * 2 / 3, np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error(np.full((4, 3, 3), np.nan), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="outside"):
        expected_calibration_error(probs, np.full((3, 3), 4))
    with pytest.raises(ValueError, match="uncertainty shape"):
        uncertainty_auroc(np.zeros((2, 2)), np.zeros((3, 3), int), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="NaN"):
        uncertainty_auroc(np.full((3, 3), np.nan), np.zeros((3, 3), int), np.zeros((3, 3), int))
