"""Tests of the electrode microstructure phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from synaps_agent.sim_devices.phantoms import (
    ACTIVE,
    CARBON_BINDER,
    MATERIALS,
    PHASE_NAMES,
    PORE,
    PRESETS,
    SECONDARY,
    ElectrodeLabels,
    Phantom2D,
    Phantom3D,
    electrode_labels_2d,
    electrode_labels_3d,
    make_phantom,
    neutron_attenuation,
    refractive_index,
    wavelength_m,
)


@pytest.fixture(scope="module")
def sparse() -> Phantom2D:
    return make_phantom("P-sparse", seed=0)


@pytest.fixture(scope="module")
def dense() -> Phantom2D:
    return make_phantom("P-dense", seed=0)


@pytest.fixture(scope="module")
def volume() -> Phantom3D:
    return make_phantom("T-electrode", seed=0, size=48)


def particle_fraction(labels: np.ndarray) -> float:
    return float(np.isin(labels, [ACTIVE, SECONDARY]).mean())


def empty_tile_fraction(labels: np.ndarray, tile: int = 32) -> float:
    ny, nx = labels.shape
    tiles = labels[: ny - ny % tile, : nx - nx % tile].reshape(ny // tile, tile, nx // tile, tile)
    solid = np.isin(tiles, [ACTIVE, SECONDARY]).mean(axis=(1, 3))
    return float((solid < 0.05).mean())


def check_instances(labels: np.ndarray, instances: np.ndarray, particles: list) -> None:
    inside = instances > 0
    # Every instance pixel is active, secondary, or a crack (pore) inside the particle.
    assert np.isin(labels[inside], [PORE, ACTIVE, SECONDARY]).all()
    # Every solid particle pixel has an instance; binder is never inside a particle.
    assert inside[np.isin(labels, [ACTIVE, SECONDARY])].all()
    assert not inside[labels == CARBON_BINDER].any()
    # Particle ids run 1..n and every particle owns pixels.
    assert [p.id for p in particles] == list(range(1, len(particles) + 1))
    counts = np.bincount(instances.ravel(), minlength=len(particles) + 1)
    assert counts.size == len(particles) + 1
    assert (counts[1:] > 0).all()


# --- determinism and basic properties ------------------------------------------------------


@pytest.mark.parametrize("case, size", [("P-dense", 96), ("P-sparse", 96), ("T-electrode", 32)])
def test_same_seed_same_phantom_different_seed_different(case: str, size: int) -> None:
    a = make_phantom(case, seed=3, size=size)
    b = make_phantom(case, seed=3, size=size)
    c = make_phantom(case, seed=4, size=size)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert a.particles == b.particles
    delta_a, _ = a.refractive_index(8000.0)
    delta_b, _ = b.refractive_index(8000.0)
    np.testing.assert_array_equal(delta_a, delta_b)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("case", ["P-sparse", "P-dense"])
def test_2d_labels_dtype_range_and_shape(case: str) -> None:
    ph = make_phantom(case, seed=1, size=96, pixel_size=10e-9)
    assert isinstance(ph, Phantom2D)
    assert ph.shape == (96, 96)
    assert ph.labels.dtype == np.int8 and ph.instances.dtype == np.int32
    assert set(np.unique(ph.labels)) <= {0, 1, 2, 3}
    assert ph.pixel_size == 10e-9 and ph.thickness == pytest.approx(1e-6)
    fractions = ph.area_fractions()
    assert tuple(fractions) == PHASE_NAMES
    assert sum(fractions.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):  # ground truth is read-only
        ph.labels[0, 0] = 1


def test_full_size_area_fractions(sparse: Phantom2D, dense: Phantom2D) -> None:
    assert sparse.shape == (384, 384) and dense.shape == (384, 384)
    assert abs(particle_fraction(sparse.labels) - 0.25) <= 0.05
    assert abs(particle_fraction(dense.labels) - 0.55) <= 0.06
    # The binder target of the presets is met (it is placed by rank, so nearly exactly).
    assert sparse.area_fractions()["carbon_binder"] == pytest.approx(
        PRESETS["P-sparse"].binder_fraction, abs=0.01
    )
    assert dense.area_fractions()["carbon_binder"] == pytest.approx(
        PRESETS["P-dense"].binder_fraction, abs=0.01
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_reduced_size_area_fractions(seed: int) -> None:
    assert abs(particle_fraction(make_phantom("P-sparse", seed, size=128).labels) - 0.25) <= 0.05
    assert abs(particle_fraction(make_phantom("P-dense", seed, size=128).labels) - 0.55) <= 0.06


def test_sparse_is_more_clustered_than_dense(sparse: Phantom2D, dense: Phantom2D) -> None:
    empty_sparse = empty_tile_fraction(sparse.labels)
    empty_dense = empty_tile_fraction(dense.labels)
    assert empty_sparse >= 0.35
    assert empty_dense <= 0.02
    assert empty_sparse > empty_dense + 0.3
    # Large empty regions: whole 64 x 64 tiles without particles (a uniform layout at the
    # same fraction and sizes leaves ~10 % of them empty).
    assert empty_tile_fraction(sparse.labels, tile=64) >= 0.25


def test_sparse_has_mixed_particle_sizes(sparse: Phantom2D) -> None:
    radii = np.array([p.radius for p in sparse.particles])
    r_min, r_max = PRESETS["P-sparse"].radius_range_px
    assert radii.min() >= r_min - 1e-9 and radii.max() <= r_max + 1e-9
    assert radii.max() / radii.min() > 2.0
    assert len(sparse.particles) >= 15


def test_instances_consistent_with_labels(
    sparse: Phantom2D, dense: Phantom2D, volume: Phantom3D
) -> None:
    for ph in (sparse, dense, volume):
        check_instances(ph.labels, ph.instances, ph.particles)


def test_particles_barely_overlap_and_match_their_radius(dense: Phantom2D) -> None:
    ny, nx = dense.shape
    counts = np.bincount(dense.instances.ravel(), minlength=len(dense.particles) + 1)
    ratios = []
    for p in dense.particles:
        y, x = p.center
        if min(y, x) > p.radius + 2 and max(y - ny, x - nx) < -(p.radius + 2):
            ratios.append(counts[p.id] / (np.pi * p.radius**2))
    ratios = np.array(ratios)
    assert ratios.size > 100
    # Pixel areas agree with the equivalent radius (little area lost to neighbours).
    assert np.median(ratios) == pytest.approx(1.0, abs=0.1)
    assert ratios.min() > 0.6


def test_cracks_and_secondary_phase_in_dense(dense: Phantom2D) -> None:
    crack = (dense.instances > 0) & (dense.labels == PORE)
    assert crack.sum() > 200
    cracked_ids = set(np.unique(dense.instances[crack]))
    assert cracked_ids == {p.id for p in dense.particles if p.cracked}
    assert 0.2 < len(cracked_ids) / len(dense.particles) < 0.5
    # Cracks are thin: eroding them once with a 3x3 element leaves almost nothing.
    assert ndi.binary_erosion(crack, np.ones((3, 3))).sum() < 0.05 * crack.sum()

    sec = dense.labels == SECONDARY
    assert sec.sum() > 0.01 * sec.size
    with_sec = [p for p in dense.particles if p.secondary_fraction > 0]
    assert 0.2 < len(with_sec) / len(dense.particles) < 0.5
    assert set(np.unique(dense.instances[sec])) == {p.id for p in with_sec}
    p = max(with_sec, key=lambda q: q.radius)
    solid = (dense.instances == p.id) & (dense.labels != PORE)
    assert p.secondary_fraction == pytest.approx((sec & solid).sum() / solid.sum())


def test_binder_sits_near_particles(dense: Phantom2D) -> None:
    dist = ndi.distance_transform_edt(dense.instances == 0)
    binder = dense.labels == CARBON_BINDER
    pore = (dense.labels == PORE) & (dense.instances == 0)
    assert dist[binder].mean() < 0.7 * dist[pore].mean()


def test_no_binder_and_no_defects_when_disabled() -> None:
    res = electrode_labels_2d(
        (80, 80), area_fraction=0.3, radius_range_px=(4, 8), binder_fraction=0.0, seed=5
    )
    assert isinstance(res, ElectrodeLabels)
    assert set(np.unique(res.labels)) == {PORE, ACTIVE}
    assert not any(p.cracked or p.secondary_fraction for p in res.particles)
    np.testing.assert_array_equal(res.labels == ACTIVE, res.instances > 0)


def test_clustering_parameter_empties_tiles() -> None:
    kwargs = dict(area_fraction=0.2, radius_range_px=(4, 10), seed=7)
    uniform = electrode_labels_2d((256, 256), clustering=0.0, **kwargs)
    clustered = electrode_labels_2d((256, 256), clustering=1.0, **kwargs)
    assert empty_tile_fraction(clustered.labels) > empty_tile_fraction(uniform.labels) + 0.2


# --- optics ---------------------------------------------------------------------------------


def test_refractive_index_table_and_energy_scaling() -> None:
    labels = np.array([[PORE, CARBON_BINDER], [ACTIVE, SECONDARY]], np.int8)
    delta, beta = refractive_index(labels, 8000.0)
    assert delta.dtype == np.float32 and beta.dtype == np.float32
    assert delta[1, 0] == pytest.approx(MATERIALS[ACTIVE].delta_8kev, rel=1e-6)
    assert beta[1, 1] == pytest.approx(MATERIALS[SECONDARY].beta_8kev, rel=1e-6)
    assert delta[0, 0] == 0 and beta[0, 0] == 0
    assert delta[1, 1] > delta[1, 0] > delta[0, 1] > 0
    delta16, beta16 = refractive_index(labels, 16000.0)
    np.testing.assert_allclose(delta16, delta / 4, rtol=1e-6)
    np.testing.assert_allclose(beta16, beta / 16, rtol=1e-6)
    mu = neutron_attenuation(labels)
    assert mu[0, 1] == mu.max() and mu[0, 0] == 0
    assert wavelength_m(8000.0) == pytest.approx(1.5498e-10, rel=1e-4)


def test_transmission(dense: Phantom2D) -> None:
    energy = 8000.0
    t = dense.transmission(energy)
    assert t.dtype == np.complex64 and t.shape == dense.shape
    assert (np.abs(t) <= 1.0 + 1e-6).all()
    kt = 2 * np.pi / wavelength_m(energy) * dense.thickness
    active = dense.labels == ACTIVE
    expected = -kt * MATERIALS[ACTIVE].delta_8kev
    phase = np.angle(t[active])
    # Texture: within +-3 %, and not piecewise constant.
    assert np.all(np.abs(phase / expected - 1) <= 0.031)
    assert phase.std() > 1e-3 * abs(expected)
    assert np.abs(t[active]).mean() == pytest.approx(
        np.exp(-kt * MATERIALS[ACTIVE].beta_8kev), rel=0.01
    )
    assert np.allclose(t[dense.labels == PORE], 1.0)
    # Secondary phase is denser: more phase shift than active on average.
    assert np.angle(t[dense.labels == SECONDARY]).mean() < phase.mean()


# --- 3D ---------------------------------------------------------------------------------------


def test_3d_preset_full_size() -> None:
    ph = make_phantom("T-electrode", seed=0)
    assert isinstance(ph, Phantom3D)
    assert ph.shape == (128, 128, 128) and ph.labels.dtype == np.int8
    fr = ph.volume_fractions()
    assert abs(fr["active"] + fr["secondary"] - PRESETS["T-electrode"].fraction) <= 0.05
    assert fr["secondary"] > 0.005 and fr["carbon_binder"] == pytest.approx(0.15, abs=0.01)
    assert any(p.cracked for p in ph.particles)
    assert all(len(p.center) == 3 for p in ph.particles)


def test_3d_optics(volume: Phantom3D) -> None:
    delta, beta = volume.refractive_index(10000.0)
    assert delta.shape == beta.shape == volume.shape == (48, 48, 48)
    mu = volume.neutron_attenuation()
    assert mu.dtype == np.float32
    binder = volume.labels == CARBON_BINDER
    assert mu[binder].min() > mu[volume.labels == ACTIVE].max()
    assert (mu[volume.labels == PORE] == 0).all()


def test_electrode_labels_3d_direct() -> None:
    res = electrode_labels_3d(
        (24, 32, 40), volume_fraction=0.3, radius_range_px=(3, 5), crack_fraction=0.5, seed=2
    )
    assert res.labels.shape == (24, 32, 40)
    assert abs(particle_fraction(res.labels) - 0.3) < 0.03
    check_instances(res.labels, res.instances, res.particles)


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_case_names_valid_cases() -> None:
    with pytest.raises(ValueError, match=r"unknown phantom case 'P-foo'.*P-dense.*T-electrode"):
        make_phantom("P-foo")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(64, 64), area_fraction=0.0), r"area_fraction must lie in \(0, 1\)"),
        (dict(shape=(64, 64), area_fraction=1.2), r"area_fraction must lie in \(0, 1\)"),
        (dict(shape=(0, 64)), r"shape must be 2 positive integers"),
        (dict(shape=(64, 64, 64)), r"shape must be 2 positive integers"),
        (dict(shape=(64, 64), radius_range_px=(8, 4)), r"radius_range_px is inverted"),
        (dict(shape=(64, 64), radius_range_px=(0, 4)), r"radius_range_px must be positive"),
        (dict(shape=(64, 64), clustering=1.5), r"clustering must lie in \[0, 1\]"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = dict(area_fraction=0.3, radius_range_px=(3, 6), seed=0) | kwargs
    shape = args.pop("shape")
    with pytest.raises(ValueError, match=match):
        electrode_labels_2d(shape, **args)


def test_bad_3d_and_phantom_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"volume_fraction must lie in \(0, 1\)"):
        electrode_labels_3d((16, 16, 16), volume_fraction=1.0, radius_range_px=(2, 3), seed=0)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        make_phantom("P-dense", size=0)
    with pytest.raises(ValueError, match="energy_ev must be positive"):
        refractive_index(np.zeros((2, 2), np.int8), 0.0)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        refractive_index(np.full((2, 2), 4, np.int8), 8000.0)
