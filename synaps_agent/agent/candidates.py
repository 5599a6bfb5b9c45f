"""Physics-aware candidate sets for ptychography, tomography and ptycho-tomography.

* Ptychography (non-periodic axes): a fine lattice over the limits; a lattice point is a
  candidate when it lies within ``max_step`` of an already measured point (so it keeps probe
  overlap with a measured neighbour), or when it belongs to the coarse *seed* lattice (where
  new islands may start). With ``max_step=None`` the whole fine lattice is a candidate.
* Tomography (periodic axis): a fine angle grid in ``[low, min(high, low + period))``.
* Both: the product, randomly (seeded) subsampled to ``max_candidates``.

Measured, failed and excluded points are removed afterwards by the
:class:`~synaps_agent.agent.safety.SafetyGate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from synaps_agent.agent.space import ScanSpace

__all__ = ["CandidateGenerator", "FootprintCoverage", "angle_grid", "lattice"]


def lattice(low: np.ndarray, high: np.ndarray, step: float) -> np.ndarray:
    """A regular lattice of spacing ``step`` covering ``[low, high]`` (centred in the box).

    Returns
    -------
    numpy.ndarray of shape ``(n, len(low))``
    """
    axes = []
    for lo, hi in zip(low, high, strict=True):
        n = int(np.floor((hi - lo) / step + 1e-9)) + 1
        margin = 0.5 * ((hi - lo) - (n - 1) * step)
        axes.append(lo + margin + step * np.arange(n))
    grids = np.meshgrid(*axes, indexing="xy")
    return np.stack([g.ravel() for g in grids], axis=1)


def angle_grid(low: float, high: float, period: float, step: float) -> np.ndarray:
    """Angles ``low, low + step, ...`` up to ``min(high, low + period)`` (``low + period``
    itself excluded, being equivalent to ``low``)."""
    top = min(high, low + period)
    n = int(np.floor((top - low) / step + 1e-9)) + 1
    a = low + step * np.arange(n)
    a = a[a <= top + 1e-12]
    keep = a < low + period - 1e-9
    return np.minimum(a[keep], high)


@dataclass
class CandidateGenerator:
    """Builds the candidate set for the next decision.

    Parameters
    ----------
    space : ScanSpace
    lattice_step : float
        Spacing of the fine spatial lattice (stage units).
    max_step : float or None
        Maximum distance from a measured point for a spatial candidate (overlap
        constraint); ``None`` disables the constraint.
    seed_spacing : float or None
        Spacing of the coarse seed lattice whose points are always candidates (``None``: no
        seeds besides the fine lattice when nothing has been measured yet).
    angle_step : float
        Angular grid step for periodic axes.
    max_candidates : int
        Larger candidate sets are randomly subsampled (with the caller's seeded generator).
    jitter : float
        Each point of the fine and seed lattices is moved once, by a uniform offset in
        ``+-jitter * spacing / 2`` on each axis (kept inside the limits), as
        :func:`~synaps_agent.plans.patterns.raster_positions` jitters a raster: probe
        positions on a common grid make ptychography converge to periodic artefacts.
        0: regular lattices.
    seed : int
        Seed of the jitter.
    """

    space: ScanSpace
    lattice_step: float
    max_step: float | None
    seed_spacing: float | None
    angle_step: float = 0.25
    max_candidates: int = 2048
    jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        sp = self.space
        si, ai = sp.spatial_index, sp.angle_index
        if len(ai) > 1:
            raise ValueError("at most one periodic (rotation) axis is supported")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"candidate lattice jitter must be in [0, 1], got {self.jitter!r}")
        rng = np.random.default_rng(self.seed)
        self._fine = self._lattice(self.lattice_step, rng) if si else None
        if si and self.seed_spacing is not None:
            self._seeds = self._lattice(self.seed_spacing, rng)
        else:
            self._seeds = None
        if ai:
            ax = sp.axes[ai[0]]
            self._angles = angle_grid(ax.low, ax.high, ax.period, self.angle_step)
        else:
            self._angles = None

    def _lattice(self, spacing: float, rng: np.random.Generator) -> np.ndarray:
        """The spatial lattice of ``spacing`` over the limits, jittered."""
        si = self.space.spatial_index
        low, high = self.space.low[si], self.space.high[si]
        points = lattice(low, high, spacing)
        if self.jitter > 0:
            offsets = rng.uniform(-0.5, 0.5, points.shape) * self.jitter * spacing
            points = np.clip(points + offsets, low, high)
        return points

    def spatial(self, measured: np.ndarray) -> np.ndarray:
        """Spatial candidates (columns = non-periodic axes) given measured points.

        The set of fine-lattice points within ``max_step`` of a measured point is updated
        incrementally (measured points only accumulate); it is rebuilt if fewer points are
        passed than were seen before.
        """
        si = self.space.spatial_index
        if self.max_step is None:
            return self._fine
        if not hasattr(self, "_near") or len(measured) < self._n_seen:
            self._near = np.zeros(len(self._fine), dtype=bool)
            self._n_seen = 0
            self._fine_tree = cKDTree(self._fine)
        new = measured[self._n_seen :, si]
        if len(new):
            hits = self._fine_tree.query_ball_point(new, r=self.max_step * (1 + 1e-9))
            flat = [i for h in hits for i in h]
            if flat:
                self._near[np.asarray(flat, dtype=int)] = True
            self._n_seen = len(measured)
        parts = [self._fine[self._near]]
        if self._seeds is not None:
            parts.append(self._seeds)
        elif not len(measured):
            parts.append(self._fine)
        return np.concatenate(parts, axis=0)

    def __call__(self, measured: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """All candidates in the space's column order (not yet safety-filtered)."""
        sp = self.space
        si, ai = sp.spatial_index, sp.angle_index
        if si and ai:
            xy = self.spatial(measured)
            n_total = len(xy) * len(self._angles)
            if n_total > 4 * self.max_candidates:  # sample the product without building it
                flat = rng.choice(n_total, size=4 * self.max_candidates, replace=False)
                flat.sort()
                ixy, ia = np.divmod(flat, len(self._angles))
            else:
                ixy, ia = np.divmod(np.arange(n_total), len(self._angles))
            out = np.zeros((len(ixy), sp.ndim))
            out[:, si] = xy[ixy]
            out[:, ai[0]] = self._angles[ia]
            return out
        if si:
            out = np.zeros((0, sp.ndim))
            xy = self.spatial(measured)
            out = np.zeros((len(xy), sp.ndim))
            out[:, si] = xy
            return out
        out = np.zeros((len(self._angles), sp.ndim))
        out[:, ai[0]] = self._angles
        return out

    def subsample(self, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """At most ``max_candidates`` rows, chosen at random (order preserved)."""
        if len(candidates) <= self.max_candidates:
            return candidates
        idx = np.sort(rng.choice(len(candidates), size=self.max_candidates, replace=False))
        return candidates[idx]


class FootprintCoverage:
    """How often the probe footprints of measured points have seen each part of the region.

    The spatial box of ``space`` is rasterised (cell edge ``radius / 4``, at most 128
    cells per axis); a cell is seen once by every measured point within ``radius`` of its
    centre. :meth:`uncovered` is the part of a candidate's footprint (the cells within
    ``radius`` of it, inside the box) still to be seen: a cell seen ``k`` times counts
    ``max(depth - k, 0) / depth``, so with ``depth`` 1 it is the fraction nothing has
    seen yet, with ``depth`` 2 a cell seen once is still worth half. :meth:`cover` counts
    footprints as seen (the points of a batch being chosen).

    Parameters
    ----------
    space : ScanSpace
        Must have two spatial axes.
    radius : float
        Footprint radius (stage units), e.g. half the probe's FWHM.
    measured : (n, d) array
        Points measured so far (the space's columns).
    depth : int
        How many times a cell must be seen before it is worth nothing (>= 1).
    reach : float or None
        Overlap distance for :meth:`stitches`: a measured point with no other measured
        point within ``reach`` is *lonely* (its footprint overlaps none; ptychography
        cannot tie it to the rest). ``None``, or ``stitch_value`` 0: nothing is
        lonely.
    stitch_value : float
        What giving a lonely point a neighbour is worth in :meth:`value`, as a part of a
        fresh footprint (>= 0).
    """

    def __init__(
        self,
        space: ScanSpace,
        radius: float,
        measured: np.ndarray,
        depth: int = 1,
        reach: float | None = None,
        stitch_value: float = 0.0,
    ) -> None:
        si = space.spatial_index
        if len(si) != 2 or not radius > 0:
            raise ValueError("footprint coverage needs two spatial axes and a positive radius")
        if int(depth) != depth or depth < 1:
            raise ValueError(f"footprint coverage depth must be an integer >= 1, got {depth!r}")
        if not stitch_value >= 0:
            raise ValueError(f"footprint stitch_value must be >= 0, got {stitch_value!r}")
        self.si = si
        self.depth = int(depth)
        self.reach = reach
        self.stitch_value = float(stitch_value)
        self.low, high = space.low[si], space.high[si]
        self.cell = max(radius / 4, float(np.max(high - self.low)) / 128)
        span = np.ceil((high - self.low) / self.cell).astype(int) + 1
        self.shape = (int(span[0]), int(span[1]))
        gx, gy = (self.low[k] + self.cell * np.arange(self.shape[k]) for k in range(2))
        self.centres = np.stack(np.meshgrid(gx, gy, indexing="ij"), axis=-1).reshape(-1, 2)
        self.counts = np.zeros(self.shape, dtype=np.int32)
        pts = np.asarray(measured, dtype=float).reshape(-1, space.ndim)[:, si]
        self.lonely = np.zeros((0, 2))
        if len(pts):
            tree = cKDTree(pts)
            seen = tree.query_ball_point(self.centres, radius * (1 + 1e-9), return_length=True)
            self.counts = np.asarray(seen, dtype=np.int32).reshape(self.shape)
            if reach is not None and self.stitch_value > 0:
                near = tree.query_ball_point(pts, reach * (1 + 1e-9), return_length=True)
                self.lonely = pts[np.asarray(near) == 1]  # only itself
        n = int(np.ceil(radius / self.cell))
        ox, oy = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
        inside = (ox * self.cell) ** 2 + (oy * self.cell) ** 2 <= radius**2 * (1 + 1e-9)
        self._stencil = np.stack([ox[inside], oy[inside]], axis=1)

    @property
    def covered(self) -> np.ndarray:
        """Boolean map of the cells seen at least once."""
        return self.counts > 0

    def _cells(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell indices of each point's footprint and which of them lie in the box."""
        xy = np.asarray(points, dtype=float)[:, self.si]
        centre = np.rint((xy - self.low) / self.cell).astype(int)
        ix = centre[:, None, 0] + self._stencil[None, :, 0]
        iy = centre[:, None, 1] + self._stencil[None, :, 1]
        valid = (ix >= 0) & (ix < self.shape[0]) & (iy >= 0) & (iy < self.shape[1])
        return np.clip(ix, 0, self.shape[0] - 1), np.clip(iy, 0, self.shape[1] - 1), valid

    def uncovered(self, points: np.ndarray) -> np.ndarray:
        """Part (0..1) of each point's footprint in the box still to be seen."""
        if len(points) == 0:
            return np.zeros(0)
        ix, iy, valid = self._cells(points)
        missing = np.maximum(self.depth - self.counts[ix, iy], 0) * valid
        return missing.sum(axis=1) / (self.depth * np.maximum(valid.sum(axis=1), 1))

    def stitches(self, points: np.ndarray) -> np.ndarray:
        """1 for each point within ``reach`` of a lonely measured point, else 0."""
        if len(points) == 0 or not len(self.lonely):
            return np.zeros(len(points))
        xy = np.asarray(points, dtype=float)[:, self.si]
        d, _ = cKDTree(self.lonely).query(xy, distance_upper_bound=self.reach * (1 + 1e-9))
        return np.isfinite(d).astype(float)

    def value(self, points: np.ndarray) -> np.ndarray:
        """What measuring each point adds: :meth:`uncovered` plus ``stitch_value`` times
        :meth:`stitches`."""
        v = self.uncovered(points)
        if self.stitch_value > 0:
            v = v + self.stitch_value * self.stitches(points)
        return v

    def cover(self, points: np.ndarray) -> None:
        """Count the footprints of ``points`` as seen once more; lonely points within
        ``reach`` of them are lonely no longer."""
        points = np.atleast_2d(points)
        ix, iy, valid = self._cells(points)
        np.add.at(self.counts, (ix[valid], iy[valid]), 1)  # overlapping footprints add up
        if len(self.lonely):
            xy = points[:, self.si]
            d = np.min(np.linalg.norm(self.lonely[:, None, :] - xy[None], axis=2), axis=1)
            self.lonely = self.lonely[d > self.reach * (1 + 1e-9)]

    def open_area(self) -> float:
        """Area (stage units squared) of the part of the region nothing has seen yet."""
        return float(np.count_nonzero(self.counts == 0)) * self.cell**2

    def covered_centres(self) -> np.ndarray:
        """Stage coordinates ``(m, 2)`` (spatial columns) of the cells seen at least once."""
        return self.centres[self.covered.ravel()]
