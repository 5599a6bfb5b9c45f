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
