"""synaps-agent in a facility's Bluesky profile (copy into the profile's ``startup/``).

It runs after the facility's own startup files: it reuses their ``RE`` if there is one
(else makes a RunEngine), reads the facility file named by ``$SYNAPS_FACILITY_CONFIG``
(default: ``synaps_facility.toml`` beside this folder), connects the devices of every
role (EPICS motors, shutter, monitor, area detectors), opens the catalog (the facility's
Tiled server from the file, its API key from the environment; else the embedded catalog
in ``$SYNAPS_DATA_DIR``) and subscribes it, the live reconstructions and the live figure.

The RunEngine is prepared by ``synaps_agent.reliability.prepare_run_engine`` with the
monitor role as the beam suspender's signal (``beam_suspender``; nominal flux from
``$SYNAPS_I0_NOMINAL`` or the monitor's reading at startup).

Defines ``facility`` (the configuration), ``catalog``, ``RE``, ``beam_suspender``, ``stage``
(``stage.x``, ``stage.y``, ``stage.theta``), ``shutter``, ``i0``, ``ptycho_det``, ``proj_det``,
``recon``, ``seg``, ``tomo``, ``live_view``, ``new_agent_feed()`` and the plans, as the
simulated profile does (PNGs of the live figure go to ``$SYNAPS_FIGURES_DIR``). See
``profiles/README.md``.
"""

import os as _os
from pathlib import Path as _Path

from bluesky import RunEngine as _RunEngine

from synaps_agent.callbacks.analysis import DocumentSink as _DocumentSink
from synaps_agent.callbacks.live_view import LiveView as _LiveView
from synaps_agent.callbacks.ptycho import PtychoReconstruction as _PtychoReconstruction
from synaps_agent.callbacks.segmentation import LiveSegmentation as _LiveSegmentation
from synaps_agent.callbacks.segmentation import normalize_reconstruction as _normalize
from synaps_agent.callbacks.tomo import TomoReconstruction as _TomoReconstruction
from synaps_agent.catalog import open_catalog as _open_catalog
from synaps_agent.experiment import default_segmenter as _default_segmenter
from synaps_agent.facility import connect_roles as _connect_roles
from synaps_agent.facility import load_facility_config as _load_facility_config
from synaps_agent.facility import make_agent_feed as _make_agent_feed
from synaps_agent.facility import run_at_exit as _run_at_exit

# the plans are for the prompt
from synaps_agent.plans.adaptive import adaptive_ptycho_scan  # noqa: F401
from synaps_agent.plans.patterns import raster_positions  # noqa: F401
from synaps_agent.plans.scans import (  # noqa: F401
    ptycho_tomo_scan,
    raster_ptycho_scan,
    spiral_ptycho_scan,
    tomo_scan,
)
from synaps_agent.reliability import prepare_run_engine as _prepare_run_engine

_here = _Path(globals().get("__file__", "profiles/facility/startup/x.py")).resolve().parent
facility = _load_facility_config(
    _os.environ.get("SYNAPS_FACILITY_CONFIG") or _here.parent / "synaps_facility.toml"
)

# -- the catalog: the facility's Tiled server, or the embedded one ---------------------
if facility.tiled_uri:
    catalog = _open_catalog(uri=facility.tiled_uri, api_key=facility.tiled_api_key())
else:
    catalog = _open_catalog(_Path(_os.environ.get("SYNAPS_DATA_DIR") or "synaps-data").resolve())
_run_at_exit(catalog.close)  # stops the embedded server (a remote one is left alone)
_frames_dir = catalog.frames_directory or _Path(
    _os.environ.get("SYNAPS_FRAMES_DIR") or "synaps-data/frames"
).resolve()
_frames_dir.mkdir(parents=True, exist_ok=True)

# -- the RunEngine: the profile's own if it has one ------------------------------------
if "RE" not in globals():
    RE = _RunEngine({}, call_returns_result=False)
RE.md.setdefault("beamline_id", facility.beamline_id)
RE.subscribe(catalog.writer())

# -- the devices -----------------------------------------------------------------------
_devices = _connect_roles(facility, frames_directory=_frames_dir)
stage = _devices["stage"]
shutter = _devices["shutter"]
i0 = _devices["monitor"]
ptycho_det = _devices["ptycho_detector"]
proj_det = _devices["projection_detector"]

# -- faults: beam dumps suspend the scan until the monitor reads the beam back; a pause
# (Ctrl-C) stops between two exposures and resumes where it stopped; interruptions and
# RE.abort(reason)'s reason are stored with the run. The monitor may sit behind the
# shutter: its drop while the shutter is closed (darks, end of scan) does not suspend.
# Nominal flux: $SYNAPS_I0_NOMINAL (photons/s), else the monitor's reading now.
_i0_nominal = _os.environ.get("SYNAPS_I0_NOMINAL")
try:
    _i0_nominal = float(_i0_nominal if _i0_nominal else i0.get())
except ValueError:
    raise ValueError(
        f"SYNAPS_I0_NOMINAL must be the nominal flux in photons/s, got {_i0_nominal!r}"
    ) from None
if _i0_nominal > 0:
    beam_suspender = _prepare_run_engine(RE, i0, nominal=_i0_nominal, shutter=shutter)
else:
    beam_suspender = _prepare_run_engine(RE)
    print(
        f"synaps-agent: no beam suspender: {i0.name} reads {_i0_nominal} now; set "
        "SYNAPS_I0_NOMINAL (photons/s) to suspend scans on beam dumps"
    )

# -- live analysis, the agent and the live figure --------------------------------------
seg = _LiveSegmentation(
    _DocumentSink(catalog.writer("processed")),
    segmenter=_default_segmenter(),
    preprocess=_normalize,
)
recon = _PtychoReconstruction(_DocumentSink(catalog.writer("processed"), seg))
tomo = _TomoReconstruction(_DocumentSink(catalog.writer("processed")))
live_view = _LiveView(
    recon,
    seg,
    directory=_Path(_os.environ.get("SYNAPS_FIGURES_DIR") or "synaps-figures").resolve(),
    interval=float(_os.environ.get("SYNAPS_LIVE_INTERVAL", "5")),
)
RE.subscribe(recon)
RE.subscribe(tomo)
RE.subscribe(live_view)


def _stop_workers() -> None:
    for analysis in (recon, seg, tomo):
        analysis.stop_worker(timeout=10)


_run_at_exit(_stop_workers)  # runs before the catalog closes


def new_agent_feed(x_limits=None, y_limits=None, *, max_exposures: int = 200, seed: int = 0):
    """A fresh agent, fed by ``seg``, for ``adaptive_ptycho_scan`` over ``x_limits`` x
    ``y_limits`` (default: the motors' soft limits, as the IOC reports them)."""
    return _make_agent_feed(
        stage,
        ptycho_det,
        seg,
        x_limits=x_limits or stage.x.limits,
        y_limits=y_limits or stage.y.limits,
        max_exposures=max_exposures,
        sink=_DocumentSink(catalog.writer("processed")),
        seed=seed,
    )


print(
    f"synaps-agent at {facility.beamline_id}: stage.x={stage.x.prefix} "
    f"({stage.x.egu}), stage.y={stage.y.prefix}, stage.theta={stage.theta.prefix}, "
    f"shutter, i0, ptycho_det, proj_det; runs -> "
    f"{facility.tiled_uri or catalog.directory}"
)
