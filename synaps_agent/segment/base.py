"""What every segmenter returns, and how uncertainty is made from its probabilities.

A segmenter is anything with ``segment(image, coverage=None) -> SegmentationResult``
(:class:`Segmenter`): the trained U-Net with MC-dropout, or the random-forest baseline
wrapped by :class:`ProbabilisticSegmenter`. The agent only reads
:attr:`SegmentationResult.uncertainty`: per-pixel, in [0, 1], and 1 where nothing was
measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ProbabilisticSegmenter",
    "SegmentationResult",
    "Segmenter",
    "check_reconstruction",
    "predictive_entropy",
    "uncertainty_map",
]


@dataclass
class SegmentationResult:
    """A segmentation with its uncertainty.

    Attributes
    ----------
    probabilities : (C, H, W) float32
        Calibrated class probabilities (mean over MC samples / ensemble members).
    labels : (H, W) int8
        Most probable class.
    entropy : (H, W) float32
        Predictive entropy of ``probabilities`` (nats).
    mutual_information : (H, W) float32
        Epistemic part (entropy of the mean minus mean entropy of the samples; zero for a
        single deterministic model).
    uncertainty : (H, W) float32
        Entropy normalised to [0, 1] by ``log(C)``, set to 1 where the coverage says the
        pixel was not (well) measured. This is what the agent reads.
    """

    probabilities: np.ndarray
    labels: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    uncertainty: np.ndarray


@runtime_checkable
class Segmenter(Protocol):
    """Anything that segments a reconstruction into phases with uncertainty."""

    num_classes: int

    def segment(
        self, image: np.ndarray, coverage: np.ndarray | None = None
    ) -> SegmentationResult: ...


def check_reconstruction(image: np.ndarray, coverage: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` naming the problem for an image no segmenter can use."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    if image.size == 0 or min(image.shape) < 4:
        raise ValueError(f"image of shape {image.shape} is too small to segment")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or inf")
    if coverage is not None and np.shape(coverage) != image.shape:
        raise ValueError(f"coverage shape {np.shape(coverage)} != image shape {image.shape}")


def predictive_entropy(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy (nats) of class probabilities along ``axis``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return (-(p * np.log(p)).sum(axis=axis)).astype(np.float32)


def uncertainty_map(
    entropy: np.ndarray,
    num_classes: int,
    coverage: np.ndarray | None = None,
    *,
    coverage_threshold: float = 0.1,
) -> np.ndarray:
    """Normalised uncertainty in [0, 1]; 1 where ``coverage`` is below the threshold.

    Parameters
    ----------
    entropy : (H, W) array
        Predictive entropy in nats.
    num_classes : int
        ``log(num_classes)`` is the largest possible entropy.
    coverage : (H, W) array, optional
        Illumination (any scale); pixels below ``coverage_threshold`` times its maximum
        count as unmeasured, and the uncertainty ramps up towards them smoothly.
    """
    u = np.clip(np.asarray(entropy, dtype=np.float32) / np.log(num_classes), 0.0, 1.0)
    if coverage is not None:
        c = np.asarray(coverage, dtype=np.float32)
        peak = float(c.max()) if c.size else 0.0
        measured = np.zeros_like(c) if peak <= 0 else np.clip(c / (coverage_threshold * peak), 0, 1)
        u = 1.0 - measured * (1.0 - u)
    return u.astype(np.float32)


class ProbabilisticSegmenter:
    """Make a :class:`Segmenter` of any ``predict_proba(image) -> (C, H, W)`` model.

    Used for the random-forest baseline (``ProbabilisticSegmenter(forest)``).
    """

    def __init__(
        self,
        model: object,
        num_classes: int = 4,
        predict_proba: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.num_classes = int(num_classes)
        self._predict_proba = predict_proba or model.predict_proba  # type: ignore[attr-defined]

    def segment(self, image: np.ndarray, coverage: np.ndarray | None = None) -> SegmentationResult:
        check_reconstruction(image, coverage)
        probabilities = np.asarray(self._predict_proba(image), dtype=np.float32)
        entropy = predictive_entropy(probabilities)
        return SegmentationResult(
            probabilities=probabilities,
            labels=probabilities.argmax(axis=0).astype(np.int8),
            entropy=entropy,
            mutual_information=np.zeros_like(entropy),
            uncertainty=uncertainty_map(entropy, self.num_classes, coverage),
        )
