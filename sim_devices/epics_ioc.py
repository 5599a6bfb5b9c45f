"""A small Channel Access IOC (caproto) with the PVs a facility profile connects to.

It serves, under one prefix (default ``SYNAPS:``):

* three motor records, ``{prefix}x``, ``{prefix}y`` (um) and ``{prefix}theta`` (deg), with
  the fields ophyd's ``EpicsMotor`` uses (``.VAL``, ``.RBV``, ``.DMOV``, ``.MOVN``,
  ``.HLM``, ``.LLM``, ``.EGU``, ``.VELO``, ``.STOP``, ...). A put to ``.VAL`` moves the
  readback at ``.VELO`` (``.DMOV`` drops to 0, then back to 1); a target outside
  ``[.LLM, .HLM]`` is refused by the record (``.LVIO`` set, nothing moves), and the limits
  are also the ``.VAL`` control limits, so clients refuse it before the put;
* ``{prefix}shutter``: an enum, ``closed`` / ``open``;
* ``{prefix}i0``: an incident-flux monitor (photons/s, read only);
* ``{prefix}det:``: a minimal areaDetector, the far-field ptychography camera
  (:class:`AreaDetectorIOC`: ``cam1:Acquire``, ``cam1:AcquireTime``,
  ``cam1:ArrayCounter_RBV``, ``image1:ArrayData``, ``image1:ArraySize0_RBV`` /
  ``ArraySize1_RBV``, and ``cam1:Geometry_RBV``). Each acquisition is the simulated
  ptychography detector's frame (a phantom behind a focused probe, Poisson noise) at the
  IOC's own x, y, theta readbacks, with photons only while the shutter PV is ``open``.
  :class:`IOCPtychoDetector` is the ophyd device a profile connects to it.

It lets the facility template (``profiles/facility``) be tried, and tested, without a
beamline. Run it on loopback with::

    EPICS_CAS_INTF_ADDR_LIST=127.0.0.1 python -m synaps_agent.sim_devices.epics_ioc --list-pvs

(``--prefix`` changes the prefix; clients need ``EPICS_CA_ADDR_LIST=127.0.0.1`` and
``EPICS_CA_AUTO_ADDR_LIST=NO``).
"""

from __future__ import annotations

import json
import tempfile
from textwrap import dedent
from types import SimpleNamespace

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, ioc_arg_parser, pvproperty, run
from ophyd import Component as Cpt
from ophyd import EpicsSignalRO

from synaps_agent.facility import EpicsAreaDetector

__all__ = ["AreaDetectorIOC", "IOCPtychoDetector", "MotorRecord", "SynapsBeamlineIOC"]

#: the simulated sample and camera behind ``{prefix}det:`` (the tests rebuild them with
#: these settings to know what each frame should hold)
DETECTOR_SIMULATION = {
    "phantom": "P-sparse", "seed": 0, "size": 96, "frame_size": 32,
    "photons_per_frame": 1e5, "probe_fwhm_px": 10.0,
}  # fmt: skip


