"""Adaptive scans: seed measurements, then let the agent choose, until its stopping rule.

Ptychography (x, y), tomography (theta) and ptycho-tomography (x, y, theta) share one
loop, :func:`adaptive_scan`.

The plan asks an :class:`~synaps_agent.callbacks.agent_feed.AgentFeed` (an agent connected
to the live segmentation) for a batch of points, moves and exposes at each, tells the
feed what was measured, and repeats until the agent's stopping rule or the exposure
budget ends the run. Moves that fail (limits, a motor fault) are recorded and the point
is never proposed again; the scan goes on. With an incident-intensity ``monitor``, an
exposure during which it read 0 (beam dump, closed shutter) is taken again once, in
place, and recorded. One run per scan; the stop document's reason says why it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import FailedStatus, Msg
from ophyd.utils.errors import LimitError

from .metadata import scan_metadata
from .scans import _as_positions, _check_detectors, _with_shutter
from .stubs import (
    check_reference_fields,
    check_within_limits,
    expose,
    move_and_expose,
    reference_fields,
)

__all__ = [
    "adaptive_ptycho_scan",
    "adaptive_ptycho_tomo_scan",
    "adaptive_scan",
    "adaptive_tomo_scan",
    "wait_for_map",
]

Plan = Generator[Msg, Any, str]


def _limits(motor: Movable) -> list[float]:
    low, high = getattr(motor, "limits", (0.0, 0.0))
    return [float(low), float(high)]


def _monitor_key(monitor: Readable) -> str:
    """The data key of an incident-intensity monitor's reading (its one described field,
    or the field named like it)."""
    keys = list(monitor.describe())
    name = getattr(monitor, "name", "")
    if len(keys) == 1:
        return keys[0]
    if name in keys:
        return name
    raise ValueError(
        f"monitor {name!r} must read one intensity field (or one named {name!r}), got {keys}"
    )


def adaptive_scan(
    detectors: Sequence[Readable],
    motors: Sequence[Movable],
    feed: Any,
    seed_points: np.ndarray,
    *,
    modality: str,
    plan_name: str,
    pattern: dict,
    batch_size: int,
    max_exposures: int,
    shutter: Movable | None,
    md: dict | None,
    monitor: Readable | None = None,
    prelude: Callable[[], Plan] | None = None,
    map_timeout: float = 30.0,
) -> Plan:
    """The loop every adaptive scan shares: seeds, then ask / move / expose / tell.

    ``prelude`` (optional) makes the plan measured inside the run before the seeds, e.g.
    :func:`~synaps_agent.plans.stubs.reference_fields` (darks and flats).

    ``motors[i]`` moves to column ``i`` of the points (the seeds and what ``feed.ask``
    returns, in the agent's axis order). Seeds the feed's agent has already measured (a
    resumed scan) are skipped. The scan ends by the agent's stopping rule, the plan's
    exposure budget, or when no admissible point is left; the stop document says which.

    With ``monitor`` (an I0 monitor, read with every exposure if it is not one of the
    detectors), an exposure during which it read 0 is taken again once at the same
    point (the feed's ``remeasured`` records it); the budget counts points exposed, so the
    retake is not charged. If the retake reads 0 too, the point is left unmeasured for
    the agent to choose again (and still charged: a beam that stays down ends the scan
    at its budget).

    Before each decision the plan waits (:func:`wait_for_map`, at most ``map_timeout`` s)
    until the feed's uncertainty map reflects every exposure measured so far, so the
    decisions do not depend on how fast the analysis keeps up; a feed that cannot tell
    (no ``map_is_current``) is not waited for.

    Yields
    ------
    Msg
        One run: the seed exposures, then per decision a batch of moves and exposures.
    """
    detectors = _check_detectors(detectors)
    monitor_key = None if monitor is None else _monitor_key(monitor)
    extra = [] if monitor is None or monitor in detectors else [monitor]
    seeds = np.asarray(seed_points, dtype=float)
    if seeds.ndim != 2 or seeds.shape[1] != len(motors) or len(seeds) == 0:
        raise ValueError(
            f"seed positions must be a non-empty list of {len(motors)}-tuples "
            f"({', '.join(m.name for m in motors)}), got shape {seeds.shape}"
        )
    for i, motor in enumerate(motors):
        check_within_limits(motor, seeds[:, i])
    done = getattr(feed, "already_done", None)
    todo = seeds if done is None else seeds[~done(seeds)]  # a resumed scan skips them
    if not map_timeout >= 0:
        raise ValueError(f"map_timeout must be >= 0 seconds, got {map_timeout!r}")
    if batch_size < 1 or max_exposures < len(todo):
        raise ValueError(
            "batch_size must be >= 1 and max_exposures >= the number of seeds to measure"
        )
    pattern = {
        "kind": "adaptive",
        **pattern,
        "seed_positions": seeds.tolist(),
        "batch_size": batch_size,
        "max_exposures": max_exposures,
    }
    _md = scan_metadata(
        modality=modality,
        plan_name=plan_name,
        detectors=detectors,
        motors=list(motors),
        pattern=pattern,
        num_points=max_exposures,
        md=md,
    )

    def beam_was_off(readings: dict | None) -> bool:
        if monitor_key is None or not readings or monitor_key not in readings:
            return False
        return not float(readings[monitor_key]["value"]) > 0

    def expose_at(point: np.ndarray) -> Generator[Msg, Any, bool]:
        moves = dict(zip(motors, map(float, point), strict=True))
        try:
            readings = yield from move_and_expose(detectors, moves, extra=extra)
            if beam_was_off(readings):
                retake = yield from expose(detectors, [*motors, *extra])
                beam_back = not beam_was_off(retake)
                getattr(feed, "remeasured", lambda *a: None)(
                    point,
                    f"{monitor_key} read 0 (beam dump?): exposure taken again, "
                    + ("beam back" if beam_back else "still no beam; point left unmeasured"),
                )
                if not beam_back:
                    return True  # exposed (and charged to the budget), not measured
        except (LimitError, FailedStatus, ValueError) as exc:
            feed.failed(point, f"{type(exc).__name__}: {exc}")
            return False
        feed.measured(point)
        return True

    @bpp.stage_decorator(detectors)
    def scan() -> Generator[Msg, Any, str]:
        if prelude is not None:
            yield from prelude()
        exposures = 0
        for point in todo:
            exposures += bool((yield from expose_at(point)))
        while True:
            stop, reason = feed.should_stop()  # before the wait: a budget needs no map
            if not stop and exposures < max_exposures:
                yield from wait_for_map(feed, map_timeout)
                stop, reason = feed.should_stop()
            if stop:
                return reason
            if exposures >= max_exposures:
                return f"exposure budget of the plan reached: {exposures}"
            points = feed.ask(min(batch_size, max_exposures - exposures))
            if len(points) == 0:
                return "the agent had no admissible point left"
            for point in np.asarray(points, dtype=float)[:, : len(motors)]:
                exposures += bool((yield from expose_at(point)))

    def body() -> Plan:
        uid = yield from bps.open_run(md=_md)
        feed.open(uid, parameters={"batch_size": batch_size, "max_exposures": max_exposures})
        reason = "the scan was interrupted"  # what the decisions' run says if it does not end
        try:
            reason = yield from _with_shutter(scan(), shutter)
        finally:
            feed.close(reason)
        yield from bps.close_run(exit_status="success", reason=reason)
        return uid

    return (yield from body())


def wait_for_map(feed: Any, timeout: float, poll: float = 0.05) -> Generator[Msg, Any, bool]:
    """Sleep until ``feed.map_is_current()`` (its uncertainty map reflects every
    exposure measured so far), at most ``timeout`` seconds of wall time.

    The RunEngine stays responsive meanwhile (pause, abort and Ctrl-C act between the
    sleeps). On timeout the feed is told (``feed.map_wait_timed_out(seconds)``: logged
    and recorded) and the scan goes on with the latest map. A feed without
    ``map_is_current`` is not waited for.

    Yields
    ------
    Msg
        ``sleep`` messages of ``poll`` seconds while the map lags (none if it is current).

    Returns
    -------
    bool
        Whether the map caught up.
    """
    is_current = getattr(feed, "map_is_current", None)
    if is_current is None or is_current():
        return True
    start = time.monotonic()
    while not is_current():
        waited = time.monotonic() - start
        if waited >= timeout:
            getattr(feed, "map_wait_timed_out", lambda s: None)(waited)
            return False
        yield from bps.sleep(poll)
    return True


def adaptive_ptycho_scan(
    detectors: Sequence[Readable],
    x_motor: Movable,
    y_motor: Movable,
    feed: Any,
    seed_positions: Sequence[Sequence[float]],
    *,
    batch_size: int = 8,
    max_exposures: int = 500,
    shutter: Movable | None = None,
    md: dict | None = None,
    monitor: Readable | None = None,
    map_timeout: float = 30.0,
) -> Plan:
    """Ptychography where the agent picks the positions.

    Parameters
    ----------
    detectors : list of readables
        The ptychography detector (and monitors).
    x_motor, y_motor : movables
        Sample stage translations; their soft limits bound every proposal.
    feed : AgentFeed
        The agent connected to the live segmentation (see
        :class:`~synaps_agent.callbacks.agent_feed.AgentFeed`).
    seed_positions : (n, 2) sequence
        First positions (a coarse lattice): they give the reconstruction and the
        segmentation something to start from. Seeds the feed's agent has already measured
        (a scan resumed with :meth:`AgentFeed.resume`) are skipped.
    batch_size : int
        Points per decision.
    max_exposures : int
        Hard budget (the agent's own stopping rule may end the scan earlier).
    shutter : movable, optional
        Opened for the scan, closed at the end.
    monitor : readable, optional
        Incident-intensity monitor (e.g. the beamline's ``i0``): an exposure during which
        it read 0 is taken again once (see :func:`adaptive_scan`).
    map_timeout : float
        Longest wait (s) before a decision for the uncertainty map to reflect every
        exposure so far (:func:`wait_for_map`); then the latest map is used, and that is
        recorded.

    Yields
    ------
    Msg
        One run (see :func:`adaptive_scan`).
    """
    seeds = _as_positions(seed_positions)
    # the region the agent may propose in (the reconstruction pre-sizes its grid to it)
    x_limits, y_limits = getattr(feed, "region", None) or (_limits(x_motor), _limits(y_motor))
    return (
        yield from adaptive_scan(
            detectors, [x_motor, y_motor], feed, seeds,
            modality="ptychography", plan_name="adaptive_ptycho_scan",
            pattern={"x_limits": list(x_limits), "y_limits": list(y_limits)},
            batch_size=batch_size, max_exposures=max_exposures, shutter=shutter, md=md,
            monitor=monitor, map_timeout=map_timeout,
        )
    )  # fmt: skip


def adaptive_tomo_scan(
    detectors: Sequence[Readable],
    theta_motor: Movable,
    feed: Any,
    seed_angles: Sequence[float],
    *,
    batch_size: int = 4,
    max_exposures: int = 180,
    shutter: Movable | None = None,
    md: dict | None = None,
    monitor: Readable | None = None,
    num_darks: int = 0,
    num_flats: int = 0,
    flat_motor: Movable | None = None,
    flat_position: float | None = None,
    map_timeout: float = 30.0,
) -> Plan:
    """Tomography where the agent picks the rotation angles.

    The feed's agent works over one periodic axis (theta); with an
    :class:`~synaps_agent.callbacks.agent_feed.AgentFeed` it favours the views whose rays
    cross the uncertain region (the forward projection of the uncertainty map is its
    prior).

    Parameters
    ----------
    detectors : list of readables
        The projection camera (and monitors).
    theta_motor : movable
        Rotation stage (degrees).
    feed : AgentFeed
        The agent (a space with the single axis theta) and the live uncertainty.
    seed_angles : sequence of float
        First angles (a coarse uniform set), skipped when already measured.
    batch_size, max_exposures, shutter, md, monitor, map_timeout
        As in :func:`adaptive_ptycho_scan`.
    num_darks, num_flats, flat_motor, flat_position
        Dark and flat fields measured in the run before the seeds, as in
        :func:`~synaps_agent.plans.scans.tomo_scan` (streams ``dark`` and ``flat``).

    Yields
    ------
    Msg
        One run (see :func:`adaptive_scan`): streams ``dark`` and ``flat`` (if asked),
        then ``primary`` with the rotation readback.
    """
    seeds = np.asarray(seed_angles, dtype=float).reshape(-1, 1)
    references = {
        "shutter": shutter, "num_darks": num_darks, "num_flats": num_flats,
        "flat_motor": flat_motor, "flat_position": flat_position,
    }  # fmt: skip
    check_reference_fields(**references)
    detectors = list(detectors)
    return (
        yield from adaptive_scan(
            detectors, [theta_motor], feed, seeds,
            modality="tomography", plan_name="adaptive_tomo_scan",
            pattern={"theta_limits": _limits(theta_motor), "num_darks": num_darks,
                     "num_flats": num_flats, "flat_position": flat_position},
            batch_size=batch_size, max_exposures=max_exposures, shutter=shutter, md=md,
            monitor=monitor, map_timeout=map_timeout,
            prelude=lambda: reference_fields(detectors, **references),
        )
    )  # fmt: skip


def adaptive_ptycho_tomo_scan(
    detectors: Sequence[Readable],
    x_motor: Movable,
    y_motor: Movable,
    theta_motor: Movable,
    feed: Any,
    seed_positions: Sequence[Sequence[float]],
    *,
    batch_size: int = 8,
    max_exposures: int = 2000,
    shutter: Movable | None = None,
    md: dict | None = None,
    monitor: Readable | None = None,
    map_timeout: float = 30.0,
) -> Plan:
    """Ptycho-tomography where the agent picks (x, y, theta) together.

    Parameters
    ----------
    detectors : list of readables
        The ptychography detector (and monitors).
    x_motor, y_motor, theta_motor : movables
        Sample translations and rotation, in the agent's axis order (x, y, theta).
    feed : AgentFeed
        The agent over (x, y, theta) and the live uncertainty.
    seed_positions : (n, 3) sequence
        First (x, y, theta) points, skipped when already measured.
    batch_size, max_exposures, shutter, md, monitor, map_timeout
        As in :func:`adaptive_ptycho_scan`.

    Yields
    ------
    Msg
        One run (see :func:`adaptive_scan`).
    """
    region = getattr(feed, "region", None) or (_limits(x_motor), _limits(y_motor))
    return (
        yield from adaptive_scan(
            detectors, [x_motor, y_motor, theta_motor], feed, np.asarray(seed_positions, float),
            modality="ptycho-tomography", plan_name="adaptive_ptycho_tomo_scan",
            pattern={"x_limits": list(region[0]), "y_limits": list(region[1]),
                     "theta_limits": _limits(theta_motor)},
            batch_size=batch_size, max_exposures=max_exposures, shutter=shutter, md=md,
            monitor=monitor, map_timeout=map_timeout,
        )
    )  # fmt: skip
