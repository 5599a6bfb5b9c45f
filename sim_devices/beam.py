"""The beam: its (fluctuating) intensity, a shutter and an intensity monitor."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

__all__ = ["Beam", "BeamMonitor", "Shutter"]


class Beam:
    """The source as the detectors see it: nominal flux times a slow relative drift.

    Each exposure calls :meth:`next_exposure`, which draws the intensity factor for it
    (a seeded random walk around 1 with relative step ``fluctuation``); the monitor
    reports the factor of the latest exposure, as an ion chamber read with it would.

    The beam can be lost: :meth:`dump` takes it to zero (every exposure then sees no
    photons) until :meth:`restore`; :meth:`schedule_dump` dumps it at a given exposure
    and restores it after a wall-clock delay, as a storage ring refills. Listeners
    added with :meth:`subscribe` are called with the new :attr:`intensity` whenever the
    beam goes down or comes back (the monitor's live ``source`` reading uses this).
    """

    def __init__(self, fluctuation: float = 0.01, seed: int = 0) -> None:
        if fluctuation < 0:
            raise ValueError(f"fluctuation must be >= 0, got {fluctuation}")
        self.fluctuation = float(fluctuation)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.factor = 1.0
        self._up = True
        self._listeners: list[Callable[[float], None]] = []
        self._dump_at: tuple[int, float] | None = None  # (exposures to go, seconds down)
        self._restore_timer: threading.Timer | None = None
        self.dumps = 0

    @property
    def is_up(self) -> bool:
        """False while the beam is dumped."""
        return self._up

    @property
    def intensity(self) -> float:
        """Relative intensity now: the drift factor, or 0 while dumped."""
        return self.factor if self._up else 0.0

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
            return self.intensity

    def subscribe(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(intensity)`` whenever the beam is dumped or restored."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback(self.intensity)

    def dump(self, restore_after: float | None = None) -> None:
        """Lose the beam now; with ``restore_after`` (wall seconds) it comes back by itself."""
        if restore_after is not None and not restore_after >= 0:
            raise ValueError(f"restore_after must be >= 0 seconds, got {restore_after}")
        with self._lock:
            self._up = False
            self.dumps += 1
            self._cancel_timer()
            if restore_after is not None:
                self._restore_timer = threading.Timer(restore_after, self.restore)
                self._restore_timer.daemon = True
                self._restore_timer.start()
        self._notify()

    def restore(self) -> None:
        """Bring the beam back."""
        with self._lock:
            self._up = True
            self._cancel_timer()
        self._notify()

    def schedule_dump(self, at_exposure: int, down_for: float) -> None:
        """Dump the beam at the ``at_exposure``-th exposure from now (1: the next one).

        That exposure and any taken before the beam returns see no photons; the beam
        is restored ``down_for`` wall-clock seconds after the dump.
        """
        if int(at_exposure) < 1:
            raise ValueError(f"at_exposure must be >= 1, got {at_exposure}")
        if not down_for >= 0:
            raise ValueError(f"down_for must be >= 0 seconds, got {down_for}")
        with self._lock:
            self._dump_at = (int(at_exposure), float(down_for))

    def _cancel_timer(self) -> None:
        if self._restore_timer is not None:
            self._restore_timer.cancel()
        self._restore_timer = None


class Shutter(Device):
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


class BeamMonitor(Device):
    """Incident-intensity monitor (I0): photons per second reaching the sample.

    ``intensity`` (read in events) is latched at each exposure: zero with the shutter
    closed or the beam dumped, which flags that exposure. Like an integrating ion
    chamber it also reads zero when the beam went down at any time since its previous
    reading, so an exposure whose beam died and came back before the monitor was read
    (a suspender held the scan in between) is still flagged. ``source`` (not read in
    events) follows the beam live, shutter or not, like a ring-current signal: it is
    what a suspender watches (see :func:`synaps_agent.reliability.beam_suspender`).
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
        self._dumps_seen = beam.dumps

    def _update_source(self, relative_intensity: float) -> None:
        self.source.put(relative_intensity * float(self.nominal_flux.get()))

    def trigger(self) -> DeviceStatus:
        """Latch the intensity of the current exposure (zero with the shutter closed)."""
        flux = float(self.nominal_flux.get())
        dumped_since_last_reading = self.beam.dumps != self._dumps_seen
        self._dumps_seen = self.beam.dumps
        lit = self.shutter.is_open and not dumped_since_last_reading
        value = self.beam.intensity * flux if lit else 0.0
        self.intensity.put(value)
        status = DeviceStatus(self)
        status.set_finished()
        return status
