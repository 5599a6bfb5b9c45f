"""An adaptive scan re-measures, once, a point whose exposure saw no beam (I0 read 0)."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine

from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions
from synaps_agent.reliability import prepare_run_engine


def _primary(catalog, uid):
    primary = catalog.raw[uid]["primary"]
    return (
        np.asarray(primary["i0"].read(), dtype=float),
        np.column_stack([np.asarray(primary["stage_x"].read()),
                         np.asarray(primary["stage_y"].read())]),  # fmt: skip
        np.asarray(primary["ptycho_det_total_counts"].read(), dtype=float),
    )


@pytest.mark.parametrize("beam_back", [True, False], ids=["beam-back", "beam-stays-down"])
def test_zero_i0_exposure_is_taken_again_once(
    catalog, documents, ptycho_beamline, map_free_feed, beam_back
):
    bl = ptycho_beamline
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(documents)
    RE.subscribe(catalog.writer())
    prepare_run_engine(RE)  # non-rewindable, a checkpoint after each event (no suspender)
    if beam_back:  # the ring refills as soon as the dumped exposure's event is out
        RE.subscribe(lambda name, doc: doc["data"]["i0"] > 0 or bl.beam.restore(), "event")
    budget = 14
    feed = map_free_feed(budget)
    seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)  # 9 seeds
    bl.beam.schedule_dump(at_exposure=4, down_for=3600.0)
    try:
        (uid,) = RE(adaptive_ptycho_scan(
            [bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds, batch_size=4,
            max_exposures=budget, shutter=bl.shutter, monitor=bl.i0,
        ))  # fmt: skip
    finally:
        bl.beam.restore()
    i0, xy, counts = _primary(catalog, uid)
    dumped = np.flatnonzero(i0 <= 0)
    assert dumped[0] == 3  # the 4th exposure saw no beam, and no photons
    assert counts[3] == 0 and np.all(counts[i0 > 0] > 0)
    # the retake follows at the same point, recorded by the feed and the decisions' run
    point, reason = feed.remeasurements[0]
    np.testing.assert_allclose(point, seeds[3])
    np.testing.assert_allclose(xy[4], xy[3], atol=1e-9)
    decisions = [r for r in catalog.processed.values() if r.start.get("raw_uid") == uid
                 and r.start["processor"]["name"] == "agent"]  # fmt: skip
    stored = [str(r) for r in decisions[-1]["remeasurements"]["reason"].read()]
    assert stored == [r for _, r in feed.remeasurements] and "i0 read 0" in stored[0]
    if beam_back:
        # the retake had beam: one retake, every point of the budget measured once
        assert list(dumped) == [3] and i0[4] > 0 and "beam back" in reason
        assert len(feed.remeasurements) == 1 and len(i0) == budget + 1
        assert feed.already_done(seeds).all()
    else:
        # the beam stays down: every point from the 4th on is exposed exactly twice
        # (taken again once, never more), left unmeasured for the agent, and charged to
        # the budget, which ends the scan
        assert "still no beam" in reason and np.all(i0[3:] <= 0)
        assert len(i0) == 3 + 2 * (budget - 3)
        pairs = xy[3:].reshape(-1, 2, 2)
        np.testing.assert_allclose(pairs[:, 0], pairs[:, 1], atol=1e-9)
        assert np.all(np.linalg.norm(np.diff(pairs[:, 0], axis=0), axis=1) > 1e-6)
        assert len(feed.remeasurements) == len(pairs)
        assert not feed.already_done(seeds[3:]).any() and feed.already_done(seeds[:3]).all()