class MotorRecord(PVGroup):
    """One motor record: ``{prefix}`` is ``.VAL``, the other fields hang off it.

    Parameters
    ----------
    limits : (low, high)
        User soft limits (``.LLM``, ``.HLM``), also the control limits of ``.VAL``.
    velocity : float
        ``.VELO``, units per second.
    egu : str
        Engineering units (``.EGU``).
    tick : float
        Seconds between readback updates during a move.
    """

    motor = pvproperty(value=0.0, name="", record="motor", precision=4)

    def __init__(
        self,
        *args,
        limits: tuple[float, float] = (-10.0, 10.0),
        velocity: float = 10.0,
        egu: str = "um",
        tick: float = 0.02,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.soft_limits = (float(limits[0]), float(limits[1]))
        self.default_velocity = float(velocity)
        self.egu = egu
        self.tick = float(tick)
        self._requested = False

    @motor.startup
    async def motor(self, instance, async_lib) -> None:
        """Set the fields up, then move the readback towards ``.VAL`` whenever it is put."""
        fields = instance.field_inst
        low, high = self.soft_limits
        await instance.write_metadata(
            lower_ctrl_limit=low, upper_ctrl_limit=high, units=self.egu
        )
        await fields.user_low_limit.write(low)
        await fields.user_high_limit.write(high)
        await fields.dial_low_limit.write(low)
        await fields.dial_high_limit.write(high)
        await fields.engineering_units.write(self.egu)
        await fields.velocity.write(self.default_velocity)
        await fields.max_velocity.write(10 * self.default_velocity)
        await fields.seconds_to_velocity.write(0.0)
        await fields.motor_step_size.write(1e-6)

        async def value_write_hook(fields, value) -> None:
            self._requested = True

        fields.value_write_hook = value_write_hook
        sleep = async_lib.library.sleep
        while True:
            await sleep(self.tick)
            if not self._requested:
                if fields.stop.value:  # a stop while idle (bluesky stops every motor
                    await fields.stop.write(0)  # it touched at the end of a plan)
                continue
            self._requested = False
            await fields.stop.write(0)
            target = float(instance.value)
            start = float(fields.user_readback_value.value)
            if not float(fields.user_low_limit.value) <= target <= float(
                fields.user_high_limit.value
            ):
                # what the motor record does: flag the limit violation, do not move
                await fields.limit_violation.write(1)
                await instance.write(start, verify_value=False)
                continue
            await fields.limit_violation.write(0)
            await fields.done_moving_to_value.write(0)
            await fields.motor_is_moving.write(1)
            velocity = max(float(fields.velocity.value), 1e-9)
            steps = max(1, int(abs(target - start) / velocity / self.tick))
            position = start
            for step in range(1, steps + 1):
                await sleep(self.tick)
                if fields.stop.value:
                    await fields.stop.write(0)
                    await instance.write(position, verify_value=False)
                    break
                position = start + (target - start) * step / steps
                await fields.user_readback_value.write(position)
                await fields.dial_readback_value.write(position)
            await fields.motor_is_moving.write(0)
            await fields.done_moving_to_value.write(1)


def simulated_ptycho_beamline(frames_directory: str | None = None):
    """The simulated beamline whose ptychography camera ``{prefix}det:`` serves
    (:data:`DETECTOR_SIMULATION`); its detector never writes files here."""
    from .beamline import make_sim_beamline
    from .phantoms import make_phantom

    settings = DETECTOR_SIMULATION
    phantom = make_phantom(settings["phantom"], settings["seed"], size=settings["size"])
    return make_sim_beamline(
        phantom,
        frames_directory or tempfile.gettempdir(),
        seed=settings["seed"],
        frame_size=settings["frame_size"],
        photons_per_frame=settings["photons_per_frame"],
        probe_fwhm_px=settings["probe_fwhm_px"],
    )


class AreaDetectorIOC(PVGroup):
    """A minimal areaDetector: ``cam1:`` acquisition PVs and an ``image1:`` array.

    A put of 1 (``Acquire``) to ``cam1:Acquire`` exposes for ``cam1:AcquireTime``
    seconds, publishes the frame in ``image1:ArrayData`` (row-major, ``ArraySize1_RBV``
    rows of ``ArraySize0_RBV`` columns), increments ``cam1:ArrayCounter_RBV`` and only
    then completes the put (a client waiting on put completion has the frame) and reads
    ``Done`` again. ``cam1:Geometry_RBV`` is the JSON of what a reconstruction needs to
    know about the camera (``PtychoDetector.geometry()``). The frame comes from the
    parent IOC's :meth:`SynapsBeamlineIOC.expose`.
    """

    frame_size = DETECTOR_SIMULATION["frame_size"]

    acquire = pvproperty(
        value="Done", name="cam1:Acquire", dtype=ChannelType.ENUM,
        enum_strings=["Done", "Acquire"], doc="Start one acquisition",
    )  # fmt: skip
    acquire_time = pvproperty(value=0.005, name="cam1:AcquireTime", units="s")
    array_counter = pvproperty(value=0, name="cam1:ArrayCounter_RBV", read_only=True)
    geometry = pvproperty(
        value="{}", name="cam1:Geometry_RBV", dtype=ChannelType.CHAR, max_length=4096,
        read_only=True,
    )  # fmt: skip
    array_size0 = pvproperty(value=frame_size, name="image1:ArraySize0_RBV", read_only=True)
    array_size1 = pvproperty(value=frame_size, name="image1:ArraySize1_RBV", read_only=True)
    array_data = pvproperty(
        value=[0] * frame_size**2, name="image1:ArrayData", dtype=int,
        max_length=frame_size**2, read_only=True,
    )  # fmt: skip

    @acquire.startup
    async def acquire(self, instance, async_lib) -> None:
        self._sleep = async_lib.library.sleep
        await self.geometry.write(json.dumps(self.parent.detector_geometry()))

    @acquire.putter
    async def acquire(self, instance, value) -> str:
        if value not in ("Acquire", 1):
            return "Done"
        await self._sleep(max(float(self.acquire_time.value), 0.0))
        frame = self.parent.expose()
        await self.array_data.write(np.asarray(frame, dtype=np.int32).ravel().tolist())
        await self.array_counter.write(int(self.array_counter.value) + 1)
        return "Done"


class SynapsBeamlineIOC(PVGroup):
    """Stage x, y (um), theta (deg), a shutter, an I0 monitor and a ptychography area
    detector on Channel Access.

    PVs
    ---
    x, y, theta (motor records), shutter (enum closed/open), i0 (photons/s),
    det:cam1:..., det:image1:... (area detector)
    """

    x = SubGroup(MotorRecord, prefix="x", limits=(-20.0, 20.0), velocity=50.0, egu="um")
    y = SubGroup(MotorRecord, prefix="y", limits=(-20.0, 20.0), velocity=50.0, egu="um")
    theta = SubGroup(
        MotorRecord, prefix="theta", limits=(-200.0, 200.0), velocity=360.0, egu="deg"
    )
    shutter = pvproperty(
        value="closed",
        name="shutter",
        dtype=ChannelType.ENUM,
        enum_strings=["closed", "open"],
        doc="Beam shutter",
    )
    i0 = pvproperty(
        value=1e9, name="i0", read_only=True, units="ph/s", doc="Incident flux (photons/s)"
    )
    det = SubGroup(AreaDetectorIOC, prefix="det:")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._simulation = simulated_ptycho_beamline()

    def detector_geometry(self) -> dict:
        """What the simulated camera tells a reconstruction (``PtychoDetector.geometry``)."""
        return self._simulation.ptycho_det.geometry()

    def expose(self) -> np.ndarray:
        """One frame of the simulated camera at the motors' readbacks (zeros while the
        shutter is closed)."""
        detector = self._simulation.ptycho_det
        position = {
            axis: SimpleNamespace(
                position=float(getattr(self, axis).motor.field_inst.user_readback_value.value)
            )
            for axis in ("x", "y", "theta")
        }
        detector.stage_device = SimpleNamespace(**position)
        detector.shutter = SimpleNamespace(is_open=self.shutter.value == "open")
        return detector.acquire()


class IOCPtychoDetector(EpicsAreaDetector):
    """The ophyd device for this IOC's ``{prefix}det:`` camera: an
    :class:`~synaps_agent.facility.EpicsAreaDetector` whose ``geometry()`` is what the
    IOC publishes in ``cam1:Geometry_RBV`` (a real camera's class would know it from
    the beamline's configuration)."""

    geometry_json = Cpt(EpicsSignalRO, "cam1:Geometry_RBV", string=True, kind="omitted")

    def geometry(self) -> dict:
        served = json.loads(self.geometry_json.get())
        return {**served, **super().geometry()}


def main() -> None:
    """Run the IOC (``--prefix``, ``--list-pvs``, ``--interfaces`` as any caproto IOC)."""
    ioc_options, run_options = ioc_arg_parser(
        default_prefix="SYNAPS:", desc=dedent(SynapsBeamlineIOC.__doc__)
    )
    ioc = SynapsBeamlineIOC(**ioc_options)
    run(ioc.pvdb, **run_options)


if __name__ == "__main__":
    main()
