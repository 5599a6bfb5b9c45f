"""Tests of the streaming tomographic reconstruction (synaps_agent.recon.tomo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from synaps_agent.recon.tomo import (
    StreamingFBP,
    angle_weights,
    backproject,
    cgls,
    forward_project,
    normalize_projection,
    ramp_filter,
    sirt,
)
from synaps_agent.sim_devices.optics import poisson_counts, project_volume
from synaps_agent.sim_devices.phantoms import make_phantom

GOLDEN = 180.0 / ((1.0 + math.sqrt(5.0)) / 2.0)  # 111.246... degrees


def _ball(nz: int, n: int, radius: float, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """A uniform ball centred in a (nz, n, n) volume, and each voxel's distance to it."""
    z, y, x = np.indices((nz, n, n), dtype=np.float64)
    dist = np.sqrt((z - (nz - 1) / 2) ** 2 + (y - (n - 1) / 2) ** 2 + (x - (n - 1) / 2) ** 2)
    return (dist < radius).astype(np.float32) * mu, dist


def _disk_phantom(nz: int, n: int) -> np.ndarray:
    """A cylinder plus an off-centre denser cube and a small void: asymmetric on purpose."""
    c = (n - 1) / 2
    _, y, x = np.indices((nz, n, n))
    vol = (np.hypot(y - c, x - c) < 0.3 * n).astype(np.float32) * 0.05
    vol[:, n // 6 : n // 6 + n // 6, n // 2 + 2 : n // 2 + 2 + n // 6] = 0.08
    vol[:, n // 2 + 3 : n // 2 + 7, n // 2 - 8 : n // 2 - 4] = 0.0
    return vol


def _in_circle(n: int, frac: float = 0.48) -> np.ndarray:
    c = (n - 1) / 2
    y, x = np.indices((n, n))
    return np.hypot(y - c, x - c) < frac * n


def _rel_err(rec: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.linalg.norm((rec - truth)[:, mask]) / np.linalg.norm(truth[:, mask]))


def _fbp(projections: np.ndarray, angles: np.ndarray, **kwargs) -> StreamingFBP:
    rec = StreamingFBP(projections.shape[1:], **kwargs)
    for p, a in zip(projections, angles, strict=True):
        rec.add(p, a)
    return rec


# --------------------------------------------------------------------------- normalisation
def test_normalize_projection_recovers_line_integrals_from_counts():
    rng = np.random.default_rng(0)
    nz, nx, photons, dark_level = 32, 48, 1e4, 100.0
    yy, xx = np.mgrid[0:nz, 0:nx].astype(np.float32)
    profile = 1.0 + 0.05 * np.sin(2 * np.pi * xx / nx * 1.5) * np.cos(2 * np.pi * yy / nz * 0.7)
    vol, _ = _ball(nz, nx, 14.0, 0.05)
    line = project_volume(vol, [30.0])[0]  # up to 1.4 -> 25 % transmission
    n_flat, n_dark = 10, 20
    dark_noise = rng.poisson(dark_level, line.shape)
    raw = poisson_counts(photons * profile * np.exp(-line), rng) + dark_noise
    flats = [
        poisson_counts(photons * profile, rng) + rng.poisson(dark_level, line.shape)
        for _ in range(n_flat)
    ]
    darks = rng.poisson(dark_level, (n_dark, nz, nx))
    flat, dark = np.mean(flats, axis=0), darks.mean(axis=0)
    out = normalize_projection(raw, flat, dark)
    assert out.dtype == np.float32 and out.shape == line.shape
    # predicted noise: var(-log T) ~ (N_s + D) / N_s^2 + (N_f + D) / (n_flat N_f^2)
    n_s = photons * profile * np.exp(-line)
    n_f = photons * profile
    sigma = np.sqrt((n_s + dark_level) / n_s**2 + (n_f + dark_level) / (n_flat * n_f**2))
    z = (out - line) / sigma
    assert abs(float(z.mean())) < 0.1  # unbiased
    assert 0.85 < float(z.std()) < 1.15  # and the spread is the photon noise, no more
    # the flat-field profile (5 %) is gone: without flat correction it would dominate
    assert float(np.abs(out - line).mean()) < 0.02
    # a stack of frames with one shared flat/dark broadcasts
    stack = normalize_projection(np.stack([raw, raw]), flat, dark)
    np.testing.assert_array_equal(stack[1], out)
    # photon-starved pixels are capped at -log(eps)
    assert normalize_projection(np.array([100.0]), np.array([1000.0]), 100.0)[0] == (
        pytest.approx(-math.log(1e-3), rel=1e-6)
    )


def test_normalize_projection_rejects_bad_input():
    raw = np.full((4, 5), 500.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        normalize_projection(raw, np.full((4, 6), 1000.0), 0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        normalize_projection(raw[0], np.full((4, 5), 1000.0), 0.0)  # flat larger than raw
    bad = raw.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="raw contains non-finite"):
        normalize_projection(bad, 1000.0, 0.0)
    with pytest.raises(ValueError, match="dark contains non-finite"):
        normalize_projection(raw, 1000.0, np.full((4, 5), np.inf))


# --------------------------------------------------------------------------- filter
def test_ramp_filter_kernel_and_purity():
    nx = 33
    delta = np.zeros((1, 1, nx), dtype=np.float32)
    delta[..., 16] = 1.0
    before = delta.copy()
    out = ramp_filter(delta)
    np.testing.assert_array_equal(delta, before)  # pure
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == delta.shape
    # Ram-Lak kernel: 1/4 at 0, -1/(pi n)^2 at odd n, 0 at even n
    k = out[0, 0]
    assert k[16] == pytest.approx(0.25, abs=1e-6)
    assert k[15] == pytest.approx(-1 / np.pi**2, abs=1e-6)
    assert k[19] == pytest.approx(-1 / (9 * np.pi**2), abs=1e-6)
    assert abs(k[18]) < 1e-6
    # apodised filters keep DC at 0 but remove high frequencies
    for name in ("shepp-logan", "hann"):
        kk = ramp_filter(torch.from_numpy(delta), filter_name=name)
        assert isinstance(kk, torch.Tensor)
        kk = kk.numpy()[0, 0]
        assert 0 < kk[16] < 0.25
    hann = ramp_filter(delta, filter_name="hann")[0, 0]
    assert abs(hann[12:21].sum()) < abs(k[12:21].sum()) + 1e-3
    with pytest.raises(ValueError, match="unknown filter_name"):
        ramp_filter(delta, filter_name="cosine")


# --------------------------------------------------------------------------- operators
def test_forward_projector_is_project_volume():
    rng = np.random.default_rng(1)
    vol = rng.random((3, 20, 20)).astype(np.float32)
    angles = rng.uniform(-200, 400, 7)
    np.testing.assert_allclose(
        forward_project(vol, angles), project_volume(vol, angles), rtol=1e-6, atol=1e-6
    )


def test_backprojector_is_adjoint_of_project_volume():
    rng = np.random.default_rng(2)
    nz, n, n_ang = 3, 40, 23
    angles = rng.uniform(0, 360, n_ang)
    # smooth random fields (interpolation schemes differ only at the pixel scale)
    x = gaussian_filter(rng.normal(size=(nz, n, n)), (0, 2, 2)).astype(np.float32)
    y = gaussian_filter(rng.normal(size=(n_ang, nz, n)), (0, 0, 2)).astype(np.float32)
    lhs = float((project_volume(x, angles).astype(np.float64) * y).sum())
    rhs = float((x.astype(np.float64) * backproject(y, angles)).sum())
    assert rhs == pytest.approx(lhs, rel=0.03)
    # the iterative methods' exact adjoint (autograd of the projector)
    from synaps_agent.recon.tomo import _adjoint_t

    exact = _adjoint_t(torch.from_numpy(y), angles, (nz, n, n)).numpy()
    assert float((x.astype(np.float64) * exact).sum()) == pytest.approx(lhs, rel=1e-4)
    # pixel-driven and exact backprojections agree voxel by voxel up to the ~5 % jitter
    # of the exact one (beam samples one voxel apart); a wrong sign or centre would not
    pix = backproject(y, angles)
    assert np.linalg.norm(pix - exact) < 0.1 * np.linalg.norm(exact)
    mirrored = backproject(y, -angles)
    assert np.linalg.norm(mirrored - exact) > 0.5 * np.linalg.norm(exact)


def test_angle_weights():
    w = angle_weights(np.arange(0, 180, 2.0))
    np.testing.assert_allclose(w, np.pi / 90)
    assert angle_weights([37.0])[0] == pytest.approx(np.pi)
    # repeats (also t and t + 180, and 180 vs 0) share one weight, order does not matter
    w = angle_weights([0.0, 90.0, 180.0, 45.0, 225.0, 360.0])
    np.testing.assert_allclose(w.sum(), np.pi)
    np.testing.assert_allclose(w, np.deg2rad([67.5 / 3, 67.5, 67.5 / 3, 22.5, 22.5, 67.5 / 3]))
    # uneven: the lonely angle covers the big gap
    w = angle_weights([0.0, 10.0, 20.0, 100.0])
    np.testing.assert_allclose(np.rad2deg(w), [45, 10, 45, 80])


# --------------------------------------------------------------------------- FBP accuracy
def test_fbp_uniform_ball_recovers_attenuation():
    nz, n, mu, radius = 24, 48, 0.05, 10.0
    vol, dist = _ball(nz, n, radius, mu)
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    rec = _fbp(project_volume(vol, angles), angles)
    assert rec.num_angles == 180
    v = rec.volume()
    assert v.shape == (nz, n, n) and v.dtype == np.float32
    inside = v[dist < radius - 2.5]
    assert float(inside.mean()) == pytest.approx(mu, rel=0.02)
    assert float(np.abs(inside - mu).max()) < 0.1 * mu
    outside = v[(dist > radius + 2.5) & _in_circle(n, 0.45)[None]]
    assert abs(float(outside.mean())) < 0.005 * mu
    assert float(np.abs(outside).max()) < 0.06 * mu
    # uniform angles: the weighting changes nothing
    np.testing.assert_allclose(rec.volume(weighted=False), v, atol=1e-6 * mu)


def test_fbp_error_decreases_with_golden_angles_and_voxel_size_scaling():
    nz, n = 2, 48
    vol = _disk_phantom(nz, n)
    angles = np.mod(np.arange(90) * GOLDEN, 180.0)
    proj = project_volume(vol, angles)
    mask = _in_circle(n)
    voxel = 0.5e-6
    rec = StreamingFBP((nz, n), voxel_size=voxel)
    errors = {}
    for k, (p, a) in enumerate(zip(proj, angles, strict=True), start=1):
        rec.add(p, a)
        if k in (5, 20, 90):
            errors[k] = _rel_err(rec.volume() * voxel, vol, mask)
    assert errors[90] < errors[20] < errors[5]
    assert errors[90] < 0.2
    # voxel_size turns mu per voxel into mu per metre
    assert float(rec.volume()[:, 20:28, 20:28].mean()) == pytest.approx(0.05 / voxel, rel=0.03)


def test_result_independent_of_arrival_order_and_repeats_are_averaged():
    nz, n = 2, 40
    vol = _disk_phantom(nz, n)
    angles = np.mod(np.arange(30) * GOLDEN, 180.0)
    proj = project_volume(vol, angles)
    ref = _fbp(proj, angles).volume()
    perm = np.random.default_rng(3).permutation(angles.size)
    shuffled = _fbp(proj[perm], angles[perm]).volume()
    np.testing.assert_allclose(shuffled, ref, atol=1e-5 * float(np.abs(ref).max()))
    # a repeated measurement (also at t + 180, mirrored) is averaged, not double-weighted
    extra_p = np.concatenate([proj, proj[:5], proj[5:8, :, ::-1]])
    extra_a = np.concatenate([angles, angles[:5], angles[5:8] + 180.0])
    rep = _fbp(extra_p, extra_a)
    assert rep.num_angles == 38
    np.testing.assert_allclose(rep.volume(), ref, atol=2e-3 * float(np.abs(ref).max()))
    # ... whereas the unweighted sum is visibly biased by the repeats
    assert np.abs(rep.volume(weighted=False) - ref).max() > 0.02 * float(np.abs(ref).max())


def test_uneven_angles_weighting_beats_plain_sum():
    nz, n = 2, 48
    vol = _disk_phantom(nz, n)
    angles = np.concatenate([np.arange(0.0, 90.0, 1.0), [100.0, 120.0, 140.0, 160.0]])
    proj = project_volume(vol, angles)
    rec = _fbp(proj, angles)
    mask = _in_circle(n)
    err_w = _rel_err(rec.volume(), vol, mask)
    err_u = _rel_err(rec.volume(weighted=False), vol, mask)
    assert err_w < 0.7 * err_u
    # mean value right only with the weights (each angle range counted by its extent)
    region = np.s_[:, 20:28, 20:28]
    assert float(rec.volume()[region].mean()) == pytest.approx(0.05, rel=0.05)


def test_slices_subset_matches_full_volume():
    nz, n = 5, 32
    vol = _disk_phantom(nz, n)
    vol[3] *= 2.0
    angles = np.mod(np.arange(17) * GOLDEN, 180.0)
    rec = _fbp(project_volume(vol, angles), angles)
    part = rec.volume(slices=[3, 0])  # before the full volume is cached
    full = rec.volume()
    np.testing.assert_allclose(part, full[[3, 0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.volume(slices=[-1]), full[[4]], rtol=1e-6)
    with pytest.raises(ValueError, match="slices"):
        rec.volume(slices=[5])


def test_single_slice_2d():
    n = 40
    vol = _disk_phantom(1, n)
    angles = np.linspace(0.0, 180.0, 90, endpoint=False)
    proj = project_volume(vol, angles)
    rec = StreamingFBP((1, n), filter_name="shepp-logan")
    for p, a in zip(proj, angles, strict=True):
        rec.add(p[0], a)  # (nx,) accepted for nz == 1
    v = rec.volume()
    assert v.shape == (1, n, n)
    assert _rel_err(v, vol, _in_circle(n)) < 0.2


# --------------------------------------------------------------------------- iterative
def test_sirt_and_cgls_improve_on_fbp_for_few_angles():
    nz, n = 2, 48
    vol = _disk_phantom(nz, n)
    angles = np.linspace(0.0, 180.0, 12, endpoint=False)
    proj = project_volume(vol, angles)
    rec = _fbp(proj, angles)
    mask = _in_circle(n)
    err_fbp = _rel_err(rec.volume(), vol, mask)
    ref_sirt = rec.refine(40, "sirt")
    err_sirt = _rel_err(ref_sirt, vol, mask)
    err_cgls = _rel_err(rec.refine(10, "cgls"), vol, mask)
    assert err_sirt < 0.75 * err_fbp
    assert err_cgls < 0.85 * err_fbp
    assert ref_sirt.min() >= 0.0
    # the module functions, warm-started from FBP, agree with refine; cold start is worse
    np.testing.assert_allclose(
        sirt(proj, angles, num_iterations=40, x0=rec.volume()), ref_sirt, atol=1e-5
    )
    cold = cgls(proj, angles, num_iterations=3)
    warm = cgls(proj, angles, num_iterations=3, x0=rec.volume())
    assert _rel_err(warm, vol, mask) < _rel_err(cold, vol, mask)
    with pytest.raises(ValueError, match="method"):
        rec.refine(3, "art")


def test_electrode_phantom_neutron_attenuation():
    ph = make_phantom("T-electrode", seed=2, size=32)
    mu = ph.neutron_attenuation()[8:12]  # 1/m, 4 slices
    lines = project_volume(mu * ph.voxel_size, np.linspace(0, 180, 90, endpoint=False))
    rec = StreamingFBP(lines.shape[1:], voxel_size=ph.voxel_size)
    for p, a in zip(lines, np.linspace(0, 180, 90, endpoint=False), strict=True):
        rec.add(p, a)
    # the electrode fills the whole cube (wider than the detector at oblique angles):
    # judge inside the inscribed circle, where FBP is still faithful
    mask = _in_circle(32, 0.4)
    vol = rec.volume()
    err = _rel_err(vol, mu, mask)
    assert err < 0.35  # dominated by voxel-scale edges of 1.5-3 voxel particles ...
    smooth = _rel_err(gaussian_filter(vol, (0, 1, 1)), gaussian_filter(mu, (0, 1, 1)), mask)
    assert smooth < 0.12  # ... at a 1-voxel resolution it is within ~8 %
    assert float(vol[:, mask].mean()) == pytest.approx(float(mu[:, mask].mean()), rel=0.08)
    # and the reconstruction is far better than a constant guess at the mean
    flat = np.full_like(mu, mu[:, mask].mean())
    assert err < 0.6 * _rel_err(flat, mu, mask)


# --------------------------------------------------------------------------- bad input
def test_streaming_rejects_bad_input_and_keeps_state():
    rec = StreamingFBP((4, 16))
    rec.add(np.zeros((4, 16)), 0.0)
    with pytest.raises(ValueError, match=r"projection shape \(4, 15\) does not match"):
        rec.add(np.zeros((4, 15)), 1.0)
    bad = np.zeros((4, 16))
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="projection contains non-finite"):
        rec.add(bad, 2.0)
    with pytest.raises(ValueError, match="angle_deg must be finite"):
        rec.add(np.zeros((4, 16)), float("nan"))
    assert rec.num_angles == 1 and list(rec.angles) == [0.0]
    with pytest.raises(ValueError, match="unknown filter_name"):
        StreamingFBP((4, 16), filter_name="bogus")
    with pytest.raises(ValueError, match="does not match number of angles"):
        backproject(np.zeros((3, 4, 16)), [0.0, 1.0])
    with pytest.raises(ValueError, match="no projections"):
        StreamingFBP((1, 8)).refine(2)
