"""The beam: its (fluctuating) intensity, a shutter and an intensity monitor."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from ophyd import Component as Cpt
from ophyd import Signal
from ophyd.status import DeviceStatus

from .device import SimDevice
from .motors import ClockAlarm, SimClock

__all__ = ["Beam", "BeamMonitor", "Shutter"]


class Beam:
    """The source as the detectors see it: nominal flux times a slow relative drift.

    Each exposure calls :meth:`next_exposure`, which draws the intensity factor for it
    (a seeded random walk around 1 with relative step ``fluctuation``) and counts it in
    :attr:`exposures` (and in :attr:`dark_exposures` if it saw no beam): the I0 monitor
    reads these counters to report what the detectors' exposures saw, whatever order
    the two are triggered in.

    The beam can be lost: :meth:`dump` takes it to zero (every exposure then sees no
    photons) until :meth:`restore`; :meth:`schedule_dump` dumps it at a given exposure
    and restores it after a delay, as a storage ring refills. The delay is simulated
    time on ``clock`` (the beamline's :class:`~.motors.SimClock`): the beam comes back
    when the moves and exposures charged to the clock reach it, or, when nothing on the
    beamline advances the clock (the scan is suspended, waiting for the beam), after the
    delay times the clock's ``time_scale`` in wall seconds (the delay itself when
    ``time_scale`` is 0), the wait then being charged to the clock as ``"beam_down"``.
    Listeners added with :meth:`subscribe` are called with the new :attr:`intensity`
    whenever the beam goes down or comes back (the monitor's live ``source`` reading
    uses this).
    """

    def __init__(
        self, fluctuation: float = 0.01, seed: int = 0, clock: SimClock | None = None
    ) -> None:
        if fluctuation < 0:
            raise ValueError(f"fluctuation must be >= 0, got {fluctuation}")
        self.fluctuation = float(fluctuation)
        self.clock = clock if clock is not None else SimClock()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.factor = 1.0
        self._up = True
        self._listeners: list[Callable[[float], None]] = []
        self._dump_at: tuple[int, float] | None = None  # (exposures to go, seconds down)
        self._restore_token: object | None = None
        self._restore_alarm: ClockAlarm | None = None
        self._restore_timer: threading.Timer | None = None
        self.dumps = 0
        self.exposures = 0
        self.dark_exposures = 0

    @property
    def is_up(self) -> bool:
        """False while the beam is dumped."""
        return self._up

    @property
    def intensity(self) -> float:
        """Relative intensity now: the drift factor, or 0 while dumped."""
        return self.factor if self._up else 0.0

    def counters(self) -> tuple[int, int, int]:
        """``(exposures, dark_exposures, dumps)`` so far, read together."""
        with self._lock:
            return self.exposures, self.dark_exposures, self.dumps

    def next_exposure(self) -> float:
        """Draw and return the intensity factor of the next exposure (0 while dumped)."""
        dump_for = None
        with self._lock:
            if self._dump_at is not None:
                remaining, seconds = self._dump_at
                if remaining <= 1:
                    self._dump_at = None
                    dump_for = seconds
                else:
                    self._dump_at = (remaining - 1, seconds)
        if dump_for is not None:
            self.dump(restore_after=dump_for)
        with self._lock:
            if self.fluctuation > 0:
                step = self._rng.normal(0.0, self.fluctuation)
                # mean-reverting walk so the beam does not wander off
                self.factor = float(
                    np.clip(self.factor + step - 0.1 * (self.factor - 1.0), 0.5, 1.5)
                )
            self.exposures += 1
            self.dark_exposures += not self._up
            return self.intensity

    def subscribe(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(intensity)`` whenever the beam is dumped or restored."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback(self.intensity)

    def dump(self, restore_after: float | None = None) -> None:
        """Lose the beam now; with ``restore_after`` (simulated seconds on :attr:`clock`)
        it comes back by itself (see the class description)."""
        if restore_after is not None and not restore_after >= 0:
            raise ValueError(f"restore_after must be >= 0 seconds, got {restore_after}")
        with self._lock:
            self._up = False
            self.dumps += 1
            self._cancel_restore()
        self._notify()
        if restore_after is not None:
            self._schedule_restore(float(restore_after))

    def restore(self) -> None:
        """Bring the beam back (cancels a pending restore)."""
        with self._lock:
            self._up = True
            self._cancel_restore()
        self._notify()

    def schedule_dump(self, at_exposure: int, down_for: float) -> None:
        """Dump the beam at the ``at_exposure``-th exposure from now (1: the next one).

        That exposure and any taken before the beam returns see no photons; the beam
        is restored ``down_for`` simulated seconds after the dump (see the class
        description for the wall time when the beamline is idle).
        """
        if int(at_exposure) < 1:
            raise ValueError(f"at_exposure must be >= 1, got {at_exposure}")
        if not down_for >= 0:
            raise ValueError(f"down_for must be >= 0 seconds, got {down_for}")
        with self._lock:
            self._dump_at = (int(at_exposure), float(down_for))

    def _schedule_restore(self, seconds: float) -> None:
        token = object()  # this restore, told apart from any later dump's
        with self._lock:
            if self._up:  # restored meanwhile
                return
            self._restore_token = token
        clock = self.clock
        alarm = clock.call_at(clock.elapsed + seconds, lambda: self._restore_if(token))
        wall = seconds * clock.time_scale if clock.time_scale > 0 else seconds
        timer = threading.Timer(wall, self._wait_out, args=(token, alarm))
        timer.daemon = True
        with self._lock:
            if self._restore_token is not token:  # restored (or dumped again) meanwhile
                clock.cancel(alarm)
                return
            self._restore_alarm, self._restore_timer = alarm, timer
            timer.start()

    def _restore_if(self, token: object) -> None:
        """Restore, unless that restore was cancelled."""
        with self._lock:
            pending = self._restore_token is token
        if pending:
            self.restore()

    def _wait_out(self, token: object, alarm: ClockAlarm) -> None:
        """The restore's wall time is over and the clock has not reached it: the beamline
        waited idle; charge the rest of the outage to the clock, which restores the beam."""
        with self._lock:
            if self._restore_token is not token:
                return
        self.clock.charge(max(0.0, alarm.due - self.clock.elapsed), "beam_down")
        self._restore_if(token)  # in case the alarm was already cancelled by a reset race

    def _cancel_restore(self) -> None:
        if self._restore_timer is not None:
            self._restore_timer.cancel()
        if self._restore_alarm is not None:
            self.clock.cancel(self._restore_alarm)
        self._restore_token = self._restore_timer = self._restore_alarm = None


class Shutter(SimDevice):
    """A beam shutter: ``set("open")`` / ``set("closed")`` (also 1 / 0)."""

    state = Cpt(Signal, value="closed", kind="normal")

    def __init__(self, *, name: str = "shutter", open_time: float = 0.0, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.state.name = self.name
        self.open_time = float(open_time)

    @property
    def is_open(self) -> bool:
        return self.state.get() == "open"

    def set(self, value: str | int) -> DeviceStatus:
        """Open or close; anything but open/closed/1/0 is refused."""
        target = {"open": "open", "closed": "closed", 1: "open", 0: "closed"}.get(value)
        if target is None:
            raise ValueError(f"{self.name}: value must be 'open', 'closed', 1 or 0, got {value!r}")
        self.state.put(target)
        status = DeviceStatus(self)
        status.set_finished()
        return status


class BeamMonitor(SimDevice):
    """Incident-intensity monitor (I0): photons per second reaching the sample.

    ``intensity`` (read in events) integrates over the exposure window the monitor
    shares with the detectors, like an ion chamber counting alongside them: a reading
    covers the exposures taken since the monitor's previous reading (or since it was
    staged). It reads zero if the shutter is closed or if any of those exposures saw no
    beam, so the exposure taken as the beam went down is flagged whether the detector
    or the monitor is triggered first, and also when the beam died and came back
    before the monitor was read (a suspender held the scan in between). With no
    exposure in the window it reads zero if the beam is down, or went down since the
    previous reading. ``source`` (not read in events) follows the beam live, shutter or
    not, like a ring-current signal: it is what a suspender watches (see
    :func:`synaps_agent.reliability.beam_suspender`).
    """

    intensity = Cpt(Signal, value=0.0, kind="hinted")
    source = Cpt(Signal, value=0.0, kind="omitted")
    nominal_flux = Cpt(Signal, value=1e9, kind="config")

    def __init__(
        self, *, name: str = "i0", beam: Beam, shutter: Shutter, flux: float = 1e9, **kwargs
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.intensity.name = self.name
        self.beam = beam
        self.shutter = shutter
        self.nominal_flux.put(float(flux))
        self._update_source(beam.intensity)
        beam.subscribe(self._update_source)
        self._window_start = beam.counters()

    def _update_source(self, relative_intensity: float) -> None:
        self.source.put(relative_intensity * float(self.nominal_flux.get()))

    def _window_reading(self, counters: tuple[int, int, int]) -> float:
        """I0 over the window from its start to ``counters`` (:meth:`Beam.counters`)."""
        exposures, dark, dumps = counters
        seen_exposures, seen_dark, seen_dumps = self._window_start
        if exposures != seen_exposures:  # detectors exposed in the window
            lit, factor = dark == seen_dark, self.beam.factor
        else:
            lit, factor = self.beam.is_up and dumps == seen_dumps, self.beam.intensity
        if not self.shutter.is_open:
            lit = False
        return factor * float(self.nominal_flux.get()) if lit else 0.0

    def stage(self) -> list[object]:
        """Start the exposure window afresh (what happened before the scan is not in it)."""
        self._window_start = self.beam.counters()
        return super().stage()

    def trigger(self) -> DeviceStatus:
        """Latch the intensity seen so far in the window (final at :meth:`read`)."""
        self.intensity.put(self._window_reading(self.beam.counters()))
        status = DeviceStatus(self)
        status.set_finished()
        return status

    def read(self) -> dict:
        """The reading over the window, which then closes: the next one starts here."""
        counters = self.beam.counters()
        self.intensity.put(self._window_reading(counters))
        self._window_start = counters
        return super().read()
