"""Small plan pieces the scans are made of (in the spirit of ``bluesky.plan_stubs``)."""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.preprocessors import rewindable_wrapper
from bluesky.protocols import Movable, Readable, Triggerable
from bluesky.utils import Msg, all_safe_rewind, separate_devices
from bluesky.utils import short_uid as _short_uid

__all__ = ["check_within_limits", "expose", "move", "move_and_expose", "new_frame_files"]

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


def move(moves: dict[Movable, float], group: str | None = None) -> Plan:
    """Move the motors together and wait until every one has arrived.

    Yields a ``set`` message per motor, then one ``wait`` for their group (what
    :func:`bluesky.plan_stubs.mv` yields). Returns the statuses of the moves.
    """
    group = group or _short_uid("move")
    statuses = []
    for motor, value in moves.items():
        statuses.append((yield Msg("set", motor, value, group=group)))
    yield Msg("wait", None, group=group, timeout=None)
    return tuple(statuses)


def expose(
    detectors: Sequence[Readable], extra: Sequence[Readable] = (), stream: str = "primary"
) -> Plan:
    """Trigger the detectors and read them (with ``extra`` readables) into ``stream``.

    Yields what :func:`bluesky.plan_stubs.trigger_and_read` yields for one event: a
    ``trigger`` per triggerable device, a ``wait``, ``create``, a ``read`` per device and
    ``save`` (``drop`` if a read fails), marked not rewindable when a device says so.
    Returns the readings.

    The messages are yielded here, not through ``bluesky.plan_stubs``: bluesky wraps each
    of its stubs in a ``Plan`` object that formats the caller's whole stack (to warn
    about a forgotten ``yield from``), about 0.4 ms per stub at the depth of our scans
    and 4 ms per exposure, as long as a 200 frames/s scan has for the whole exposure.
    """
    devices = separate_devices([*detectors, *extra])

    def trigger_and_read() -> Plan:
        group = _short_uid("trigger")
        triggered = False
        for device in devices:
            if isinstance(device, Triggerable):
                triggered = True
                yield Msg("trigger", device, group=group)
        if triggered:
            yield Msg("wait", None, group=group, error_on_timeout=True, timeout=None, watch=())
        yield Msg("create", None, name=stream)
        readings: dict[str, Any] = {}
        try:
            for device in devices:
                reading = yield Msg("read", device)
                if reading is not None:
                    readings.update(reading)
        except Exception:  # not GeneratorExit: a closed plan must not yield
            yield Msg("drop")
            raise
        yield Msg("save")
        return readings

    return (yield from rewindable_wrapper(trigger_and_read(), all_safe_rewind(devices)))


def move_and_expose(
    detectors: Sequence[Readable],
    moves: dict[Movable, float],
    stream: str = "primary",
    extra: Sequence[Readable] = (),
) -> Plan:
    """Move the motors together, wait, then take one event with the motors' readbacks.

    Yields ``set`` messages for every motor, a ``wait``, then one event's messages
    (:func:`expose`: detectors, the moved motors and ``extra`` readables).
    """
    yield from move(moves)
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
