"""Acquisition functions, cost-aware scoring, batch selection and travel ordering.

The analytic acquisitions are computed directly from the posterior mean and standard
deviation (same formulas as botorch's ``UpperConfidenceBound`` — ``mean + sqrt(beta) * std`` —
and ``ExpectedImprovement``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import ndtr

from synaps_agent.agent.candidates import FootprintCoverage
from synaps_agent.agent.space import ScanSpace
from synaps_agent.agent.surrogate import Posterior

__all__ = [
    "ACQUISITIONS",
    "expected_improvement",
    "information_per_second",
    "order_by_travel",
    "path_time",
    "posterior_variance",
    "select_batch",
    "upper_confidence_bound",
]


def upper_confidence_bound(mean: np.ndarray, std: np.ndarray, beta: float = 4.0) -> np.ndarray:
    """UCB ``mean + sqrt(beta) * std`` (botorch convention)."""
    return mean + np.sqrt(beta) * std


def expected_improvement(mean: np.ndarray, std: np.ndarray, best_f: float) -> np.ndarray:
    """Analytic expected improvement over ``best_f`` (maximisation)."""
    std = np.maximum(std, 1e-12)
    z = (mean - best_f) / std
    return std * (z * ndtr(z) + np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))


def posterior_variance(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Pure exploration: the posterior variance."""
    return std**2


ACQUISITIONS = ("ucb", "ei", "variance")


def information_per_second(
    values: np.ndarray, travel_time: np.ndarray, exposure_time: float
) -> np.ndarray:
    """Cost-aware score ``value / (travel_time + exposure_time)``.

    Values are first shifted so that the smallest is >= 0 (UCB can be negative), keeping the
    score monotone in the value at equal cost and decreasing in the cost at equal value.
    """
    v = np.asarray(values, dtype=float)
    shift = min(float(np.min(v)), 0.0) if v.size else 0.0
    return (v - shift) / (np.asarray(travel_time) + exposure_time)


def _score(name: str, mean: np.ndarray, std: np.ndarray, beta: float, best_f: float) -> np.ndarray:
    if name == "ucb":
        return upper_confidence_bound(mean, std, beta)
    if name == "ei":
        return expected_improvement(mean, std, best_f)
    if name == "variance":
        return posterior_variance(mean, std)
    raise ValueError(f"unknown acquisition {name!r}; choose from {ACQUISITIONS}")


