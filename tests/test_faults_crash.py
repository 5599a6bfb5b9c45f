"""The process dies mid-scan (SIGKILL): every document it emitted reaches the catalog."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from synaps_agent.catalog import open_catalog

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.reliability import documents_lost, run_and_kill  # noqa: E402


def stored_events(catalog, uid):
    """Events of the run's primary stream the catalog holds (0 if none)."""
    if uid not in catalog.raw or "primary" not in catalog.raw[uid]:
        return 0
    primary = catalog.raw[uid]["primary"]
    return len(primary["stage_x"].read()) if "stage_x" in primary else 0


@pytest.mark.slow
def test_documents_emitted_before_sigkill_are_recovered(tmp_path):
    directory = tmp_path / "catalog"
    # a 3 x 3 raster in a child process (moves take wall time), killed after 5 events
    emitted = run_and_kill(directory, kill_after_events=5, time_scale=2.0)
    events = [doc for name, doc in emitted if name == "event"]
    (start,) = [doc for name, doc in emitted if name == "start"]
    assert len(events) == 5 and not any(name == "stop" for name, _ in emitted)
    with open_catalog(directory) as catalog:
        # the batching writer had not stored the events when the process died
        assert stored_events(catalog, start["uid"]) < len(events)
        assert documents_lost(catalog, emitted) > 0
        report = catalog.recover()
        assert [r["uid"] for r in report] == [start["uid"]]
        assert report[0]["action"] == "rewritten" and report[0]["closed"]
        assert report[0]["documents"] >= len(emitted)
        assert documents_lost(catalog, emitted) == 0
        run = catalog.raw[start["uid"]]
        assert run.start["uid"] == start["uid"]
        assert run.stop["exit_status"] == "fail" and "write-ahead log" in run.stop["reason"]
        primary = run["primary"]
        stored_x = np.asarray(primary["stage_x"].read())
        stored_i0 = np.asarray(primary["i0"].read())
        # every event the child emitted is there (one more may have been logged just
        # before the kill), with its values
        assert len(events) <= len(stored_x) <= len(events) + 1
        np.testing.assert_allclose(stored_x[: len(events)], [e["data"]["stage_x"] for e in events])
        np.testing.assert_allclose(stored_i0[: len(events)], [e["data"]["i0"] for e in events])
        assert run.stop["num_events"]["primary"] == len(stored_x)
        frames = np.asarray(primary["ptycho_det_image"].read())
        assert frames.shape == (len(stored_x), 32, 32) and frames.sum(axis=(1, 2)).min() > 0
        # recovering again finds nothing left to do
        assert catalog.recover() == []


# an adaptive scan in a child process: a random agent saving its state after every decision,
# documents through the buffered writer (write-ahead log), each printed once logged
ADAPTIVE_CHILD = """
import json, sys
from bluesky import RunEngine
from benchmarks.reliability import _params, make_beamline
from synaps_agent.catalog import open_catalog
from tests.test_faults_crash import adaptive_plan
directory, state_path = sys.argv[1:3]
catalog = open_catalog(directory)
bl = make_beamline(catalog, _params(True), time_scale=2.0)  # moves take wall time
RE = RunEngine({}, call_returns_result=False)
RE.subscribe(catalog.writer(buffered=True))
RE.subscribe(lambda name, doc: print(json.dumps({"name": name, "doc": doc}, default=float),
                                     flush=True))
RE(adaptive_plan(bl, state_path, max_exposures=21))
"""

SEEDS = [[x, y] for y in (-0.4, 0.0, 0.4) for x in (-0.4, 0.0, 0.4)]  # 9 seeds


def adaptive_plan(bl, state_path, *, max_exposures, resume=False):
    """The adaptive scan of both sessions (random agent, no map needed)."""
    from synaps_agent.agent import AgentConfig, Axis, ScanSpace, StoppingRule, make_strategy
    from synaps_agent.callbacks.agent_feed import AgentFeed
    from synaps_agent.plans.adaptive import adaptive_ptycho_scan

    if resume:
        feed = AgentFeed.resume(state_path, lambda: None, footprint_radius=0.1)
    else:
        space = ScanSpace([Axis(name, -0.5, 0.5, "um") for name in ("x", "y")])
        agent = make_strategy(
            "random", space, AgentConfig(probe_fwhm=0.2, max_step=0.1, exposure_time=0.005),
            stopping=StoppingRule(max_exposures=1000), seed=7,
        )  # fmt: skip
        feed = AgentFeed(agent, lambda: None, footprint_radius=0.1, state_path=state_path)
    plan = adaptive_ptycho_scan(
        [bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y, feed, np.asarray(SEEDS),
        batch_size=4, max_exposures=max_exposures, shutter=bl.shutter,
    )  # fmt: skip
    return plan if not resume else (feed, plan)


@pytest.mark.slow
def test_adaptive_scan_killed_then_recovered_and_resumed(tmp_path):
    """SIGKILL in the middle of an adaptive scan: the recovered run holds every exposure
    the process emitted; a new session resumes the agent from its saved state, told the
    recovered run's positions, and measures nothing twice."""
    from bluesky import RunEngine

    from benchmarks.reliability import _params, make_beamline

    directory, state = tmp_path / "catalog", tmp_path / "agent"
    # killed after 15 exposures: the seeds, the first decision's 4 points and 2 of the
    # second's (the state was saved when the second decision was made, at 13)
    emitted = run_and_kill(directory, kill_after_events=15, argv=[
        "-c", ADAPTIVE_CHILD, str(directory), str(state)])  # fmt: skip
    events = [doc for name, doc in emitted if name == "event"]
    (start,) = [doc for name, doc in emitted if name == "start"]
    assert len(events) == 15 and state.with_suffix(".json").exists()
    with open_catalog(directory) as catalog:
        (report,) = catalog.recover()
        assert report["uid"] == start["uid"] and report["closed"]
        assert documents_lost(catalog, emitted) == 0
        run = catalog.raw[start["uid"]]
        assert run.stop["exit_status"] == "fail"
        measured1 = np.column_stack([np.asarray(run["primary"][f"stage_{a}"].read())
                                     for a in "xy"])  # fmt: skip
        assert 15 <= len(measured1) <= 16  # one more may have been logged before the kill

        bl = make_beamline(catalog, _params(True))
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(catalog.writer())
        feed, plan = adaptive_plan(bl, state, max_exposures=6, resume=True)
        # the saved state knows the seeds and the first decision's points, not the
        # exposures after its last save: those the recovered run tells it
        assert feed.already_done(np.asarray(SEEDS)).all()
        np.testing.assert_array_equal(feed.already_done(measured1), np.arange(len(measured1)) < 13)
        feed.agent.record_measured(measured1)
        assert feed.already_done(measured1).all()
        (uid2,) = RE(plan)
        measured2 = np.column_stack([np.asarray(catalog.raw[uid2]["primary"][f"stage_{a}"].read())
                                     for a in "xy"])  # fmt: skip
        assert len(measured2) == 6  # no seed taken again: all six are the agent's
        gaps = np.linalg.norm(measured2[:, None] - measured1[None], axis=-1)
        assert gaps.min() > 1e-6  # nothing of the killed session measured twice
