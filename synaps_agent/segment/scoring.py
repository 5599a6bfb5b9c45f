"""Segmentation quality against ground truth: overlap, boundaries, calibration, uncertainty.

Pure numpy functions on integer label maps of any dimension (2D images, 3D volumes).
Labels are the phase labels of :mod:`synaps_agent.sim_devices.phantoms` (0 pore,
1 carbon-binder, 2 active, 3 secondary) unless ``num_classes`` says otherwise. Every
function takes an optional boolean ``mask`` (same shape as the truth) restricting the score
to the pixels where it is ``True`` (e.g. the illuminated field of view).

>>> iou = per_class_iou(pred, truth)                         # doctest: +SKIP
>>> mean_iou(pred, truth), boundary_f1(pred, truth)          # doctest: +SKIP
>>> expected_calibration_error(probabilities, truth)         # doctest: +SKIP
>>> uncertainty_auroc(entropy, pred, truth)                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi

__all__ = [
    "boundary_f1",
    "confusion_matrix",
    "expected_calibration_error",
    "mean_iou",
    "per_class_dice",
    "per_class_iou",
    "uncertainty_auroc",
]

# --------------------------------------------------------------------------- validation


def _as_labels(name: str, array: ArrayLike, num_classes: int) -> NDArray[np.intp]:
    labels = np.asarray(array)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label array, got dtype {labels.dtype}")
    if labels.size == 0:
        raise ValueError(f"{name} is empty")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} holds labels in [{lo}, {hi}], outside 0..{num_classes - 1} "
            f"(num_classes={num_classes})"
        )
    return labels.astype(np.intp, copy=False)


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    return int(num_classes)


def _as_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> NDArray[np.bool_] | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the truth shape {shape}")
    if not mask.any():
        raise ValueError("mask selects no pixel")
    return mask


def _check_pair(
    pred: ArrayLike, truth: ArrayLike, num_classes: int, mask: ArrayLike | None
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_] | None]:
    num_classes = _check_num_classes(num_classes)
    pred_a = _as_labels("pred", pred, num_classes)
    truth_a = _as_labels("truth", truth, num_classes)
    if pred_a.shape != truth_a.shape:
        raise ValueError(f"pred shape {pred_a.shape} does not match truth shape {truth_a.shape}")
    return pred_a, truth_a, _as_mask(mask, truth_a.shape)


# --------------------------------------------------------------------------- overlap


def confusion_matrix(
    pred: ArrayLike, truth: ArrayLike, num_classes: int = 4, mask: ArrayLike | None = None
) -> NDArray[np.int64]:
    """Pixel confusion matrix.

    Parameters
    ----------
    pred, truth : array_like of int
        Predicted and true label maps of the same shape, labels in ``0..num_classes-1``.
    num_classes : int
        Number of classes.
    mask : array_like of bool, optional
        Pixels to score (default all).

    Returns
    -------
    ndarray of int64, (num_classes, num_classes)
        ``cm[t, p]`` = number of pixels of true class ``t`` predicted as ``p`` (rows truth,
        columns prediction).

    Raises
    ------
    ValueError
        On shape mismatch, non-integer labels, labels out of range or a bad mask.
    """
    pred_a, truth_a, mask_a = _check_pair(pred, truth, num_classes, mask)
    if mask_a is not None:
        pred_a, truth_a = pred_a[mask_a], truth_a[mask_a]
    n = int(num_classes)
    flat = truth_a.ravel() * n + pred_a.ravel()
    return np.bincount(flat, minlength=n * n).reshape(n, n).astype(np.int64)


def per_class_iou(
    pred: ArrayLike, truth: ArrayLike, num_classes: int = 4, mask: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Intersection over union (Jaccard index) of each class.

    Parameters
    ----------
    pred, truth, num_classes, mask
        As in :func:`confusion_matrix`.

    Returns
    -------
    ndarray of float64, (num_classes,)
        ``TP / (TP + FP + FN)`` per class; NaN for a class absent from both maps.
    """
    cm = confusion_matrix(pred, truth, num_classes, mask).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(
    pred: ArrayLike, truth: ArrayLike, num_classes: int = 4, mask: ArrayLike | None = None
) -> float:
    """Mean of :func:`per_class_iou` over the classes present in either map (nanmean)."""
    iou = per_class_iou(pred, truth, num_classes, mask)
    return float(np.nanmean(iou)) if np.any(np.isfinite(iou)) else float("nan")


