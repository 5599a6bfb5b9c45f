"""Pause, resume, abort and Ctrl-C in the middle of a scan (raster and adaptive)."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted

from synaps_agent.agent import AgentConfig, Axis, ImagingAgent, ScanSpace, StoppingRule
from synaps_agent.callbacks.agent_feed import AgentFeed
from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions
from synaps_agent.plans.scans import raster_ptycho_scan
from synaps_agent.reliability import prepare_run_engine


def raster(bl):
    return raster_ptycho_scan(
        [bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y, -0.4, 0.4, -0.3, 0.3, 0.2,
        shutter=bl.shutter,
    )


def at_event(RE, seq_num, action):
    """Subscribe ``action()`` to run (on its own thread) when the primary event
    ``seq_num`` is emitted, as an operator or another thread would act."""

    def callback(name, doc):
        if name == "event" and doc["seq_num"] == seq_num:
            threading.Thread(target=action, daemon=True).start()

    return RE.subscribe(callback)


def interruptions(documents):
    names = {d["uid"]: d["name"] for d in documents.of("descriptor")}
    return [
        e["data"]["interruption"]
        for e in documents.of("event")
        if names[e["descriptor"]] == "interruptions"
    ]


def primary_events(documents):
    names = {d["uid"]: d["name"] for d in documents.of("descriptor")}
    return [e for e in documents.of("event") if names[e["descriptor"]] == "primary"]


def test_raster_ctrl_c_pauses_between_exposures_and_resumes(
    RE, catalog, documents, ptycho_beamline
):
    bl = ptycho_beamline
    prepare_run_engine(RE)
    # one Ctrl-C (SIGINT to this process) after the 5th exposure: a deferred pause
    token = at_event(RE, 5, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(RunEngineInterrupted):
        RE(raster(bl))
    RE.unsubscribe(token)
    assert RE.state == "paused"
    taken = len(primary_events(documents))
    assert 5 <= taken < 20
    RE.resume()
    events = primary_events(documents)
    assert [e["seq_num"] for e in events] == list(range(1, 21))  # nothing repeated or lost
    run = catalog.raw[documents.of("start")[0]["uid"]]
    assert run.stop["exit_status"] == "success"
    assert interruptions(documents) == ["pause", "resume"]
    expected = raster_positions(-0.4, 0.4, -0.3, 0.3, 0.2)
    np.testing.assert_allclose(np.asarray(run["primary"]["stage_x"].read()), expected[:, 0])
    assert np.asarray(run["primary"][bl.ptycho_det.image_key].read()).shape == (20, 32, 32)


def test_raster_abort_leaves_a_consistent_run(RE, catalog, documents, ptycho_beamline):
    bl = ptycho_beamline
    prepare_run_engine(RE)
    at_event(RE, 8, RE.request_pause)  # a hard pause from another thread
    with pytest.raises(RunEngineInterrupted):
        RE(raster(bl))
    RE.abort(reason="operator aborted the scan")
    (start,) = documents.of("start")
    (stop,) = documents.of("stop")
    assert stop["exit_status"] == "abort"
    events = primary_events(documents)
    assert 8 <= len(events) < 20 and stop["num_events"]["primary"] == len(events)
    run = catalog.raw[start["uid"]]
    assert run.stop["exit_status"] == "abort"
    assert stop["reason"] == run.stop["reason"] == "operator aborted the scan"
    primary = run["primary"]
    np.testing.assert_allclose(
        np.asarray(primary["stage_x"].read()), [e["data"]["stage_x"] for e in events]
    )
    assert np.asarray(primary[bl.ptycho_det.image_key].read()).shape == (len(events), 32, 32)
    assert not bl.shutter.is_open  # the plan's cleanup ran


def make_agent(bl, seed=3):
    space = ScanSpace(
        [
            Axis("x", -0.6, 0.6, "um", velocity=bl.stage.x.velocity.get(), settle_time=0.02),
            Axis("y", -0.6, 0.6, "um", velocity=bl.stage.y.velocity.get(), settle_time=0.02),
        ]
    )
    return ImagingAgent(
        space,
        AgentConfig(probe_fwhm=0.2, max_step=0.08, exposure_time=0.005),
        stopping=StoppingRule(max_exposures=1000),
        seed=seed,
    )


def ground_truth_uncertainty(bl):
    """Uncertainty where phases meet in the phantom (a fresh map at each call, as a live
    segmentation gives), over the stage extent of the sample."""
    labels = bl.phantom.labels
    edges = (np.diff(labels, axis=0, prepend=labels[:1]) != 0) | (
        np.diff(labels, axis=1, prepend=labels[:, :1]) != 0
    )
    rows, cols = labels.shape
    half_w = cols * bl.sample.pixel_size * 1e6 / 2
    half_h = rows * bl.sample.pixel_size * 1e6 / 2
    extent = (-half_w, half_w, -half_h, half_h)
    return lambda: (edges.astype(float), extent)


@pytest.mark.slow
def test_adaptive_scan_pause_resume_abort_and_continue(
    RE, catalog, documents, ptycho_beamline, tmp_path
):
    bl = ptycho_beamline
    prepare_run_engine(RE)
    agent = make_agent(bl)
    sink = DocumentSink(catalog.writer("processed"))
    feed = AgentFeed(agent, ground_truth_uncertainty(bl), footprint_radius=0.1, sink=sink)
    seeds = raster_positions(-0.5, 0.5, -0.5, 0.5, 0.5)  # 9 seeds
    plan_args = ([bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y)

    # pause after the seeds and the first decision's points, then resume
    token = at_event(RE, 12, RE.request_pause)
    with pytest.raises(RunEngineInterrupted):
        RE(adaptive_ptycho_scan(*plan_args, feed, seeds, batch_size=4, max_exposures=21,
                                shutter=bl.shutter))
    RE.unsubscribe(token)
    paused_at = len(primary_events(documents))
    state = agent.save(tmp_path / "agent")  # the state a new session would start from
    told_at_pause = agent.surrogate.n
    RE.resume()
    (start,) = documents.of("start")
    run = catalog.raw[start["uid"]]
    assert run.stop["exit_status"] == "success"
    assert "exposure budget" in run.stop["reason"]
    events = primary_events(documents)
    assert [e["seq_num"] for e in events] == list(range(1, 22))
    assert 12 <= paused_at < 21
    points = np.column_stack(
        [np.asarray(run["primary"]["stage_x"].read()), np.asarray(run["primary"]["stage_y"].read())]
    )
    assert len(np.unique(points.round(9), axis=0)) == 21  # the agent did not repeat itself
    assert interruptions(documents) == ["pause", "resume"]

    # a new session loads the saved state and goes on; this time the scan is aborted
    assert state[0].exists()
    restored = ImagingAgent.load(tmp_path / "agent")
    assert restored.surrogate.n == told_at_pause
    documents.documents.clear()
    feed2 = AgentFeed(restored, ground_truth_uncertainty(bl), footprint_radius=0.1, sink=sink)
    at_event(RE, 3, RE.request_pause)
    with pytest.raises(RunEngineInterrupted):
        RE(adaptive_ptycho_scan(*plan_args, feed2, seeds, batch_size=4, max_exposures=30,
                                shutter=bl.shutter))
    RE.abort(reason="beamtime over")
    (start2,) = documents.of("start")
    aborted = catalog.raw[start2["uid"]]
    assert aborted.stop["exit_status"] == "abort"
    assert aborted.stop["reason"] == "beamtime over"
    assert len(aborted["primary"]["stage_x"].read()) == len(primary_events(documents)) >= 3
    # the agent's decisions run was closed too, saying the scan was interrupted
    (decisions,) = [
        r for r in catalog.processed.values()
        if r.start.get("raw_uid") == start2["uid"] and r.start["processor"]["name"] == "agent"
    ]
    assert decisions.stop is not None and "interrupted" in decisions.stop["reason"]
    assert not bl.shutter.is_open
