"""Baseline strategies: same interface and safety as the agent, different choice."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import (
    AgentConfig,
    Axis,
    GreedyUncertaintyAgent,
    ImagingAgent,
    RandomAgent,
    ScanSpace,
    make_strategy,
)


def _space():
    return ScanSpace([Axis("x", 0, 10, "um"), Axis("y", 0, 10, "um")])


def _hot_map():
    """Uncertainty 1 in the square x, y in [6, 9], 0.05 elsewhere (extent 0..10)."""
    umap = np.full((50, 50), 0.05)
    umap[30:45, 30:45] = 1.0
    return umap


def test_greedy_goes_where_the_map_is_uncertain():
    agent = GreedyUncertaintyAgent(_space(), AgentConfig(probe_fwhm=1.0), seed=0)
    agent.update_prior(_hot_map(), (0, 10, 0, 10))
    docs, points = agent.ask(6)
    assert len(points) == 6 and all(d["strategy"] == "greedy" for d in docs)
    assert np.all((points >= 5.5) & (points <= 9.5))
    # spread: no two points of the batch within the tolerance
    d = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    assert np.min(d[np.triu_indices(6, 1)]) > np.max(agent.tolerance)


def test_random_is_seeded_admissible_and_not_greedy():
    space = _space()
    asks = []
    for _ in range(2):
        agent = RandomAgent(space, AgentConfig(probe_fwhm=1.0), seed=7)
        agent.update_prior(_hot_map(), (0, 10, 0, 10))
        asks.append(agent.ask(20)[1])
    np.testing.assert_array_equal(asks[0], asks[1])  # reproducible from the seed
    assert np.all(space.contains(asks[0]))
    inside = np.all((asks[0] >= 5.5) & (asks[0] <= 9.5), axis=1)
    assert inside.mean() < 0.5  # the hot square is ~16 % of the area
    # never repeats a measured point
    agent.tell(asks[1][0], {"gain": 0.1})
    nxt = agent.ask(50)[1]
    assert np.min(np.hypot(*(nxt - asks[1][0]).T)) > np.max(agent.tolerance)


def test_make_strategy():
    assert type(make_strategy("agent", _space())) is ImagingAgent
    assert make_strategy("random", _space()).strategy == "random"
    with pytest.raises(ValueError, match="unknown strategy 'raster'"):
        make_strategy("raster", _space())
