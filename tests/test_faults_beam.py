"""Beam dumps: the scan is suspended while the beam is down, resumes, and loses nothing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bluesky.plans import count

from synaps_agent.plans.scans import raster_ptycho_scan, tomo_scan
from synaps_agent.reliability import beam_suspender, prepare_run_engine
from synaps_agent.sim_devices.beam import Beam, BeamMonitor, Shutter
from synaps_agent.sim_devices.motors import SimClock


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


@pytest.mark.parametrize("monitor_first", [False, True], ids=["detector-first", "monitor-first"])
def test_raster_scan_survives_a_beam_dump(RE, catalog, documents, ptycho_beamline, monitor_first):
    bl = ptycho_beamline
    det = bl.ptycho_det
    suspender = prepare_run_engine(RE, bl.i0)
    assert RE.suspenders == (suspender,)
    # the beam dies at the 7th exposure and comes back 0.5 s later: the scan is suspended,
    # nothing charges the simulated clock, so the wait is wall time (then charged to it)
    bl.beam.clock = bl.clock  # see _on_the_beamline_clock
    bl.beam.schedule_dump(7, down_for=0.5)
    detectors = [bl.i0, det] if monitor_first else [det, bl.i0]  # trigger order in an event
    RE(
        raster_ptycho_scan(
            detectors, bl.stage.x, bl.stage.y, -0.4, 0.4, -0.3, 0.3, 0.2, shutter=bl.shutter
        )
    )
    assert bl.beam.dumps == 1 and bl.beam.is_up
    assert bl.clock.by_kind["beam_down"] > 0  # the outage is charged to the beamline's clock
    (start,) = documents.of("start")
    run = catalog.raw[start["uid"]]
    assert run.stop["exit_status"] == "success"
    # the suspension is recorded with the run
    descriptors = {d["uid"]: d["name"] for d in documents.of("descriptor")}
    justifications = [
        e["data"]["interruption"]
        for e in documents.of("event")
        if descriptors[e["descriptor"]] == "interruptions"
    ]
    assert len(justifications) == 1 and "i0_source" in justifications[0]
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


def interruptions(documents) -> list[str]:
    """The ``interruption`` field of the run's ``interruptions`` events, in order."""
    names = {d["uid"]: d["name"] for d in documents.of("descriptor")}
    return [e["data"]["interruption"] for e in documents.of("event")
            if names[e["descriptor"]] == "interruptions"]  # fmt: skip


def _on_the_beamline_clock(bl):
    """The beamline's beam, restored on the beamline's clock (``make_sim_beamline`` does not
    pass its clock to the ``Beam`` yet)."""
    bl.beam.clock = bl.clock
    return bl


def _wait_until_up(beam: Beam, timeout: float = 30.0) -> bool:
    back = threading.Event()
    beam.subscribe(lambda intensity: intensity > 0 and back.set())
    return beam.is_up or back.wait(timeout)


def test_beam_restore_follows_the_simulated_clock():
    clock = SimClock(time_scale=0.0)
    beam = Beam(fluctuation=0.0, clock=clock)
    # moves and exposures charged to the clock bring the beam back after down_for
    # simulated seconds (the wall-time fallback, 600 s, is far away)
    beam.dump(restore_after=600.0)
    clock.charge(400.0, "exposure")
    assert not beam.is_up
    clock.reset()  # a new experiment on the same beamline: the outage keeps its time to go
    clock.charge(199.0, "move")
    assert not beam.is_up
    clock.charge(2.0, "move")
    assert beam.is_up and "beam_down" not in clock.by_kind
    # a restore by hand (or a new dump) cancels the pending one
    beam.dump(restore_after=10.0)
    beam.restore()
    beam.dump()
    clock.charge(20.0, "move")
    assert not beam.is_up
    beam.restore()


