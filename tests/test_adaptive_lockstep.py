"""Adaptive scans decide on a map that reflects every exposure taken so far (bounded wait),
and a seeded scan is reproducible."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
from bluesky import RunEngine

from synaps_agent.agent import Axis, ScanSpace, make_strategy
from synaps_agent.callbacks.agent_feed import AgentFeed
from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions


class SlowAnalysis:
    """A document consumer that takes ``delay`` s per primary event in its own thread
    (like a live reconstruction falling behind) and counts the events it has digested."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.frames = 0
        self._primary: set[str] = set()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def __call__(self, name: str, doc: dict) -> None:
        if name == "descriptor" and doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._primary:
            self._queue.put(doc["seq_num"])

    def _work(self) -> None:
        while self._queue.get() is not None:
            time.sleep(self.delay)
            self.frames += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)


def _decisions(catalog, uid):
    (run,) = [
        r
        for r in catalog.processed.values()
        if r.start.get("raw_uid") == uid and r.start["processor"]["name"] == "agent"
    ]
    return run


def test_each_decision_waits_for_the_map_of_every_exposure(
    catalog, ptycho_beamline, map_free_feed
):
    bl = ptycho_beamline
    analysis = SlowAnalysis(delay=0.03)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(catalog.writer())
    RE.subscribe(analysis)
    feed = map_free_feed(21, map_frames=lambda: analysis.frames)
    seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)  # 9 seeds, then 3 batches of 4
    try:
        (uid,) = RE(adaptive_ptycho_scan(
            [bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds, batch_size=4,
            max_exposures=21, shutter=bl.shutter, map_timeout=60.0,
        ))  # fmt: skip
    finally:
        analysis.close()
    assert feed.stale_decisions == []
    decisions = _decisions(catalog, uid)["decisions"]
    batch = np.asarray(decisions["decision"].read())
    map_frames = np.asarray(decisions["map_frames"].read())
    # decision k was taken on the map of the 9 seeds and the k - 1 batches before it
    np.testing.assert_array_equal(map_frames, 9 + 4 * (batch - 1))
    assert list(np.unique(batch)) == [1, 2, 3]


def test_a_map_that_never_catches_up_is_waited_for_at_most_the_timeout(
    catalog, ptycho_beamline, map_free_feed
):
    bl = ptycho_beamline
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(catalog.writer())
    feed = map_free_feed(13, map_frames=lambda: 2)  # the analysis is stuck at 2 frames
    seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)
    t0 = time.monotonic()
    (uid,) = RE(adaptive_ptycho_scan(
        [bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds, batch_size=2,
        max_exposures=13, shutter=bl.shutter, map_timeout=0.2,
    ))  # fmt: skip
    assert time.monotonic() - t0 < 60
    run = catalog.raw[uid]
    assert "exposure budget" in run.stop["reason"]  # the scan went on to its end
    assert len(run["primary"]["stage_x"].read()) == 13
    # every decision waited, then went on with the stale map; the budget needed no map
    assert [d[:3] for d in feed.stale_decisions] == [(1, 2, 9), (2, 2, 11)]
    assert all(d[3] >= 0.2 for d in feed.stale_decisions)
    stale = _decisions(catalog, uid)["stale_maps"]
    np.testing.assert_array_equal(np.asarray(stale["exposures"].read()), [9, 11])
    np.testing.assert_array_equal(np.asarray(stale["map_frames"].read()), [2, 2])


def test_map_timeout_must_not_be_negative(ptycho_beamline):
    bl = ptycho_beamline
    feed = AgentFeed(
        make_strategy("random", ScanSpace([Axis(n, -0.5, 0.5, "um") for n in "xy"])),
        lambda: None, footprint_radius=0.1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="map_timeout"):
        list(adaptive_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, feed,
                                  [[0.0, 0.0]], map_timeout=-1))  # fmt: skip


@pytest.mark.slow
def test_a_seeded_adaptive_scan_is_reproducible(catalog):
    """The same seed gives the same measured positions: the live reconstruction follows
    its deterministic schedule and every decision waits for the map of all exposures."""
    from synaps_agent.experiment import default_segmenter, run_strategies

    segmenter = default_segmenter()
    runs = [
        run_strategies(catalog, ("agent",), case="P-dense", size=48, seed=7,
                       segmenter=segmenter, final_epochs=2, scoring=None,
                       log=lambda *a: None)["agent"]  # fmt: skip
        for _ in range(2)
    ]
    first, second = runs
    assert len(first.positions) == 40  # 9 seeds, then the agent's points up to the budget
    np.testing.assert_array_equal(first.positions, second.positions)
    assert first.stale_maps == second.stale_maps == 0
    for outcome in runs:  # each decision was taken on the map of every exposure before it
        decisions = _decisions(catalog, outcome.raw_uid)["decisions"]
        batch = np.asarray(decisions["decision"].read())
        frames = np.asarray(decisions["map_frames"].read())
        seeds = frames[0]
        assert seeds > 0
        np.testing.assert_array_equal(frames, seeds + 8 * (batch - 1))
