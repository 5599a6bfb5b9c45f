"""Tests of the reconstruction quality metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from synaps_agent.metrics import (
    align_complex,
    complex_errors,
    fourier_ring_correlation,
    frc_resolution,
    half_bit_threshold,
    illuminated_mask,
    psnr,
    register_translation,
    remove_phase_ramp,
    shift_image,
    ssim,
)

SHIFT = np.array([1.3, -2.6])
SCALE = 0.7 * np.exp(1.1j)
RAMP = (0.02, -0.015)  # rad/pixel: 2.6 and 1.9 rad across the field


def smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return field / field.std()


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """(truth, reconstruction): a non-periodic crop and its scaled, ramped, shifted copy."""
    rng = np.random.default_rng(0)
    big = (0.8 + 0.1 * smooth_field(rng, 160, 3)) * np.exp(1j * smooth_field(rng, 160, 4))
    crop = (slice(16, 144), slice(16, 144))
    truth = big[crop]
    yy, xx = np.indices(truth.shape)
    ramp = np.exp(1j * (RAMP[0] * yy + RAMP[1] * xx))
    reconstruction = SCALE * ramp * shift_image(big, SHIFT)[crop]
    return truth, reconstruction


def add_noise(image: np.ndarray, level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return image + level * (
        rng.standard_normal(image.shape) + 1j * rng.standard_normal(image.shape)
    )


# ------------------------------------------------------------------- shift and registration


def test_shift_image_matches_integer_roll_and_round_trips():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((32, 40))
    assert np.allclose(shift_image(image, (3, -5)), np.roll(image, (3, -5), axis=(0, 1)))
    assert np.isrealobj(shift_image(image, (0.5, 0.25)))
    complex_image = image + 1j * rng.standard_normal((32, 40))
    there = shift_image(complex_image, (1.4, -0.7))
    assert np.iscomplexobj(there)
    assert np.allclose(shift_image(there, (-1.4, 0.7)), complex_image)


def test_register_translation_recovers_subpixel_shift(pair):
    truth, _ = pair
    moved = shift_image(truth, SHIFT, mode="reflect")
    shift, error = register_translation(truth, moved, upsample_factor=20)
    assert np.allclose(shift, -SHIFT, atol=0.1)
    assert 0 <= error < 1


def test_remove_phase_ramp_against_reference():
    rng = np.random.default_rng(2)
    reference = np.exp(2j * smooth_field(rng, 64, 3))  # phase of a few radians
    yy, xx = np.indices(reference.shape)
    obj = reference * np.exp(1j * (0.7 + 0.05 * yy - 0.08 * xx))  # 8 rad of ramp: wraps
    flat = remove_phase_ramp(obj, reference)
    assert np.allclose(flat, reference, atol=1e-8)


def test_remove_phase_ramp_alone_flattens_the_phase():
    yy, xx = np.indices((48, 48))
    obj = 2.0 * np.exp(1j * (-1.0 + 0.1 * yy + 0.03 * xx))
    assert np.allclose(remove_phase_ramp(obj), 2.0, atol=1e-8)


# ------------------------------------------------------------------------ complex errors


def test_align_complex_undoes_scale_ramp_and_shift(pair):
    truth, reconstruction = pair
    errors = complex_errors(reconstruction, truth)
    assert errors["phase_rmse"] < 0.02
    assert errors["complex_nrmse"] < 0.02
    assert errors["amplitude_rmse"] < 0.01
    assert np.allclose(errors["shift_yx"], -SHIFT, atol=0.05)
    assert abs(errors["scale"]) == pytest.approx(1 / abs(SCALE), rel=1e-3)
    assert np.allclose(errors["phase_ramp"], RAMP, atol=1e-3)
    aligned = align_complex(reconstruction, truth)
    inner = (slice(8, -8), slice(8, -8))
    assert np.max(np.abs(aligned[inner] - truth[inner])) < 0.02
    # without alignment the same pair is far off
    assert np.linalg.norm(reconstruction - truth) / np.linalg.norm(truth) > 0.5


def test_complex_errors_on_a_mask(pair):
    truth, reconstruction = pair
    mask = np.zeros(truth.shape, dtype=bool)
    mask[30:100, 20:90] = True
    errors = complex_errors(reconstruction, truth, mask=mask)
    assert errors["n_pixels"] == mask.sum()
    assert errors["phase_rmse"] < 0.02
    assert np.allclose(errors["shift_yx"], -SHIFT, atol=0.05)


def test_complex_errors_grow_with_noise(pair):
    truth, reconstruction = pair
    levels = [0.0, 0.01, 0.03, 0.1]
    results = [complex_errors(add_noise(reconstruction, s, seed=5), truth) for s in levels]
    for key in ("phase_rmse", "amplitude_rmse", "complex_nrmse"):
        values = [r[key] for r in results]
        assert np.all(np.diff(values) > 0), (key, values)
    # the noise (per-component std s, |rec| ~ 0.56) sets the phase error ~ s / (0.7 * 0.8)
    assert results[-1]["phase_rmse"] == pytest.approx(0.1 / 0.56, rel=0.3)
    assert np.allclose(results[-1]["shift_yx"], -SHIFT, atol=0.1)


# --------------------------------------------------------------------------- psnr and ssim


def test_psnr_and_ssim_match_skimage_and_improve_with_less_noise():
    rng = np.random.default_rng(3)
    truth = smooth_field(rng, 64, 2)
    noisy = {s: truth + s * rng.standard_normal(truth.shape) for s in (0.3, 0.1, 0.03)}
    span = float(truth.max() - truth.min())
    for image in noisy.values():
        assert psnr(image, truth) == pytest.approx(
            peak_signal_noise_ratio(truth, image, data_range=span)
        )
        assert psnr(image, truth, data_range=10.0) == pytest.approx(
            peak_signal_noise_ratio(truth, image, data_range=10.0)
        )
        assert ssim(image, truth) == pytest.approx(
            structural_similarity(truth, image, data_range=span)
        )
    psnrs = [psnr(noisy[s], truth) for s in (0.3, 0.1, 0.03)]
    ssims = [ssim(noisy[s], truth) for s in (0.3, 0.1, 0.03)]
    assert np.all(np.diff(psnrs) > 0) and np.all(np.diff(ssims) > 0)
    assert psnr(truth, truth) == np.inf and ssim(truth, truth) == pytest.approx(1.0)


def test_psnr_on_a_mask_and_by_hand():
    truth = np.zeros((16, 16))
    truth[0, 0] = 2.0  # data range 2
    image = truth + 0.1
    image[8:, :] += 5.0  # outside the mask
    mask = np.zeros_like(truth, dtype=bool)
    mask[:8, :] = True
    assert psnr(image, truth, mask=mask) == pytest.approx(10 * np.log10(4 / 0.01))


# ------------------------------------------------------------------ Fourier ring correlation


def test_half_bit_threshold_values():
    assert half_bit_threshold(1) == pytest.approx(1.0, abs=1e-4)
    assert half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, abs=1e-5)
    assert half_bit_threshold(1e12) == pytest.approx(0.1716, abs=1e-4)
    n = 100.0
    expected = (0.2071 + 1.9102 / 10) / (1.2071 + 0.9102 / 10)
    assert half_bit_threshold(n) == pytest.approx(expected)
    curve = half_bit_threshold(np.array([1, 10, 100, 1000]))
    assert np.all(np.diff(curve) < 0)


def test_frc_of_an_image_with_itself_is_one():
    rng = np.random.default_rng(4)
    image = rng.standard_normal((64, 64))
    frequency, frc = fourier_ring_correlation(image, image)
    assert frequency[0] == 0 and frequency[-1] == pytest.approx(0.5)
    assert len(frequency) == len(frc) == 33
    assert np.allclose(frc, 1.0)
    complex_image = image + 1j * rng.standard_normal((64, 64))
    _, frc = fourier_ring_correlation(complex_image, complex_image, window="hann")
    assert np.allclose(frc[1:], 1.0)
    result = frc_resolution(image, image, 10e-9)
    assert not result["crossed"] and result["resolution_m"] == pytest.approx(20e-9)


def test_frc_of_independent_noise_is_small():
    rng = np.random.default_rng(6)
    _, frc = fourier_ring_correlation(
        rng.standard_normal((128, 128)), rng.standard_normal((128, 128))
    )
    assert np.mean(np.abs(frc[4:])) < 0.1


def band_limited(rng: np.random.Generator, n: int, cutoff: float, width: float) -> np.ndarray:
    frequency = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    transfer = (frequency <= cutoff) * np.exp(-0.5 * (frequency / width) ** 2)
    image = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * transfer).real
    return image / image.std()


def test_frc_resolution_finds_the_band_limit_and_coarsens_with_noise():
    rng = np.random.default_rng(7)
    signal = band_limited(rng, 256, cutoff=0.2, width=0.05)
    pixel = 50e-9
    resolutions = []
    for noise in (0.01, 0.1, 0.5, 2.0):
        first = signal + noise * rng.standard_normal(signal.shape)
        second = signal + noise * rng.standard_normal(signal.shape)
        result = frc_resolution(first, second, pixel)
        assert result["crossed"]
        assert result["frc"].shape == result["threshold"].shape == result["frequencies"].shape
        resolutions.append(result["resolution_m"])
    assert 1 / 0.3 * pixel < resolutions[0] < 1 / 0.12 * pixel
    assert np.all(np.diff(resolutions) > 0), resolutions


def test_frc_resolution_windows_away_the_edges_of_a_crop():
    """A crop is not periodic: its shared edges correlate up to Nyquist unless apodised."""
    rng = np.random.default_rng(8)
    signal = (band_limited(rng, 384, cutoff=0.2, width=0.05) + 3.0)[40:296, 70:326]
    first = signal + 0.01 * rng.standard_normal(signal.shape)
    second = signal + 0.01 * rng.standard_normal(signal.shape)
    result = frc_resolution(first, second, 1.0)
    assert 1 / 0.3 < result["resolution_m"] < 1 / 0.12
    assert frc_resolution(first, second, 1.0, window=None)["resolution_m"] < 1 / 0.3


# --------------------------------------------------------------------------------- masks


def test_illuminated_mask_threshold_and_erosion():
    yy, xx = np.indices((41, 41)) - 20
    illumination = np.exp(-(yy**2 + xx**2) / (2 * 6.0**2))
    mask = illuminated_mask(illumination, fraction=0.5)
    assert mask.dtype == bool
    assert mask[20, 20] and not mask[0, 0]
    assert np.array_equal(mask, illumination > 0.5)
    eroded = illuminated_mask(illumination, fraction=0.5, erode=2)
    assert eroded.sum() < mask.sum() and np.all(mask[eroded])
    probe = np.sqrt(illumination) * np.exp(1j * xx)
    assert np.array_equal(illuminated_mask(probe, fraction=0.5), mask)


# ------------------------------------------------------------------------------ bad input


def test_bad_input_raises_clear_errors(pair):
    truth, reconstruction = pair
    with pytest.raises(ValueError, match="shape mismatch"):
        complex_errors(reconstruction[:-1], truth)
    bad = reconstruction.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="reconstruction contains NaN"):
        align_complex(bad, truth)
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="must be real"):
        ssim(truth, truth)
    with pytest.raises(ValueError, match="image1 contains NaN"):
        fourier_ring_correlation(np.full((16, 16), np.nan), np.zeros((16, 16)))
    with pytest.raises(ValueError, match="must be 2D"):
        frc_resolution(np.zeros(16), np.zeros(16), 1e-8)
    with pytest.raises(ValueError, match="pixel_size"):
        frc_resolution(np.zeros((16, 16)), np.zeros((16, 16)), -1.0)
    with pytest.raises(ValueError, match="mask selects 0 pixels"):
        complex_errors(reconstruction, truth, mask=np.zeros(truth.shape, dtype=bool))
    with pytest.raises(ValueError, match="fraction"):
        illuminated_mask(np.ones((4, 4)), fraction=1.5)


def test_frc_resolution_ignores_a_dip_in_the_lowest_ring():
    """Two images with the same detail but opposite large-scale backgrounds."""
    rng = np.random.default_rng(9)
    signal = band_limited(rng, 128, cutoff=0.2, width=0.05)
    yy, xx = np.indices(signal.shape)
    background = 0.45 * np.cos(2 * np.pi * xx / 128)  # ring 1 (the window spreads it a little)
    first = signal + background + 0.01 * rng.standard_normal(signal.shape)
    second = signal - background + 0.01 * rng.standard_normal(signal.shape)
    result = frc_resolution(first, second, 1.0)
    assert result["frc"][1] < result["threshold"][1]  # the dip is there
    assert 1 / 0.3 < result["resolution_m"] < 1 / 0.12  # but the band limit is found
    assert frc_resolution(first, second, 1.0, min_ring=1)["resolution_m"] > 50
    with pytest.raises(ValueError, match="min_ring"):
        frc_resolution(first, second, 1.0, min_ring=0)
