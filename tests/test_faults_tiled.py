"""Tiled down or slow: the buffered writer does not block the scan and drops nothing."""

from __future__ import annotations

import numpy as np
import pytest
import tiled.client.utils
from bluesky import RunEngine

from synaps_agent.catalog import open_catalog
from synaps_agent.plans.scans import raster_ptycho_scan
from synaps_agent.reliability import BufferedWriter
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom


@pytest.fixture
def own_catalog(tmp_path):
    """An embedded catalog of this test alone (its server is stopped and restarted)."""
    cat = open_catalog(tmp_path / "catalog")
    yield cat
    cat.close(timeout=5.0)


@pytest.fixture
def fast_failing_client(monkeypatch):
    """Let the Tiled client give up on a dead server after a second rather than 45 s,
    so the buffered writer's own retry (rewrite of the run) is what recovers."""
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 1.0)


def small_beamline(catalog):
    phantom = make_phantom("P-dense", seed=1, size=96)
    return make_sim_beamline(
        phantom, catalog.frames_directory, seed=3, photons_per_frame=1e5, frame_size=32,
        probe_fwhm_px=10,
    )


def test_scan_goes_on_while_tiled_is_down_and_every_document_lands(
    own_catalog, documents, fast_failing_client
):
    cat = own_catalog
    bl = small_beamline(cat)
    writer = cat.writer(buffered=True)
    assert isinstance(writer, BufferedWriter) and writer.wal is not None
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(writer)
    RE.subscribe(documents)

    def kill_server_mid_scan(name, doc):
        if name == "event" and doc["seq_num"] == 5:
            cat.stop_server()

    RE.subscribe(kill_server_mid_scan)
    RE(
        raster_ptycho_scan(
            [bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y, -0.4, 0.4, -0.3, 0.3, 0.2,
            shutter=bl.shutter,
        )
    )
    # the scan finished while the server was down: documents wait in the buffer and log
    assert cat.server is None
    assert writer.pending > 0
    (start,) = documents.of("start")
    uid = start["uid"]
    assert writer.wal.path(uid).exists()
    cat.restart_server()
    assert writer.flush(timeout=120), f"still {writer.pending} documents unwritten"
    assert writer.failed_attempts >= 1 and writer.rewrites >= 1
    assert not writer.wal.path(uid).exists()  # retired once stored
    run = cat.raw[uid]
    assert run.stop["exit_status"] == "success"
    assert run.stop["uid"] == documents.of("stop")[0]["uid"]
    primary = run["primary"]
    events = documents.of("event")
    assert len(events) == 20
    np.testing.assert_array_equal(
        np.asarray(primary["i0"].read()), [e["data"]["i0"] for e in events]
    )
    assert np.asarray(primary[bl.ptycho_det.image_key].read()).shape == (20, 32, 32)


def test_buffered_writer_keeps_order_and_rejects_bad_settings():
    seen = []
    failures = iter([True, True, False])

    def factory():
        def write(name, doc):
            if name == "event" and doc["seq_num"] == 2 and next(failures, False):
                raise ConnectionError("server away")
            seen.append((name, doc.get("seq_num")))

        return write

    discarded = []
    writer = BufferedWriter(factory, discard_run=discarded.append, initial_backoff=0.01)
    writer("start", {"uid": "r1", "time": 0})
    writer("descriptor", {"uid": "d1", "run_start": "r1", "name": "primary"})
    for n in (1, 2, 3):
        writer("event", {"descriptor": "d1", "seq_num": n, "uid": f"e{n}"})
    writer("stop", {"run_start": "r1", "uid": "s1"})
    assert writer.close(timeout=30)
    # two failures: the run was discarded and written again from its start, in order
    assert discarded == ["r1", "r1"]
    assert writer.failed_attempts == 2 and writer.rewrites == 1
    assert seen[-6:] == [
        ("start", None), ("descriptor", None), ("event", 1), ("event", 2), ("event", 3),
        ("stop", None),
    ]
    with pytest.raises(RuntimeError, match="closed"):
        writer("start", {"uid": "r2"})
    with pytest.raises(ValueError, match="initial_backoff"):
        BufferedWriter(factory, initial_backoff=0.0)


def test_a_hung_tiled_server_does_not_hold_the_scan(catalog, documents, ptycho_beamline):
    """Tiled slow to the point of hanging: every write waits until the server answers.
    The scan runs to its end meanwhile; then everything lands, in order."""
    import threading

    from bluesky_tiled_plugins import TiledWriter

    bl = ptycho_beamline
    answering = threading.Event()

    def slow_server_writer():
        writer = TiledWriter(catalog.raw)

        def write(name, doc):
            answering.wait(120)  # the server does not answer until released
            writer(name, doc)

        return write

    buffered = BufferedWriter(slow_server_writer)
    RE = RunEngine({}, call_returns_result=False)  # writing only through the hung server
    RE.subscribe(documents)
    RE.subscribe(buffered)
    try:
        RE(raster_ptycho_scan([bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y,
                              -0.4, 0.4, -0.3, 0.3, 0.2, shutter=bl.shutter))  # fmt: skip
        # the scan is over, and the hung server has not taken a single document
        assert RE.state == "idle" and len(documents.of("event")) == 20
        assert buffered.written == 0 and buffered.pending == len(documents.documents)
        answering.set()
        assert buffered.flush(timeout=120)
    finally:
        answering.set()
        buffered.close(timeout=60)
    assert buffered.failed_attempts == 0 and buffered.written == len(documents.documents)
    (start,) = documents.of("start")
    primary = catalog.raw[start["uid"]]["primary"]
    np.testing.assert_array_equal(np.asarray(primary["seq_num"].read()), np.arange(1, 21))
    assert np.asarray(primary[bl.ptycho_det.image_key].read()).shape == (20, 32, 32)
