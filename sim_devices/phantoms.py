"""Seeded battery-electrode microstructure phantoms with ground truth.

The phantoms mimic a cathode cross-section (2D thin section, for ptychography) or volume
(3D, for tomography): active-material particles (possibly cracked, possibly holding a
denser secondary phase), a carbon-binder domain clinging to the particle surfaces, and pore.
Everything is a pure function of its arguments and the integer ``seed``.

Phase labels
------------
=====  ==================  =============================================
label  name                meaning
=====  ==================  =============================================
0      ``pore``            pore / vacuum (also the cracks inside particles)
1      ``carbon_binder``   carbon-binder domain
2      ``active``          active-material particles (e.g. NMC)
3      ``secondary``       secondary phase inside particles (rock-salt-like)
=====  ==================  =============================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ACTIVE",
    "CARBON_BINDER",
    "HC_EV_M",
    "MATERIALS",
    "PHASE_NAMES",
    "PORE",
    "PRESETS",
    "SECONDARY",
    "ElectrodeLabels",
    "Material",
    "Particle",
    "Phantom2D",
    "Phantom3D",
    "PhantomPreset",
    "electrode_labels_2d",
    "electrode_labels_3d",
    "make_phantom",
    "neutron_attenuation",
    "phase_fractions",
    "refractive_index",
    "wavelength_m",
]

PORE = 0
CARBON_BINDER = 1
ACTIVE = 2
SECONDARY = 3
PHASE_NAMES: tuple[str, ...] = ("pore", "carbon_binder", "active", "secondary")

#: h*c in eV*m: wavelength [m] = HC_EV_M / energy [eV].
HC_EV_M = 1.2398419843320026e-6

_REFERENCE_EV = 8000.0
_MAX_ASPECT = 1.15  # largest semi-axis ratio of the (slightly) elliptical particles
_PROPOSALS = 64  # candidate centres tested per batch before the exact search
_PROPOSAL_BATCHES = 2
_MAX_ROUNDS = 25  # bounded number of radius batches before placement gives up


@dataclass(frozen=True)
class Material:
    """Optical constants of one phase.

    Attributes
    ----------
    delta_8kev : float
        X-ray refractive-index decrement at 8 keV.
    beta_8kev : float
        X-ray absorption index at 8 keV.
    neutron_mu : float
        Thermal-neutron linear attenuation coefficient, 1/m.
    """

    delta_8kev: float
    beta_8kev: float
    neutron_mu: float


#: Plausible (order-of-magnitude, not for quantitative work) constants per phase label.
#: X-ray: NMC-like active material, a PVDF/carbon-black binder domain and a denser
#: rock-salt-like secondary phase. Neutrons (natural Li, thermal): the hydrogen-rich binder
#: attenuates most through incoherent scattering, then the Li/Co-containing active phase.
MATERIALS: dict[int, Material] = {
    PORE: Material(delta_8kev=0.0, beta_8kev=0.0, neutron_mu=0.0),
    CARBON_BINDER: Material(delta_8kev=5.0e-6, beta_8kev=1.0e-8, neutron_mu=450.0),
    ACTIVE: Material(delta_8kev=2.4e-5, beta_8kev=2.5e-6, neutron_mu=300.0),
    SECONDARY: Material(delta_8kev=3.0e-5, beta_8kev=3.5e-6, neutron_mu=200.0),
}


def wavelength_m(energy_ev: float) -> float:
    """Photon wavelength in metres for an energy in eV (h*c/E)."""
    energy_ev = float(energy_ev)
    if not energy_ev > 0:
        raise ValueError(f"energy_ev must be positive, got {energy_ev}")
    return HC_EV_M / energy_ev


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(PHASE_NAMES)):
        raise ValueError(f"labels must lie in 0..{len(PHASE_NAMES) - 1}")
    return labels


def refractive_index(labels: np.ndarray, energy_ev: float) -> tuple[np.ndarray, np.ndarray]:
    """X-ray refractive index ``n = 1 - delta + i*beta`` of a label image.

    The 8 keV table values in :data:`MATERIALS` are scaled as ``delta ~ E**-2`` and
    ``beta ~ E**-4``. This is an approximation valid only away from absorption edges
    (e.g. the Co, Ni and Mn K edges between 6.5 and 8.4 keV are ignored).

    Parameters
    ----------
    labels : ndarray of int
        Phase labels in 0..3, any shape.
    energy_ev : float
        Photon energy in eV.

    Returns
    -------
    delta, beta : ndarray of float32
        Arrays of the same shape as ``labels``.
    """
    labels = _check_labels(labels)
    energy_ev = float(energy_ev)
    if not energy_ev > 0:
        raise ValueError(f"energy_ev must be positive, got {energy_ev}")
    ratio = _REFERENCE_EV / energy_ev
    deltas = np.array([MATERIALS[p].delta_8kev for p in range(len(PHASE_NAMES))]) * ratio**2
    betas = np.array([MATERIALS[p].beta_8kev for p in range(len(PHASE_NAMES))]) * ratio**4
    return deltas.astype(np.float32)[labels], betas.astype(np.float32)[labels]


def neutron_attenuation(labels: np.ndarray) -> np.ndarray:
    """Thermal-neutron linear attenuation coefficient (1/m, float32) of a label image."""
    labels = _check_labels(labels)
    mus = np.array([MATERIALS[p].neutron_mu for p in range(len(PHASE_NAMES))], np.float32)
    return mus[labels]


def phase_fractions(labels: np.ndarray) -> dict[str, float]:
    """Fraction of pixels (voxels) of each phase, keyed by :data:`PHASE_NAMES`."""
    labels = _check_labels(labels)
    counts = np.bincount(labels.ravel().astype(np.intp), minlength=len(PHASE_NAMES))
    total = max(int(labels.size), 1)
    return {name: float(counts[i]) / total for i, name in enumerate(PHASE_NAMES)}


# --------------------------------------------------------------------------------------
# Label generation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Particle:
    """Ground truth of one active-material particle.

    Attributes
    ----------
    id : int
        Instance label (>= 1) of the particle in ``ElectrodeLabels.instances``.
    center : tuple of float
        Centre in pixel (voxel) coordinates, ``(y, x)`` or ``(z, y, x)``. May lie close to
        the border; the particle can be cut by the image edge.
    radius : float
        Equivalent radius (of the disk/sphere with the same area/volume), pixels.
    cracked : bool
        Whether a crack (pore pixels) runs through the particle.
    secondary_fraction : float
        Fraction of the particle's solid pixels that are secondary phase (label 3).
    """

    id: int
    center: tuple[float, ...]
    radius: float
    cracked: bool
    secondary_fraction: float


@dataclass(frozen=True, eq=False)
class ElectrodeLabels:
    """Result of :func:`electrode_labels_2d` / :func:`electrode_labels_3d`.

    Attributes
    ----------
    labels : ndarray of int8
        Phase labels 0..3.
    instances : ndarray of int32
        Particle id per pixel, 0 outside particles. Crack and secondary-phase pixels inside
        a particle carry its id.
    particles : list of Particle
        One entry per particle, ``particles[i].id == i + 1``.
    """

    labels: np.ndarray
    instances: np.ndarray
    particles: list[Particle]


def _check_shape(shape: Any, ndim: int) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise ValueError(f"shape must be a sequence of {ndim} positive integers") from exc
    if len(dims) != ndim or any(d <= 0 for d in dims):
        raise ValueError(f"shape must be {ndim} positive integers, got {tuple(shape)}")
    return dims


def _check_fraction(name: str, value: float, *, open_interval: bool = False) -> float:
    value = float(value)
    ok = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _check_radius_range(radius_range: Any) -> tuple[float, float]:
    try:
        r_min, r_max = (float(r) for r in radius_range)
    except (TypeError, ValueError) as exc:
        raise ValueError("radius_range_px must be a pair (r_min, r_max)") from exc
    if not r_min > 0:
        raise ValueError(f"radius_range_px must be positive, got {radius_range}")
    if r_min > r_max:
        raise ValueError(f"radius_range_px is inverted: r_min={r_min} > r_max={r_max}")
    return r_min, r_max


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """Random rotation matrix; columns are the principal axes."""
    if ndim == 2:
        angle = rng.uniform(0.0, np.pi)
        c, s = math.cos(angle), math.sin(angle)
        return np.array([[c, -s], [s, c]])
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def _unit_vector(rng: np.random.Generator, ndim: int) -> np.ndarray:
    v = rng.standard_normal(ndim)
    return v / np.linalg.norm(v)


def _window(
    center: np.ndarray, half: int, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], list[np.ndarray]]:
    """Slices of a box around ``center`` and broadcastable offsets from the centre."""
    slices, offsets = [], []
    ndim = len(shape)
    for axis, (c, n) in enumerate(zip(center, shape, strict=True)):
        lo, hi = max(int(c) - half, 0), min(int(c) + half + 1, n)
        slices.append(slice(lo, hi))
        view = [1] * ndim
        view[axis] = hi - lo
        offsets.append((np.arange(lo, hi, dtype=np.float64) - c).reshape(view))
    return tuple(slices), offsets


def _cluster_weights(
    shape: tuple[int, ...], clustering: float, rng: np.random.Generator, r_typ: float
) -> np.ndarray:
    """Probability field for particle centres: a mixture uniform / Gaussian clusters.

    ``clustering`` is the probability that a centre is drawn from the cluster part.
    """
    n_total = float(np.prod(shape))
    uniform = np.full(shape, 1.0 / n_total)
    if clustering <= 0.0:
        return uniform
    edge = float(np.mean(shape))
    n_clusters = int(rng.integers(3, 6))
    sigma = max(0.07 * edge, 2.0 * r_typ)
    bumps = np.zeros(shape)
    for _ in range(n_clusters):
        centre = rng.uniform(0.15, 0.85, len(shape)) * np.array(shape)
        g = np.ones([1] * len(shape))
        for axis, (c, n) in enumerate(zip(centre, shape, strict=True)):
            view = [1] * len(shape)
            view[axis] = n
            x = np.arange(n, dtype=np.float64)
            g = g * np.exp(-0.5 * ((x - c) / sigma) ** 2).reshape(view)
        bumps += g
    bumps /= bumps.sum()
    # A tiny floor keeps every pixel reachable once the clusters are full.
    return (1.0 - clustering) * uniform + clustering * bumps + 1e-6 / n_total


def _sample_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float) -> np.ndarray:
    """Log-normal radii centred (geometrically) in the range, clipped to it."""
    if r_max <= r_min:
        return np.full(n, r_min)
    mu = 0.5 * (math.log(r_min) + math.log(r_max))
    sigma = 0.25 * (math.log(r_max) - math.log(r_min))
    return np.clip(rng.lognormal(mu, sigma, n), r_min, r_max)


def _crack_mask(rng: np.random.Generator, offsets: list[np.ndarray], radius: float) -> np.ndarray:
    """A thin (1-2 px), slightly wavy line (2D) or slab (3D) through a particle."""
    ndim = len(offsets)
    normal = _unit_vector(rng, ndim)
    along_dir = _unit_vector(rng, ndim)
    along_dir -= normal * float(along_dir @ normal)
    along_dir /= max(np.linalg.norm(along_dir), 1e-12)
    shift = _unit_vector(rng, ndim) * rng.uniform(0.0, 0.3 * radius)
    rel = [o - s for o, s in zip(offsets, shift, strict=True)]
    dist = sum(n * r for n, r in zip(normal, rel, strict=True))
    along = sum(u * r for u, r in zip(along_dir, rel, strict=True))
    amplitude = min(rng.uniform(0.0, 0.15 * radius), 2.0)
    period = rng.uniform(1.0, 2.0) * radius
    phase = rng.uniform(0.0, 2.0 * np.pi)
    dist = dist - amplitude * np.sin(2.0 * np.pi * along / period + phase)
    width = float(rng.choice([1.0, 2.0]))
    mask = np.abs(dist) <= 0.5 * width
    if rng.random() < 0.5:  # partial crack, running in from one side of the particle
        mask &= along >= rng.uniform(-0.3 * radius, 0.3 * radius)
    return mask


def _electrode_labels(
    shape: tuple[int, ...],
    fraction: float,
    radius_range: tuple[float, float],
    clustering: float,
    crack_fraction: float,
    secondary_fraction: float,
    binder_fraction: float,
    seed: int,
) -> ElectrodeLabels:
    ndim = len(shape)
    rng = np.random.default_rng(seed)
    r_min, r_max = radius_range
    r_typ = math.sqrt(r_min * r_max)
    n_total = int(np.prod(shape))
    target = fraction * n_total

    weights = _cluster_weights(shape, clustering, rng, r_typ)
    cdf = np.cumsum(weights.ravel())
    flat_weights = weights.ravel()

    instances = np.zeros(shape, np.int32)
    crack = np.zeros(shape, bool)
    # Distance of each pixel to the nearest placed particle's circumscribed sphere; a new
    # particle of equivalent radius r may sit where free >= r (touching allowed).
    free = np.full(shape, np.inf, np.float32)
    free_flat = free.reshape(-1)

    unit_volume = math.pi if ndim == 2 else 4.0 * math.pi / 3.0
    mean_size = unit_volume * r_typ**ndim
    cap = r_max  # no particle larger than this can still be placed
    candidates: np.ndarray | None = None
    count = 0.0
    particles: list[Particle] = []

    done = False
    for _ in range(_MAX_ROUNDS):
        if done or count >= target:
            break
        # Draw radii until their total size covers the deficit, then place largest first.
        n_new = max(8, math.ceil((target - count) / mean_size))
        radii = _sample_radii(rng, n_new, r_min, r_max)
        sizes = np.cumsum(unit_volume * radii**ndim)
        radii = np.sort(radii[: int(np.searchsorted(sizes, target - count)) + 1])[::-1]
        for r in radii:
            if count >= target:
                break
            r = min(float(r), cap)
            pos = None
            for _ in range(_PROPOSAL_BATCHES):
                idx = np.searchsorted(cdf, rng.random(_PROPOSALS) * cdf[-1])
                idx = np.minimum(idx, n_total - 1)
                ok = np.flatnonzero(free_flat[idx] >= r)
                if ok.size:
                    pos = int(idx[ok[0]])
                    break
            if pos is None:  # exact search among the remaining free pixels
                if candidates is None:
                    candidates = np.flatnonzero(free_flat >= r_min)
                else:
                    candidates = candidates[free_flat[candidates] >= r_min]
                if candidates.size == 0:
                    done = True
                    break
                dvals = free_flat[candidates]
                valid = candidates[dvals >= r]
                if valid.size == 0:
                    cap = float(dvals.max())
                    r = cap
                    valid = candidates[dvals >= r]
                p = flat_weights[valid]
                cum = np.cumsum(p)
                pos = int(valid[min(np.searchsorted(cum, rng.random() * cum[-1]), valid.size - 1)])
            centre = np.array(np.unravel_index(pos, shape), dtype=np.float64)

            factors = np.exp(rng.uniform(-0.5, 0.5, ndim) * math.log(_MAX_ASPECT))
            axes = r * factors / np.exp(np.mean(np.log(factors)))
            rot = _random_rotation(rng, ndim)
            semi_major = float(axes.max())
            is_cracked = rng.random() < crack_fraction

            sl, offs = _window(centre, math.ceil(semi_major) + 1, shape)
            quad = 0.0
            for j in range(ndim):
                proj = sum(rot[i, j] * offs[i] for i in range(ndim))
                quad = quad + (proj / axes[j]) ** 2
            own = (quad <= 1.0) & (instances[sl] == 0)
            n_own = int(own.sum())
            if n_own == 0:
                continue
            pid = len(particles) + 1
            instances[sl][own] = pid
            n_crack = 0
            if is_cracked:
                cm = _crack_mask(rng, offs, r) & own
                n_crack = int(cm.sum())
                if n_crack >= n_own:  # keep at least some solid in tiny particles
                    n_crack = 0
                else:
                    crack[sl] |= cm
            count += n_own - n_crack
            particles.append(
                Particle(
                    id=pid,
                    center=tuple(float(c) for c in centre),
                    radius=r,
                    cracked=n_crack > 0,
                    secondary_fraction=0.0,
                )
            )
            # Exclusion zone of the new particle (only distances up to ``cap`` matter).
            sl2, offs2 = _window(centre, math.ceil(semi_major + cap) + 1, shape)
            dist = np.sqrt(sum(o * o for o in offs2)) - semi_major
            np.minimum(free[sl2], dist.astype(np.float32), out=free[sl2])

    labels = np.where(instances > 0, ACTIVE, PORE).astype(np.int8)

    # Secondary phase: blobs of a smooth random field, thresholded per particle.
    if secondary_fraction > 0 and particles:
        blob = ndi.gaussian_filter(rng.standard_normal(shape), sigma=max(1.0, 0.2 * r_typ))
        objects = ndi.find_objects(instances)
        for k, part in enumerate(particles):
            chosen = rng.random() < secondary_fraction
            target_f = rng.uniform(0.1, 0.35)
            sl = objects[k]
            if not chosen or sl is None:
                continue
            solid = (instances[sl] == part.id) & ~crack[sl]
            n_solid = int(solid.sum())
            if n_solid < 4:
                continue
            vals = blob[sl][solid]
            thr = np.quantile(vals, 1.0 - target_f)
            sec = solid & (blob[sl] > thr)
            labels[sl][sec] = SECONDARY
            particles[k] = Particle(
                id=part.id,
                center=part.center,
                radius=part.radius,
                cracked=part.cracked,
                secondary_fraction=float(sec.sum()) / n_solid,
            )

    labels[crack] = PORE

    # Carbon-binder: smooth noise minus a distance-to-particle term, top-k of the non-solid.
    outside = instances == 0
    n_binder = min(int(round(binder_fraction * n_total)), int(outside.sum()))
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
    if n_binder > 0:
        noise /= max(float(noise.std()), 1e-12)
        if particles:
            dist_out = ndi.distance_transform_edt(outside)
        else:
            dist_out = np.zeros(shape)
        score = noise - dist_out / max(1.0, 0.4 * r_typ)
        score[~outside] = -np.inf
        flat = score.ravel()
        top = np.argpartition(flat, n_total - n_binder)[n_total - n_binder :]
        labels.reshape(-1)[top] = CARBON_BINDER

    return ElectrodeLabels(labels=labels, instances=instances, particles=particles)


def electrode_labels_2d(
    shape: tuple[int, int],
    *,
    area_fraction: float,
    radius_range_px: tuple[float, float],
    clustering: float = 0.0,
    crack_fraction: float = 0.0,
    secondary_fraction: float = 0.0,
    binder_fraction: float = 0.15,
    seed: int,
) -> ElectrodeLabels:
    """Label image of a 2D electrode section.

    Slightly elliptical particles (aspect ratio <= 1.15) with log-normal equivalent radii in
    ``radius_range_px`` are placed by random sequential addition, largest first, without
    overlapping (touching is allowed; a few boundary pixels may be shared, they go to the
    earlier particle) until the particle area fraction (phases 2 + 3) reaches
    ``area_fraction``, or until no particle fits any more. Then cracks, secondary phase and
    carbon-binder are added.

    Parameters
    ----------
    shape : (int, int)
        ``(ny, nx)``.
    area_fraction : float
        Target area fraction of particles (labels 2 and 3), in (0, 1). Once the big
        particles jam, the gaps are filled with the largest particles that still fit (down
        to ``r_min``); targets above about 0.7 may not be reached, the result then stays
        below.
    radius_range_px : (float, float)
        ``(r_min, r_max)`` equivalent particle radius in pixels.
    clustering : float
        0 = uniformly random centres, 1 = all centres drawn around 3-5 Gaussian cluster
        centres, leaving large empty regions. In between: the probability that a centre is
        drawn from the clusters.
    crack_fraction : float
        Fraction of particles crossed by a thin (1-2 px) crack, labelled pore (0).
    secondary_fraction : float
        Fraction of particles holding blob-like secondary-phase inclusions (label 3), each
        covering 10-35 % of its particle.
    binder_fraction : float
        Area fraction of carbon-binder (label 1), placed preferentially near particle
        surfaces, never on particles; clipped to the area left by the particles.
    seed : int
        Seed of the random generator; equal seeds give identical results.

    Returns
    -------
    ElectrodeLabels
        ``labels`` (int8), ``instances`` (int32) and the list of ``particles``.
    """
    return _electrode_labels(
        _check_shape(shape, 2),
        _check_fraction("area_fraction", area_fraction, open_interval=True),
        _check_radius_range(radius_range_px),
        _check_fraction("clustering", clustering),
        _check_fraction("crack_fraction", crack_fraction),
        _check_fraction("secondary_fraction", secondary_fraction),
        _check_fraction("binder_fraction", binder_fraction),
        seed,
    )


def electrode_labels_3d(
    shape: tuple[int, int, int],
    *,
    volume_fraction: float,
    radius_range_px: tuple[float, float],
    clustering: float = 0.0,
    crack_fraction: float = 0.0,
    secondary_fraction: float = 0.0,
    binder_fraction: float = 0.15,
    seed: int,
) -> ElectrodeLabels:
    """Label volume of a 3D electrode, ``shape = (nz, ny, nx)``.

    Same as :func:`electrode_labels_2d` with slightly ellipsoidal particles, planar crack
    slabs and ``volume_fraction`` in place of ``area_fraction``. Sequential addition of
    spheres jams at lower fractions than in 2D: targets above about 0.55 may not be reached.
    Particle centres are ``(z, y, x)``.
    """
    return _electrode_labels(
        _check_shape(shape, 3),
        _check_fraction("volume_fraction", volume_fraction, open_interval=True),
        _check_radius_range(radius_range_px),
        _check_fraction("clustering", clustering),
        _check_fraction("crack_fraction", crack_fraction),
        _check_fraction("secondary_fraction", secondary_fraction),
        _check_fraction("binder_fraction", binder_fraction),
        seed,
    )


# --------------------------------------------------------------------------------------
# Phantoms
# --------------------------------------------------------------------------------------


def _read_only(array: np.ndarray) -> np.ndarray:
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


def _texture(shape: tuple[int, ...], seed: int, amplitude: float) -> np.ndarray:
    """Smooth multiplicative density texture ``1 + amplitude * n``, ``|n| <= 1`` (float32)."""
    if amplitude == 0:
        return np.ones(shape, np.float32)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7E57]))
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma=4.0, mode="wrap")
    noise /= max(float(np.abs(noise).max()), 1e-12)
    return (1.0 + amplitude * noise).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Phantom2D:
    """A thin electrode section with ground truth.

    Attributes
    ----------
    name : str
        Preset name (or any tag).
    seed : int
        Seed used to generate it (also seeds the density texture).
    labels : ndarray of int8, (ny, nx)
        Ground-truth phase labels 0..3 (read-only).
    instances : ndarray of int32, (ny, nx)
        Ground-truth particle ids, 0 outside particles (read-only).
    particles : list of Particle
        Per-particle ground truth.
    pixel_size : float
        Pixel edge, metres.
    thickness : float
        Section thickness along the beam, metres.
    texture_amplitude : float
        Relative amplitude of the smooth density variation applied to delta and beta
        within every phase (the labels are not affected).
    """

    name: str
    seed: int
    labels: np.ndarray
    instances: np.ndarray
    particles: list[Particle]
    pixel_size: float
    thickness: float
    texture_amplitude: float = 0.03

    def __post_init__(self) -> None:
        labels = _check_labels(self.labels)
        if labels.ndim != 2 or np.shape(self.instances) != labels.shape:
            raise ValueError("labels and instances must be 2D arrays of the same shape")
        object.__setattr__(self, "labels", _read_only(labels))
        object.__setattr__(self, "instances", _read_only(self.instances))

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return self.labels.shape  # type: ignore[return-value]

    @cached_property
    def texture(self) -> np.ndarray:
        """Multiplicative density texture (float32, values within 1 +- texture_amplitude)."""
        return _read_only(_texture(self.shape, self.seed, self.texture_amplitude))

    def refractive_index(self, energy_ev: float) -> tuple[np.ndarray, np.ndarray]:
        """Textured ``(delta, beta)`` maps (float32) at ``energy_ev``."""
        delta, beta = refractive_index(self.labels, energy_ev)
        return delta * self.texture, beta * self.texture

    def transmission(self, energy_ev: float) -> np.ndarray:
        """Complex transmission ``exp(-k * thickness * (beta + i*delta))`` (complex64)."""
        delta, beta = self.refractive_index(energy_ev)
        k = 2.0 * np.pi / wavelength_m(energy_ev)
        kt = k * self.thickness
        return np.exp(-kt * (beta.astype(np.float64) + 1j * delta)).astype(np.complex64)

    def area_fractions(self) -> dict[str, float]:
        """Area fraction of each phase, keyed by phase name."""
        return phase_fractions(self.labels)


@dataclass(frozen=True, eq=False)
class Phantom3D:
    """An electrode volume with ground truth, ``(nz, ny, nx)``, z vertical.

    Attributes are as in :class:`Phantom2D`, with ``voxel_size`` (metres) in place of
    ``pixel_size`` and ``thickness``.
    """

    name: str
    seed: int
    labels: np.ndarray
    instances: np.ndarray
    particles: list[Particle]
    voxel_size: float
    texture_amplitude: float = 0.03

    def __post_init__(self) -> None:
        labels = _check_labels(self.labels)
        if labels.ndim != 3 or np.shape(self.instances) != labels.shape:
            raise ValueError("labels and instances must be 3D arrays of the same shape")
        object.__setattr__(self, "labels", _read_only(labels))
        object.__setattr__(self, "instances", _read_only(self.instances))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nz, ny, nx)``."""
        return self.labels.shape  # type: ignore[return-value]

    @cached_property
    def texture(self) -> np.ndarray:
        """Multiplicative density texture (float32, values within 1 +- texture_amplitude)."""
        return _read_only(_texture(self.shape, self.seed, self.texture_amplitude))

    def refractive_index(self, energy_ev: float) -> tuple[np.ndarray, np.ndarray]:
        """Textured ``(delta, beta)`` volumes (float32) at ``energy_ev``."""
        delta, beta = refractive_index(self.labels, energy_ev)
        return delta * self.texture, beta * self.texture

    def neutron_attenuation(self) -> np.ndarray:
        """Textured neutron linear attenuation coefficient, 1/m (float32)."""
        return neutron_attenuation(self.labels) * self.texture

    def volume_fractions(self) -> dict[str, float]:
        """Volume fraction of each phase, keyed by phase name."""
        return phase_fractions(self.labels)


