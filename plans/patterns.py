"""Scan patterns: where to put the sample and from which side to look at it.

Pure functions, arrays in, arrays out; they raise ``ValueError`` on arguments that
would give no scan or an endless one.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "checked_pattern",
    "fermat_spiral_positions",
    "golden_angles",
    "raster_positions",
    "uniform_angles",
    "unmeasured_points",
]

GOLDEN_RATIO = (1 + math.sqrt(5)) / 2


def raster_positions(
    x_start: float,
    x_stop: float,
    y_start: float,
    y_stop: float,
    step: float,
    *,
    snake: bool = True,
    jitter: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Grid of (x, y) positions covering a rectangle, row by row.

    Parameters
    ----------
    x_start, x_stop, y_start, y_stop : float
        Corners of the rectangle (both ends included when the step divides the span).
    step : float
        Distance between neighbouring positions (> 0).
    snake : bool
        Reverse every other row, so the stage never flies back across the sample.
    jitter : float
        Random offset of each position, uniform in ``+-jitter * step / 2`` on each axis
        (seeded by ``seed``). A little jitter (0.1-0.3) breaks the grid periodicity that
        makes raster ptychography converge to periodic artefacts; the offsets are part of
        the planned positions, so they are recorded exactly.

    Returns
    -------
    positions : (n, 2) float64 array of (x, y)
    """
    _check_step(step)
    corners = {"x_start": x_start, "x_stop": x_stop, "y_start": y_start, "y_stop": y_stop}
    for name, value in corners.items():
        _check_finite(name, value)
    xs = _axis(x_start, x_stop, step)
    ys = _axis(y_start, y_stop, step)
    rows = []
    for i, y in enumerate(ys):
        row_x = xs[::-1] if (snake and i % 2) else xs
        rows.append(np.column_stack([row_x, np.full_like(row_x, y)]))
    points = np.concatenate(rows)
    if jitter:
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1] (a fraction of the step), got {jitter}")
        rng = np.random.default_rng(seed)
        points = points + rng.uniform(-0.5, 0.5, points.shape) * jitter * step
    return points


def fermat_spiral_positions(
    x_center: float, y_center: float, radius: float, step: float
) -> np.ndarray:
    """Fermat-spiral positions filling a disc with about uniform density.

    Point ``k`` sits at radius ``step * sqrt(k)`` and angle ``k * golden angle``, the
    pattern ptychographers use to avoid the grid artefacts of a raster.

    Parameters
    ----------
    x_center, y_center : float
        Centre of the disc.
    radius : float
        Radius of the disc (> 0).
    step : float
        Mean distance between neighbours (> 0).

    Returns
    -------
    positions : (n, 2) float64 array of (x, y)
    """
    _check_step(step)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    count = int(math.floor((radius / step) ** 2)) + 1
    if count > 1_000_000:
        raise ValueError(f"radius/step gives {count} positions; more than 1e6 is not a scan")
    k = np.arange(count)
    r = step * np.sqrt(k)
    phi = k * 2 * math.pi / GOLDEN_RATIO**2
    return np.column_stack([x_center + r * np.cos(phi), y_center + r * np.sin(phi)])


def uniform_angles(
    num: int, start: float = 0.0, span: float = 180.0, *, endpoint: bool = False
) -> np.ndarray:
    """``num`` equally spaced angles (degrees) from ``start`` over ``span``."""
    _check_count(num)
    return start + np.linspace(0.0, span, num, endpoint=endpoint)


def golden_angles(num: int, start: float = 0.0, span: float = 180.0) -> np.ndarray:
    """``num`` angles in golden-ratio order: any prefix covers ``span`` about evenly.

    Angle ``k`` is ``start + (k * span / golden_ratio) mod span``, the ordering used for
    tomography that may stop early or be refined later.
    """
    _check_count(num)
    k = np.arange(num)
    return start + np.mod(k * span / GOLDEN_RATIO, span)


def checked_pattern(pattern, ndim: int, name: str = "fallback") -> np.ndarray:
    """``pattern`` as an ``(n, ndim)`` float array of finite points, one column per axis
    of a scan space; ``ValueError`` naming ``name`` otherwise."""
    points = np.asarray(pattern, dtype=float)
    if points.ndim != 2 or points.shape[1] != ndim or len(points) == 0:
        raise ValueError(f"{name} must be an (n, {ndim}) pattern, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} pattern has non-finite coordinates")
    return points


def unmeasured_points(pattern: np.ndarray, measured, tolerance: float = 1e-6) -> np.ndarray:
    """The points of ``pattern`` (in its order) farther than ``tolerance`` from every
    point of ``measured`` (an ``(m, ndim)`` sequence, possibly empty)."""
    pattern = np.asarray(pattern, dtype=float)
    done = np.asarray(measured, dtype=float).reshape(-1, pattern.shape[1])
    if len(done) == 0:
        return pattern
    distance = np.linalg.norm(pattern[:, None, :] - done[None, :, :], axis=2)
    return pattern[distance.min(axis=1) > tolerance]


def _check_step(step: float) -> None:
    if not (isinstance(step, int | float | np.floating | np.integer) and math.isfinite(step)):
        raise ValueError(f"step must be a finite number, got {step!r}")
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")


def _check_finite(name: str, value: float) -> None:
    try:
        finite = math.isfinite(value)
    except TypeError:
        finite = False
    if not finite:
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_count(num: int) -> None:
    if int(num) != num or num < 1:
        raise ValueError(f"number of angles must be a positive integer, got {num!r}")


def _axis(start: float, stop: float, step: float) -> np.ndarray:
    span = stop - start
    count = int(math.floor(abs(span) / step + 1e-9)) + 1
    if count > 100_000:
        raise ValueError(f"span {span} with step {step} gives {count} points per line; too many")
    direction = 1.0 if span >= 0 else -1.0
    return start + direction * step * np.arange(count)
