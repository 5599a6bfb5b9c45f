"""Simulated motors: real ophyd devices whose moves cost (simulated) time.

A :class:`SimMotor` behaves like an EPICS motor record seen through ophyd: it has a
setpoint and a readback, soft limits, a velocity, an acceleration time and a settle
time, and :meth:`SimMotor.set` returns a :class:`ophyd.status.MoveStatus` that finishes
when the move is over.  Every move is charged to a shared :class:`SimClock`, so the
time a scan spends travelling is measurable even when ``time_scale`` is zero and the
motors move instantly in wall-clock time (as in the tests).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ophyd import Component as Cpt
from ophyd import Signal
from ophyd.status import MoveStatus
from ophyd.utils.errors import LimitError

from .device import SimDevice

__all__ = [
    "ClockAlarm",
    "LimitError",
    "SampleStage",
    "SimClock",
    "SimMotor",
    "trapezoid_move_time",
]


@dataclass(eq=False)
class ClockAlarm:
    """A callback due when the simulated clock reaches ``due`` (see :meth:`SimClock.call_at`)."""

    due: float
    callback: Callable[[], None] = field(compare=False)


@dataclass
class SimClock:
    """Simulated beamline time, shared by every simulated device of one beamline.

    Devices :meth:`charge` it with what they spend (moves, exposures); simulated
    processes that take time (a beam coming back after a dump) are scheduled on it with
    :meth:`call_at` and happen when the charged time reaches them.

    Moves of different motors charged one after another, with nothing else charged in
    between, run together (a plan's ``mv(x, a, y, b)``): the clock advances to the end of
    the longest, as the motors would. (Separate ``mv(x, a)``, ``mv(y, b)`` with nothing
    charged between them are counted as together too: the clock cannot see the plan's
    wait.)

    Attributes
    ----------
    time_scale : float
        Wall-clock seconds slept per simulated second (0: instantaneous, 1: real time).
    elapsed : float
        Simulated seconds spent so far, by kind in ``by_kind`` (``"move"``, ``"exposure"``).
    """

    time_scale: float = 0.0
    elapsed: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _alarms: list = field(default_factory=list, repr=False)  # heap of (due, n, alarm)
    _order: itertools.count = field(default_factory=itertools.count, repr=False)
    _movers: set = field(default_factory=set, repr=False)  # motors moving together
    _motion_start: float = field(default=0.0, repr=False)

    def charge(self, seconds: float, kind: str, *, mover: object | None = None) -> float:
        """Add ``seconds`` of simulated time of the given kind; return the wall time to sleep.

        A move (``kind="move"``) that ``mover`` charges right after other motors' moves
        overlaps them (see the class description): the clock advances only by what it
        adds to the longest. Alarms that fall due are called (in due order, on the
        caller's thread) before it returns.
        """
        wall = seconds * self.time_scale
        with self._lock:
            if kind == "move" and mover is not None:
                if not self._movers or mover in self._movers:  # a new motion begins
                    self._movers.clear()
                    self._motion_start = self.elapsed
                self._movers.add(mover)
                seconds = max(0.0, self._motion_start + seconds - self.elapsed)
            else:
                self._movers.clear()
            self.elapsed += seconds
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + seconds
            due = []
            while self._alarms and self._alarms[0][0] <= self.elapsed:
                due.append(heapq.heappop(self._alarms)[2])
        for alarm in due:
            alarm.callback()
        return wall

    def call_at(self, due: float, callback: Callable[[], None]) -> ClockAlarm:
        """Call ``callback()`` once the simulated time reaches ``due`` seconds.

        Returns the alarm, for :meth:`cancel`. One already due is called at once.
        """
        alarm = ClockAlarm(float(due), callback)
        with self._lock:
            if alarm.due > self.elapsed:
                heapq.heappush(self._alarms, (alarm.due, next(self._order), alarm))
                return alarm
        callback()
        return alarm

    def cancel(self, alarm: ClockAlarm) -> None:
        """Forget a pending alarm (nothing happens if it has gone off)."""
        with self._lock:
            kept = [entry for entry in self._alarms if entry[2] is not alarm]
            if len(kept) != len(self._alarms):
                self._alarms[:] = kept
                heapq.heapify(self._alarms)

    def reset(self) -> None:
        """Set the simulated time back to zero (pending alarms keep their time to go)."""
        with self._lock:
            shift = self.elapsed
            for index, (due, n, alarm) in enumerate(self._alarms):
                alarm.due = due - shift
                self._alarms[index] = (alarm.due, n, alarm)
            self.elapsed = 0.0
            self.by_kind.clear()
            self._movers.clear()


def trapezoid_move_time(distance: float, velocity: float, acceleration_time: float) -> float:
    """Duration of a point-to-point move with a trapezoidal velocity profile.

    Parameters
    ----------
    distance : float
        Absolute travel, in the motor's units.
    velocity : float
        Top speed, units per second (> 0).
    acceleration_time : float
        Seconds to reach top speed from rest (>= 0).

    Returns
    -------
    float
        Seconds from start to arrival, settle time not included.
    """
    distance = abs(distance)
    if distance == 0.0:
        return 0.0
    if velocity <= 0:
        raise ValueError(f"velocity must be positive, got {velocity}")
    if acceleration_time <= 0:
        return distance / velocity
    ramp_distance = velocity * acceleration_time  # both ramps together
    if distance >= ramp_distance:
        return distance / velocity + acceleration_time
    # triangular profile: never reaches top speed
    return 2.0 * math.sqrt(distance * acceleration_time / velocity)


class SimMotor(SimDevice):
    """A positioner with soft limits, velocity, acceleration and settle time.

    Reading it gives the readback under the motor's own name (like ``EpicsMotor``).
    A target outside the soft limits raises :class:`ophyd.utils.errors.LimitError`
    before anything moves.
    """

    SUB_READBACK = "readback"
    _default_sub = SUB_READBACK

    user_readback = Cpt(Signal, value=0.0, kind="hinted")
    user_setpoint = Cpt(Signal, value=0.0, kind="normal")
    velocity = Cpt(Signal, value=1.0, kind="config")
    acceleration = Cpt(Signal, value=0.1, kind="config")
    settle_time = Cpt(Signal, value=0.0, kind="config")
    low_limit_travel = Cpt(Signal, value=-math.inf, kind="config")
    high_limit_travel = Cpt(Signal, value=math.inf, kind="config")
    motor_egu = Cpt(Signal, value="", kind="config")

    def __init__(
        self,
        *,
        name: str,
        limits: tuple[float, float] = (-math.inf, math.inf),
        velocity: float = 1.0,
        acceleration_time: float = 0.1,
        settle_time: float = 0.0,
        egu: str = "",
        clock: SimClock | None = None,
        initial_position: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.user_readback.name = self.name
        self.motor_egu.put(egu)
        self._moving = False
        self._stall: tuple[float, float, float] | None = None
        self.configure_motion(
            limits=limits,
            velocity=velocity,
            acceleration_time=acceleration_time,
            settle_time=settle_time,
            clock=clock if clock is not None else SimClock(),
        )
        self._check_limits(initial_position)
        self.user_setpoint.put(float(initial_position))
        self.user_readback.put(float(initial_position))

    def configure_motion(
        self,
        *,
        limits: tuple[float, float],
        velocity: float,
        acceleration_time: float,
        settle_time: float,
        clock: SimClock,
    ) -> None:
        """Set soft limits, top speed (units/s), acceleration and settle times (s) and clock."""
        if velocity <= 0:
            raise ValueError(f"{self.name}: velocity must be positive, got {velocity}")
        if acceleration_time < 0 or settle_time < 0:
            raise ValueError(f"{self.name}: acceleration and settle times must be >= 0")
        self.set_limits(*limits)
        self.velocity.put(float(velocity))
        self.acceleration.put(float(acceleration_time))
        self.settle_time.put(float(settle_time))
        self.clock = clock

    # -- positioner API -------------------------------------------------------------
    @property
    def position(self) -> float:
        """Current readback."""
        return float(self.user_readback.get())

    @property
    def limits(self) -> tuple[float, float]:
        """Soft limits ``(low, high)``."""
        return float(self.low_limit_travel.get()), float(self.high_limit_travel.get())

    @property
    def low_limit(self) -> float:
        return self.limits[0]

    @property
    def high_limit(self) -> float:
        return self.limits[1]

    @property
    def egu(self) -> str:
        return str(self.motor_egu.get())

    @property
    def moving(self) -> bool:
        return self._moving

    def set_limits(self, low: float, high: float) -> None:
        """Set the soft limits; ``low`` must be below ``high``."""
        if not low < high:
            raise ValueError(f"{self.name}: low limit {low} must be below high limit {high}")
        self.low_limit_travel.put(float(low))
        self.high_limit_travel.put(float(high))

    def check_value(self, value: float) -> None:
        """Raise if ``value`` is not a finite number inside the soft limits."""
        self._check_limits(value)

    def _check_limits(self, value: float) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: target {value!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{self.name}: target {value} is not finite")
        low, high = self.limits
        if not low <= value <= high:
            raise LimitError(
                f"{self.name}: target {value} {self.egu} is outside the soft limits "
                f"[{low}, {high}] {self.egu}"
            )

    def move_time(self, target: float) -> float:
        """Simulated seconds a move from the current position to ``target`` takes."""
        travel = trapezoid_move_time(
            target - self.position, float(self.velocity.get()), float(self.acceleration.get())
        )
        return travel + (float(self.settle_time.get()) if travel > 0 else 0.0)

    def stall_between(self, low: float, high: float, *, timeout: float = 0.2) -> None:
        """Inject a fault: a move whose target lies in ``[low, high]`` stalls (a motor stuck
        on a mechanical fault): it never arrives, the readback stays where it was, and
        its status fails with a timeout after ``timeout`` wall seconds. Cleared by
        :meth:`clear_faults`."""
        if not low <= high:
            raise ValueError(f"{self.name}: stall region needs low <= high, got {low}, {high}")
        if not timeout > 0:
            raise ValueError(f"{self.name}: stall timeout must be > 0 seconds, got {timeout}")
        self._stall = (float(low), float(high), float(timeout))

    def clear_faults(self) -> None:
        """Remove an injected fault (:meth:`stall_between`)."""
        self._stall = None

    def set(self, value: float) -> MoveStatus:
        """Move to ``value``; the status finishes after the (scaled) simulated move time."""
        self._check_limits(value)
        target = float(value)
        stall = self._stall
        if stall is not None and stall[0] <= target <= stall[1]:
            self.user_setpoint.put(target)
            return MoveStatus(self, target, timeout=stall[2])  # never finished: times out
        start = self.position
        duration = self.move_time(target)
        wall = self.clock.charge(duration, "move", mover=self)
        self.user_setpoint.put(target)
        status = MoveStatus(self, target)
        if wall <= 0:
            self._update_readback(target)
            status.set_finished()
            return status

        def run() -> None:
            self._moving = True
            steps = max(1, min(20, int(wall / 0.02)))
            try:
                for i in range(1, steps + 1):
                    time.sleep(wall / steps)
                    self._update_readback(start + (target - start) * i / steps)
            finally:
                self._moving = False
            status.set_finished()

        threading.Thread(target=run, daemon=True, name=f"{self.name}-move").start()
        return status

    def _update_readback(self, value: float) -> None:
        self.user_readback.put(value)
        self._run_subs(sub_type=self.SUB_READBACK, value=value, timestamp=time.time())

    def stop(self, *, success: bool = False) -> None:
        """Stopping a simulated move is immediate; the move thread simply finishes."""


class SampleStage(SimDevice):
    """The sample stage: ``x`` and ``y`` translations (um) and rotation ``theta`` (deg)."""

    x = Cpt(SimMotor, egu="um", kind="hinted")
    y = Cpt(SimMotor, egu="um", kind="hinted")
    theta = Cpt(SimMotor, egu="deg", kind="hinted")

    def __init__(
        self,
        *,
        name: str = "stage",
        x_limits: tuple[float, float] = (-1000.0, 1000.0),
        y_limits: tuple[float, float] = (-1000.0, 1000.0),
        theta_limits: tuple[float, float] = (-200.0, 200.0),
        xy_velocity: float = 20.0,
        theta_velocity: float = 30.0,
        acceleration_time: float = 0.05,
        settle_time: float = 0.02,
        clock: SimClock | None = None,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.clock = clock if clock is not None else SimClock()
        for motor, limits, velocity in (
            (self.x, x_limits, xy_velocity),
            (self.y, y_limits, xy_velocity),
            (self.theta, theta_limits, theta_velocity),
        ):
            motor.configure_motion(
                limits=limits,
                velocity=velocity,
                acceleration_time=acceleration_time,
                settle_time=settle_time,
                clock=self.clock,
            )
            motor.user_readback.put(min(max(0.0, limits[0]), limits[1]))
