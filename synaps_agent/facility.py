"""A facility's devices for the synaps-agent plans, from a small TOML file.

The plans need devices in seven roles: the sample stage's ``stage_x``, ``stage_y`` and
``stage_theta`` (ophyd ``EpicsMotor`` records), a ``shutter`` (a PV taking an open and a
closed value), a ``monitor`` of the incident flux (a PV), the ``ptycho_detector`` and the
``projection_detector`` (area detectors: the facility's ophyd class and its PV prefix, or
the simulated detectors looking at a phantom through the real stage, to try the setup
before wiring detectors). :func:`load_facility_config` reads and checks the file;
:func:`connect_roles` builds and connects the devices. The Tiled server's API key is never
in the file: ``[tiled] api_key_env`` names the environment variable that holds it.

See ``profiles/facility/synaps_facility.toml`` for a commented example.
"""

from __future__ import annotations

import atexit
import importlib
import inspect
import os
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO
from ophyd.status import DeviceStatus

from .sim_devices.frame_files import HDF5FrameWriter

__all__ = [
    "DetectorRole",
    "EpicsAreaDetector",
    "FacilityConfig",
    "FacilityConfigError",
    "FacilityStage",
    "MotorRole",
    "ROLES",
    "SignalRole",
    "connect_roles",
    "load_facility_config",
    "make_agent_feed",
    "run_at_exit",
]

#: every role the plans need
ROLES = (
    "stage_x",
    "stage_y",
    "stage_theta",
    "ptycho_detector",
    "projection_detector",
    "shutter",
    "monitor",
)
MOTOR_ROLES = ("stage_x", "stage_y", "stage_theta")
DETECTOR_ROLES = ("ptycho_detector", "projection_detector")

#: units each motor role accepts (the plans take positions in the motor's own units)
ALLOWED_UNITS = {
    "stage_x": ("nm", "um", "mm"),
    "stage_y": ("nm", "um", "mm"),
    "stage_theta": ("deg",),
}
_UNIT_SPELLINGS = {"µm": "um", "μm": "um", "micron": "um", "microns": "um", "degree": "deg",
                   "degrees": "deg"}

#: the profile names the roles get (as in the simulated profile)
DEVICE_NAMES = {
    "stage_x": "stage_x",
    "stage_y": "stage_y",
    "stage_theta": "stage_theta",
    "ptycho_detector": "ptycho_det",
    "projection_detector": "proj_det",
    "shutter": "shutter",
    "monitor": "i0",
}


class FacilityConfigError(ValueError):
    """The facility file (or what it points at) is wrong; the message names the key."""


@dataclass(frozen=True)
class MotorRole:
    """An ``EpicsMotor`` record (``motor`` is the record name, e.g. ``XF:99ID{Stg:X}Mtr``)."""

    role: str
    motor: str
    units: str


@dataclass(frozen=True)
class SignalRole:
    """A scalar PV: the monitor (read), or the shutter (``open`` / ``closed`` are put)."""

    role: str
    pv: str
    open_value: str | int | None = None
    closed_value: str | int | None = None


@dataclass(frozen=True)
class DetectorRole:
    """An area detector: ``device_class`` (``"module:Class"``) built as
    ``Class(prefix, name=...)``, or ``simulated`` (the synaps-agent simulated detector)."""

    role: str
    prefix: str | None = None
    device_class: str | None = None
    simulated: bool = False


