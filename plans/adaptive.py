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
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import FailedStatus, Msg
from ophyd.utils.errors import LimitError

from .metadata import scan_metadata
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
        segmentation something to start from.
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
    detectors = list(detectors)
    if not detectors:
        raise ValueError("at least one detector is needed")
    seeds = np.asarray(seed_positions, dtype=float)
    if seeds.ndim != 2 or seeds.shape[1] != 2 or len(seeds) == 0:
        raise ValueError(f"seed_positions must be a non-empty list of (x, y), got {seeds.shape}")
    if batch_size < 1 or max_exposures < len(seeds):
        raise ValueError("batch_size must be >= 1 and max_exposures >= the number of seeds")
    check_within_limits(x_motor, seeds[:, 0])
    check_within_limits(y_motor, seeds[:, 1])
    pattern = {
        "kind": "adaptive",
        "x_limits": _limits(x_motor),
        "y_limits": _limits(y_motor),
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

    def body() -> Plan:
        uid = yield from bps.open_run(md=_md)
        feed.open(uid, parameters={"batch_size": batch_size, "max_exposures": max_exposures})
        reason = ""
        exposures = 0
        try:
            for sx in detectors:
                yield from bps.stage(sx)
            if shutter is not None:
                yield from bps.mv(shutter, "open")
            for x, y in seeds:
                exposures += bool((yield from expose_at(float(x), float(y))))
            while True:
                stop, reason = feed.should_stop()
                if stop:
                    break
                if exposures >= max_exposures:
                    reason = f"exposure budget of the plan reached: {exposures}"
                    break
                points = feed.ask(min(batch_size, max_exposures - exposures))
                if len(points) == 0:
                    reason = "the agent had no admissible point left"
                    break
                for x, y in points[:, :2]:
                    exposures += bool((yield from expose_at(float(x), float(y))))
        finally:
            if shutter is not None:
                yield from bps.mv(shutter, "closed")
            for sx in detectors:
                yield from bps.unstage(sx)
        feed.close(reason)
        yield from bps.close_run(exit_status="success", reason=reason)
        return uid

    return (yield from body())
