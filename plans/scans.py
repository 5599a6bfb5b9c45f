"""Imaging scans: ptychography (raster, spiral, any positions), tomography, ptycho-tomography.

Every plan checks its arguments and the motors' soft limits before the first message,
opens one run whose start document says how to rebuild the geometry, and yields one
event per exposure. Signatures are queueserver-friendly: annotated, literal defaults,
devices passed as arguments.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import Msg

from .metadata import scan_metadata
from .patterns import fermat_spiral_positions, golden_angles, raster_positions, uniform_angles
from .stubs import (
    check_reference_fields,
    check_within_limits,
    move_and_expose,
    reference_fields,
)

__all__ = [
    "ptycho_scan",
    "ptycho_tomo_scan",
    "raster_ptycho_scan",
    "spiral_ptycho_scan",
    "tomo_scan",
]

Plan = Generator[Msg, Any, str]


def _check_detectors(detectors: Sequence[Readable]) -> list[Readable]:
    detectors = list(detectors)
    if not detectors:
        raise ValueError("at least one detector is needed")
    return detectors


def _as_positions(positions: Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(positions, dtype=float)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise ValueError(
            f"positions must be a non-empty list of (x, y) pairs, got shape {array.shape}"
        )
    return array


def _with_shutter(plan: Plan, shutter: Movable | None) -> Plan:
    """Open the shutter before ``plan`` and close it afterwards, whatever happens."""
    if shutter is None:
        return (yield from plan)

    def close() -> Generator[Msg, Any, None]:
        yield from bps.mv(shutter, "closed")

    def body() -> Plan:
        yield from bps.mv(shutter, "open")
        return (yield from plan)

    return (yield from bpp.finalize_wrapper(body(), close()))


def ptycho_scan(
    detectors: Sequence[Readable],
    x_motor: Movable,
    y_motor: Movable,
    positions: Sequence[Sequence[float]],
    *,
    shutter: Movable | None = None,
    pattern: dict | None = None,
    md: dict | None = None,
) -> Plan:
    """Ptychography at the given (x, y) stage positions, one exposure each.

    Parameters
    ----------
    detectors : list of readables
        The ptychography detector (and any others, e.g. an I0 monitor).
    x_motor, y_motor : movables
        Sample stage translations.
    positions : (n, 2) sequence
        Stage positions, in the motors' units.
    shutter : movable, optional
        Opened before the first exposure and closed at the end.
    pattern : dict, optional
        Description of how the positions were made (stored as ``scan_pattern``).
    md : dict, optional
        Extra RunStart metadata.

    Yields
    ------
    Msg
        One run: for each position a move of both motors and one ``primary`` event.

    Returns
    -------
    str
        The run's uid.
    """
    detectors = _check_detectors(detectors)
    points = _as_positions(positions)
    check_within_limits(x_motor, points[:, 0])
    check_within_limits(y_motor, points[:, 1])
    _md = scan_metadata(
        modality="ptychography",
        plan_name=(md or {}).get("plan_name", "ptycho_scan"),
        detectors=detectors,
        motors=[x_motor, y_motor],
        pattern=pattern or {"kind": "list", "positions": points.tolist()},
        num_points=len(points),
        md=md,
    )

    @bpp.stage_decorator([*detectors])
    @bpp.run_decorator(md=_md)
    def inner() -> Plan:
        for x, y in points:
            yield from move_and_expose(detectors, {x_motor: float(x), y_motor: float(y)})

    return (yield from _with_shutter(inner(), shutter))


def raster_ptycho_scan(
    detectors: Sequence[Readable],
    x_motor: Movable,
    y_motor: Movable,
    x_start: float,
    x_stop: float,
    y_start: float,
    y_stop: float,
    step: float,
    *,
    snake: bool = True,
    jitter: float = 0.0,
    seed: int = 0,
    shutter: Movable | None = None,
    md: dict | None = None,
) -> Plan:
    """Ptychography on a rectangular grid (snake order by default).

    See :func:`~synaps_agent.plans.patterns.raster_positions` for the grid and
    :func:`ptycho_scan` for what is yielded.
    """
    points = raster_positions(
        x_start, x_stop, y_start, y_stop, step, snake=snake, jitter=jitter, seed=seed
    )
    pattern = {
        "kind": "raster",
        "x_start": x_start,
        "x_stop": x_stop,
        "y_start": y_start,
        "y_stop": y_stop,
        "step": step,
        "snake": snake,
        "jitter": jitter,
        "seed": seed,
    }
    md = {"plan_name": "raster_ptycho_scan", **(md or {})}
    return (
        yield from ptycho_scan(
            detectors, x_motor, y_motor, points, shutter=shutter, pattern=pattern, md=md
        )
    )


def spiral_ptycho_scan(
    detectors: Sequence[Readable],
    x_motor: Movable,
    y_motor: Movable,
    x_center: float,
    y_center: float,
    radius: float,
    step: float,
    *,
    shutter: Movable | None = None,
    md: dict | None = None,
) -> Plan:
    """Ptychography on a Fermat spiral filling a disc.

    See :func:`~synaps_agent.plans.patterns.fermat_spiral_positions` and :func:`ptycho_scan`.
    """
    points = fermat_spiral_positions(x_center, y_center, radius, step)
    pattern = {
        "kind": "fermat_spiral",
        "x_center": x_center,
        "y_center": y_center,
        "radius": radius,
        "step": step,
    }
    md = {"plan_name": "spiral_ptycho_scan", **(md or {})}
    return (
        yield from ptycho_scan(
            detectors, x_motor, y_motor, points, shutter=shutter, pattern=pattern, md=md
        )
    )


def _angles(
    angles: Sequence[float] | None, num: int | None, scheme: str, span: float
) -> np.ndarray:
    if angles is not None:
        array = np.asarray(list(angles), dtype=float)
        if array.ndim != 1 or len(array) == 0:
            raise ValueError("the angle list is empty: give at least one angle")
        return array
    if num is None:
        raise ValueError("give either a list of angles or num (with scheme)")
    if scheme == "uniform":
        return uniform_angles(num, span=span)
    if scheme == "golden":
        return golden_angles(num, span=span)
    raise ValueError(f"scheme must be 'uniform' or 'golden', got {scheme!r}")


def tomo_scan(
    detectors: Sequence[Readable],
    theta_motor: Movable,
    angles: Sequence[float] | None = None,
    *,
    num: int | None = None,
    scheme: str = "uniform",
    span: float = 180.0,
    num_darks: int = 0,
    num_flats: int = 0,
    flat_motor: Movable | None = None,
    flat_position: float | None = None,
    shutter: Movable | None = None,
    md: dict | None = None,
) -> Plan:
    """Tomography: one projection per angle, with optional dark and flat fields.

    Parameters
    ----------
    detectors : list of readables
        The projection camera (and monitors).
    theta_motor : movable
        Rotation stage (degrees).
    angles : sequence of float, optional
        Explicit angles; otherwise ``num`` angles by ``scheme`` over ``span`` degrees.
    num, scheme, span
        ``scheme`` is ``"uniform"`` or ``"golden"`` (golden-ratio order).
    num_darks : int
        Dark frames (shutter closed; needs ``shutter``), stream ``dark``.
    num_flats : int
        Flat fields with the sample moved out of the beam (``flat_motor`` to
        ``flat_position``, then back), stream ``flat``.
    shutter : movable, optional
        Closed for darks, open for flats and projections, closed at the end.

    Yields
    ------
    Msg
        One run with streams ``dark``, ``flat`` (if asked) and ``primary`` (projections
        with the rotation readback).
    """
    detectors = _check_detectors(detectors)
    theta = _angles(angles, num, scheme, span)
    check_within_limits(theta_motor, theta)
    check_reference_fields(
        shutter=shutter, num_darks=num_darks, num_flats=num_flats,
        flat_motor=flat_motor, flat_position=flat_position,
    )  # fmt: skip
    pattern = {
        "kind": "tomography",
        "scheme": "list" if angles is not None else scheme,
        "angles": theta.tolist(),
        "span": span,
        "num_darks": num_darks,
        "num_flats": num_flats,
        "flat_position": flat_position,
    }
    _md = scan_metadata(
        modality="tomography",
        plan_name="tomo_scan",
        detectors=detectors,
        motors=[theta_motor],
        pattern=pattern,
        num_points=len(theta),
        md=md,
    )

    @bpp.stage_decorator([*detectors])
    @bpp.run_decorator(md=_md)
    def inner() -> Plan:
        yield from reference_fields(
            detectors, shutter=shutter, num_darks=num_darks, num_flats=num_flats,
            flat_motor=flat_motor, flat_position=flat_position,
        )  # fmt: skip
        for angle in theta:
            yield from move_and_expose(detectors, {theta_motor: float(angle)})

    if shutter is None:
        return (yield from inner())

    return (yield from bpp.finalize_wrapper(inner(), bps.mv(shutter, "closed")))


def ptycho_tomo_scan(
    detectors: Sequence[Readable],
    x_motor: Movable,
    y_motor: Movable,
    theta_motor: Movable,
    positions: Sequence[Sequence[float]],
    angles: Sequence[float],
    *,
    shutter: Movable | None = None,
    md: dict | None = None,
) -> Plan:
    """Ptycho-tomography: the same ptychographic scan at each of a list of angles.

    One run; each event carries x, y and theta, so a reconstruction groups the frames by
    angle. Yields for each angle a rotation, then a move and an exposure per position.
    """
    detectors = _check_detectors(detectors)
    points = _as_positions(positions)
    theta = _angles(angles, None, "uniform", 180.0)
    check_within_limits(x_motor, points[:, 0])
    check_within_limits(y_motor, points[:, 1])
    check_within_limits(theta_motor, theta)
    pattern = {"kind": "ptycho_tomography", "positions": points.tolist(), "angles": theta.tolist()}
    _md = scan_metadata(
        modality="ptycho-tomography",
        plan_name="ptycho_tomo_scan",
        detectors=detectors,
        motors=[x_motor, y_motor, theta_motor],
        pattern=pattern,
        num_points=len(points) * len(theta),
        md=md,
    )

    @bpp.stage_decorator([*detectors])
    @bpp.run_decorator(md=_md)
    def inner() -> Plan:
        for angle in theta:
            yield from bps.mv(theta_motor, float(angle))
            for x, y in points:
                yield from move_and_expose(
                    detectors, {x_motor: float(x), y_motor: float(y)}, extra=[theta_motor]
                )

    return (yield from _with_shutter(inner(), shutter))
