"""Which rotation angles to measure next: a view-selection rule that keeps the angular
coverage of a tomography scan while the agent steers it.

Filtered back-projection's error is set by the *largest* angular gaps between measured
views (each gap leaves a wedge of the sample's Fourier space unsampled), not by how
many views crowd elsewhere. An agent that only follows the uncertainty (the forward
projection of the segmentation's uncertainty map as prior, and a GP that learned where
the gains were) pulls the views into the arcs whose rays run along the uncertain
structures and leaves gaps of several uniform spacings elsewhere. A prior that also
grows with the distance to the measured views does not bound the gaps either: the GP
learns how well the prior predicts the told gains and weighs it down to nothing once the
gains say otherwise (measured in ``benchmarks/autonomy_tomo.py``: fitted prior weight
about 1e-13, gaps of 3 uniform spacings).

So the coverage is kept where the views are *chosen*: :func:`spread_views` lets the
agent's acquisition pick, one view at a time, only among views that keep the coverage:

* with a budget (views in the scan), the slots of :func:`view_slots`, where the views
  left would go to leave the smallest largest gap; the acquisition decides which slots
  come first (the most uncertain views are measured early, so a scan stopped early by
  the stopping rule has them), and the scan ends with gaps of at most about 1.1-1.3
  uniform spacings from uniform seeds;
* without one, views at least ``ratio`` times as far from every measured view as the
  farthest candidate: no gap larger than ``2 / ratio`` uniform spacings
  (:func:`largest_gap_bound`).

:class:`CoverageAgent` is an :class:`~synaps_agent.agent.ImagingAgent` choosing so. All
functions are pure numpy and take angles in degrees.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from synaps_agent.agent.acquisition import _score, information_per_second
from synaps_agent.agent.agent import ImagingAgent

__all__ = [
    "CoverageAgent",
    "angular_distance",
    "angular_gaps",
    "largest_gap_bound",
    "spread_views",
]

#: degrees after which a parallel-beam view repeats (mirrored)
HALF_TURN = 180.0


def _angles(name: str, values, period: float) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a}")
    if not period > 0:
        raise ValueError(f"period must be positive, got {period}")
    return np.mod(a, period)


def angular_distance(
    angles: np.ndarray, measured: np.ndarray, period: float = HALF_TURN
) -> np.ndarray:
    """Distance (degrees, periodic) from each of ``angles`` to the nearest ``measured`` one.

    Parameters
    ----------
    angles : array of shape (n,)
        The views to measure the distance of.
    measured : array of shape (m,)
        The views measured so far (any order, any period); with ``m = 0`` every distance is
        ``period / 2``, the largest possible.
    period : float
        Angles ``a`` and ``a + period`` are the same view (180 for parallel beam).

    Returns
    -------
    numpy.ndarray of shape (n,)
        In ``[0, period / 2]``.
    """
    a = _angles("angles", angles, period)
    m = _angles("measured angles", measured, period)
    if m.size == 0:
        return np.full(a.shape, period / 2.0)
    d = np.abs(a[:, None] - m[None, :])
    return np.min(np.minimum(d, period - d), axis=1)


def angular_gaps(measured: np.ndarray, period: float = HALF_TURN) -> np.ndarray:
    """The gaps (degrees) between consecutive measured views around the period, including
    the one across ``period``; ``m`` views give ``m`` gaps summing to ``period``.

    Parameters
    ----------
    measured : array of shape (m,), m >= 1
    period : float

    Returns
    -------
    numpy.ndarray of shape (m,)
        Gap after each view in increasing angle (repeated views give gaps of 0).
    """
    m = np.sort(_angles("measured angles", measured, period))
    if m.size == 0:
        raise ValueError("angular_gaps needs at least one measured angle")
    return np.diff(np.r_[m, m[0] + period])


def view_slots(
    measured_angles: np.ndarray,
    remaining: int,
    period: float = HALF_TURN,
    min_spacing: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Where ``remaining`` more views would go to leave the smallest largest gap: each
    gap between measured views gets views in turn, always the gap with the largest
    spacing (water filling), and its views split it evenly; a gap takes no view that
    would bring its spacing to ``min_spacing`` or below.

    Parameters
    ----------
    measured_angles : array of shape (m,), m >= 1
        Degrees.
    remaining : int
        Views still to measure (>= 0).
    period : float
    min_spacing : float
        Degrees (e.g. the duplicate tolerance).

    Returns
    -------
    slots : numpy.ndarray of shape (k,), k <= remaining
        Degrees in ``[0, period)``.
    spacing : numpy.ndarray of shape (remaining,)
        The spacing of the views in each slot's gap once it is filled.
    """
    if remaining < 0:
        raise ValueError(f"remaining must be non-negative, got {remaining}")
    gaps = angular_gaps(measured_angles, period)
    starts = np.sort(_angles("measured angles", measured_angles, period))
    counts = np.zeros(len(gaps), dtype=int)
    heap = [(-g, i) for i, g in enumerate(gaps)]
    heapq.heapify(heap)
    placed = 0
    while placed < remaining and heap:
        _, i = heapq.heappop(heap)
        if gaps[i] / (counts[i] + 2) <= min_spacing:
            continue  # this gap is full
        counts[i] += 1
        placed += 1
        heapq.heappush(heap, (-gaps[i] / (counts[i] + 1), i))
    slots, spacing = [], []
    for a, g, n in zip(starts, gaps, counts, strict=True):
        if n:
            slots.append(a + g * np.arange(1, n + 1) / (n + 1))
            spacing.append(np.full(n, g / (n + 1)))
    if not slots:
        return np.zeros(0), np.zeros(0)
    return np.mod(np.concatenate(slots), period), np.concatenate(spacing)


