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


def _ignore_sigint() -> None:
    """What the shell does to a background job: SIGINT ignored, inherited by its children."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_gives_the_stored_runs_over_http_with_its_key(tmp_path, stop):
    directory = tmp_path / "catalog"
    uid, frames = _scan_into(directory)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "synaps_agent.cli", "serve", "--catalog", str(directory)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_ignore_sigint,  # started as from a background job: Ctrl-C works anyway
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
        client.context.close()  # the test leaves no socket of its own open

        server.send_signal(stop)  # Ctrl-C or kill stops it cleanly
        rest, _ = server.communicate(timeout=60)
        assert server.returncode == 0, rest  # what the server printed, if it failed
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    # the catalog is intact after the server stopped: it opens again with the same run
    with open_catalog(directory) as catalog:
        assert uid in catalog.raw