@dataclass(frozen=True)
class FacilityConfig:
    """What :func:`load_facility_config` read.

    Attributes
    ----------
    beamline_id : str
        Goes into every run's metadata (``RE.md["beamline_id"]``).
    roles : dict
        Role name -> :class:`MotorRole`, :class:`SignalRole` or :class:`DetectorRole`.
    tiled_uri : str or None
        The facility's Tiled server; ``None``: the embedded catalog.
    tiled_api_key_env : str
        Name of the environment variable holding the Tiled API key.
    connection_timeout : float
        Seconds to wait for each device's PVs.
    simulation : dict
        Settings of the simulated detectors (``phantom``, ``size``, ``seed``).
    source : Path or None
        The file it was read from.
    """

    beamline_id: str
    roles: dict[str, MotorRole | SignalRole | DetectorRole]
    tiled_uri: str | None = None
    tiled_api_key_env: str = "SYNAPS_TILED_API_KEY"
    connection_timeout: float = 10.0
    simulation: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def tiled_api_key(self) -> str | None:
        """The API key from the environment; an error if a server is set and the key not."""
        if self.tiled_uri is None:
            return None
        key = os.environ.get(self.tiled_api_key_env)
        if not key:
            raise FacilityConfigError(
                f"tiled.api_key_env: the environment variable {self.tiled_api_key_env} "
                f"(the API key of {self.tiled_uri}) is not set"
            )
        return key


@dataclass
class FacilityStage:
    """The sample stage the plans drive: ``x``, ``y`` and ``theta`` motors."""

    x: Any
    y: Any
    theta: Any


# -- reading the file -------------------------------------------------------------------
_TOP_KEYS = {"facility", "tiled", "epics", "roles", "simulation"}
_SECTION_KEYS = {
    "facility": {"beamline_id"},
    "tiled": {"uri", "api_key_env"},
    "epics": {"connection_timeout"},
    "simulation": {"phantom", "size", "seed"},
}
_ROLE_KEYS = {
    "motor": {"motor", "units"},
    "shutter": {"pv", "open", "closed"},
    "monitor": {"pv"},
    "detector": {"prefix", "device_class", "simulated"},
}


def _role_kind(role: str) -> str:
    if role in MOTOR_ROLES:
        return "motor"
    if role in DETECTOR_ROLES:
        return "detector"
    return role