@pytest.mark.parametrize("time_scale", [0.0, 0.01])
def test_idle_beamline_waits_out_the_outage_in_wall_time(time_scale):
    """Nothing charges the clock (a suspended scan): the beam comes back after down_for x
    time_scale wall seconds (down_for itself at time_scale 0), charged as beam_down."""
    clock = SimClock(time_scale=time_scale)
    beam = Beam(fluctuation=0.0, clock=clock)
    down_for = 0.3 if time_scale == 0 else 30.0  # 0.3 wall seconds either way
    beam.schedule_dump(1, down_for=down_for)
    assert beam.next_exposure() == 0.0
    assert _wait_until_up(beam)
    assert clock.elapsed == pytest.approx(down_for)
    assert clock.by_kind["beam_down"] == pytest.approx(down_for)


def test_scan_without_suspender_sees_the_beam_back_after_simulated_time(
    RE, catalog, ptycho_beamline
):
    """No suspender: the scan goes on through the outage, and the exposures charged to the
    beamline's clock bring the beam back, down_for simulated seconds after the dump."""
    bl = _on_the_beamline_clock(ptycho_beamline)
    det = bl.ptycho_det
    det.exposure_time.put(100.0)  # simulated seconds (time_scale 0: no wall time)
    bl.shutter.set("open")
    # dumped at the 3rd exposure (taken at t = 200 s), back at t = 450 s: during the 5th
    # exposure's time, after its frame was taken, so exposures 3-5 see no beam
    bl.beam.schedule_dump(3, down_for=250.0)
    try:
        (uid,) = RE(count([det, bl.i0], num=8))
    finally:
        bl.shutter.set("closed")
    primary = catalog.raw[uid]["primary"]
    i0 = np.asarray(primary["i0"].read())
    counts = np.asarray(primary["ptycho_det_total_counts"].read())
    np.testing.assert_array_equal(np.flatnonzero(i0 == 0), [2, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(counts == 0), [2, 3, 4])
    assert bl.beam.is_up and "beam_down" not in bl.clock.by_kind
    assert bl.clock.by_kind["exposure"] == pytest.approx(800.0)


@pytest.mark.parametrize("chamber_first", [False, True], ids=["shutter-first", "chamber-first"])
def test_suspender_on_an_i0_behind_the_shutter_ignores_the_closed_shutter(
    RE, catalog, documents, tomo_beamline, chamber_first
):
    """A facility's I0 ion chamber behind the shutter reads 0 whenever the shutter is
    closed: the plan's final close must not hold the scan (it would wait for a beam that
    cannot come back), while a beam dump with the shutter open suspends it. The chamber's
    update may arrive after the shutter's (usual) or before it."""
    from ophyd import Signal

    bl = _on_the_beamline_clock(tomo_beamline)
    chamber = Signal(name="ion_chamber", value=0.0)

    def follow(*args, **kwargs):
        lit = bl.shutter.is_open and bl.beam.is_up
        chamber.put(1e9 if lit else 0.0)

    if chamber_first:
        bl.shutter.state.subscribe(follow, run=False)
    prepare_run_engine(RE, chamber, nominal=1e9, shutter=bl.shutter)
    if not chamber_first:
        bl.shutter.state.subscribe(follow, run=False)
    bl.beam.subscribe(follow)
    bl.beam.schedule_dump(4, down_for=0.3)
    RE(tomo_scan([bl.proj_det], bl.stage.theta, num=8, shutter=bl.shutter))
    (stop,) = documents.of("stop")
    assert stop["exit_status"] == "success"
    suspensions = interruptions(documents)  # each suspension's justification
    assert all("ion_chamber" in reason for reason in suspensions)
    # the dump, and only it; when the chamber's update comes first, the close looks like a
    # dump until the shutter reads closed (a suspension released at once, if any)
    assert len(suspensions) in ((1, 2) if chamber_first else (1,))
    assert bl.beam.dumps == 1 and bl.beam.is_up and not bl.shutter.is_open