# --------------------------------------------------------------------------------------
# Benchmark presets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomPreset:
    """Parameters of a benchmark phantom; radii are in pixels at edge length ``size``."""

    ndim: int
    size: int
    fraction: float
    radius_range_px: tuple[float, float]
    clustering: float
    crack_fraction: float
    secondary_fraction: float
    binder_fraction: float
    pixel_size: float = 20e-9
    description: str = ""


PRESETS: dict[str, PhantomPreset] = {
    "P-sparse": PhantomPreset(
        ndim=2,
        size=384,
        fraction=0.25,
        radius_range_px=(6.0, 32.0),
        clustering=1.0,
        crack_fraction=0.1,
        secondary_fraction=0.1,
        binder_fraction=0.08,
        description="clustered particles of mixed sizes, ~25 % particles, large empty areas",
    ),
    "P-dense": PhantomPreset(
        ndim=2,
        size=384,
        fraction=0.55,
        radius_range_px=(5.0, 15.0),
        clustering=0.0,
        crack_fraction=0.35,
        secondary_fraction=0.35,
        binder_fraction=0.15,
        description="densely packed smaller particles, ~55 %, cracks and secondary phase",
    ),
    "T-electrode": PhantomPreset(
        ndim=3,
        size=128,
        fraction=0.5,
        radius_range_px=(4.0, 12.0),
        clustering=0.2,
        crack_fraction=0.2,
        secondary_fraction=0.25,
        binder_fraction=0.15,
        pixel_size=0.5e-6,
        description="128^3 electrode volume, ~50 % active material, for tomography",
    ),
}

