"""Tests of the beamline wave-optics physics (synaps_agent.sim_devices.optics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synaps_agent.sim_devices.optics import (
    extract_patch,
    farfield_intensity,
    farfield_pixel_size,
    fourier_shift,
    fresnel_propagate,
    gaussian_probe,
    poisson_counts,
    project_volume,
    ptycho_pattern,
    wavelength,
)

ENERGY = 8000.0  # eV
PIXEL = 100e-9  # m


def _fwhm_px(profile: np.ndarray) -> float:
    """FWHM in pixels of a single-peaked 1D profile, by linear interpolation."""
    half = profile.max() / 2.0
    above = np.nonzero(profile >= half)[0]
    lo, hi = above[0], above[-1]
    left = lo - 1 + (half - profile[lo - 1]) / (profile[lo] - profile[lo - 1])
    right = hi + (profile[hi] - half) / (profile[hi] - profile[hi + 1])
    return float(right - left)


def _centroid(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.indices(img.shape)
    total = img.sum()
    return float((yy * img).sum() / total), float((xx * img).sum() / total)


def _random_wave(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


# --------------------------------------------------------------------------- geometry
def test_wavelength_and_farfield_pixel():
    assert wavelength(12398.419843320026) == pytest.approx(1e-10, rel=1e-12)
    lam = wavelength(ENERGY)
    assert lam == pytest.approx(1.549802e-10, rel=1e-6)
    px = farfield_pixel_size(ENERGY, 5.0, 75e-6, 64)
    assert px == pytest.approx(lam * 5.0 / (64 * 75e-6), rel=1e-12)
    # doubling the distance doubles the object pixel; doubling n halves it
    assert farfield_pixel_size(ENERGY, 10.0, 75e-6, 64) == pytest.approx(2 * px)
    assert farfield_pixel_size(ENERGY, 5.0, 75e-6, 128) == pytest.approx(px / 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"energy_ev": 0.0}, "energy_ev"),
        ({"energy_ev": -5.0}, "energy_ev"),
        ({"distance": 0.0}, "distance"),
        ({"detector_pixel_size": -1e-6}, "detector_pixel_size"),
        ({"n_pixels": 0}, "n_pixels"),
    ],
)
def test_farfield_pixel_size_rejects_non_positive(kwargs, match):
    args = {"energy_ev": ENERGY, "distance": 5.0, "detector_pixel_size": 75e-6, "n_pixels": 64}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        farfield_pixel_size(**args)


def test_wavelength_rejects_nan():
    with pytest.raises(ValueError, match="energy_ev must be positive"):
        wavelength(float("nan"))


# --------------------------------------------------------------------------- probe
def test_gaussian_probe_fwhm_photons_and_dtype():
    fwhm = 1.2e-6  # 12 pixels
    probe = gaussian_probe((64, 80), PIXEL, fwhm, math.inf, ENERGY, 1e7)
    assert probe.dtype == np.complex64
    assert probe.shape == (64, 80)
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    assert intensity.sum() == pytest.approx(1e7, rel=1e-6)
    # centred at (n//2, n//2)
    assert np.unravel_index(np.argmax(intensity), intensity.shape) == (32, 40)
    assert _fwhm_px(intensity[32, :]) * PIXEL == pytest.approx(fwhm, rel=0.05)
    assert _fwhm_px(intensity[:, 40]) * PIXEL == pytest.approx(fwhm, rel=0.05)
    # flat phase
    np.testing.assert_allclose(np.angle(probe[intensity > 1e-3 * intensity.max()]), 0, atol=1e-6)


def test_gaussian_probe_curvature_phase():
    radius = 2e-3
    probe = gaussian_probe(64, PIXEL, 2e-6, radius, ENERGY, 1e6)
    lam = wavelength(ENERGY)
    c = 32
    for k in (5, 10, 17):
        r = k * PIXEL
        expected = math.pi * r**2 / (lam * radius)
        measured = np.angle(probe[c, c + k] / probe[c, c])
        assert np.exp(1j * measured) == pytest.approx(np.exp(1j * expected), abs=1e-4)
        # radially symmetric: same phase along y and on the diagonal at the same r
        assert np.angle(probe[c - k, c] / probe[c, c]) == pytest.approx(measured, abs=1e-4)
    # intensity does not depend on the curvature
    flat = gaussian_probe(64, PIXEL, 2e-6, math.inf, ENERGY, 1e6)
    np.testing.assert_allclose(np.abs(probe), np.abs(flat), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fwhm": 0.0}, "fwhm"),
        ({"pixel_size": -1e-9}, "pixel_size"),
        ({"photons": 0}, "photons"),
        ({"curvature_radius": 0.0}, "curvature_radius must be non-zero"),
        ({"shape": (0, 64)}, "shape"),
        ({"energy_ev": -1.0}, "energy_ev"),
    ],
)
def test_gaussian_probe_rejects_bad_inputs(kwargs, match):
    args = {
        "shape": 64,
        "pixel_size": PIXEL,
        "fwhm": 1e-6,
        "curvature_radius": 1e-3,
        "energy_ev": ENERGY,
        "photons": 1e6,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gaussian_probe(**args)


# --------------------------------------------------------------------------- shifts/patches
def test_fourier_shift_integer_equals_roll():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(32, 48))
    np.testing.assert_allclose(
        fourier_shift(real, (3, -5)), np.roll(real, (3, -5), (0, 1)), atol=1e-12
    )
    wave = _random_wave((32, 48))
    shifted = fourier_shift(wave, (-7, 2))
    assert shifted.dtype == np.complex64
    np.testing.assert_allclose(shifted, np.roll(wave, (-7, 2), (0, 1)), atol=1e-5)


def test_fourier_shift_subpixel_moves_centroid():
    yy, xx = np.indices((64, 64))
    gauss = np.exp(-((yy - 30.0) ** 2 + (xx - 33.0) ** 2) / (2 * 3.0**2))
    shift = (0.37, -1.81)
    moved = fourier_shift(gauss, shift)
    cy0, cx0 = _centroid(gauss)
    cy1, cx1 = _centroid(moved)
    assert cy1 - cy0 == pytest.approx(shift[0], abs=1e-3)
    assert cx1 - cx0 == pytest.approx(shift[1], abs=1e-3)


def test_extract_patch_inside_and_residual():
    obj = (np.arange(20 * 30).reshape(20, 30) + 0j).astype(np.complex64)
    patch, residual = extract_patch(obj, (10.3, 14.6), (6, 8))
    # nearest integer centre (10, 15); patch centre index (3, 4)
    assert residual == pytest.approx((0.3, -0.4))
    np.testing.assert_array_equal(patch, obj[7:13, 11:19])
    assert patch[3, 4] == obj[10, 15]
    patch[0, 0] = -1  # a copy, not a view
    assert obj[7, 11] != -1


def test_extract_patch_pads_with_fill_outside():
    obj = np.full((10, 10), 2.0 + 1.0j, dtype=np.complex64)
    patch, residual = extract_patch(obj, (0.0, 9.49), (4, 4))
    assert residual == pytest.approx((0.0, 0.49))
    # rows -2..1, cols 7..10: rows <0 and col 10 are outside
    assert np.all(patch[:2, :] == 1 + 0j)
    assert np.all(patch[:, 3] == 1 + 0j)
    assert np.all(patch[2:, :3] == 2 + 1j)
    far, _ = extract_patch(obj, (100.0, -50.0), (4, 4), fill=0.5j)
    assert np.all(far == 0.5j)


def test_extract_patch_rejects_bad_inputs():
    with pytest.raises(ValueError, match="obj must be a 2D array"):
        extract_patch(np.ones(5), (0, 0), (2, 2))
    with pytest.raises(ValueError, match="center_yx_px"):
        extract_patch(np.ones((5, 5)), (float("nan"), 0), (2, 2))


# --------------------------------------------------------------------------- far field
def test_farfield_intensity_parseval_and_centre():
    wave = _random_wave((64, 64), seed=3) * 10
    intensity = farfield_intensity(wave)
    assert intensity.dtype == np.float32
    total_in = np.sum(np.abs(wave.astype(np.complex128)) ** 2)
    assert intensity.sum(dtype=np.float64) == pytest.approx(total_in, rel=1e-4)
    # a plane wave goes entirely into the zero-frequency pixel at index n//2
    plane = np.full((64, 64), 2.0 + 0j)
    flat = farfield_intensity(plane)
    assert flat[32, 32] == pytest.approx(4.0 * 64 * 64, rel=1e-6)
    assert flat.sum() == pytest.approx(flat[32, 32], rel=1e-6)


def test_ptycho_pattern_flat_object_equals_probe_farfield():
    probe = gaussian_probe(64, PIXEL, 1.5e-6, 5e-4, ENERGY, 1e8)
    obj = np.ones((200, 200), dtype=np.complex64)
    expected = farfield_intensity(probe)
    np.testing.assert_allclose(ptycho_pattern(obj, probe, (100, 90)), expected, rtol=1e-4, atol=1)
    # a sub-pixel shift of the probe only changes the far-field phase: same intensity
    np.testing.assert_allclose(
        ptycho_pattern(obj, probe, (100.3, 90.45)), expected, rtol=1e-3, atol=10
    )


def test_ptycho_pattern_conserves_photons_and_sees_object():
    rng = np.random.default_rng(4)
    probe = gaussian_probe(64, PIXEL, 1.5e-6, 5e-4, ENERGY, 1e8)
    phase = np.exp(1j * rng.uniform(-1, 1, (128, 128))).astype(np.complex64)
    pattern = ptycho_pattern(phase, probe, (60.2, 70.7))
    # pure-phase object: all photons end up on the detector
    assert pattern.sum(dtype=np.float64) == pytest.approx(1e8, rel=1e-4)
    assert not np.allclose(pattern, farfield_intensity(probe), rtol=1e-2)
    # absorbing object of transmission 0.5 (amplitude) passes a quarter of the photons
    half = np.full((128, 128), 0.5 + 0j)
    assert ptycho_pattern(half, probe, (64, 64)).sum(dtype=np.float64) == pytest.approx(
        0.25e8, rel=1e-4
    )


def test_ptycho_pattern_subpixel_shift_matches_explicit_model():
    rng = np.random.default_rng(5)
    probe = gaussian_probe(32, PIXEL, 1e-6, 5e-4, ENERGY, 1e6)
    obj = np.exp(1j * rng.uniform(-1, 1, (80, 80))).astype(np.complex64)
    centre = (40.25, 37.6)
    patch, residual = extract_patch(obj, centre, probe.shape)
    expected = farfield_intensity(fourier_shift(probe, residual) * patch)
    np.testing.assert_allclose(ptycho_pattern(obj, probe, centre), expected, rtol=1e-4, atol=1e-2)


# --------------------------------------------------------------------------- detection
def test_poisson_counts_mean_and_saturation():
    rng = np.random.default_rng(6)
    intensity = np.full((200, 200), 1000.0, dtype=np.float32)
    intensity[:100] = 50.0
    counts = poisson_counts(intensity, rng)
    assert counts.dtype == np.uint32
    assert counts.shape == intensity.shape
    assert counts[100:].mean() == pytest.approx(1000.0, rel=5e-3)
    assert counts[:100].mean() == pytest.approx(50.0, rel=1e-2)
    assert counts[100:].var() == pytest.approx(1000.0, rel=0.05)  # Poisson: var == mean
    clipped = poisson_counts(intensity, np.random.default_rng(6), saturation=800)
    assert clipped.max() == 800
    assert np.all(clipped[100:] == 800)  # 800 is > 6 sigma below the mean of 1000
    np.testing.assert_array_equal(clipped[:100], counts[:100])  # same seed, below saturation


def test_poisson_counts_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="non-negative"):
        poisson_counts(np.array([[1.0, -2.0]]), rng)
    with pytest.raises(ValueError, match="finite"):
        poisson_counts(np.array([[1.0, np.nan]]), rng)
    with pytest.raises(ValueError, match="saturation"):
        poisson_counts(np.ones((2, 2)), rng, saturation=0)


# --------------------------------------------------------------------------- near field
def test_fresnel_propagate_conserves_energy_and_inverts():
    wave = _random_wave((64, 64), seed=7)
    out = fresnel_propagate(wave, 0.02, PIXEL, ENERGY)
    assert out.dtype == np.complex64
    e_in = np.sum(np.abs(wave.astype(np.complex128)) ** 2)
    assert np.sum(np.abs(out.astype(np.complex128)) ** 2) == pytest.approx(e_in, rel=1e-4)
    assert not np.allclose(out, wave, atol=0.1)
    back = fresnel_propagate(out, -0.02, PIXEL, ENERGY)
    np.testing.assert_allclose(back, wave, atol=1e-4)
    np.testing.assert_array_equal(fresnel_propagate(wave, 0.0, PIXEL, ENERGY), wave)


def test_fresnel_propagate_gaussian_beam_spreading():
    # waist w0 (1/e^2 intensity radius); analytic w(z) = w0 sqrt(1 + (z/zR)^2)
    lam = wavelength(ENERGY)
    fwhm = 1.5e-6
    w0 = fwhm / math.sqrt(2 * math.log(2))
    z_r = math.pi * w0**2 / lam
    probe = gaussian_probe(256, PIXEL, fwhm, math.inf, ENERGY, 1.0)
    out = fresnel_propagate(probe, 2 * z_r, PIXEL, ENERGY)
    intensity = np.abs(out) ** 2
    c = 128
    expected = fwhm * math.sqrt(1 + 2.0**2)
    assert _fwhm_px(intensity[c, :]) * PIXEL == pytest.approx(expected, rel=0.02)


def test_fresnel_and_probe_curvature_sign_convention():
    # R < 0 is converging (beam narrows downstream), R > 0 diverging
    d = 2e-2  # sampled without aliasing: lambda d / (2 pixel) > half the field of view
    converging = gaussian_probe(128, PIXEL, 3e-6, -d, ENERGY, 1.0)
    diverging = gaussian_probe(128, PIXEL, 3e-6, d, ENERGY, 1.0)
    w_start = _fwhm_px(np.abs(converging[64]) ** 2)
    w_conv = _fwhm_px(np.abs(fresnel_propagate(converging, d / 2, PIXEL, ENERGY)[64]) ** 2)
    w_div = _fwhm_px(np.abs(fresnel_propagate(diverging, d / 2, PIXEL, ENERGY)[64]) ** 2)
    assert w_conv < 0.8 * w_start
    assert w_div > 1.2 * w_start


def test_fresnel_propagate_rejects_bad_inputs():
    wave = np.ones((4, 4), complex)
    with pytest.raises(ValueError, match="pixel_size"):
        fresnel_propagate(wave, 1.0, 0.0, ENERGY)
    with pytest.raises(ValueError, match="distance must be finite"):
        fresnel_propagate(wave, math.inf, PIXEL, ENERGY)
    with pytest.raises(ValueError, match="energy_ev"):
        fresnel_propagate(wave, 1.0, PIXEL, 0.0)


# --------------------------------------------------------------------------- tomography
def _sphere(n: int, radius: float, value: float, oversample: int = 3) -> np.ndarray:
    """Uniform sphere with partial-volume voxels (fraction inside, by oversampling)."""
    sub = (np.arange(n * oversample) + 0.5) / oversample - 0.5 - (n - 1) / 2
    zz, yy, xx = np.meshgrid(sub, sub, sub, indexing="ij", sparse=True)
    inside = (zz**2 + yy**2 + xx**2 <= radius**2).astype(np.float32)
    frac = inside.reshape(n, oversample, n, oversample, n, oversample).mean(axis=(1, 3, 5))
    return (frac * value).astype(np.float32)


def test_project_volume_sphere_chords_and_rotation_invariance():
    n, radius, mu = 48, 16.0, 0.7
    vol = _sphere(n, radius, mu)
    angles = [0.0, 17.0, 45.0, 90.0, 133.0]
    proj = project_volume(vol, angles)
    assert proj.dtype == np.float32
    assert proj.shape == (len(angles), n, n)
    c = (n - 1) / 2
    zz, xx = np.indices((n, n))
    p = np.hypot(zz - c, xx - c)
    analytic = 2 * np.sqrt(np.clip(radius**2 - p**2, 0, None)) * mu
    interior = p < 0.75 * radius
    for k in range(len(angles)):
        np.testing.assert_allclose(proj[k][interior], analytic[interior], rtol=0.03)
        # total mass conserved (sum of line integrals = integral of the volume)
        assert proj[k].sum() == pytest.approx(vol.sum(), rel=1e-3)
    # rotation invariance everywhere (edges included), relative to the peak
    for k in range(1, len(angles)):
        np.testing.assert_allclose(proj[k], proj[0], atol=0.04 * proj[0].max())


def test_project_volume_sign_convention_off_centre_cube():
    nz, ny, nx = 8, 40, 40
    c = (nx - 1) / 2  # 19.5
    vol = np.zeros((nz, ny, nx), dtype=np.float32)
    # cube centred at x offset 0, y offset +10 (rows 27..32 -> centre 29.5)
    vol[2:6, 27:33, 17:23] = 1.0

    def column_centroid(img: np.ndarray) -> float:
        prof = img.sum(axis=0)
        return float((np.arange(prof.size) * prof).sum() / prof.sum())

    proj = project_volume(vol, [0.0, 90.0, -90.0, 180.0])
    # angle 0: beam along y, the column is the x coordinate
    assert column_centroid(proj[0]) == pytest.approx(c, abs=0.05)
    # u = x cos(t) - y sin(t): +y offset goes to lower columns at +90 degrees
    assert column_centroid(proj[1]) == pytest.approx(c - 10, abs=0.05)
    assert column_centroid(proj[2]) == pytest.approx(c + 10, abs=0.05)
    assert column_centroid(proj[3]) == pytest.approx(c, abs=0.05)
    # rows (z) untouched by the rotation; path length through the cube = 6 voxels
    for k in range(4):
        rows = np.nonzero(proj[k].sum(axis=1) > 0)[0]
        np.testing.assert_array_equal(rows, [2, 3, 4, 5])
        assert proj[k].max() == pytest.approx(6.0, rel=0.02)

    # an x offset appears at +x at 0 degrees and (y = 0) at the centre at 90 degrees
    vol2 = np.zeros((nz, ny, nx), dtype=np.float32)
    vol2[2:6, 17:23, 24:30] = 1.0  # x centre 26.5 -> offset +7
    proj2 = project_volume(torch.from_numpy(vol2), 90.0)
    assert proj2.shape == (1, nz, nx)
    assert column_centroid(project_volume(vol2, 0.0)[0]) == pytest.approx(c + 7, abs=0.05)
    assert column_centroid(proj2[0]) == pytest.approx(c, abs=0.05)
    # 30 degrees: u = 7 cos 30 for the x-offset cube, -10 sin 30 for the y-offset cube
    assert column_centroid(project_volume(vol2, 30.0)[0]) == pytest.approx(
        c + 7 * math.cos(math.radians(30)), abs=0.1
    )
    assert column_centroid(project_volume(vol, 30.0)[0]) == pytest.approx(c - 5, abs=0.1)


def test_project_volume_non_cubic_and_rejects_bad_inputs():
    # smooth blob at (y, x) offset (+3, -4) from the centre of a non-cubic volume
    yy, xx = np.indices((20, 30))
    blob = np.exp(-((yy - 9.5 - 3) ** 2 + (xx - 14.5 + 4) ** 2) / (2 * 2.0**2))
    vol = np.repeat(blob[None], 3, axis=0).astype(np.float32)
    angles = np.array([0.0, 90.0, 45.0, -60.0])
    proj = project_volume(vol, angles)
    assert proj.shape == (4, 3, 30)
    cols = np.arange(30) - 14.5
    for k, theta in enumerate(np.deg2rad(angles)):
        # the whole blob stays in view along the (longer) rotated beam path
        assert proj[k].sum() == pytest.approx(vol.sum(), rel=1e-3)
        u = (cols * proj[k, 0]).sum() / proj[k, 0].sum()
        assert u == pytest.approx(-4 * math.cos(theta) - 3 * math.sin(theta), abs=0.02)
    with pytest.raises(ValueError, match="volume must be 3D"):
        project_volume(np.ones((4, 4)), 0.0)
    with pytest.raises(ValueError, match="angles_deg must be finite"):
        project_volume(np.ones((2, 4, 4)), [0.0, np.nan])
    with pytest.raises(ValueError, match="real-valued"):
        project_volume(np.ones((2, 4, 4), complex), 0.0)
