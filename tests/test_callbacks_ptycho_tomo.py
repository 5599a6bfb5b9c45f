"""Live ptycho-tomography: per-angle ptychography feeds a tomogram that matches the phantom."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.callbacks.ptycho_tomo import PtychoTomoReconstruction
from synaps_agent.plans.patterns import raster_positions
from synaps_agent.plans.scans import ptycho_tomo_scan
from synaps_agent.recon.ptycho import PtychoConfig
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom

SIZE = 24  # voxels of 20 nm: the ptychography object pixel


@pytest.fixture
def beamline(catalog):
    phantom = make_phantom("T-electrode", seed=1, size=SIZE, pixel_size=20e-9)
    return make_sim_beamline(
        phantom, catalog.frames_directory, seed=5, frame_size=32, probe_fwhm_px=10
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _in_phantom_frame(recon: PtychoTomoReconstruction, volume: np.ndarray) -> np.ndarray:
    """The tomogram cut to the phantom's (z, y, x) voxels (the axis at the centre)."""
    (r0, c0), (h, w) = recon.projection_window
    assert w == SIZE - 2 * c0  # symmetric about the volume's centre column (SIZE - 1) / 2
    k = -c0
    return volume[-r0 : -r0 + SIZE, k : k + SIZE, k : k + SIZE]


@pytest.mark.slow
def test_ptycho_tomography_reconstructs_the_volume(RE, catalog, documents, beamline):
    bl = beamline
    pixel_um = bl.ptycho_det.object_pixel_size.get() * 1e6
    # x reaches past the sample (air on both sides: the phase ramp is fitted there)
    half_x, half_y = 16 * pixel_um, 9 * pixel_um
    positions = raster_positions(
        -half_x, half_x + 1e-9, -half_y, half_y + 1e-9, 3 * pixel_um, jitter=0.3, seed=0
    )
    angles = np.linspace(0, 180, 12, endpoint=False)
    sink = DocumentSink(catalog.writer("processed"), documents)
    recon = PtychoTomoReconstruction(
        sink,
        config=PtychoConfig(batch_size=16, seed=0),
        angle_epochs=60,
        snapshot_interval=0,
        # the simulated volume rotates about its centre voxel, (n - 1) / 2
        rotation_axis_col=(SIZE - 1) / 2,
    )
    RE.subscribe(recon)
    RE(
        ptycho_tomo_scan(
            [bl.ptycho_det],
            bl.stage.x,
            bl.stage.y,
            bl.stage.theta,
            positions,
            angles,
            shutter=bl.shutter,
        )
    )
    assert recon.wait(180), "reconstruction did not finish"
    assert recon.errors == [], recon.errors
    assert len(recon.done_angles) == len(angles)
    assert all(e.num_frames == len(positions) for e in recon.engines.values())

    delta, _ = bl.phantom.refractive_index(bl.ptycho_det.energy.get())
    tomogram = _in_phantom_frame(recon, recon.final_volume)
    # inside the cylinder seen at every angle
    yy, xx = np.indices((SIZE, SIZE)) - (SIZE - 1) / 2
    inside = np.broadcast_to(np.hypot(yy, xx) < SIZE / 2 - 1, delta.shape)
    correlation = _pearson(tomogram[inside], delta[inside])
    other = make_phantom("T-electrode", seed=7, size=SIZE, pixel_size=20e-9)
    unrelated = _pearson(tomogram[inside], other.refractive_index(8000.0)[0][inside])
    print(f"correlation {correlation:.3f}, unrelated {unrelated:.3f}")
    assert correlation > 0.6, f"correlation with the phantom {correlation:.3f}"
    assert unrelated < 0.3, f"correlation with another phantom {unrelated:.3f}"
    # delta per voxel, on the phantom's scale (FBP from 12 angles: within a factor 2)
    scale = float(np.sum(tomogram[inside] * delta[inside]) / np.sum(delta[inside] ** 2))
    print(f"scale {scale:.3f}")
    assert 0.5 < scale < 2.0, f"scale {scale:.3f}"

    # the analysis run: one reconstruction per angle, a tomogram after each, the volume
    raw_uid = documents.of("start")[0]["uid"]
    runs = [r for r in catalog.processed.values() if r.start.get("raw_uid") == raw_uid]
    assert len(runs) == 1
    run = runs[0]
    assert run.start["processor"]["name"] == "ptycho_tomo_reconstruction"
    assert run.stop["exit_status"] == "success"
    assert len(run["reconstruction"]["theta"].read()) == len(angles)
    assert list(run["tomogram"]["num_angles"].read()) == list(range(1, len(angles) + 1))
    stored = np.asarray(run["tomogram_volume"]["volume"].read())[-1]
    np.testing.assert_allclose(stored, recon.final_volume, atol=1e-6)


def test_non_ptycho_tomography_runs_are_ignored(RE, ptycho_beamline):
    from synaps_agent.plans.scans import raster_ptycho_scan

    bl = ptycho_beamline
    recon = PtychoTomoReconstruction(snapshot_interval=0, angle_epochs=1)
    RE.subscribe(recon)
    RE(raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, -0.1, 0.1, -0.1, 0.1, 0.1))
    assert recon.geometry is None and recon.engines == {} and recon.errors == []


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="air_columns"):
        PtychoTomoReconstruction(air_columns=0)
    with pytest.raises(ValueError, match="angle_epochs"):
        PtychoTomoReconstruction(angle_epochs=-1)
