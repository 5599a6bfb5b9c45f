"""The base class of the simulated devices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ophyd import Device
from ophyd.ophydobj import OphydObject

__all__ = ["SimDevice"]


class SimDevice(Device):
    """An ophyd ``Device`` whose ``repr`` names it without listing its components.

    The RunEngine takes the ``repr`` of the device of every message (for its tracing
    spans, even when nothing records them), and ophyd's ``Device.__repr__`` walks every
    component to list ``read_attrs`` and ``configuration_attrs``: 40-160 us per device,
    about 1 ms per exposure of the simulated beamline. The short form is
    ``SimMotor(prefix='', name='stage_x', parent='stage')``.
    """

    def _repr_info(self) -> Iterator[tuple[str, Any]]:
        yield ("prefix", self.prefix)
        yield from OphydObject._repr_info(self)
