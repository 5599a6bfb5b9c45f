"""The simulated-beamline IPython profile: start it, scan, and find the runs in the catalog.

The profile runs in a subprocess (plain ``python`` exec of the startup file, and IPython
itself when it is installed) with its embedded catalog in a temporary folder; the parent
opens that catalog after the subprocess has exited (which also shows the profile stops
its Tiled server at exit: otherwise the subprocess would never end).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synaps_agent.catalog import open_catalog

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "synaps_sim"
STARTUP = PROFILE / "startup" / "00-synaps.py"

# what a user types at the prompt: a 3 x 3 raster, then wait for the live reconstruction
COMMANDS = """
(uid,) = RE(raster_ptycho_scan([ptycho_det, i0], stage.x, stage.y, -0.3, 0.3, -0.3, 0.3, 0.3, \
shutter=shutter))
assert recon.wait(60), "the reconstruction did not finish"
print("RAW_UID", uid)
print("RECON_UID", recon.analysis.uid)
print("RECON_ERRORS", len(recon.errors))
"""

# the agent at the prompt, with the live figure: a small budget
ADAPTIVE_COMMANDS = """
(uid,) = RE(adaptive_ptycho_scan([ptycho_det, i0], stage.x, stage.y, \
new_agent_feed(max_exposures=30), raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4), batch_size=6, \
max_exposures=30, shutter=shutter))
assert live_view.wait(120), "the live figure was not finished"
print("RAW_UID", uid)
print("RECON_ERRORS", len(recon.errors) + len(seg.errors))
print("LIVE_ERRORS", len(live_view.errors))
print("LIVE_FINAL", live_view.final_path)
print("LIVE_UPDATES", live_view.updates)
"""

DEVICES = ("stage", "shutter", "i0", "ptycho_det", "proj_det")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPS_")}
    env.update(
        SYNAPS_DATA_DIR=str(tmp_path / "data"),
        SYNAPS_PHANTOM_SIZE="96",
        SYNAPS_LIVE_INTERVAL="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",  # 2 shared cores: the server, the RunEngine and the recon
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    return env


def _run(args: list[str], tmp_path: Path) -> str:
    try:
        result = subprocess.run(
            args,
            env=_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the profile did not finish (or did not exit):\n{exc.stdout}\n{exc.stderr}")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def _values(stdout: str) -> dict[str, str]:
    prefixes = ("RAW_", "RECON_", "LIVE_")
    return dict(line.split(" ", 1) for line in stdout.splitlines() if line.startswith(prefixes))


def _check(stdout: str, tmp_path: Path) -> None:
    # the banner names the devices and gives an example
    assert "synaps-agent simulated beamline" in stdout
    for name in DEVICES:
        assert re.search(rf"\b{name}\b", stdout), f"banner does not mention {name}:\n{stdout}"
    assert "RE(raster_ptycho_scan([ptycho_det, i0], stage.x, stage.y" in stdout

    values = _values(stdout)
    assert {"RAW_UID", "RECON_UID"} <= set(values), f"the scan did not report its runs:\n{stdout}"
    assert values.get("RECON_ERRORS") == "0", stdout
    raw_uid, recon_uid = values["RAW_UID"], values["RECON_UID"]

    with open_catalog(tmp_path / "data") as catalog:
        run = catalog.raw[raw_uid]
        assert run.start["plan_name"] == "raster_ptycho_scan"
        assert run.stop["exit_status"] == "success"
        assert run["primary"]["ptycho_det_image"].shape[0] == 9
        processed = catalog.processed[recon_uid]
        assert processed.start["raw_uid"] == raw_uid
        assert processed.start["processor"]["name"] == "ptycho_reconstruction"
        assert processed.stop["exit_status"] == "success"


@pytest.mark.slow
def test_profile_under_plain_python(tmp_path):
    code = f"exec(open({str(STARTUP)!r}).read())\n{COMMANDS}"
    stdout = _run([sys.executable, "-c", code], tmp_path)
    _check(stdout, tmp_path)


@pytest.mark.slow
def test_profile_under_ipython(tmp_path):
    pytest.importorskip("IPython")
    # a copy, so that IPython's log/pid/security folders do not land in the repository
    profile = tmp_path / "profile_synaps_sim"
    shutil.copytree(PROFILE, profile, ignore=shutil.ignore_patterns("__pycache__"))
    args = [
        sys.executable,
        "-m",
        "IPython",
        f"--profile-dir={profile}",
        "--HistoryManager.enabled=False",
        "--colors=nocolor",
        "-c",
        COMMANDS,
    ]
    stdout = _run(args, tmp_path)
    _check(stdout, tmp_path)


@pytest.mark.slow
def test_profile_adaptive_scan_with_the_live_figure(tmp_path):
    from matplotlib.image import imread

    code = f"exec(open({str(STARTUP)!r}).read())\n{ADAPTIVE_COMMANDS}"
    stdout = _run([sys.executable, "-c", code], tmp_path)
    assert "new_agent_feed()" in stdout  # the banner shows how to run the agent
    values = _values(stdout)
    assert values.get("RECON_ERRORS") == "0" and values.get("LIVE_ERRORS") == "0", stdout
    raw_uid = values["RAW_UID"]

    # the final figure is in the data folder's figures/, and shows a reconstruction
    final = Path(values["LIVE_FINAL"])
    assert final == (tmp_path / "data" / "figures" / f"live_{raw_uid[:8]}_final.png").resolve()
    image = imread(final)[..., :3].mean(axis=-1)
    assert image[:, : image.shape[1] // 3].std() > 0.05, "the reconstruction panel is blank"
    assert int(values["LIVE_UPDATES"]) >= 1

    with open_catalog(tmp_path / "data") as catalog:
        run = catalog.raw[raw_uid]
        assert run.start["plan_name"] == "adaptive_ptycho_scan"
        assert run.stop["exit_status"] == "success"
        assert "exposure budget" in run.stop["reason"]
        assert 9 < run["primary"]["ptycho_det_image"].shape[0] <= 30  # seeds, then the agent
        processors = {
            r.start["processor"]["name"]
            for r in catalog.processed.values()
            if r.start.get("raw_uid") == raw_uid
        }
        assert {"ptycho_reconstruction", "agent"} <= processors
