"""A small Channel Access IOC (caproto) with the PVs a facility profile connects to.

It serves, under one prefix (default ``SYNAPS:``):

* three motor records, ``{prefix}x``, ``{prefix}y`` (um) and ``{prefix}theta`` (deg), with
  the fields ophyd's ``EpicsMotor`` uses (``.VAL``, ``.RBV``, ``.DMOV``, ``.MOVN``,
  ``.HLM``, ``.LLM``, ``.EGU``, ``.VELO``, ``.STOP``, ...). A put to ``.VAL`` moves the
  readback at ``.VELO`` (``.DMOV`` drops to 0, then back to 1); a target outside
  ``[.LLM, .HLM]`` is refused by the record (``.LVIO`` set, nothing moves), and the limits
  are also the ``.VAL`` control limits, so clients refuse it before the put;
* ``{prefix}shutter``: an enum, ``closed`` / ``open``;
* ``{prefix}i0``: an incident-flux monitor (photons/s, read only).

It lets the facility template (``profiles/facility``) be tried, and tested, without a
beamline. Run it on loopback with::

    EPICS_CAS_INTF_ADDR_LIST=127.0.0.1 python -m synaps_agent.sim_devices.epics_ioc --list-pvs

(``--prefix`` changes the prefix; clients need ``EPICS_CA_ADDR_LIST=127.0.0.1`` and
``EPICS_CA_AUTO_ADDR_LIST=NO``).
"""

from __future__ import annotations

from textwrap import dedent

from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, ioc_arg_parser, pvproperty, run

__all__ = ["MotorRecord", "SynapsBeamlineIOC"]


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


class SynapsBeamlineIOC(PVGroup):
    """Stage x, y (um), theta (deg), a shutter and an I0 monitor on Channel Access.

    PVs
    ---
    x, y, theta (motor records), shutter (enum closed/open), i0 (photons/s)
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


def main() -> None:
    """Run the IOC (``--prefix``, ``--list-pvs``, ``--interfaces`` as any caproto IOC)."""
    ioc_options, run_options = ioc_arg_parser(
        default_prefix="SYNAPS:", desc=dedent(SynapsBeamlineIOC.__doc__)
    )
    ioc = SynapsBeamlineIOC(**ioc_options)
    run(ioc.pvdb, **run_options)


if __name__ == "__main__":
    main()
