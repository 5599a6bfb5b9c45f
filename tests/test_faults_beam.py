"""Beam dumps: the scan is suspended while the beam is down, resumes, and loses nothing."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.plans.scans import raster_ptycho_scan
from synaps_agent.reliability import beam_suspender, prepare_run_engine
from synaps_agent.sim_devices.beam import Beam, BeamMonitor, Shutter


def test_beam_dump_and_restore_drive_the_monitor():
    beam = Beam(fluctuation=0.0)
    shutter = Shutter()
    monitor = BeamMonitor(beam=beam, shutter=shutter, flux=2e9)
    assert monitor.source.get() == 2e9
    beam.dump()
    assert not beam.is_up and monitor.source.get() == 0.0 and beam.next_exposure() == 0.0
    shutter.set("open")
    monitor.trigger()
    assert monitor.read()["i0"]["value"] == 0.0  # exposure flagged: no photons
    beam.restore()
    assert monitor.source.get() == 2e9 and beam.next_exposure() == 1.0
    monitor.trigger()
    assert monitor.read()["i0"]["value"] == 2e9
    # a scheduled dump hits the n-th exposure from now
    beam.schedule_dump(2, down_for=60.0)
    assert beam.next_exposure() == 1.0
    assert beam.next_exposure() == 0.0 and beam.dumps == 2
    beam.restore()  # cancels the pending restore timer
    # the beam died and came back before the monitor was read (a suspender held the
    # scan in between): that exposure is still flagged, the next one is not
    monitor.trigger()
    assert monitor.read()["i0"]["value"] == 0.0
    monitor.trigger()
    assert monitor.read()["i0"]["value"] == 2e9
    with pytest.raises(ValueError, match="at_exposure must be >= 1"):
        beam.schedule_dump(0, 1.0)
    with pytest.raises(ValueError, match="down_for must be >= 0"):
        beam.schedule_dump(1, -1.0)
    with pytest.raises(ValueError, match="suspend_below <= resume_above"):
        beam_suspender(monitor, suspend_below=0.6, resume_above=0.5)


def test_raster_scan_survives_a_beam_dump(RE, catalog, documents, ptycho_beamline):
    bl = ptycho_beamline
    det = bl.ptycho_det
    suspender = prepare_run_engine(RE, bl.i0)
    assert RE.suspenders == (suspender,)
    # the beam dies at the 7th exposure and comes back 0.5 s (wall clock) later
    bl.beam.schedule_dump(7, down_for=0.5)
    RE(
        raster_ptycho_scan(
            [det, bl.i0], bl.stage.x, bl.stage.y, -0.4, 0.4, -0.3, 0.3, 0.2, shutter=bl.shutter
        )
    )
    assert bl.beam.dumps == 1 and bl.beam.is_up
    (start,) = documents.of("start")
    run = catalog.raw[start["uid"]]
    assert run.stop["exit_status"] == "success"
    # the suspension is recorded with the run
    descriptors = {d["uid"]: d["name"] for d in documents.of("descriptor")}
    interruptions = [
        e["data"]["interruption"]
        for e in documents.of("event")
        if descriptors[e["descriptor"]] == "interruptions"
    ]
    assert len(interruptions) == 1 and "i0_source" in interruptions[0]  # the justification
    assert "interruptions" in run
    # every frame is in Tiled, once: no exposure repeated by a rewind
    primary = run["primary"]
    frames = np.asarray(primary[det.image_key].read())
    i0 = np.asarray(primary["i0"].read())
    assert frames.shape == (20, 32, 32) and len(i0) == 20
    xs = np.asarray(primary["stage_x"].read())
    np.testing.assert_allclose(xs[:5], [-0.4, -0.2, 0.0, 0.2, 0.4], atol=1e-12)
    # exactly the exposure taken as the beam went down is flagged by I0 = 0 (and is empty)
    (flagged,) = np.flatnonzero(i0 == 0)
    assert flagged == 6
    assert frames[flagged].sum() == 0
    assert frames[np.arange(20) != flagged].sum(axis=(1, 2)).min() > 0
