"""Small plan pieces the scans are made of (in the spirit of ``bluesky.plan_stubs``)."""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.protocols import Movable, Readable
from bluesky.utils import Msg

__all__ = ["check_within_limits", "expose", "move_and_expose", "new_frame_files"]

Plan = Generator[Msg, Any, Any]


def check_within_limits(motor: Movable, values: Iterable[float]) -> None:
    """Raise ``ValueError`` if any of ``values`` is outside ``motor``'s soft limits.

    Motors without limits, or with ophyd's "no limits" ``(0, 0)``, accept anything
    finite. Called by every scan before the first message, so a bad region fails
    before any motion.
    """
    name = getattr(motor, "name", repr(motor))
    values = [float(v) for v in values]
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name}: scan positions must be finite numbers, got {bad[:3]}")
    limits = getattr(motor, "limits", None)
    if not limits:
        return
    low, high = (float(v) for v in limits)
    if low == high == 0:
        return
    outside = [v for v in values if not low <= v <= high]
    if outside:
        egu = getattr(motor, "egu", "")
        raise ValueError(
            f"{name}: {len(outside)} scan position(s) outside the soft limits "
            f"[{low}, {high}] {egu}, e.g. {outside[0]:.6g}; nothing was moved"
        )


def expose(
    detectors: Sequence[Readable], extra: Sequence[Readable] = (), stream: str = "primary"
) -> Plan:
    """Trigger the detectors and read them (with ``extra`` readables) into ``stream``.

    Yields the messages of :func:`bluesky.plan_stubs.trigger_and_read`: one event.
    """
    return (yield from bps.trigger_and_read([*detectors, *extra], name=stream))


def move_and_expose(
    detectors: Sequence[Readable],
    moves: dict[Movable, float],
    stream: str = "primary",
    extra: Sequence[Readable] = (),
) -> Plan:
    """Move the motors together, wait, then take one event with the motors' readbacks.

    Yields ``set`` messages for every motor, a ``wait``, then one event's messages
    (detectors, the moved motors and ``extra`` readables).
    """
    args: list[Any] = []
    for motor, value in moves.items():
        args.extend([motor, value])
    yield from bps.mv(*args)
    return (yield from expose(detectors, [*moves, *extra], stream=stream))


def new_frame_files(detectors: Sequence[Any]) -> Plan:
    """Unstage and stage the detectors so that each starts a new frame file.

    Used between streams (dark, flat, primary): each stream then has its own
    StreamResource, as Tiled's writer expects. Yields ``unstage``/``stage`` messages.
    """
    for det in detectors:
        yield from bps.unstage(det)
    for det in detectors:
        yield from bps.stage(det)


def check_reference_fields(
    *,
    shutter: Movable | None,
    num_darks: int,
    num_flats: int,
    flat_motor: Movable | None,
    flat_position: float | None,
) -> None:
    """Refuse dark/flat-field arguments that cannot be measured, before any motion."""
    if num_darks < 0 or num_flats < 0:
        raise ValueError("num_darks and num_flats must be >= 0")
    if num_darks and shutter is None:
        raise ValueError("dark fields need a shutter to close")
    if num_flats:
        if flat_motor is None or flat_position is None:
            raise ValueError("flat fields need flat_motor and flat_position (sample out of beam)")
        check_within_limits(flat_motor, [flat_position])


def reference_fields(
    detectors: Sequence[Readable],
    *,
    shutter: Movable | None = None,
    num_darks: int = 0,
    num_flats: int = 0,
    flat_motor: Movable | None = None,
    flat_position: float | None = None,
) -> Plan:
    """Dark fields (shutter closed) and flat fields (sample out of the beam), inside a run.

    Yields a shutter close and ``num_darks`` exposures in stream ``dark``; the shutter
    opened; a move of ``flat_motor`` to ``flat_position``, ``num_flats`` exposures in
    stream ``flat`` and the move back. Each group ends with :func:`new_frame_files`, so
    projections go to files of their own. Leaves the shutter open (if there is one).
    """
    check_reference_fields(
        shutter=shutter, num_darks=num_darks, num_flats=num_flats,
        flat_motor=flat_motor, flat_position=flat_position,
    )  # fmt: skip
    if num_darks:
        yield from bps.mv(shutter, "closed")
        for _ in range(num_darks):
            yield from expose(detectors, stream="dark")
        yield from new_frame_files(detectors)
    if shutter is not None:
        yield from bps.mv(shutter, "open")
    if num_flats:
        home = flat_motor.position if hasattr(flat_motor, "position") else None
        yield from bps.mv(flat_motor, flat_position)
        for _ in range(num_flats):
            yield from expose(detectors, stream="flat")
        if home is not None:
            yield from bps.mv(flat_motor, home)
        yield from new_frame_files(detectors)
