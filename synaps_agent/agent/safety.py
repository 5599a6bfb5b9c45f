"""The safety gate every suggestion passes before it reaches the motors."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from synaps_agent.agent.space import ScanSpace

__all__ = ["NoAdmissibleCandidateError", "SafetyGate", "UnsafePointError"]


class NoAdmissibleCandidateError(RuntimeError):
    """Every candidate is outside the space, excluded, failed before or already measured."""


class UnsafePointError(ValueError):
    """A suggestion failed the final check (outside the limits or in an excluded region)."""


class _PointSet:
    """Points with a lazily rebuilt KD-tree in the scaled embedding."""

    def __init__(self, space: ScanSpace, tolerance: np.ndarray) -> None:
        self.space, self.tolerance = space, tolerance
        self.points = np.zeros((0, space.ndim))
        self._tree: cKDTree | None = None

    def add(self, points: np.ndarray) -> None:
        self.points = np.concatenate([self.points, points], axis=0)
        self._tree = None

    def set(self, points: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=float).reshape(-1, self.space.ndim)
        self._tree = None

    def near(self, points: np.ndarray) -> np.ndarray:
        """Mask of ``points`` within tolerance of a stored point."""
        if len(self.points) == 0 or len(points) == 0:
            return np.zeros(len(points), dtype=bool)
        if self._tree is None:
            self._tree = cKDTree(self.space.scaled_embedding(self.points, self.tolerance))
        q = self.space.scaled_embedding(points, self.tolerance)
        d, _ = self._tree.query(q, k=1, distance_upper_bound=1.0 + 1e-9)
        return np.isfinite(d)


class SafetyGate:
    """Keeps suggestions inside the soft limits, out of excluded regions, away from failed
    points and from already measured points.

    Parameters
    ----------
    space : ScanSpace
    tolerance : array of shape ``(d,)``
        Per-axis duplicate tolerance (see :meth:`ScanSpace.scaled_embedding`).
    """

    def __init__(self, space: ScanSpace, tolerance: np.ndarray) -> None:
        self.space = space
        self.tolerance = np.asarray(tolerance, dtype=float)
        if self.tolerance.shape != (space.ndim,) or not np.all(self.tolerance > 0):
            raise ValueError(f"tolerance must be {space.ndim} positive numbers")
        self.measured = _PointSet(space, self.tolerance)
        self.failed = _PointSet(space, self.tolerance)
        self.failure_reasons: list[str] = []

    # -- bookkeeping ---------------------------------------------------------------------------
    def record_measured(self, points: Any) -> None:
        """Remember measured points (they will not be proposed again)."""
        self.measured.add(self.space.to_array(points))

    def record_failure(self, point: Any, reason: str) -> None:
        """Remember a point whose move or exposure failed (never proposed again within
        tolerance, until :meth:`clear_failures`)."""
        p = self.space.to_array(point)
        self.failed.add(p)
        self.failure_reasons.extend([str(reason)] * len(p))

    def clear_failures(self, point: Any | None = None) -> int:
        """Forget failures (all, or those within tolerance of ``point``); returns how many."""
        if point is None:
            n = len(self.failed.points)
            self.failed.set(np.zeros((0, self.space.ndim)))
            self.failure_reasons = []
            return n
        probe = _PointSet(self.space, self.tolerance)
        probe.set(self.space.to_array(point))
        drop = probe.near(self.failed.points)
        self.failed.set(self.failed.points[~drop])
        self.failure_reasons = [r for r, d in zip(self.failure_reasons, drop, strict=True) if not d]
        return int(drop.sum())

    # -- checks --------------------------------------------------------------------------------
    def admissible(self, points: Any) -> np.ndarray:
        """Mask of admissible points: inside the space, not failed, not measured."""
        p = self.space.to_array(points)
        return self.space.contains(p) & ~self.failed.near(p) & ~self.measured.near(p)

    def filter(self, points: Any) -> np.ndarray:
        """The admissible rows of ``points``; raises :class:`NoAdmissibleCandidateError`
        when none is left."""
        p = self.space.to_array(points)
        ok = self.admissible(p)
        if not ok.any():
            raise NoAdmissibleCandidateError(
                f"no admissible candidate among {len(p)}: {len(self.measured.points)} measured, "
                f"{len(self.failed.points)} failed, space {self.space!r}"
            )
        return p[ok]

    def finalize(self, points: Any) -> np.ndarray:
        """Clip suggestions into the limits, then verify everything; raise on violation.

        Returns
        -------
        numpy.ndarray
            The clipped points (which are guaranteed inside the limits, outside excluded
            regions and away from failed and measured points).
        """
        p = self.space.clip(self.space.to_array(points))
        if not np.all(self.space.in_limits(p)):
            raise UnsafePointError(f"non-finite suggestion: {p.tolist()}")
        bad = self.space.in_excluded(p)
        if bad.any():
            raise UnsafePointError(f"suggestion in an excluded region: {p[bad].tolist()}")
        bad = self.failed.near(p)
        if bad.any():
            raise UnsafePointError(f"suggestion at a failed point: {p[bad].tolist()}")
        bad = self.measured.near(p)
        if bad.any():
            raise UnsafePointError(f"suggestion duplicates a measured point: {p[bad].tolist()}")
        return p
