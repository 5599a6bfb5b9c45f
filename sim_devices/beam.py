"""The beam: its (fluctuating) intensity, a shutter and an intensity monitor."""

from __future__ import annotations

import threading

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
    """

    def __init__(self, fluctuation: float = 0.01, seed: int = 0) -> None:
        if fluctuation < 0:
            raise ValueError(f"fluctuation must be >= 0, got {fluctuation}")
        self.fluctuation = float(fluctuation)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.factor = 1.0

    def next_exposure(self) -> float:
        """Draw and return the intensity factor of the next exposure."""
        with self._lock:
            if self.fluctuation > 0:
                step = self._rng.normal(0.0, self.fluctuation)
                # mean-reverting walk so the beam does not wander off
                self.factor = float(
                    np.clip(self.factor + step - 0.1 * (self.factor - 1.0), 0.5, 1.5)
                )
            return self.factor


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
    """Incident-intensity monitor (I0): photons per second reaching the sample."""

    intensity = Cpt(Signal, value=0.0, kind="hinted")
    nominal_flux = Cpt(Signal, value=1e9, kind="config")

    def __init__(
        self, *, name: str = "i0", beam: Beam, shutter: Shutter, flux: float = 1e9, **kwargs
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.intensity.name = self.name
        self.beam = beam
        self.shutter = shutter
        self.nominal_flux.put(float(flux))

    def trigger(self) -> DeviceStatus:
        """Latch the intensity of the current exposure (zero with the shutter closed)."""
        value = self.beam.factor * float(self.nominal_flux.get()) if self.shutter.is_open else 0.0
        self.intensity.put(value)
        status = DeviceStatus(self)
        status.set_finished()
        return status
