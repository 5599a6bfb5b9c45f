"""The facility startup file prepares the RunEngine for faults, with the facility's I0 role
as the beam suspender's signal (over Channel Access, against the loopback IOC)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_facility import STARTUP, TEMPLATE, ioc  # noqa: F401 (the IOC fixture)

SESSION = f"""
import time
import bluesky.plan_stubs as bps
from bluesky import RunEngine
RE = RunEngine({{}}, call_returns_result=False)
exec(open({str(STARTUP)!r}).read())
print("SUSPENDERS", [type(s).__name__ for s in RE.suspenders], RE.suspenders[0]._sig.name)
print("THRESHOLDS", RE.suspenders[0]._suspend_thresh, RE.suspenders[0]._resume_thresh)
print("REWINDABLE", RE.rewindable, "RECORD", RE.record_interruptions)
print("ABORT_REASON", any(getattr(p, "keeps_abort_reason", False) for p in RE.preprocessors))
states = []
for target in ("open", "closed"):
    RE(bps.mv(shutter, target))
    deadline = time.monotonic() + 20
    while beam_suspender.shutter_is_open != (target == "open") and time.monotonic() < deadline:
        time.sleep(0.05)
    states.append(beam_suspender.shutter_is_open)
print("SHUTTER_SEEN", states)
"""


def _run(env_extra: dict, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPS_")}
    env.update(
        SYNAPS_DATA_DIR=str(tmp_path / "data"),
        SYNAPS_FIGURES_DIR=str(tmp_path / "figures"),
        SYNAPS_FACILITY_CONFIG=str(TEMPLATE),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        **env_extra,
    )
    return subprocess.run([sys.executable, "-c", SESSION], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=200)  # fmt: skip


@pytest.mark.slow
def test_facility_startup_installs_the_beam_suspender_on_the_monitor_role(ioc, tmp_path):  # noqa: F811
    # nominal from the environment (the IOC's i0 reads 1e9 photons/s)
    result = _run({"SYNAPS_I0_NOMINAL": "2e9"}, tmp_path)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines()
                 if line.split(" ", 1)[0].isupper() and " " in line)  # fmt: skip
    assert lines["SUSPENDERS"] == "['ShutterGatedFloor'] i0"
    assert [float(v) for v in lines["THRESHOLDS"].split()] == [2e8, 1e9]  # 0.1 and 0.5 x 2e9
    assert lines["REWINDABLE"] == "False RECORD True"
    assert lines["ABORT_REASON"] == "True"
    # the suspender follows the EPICS shutter (it trips only while it is open)
    assert lines["SHUTTER_SEEN"] == "[True, False]"


@pytest.mark.slow
def test_facility_startup_refuses_a_malformed_nominal_flux(ioc, tmp_path):  # noqa: F811
    result = _run({"SYNAPS_I0_NOMINAL": "lots"}, tmp_path)
    assert result.returncode != 0
    assert "SYNAPS_I0_NOMINAL must be the nominal flux in photons/s, got 'lots'" in result.stderr
