"""A motor move that stalls (times out) in the middle of an adaptive scan: recorded, the
agent does not propose the point again, the scan goes on (real RunEngine, real motors)."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions
from synaps_agent.sim_devices.motors import SimMotor


def test_stalled_move_fails_with_a_timeout_and_leaves_the_motor_where_it_was():
    motor = SimMotor(name="m", limits=(-10.0, 10.0))
    motor.stall_between(2.0, 3.0, timeout=0.1)
    with pytest.raises(Exception, match="timeout"):
        motor.set(2.5).wait(30)
    assert motor.position == 0.0
    motor.set(4.0).wait(30)  # outside the region: moves
    assert motor.position == 4.0
    motor.clear_faults()
    motor.set(2.5).wait(30)
    assert motor.position == 2.5
    with pytest.raises(ValueError, match="low <= high"):
        motor.stall_between(3.0, 2.0)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        motor.stall_between(2.0, 3.0, timeout=0.0)


def test_adaptive_scan_goes_on_past_a_stalled_motor(
    RE, catalog, documents, ptycho_beamline, map_free_feed
):
    bl = ptycho_beamline
    feed = map_free_feed(16)
    seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)  # x = 0.4 for 3 of the 9 seeds
    bl.stage.x.stall_between(0.3, 0.5, timeout=0.1)  # the stage cannot reach x > 0.3
    try:
        (uid,) = RE(adaptive_ptycho_scan(
            [bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y, feed, seeds, batch_size=4,
            max_exposures=16, shutter=bl.shutter,
        ))  # fmt: skip
    finally:
        bl.stage.x.clear_faults()
    run = catalog.raw[uid]
    assert run.stop["exit_status"] == "success"
    x = np.asarray(run["primary"]["stage_x"].read())
    assert len(x) >= 6 and np.all(x <= 0.3 + 1e-9)  # every exposure where the stage got to
    # every failed move is recorded with its reason, in the agent and in the decisions' run
    decisions = [r for r in catalog.processed.values() if r.start.get("raw_uid") == uid
                 and r.start["processor"]["name"] == "agent"]  # fmt: skip
    failures = decisions[-1]["failures"]
    points = np.asarray(failures["point"].read(), dtype=float)
    reasons = [str(r) for r in failures["reason"].read()]
    assert feed.agent.report()["n_failures"] == len(points) >= 3
    assert all("FailedStatus" in r or "Timeout" in r for r in reasons), reasons
    for seed in seeds[seeds[:, 0] > 0.3]:  # the three unreachable seeds
        assert np.min(np.linalg.norm(points - seed, axis=1)) < 1e-9
    # a failed point is never proposed again: no two failures at the same place
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert np.all(distances[~np.eye(len(points), dtype=bool)] > 1e-6)
