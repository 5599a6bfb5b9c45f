"""The process dies mid-scan (SIGKILL): every document it emitted reaches the catalog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from synaps_agent.catalog import open_catalog

CHILD = textwrap.dedent(
    """
    import json, sys
    from bluesky import RunEngine
    from synaps_agent.catalog import open_catalog
    from synaps_agent.plans.scans import raster_ptycho_scan
    from synaps_agent.sim_devices.beamline import make_sim_beamline
    from synaps_agent.sim_devices.phantoms import make_phantom

    catalog = open_catalog(sys.argv[1])
    bl = make_sim_beamline(
        make_phantom("P-dense", seed=1, size=96), catalog.frames_directory, seed=3,
        photons_per_frame=1e5, frame_size=32, probe_fwhm_px=10, time_scale=float(sys.argv[2]),
    )
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(catalog.writer(buffered=True))  # first: a document is logged, then shown

    def show(name, doc):
        print(json.dumps({"name": name, "doc": doc}, default=float), flush=True)

    RE.subscribe(show)
    RE(raster_ptycho_scan([bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y,
                          -0.4, 0.4, -0.3, 0.3, 0.2, shutter=bl.shutter))
    print("SCAN DONE", flush=True)
    """
)


def run_and_kill(directory, script, kill_after_events, time_scale=1.0):
    """Run the scan in a child process; SIGKILL it once it has emitted that many events.

    Returns the documents the child reported before it died.
    """
    child = subprocess.Popen(
        [sys.executable, str(script), str(directory), str(time_scale)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    documents = []
    try:
        for line in child.stdout:
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            documents.append((entry["name"], entry["doc"]))
            if sum(name == "event" for name, _ in documents) >= kill_after_events:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the child was not killed mid-scan"
    return documents


def stored_events(catalog, uid):
    """Events of the run's primary stream the catalog holds (0 if none)."""
    if uid not in catalog.raw or "primary" not in catalog.raw[uid]:
        return 0
    primary = catalog.raw[uid]["primary"]
    return len(primary["stage_x"].read()) if "stage_x" in primary else 0


@pytest.mark.slow
def test_documents_emitted_before_sigkill_are_recovered(tmp_path):
    script = tmp_path / "scan.py"
    script.write_text(CHILD)
    directory = tmp_path / "catalog"
    emitted = run_and_kill(directory, script, kill_after_events=8)
    events = [doc for name, doc in emitted if name == "event"]
    (start,) = [doc for name, doc in emitted if name == "start"]
    assert len(events) == 8 and not any(name == "stop" for name, _ in emitted)
    with open_catalog(directory) as catalog:
        # the batching writer had not stored the events when the process died
        assert stored_events(catalog, start["uid"]) < len(events)
        report = catalog.recover()
        assert [r["uid"] for r in report] == [start["uid"]]
        assert report[0]["action"] == "rewritten" and report[0]["closed"]
        assert report[0]["documents"] >= len(emitted)
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
