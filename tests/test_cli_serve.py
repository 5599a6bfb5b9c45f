"""``synaps serve``: the embedded catalog over HTTP, on loopback, writable only with its key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from bluesky import RunEngine
from tiled.client import from_uri

from synaps_agent.catalog import open_catalog
from synaps_agent.plans.scans import raster_ptycho_scan
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom

REPO = Path(__file__).resolve().parents[1]


def _scan_into(directory: Path) -> tuple[str, np.ndarray]:
    """A small raster scan stored in the embedded catalog at ``directory``; its uid and
    frames as the detector wrote them."""
    with open_catalog(directory) as catalog:
        bl = make_sim_beamline(make_phantom("P-sparse", seed=3, size=48), catalog.frames_directory,
                               seed=3, frame_size=32)  # fmt: skip
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(catalog.writer())
        (uid,) = RE(raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y,
                                       -0.1, 0.1, -0.1, 0.1, 0.1))  # fmt: skip
        frames = np.asarray(catalog.raw[uid]["primary"][bl.ptycho_det.image_key].read())
    return uid, frames


@pytest.mark.timeout(180)
def test_serve_gives_the_stored_runs_over_http_with_its_key(tmp_path):
    directory = tmp_path / "catalog"
    uid, frames = _scan_into(directory)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "synaps_agent.cli", "serve", "--catalog", str(directory)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = []
        for line in server.stdout:  # "serving <dir> at <uri>"
            output.append(line)
            if line.startswith("serving "):
                break
        assert output and output[-1].startswith("serving "), "".join(output)
        uri = output[-1].rsplit(" at ", 1)[1].strip()
        parts = urlsplit(uri)
        assert parts.hostname == "127.0.0.1", uri  # loopback only
        (key,) = parse_qs(parts.query)["api_key"]

        # with the key: the run stored before, frames and all
        client = from_uri(uri)
        run = client["raw"][uid]
        assert run.start["uid"] == uid and run.stop["exit_status"] == "success"
        np.testing.assert_array_equal(run["primary"]["ptycho_det_image"].read(), frames)

        # without it, or with another: no writing
        anonymous = uri.split("?")[0]
        for headers in ({}, {"Authorization": "Apikey not-" + key}):
            response = httpx.post(
                anonymous.replace("/api/v1", "/api/v1/metadata/"),
                json={"data": {"type": "container"}}, headers=headers, timeout=10,
            )  # fmt: skip
            assert response.status_code in (401, 403), (headers, response.status_code)
        assert "intruder" not in client
        client.context.close()  # no connection of ours left open while it shuts down

        server.send_signal(signal.SIGINT)  # Ctrl-C stops it cleanly
        rest, _ = server.communicate(timeout=60)
        assert server.returncode == 0, rest
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    # the catalog is intact after the server stopped: it opens again with the same run
    with open_catalog(directory) as catalog:
        assert uid in catalog.raw


@pytest.mark.timeout(60)
def test_a_thread_left_running_after_the_server_stopped_does_not_keep_serve_alive():
    """Python waits for every non-daemon thread before it exits: one a library leaves
    blocked would keep ``synaps serve`` running after Ctrl-C. It is named and left."""
    script = (
        "import threading, time\n"
        "from synaps_agent.cli import _abandon_stray_threads\n"
        "threading.Thread(target=time.sleep, args=(3600,), name='stuck-worker').start()\n"
        "_abandon_stray_threads(timeout=0.5)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stuck-worker" in done.stderr and "left behind" in done.stderr
