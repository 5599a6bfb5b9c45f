"""The agent fails or hangs in the middle of an adaptive scan: the scan finishes on its
planned pattern (FallbackFeed), says so, and every exposure is in the catalog."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from synaps_agent.callbacks.agent_feed import FallbackFeed
from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions, unmeasured_points

SEEDS = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)  # 9 points
PATTERN = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.2)  # 25 points, the seeds among them


class AgentFault:
    """Breaks ``agent.ask`` from its ``after``-th call on: it raises, or it hangs until
    released (``hang=True``)."""

    def __init__(self, agent, after: int, *, hang: bool = False) -> None:
        self.calls = 0
        self.release = threading.Event()
        ask = agent.ask

        def broken_ask(n):
            self.calls += 1
            if self.calls >= after:
                if hang:
                    self.release.wait(60)
                raise RuntimeError("GP fit diverged (injected)")
            return ask(n)

        agent.ask = broken_ask


def _scan(RE, bl, feed, budget):
    (uid,) = RE(adaptive_ptycho_scan(
        [bl.ptycho_det], bl.stage.x, bl.stage.y, feed, SEEDS, batch_size=4,
        max_exposures=budget, shutter=bl.shutter,
    ))  # fmt: skip
    return uid


def _decisions_run(catalog, uid):
    (run,) = [
        r
        for r in catalog.processed.values()
        if r.start.get("raw_uid") == uid and r.start["processor"]["name"] == "agent"
    ]
    return run


def test_an_agent_that_raises_hands_the_scan_to_the_planned_pattern(
    RE, catalog, documents, ptycho_beamline, map_free_feed
):
    bl = ptycho_beamline
    inner = map_free_feed(60)
    fault = AgentFault(inner.agent, after=2)  # the first decision works, the second raises
    feed = FallbackFeed(inner, PATTERN)
    uid = _scan(RE, bl, feed, 60)

    run = catalog.raw[uid]
    assert run.stop["exit_status"] == "success"
    reason = run.stop["reason"]
    assert "GP fit diverged" in reason and "planned pattern is complete" in reason, reason
    assert fault.calls == 2  # never asked again once it failed
    xy = np.column_stack([run["primary"]["stage_x"].read(), run["primary"]["stage_y"].read()])
    events = documents.of("event")
    assert len(xy) == len([e for e in events if "stage_x" in e["data"]])
    # the seeds, the agent's one batch, then every pattern point not measured yet, once
    assert len(xy) == 9 + 4 + 16
    np.testing.assert_allclose(xy[:9], SEEDS, atol=1e-6)
    assert len(unmeasured_points(PATTERN, xy, tolerance=1e-3)) == 0
    np.testing.assert_allclose(xy[13:], PATTERN[~np.isin(np.arange(25), _on_seeds())], atol=1e-6)
    # the agent's decisions run is closed too, saying why
    decisions = _decisions_run(catalog, uid)
    assert "fell back to the planned pattern" in decisions.stop["reason"]


def _on_seeds() -> np.ndarray:
    """Indices of the pattern's points that are seeds."""
    d = np.linalg.norm(PATTERN[:, None] - SEEDS[None], axis=2)
    return np.flatnonzero(d.min(axis=1) < 1e-9)


def test_a_hung_agent_is_abandoned_after_its_timeout(
    RE, catalog, documents, ptycho_beamline, map_free_feed
):
    bl = ptycho_beamline
    inner = map_free_feed(20)
    fault = AgentFault(inner.agent, after=1, hang=True)  # hangs at the first decision
    feed = FallbackFeed(inner, PATTERN, ask_timeout=0.5)
    t0 = time.monotonic()
    try:
        uid = _scan(RE, bl, feed, 20)
    finally:
        fault.release.set()
    assert time.monotonic() - t0 < 50  # the scan did not wait for the hung agent
    run = catalog.raw[uid]
    reason = run.stop["reason"]
    assert "did not answer within 0.5 s" in reason and "budget" in reason, reason
    xy = np.column_stack([run["primary"]["stage_x"].read(), run["primary"]["stage_y"].read()])
    assert len(xy) == 20  # 9 seeds + the first 11 unmeasured pattern points
    expected = PATTERN[~np.isin(np.arange(25), _on_seeds())][:11]
    np.testing.assert_allclose(xy[9:], expected, atol=1e-6)


def test_a_pattern_of_the_wrong_shape_is_refused(map_free_feed):
    with pytest.raises(ValueError, match=r"FallbackFeed pattern must be an \(n, 2\) pattern"):
        FallbackFeed(map_free_feed(20), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        FallbackFeed(map_free_feed(20), [[0.0, np.nan]])
    with pytest.raises(ValueError, match="ask_timeout"):
        FallbackFeed(map_free_feed(20), PATTERN, ask_timeout=0)