def select_batch(
    posterior: Posterior,
    candidates: np.ndarray,
    q: int,
    *,
    space: ScanSpace,
    acquisition: str = "ucb",
    beta: float = 4.0,
    best_f: float = 0.0,
    cost_aware: bool = True,
    start: np.ndarray | None = None,
    exposure_time: float = 1.0,
    embedding: Callable[[np.ndarray], np.ndarray] | None = None,
    min_distance: float = 1.0,
    coverage: FootprintCoverage | None = None,
    coverage_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Greedy sequential batch with kriging-believer fantasies.

    With ``coverage``, a candidate is also worth the part of its footprint still to be
    seen (:meth:`FootprintCoverage.value`: what no measurement has seen, with a coverage
    ``depth`` above 1 in part what was seen fewer than ``depth`` times, and with a
    ``stitch_value`` a bonus for overlapping a lonely measured point) times
    ``coverage_weight`` times the range of the acquisition over the candidates (1 if it
    is flat), on top of the acquisition: a fresh footprint is worth as much as the
    difference between the best and the worst candidate the surrogate knows of, whatever
    the scale of its gains. Each pick's footprint counts as seen for the next picks
    of the batch, so a batch spreads over fresh ground instead of piling onto one
    uncertain spot.

    After each pick the chosen point is "observed" at its posterior mean: the mean is
    unchanged, the variance shrinks by the rank-one update of the fantasised observation
    (``var -= cov(., s)^2 / (var(s) + noise)``), so the next pick goes elsewhere. Candidates
    closer than ``min_distance`` (in ``embedding`` units) to a pick are removed as well.
    With ``cost_aware`` the score is divided by the travel time from the previous pick
    (initially ``start``) plus the exposure time.

    Returns
    -------
    indices : (q',) int array of chosen candidates (q' <= q if candidates run out)
    values : (q',) acquisition values (with the coverage term, before cost weighting) at
        the picks
    summary : dict with statistics of the first round of scores
    """
    n = len(candidates)
    mean, var = posterior.mean.astype(float), posterior.var.astype(float).copy()
    alive = np.ones(n, dtype=bool)
    emb = embedding(candidates) if embedding is not None else None
    cols: list[np.ndarray] = []
    chosen: list[int] = []
    values: list[float] = []
    summary: dict[str, Any] = {}
    pos = None if start is None else np.asarray(start, dtype=float)
    for t in range(min(q, n)):
        std = np.sqrt(np.maximum(var, 0.0))
        acq = _score(acquisition, mean, std, beta, best_f)
        if coverage is not None and coverage_weight > 0:
            if t == 0:
                spread = float(np.max(acq) - np.min(acq))
                coverage_value = coverage_weight * (spread if spread > 0 else 1.0)
            fresh = coverage.value(candidates)
            acq = acq + coverage_value * fresh
        score = acq
        if cost_aware and pos is not None:
            score = information_per_second(acq, space.travel_time(pos, candidates), exposure_time)
        if t == 0:
            summary = {
                "n_scored": int(n),
                "acq_min": float(np.min(acq)),
                "acq_median": float(np.median(acq)),
                "acq_max": float(np.max(acq)),
                "score_max": float(np.max(score)),
                "mean_max": float(np.max(mean)),
                "std_max": float(np.max(std)),
            }
            if coverage is not None and coverage_weight > 0:
                summary["coverage_value"] = float(coverage_value)
                summary["uncovered_max"] = float(np.max(fresh))
        score = np.where(alive, score, -np.inf)
        j = int(np.argmax(score))
        if not np.isfinite(score[j]):
            break
        chosen.append(j)
        values.append(float(acq[j]))
        alive[j] = False
        if coverage is not None and coverage_weight > 0:
            coverage.cover(candidates[j : j + 1])
        if emb is not None:
            alive &= np.sum((emb - emb[j]) ** 2, axis=1) > min_distance**2
        if acquisition == "ei":
            best_f = max(best_f, float(mean[j]))
        if t + 1 < q:
            c = posterior.cov_column(j)
            for g in cols:
                c = c - g * g[j]
            d = var[j] + posterior.noise
            g = c / np.sqrt(max(d, 1e-300))
            cols.append(g)
            var = var - g * g
        pos = candidates[j]
    return np.asarray(chosen, dtype=int), np.asarray(values), summary


def path_time(space: ScanSpace, start: np.ndarray | None, points: np.ndarray) -> float:
    """Total travel time visiting ``points`` in order, from ``start`` (if given)."""
    if len(points) == 0:
        return 0.0
    seq = points if start is None else np.vstack([np.asarray(start)[None, :], points])
    return float(sum(space.travel_time(seq[i], seq[i + 1])[0] for i in range(len(seq) - 1)))


def _two_opt(dist: np.ndarray, path: list[int]) -> list[int]:
    """2-opt on an open path whose first node (the start) is fixed."""
    path = list(path)
    improved = True
    while improved:
        improved = False
        m = len(path)
        for i in range(1, m - 1):
            for j in range(i + 1, m):
                a, b = path[i - 1], path[i]
                c = path[j]
                before = dist[a, b]
                after = dist[a, c]
                if j + 1 < m:
                    d = path[j + 1]
                    before += dist[c, d]
                    after += dist[b, d]
                if after < before - 1e-12:
                    path[i : j + 1] = path[i : j + 1][::-1]
                    improved = True
    return path


def order_by_travel(space: ScanSpace, start: np.ndarray | None, points: np.ndarray) -> np.ndarray:
    """Visiting order minimising travel time: nearest neighbour + 2-opt from ``start``.

    2-opt is also run from the input order and the better tour is kept, so the result is
    never longer than the input order.

    Returns
    -------
    numpy.ndarray
        A permutation of ``range(len(points))``.
    """
    k = len(points)
    if k <= 1:
        return np.arange(k)
    nodes = points if start is None else np.vstack([np.asarray(start)[None, :], points])
    dist = np.stack([space.travel_time(p, nodes) for p in nodes])
    off = 0 if start is None else 1
    # nearest neighbour (from the start, or from point 0 when no start is given)
    first = 0
    nn = [first]
    left = set(range(len(nodes))) - {first}
    while left:
        cur = nn[-1]
        nxt = min(left, key=lambda j: (dist[cur, j], j))
        nn.append(nxt)
        left.remove(nxt)
    identity = list(range(len(nodes)))

    def cost(path: list[int]) -> float:
        return float(sum(dist[path[i], path[i + 1]] for i in range(len(path) - 1)))

    tours = [_two_opt(dist, nn), _two_opt(dist, identity)]
    best = min(tours, key=cost)
    return np.asarray(best[off:], dtype=int) - off
