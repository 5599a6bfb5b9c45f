"""Adaptive scans: seed measurements, then let the agent choose, until its stopping rule.

The plan asks an :class:`~synaps_agent.callbacks.agent_feed.AgentFeed` (an agent connected
to the live segmentation) for a batch of points, moves and exposes at each, tells the
feed what was measured, and repeats until the agent's stopping rule or the exposure
budget ends the run. Moves that fail (limits, a motor fault) are recorded and the point
is never proposed again; the scan goes on. One run per scan; the stop document's reason
says why it stopped.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import FailedStatus, Msg
from ophyd.utils.errors import LimitError

from .metadata import scan_metadata
from .scans import _as_positions, _check_detectors, _with_shutter
from .stubs import check_within_limits, move_and_expose

__all__ = ["adaptive_ptycho_scan"]

Plan = Generator[Msg, Any, str]


def _limits(motor: Movable) -> list[float]:
    low, high = getattr(motor, "limits", (0.0, 0.0))
    return [float(low), float(high)]


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

    Yields
    ------
    Msg
        One run: the seed exposures, then per decision a batch of moves and exposures.
    """
    detectors = _check_detectors(detectors)
    seeds = _as_positions(seed_positions)
    done = getattr(feed, "already_done", None)
    todo = seeds if done is None else seeds[~done(seeds)]  # a resumed scan skips them
    if batch_size < 1 or max_exposures < len(todo):
        raise ValueError(
            "batch_size must be >= 1 and max_exposures >= the number of seeds to measure"
        )
    check_within_limits(x_motor, seeds[:, 0])
    check_within_limits(y_motor, seeds[:, 1])
    # the region the agent may propose in (the reconstruction pre-sizes its grid to it)
    x_limits, y_limits = getattr(feed, "region", None) or (_limits(x_motor), _limits(y_motor))
    pattern = {
        "kind": "adaptive",
        "x_limits": list(x_limits),
        "y_limits": list(y_limits),
        "seed_positions": seeds.tolist(),
        "batch_size": batch_size,
        "max_exposures": max_exposures,
    }
    _md = scan_metadata(
        modality="ptychography",
        plan_name="adaptive_ptycho_scan",
        detectors=detectors,
        motors=[x_motor, y_motor],
        pattern=pattern,
        num_points=max_exposures,
        md=md,
    )

    def expose_at(x: float, y: float) -> Generator[Msg, Any, bool]:
        try:
            yield from move_and_expose(detectors, {x_motor: x, y_motor: y})
        except (LimitError, FailedStatus, ValueError) as exc:
            feed.failed((x, y), f"{type(exc).__name__}: {exc}")
            return False
        feed.measured((x, y))
        return True

    @bpp.stage_decorator(detectors)
    def scan() -> Generator[Msg, Any, str]:
        exposures = 0
        for x, y in todo:
            exposures += bool((yield from expose_at(float(x), float(y))))
        while True:
            stop, reason = feed.should_stop()
            if stop:
                return reason
            if exposures >= max_exposures:
                return f"exposure budget of the plan reached: {exposures}"
            points = feed.ask(min(batch_size, max_exposures - exposures))
            if len(points) == 0:
                return "the agent had no admissible point left"
            for x, y in points[:, :2]:
                exposures += bool((yield from expose_at(float(x), float(y))))

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