_SECTION_THICKNESS = 1e-6


def make_phantom(
    case: str, seed: int = 0, *, size: int | None = None, pixel_size: float | None = None
) -> Phantom2D | Phantom3D:
    """Build a benchmark phantom.

    Parameters
    ----------
    case : str
        One of :data:`PRESETS`: ``"P-sparse"``, ``"P-dense"`` (2D sections, 384 x 384,
        1 um thick) or ``"T-electrode"`` (128^3 volume).
    seed : int
        Random seed; the phantom is a pure function of ``(case, seed, size)``.
    size : int, optional
        Edge length overriding the preset's (e.g. 96 for fast tests); particle radii are
        scaled proportionally (to at least 1.5 px).
    pixel_size : float, optional
        Pixel (voxel) edge in metres; default the preset's (20 nm for the 2D sections,
        0.5 um for the tomography volume, whose X-ray contrast at 25 keV then is a few
        tens of percent).

    Returns
    -------
    Phantom2D or Phantom3D
    """
    if case not in PRESETS:
        raise ValueError(f"unknown phantom case {case!r}; valid cases: {sorted(PRESETS)}")
    preset = PRESETS[case]
    edge = preset.size if size is None else int(size)
    if edge <= 0:
        raise ValueError(f"size must be a positive integer, got {size}")
    if pixel_size is None:
        pixel_size = preset.pixel_size
    if not float(pixel_size) > 0:
        raise ValueError(f"pixel_size must be positive, got {pixel_size}")
    scale = edge / preset.size
    r_min = max(1.5, preset.radius_range_px[0] * scale)
    r_max = max(r_min, preset.radius_range_px[1] * scale)
    common = dict(
        radius_range_px=(r_min, r_max),
        clustering=preset.clustering,
        crack_fraction=preset.crack_fraction,
        secondary_fraction=preset.secondary_fraction,
        binder_fraction=preset.binder_fraction,
        seed=seed,
    )
    if preset.ndim == 2:
        result = electrode_labels_2d((edge, edge), area_fraction=preset.fraction, **common)
        return Phantom2D(
            name=case,
            seed=seed,
            labels=result.labels,
            instances=result.instances,
            particles=result.particles,
            pixel_size=float(pixel_size),
            thickness=_SECTION_THICKNESS,
        )
    result = electrode_labels_3d((edge,) * 3, volume_fraction=preset.fraction, **common)
    return Phantom3D(
        name=case,
        seed=seed,
        labels=result.labels,
        instances=result.instances,
        particles=result.particles,
        voxel_size=float(pixel_size),
    )
