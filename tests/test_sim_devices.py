"""The simulated devices: motion costs, limits, and detector physics against ground truth."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ophyd.utils.errors import LimitError

from synaps_agent.agent import AgentConfig, timing_from_detector
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.detectors import PtychoDetector
from synaps_agent.sim_devices.motors import SampleStage, SimClock, SimMotor, trapezoid_move_time
from synaps_agent.sim_devices.optics import farfield_intensity, project_volume
from synaps_agent.sim_devices.phantoms import make_phantom


def test_trapezoid_move_time_profiles():
    # long move: cruise at top speed plus one acceleration time
    assert trapezoid_move_time(10.0, 2.0, 0.5) == pytest.approx(5.5)
    # short move never reaches top speed: 2 sqrt(d ta / v)
    assert trapezoid_move_time(0.1, 2.0, 0.5) == pytest.approx(2 * np.sqrt(0.1 * 0.5 / 2.0))
    # continuous at the switch-over distance v * ta
    assert trapezoid_move_time(1.0, 2.0, 0.5) == pytest.approx(1.0)
    assert trapezoid_move_time(0.0, 2.0, 0.5) == 0.0


def test_motor_moves_charge_the_clock_and_respect_limits():
    clock = SimClock()
    motor = SimMotor(
        name="m",
        limits=(-5, 5),
        velocity=2.0,
        acceleration_time=0.5,
        settle_time=0.1,
        egu="um",
        clock=clock,
    )
    status = motor.set(4.0)
    status.wait(1)
    assert motor.position == 4.0 and motor.read()["m"]["value"] == 4.0
    assert clock.by_kind["move"] == pytest.approx(trapezoid_move_time(4.0, 2.0, 0.5) + 0.1)
    with pytest.raises(
        LimitError, match=r"m: target 6.0 um is outside the soft limits \[-5.0, 5.0\]"
    ):
        motor.set(6.0)
    with pytest.raises(ValueError, match="not a number"):
        motor.set("far")
    assert motor.position == 4.0  # nothing moved


def test_moves_charged_together_overlap_on_the_clock():
    clock = SimClock()
    x, y = (
        SimMotor(name=n, limits=(-5, 5), velocity=v, acceleration_time=0.0, clock=clock)
        for n, v in (("x", 1.0), ("y", 2.0))
    )
    # mv(x, 2, y, 3): both set before either is waited for; 2 s and 1.5 s overlap
    x.set(2.0).wait(1), y.set(3.0).wait(1)
    assert clock.elapsed == pytest.approx(2.0)
    clock.charge(0.1, "exposure")  # a point in between: the next moves start after it
    y.set(-3.0).wait(1), x.set(1.0).wait(1)  # 3 s and 1 s
    assert clock.elapsed == pytest.approx(5.1)
    x.set(0.0).wait(1), x.set(1.0).wait(1)  # one motor's moves follow one another
    assert clock.elapsed == pytest.approx(7.1)
    assert clock.by_kind == pytest.approx({"move": 7.0, "exposure": 0.1})


def test_time_scale_makes_moves_take_wall_time_and_reports_progress():
    clock = SimClock(time_scale=1.0)
    motor = SimMotor(name="m", limits=(-5, 5), velocity=10.0, acceleration_time=0.0, clock=clock)
    updates = []
    t0 = time.perf_counter()
    status = motor.set(2.0)
    status.watch(lambda **kw: updates.append(kw["current"]))
    assert not status.done
    status.wait(5)
    assert time.perf_counter() - t0 >= 0.18  # 2 um at 10 um/s
    assert motor.position == pytest.approx(2.0)
    assert updates and updates[-1] == pytest.approx(2.0)


def test_stage_configuration_is_readable():
    stage = SampleStage(x_limits=(-3, 3), xy_velocity=7.0)
    config = stage.x.read_configuration()
    assert config["stage_x_velocity"]["value"] == 7.0
    assert stage.x.limits == (-3.0, 3.0)
    assert {"stage_x", "stage_y", "stage_theta"} <= set(stage.read())


@pytest.fixture
def small_2d(tmp_path):
    phantom = make_phantom("P-sparse", seed=5, size=64)
    return make_sim_beamline(
        phantom, tmp_path, frame_size=32, probe_fwhm_px=8, photons_per_frame=1e5
    )


def test_ptycho_detector_conserves_photons_and_sees_the_object(small_2d):
    bl = small_2d
    det = bl.ptycho_det
    bl.shutter.set("open")
    probe = det.probe()
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1e5, rel=1e-4)
    # far outside the sample: the pattern is the probe's own far field
    bl.stage.x.set(bl.flat_field_x).wait(1)
    np.testing.assert_allclose(
        det.expected_frame(), farfield_intensity(probe), rtol=1e-4, atol=1e-3
    )
    # on the sample: the counts equal the photons the object transmits (Parseval)
    bl.stage.x.set(0.0).wait(1)
    transmission = bl.sample.transmission(0.0, det.energy.get())
    row, col = det.position_to_pixels(0.0, 0.0)
    patch = transmission[int(row) - 16 : int(row) + 16, int(col) - 16 : int(col) + 16]
    expected_total = np.sum(np.abs(probe * patch) ** 2)
    assert det.expected_frame().sum() == pytest.approx(expected_total, rel=1e-3)
    assert expected_total < 0.999e5  # the section absorbs a little


def test_ptycho_detector_configuration_describes_the_geometry(small_2d):
    det = small_2d.ptycho_det
    config = det.read_configuration()
    wavelength = 1.2398419843320026e-6 / config["ptycho_det_energy"]["value"]
    pixel = (
        wavelength
        * config["ptycho_det_detector_distance"]["value"]
        / (32 * config["ptycho_det_detector_pixel_size"]["value"])
    )
    assert pixel == pytest.approx(small_2d.phantom.pixel_size, rel=1e-6)
    assert config["ptycho_det_object_pixel_size"]["value"] == pytest.approx(pixel)
    description = det.describe()[det.image_key]
    assert description["external"] == "STREAM:" and description["shape"] == [32, 32]


def test_projection_detector_matches_line_integrals(tmp_path):
    # neutron imaging looks at millimetre samples: 20 um voxels
    phantom = make_phantom("T-electrode", seed=1, size=24, pixel_size=20e-6)
    bl = make_sim_beamline(phantom, tmp_path, radiation="neutron", photons_per_pixel=1e4)
    det = bl.proj_det
    bl.shutter.set("open")
    bl.stage.theta.set(30.0).wait(1)
    expected = det.expected_frame()
    line_integrals = -np.log(expected / (1e4 * det.flat_profile))
    truth = project_volume(phantom.neutron_attenuation(), 30.0)[0] * phantom.voxel_size
    np.testing.assert_allclose(line_integrals, truth, rtol=1e-4, atol=1e-6)
    assert truth.max() > 0.05  # a measurable contrast, not a trivially flat image
    # sample out of the beam: a flat field
    bl.stage.x.set(bl.flat_field_x).wait(1)
    np.testing.assert_allclose(det.expected_frame(), 1e4 * det.flat_profile, rtol=1e-6)
    # shutter closed: only the dark current
    bl.shutter.set("closed")
    dark = det.acquire()
    assert abs(dark.mean() - det.dark_level.get()) < 3.0


def test_projection_detector_xray_contrast_and_noise(tmp_path):
    phantom = make_phantom("T-electrode", seed=1, size=24)
    bl = make_sim_beamline(phantom, tmp_path, photons_per_pixel=1e4)
    bl.shutter.set("open")
    frames = np.stack([bl.proj_det.acquire() for _ in range(20)]).astype(float)
    expected = bl.proj_det.expected_frame() + bl.proj_det.dark_level.get()
    # Poisson statistics: mean and variance both follow the expectation
    z = (frames.mean(0) - expected) / np.sqrt(expected / len(frames))
    assert abs(z.mean()) < 0.15 and 0.8 < z.std() < 1.2
    ratio = frames.var(0).mean() / expected.mean()
    assert 0.85 < ratio < 1.15


def test_bad_detector_arguments_are_refused(tmp_path):
    phantom = make_phantom("P-sparse", seed=0, size=48)
    with pytest.raises(ValueError, match="photons_per_frame must be positive"):
        make_sim_beamline(phantom, tmp_path, photons_per_frame=0)
    with pytest.raises(ValueError, match="radiation must be 'xray' or 'neutron'"):
        make_sim_beamline(phantom, tmp_path, radiation="gamma")
    bl = make_sim_beamline(phantom, tmp_path)
    with pytest.raises(RuntimeError, match="trigger\\(\\) before stage\\(\\)"):
        bl.ptycho_det.trigger()
    with pytest.raises(ValueError, match="'open', 'closed'"):
        bl.shutter.set("ajar")
    with pytest.raises(ValueError, match="ptycho_det: readout_time must be a finite number"):
        PtychoDetector(
            stage=bl.stage, sample=bl.sample, frames_directory=tmp_path, readout_time=-0.1
        )


def test_each_exposure_charges_its_exposure_and_readout_time(small_2d, tmp_path):
    det = small_2d.ptycho_det
    det.exposure_time.put(0.02)
    det.readout_time.put(0.3)
    assert det.read_configuration()["ptycho_det_readout_time"]["value"] == 0.3
    clock = small_2d.clock
    clock.reset()
    det.stage()
    try:
        for _ in range(3):
            det.trigger().wait(1)
    finally:
        det.unstage()
    assert clock.by_kind == pytest.approx({"exposure": 0.06, "readout": 0.9})
    # the agent's cost model reads the same numbers
    timing = timing_from_detector(det)
    assert timing == {"exposure_time": 0.02, "point_overhead": 0.3}
    assert AgentConfig(**timing).time_per_point == pytest.approx(0.32)


def test_reseed_restarts_the_detector_noise(small_2d):
    det = small_2d.ptycho_det
    expected = det.expected_frame()
    first = [det.noisy_frame(expected) for _ in range(2)]
    assert not np.array_equal(first[0], first[1])  # a noise stream, not a fixed draw
    det.reseed()
    np.testing.assert_array_equal(det.noisy_frame(expected), first[0])  # as built
    det.reseed(det.seed + 1)
    assert not np.array_equal(det.noisy_frame(expected), first[0])
