"""Particle characterization of a phase-label map (2D section or 3D volume).

Particles are the active phase (2) together with the secondary phase (3) inside them.

1. :func:`particle_instances` closes thin cracks (pore pixels, label 0, bridged by a
   morphological closing that may only add pore pixels, plus small pore holes) so a cracked
   particle stays one particle, then splits touching particles with a marker-controlled
   watershed on the distance transform (markers: h-maxima of the distance map).
2. :func:`particle_table` measures each particle: size, equivalent diameter, centroid,
   majority phase, secondary-phase fraction, crack flag.
3. :func:`sample_summary` aggregates: count, diameter statistics and histogram, phase
   fractions, porosity.

>>> inst = particle_instances(labels)                               # doctest: +SKIP
>>> table = particle_table(labels, inst, pixel_size=20e-9)          # doctest: +SKIP
>>> sample_summary(labels, inst, pixel_size=20e-9)["median_diameter_m"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi

__all__ = [
    "crop_to_measured",
    "particle_footprint",
    "particle_instances",
    "particle_table",
    "sample_summary",
]

PORE, CARBON_BINDER, ACTIVE, SECONDARY = 0, 1, 2, 3
_NUM_PHASES = 4


# --------------------------------------------------------------------------- validation


def _check_labels(labels: ArrayLike) -> NDArray[np.int8]:
    lab = np.asarray(labels)
    if lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {lab.dtype}")
    if lab.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {lab.shape}")
    if lab.size == 0:
        raise ValueError("labels is empty")
    if lab.min() < 0 or lab.max() >= _NUM_PHASES:
        raise ValueError(
            f"labels hold values in [{lab.min()}, {lab.max()}], outside 0..{_NUM_PHASES - 1}"
        )
    return lab.astype(np.int8, copy=False)


def _check_instances(instances: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.int32]:
    inst = np.asarray(instances)
    if inst.dtype == bool or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instances must be an integer array, got dtype {inst.dtype}")
    if inst.shape != shape:
        raise ValueError(f"instances shape {inst.shape} does not match labels shape {shape}")
    if inst.size and inst.min() < 0:
        raise ValueError("instances must be >= 0 (0 = background)")
    return inst.astype(np.int32, copy=False)


def _check_pixel_size(pixel_size: float) -> float:
    ps = float(pixel_size)
    if not (math.isfinite(ps) and ps > 0):
        raise ValueError(f"pixel_size must be a positive number of metres, got {pixel_size}")
    return ps


def _ball(radius: int, ndim: int) -> NDArray[np.bool_]:
    grid = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(ndim))]
    return sum(g * g for g in grid) <= radius * radius + 0.5  # type: ignore[return-value]


def _equivalent_diameter(size_px: NDArray | float, ndim: int) -> NDArray | float:
    if ndim == 2:
        return 2.0 * np.sqrt(np.asarray(size_px, float) / math.pi)
    return np.cbrt(6.0 * np.asarray(size_px, float) / math.pi)


# --------------------------------------------------------------------------- measured part


def crop_to_measured(
    labels: ArrayLike, measured: ArrayLike
) -> tuple[NDArray[np.int8], NDArray[np.bool_], tuple[slice, ...]]:
    """The bounding box of the measured pixels, unmeasured pixels set to pore.

    What a partially measured image (or volume) can be characterized on: particles are
    split and measured inside the box only, and unmeasured pixels count as pore so no
    particle extends into them.

    Parameters
    ----------
    labels : array_like of int, 2D or 3D
        Phase labels 0..3.
    measured : array_like of bool
        Pixels with data (e.g. coverage above a threshold), same shape.

    Returns
    -------
    (ndarray of int8, ndarray of bool, tuple of slice)
        The cropped labels, the measured mask inside the box and the box (slices of the
        input). Raises ``ValueError`` if nothing was measured.
    """
    lab = _check_labels(labels)
    mask = np.asarray(measured)
    if mask.shape != lab.shape:
        raise ValueError(f"measured shape {mask.shape} does not match labels shape {lab.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("nothing was measured (the measured mask is empty)")
    box = tuple(
        slice(int(idx[0]), int(idx[-1]) + 1)
        for idx in (
            np.flatnonzero(mask.any(axis=tuple(a for a in range(lab.ndim) if a != axis)))
            for axis in range(lab.ndim)
        )
    )
    crop = lab[box].copy()
    inside = mask[box]
    crop[~inside] = PORE
    return crop, inside, box


# --------------------------------------------------------------------------- instances


def particle_footprint(
    labels: ArrayLike, *, crack_closing_px: int = 2, max_hole_px: int | None = None
) -> NDArray[np.bool_]:
    """Particle pixels (phases 2 and 3) with the cracks inside particles filled.

    Parameters
    ----------
    labels : array_like of int, 2D or 3D
        Phase labels 0..3.
    crack_closing_px : int
        Radius of the disk/ball of the binary closing that bridges cracks up to about
        ``2 * crack_closing_px`` pixels wide. Only pore pixels (label 0) are added, so
        carbon-binder between particles is never swallowed. 0 disables the closing.
    max_hole_px : int, optional
        Enclosed pore holes up to this size are filled as well (default
        ``4 * (2 * crack_closing_px + 1) ** ndim``).

    Returns
    -------
    ndarray of bool
    """
    lab = _check_labels(labels)
    solid = (lab == ACTIVE) | (lab == SECONDARY)
    pore = lab == PORE
    r = int(crack_closing_px)
    if r < 0:
        raise ValueError(f"crack_closing_px must be >= 0, got {crack_closing_px}")
    footprint = solid.copy()
    if r > 0 and solid.any():
        # Pad by edge replication so particles cut by the border are not eroded there.
        padded = np.pad(solid, r + 1, mode="edge")
        closed = ndi.binary_closing(padded, structure=_ball(r, lab.ndim))
        inner = tuple(slice(r + 1, -(r + 1)) for _ in range(lab.ndim))
        footprint |= closed[inner] & pore
    if max_hole_px is None:
        max_hole_px = 4 * (2 * r + 1) ** lab.ndim
    if max_hole_px > 0:
        holes, n = ndi.label(~footprint)
        if n:
            sizes = np.bincount(holes.ravel())
            # Holes touching the border are not enclosed.
            border = np.zeros(n + 1, bool)
            for axis in range(lab.ndim):
                for index in (0, -1):
                    border[np.take(holes, index, axis=axis).ravel()] = True
            small = (sizes <= max_hole_px) & ~border
            small[0] = False
            footprint |= small[holes] & pore
    return footprint


def particle_instances(
    labels: ArrayLike,
    *,
    min_size: int = 20,
    separate_touching: bool = True,
    h: float = 1.0,
    compactness: float = 0.0,
    crack_closing_px: int = 2,
) -> NDArray[np.int32]:
    """Label the individual particles of a phase-label map.

    Parameters
    ----------
    labels : array_like of int, 2D or 3D
        Phase labels 0..3 (0 pore, 1 carbon-binder, 2 active, 3 secondary).
    min_size : int
        Particles smaller than this many pixels (voxels) are dropped.
    separate_touching : bool
        Split touching particles by a watershed of the distance transform; otherwise every
        connected component (face connectivity) is one particle.
    h : float
        Markers are the h-maxima of the Euclidean distance map: a neck between two particles
        must be at least ``h`` pixels narrower (in half-width) than the smaller particle's
        inscribed radius to split them. Larger values merge more.
    compactness : float
        Compactness of the watershed (:func:`skimage.segmentation.watershed`); 0 = classic.
    crack_closing_px : int
        See :func:`particle_footprint`.

    Returns
    -------
    ndarray of int32
        Particle id per pixel (1..N, consecutive), 0 outside particles. Crack pixels bridged
        by the closing belong to their particle.

    Notes
    -----
    The defaults were tuned on the full-size ``P-sparse``/``P-dense`` phantoms (radii 5 to
    32 px, cracks 1-2 px wide) and the 128^3 ``T-electrode`` volume (radii 4 to 12 px):
    counts within 1 % of the ground truth there. For particles with radii below about 4 px
    reduce ``crack_closing_px`` (to 1 or 0) and ``h`` (to 0.5), else neighbours merge.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    lab = _check_labels(labels)
    if int(min_size) < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if not h > 0:
        raise ValueError(f"h must be positive, got {h}")
    footprint = particle_footprint(lab, crack_closing_px=crack_closing_px)
    conn = ndi.generate_binary_structure(lab.ndim, 1)
    if not footprint.any():
        return np.zeros(lab.shape, np.int32)
    if separate_touching:
        # Distance with the image border treated as inside particles (edge replication), so
        # particles cut by the border keep their peak.
        pad = 1
        padded = np.pad(footprint, pad, mode="edge")
        inner = tuple(slice(pad, -pad) for _ in range(lab.ndim))
        dist = ndi.distance_transform_edt(padded)[inner]
        peaks = h_maxima(dist, h) & footprint
        markers, _ = ndi.label(peaks, structure=ndi.generate_binary_structure(lab.ndim, lab.ndim))
        inst = watershed(-dist, markers, mask=footprint, compactness=compactness)
        # Components without a marker (cannot happen with h-maxima, kept for safety).
        comps, _ = ndi.label(footprint & (inst == 0), structure=conn)
        if comps.max():
            inst = np.where(comps > 0, comps + inst.max(), inst)
    else:
        inst, _ = ndi.label(footprint, structure=conn)
    inst = inst.astype(np.int32)
    if min_size > 0:
        sizes = np.bincount(inst.ravel())
        too_small = sizes < min_size
        too_small[0] = False
        inst[too_small[inst]] = 0
    inst, _, _ = relabel_sequential(inst)
    return inst.astype(np.int32)


