"""Baseline strategies for the autonomy benchmark, with the agent's interface.

Each baseline is an :class:`~synaps_agent.agent.ImagingAgent` that chooses differently:
it keeps the agent's candidates (the ptychographic overlap constraint), safety gate,
stopping rule, travel ordering and decision documents, so the same adaptive plan and
:class:`~synaps_agent.callbacks.agent_feed.AgentFeed` drive it. Only ``_choose`` differs:

- :class:`RandomAgent`: admissible candidates in a seeded random order;
- :class:`GreedyUncertaintyAgent`: the candidates whose footprint holds the most
  uncertainty in the current segmentation map (no GP, no learning from gains).

Both spread a batch like the agent does: no two points of a batch closer than
``batch_min_distance`` (tolerance units).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synaps_agent.agent.agent import ImagingAgent

__all__ = ["STRATEGIES", "GreedyUncertaintyAgent", "RandomAgent", "make_strategy"]


def spread_top(
    scores: np.ndarray, embedding: np.ndarray, q: int, min_distance: float
) -> np.ndarray:
    """Indices of the ``q`` best ``scores``, skipping any closer than ``min_distance`` (in
    ``embedding`` units) to one already taken; fewer if the candidates run out."""
    chosen: list[int] = []
    for j in np.argsort(-scores, kind="stable"):
        if len(chosen) == q:
            break
        if chosen:
            d2 = np.sum((embedding[chosen] - embedding[j]) ** 2, axis=1)
            if np.min(d2) < min_distance**2:
                continue
        chosen.append(int(j))
    return np.asarray(chosen, dtype=int)


class _ScoredBaseline(ImagingAgent):
    """Choose the best-scored admissible candidates; subclasses define the score."""

    def _scores(self, cands: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _choose(self, cands: np.ndarray, batch_size: int):
        scores = self._scores(cands)
        emb = self.space.scaled_embedding(cands, self.tolerance)
        idx = spread_top(scores, emb, batch_size, self.config.batch_min_distance)
        summary: dict[str, Any] = {
            "n_scored": len(cands),
            "score_min": float(np.min(scores)),
            "score_median": float(np.median(scores)),
            "score_max": float(np.max(scores)),
        }
        return idx, scores[idx], (scores, np.zeros_like(scores)), summary


class RandomAgent(_ScoredBaseline):
    """Admissible candidates in a seeded random order (the overlap constraint still holds)."""

    strategy = "random"

    def _scores(self, cands: np.ndarray) -> np.ndarray:
        return self.rng.random(len(cands))


class GreedyUncertaintyAgent(_ScoredBaseline):
    """The candidates with the most segmentation uncertainty under their footprint, read
    from the latest uncertainty map (the agent's prior, without the GP)."""

    strategy = "greedy"

    def _scores(self, cands: np.ndarray) -> np.ndarray:
        return self.surrogate.prior_values(cands).sum(axis=1)


STRATEGIES: dict[str, type[ImagingAgent]] = {
    "agent": ImagingAgent,
    "random": RandomAgent,
    "greedy": GreedyUncertaintyAgent,
}


def make_strategy(name: str, *args: Any, **kwargs: Any) -> ImagingAgent:
    """Build the strategy ``name`` (one of :data:`STRATEGIES`) with ImagingAgent's arguments."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](*args, **kwargs)