def per_class_dice(
    pred: ArrayLike, truth: ArrayLike, num_classes: int = 4, mask: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Dice coefficient (F1 score) of each class.

    Parameters
    ----------
    pred, truth, num_classes, mask
        As in :func:`confusion_matrix`.

    Returns
    -------
    ndarray of float64, (num_classes,)
        ``2 TP / (2 TP + FP + FN)`` per class; NaN for a class absent from both maps.
    """
    cm = confusion_matrix(pred, truth, num_classes, mask).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * tp / denom, np.nan)


# --------------------------------------------------------------------------- boundaries


def _boundary(region: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Inner boundary: pixels of ``region`` with a face neighbour outside it.

    The image border is not a boundary (the map is extended by edge replication).
    """
    padded = np.pad(region, 1, mode="edge")
    eroded = ndi.binary_erosion(padded, structure=ndi.generate_binary_structure(region.ndim, 1))
    inner = tuple(slice(1, -1) for _ in range(region.ndim))
    return region & ~eroded[inner]


def _label_boundary(labels: NDArray[np.intp]) -> NDArray[np.bool_]:
    """Pixels with a face neighbour of a different label (both sides of every edge)."""
    out = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        out[tuple(lo)] |= diff
        out[tuple(hi)] |= diff
    return out


def _f1_of_boundaries(
    pb: NDArray[np.bool_],
    tb: NDArray[np.bool_],
    tolerance: float,
    mask: NDArray[np.bool_] | None,
) -> float:
    if mask is not None:
        pb_count, tb_count = pb & mask, tb & mask
    else:
        pb_count, tb_count = pb, tb
    n_pred, n_truth = int(pb_count.sum()), int(tb_count.sum())
    if n_pred == 0 and n_truth == 0:
        return 1.0
    if n_pred == 0 or n_truth == 0:
        return 0.0
    # Distances to the nearest boundary pixel of the other map (computed without the mask,
    # so a boundary just outside the mask still matches).
    dist_to_truth = ndi.distance_transform_edt(~tb)
    dist_to_pred = ndi.distance_transform_edt(~pb)
    precision = float(np.count_nonzero(dist_to_truth[pb_count] <= tolerance)) / n_pred
    recall = float(np.count_nonzero(dist_to_pred[tb_count] <= tolerance)) / n_truth
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def boundary_f1(
    pred: ArrayLike,
    truth: ArrayLike,
    tolerance_px: float = 2,
    mask: ArrayLike | None = None,
    *,
    num_classes: int = 4,
    average: Literal["overall", "per_class"] = "overall",
) -> float | NDArray[np.float64]:
    """Boundary F1 score (BF score) of two label maps.

    A boundary pixel is one with a face neighbour (4-connectivity in 2D, 6 in 3D) of a
    different label; the image border is not a boundary. A predicted boundary pixel is a
    true positive for the precision if a true boundary pixel lies within ``tolerance_px``
    (Euclidean distance transform), and vice versa for the recall;
    ``F1 = 2 P R / (P + R)``.

    Parameters
    ----------
    pred, truth : array_like of int
        Label maps of the same shape.
    tolerance_px : float
        Matching distance in pixels (0 = exact).
    mask : array_like of bool, optional
        Only boundary pixels inside the mask are counted (they may match boundaries just
        outside it).
    num_classes : int
        Number of classes (label range check; size of the per-class result).
    average : {"overall", "per_class"}
        ``"overall"``: one score for the boundaries of the whole label map (every change of
        label). ``"per_class"``: for each class ``c`` the F1 of the inner boundaries of
        ``pred == c`` and ``truth == c``; returns the array.

    Returns
    -------
    float or ndarray of float64
        ``"overall"``: the score in [0, 1] (1.0 if neither map has any boundary).
        ``"per_class"``: array ``(num_classes,)``, NaN for a class absent from both maps;
        take ``np.nanmean`` for a class-averaged score.
    """
    pred_a, truth_a, mask_a = _check_pair(pred, truth, num_classes, mask)
    tolerance = float(tolerance_px)
    if not tolerance >= 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    if average == "overall":
        return _f1_of_boundaries(
            _label_boundary(pred_a), _label_boundary(truth_a), tolerance, mask_a
        )
    if average != "per_class":
        raise ValueError(f"average must be 'overall' or 'per_class', got {average!r}")
    scores = np.full(int(num_classes), np.nan)
    for c in range(int(num_classes)):
        p, t = pred_a == c, truth_a == c
        if mask_a is not None and not (p[mask_a].any() or t[mask_a].any()):
            continue
        if not (p.any() or t.any()):
            continue
        scores[c] = _f1_of_boundaries(_boundary(p), _boundary(t), tolerance, mask_a)
    return scores


# --------------------------------------------------------------------------- calibration


def expected_calibration_error(
    probabilities: ArrayLike,
    truth: ArrayLike,
    num_bins: int = 15,
    mask: ArrayLike | None = None,
) -> float:
    """Top-label expected calibration error (ECE).

    The confidence of a pixel is its largest class probability, its prediction the arg-max.
    Pixels are grouped into ``num_bins`` equal-width confidence bins ``(k/B, (k+1)/B]``
    and ``ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|``.

    Parameters
    ----------
    probabilities : array_like of float, (C, *shape)
        Class probabilities, class axis first; each pixel's probabilities must be in
        [0, 1] and sum to 1 (within 1e-3).
    truth : array_like of int, shape
        True labels in ``0..C-1``.
    num_bins : int
        Number of confidence bins.
    mask : array_like of bool, optional
        Pixels to score.

    Returns
    -------
    float
        ECE in [0, 1]; 0 for perfect calibration.
    """
    probs = np.asarray(probabilities)
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probabilities must be a float array, got dtype {probs.dtype}")
    if probs.ndim < 2:
        raise ValueError(f"probabilities must be (C, *shape), got shape {probs.shape}")
    num_classes = probs.shape[0]
    truth_a = _as_labels("truth", truth, num_classes)
    if probs.shape[1:] != truth_a.shape:
        raise ValueError(
            f"probabilities shape {probs.shape} does not match truth shape {truth_a.shape} "
            "(expected (C, *truth.shape))"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities contain NaN or inf")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    if not np.allclose(probs.sum(axis=0), 1.0, atol=1e-3):
        raise ValueError("probabilities must sum to 1 over the class axis (axis 0)")
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins}")
    mask_a = _as_mask(mask, truth_a.shape)

    confidence = probs.max(axis=0).astype(np.float64)
    correct = (probs.argmax(axis=0) == truth_a).astype(np.float64)
    if mask_a is not None:
        confidence, correct = confidence[mask_a], correct[mask_a]
    confidence, correct = confidence.ravel(), correct.ravel()
    nb = int(num_bins)
    bins = np.clip(np.ceil(confidence * nb).astype(np.intp) - 1, 0, nb - 1)
    counts = np.bincount(bins, minlength=nb).astype(np.float64)
    sum_conf = np.bincount(bins, weights=confidence, minlength=nb)
    sum_acc = np.bincount(bins, weights=correct, minlength=nb)
    # sum_b n_b/N |acc_b - conf_b| = sum_b |sum_acc_b - sum_conf_b| / N
    return float(np.abs(sum_acc - sum_conf).sum() / counts.sum())


def uncertainty_auroc(
    uncertainty: ArrayLike,
    pred: ArrayLike,
    truth: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    num_classes: int = 4,
) -> float:
    """How well an uncertainty map detects the wrongly segmented pixels (ROC AUC).

    Parameters
    ----------
    uncertainty : array_like of float
        Per-pixel uncertainty (e.g. predictive entropy), higher = less sure; same shape as
        ``truth``.
    pred, truth : array_like of int
        Predicted and true labels.
    mask : array_like of bool, optional
        Pixels to score.
    num_classes : int
        Label range check.

    Returns
    -------
    float
        Area under the ROC curve of ``uncertainty`` as a score for "pixel is wrong"
        (:func:`sklearn.metrics.roc_auc_score`): 1 = every wrong pixel is more uncertain
        than every right one, 0.5 = uninformative. NaN if all pixels are right or all wrong.
    """
    from sklearn.metrics import roc_auc_score

    pred_a, truth_a, mask_a = _check_pair(pred, truth, num_classes, mask)
    unc = np.asarray(uncertainty)
    if unc.dtype == bool or not np.issubdtype(unc.dtype, np.number):
        raise ValueError(f"uncertainty must be a numeric array, got dtype {unc.dtype}")
    if np.iscomplexobj(unc):
        raise ValueError("uncertainty must be real")
    if unc.shape != truth_a.shape:
        raise ValueError(
            f"uncertainty shape {unc.shape} does not match truth shape {truth_a.shape}"
        )
    if not np.all(np.isfinite(unc)):
        raise ValueError("uncertainty contains NaN or inf")
    wrong = pred_a != truth_a
    if mask_a is not None:
        wrong, unc = wrong[mask_a], unc[mask_a]
    wrong, unc = wrong.ravel(), unc.ravel()
    if wrong.all() or not wrong.any():
        return float("nan")
    return float(roc_auc_score(wrong, unc))
