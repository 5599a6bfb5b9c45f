"""Per-pixel multiscale features of reconstructed images for the classical segmenter.

A complex reconstruction contributes two channels, its phase (:func:`numpy.angle`, the main
contrast) and its amplitude; a real image (a phase map or a tomographic slice) contributes
one. Each channel gives Gaussian-smoothed intensities, gradient magnitudes and Hessian
eigenvalues at ``num_sigma`` scales between ``sigma_min`` and ``sigma_max``
(:func:`skimage.feature.multiscale_basic_features`).

The features use absolute grey values, so images must be brought into the frame the
segmenter was trained in: a ptychographic reconstruction's global phase offset and phase
ramp removed and its amplitude scaled (e.g. with :func:`synaps_agent.metrics.align_complex`
or :func:`synaps_agent.metrics.remove_phase_ramp`), and no phase wrapping.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["channels", "check_image", "image_features", "num_features"]

_FEATURE_KINDS = dict(intensity=True, edges=True, texture=True)


def check_image(image: ArrayLike, name: str = "image") -> NDArray:
    """Validate an image: numeric (real or complex), 2D or 3D, non-empty, finite.

    Returns
    -------
    ndarray
        The image as an array (complex images stay complex, real ones become float).

    Raises
    ------
    ValueError
        Naming the problem (dtype, dimensions, empty, NaN/inf).
    """
    arr = np.asarray(image)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric (real or complex) array, got {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D or 3D, got {arr.ndim}D with shape {arr.shape}")
    if arr.size == 0 or min(arr.shape) == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    if not np.iscomplexobj(arr):
        arr = arr.astype(np.float32, copy=False)
    return arr


def channels(image: ArrayLike) -> NDArray[np.float32]:
    """Feature channels, last axis: ``(phase, amplitude)`` of a complex image, or the image.

    Returns
    -------
    ndarray of float32, (*shape, n_channels)
    """
    arr = check_image(image)
    if np.iscomplexobj(arr):
        return np.stack([np.angle(arr), np.abs(arr)], axis=-1).astype(np.float32)
    return arr[..., None].astype(np.float32)


def num_features(n_channels: int, num_sigma: int, ndim: int = 2) -> int:
    """Number of features per pixel that :func:`image_features` returns."""
    per_sigma = 1 + 1 + ndim  # intensity, gradient magnitude, Hessian eigenvalues
    return n_channels * num_sigma * per_sigma


def image_features(
    image: ArrayLike,
    *,
    sigma_min: float = 1.0,
    sigma_max: float = 8.0,
    num_sigma: int = 4,
) -> NDArray[np.float32]:
    """Multiscale per-pixel features of an image.

    Parameters
    ----------
    image : array_like, 2D or 3D, real or complex
        Complex: features of the phase and the amplitude; real: of the image itself.
    sigma_min, sigma_max : float
        Smallest and largest Gaussian scale in pixels.
    num_sigma : int
        Number of scales, log-spaced between the two.

    Returns
    -------
    ndarray of float32, (*shape, n_features)

    Raises
    ------
    ValueError
        For a bad image (see :func:`check_image`) or bad scales.
    """
    from skimage.feature import multiscale_basic_features

    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if int(num_sigma) != num_sigma or num_sigma < 1:
        raise ValueError(f"num_sigma must be a positive integer, got {num_sigma}")
    stack = channels(image)
    feats = multiscale_basic_features(
        stack,
        **_FEATURE_KINDS,
        sigma_min=float(sigma_min),
        sigma_max=float(sigma_max),
        num_sigma=int(num_sigma),
        channel_axis=-1,
    )
    return np.ascontiguousarray(feats, dtype=np.float32)