def _check_keys(table: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(table, dict):
        raise FacilityConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise FacilityConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return table


def _string(table: dict, key: str, where: str, *, required: bool = True) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise FacilityConfigError(f"{where}.{key}: missing")
        return None
    if not isinstance(value, str) or not value.strip():
        raise FacilityConfigError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _units(role: str, table: dict, where: str) -> str:
    raw = _string(table, "units", where)
    units = _UNIT_SPELLINGS.get(raw, raw)
    if units not in ALLOWED_UNITS[role]:
        raise FacilityConfigError(
            f"{where}.units: {raw!r} is not a unit for {role} "
            f"(use one of {', '.join(ALLOWED_UNITS[role])})"
        )
    return units


def _parse_role(role: str, table: Any) -> MotorRole | SignalRole | DetectorRole:
    where = f"roles.{role}"
    kind = _role_kind(role)
    table = _check_keys(table, _ROLE_KEYS[kind], where)
    if kind == "motor":
        return MotorRole(role, _string(table, "motor", where), _units(role, table, where))
    if kind == "monitor":
        return SignalRole(role, _string(table, "pv", where))
    if kind == "shutter":
        values = {}
        for key in ("open", "closed"):
            value = table.get(key, key)
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise FacilityConfigError(f"{where}.{key}: expected a string or an integer")
            values[key] = value
        if values["open"] == values["closed"]:
            raise FacilityConfigError(f"{where}: open and closed are the same value")
        return SignalRole(role, _string(table, "pv", where), values["open"], values["closed"])
    simulated = table.get("simulated", False)
    if not isinstance(simulated, bool):
        raise FacilityConfigError(f"{where}.simulated: expected true or false")
    if simulated:
        if "prefix" in table or "device_class" in table:
            raise FacilityConfigError(
                f"{where}: give either simulated = true or prefix + device_class, not both"
            )
        return DetectorRole(role, simulated=True)
    device_class = _string(table, "device_class", where)
    if ":" not in device_class:
        raise FacilityConfigError(
            f"{where}.device_class: expected 'module:Class', got {device_class!r}"
        )
    return DetectorRole(role, _string(table, "prefix", where), device_class)


def load_facility_config(path: str | Path) -> FacilityConfig:
    """Read and check a facility file.

    Parameters
    ----------
    path : path
        The TOML file (see ``profiles/facility/synaps_facility.toml``).

    Returns
    -------
    FacilityConfig

    Raises
    ------
    FacilityConfigError
        Unknown keys, missing roles, wrong units, an API key written in the file, a
        malformed value: the message names the key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FacilityConfigError(f"facility file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise FacilityConfigError(f"{path}: not valid TOML: {exc}") from None
    if "api_key" in data.get("tiled", {}):
        raise FacilityConfigError(
            "tiled.api_key: never write the API key in the file; set it in the environment "
            "and name the variable with tiled.api_key_env"
        )
    _check_keys(data, _TOP_KEYS, str(path))
    sections = {
        name: _check_keys(data.get(name, {}), keys, name) for name, keys in _SECTION_KEYS.items()
    }
    roles_table = _check_keys(data.get("roles", {}), set(ROLES), "roles")
    missing = [role for role in ROLES if role not in roles_table]
    if missing:
        raise FacilityConfigError(f"roles: missing role(s) {', '.join(missing)}")
    roles = {role: _parse_role(role, roles_table[role]) for role in ROLES}

    if any(isinstance(r, DetectorRole) and r.simulated for r in roles.values()):
        for role in ("stage_x", "stage_y"):
            if roles[role].units != "um":
                raise FacilityConfigError(
                    f"roles.{role}.units: the simulated detectors take stage positions in "
                    f"um, got {roles[role].units!r}"
                )

    timeout = sections["epics"].get("connection_timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise FacilityConfigError(
            f"epics.connection_timeout: expected a positive number of seconds, got {timeout!r}"
        )
    tiled = sections["tiled"]
    return FacilityConfig(
        beamline_id=_string(sections["facility"], "beamline_id", "facility"),
        roles=roles,
        tiled_uri=_string(tiled, "uri", "tiled", required=False),
        tiled_api_key_env=_string(tiled, "api_key_env", "tiled", required=False)
        or "SYNAPS_TILED_API_KEY",
        connection_timeout=float(timeout),
        simulation=dict(sections["simulation"]),
        source=path,
    )


# -- an area detector over EPICS --------------------------------------------------------
class EpicsAreaDetector(Device):
    """A minimal areaDetector client: the frames travel as HDF5 files and
    StreamResource/StreamDatum documents, like those of the simulated detectors.

    PVs under ``prefix``: ``cam1:Acquire`` (put 1; the IOC completes the put once the
    frame is out, as areaDetector does in single mode), ``cam1:AcquireTime`` (s),
    ``cam1:ArrayCounter_RBV``, ``image1:ArrayData`` (the frame, row-major),
    ``image1:ArraySize0_RBV`` (columns) and ``image1:ArraySize1_RBV`` (rows). Each
    ``trigger()`` acquires one frame, reads it from ``image1:ArrayData`` and appends it
    to an HDF5 file in ``frames_directory`` (what an HDF5 file plugin would do on the
    IOC side; here the client writes it, so the IOC needs no shared filesystem).

    Parameters
    ----------
    prefix : str
        The detector's PV prefix (e.g. ``"XF:99ID-ES{Det:1}"``).
    name : str
        Device name (the frames' data key is ``{name}_image``).
    frames_directory : path
        Folder for the HDF5 files (readable by the Tiled server and the analysis).
    geometry : dict, optional
        What the reconstructions need to know about the camera (keys of
        ``PtychoDetector.geometry()`` / ``ProjectionDetector.geometry()``); ``frame_shape``
        and ``image_key`` are added from the PVs. Subclasses may override
        :meth:`geometry` instead.
    timeout : float
        Seconds an acquisition may take beyond its ``AcquireTime``.
    """

    acquire = Cpt(EpicsSignal, "cam1:Acquire", kind="omitted", put_complete=True)
    acquire_time = Cpt(EpicsSignal, "cam1:AcquireTime", kind="config")
    array_counter = Cpt(EpicsSignalRO, "cam1:ArrayCounter_RBV", kind="normal")
    array_size0 = Cpt(EpicsSignalRO, "image1:ArraySize0_RBV", kind="omitted")
    array_size1 = Cpt(EpicsSignalRO, "image1:ArraySize1_RBV", kind="omitted")
    array_data = Cpt(EpicsSignalRO, "image1:ArrayData", kind="omitted")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        frames_directory: str | Path | None = None,
        geometry: dict | None = None,
        timeout: float = 10.0,
        **kwargs,
    ) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.frames_directory = None if frames_directory is None else Path(frames_directory)
        self._geometry = dict(geometry or {})
        self.timeout = float(timeout)
        self._writer: HDF5FrameWriter | None = None

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def frame_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` = ``(ArraySize1, ArraySize0)``."""
        return int(self.array_size1.get()), int(self.array_size0.get())

    def geometry(self) -> dict:
        """The ``geometry`` given, with the frame shape read from the IOC and the data key."""
        return {**self._geometry, "frame_shape": list(self.frame_shape()),
                "image_key": self.image_key}  # fmt: skip

    def stage(self) -> list[object]:
        if self.frames_directory is None:
            raise RuntimeError(f"{self.name}: no frames_directory to write the frames to")
        self._writer = HDF5FrameWriter(self.frames_directory, self.image_key, self.frame_shape())
        self._writer.open()
        return super().stage()

    def unstage(self) -> list[object]:
        if self._writer is not None:
            self._writer.close()
        return super().unstage()

    def describe(self) -> dict:
        description = super().describe()
        description[self.image_key] = {
            "source": f"PV:{self.prefix}image1:ArrayData",
            "dtype": "array",
            "dtype_numpy": np.dtype(np.uint32).str,
            "shape": list(self.frame_shape()),
            "external": "STREAM:",
        }
        return description

    def trigger(self) -> DeviceStatus:
        """Acquire one frame and append it to the file (on a thread: Channel Access
        calls do not belong in the callbacks of other Channel Access calls)."""
        writer = self._writer
        if writer is None or not writer.is_open:
            raise RuntimeError(f"{self.name}: trigger() before stage(); use it inside a plan")
        status = DeviceStatus(self)

        def acquire() -> None:
            try:
                before = int(self.array_counter.get())
                timeout = float(self.acquire_time.get()) + self.timeout
                self.acquire.set(1).wait(timeout)
                after = int(self.array_counter.get())
                if after <= before:
                    raise RuntimeError(
                        f"{self.name}: {self.prefix}cam1:Acquire completed without a new "
                        f"frame (ArrayCounter_RBV stayed at {after})"
                    )
                frame = np.asarray(self.array_data.get(), dtype=np.int64)
                writer.append(frame.reshape(self.frame_shape()).astype(np.uint32))
            except Exception as exc:  # noqa: BLE001 - the plan sees it as a failed trigger
                status.set_exception(exc)
            else:
                status.set_finished()

        threading.Thread(target=acquire, name=f"{self.name}-acquire", daemon=True).start()
        return status

    def collect_asset_docs(self):
        """Yield the StreamResource (once per file) and one StreamDatum per new frame."""
        if self._writer is not None:
            yield from self._writer.collect_asset_docs()


# -- connecting -------------------------------------------------------------------------
def _epics_shutter_class():
    from ophyd import EpicsSignal

    class EpicsShutter(EpicsSignal):
        """A shutter PV driven with ``"open"`` / ``"closed"`` (1 / 0), whatever the PV's
        own values are."""

        def __init__(self, pv: str, *, open_value, closed_value, **kwargs) -> None:
            super().__init__(pv, string=isinstance(open_value, str), **kwargs)
            self.open_value = open_value
            self.closed_value = closed_value

        @property
        def is_open(self) -> bool:
            return self.get() == self.open_value

        def set(self, value, **kwargs):
            target = {"open": self.open_value, 1: self.open_value,
                      "closed": self.closed_value, 0: self.closed_value}.get(value)
            if target is None:
                raise ValueError(
                    f"{self.name}: value must be 'open', 'closed', 1 or 0, got {value!r}"
                )
            return super().set(target, **kwargs)

    return EpicsShutter


def _import_class(spec: str, where: str):
    module_name, _, class_name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise FacilityConfigError(f"{where}.device_class: cannot import {spec!r}: {exc}") from None


def _wait_connected(device, role: str, address: str, timeout: float) -> None:
    try:
        device.wait_for_connection(timeout=timeout)
    except TimeoutError as exc:
        raise FacilityConfigError(
            f"roles.{role}: {address} did not connect within {timeout} s ({exc}); check the "
            "PV name, the IOC, and EPICS_CA_ADDR_LIST"
        ) from None


def _check_egu(motor, role: MotorRole) -> None:
    egu = str(motor.egu).strip()
    if egu and _UNIT_SPELLINGS.get(egu, egu) != role.units:
        raise FacilityConfigError(
            f"roles.{role.role}.units: the file says {role.units!r} but {role.motor}.EGU is "
            f"{egu!r}"
        )


def _simulated_detectors(config: FacilityConfig, stage: FacilityStage, shutter, frames_directory):
    from .sim_devices.beamline import make_sim_beamline
    from .sim_devices.phantoms import make_phantom

    if frames_directory is None:
        raise FacilityConfigError(
            "roles: simulated detectors need a frames_directory (give connect_roles one)"
        )
    settings = config.simulation
    seed = int(settings.get("seed", 0))
    phantom = make_phantom(str(settings.get("phantom", "P-sparse")), seed,
                           size=int(settings.get("size", 128)))
    beamline = make_sim_beamline(phantom, frames_directory, seed=seed)
    detectors = {"ptycho_detector": beamline.ptycho_det,
                 "projection_detector": beamline.proj_det}
    for detector in detectors.values():
        # the simulated detectors image the phantom where the real stage is
        detector.stage_device = stage
        detector.shutter = shutter
    return detectors


def connect_roles(
    config: FacilityConfig,
    *,
    frames_directory: str | Path | None = None,
    provided: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the devices of every role and wait for their PVs.

    Parameters
    ----------
    config : FacilityConfig
        From :func:`load_facility_config`.
    frames_directory : path, optional
        Where simulated detectors write their HDF5 files (needed only for them).
    provided : dict, optional
        Role -> a device built elsewhere, used as is (e.g. a detector the profile makes).

    Returns
    -------
    dict
        Role -> connected device (``stage_x``... ``monitor``), named as in the simulated
        profile (``ptycho_det``, ``proj_det``, ``shutter``, ``i0``), plus ``"stage"``: a
        :class:`FacilityStage` of the three motors.

    Raises
    ------
    FacilityConfigError
        A PV that does not connect (naming the role and the PV), a motor whose ``.EGU``
        disagrees with the file, a detector class that cannot be imported or has no
        ``geometry()``.
    """
    from ophyd import EpicsMotor, EpicsSignalRO

    provided = dict(provided or {})
    unknown = sorted(set(provided) - set(ROLES))
    if unknown:
        raise FacilityConfigError(f"provided: unknown role(s) {', '.join(unknown)}")
    devices: dict[str, Any] = {}
    timeout = config.connection_timeout
    for role_name in (*MOTOR_ROLES, "shutter", "monitor"):
        if role_name in provided:
            devices[role_name] = provided[role_name]
            continue
        role = config.roles[role_name]
        name = DEVICE_NAMES[role_name]
        if isinstance(role, MotorRole):
            device = EpicsMotor(role.motor, name=name)
            _wait_connected(device, role_name, role.motor, timeout)
            _check_egu(device, role)
        elif role_name == "shutter":
            device = _epics_shutter_class()(
                role.pv, open_value=role.open_value, closed_value=role.closed_value, name=name
            )
            _wait_connected(device, role_name, role.pv, timeout)
        else:
            device = EpicsSignalRO(role.pv, name=name)
            _wait_connected(device, role_name, role.pv, timeout)
        devices[role_name] = device

    stage = FacilityStage(devices["stage_x"], devices["stage_y"], devices["stage_theta"])
    detector_roles = [config.roles[r] for r in DETECTOR_ROLES if r not in provided]
    simulated = {}
    if any(role.simulated for role in detector_roles):
        simulated = _simulated_detectors(config, stage, devices["shutter"], frames_directory)
    for role_name in DETECTOR_ROLES:
        if role_name in provided:
            devices[role_name] = provided[role_name]
            continue
        role = config.roles[role_name]
        if role.simulated:
            devices[role_name] = simulated[role_name]
            continue
        cls = _import_class(role.device_class, f"roles.{role_name}")
        if not callable(getattr(cls, "geometry", None)):
            raise FacilityConfigError(
                f"roles.{role_name}.device_class: {role.device_class} has no geometry() "
                "method (the reconstructions read the detector geometry from it; see "
                "profiles/README.md)"
            )
        options = {}
        if "frames_directory" in inspect.signature(cls).parameters:
            options["frames_directory"] = frames_directory  # e.g. EpicsAreaDetector
        device = cls(role.prefix, name=DEVICE_NAMES[role_name], **options)
        _wait_connected(device, role_name, role.prefix, timeout)
        devices[role_name] = device
    devices["stage"] = stage
    return devices


def make_agent_feed(
    stage: Any,
    ptycho_detector: Any,
    segmentation: Any,
    *,
    x_limits: tuple[float, float],
    y_limits: tuple[float, float],
    max_exposures: int = 200,
    sink: Any | None = None,
    seed: int = 0,
):
    """An agent over a rectangle of the stage, fed by a live segmentation, for
    :func:`~synaps_agent.plans.adaptive.adaptive_ptycho_scan`.

    Parameters
    ----------
    stage : FacilityStage or SampleStage
        ``stage.x`` and ``stage.y`` (motors in um): their ``velocity`` (and
        ``acceleration``, ``settle_time`` when they have them) set the travel costs.
    ptycho_detector : device
        Its ``geometry()`` gives the probe size (``probe.fwhm_m``); its
        ``exposure_time`` and ``readout_time``, if any, the time a point costs
        (:func:`~synaps_agent.agent.timing_from_detector`; else 1 s and the
        config's default overhead).
    segmentation : LiveSegmentation
        Provides ``uncertainty_for_agent``.
    x_limits, y_limits : (low, high)
        The region (um) the agent may measure in.
    max_exposures : int
        The agent's budget.
    sink : callable, optional
        Receives the decision documents (e.g. ``DocumentSink(catalog.writer("processed"))``).
    seed : int
        The agent's seed.

    Returns
    -------
    AgentFeed
    """
    from .agent import (
        AgentConfig,
        ImagingAgent,
        ScanSpace,
        StoppingRule,
        axis_from_motor,
        timing_from_detector,
    )
    from .callbacks.agent_feed import AgentFeed

    probe_um = float(ptycho_detector.geometry()["probe"]["fwhm_m"]) * 1e6
    axes = [
        axis_from_motor(name, motor, *limits)
        for name, motor, limits in (("x", stage.x, x_limits), ("y", stage.y, y_limits))
    ]
    agent = ImagingAgent(
        ScanSpace(axes),
        AgentConfig(
            probe_fwhm=probe_um,
            max_step=0.4 * probe_um,
            **{"exposure_time": 1.0, **timing_from_detector(ptycho_detector)},
        ),
        stopping=StoppingRule(max_exposures=max_exposures),
        seed=seed,
    )
    return AgentFeed(
        agent, segmentation.uncertainty_for_agent, footprint_radius=probe_um / 2, sink=sink
    )


def run_at_exit(function) -> None:
    """Run ``function`` when the interpreter exits (profiles: stop workers, close the
    catalog; the last registered runs first).

    Plain ``atexit`` hooks run only after Python has joined the non-daemon threads, and the
    embedded Tiled server runs on one, so the hook is also registered with threading's
    pre-join exit hooks (which would otherwise wait forever for the server thread).
    """
    atexit.register(function)
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(function)
