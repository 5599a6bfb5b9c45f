"""The facility template against a real Channel Access server on loopback.

A caproto IOC of ours (``synaps_agent.sim_devices.epics_ioc``: three motor records, a
shutter, a monitor and an area detector) runs in a subprocess on 127.0.0.1 with a free
port; the template's configuration file is loaded unchanged, its roles connected (ophyd
``EpicsMotor`` and ``EpicsAreaDetector`` over caproto's client) and raster ptychography
scans driven through the EPICS motors and detector in a real RunEngine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from synaps_agent.facility import (
    FacilityConfigError,
    connect_roles,
    load_facility_config,
)
from synaps_agent.plans.scans import raster_ptycho_scan

TEMPLATE = Path(__file__).resolve().parents[1] / "profiles" / "facility" / "synaps_facility.toml"


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(process: subprocess.Popen, port: int, timeout: float = 60.0) -> None:
    """Return once the IOC accepts TCP connections (so the first CA search finds it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the IOC exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"the IOC did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def ioc():
    """The loopback IOC (prefix ``SYNAPS:``), and this process's CA client pointed at it."""
    port = _free_port(socket.SOCK_STREAM)
    client_env = {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CA_REPEATER_PORT": str(_free_port(socket.SOCK_DGRAM)),
    }
    server_env = dict(os.environ, **client_env, EPICS_CAS_INTF_ADDR_LIST="127.0.0.1")
    process = subprocess.Popen(
        [sys.executable, "-m", "synaps_agent.sim_devices.epics_ioc", "--prefix", "SYNAPS:"],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(process, port)
    saved = {key: os.environ.get(key) for key in client_env}
    os.environ.update(client_env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def devices(ioc, catalog):
    config = load_facility_config(TEMPLATE)
    connected = connect_roles(config, frames_directory=catalog.frames_directory)
    yield connected
    for role in ("stage_x", "stage_y", "stage_theta", "shutter", "monitor", "ptycho_detector"):
        connected[role].destroy()


def test_template_connects_every_role_over_channel_access(devices):
    from ophyd import EpicsMotor

    stage = devices["stage"]
    for motor, pv, units in ((stage.x, "SYNAPS:x", "um"), (stage.theta, "SYNAPS:theta", "deg")):
        assert isinstance(motor, EpicsMotor)
        assert motor.prefix == pv
        assert motor.connected
        assert motor.egu == units
    assert stage.x.limits == (-20.0, 20.0)  # served by the IOC, not written in the file
    assert stage.theta.limits == (-200.0, 200.0)
    assert devices["monitor"].get() == pytest.approx(1e9)
    assert devices["shutter"].name == "shutter"
    assert devices["ptycho_detector"].name == "ptycho_det"


def test_raster_scan_drives_the_epics_motors(devices, RE, catalog):
    stage, shutter = devices["stage"], devices["shutter"]
    detectors = [devices["ptycho_detector"], devices["monitor"]]
    (uid,) = RE(
        raster_ptycho_scan(
            detectors, stage.x, stage.y, -0.4, 0.4, -0.2, 0.2, 0.4, snake=False, shutter=shutter
        )
    )
    run = catalog.raw[uid]
    assert run.stop["exit_status"] == "success"
    assert run.start["units"] == {"stage_x": "um", "stage_y": "um"}
    primary = run["primary"]
    # the readbacks (.RBV) the IOC reported at each exposure are the raster's positions
    x = np.asarray(primary["stage_x"].read())
    y = np.asarray(primary["stage_y"].read())
    expected_x = np.tile([-0.4, 0.0, 0.4], 2)
    expected_y = np.repeat([-0.2, 0.2], 3)
    np.testing.assert_allclose(x, expected_x, atol=1e-6)
    np.testing.assert_allclose(y, expected_y, atol=1e-6)
    # the shutter PV was opened for the exposures (frames hold photons) and closed after
    frames = np.asarray(primary["ptycho_det_image"].read())
    assert frames.shape[0] == 6 and frames.sum(axis=(1, 2)).min() > 0
    assert not np.array_equal(frames[0], frames[2])  # a different place on the phantom
    assert shutter.get() == "closed"
    assert np.asarray(primary["i0"].read()) == pytest.approx(1e9)
    assert stage.x.user_readback.get() == pytest.approx(0.4)


def test_raster_scan_reads_frames_from_the_epics_area_detector(devices, RE, catalog):
    """The template's ptychography role is the IOC's area detector: each exposure is an
    Acquire over Channel Access, the frame comes back through image1:ArrayData, goes to
    HDF5 and is read back from Tiled, and holds what the simulated camera behind the IOC
    sees at the motors' readbacks."""
    from bluesky.plans import count

    from synaps_agent.facility import EpicsAreaDetector
    from synaps_agent.sim_devices.epics_ioc import simulated_ptycho_beamline

    stage, shutter, det = devices["stage"], devices["shutter"], devices["ptycho_detector"]
    assert isinstance(det, EpicsAreaDetector) and det.prefix == "SYNAPS:det:"
    first = int(det.array_counter.get())
    (uid,) = RE(raster_ptycho_scan([det, devices["monitor"]], stage.x, stage.y,
                                   -0.3, 0.3, -0.3, 0.3, 0.3, shutter=shutter))  # fmt: skip
    run = catalog.raw[uid]
    assert run.stop["exit_status"] == "success"
    # the IOC's geometry went into the start document, for the reconstructions
    assert run.start["geometry"]["ptycho_det"]["object_pixel_size_m"] == pytest.approx(2e-8)
    assert run.start["geometry"]["ptycho_det"]["frame_shape"] == [32, 32]
    primary = run["primary"]
    frames = np.asarray(primary["ptycho_det_image"].read(), dtype=float)
    counters = np.asarray(primary["ptycho_det_array_counter"].read())
    x, y = np.asarray(primary["stage_x"].read()), np.asarray(primary["stage_y"].read())
    assert frames.shape == (9, 32, 32)
    np.testing.assert_array_equal(counters, first + 1 + np.arange(9))  # one Acquire each
    # against the noise-free frames of the same simulated camera at the same positions
    truth = simulated_ptycho_beamline(catalog.frames_directory)
    truth.shutter.set("open")
    for frame, xi, yi in zip(frames, x, y, strict=True):
        truth.stage.x.set(float(xi)).wait(5)
        truth.stage.y.set(float(yi)).wait(5)
        expected = truth.ptycho_det.expected_frame().astype(float)
        assert np.corrcoef(frame.ravel(), expected.ravel())[0, 1] > 0.99
        assert abs(frame.sum() - expected.sum()) < 5 * np.sqrt(expected.sum())  # Poisson
    assert not np.allclose(frames[0], frames[4], rtol=0.2)  # a different place
    # with the shutter closed the camera sees nothing
    (dark_uid,) = RE(count([det]))
    dark = np.asarray(catalog.raw[dark_uid]["primary"]["ptycho_det_image"].read())
    assert shutter.get() == "closed" and dark.shape == (1, 32, 32) and dark.sum() == 0


def test_move_beyond_the_ioc_limits_fails_before_motion(devices, RE):
    from ophyd.utils.errors import LimitError

    stage = devices["stage"]
    stage.x.set(1.0).wait(10)
    with pytest.raises(ValueError, match=r"stage_x: .*outside the soft limits \[-20.0, 20.0\]"):
        RE(raster_ptycho_scan([devices["ptycho_detector"]], stage.x, stage.y, 10, 30, 0, 0, 5))
    with pytest.raises(LimitError):
        stage.x.set(25.0)
    assert stage.x.user_readback.get() == pytest.approx(1.0)
    assert stage.x.user_setpoint.get() == pytest.approx(1.0)
    assert stage.x.motor_done_move.get() == 1


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "facility.toml"
    path.write_text(text)
    return path


def test_config_errors_name_the_key(tmp_path):
    template = TEMPLATE.read_text()
    cases = [
        (template.replace('units = "deg"', 'units = "mm"'), r"roles\.stage_theta\.units"),
        (
            template.replace('"SYNAPS:y"\nunits = "um"', '"SYNAPS:y"\nunits = "pc"'),
            r"roles\.stage_y\.units: 'pc' is not a unit for stage_y",
        ),
        (template.replace("[roles.monitor]", "[roles.monitor]\nscale = 2"),
         r"roles\.monitor: unknown key\(s\) scale"),
        (template.replace("[roles.shutter]", "[roles.sample_changer]\npv = 'X'\n\n[roles.shutter]"),
         r"roles: unknown key\(s\) sample_changer"),
        (template.replace("[roles.stage_theta]\nmotor", "[roles.stage_thetaX]\nmotor"),
         r"roles: unknown key\(s\) stage_thetaX"),
        (template.replace('api_key_env = "SYNAPS_TILED_API_KEY"', 'api_key = "secret"'),
         r"tiled\.api_key: never write the API key"),
        (template.replace("[roles.projection_detector]\nsimulated = true\n", ""),
         r"roles: missing role\(s\) projection_detector"),
        (template.replace("connection_timeout = 10.0", "connection_timeout = -1"),
         r"epics\.connection_timeout"),
        (template.replace("[roles.projection_detector]\nsimulated = true",
                          "[roles.projection_detector]\nprefix = 'X:'\ndevice_class = 'Eiger'"),
         r"roles\.projection_detector\.device_class: expected 'module:Class'"),
    ]
    for text, message in cases:
        assert text != template, message
        with pytest.raises(FacilityConfigError, match=message):
            load_facility_config(_write(tmp_path, text))
    with pytest.raises(FacilityConfigError, match="does not exist"):
        load_facility_config(tmp_path / "nowhere.toml")


def test_api_key_comes_from_the_environment(tmp_path, monkeypatch):
    text = TEMPLATE.read_text().replace(
        '# uri = "http://tiled.example.org:8000"', 'uri = "http://127.0.0.1:1"'
    )
    config = load_facility_config(_write(tmp_path, text))
    monkeypatch.delenv("SYNAPS_TILED_API_KEY", raising=False)
    with pytest.raises(FacilityConfigError, match="SYNAPS_TILED_API_KEY"):
        config.tiled_api_key()
    monkeypatch.setenv("SYNAPS_TILED_API_KEY", "k3y")
    assert config.tiled_api_key() == "k3y"


def test_units_disagreeing_with_the_ioc_and_missing_pvs_are_refused(ioc, tmp_path):
    template = TEMPLATE.read_text().replace("connection_timeout = 10.0", "connection_timeout = 2")
    wrong_units = template.replace('units = "um"', 'units = "mm"', 1)  # stage_x
    for role in ("ptycho_detector", "projection_detector"):
        wrong_units = wrong_units.replace(
            f"[roles.{role}]\nsimulated = true",
            f"[roles.{role}]\nprefix = 'X:'\ndevice_class = 'ophyd.areadetector:SimDetector'",
        )
    config = load_facility_config(_write(tmp_path, wrong_units))
    with pytest.raises(FacilityConfigError, match=r"roles\.stage_x\.units: .*'mm'.*EGU is 'um'"):
        connect_roles(config)
    missing = template.replace('pv = "SYNAPS:i0"', 'pv = "SYNAPS:nothing"')
    config = load_facility_config(_write(tmp_path, missing))
    with pytest.raises(FacilityConfigError, match=r"roles\.monitor: SYNAPS:nothing did not"):
        connect_roles(config, frames_directory=tmp_path)


STARTUP = TEMPLATE.parent / "startup" / "90-synaps-agent.py"

# a facility profile that already has its RunEngine, then our startup file, then a scan
PROFILE_SESSION = f"""
from bluesky import RunEngine
RE = RunEngine({{}}, call_returns_result=False)
facility_RE = RE
exec(open({str(STARTUP)!r}).read())
assert RE is facility_RE, "the startup file replaced the facility's RunEngine"
(uid,) = RE(raster_ptycho_scan([ptycho_det, i0], stage.x, stage.y, -0.3, 0.3, -0.3, 0.3, 0.3, \
shutter=shutter))
assert live_view.wait(120), "the live figure was not finished"
print("RAW_UID", uid)
print("ERRORS", len(recon.errors) + len(seg.errors) + len(live_view.errors))
print("FINAL", live_view.final_path)
print("X_AFTER", stage.x.user_readback.get())
(adaptive_uid,) = RE(adaptive_ptycho_scan([ptycho_det, i0], stage.x, stage.y, \
new_agent_feed((-0.5, 0.5), (-0.5, 0.5), max_exposures=20), \
raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4), batch_size=5, max_exposures=20, shutter=shutter))
print("ADAPTIVE_UID", adaptive_uid)
"""


@pytest.mark.slow
def test_facility_startup_file_in_a_profile_session(ioc, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPS_")}
    env.update(
        SYNAPS_DATA_DIR=str(tmp_path / "data"),
        SYNAPS_FIGURES_DIR=str(tmp_path / "figures"),
        SYNAPS_LIVE_INTERVAL="1",
        SYNAPS_FACILITY_CONFIG=str(TEMPLATE),  # exec'd, the file has no __file__ to go by
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", PROFILE_SESSION],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=200,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the profile did not finish (or did not exit):\n{exc.stdout}\n{exc.stderr}")
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "synaps-agent at SYNAPS-EPICS: stage.x=SYNAPS:x (um)" in result.stdout
    keys = ("RAW_UID", "ERRORS", "FINAL", "X_AFTER", "ADAPTIVE_UID")
    values = dict(line.split(" ", 1) for line in result.stdout.splitlines()
                  if line.startswith(keys))  # fmt: skip
    assert values["ERRORS"] == "0", result.stdout
    assert float(values["X_AFTER"]) == pytest.approx(0.3)  # the last raster point (snake)
    final = Path(values["FINAL"])
    assert final.parent == tmp_path / "figures" and final.stat().st_size > 10_000

    from synaps_agent.catalog import open_catalog

    with open_catalog(tmp_path / "data") as catalog:
        run = catalog.raw[values["RAW_UID"]]
        assert run.start["beamline_id"] == "SYNAPS-EPICS"
        assert run.stop["exit_status"] == "success"
        x = np.asarray(run["primary"]["stage_x"].read())
        np.testing.assert_allclose(sorted(set(np.round(x, 6))), [-0.3, 0.0, 0.3], atol=1e-6)
        # the agent drove the EPICS motors, inside the region it was given
        adaptive = catalog.raw[values["ADAPTIVE_UID"]]
        assert adaptive.stop["exit_status"] == "success"
        assert "exposure budget" in adaptive.stop["reason"]
        points = np.column_stack([np.asarray(adaptive["primary"][f"stage_{axis}"].read())
                                  for axis in "xy"])  # fmt: skip
        assert 9 < len(points) <= 20
        assert np.all(np.abs(points) <= 0.5 + 1e-6)


@pytest.mark.slow
def test_facility_profile_under_ipython_finds_its_file(ioc, tmp_path):
    """The documented layout: the startup file in a profile's startup/, the TOML in the
    profile folder, no SYNAPS_FACILITY_CONFIG."""
    pytest.importorskip("IPython")
    profile = tmp_path / "profile_beamline"
    (profile / "startup").mkdir(parents=True)
    (profile / "startup" / STARTUP.name).write_text(STARTUP.read_text())
    (profile / TEMPLATE.name).write_text(TEMPLATE.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPS_")}
    env.update(
        SYNAPS_DATA_DIR=str(tmp_path / "data"),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    commands = "print('SOURCE', facility.source); print('LIMITS', stage.y.limits)"
    result = subprocess.run(
        [sys.executable, "-m", "IPython", f"--profile-dir={profile}",
         "--HistoryManager.enabled=False", "--colors=nocolor", "-c", commands],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert f"SOURCE {profile / TEMPLATE.name}" in result.stdout, result.stdout
    assert "LIMITS (-20.0, 20.0)" in result.stdout, result.stdout