def spread_views(
    scores: np.ndarray,
    candidate_angles: np.ndarray,
    measured_angles: np.ndarray,
    count: int,
    *,
    budget: int | None = None,
    slack: float = 0.0,
    ratio: float = 0.5,
    min_separation: float = 0.0,
    period: float = HALF_TURN,
) -> np.ndarray:
    """Choose ``count`` views by ``scores`` among the views that keep the angular coverage.

    One at a time, each pick counting as measured for the next (and removing the
    candidates closer than ``min_separation`` to it):

    * with a ``budget`` (views in the whole scan, seeds included) not yet spent, the
      eligible candidates are those within ``slack`` times the local spacing of a slot of
      :func:`view_slots` for the views left (and the nearest candidate to each slot): the
      scores decide which slots are measured first and shift a view a little toward the
      uncertain side, the final views are nearly evenly spread;
    * otherwise (no budget, budget spent, no slot farther than ``min_separation`` from
      the views or no candidate near one), those at least ``ratio * d_max`` from every
      measured and chosen view (``d_max``: the largest such distance over the candidates
      left, about half the largest gap): the best scored view in one of the largest gaps.

    Parameters
    ----------
    scores : array of shape (n,)
        Higher is better (e.g. the agent's acquisition values); ``-inf`` never chosen.
    candidate_angles : array of shape (n,)
        Degrees.
    measured_angles : array of shape (m,)
        Degrees; may be empty (then the first pick is the best scored).
    count : int
        How many views to choose (fewer if the candidates run out).
    budget : int, optional
        Views of the whole scan (measured ones included).
    slack : float
        Non-negative; 0 keeps to the slots exactly (the nearest candidates). The scores
        pull the views to one side of their windows, so the final gaps grow with it (up
        to about 2 uniform spacings at 0.25 against 1.1-1.25 at 0).
    ratio : float
        In ``(0, 1]``; ``1`` bisects the largest gap, smaller lets the scores roam more.
    min_separation : float
        Degrees; no two chosen views this close or closer (the agent's duplicate
        tolerance; candidates that close to a measured view should not be passed at all).
    period : float
        180 for parallel-beam tomography.

    Returns
    -------
    numpy.ndarray of int
        Indices into the candidates, in the order chosen.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    cands = _angles("candidate angles", candidate_angles, period)
    measured = list(_angles("measured angles", measured_angles, period))
    if scores.shape != cands.shape:
        raise ValueError(f"scores {scores.shape} and candidate angles {cands.shape} differ")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not (slack >= 0.0 and min_separation >= 0.0):
        raise ValueError(f"slack and min_separation must be >= 0, got {slack}, {min_separation}")
    if count < 0 or (budget is not None and budget < 1):
        raise ValueError(f"need count >= 0 and budget >= 1, got {count}, {budget}")
    alive = np.isfinite(scores)
    chosen: list[int] = []
    while len(chosen) < count and alive.any():
        eligible = alive if not measured else np.zeros_like(alive)
        if measured and budget is not None and budget > len(measured):
            slots, spacing = view_slots(np.asarray(measured), budget - len(measured), period,
                                        min_spacing=min_separation)  # fmt: skip
            if slots.size:
                d = np.abs(cands[:, None] - slots[None, :])
                d = np.minimum(d, period - d)  # candidate x slot
                near = np.argmin(d, axis=1)
                eligible = alive & (d[np.arange(len(cands)), near] <= slack * spacing[near])
                # every slot's nearest live candidate too, however coarse the grid, if it
                # is nearer to that slot than to the next
                best = np.argmin(np.where(alive[:, None], d, np.inf), axis=0)
                reachable = d[best, np.arange(len(slots))] < 0.5 * spacing
                eligible[best[reachable]] = True
        if not eligible.any():  # no budget, budget spent or no slot within reach
            distance = angular_distance(cands, np.asarray(measured), period)
            eligible = alive & (distance >= ratio * float(distance[alive].max()))
        j = int(np.argmax(np.where(eligible, scores, -np.inf)))
        chosen.append(j)
        alive[j] = False
        alive &= angular_distance(cands, cands[j : j + 1], period) > min_separation
        measured.append(float(cands[j]))
    return np.asarray(chosen, dtype=int)


def largest_gap_bound(num_views: int, ratio: float, period: float = HALF_TURN) -> float:
    """The largest angular gap :func:`spread_views` can leave after ``num_views`` views
    (seeds included, if they are at least as far apart): ``2 * period / (ratio * num_views)``,
    i.e. ``2 / ratio`` uniform spacings.

    Every view was at least ``ratio * G / 2`` from all earlier ones (``G``, the final
    largest gap, is at most every earlier largest gap), so the ``num_views`` gaps, each at
    least ``ratio * G / 2``, fill at most one period.
    """
    if num_views < 1 or not 0.0 < ratio <= 1.0:
        raise ValueError(f"need num_views >= 1 and ratio in (0, 1], got {num_views}, {ratio}")
    return 2.0 * period / (ratio * num_views)


class CoverageAgent(ImagingAgent):
    """:class:`~synaps_agent.agent.ImagingAgent` over a rotation axis whose batches keep the
    angular coverage: the acquisition (UCB, EI or variance of the GP, with the view prior
    as mean, divided by travel and exposure time when ``cost_aware``) scores the
    candidates, :func:`spread_views` picks the best of them that keep the coverage.

    Parameters
    ----------
    *args, **kwargs
        As :class:`~synaps_agent.agent.ImagingAgent`; the space must have exactly one
        periodic axis and nothing else.
    budget : int, optional
        Views of the whole scan, seeds included (the plan's ``max_exposures``): the views
        end nearly evenly spread. ``None``: each view in one of the largest gaps.
    slack, coverage_ratio : float
        ``slack`` and ``ratio`` of :func:`spread_views`.
    """

    strategy = "agent-coverage"

    def __init__(
        self,
        *args: Any,
        budget: int | None = None,
        slack: float = 0.0,
        coverage_ratio: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.space.ndim != 1 or len(self.space.angle_index) != 1:
            raise ValueError("CoverageAgent needs a space with one periodic (angle) axis only")
        self.coverage = {"budget": budget, "slack": float(slack), "ratio": float(coverage_ratio)}
        self.period = float(self.space.axes[0].period)
        spread_views(np.zeros(0), np.zeros(0), np.zeros(0), 0, period=self.period,
                     **self.coverage)  # fmt: skip  (checks the settings now, not mid-scan)

    def _choose(self, cands: np.ndarray, batch_size: int):
        cfg, sur = self.config, self.surrogate
        if sur.needs_fit():
            sur.fit(self.rng)
        post = sur.posterior(cands)
        best_f = float(np.max(sur.y)) if sur.n else 0.0
        acq = _score(cfg.acquisition, post.mean, post.std, cfg.beta, best_f)
        scores = acq
        if cfg.cost_aware and self.position is not None:
            travel = self.space.travel_time(self.position, cands)
            scores = information_per_second(acq, travel, cfg.time_per_point)
        measured = self.gate.measured.points[:, 0]
        apart = self.config.batch_min_distance * float(self.tolerance[0])
        idx = spread_views(scores, cands[:, 0], measured, batch_size, period=self.period,
                           min_separation=apart, **self.coverage)  # fmt: skip
        summary = {
            "n_scored": len(cands),
            "acq_min": float(np.min(acq)),
            "acq_median": float(np.median(acq)),
            "acq_max": float(np.max(acq)),
            **self.coverage,
            "largest_gap_before": (float(angular_gaps(measured, self.period).max())
                                   if len(measured) else self.period),
        }  # fmt: skip
        return idx, acq[idx], (post.mean, post.std), summary