# --------------------------------------------------------------------------- measurements


def particle_table(
    labels: ArrayLike,
    instances: ArrayLike,
    pixel_size: float,
    *,
    crack_min_px: int = 3,
    crack_margin_px: int = 2,
) -> Any:
    """One row per particle of ``instances``.

    Parameters
    ----------
    labels : array_like of int, 2D or 3D
        Phase labels 0..3.
    instances : array_like of int
        Particle ids (0 = background), e.g. from :func:`particle_instances`.
    pixel_size : float
        Pixel (voxel) edge in metres.
    crack_min_px : int
        A particle is flagged ``cracked`` when at least this many pore pixels of its
        footprint lie more than ``crack_margin_px`` pixels inside it (in its erosion by a
        disk/ball of that radius), which ignores pore notches bridged along its outline
        and in the necks between touching particles.
    crack_margin_px : int
        See ``crack_min_px``.

    Returns
    -------
    pandas.DataFrame
        Columns: ``label`` (id), ``phase`` (majority of phases 2/3), ``area_px`` and
        ``area_m2`` (2D) or ``volume_px`` and ``volume_m3`` (3D), ``equivalent_diameter_px``,
        ``equivalent_diameter_m`` (diameter of the disk/sphere of the same size),
        ``centroid_px`` (tuple, pixel coordinates ``(y, x)`` / ``(z, y, x)``),
        ``secondary_fraction`` (phase-3 pixels / solid pixels), ``pore_px`` (pore
        pixels inside), ``cracked`` (bool), ``touches_border`` (bool: cut by the image
        edge, its size is then underestimated).
    """
    import pandas as pd

    lab = _check_labels(labels)
    inst = _check_instances(instances, lab.shape)
    ps = _check_pixel_size(pixel_size)
    ndim = lab.ndim
    margin = int(crack_margin_px)
    if margin < 1:
        raise ValueError(f"crack_margin_px must be >= 1, got {crack_margin_px}")
    size_name = "area" if ndim == 2 else "volume"
    unit = "m2" if ndim == 2 else "m3"
    columns = [
        "label",
        "phase",
        f"{size_name}_px",
        f"{size_name}_{unit}",
        "equivalent_diameter_px",
        "equivalent_diameter_m",
        "centroid_px",
        "secondary_fraction",
        "pore_px",
        "cracked",
        "touches_border",
    ]
    rows: list[dict[str, Any]] = []
    objects = ndi.find_objects(inst)
    for index, sl in enumerate(objects):
        if sl is None:
            continue
        pid = index + 1
        own = inst[sl] == pid
        sub = lab[sl]
        n = int(own.sum())
        n_active = int(np.count_nonzero(own & (sub == ACTIVE)))
        n_secondary = int(np.count_nonzero(own & (sub == SECONDARY)))
        n_solid = n_active + n_secondary
        interior = ndi.binary_erosion(np.pad(own, margin), structure=_ball(margin, ndim))
        interior = interior[tuple(slice(margin, -margin) for _ in range(ndim))]
        n_pore_inside = int(np.count_nonzero(interior & (sub == PORE)))
        coords = np.nonzero(own)
        centroid = tuple(float(c.mean() + s.start) for c, s in zip(coords, sl, strict=True))
        touches = any(s.start == 0 or s.stop == dim for s, dim in zip(sl, lab.shape, strict=True))
        diameter_px = float(_equivalent_diameter(n, ndim))
        rows.append(
            {
                "label": pid,
                "phase": SECONDARY if n_secondary > n_active else ACTIVE,
                f"{size_name}_px": n,
                f"{size_name}_{unit}": n * ps**ndim,
                "equivalent_diameter_px": diameter_px,
                "equivalent_diameter_m": diameter_px * ps,
                "centroid_px": centroid,
                "secondary_fraction": n_secondary / n_solid if n_solid else 0.0,
                "pore_px": int(np.count_nonzero(own & (sub == PORE))),
                "cracked": n_pore_inside >= int(crack_min_px),
                "touches_border": bool(touches),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def sample_summary(
    labels: ArrayLike,
    instances: ArrayLike,
    pixel_size: float,
    *,
    bins: int | ArrayLike = 10,
    exclude_border: bool = False,
) -> dict[str, Any]:
    """Sample-level statistics of the particles and phases.

    Parameters
    ----------
    labels, instances, pixel_size
        As in :func:`particle_table`.
    bins : int or array_like
        Histogram bins of the equivalent diameter: a number of equal bins between 0 and the
        largest diameter, or bin edges in metres.
    exclude_border : bool
        Leave particles cut by the image edge out of the particle statistics (not out of
        the phase fractions).

    Returns
    -------
    dict
        ``count``, ``median_diameter_m``, ``mean_diameter_m`` (NaN without particles),
        ``diameter_histogram`` (``{"counts": [...], "edges_m": [...]}``),
        ``phase_fractions`` (pixel fraction per phase name), ``porosity`` (pore fraction,
        cracks included), ``solid_fraction`` (phases 2 + 3), ``cracked_fraction`` (fraction
        of particles flagged cracked), ``mean_secondary_fraction``, ``pixel_size_m`` and
        ``table`` (the :func:`particle_table` DataFrame used).
    """
    lab = _check_labels(labels)
    table = particle_table(lab, instances, pixel_size)
    if exclude_border and len(table):
        table = table[~table["touches_border"]].reset_index(drop=True)
    diam = table["equivalent_diameter_m"].to_numpy(float)
    if np.ndim(bins) == 0:
        nbins = int(bins)  # type: ignore[arg-type]
        if nbins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        top = float(diam.max()) if diam.size else 1.0
        edges = np.linspace(0.0, top, nbins + 1)
    else:
        edges = np.asarray(bins, float)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("bin edges must be a 1D increasing sequence of >= 2 values")
    counts, edges = np.histogram(diam, bins=edges)
    names = ("pore", "carbon_binder", "active", "secondary")
    frac = np.bincount(lab.ravel().astype(np.intp), minlength=_NUM_PHASES) / lab.size
    return {
        "count": int(len(table)),
        "median_diameter_m": float(np.median(diam)) if diam.size else float("nan"),
        "mean_diameter_m": float(np.mean(diam)) if diam.size else float("nan"),
        "diameter_histogram": {"counts": counts.tolist(), "edges_m": edges.tolist()},
        "phase_fractions": {name: float(f) for name, f in zip(names, frac, strict=True)},
        "porosity": float(frac[PORE]),
        "solid_fraction": float(frac[ACTIVE] + frac[SECONDARY]),
        "cracked_fraction": float(table["cracked"].mean()) if len(table) else float("nan"),
        "mean_secondary_fraction": (
            float(table["secondary_fraction"].mean()) if len(table) else float("nan")
        ),
        "pixel_size_m": float(pixel_size),
        "table": table,
    }
