"""Figures people would rather see than read: phantoms, diffraction patterns, projections.

Functions take arrays (or phantoms) and a path and write a PNG; they return the path.
They draw on :class:`matplotlib.figure.Figure` objects, not pyplot, so they work from any
thread and never change the session's backend (a live window stays a window).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

__all__ = [
    "PHASE_COLORS",
    "draw_scan_panels",
    "plot_adaptive_comparison",
    "plot_diffraction_patterns",
    "plot_particle_sizes",
    "plot_phantom",
    "plot_projections",
]

#: pore, carbon-binder, active, secondary
PHASE_COLORS = ListedColormap(["#1b1b1b", "#6baed6", "#fdae6b", "#d62728"])
PHASE_LABELS = ("pore", "carbon-binder", "active", "secondary")


def _label_legend(ax) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=PHASE_COLORS(i), label=name) for i, name in enumerate(PHASE_LABELS)]
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)


def plot_phantom(phantom, path: str | Path, *, energy_ev: float = 8000.0) -> Path:
    """Phase, amplitude and ground-truth labels of a 2D phantom, or slices of a 3D one."""
    path = Path(path)
    labels = np.asarray(phantom.labels)
    if labels.ndim == 2:
        transmission = phantom.transmission(energy_ev)
        panels = [
            (np.angle(transmission), "phase (rad)", "gray"),
            (np.abs(transmission), "amplitude", "gray"),
            (labels, "ground-truth phases", PHASE_COLORS),
        ]
        extent_um = np.array([0, labels.shape[1], labels.shape[0], 0]) * phantom.pixel_size * 1e6
    else:
        mid = labels.shape[0] // 2
        delta, _ = phantom.refractive_index(energy_ev)
        panels = [
            (delta[mid], f"delta, slice z={mid}", "gray"),
            (labels[mid], f"labels, slice z={mid}", PHASE_COLORS),
            (labels[:, labels.shape[1] // 2, :], "labels, slice y=mid", PHASE_COLORS),
        ]
        extent_um = np.array([0, labels.shape[2], labels.shape[0], 0]) * phantom.voxel_size * 1e6
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (image, title, cmap) in zip(axes, panels, strict=True):
        is_labels = cmap is PHASE_COLORS
        shown = ax.imshow(
            image,
            cmap=cmap,
            extent=extent_um,
            interpolation="nearest",
            vmin=0 if is_labels else None,
            vmax=3 if is_labels else None,
        )
        ax.set_title(title)
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)" if labels.ndim == 2 else "z (um)")
        if is_labels:
            _label_legend(ax)
        else:
            fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.suptitle(f"{phantom.name}, seed {phantom.seed}, shape {labels.shape}")
    fig.savefig(path, dpi=110)
    return path


def plot_diffraction_patterns(
    frames: np.ndarray, positions: Sequence[Sequence[float]], path: str | Path, *, title: str = ""
) -> Path:
    """A row of far-field patterns on a log scale, each titled with its stage position."""
    path = Path(path)
    frames = np.asarray(frames)
    fig = Figure(figsize=(3.2 * len(frames), 3.4), layout="constrained")
    axes = fig.subplots(1, len(frames), squeeze=False)
    for ax, frame, (x, y) in zip(axes[0], frames, positions, strict=True):
        shown = ax.imshow(np.log10(frame.astype(float) + 1), cmap="magma")
        ax.set_title(f"x={x:.2f} um, y={y:.2f} um", fontsize=9)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.75, label="log10(counts+1)")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def plot_projections(
    frames: np.ndarray, angles: Sequence[float], path: str | Path, *, title: str = ""
) -> Path:
    """A row of projection images, each titled with its rotation angle."""
    path = Path(path)
    frames = np.asarray(frames)
    fig = Figure(figsize=(3.2 * len(frames), 3.4), layout="constrained")
    axes = fig.subplots(1, len(frames), squeeze=False)
    for ax, frame, angle in zip(axes[0], frames, angles, strict=True):
        ax.imshow(frame, cmap="gray")
        ax.set_title(f"theta = {angle:.1f} deg", fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def _pixel_extent(origin: Sequence[int], shape: Sequence[int]) -> list[float]:
    """imshow extent placing array index (0, 0) at pixel ``origin`` (row, col)."""
    r0, c0 = (float(v) for v in origin)
    return [c0 - 0.5, c0 + shape[1] - 0.5, r0 + shape[0] - 0.5, r0 - 0.5]


def draw_scan_panels(
    fig,
    axes: Sequence,
    *,
    phase: np.ndarray | None = None,
    phase_origin: Sequence[int] = (0, 0),
    labels: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    map_origin: Sequence[int] = (0, 0),
    points: np.ndarray | None = None,
    titles: Sequence[str] = ("reconstructed phase", "segmentation", "uncertainty, scan path"),
) -> None:
    """Reconstruction, segmentation and uncertainty with the measured points, on 3 axes.

    Every array is placed in one pixel frame: ``phase`` with its index (0, 0) at pixel
    ``phase_origin`` (row, col), ``labels`` and ``uncertainty`` at ``map_origin``;
    ``points`` are (row, col) pixels in that frame, in the order measured (drawn as the
    scan path, coloured from first to last). Missing arrays leave their panel empty.
    """
    ax_phase, ax_labels, ax_uncertainty = axes
    if phase is not None:
        ax_phase.imshow(phase, cmap="gray", extent=_pixel_extent(phase_origin, phase.shape))
    if labels is not None:
        ax_labels.imshow(
            labels,
            cmap=PHASE_COLORS,
            vmin=0,
            vmax=3,
            interpolation="nearest",
            extent=_pixel_extent(map_origin, labels.shape),
        )
        _label_legend(ax_labels)
    if uncertainty is not None:
        shown = ax_uncertainty.imshow(
            uncertainty,
            cmap="viridis",
            vmin=0,
            vmax=1,
            extent=_pixel_extent(map_origin, uncertainty.shape),
        )
        fig.colorbar(shown, ax=ax_uncertainty, shrink=0.8, label="uncertainty")
    if points is not None and len(points):
        points = np.asarray(points, dtype=float)
        for ax in (ax_phase, ax_uncertainty):
            ax.plot(points[:, 1], points[:, 0], "-", color="white", lw=0.4, alpha=0.6)
            ax.scatter(points[:, 1], points[:, 0], c=np.arange(len(points)), cmap="autumn", s=5)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_axis_off()


def plot_adaptive_comparison(outcomes: dict, phantom, path: str | Path) -> Path:
    """Reconstruction, segmentation vs truth, uncertainty with the scan path, and IoU
    against exposures for each strategy."""
    path = Path(path)
    strategies = list(outcomes)
    fig = Figure(figsize=(17, 4.2 * len(strategies)), layout="constrained")
    axes = fig.subplots(len(strategies), 4, squeeze=False)
    pixel_um = phantom.pixel_size * 1e6
    for row, name in zip(axes, strategies, strict=True):
        outcome = outcomes[name]
        positions = np.asarray(outcome.positions, dtype=float).reshape(-1, 2)
        points = np.column_stack(
            [
                positions[:, 1] / pixel_um + phantom.shape[0] / 2,
                positions[:, 0] / pixel_um + phantom.shape[1] / 2,
            ]
        )
        draw_scan_panels(
            fig,
            row[:3],
            phase=outcome.final_phase,
            phase_origin=outcome.final_origin,
            labels=outcome.final_labels,
            uncertainty=outcome.final_uncertainty,
            map_origin=outcome.final_origin,
            points=points if outcome.final_uncertainty is not None else None,
            titles=(
                f"{name}: reconstructed phase",
                f"{name}: segmentation (final IoU {outcome.final_iou:.3f})",
                f"{name}: uncertainty and scan path ({outcome.exposures} exposures)",
            ),
        )
        for other in strategies:
            # the fair curve (the stored frames reconstructed offline) where there is one
            curve = np.asarray(outcomes[other].fair_curve or outcomes[other].curve, dtype=float)
            if len(curve):
                row[3].plot(curve[:, 0], curve[:, 1], ".-", label=other)
        row[3].set_xlabel("exposures received")
        row[3].set_ylabel("mean IoU vs ground truth (fair score)")
        row[3].legend()
        row[3].set_title("segmentation quality vs exposures")
    fig.savefig(path, dpi=100)
    return path


def plot_particle_sizes(
    diameters_um: dict[str, np.ndarray], path: str | Path, *, title: str = "particle sizes"
) -> Path:
    """Histograms of equivalent diameters (um), one per entry of ``diameters_um``; an
    entry ``"ground truth"`` is drawn filled, the others as outlines. Each legend entry
    gives the count and the median (e.g. from
    :func:`~synaps_agent.experiment.particle_diameters_um`)."""
    path = Path(path)
    sets = {name: np.asarray(d, dtype=float) for name, d in diameters_um.items()}
    largest = max([d.max(initial=0.0) for d in sets.values()], default=0.0)
    edges = np.linspace(0.0, max(largest, 1e-3) * 1.05, 16)
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for name, d in sets.items():
        median = f", median {np.median(d):.3f} um" if d.size else ""
        label = f"{name}: {d.size} particles{median}"
        if name == "ground truth":
            ax.hist(d, bins=edges, histtype="stepfilled", color="0.85", edgecolor="0.3",
                    label=label)  # fmt: skip
        else:
            ax.hist(d, bins=edges, histtype="step", linewidth=1.8, label=label)
    ax.set_xlabel("equivalent diameter (um)")
    ax.set_ylabel("particles")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path
