"""synaps-agent: a simulated imaging beamline at the IPython prompt.

Start it with ``ipython --profile-dir=profiles/synaps_sim`` (or ``exec`` this file in plain
Python). It defines

* ``catalog``: where runs go (``synaps_agent.catalog.open_catalog``): the Tiled server
  at ``$SYNAPS_TILED_URI`` (API key ``$SYNAPS_TILED_API_KEY``), else the embedded
  catalog in ``$SYNAPS_DATA_DIR`` (default ``./synaps-data``); closed at exit;
* ``RE``: a bluesky RunEngine writing every run into ``catalog.raw``, with a progress bar
  (in a terminal) and the BestEffortCallback ``bec`` (no plots when headless), prepared
  by ``synaps_agent.reliability.prepare_run_engine``: ``beam_suspender`` holds the scan
  while I0 is down, a pause resumes without repeating exposures;
* ``bl`` and its devices ``stage`` (``stage.x``, ``stage.y``, ``stage.theta``),
  ``shutter``, ``i0``, ``ptycho_det``, ``proj_det``;
* the plans ``raster_ptycho_scan``, ``spiral_ptycho_scan``, ``tomo_scan``,
  ``ptycho_tomo_scan``, ``adaptive_ptycho_scan`` (with ``new_agent_feed()``, an agent
  fed by ``seg``) and ``raster_positions`` (seed points);
* live reconstructions ``recon`` (ptychography, feeding the segmentation ``seg``) and
  ``tomo`` (tomography), subscribed to ``RE``, writing their results into
  ``catalog.processed``;
* ``live_view``: the live figure (reconstruction, segmentation, uncertainty, measured
  points), a window in an interactive session and PNGs in ``$SYNAPS_FIGURES_DIR``
  (default ``$SYNAPS_DATA_DIR/figures``) every ``$SYNAPS_LIVE_INTERVAL`` s (5) and at
  the end of each run (``live_view.wait()``, ``live_view.final_path``).

Environment: ``SYNAPS_PHANTOM`` (``P-sparse``, ``P-dense`` or ``T-electrode``),
``SYNAPS_PHANTOM_SIZE`` (128), ``SYNAPS_SEED`` (0), ``SYNAPS_TIME_SCALE`` (0: moves and
exposures take no wall time), ``SYNAPS_FRAMES_DIR`` (detector files when the catalog is a
remote server), ``SYNAPS_HEADLESS`` (1: no plots). See ``profiles/README.md``.
"""

import os as _os
import sys as _sys
from pathlib import Path as _Path

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import ProgressBarManager

from synaps_agent.callbacks.agent_feed import AgentFeed
from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.callbacks.live_view import LiveView
from synaps_agent.callbacks.ptycho import PtychoReconstruction
from synaps_agent.callbacks.segmentation import LiveSegmentation, normalize_reconstruction
from synaps_agent.callbacks.tomo import TomoReconstruction
from synaps_agent.catalog import open_catalog
from synaps_agent.experiment import default_segmenter
from synaps_agent.facility import make_agent_feed, run_at_exit

# the plans are for the prompt
from synaps_agent.plans.adaptive import adaptive_ptycho_scan  # noqa: F401
from synaps_agent.plans.patterns import raster_positions  # noqa: F401
from synaps_agent.plans.scans import (  # noqa: F401
    ptycho_tomo_scan,
    raster_ptycho_scan,
    spiral_ptycho_scan,
    tomo_scan,
)
from synaps_agent.reliability import prepare_run_engine
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom


def _ipython():
    """The running IPython shell, or None (plain ``python``)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _headless() -> bool:
    """True when figures cannot be shown: asked for, a file-only backend, or no display."""
    if _os.environ.get("SYNAPS_HEADLESS", "").lower() in ("1", "true", "yes"):
        return True
    backend = _os.environ.get("MPLBACKEND", "").lower()
    if backend in ("agg", "pdf", "pgf", "ps", "svg", "cairo", "template"):
        return True
    if _sys.platform.startswith("linux"):
        return not (_os.environ.get("DISPLAY") or _os.environ.get("WAYLAND_DISPLAY"))
    return False


# -- the catalog -----------------------------------------------------------------------
_tiled_uri = _os.environ.get("SYNAPS_TILED_URI") or None
_data_dir = _Path(_os.environ.get("SYNAPS_DATA_DIR") or "synaps-data").resolve()
if _tiled_uri:
    catalog = open_catalog(uri=_tiled_uri, api_key=_os.environ.get("SYNAPS_TILED_API_KEY"))
else:
    catalog = open_catalog(_data_dir)
run_at_exit(catalog.close)  # stops the embedded server (idempotent; a remote one is left alone)
# a remote server must be able to read this folder (its readable_storage)
_frames_dir = (
    catalog.frames_directory
    or _Path(_os.environ.get("SYNAPS_FRAMES_DIR") or _data_dir / "frames").resolve()
)
_frames_dir.mkdir(parents=True, exist_ok=True)

# -- the RunEngine ---------------------------------------------------------------------
_ip = _ipython()
_no_plots = _headless()
if _ip is not None and not _no_plots:
    try:
        _ip.run_line_magic("matplotlib", "")
    except Exception as _exc:  # noqa: BLE001 - no GUI toolkit: carry on without plots
        print(f"(no interactive plots: {_exc})")
        _no_plots = True

RE = RunEngine({}, call_returns_result=False)
RE.md.setdefault("beamline_id", "synaps-sim")
RE.subscribe(catalog.writer())
if _sys.stdout.isatty():
    RE.waiting_hook = ProgressBarManager()
bec = BestEffortCallback()
if _no_plots:
    bec.disable_plots()
RE.subscribe(bec)

# -- the simulated beamline ------------------------------------------------------------
_seed = int(_os.environ.get("SYNAPS_SEED", "0"))
bl = make_sim_beamline(
    make_phantom(
        _os.environ.get("SYNAPS_PHANTOM", "P-sparse"),
        _seed,
        size=int(_os.environ.get("SYNAPS_PHANTOM_SIZE", "128")),
    ),
    _frames_dir,
    seed=_seed,
    time_scale=float(_os.environ.get("SYNAPS_TIME_SCALE", "0")),
)
stage = bl.stage
shutter = bl.shutter
i0 = bl.i0
ptycho_det = bl.ptycho_det
proj_det = bl.proj_det
# beam dumps suspend the scan until I0 is back; a pause (Ctrl-C) stops between two
# exposures and resumes where it stopped (no replayed exposures); interruptions are stored
beam_suspender = prepare_run_engine(RE, i0)

# -- live analysis ---------------------------------------------------------------------
seg = LiveSegmentation(
    DocumentSink(catalog.writer("processed")),
    segmenter=default_segmenter(_seed),
    preprocess=normalize_reconstruction,
)
recon = PtychoReconstruction(DocumentSink(catalog.writer("processed"), seg))
tomo = TomoReconstruction(DocumentSink(catalog.writer("processed")))
live_view = LiveView(
    recon,
    seg,
    directory=_Path(_os.environ.get("SYNAPS_FIGURES_DIR") or _data_dir / "figures").resolve(),
    interval=float(_os.environ.get("SYNAPS_LIVE_INTERVAL", "5")),
    show=not _no_plots,
)
RE.subscribe(recon)
RE.subscribe(tomo)
RE.subscribe(live_view)


def new_agent_feed(
    half_width: float | None = None, *, max_exposures: int = 200, seed: int = _seed
) -> AgentFeed:
    """A fresh agent, fed by ``seg``, for ``adaptive_ptycho_scan`` over the square
    ``[-half_width, half_width]`` um (default: the sample less a probe on each side)."""
    if half_width is None:
        half_width = (
            bl.sample.image_shape[1] * bl.sample.pixel_size / 2 - ptycho_det.probe_fwhm.get()
        ) * 1e6
    return make_agent_feed(
        stage,
        ptycho_det,
        seg,
        x_limits=(-half_width, half_width),
        y_limits=(-half_width, half_width),
        max_exposures=max_exposures,
        sink=DocumentSink(catalog.writer("processed")),
        seed=seed,
    )


def _stop_workers() -> None:
    for analysis in (recon, seg, tomo):
        analysis.stop_worker(timeout=10)


run_at_exit(_stop_workers)  # runs before the catalog closes (exit hooks run last-in first-out)

# -- banner ----------------------------------------------------------------------------
_x_lo, _x_hi = stage.x.limits
_y_lo, _y_hi = stage.y.limits
print(
    f"""synaps-agent simulated beamline ({bl.phantom.name}, {bl.sample.image_shape[1]} px wide)
  catalog   runs -> {f"Tiled server {_tiled_uri}" if _tiled_uri else catalog.directory}
            (catalog.raw, catalog.processed)
  RE        RunEngine (bec: BestEffortCallback{", no plots" if _no_plots else ""})
  devices   stage (stage.x {_x_lo:.2f}..{_x_hi:.2f} um, stage.y {_y_lo:.2f}..{_y_hi:.2f} um,
            stage.theta deg), shutter, i0, ptycho_det, proj_det   (all in bl)
  plans     raster_ptycho_scan, spiral_ptycho_scan, tomo_scan, ptycho_tomo_scan,
            adaptive_ptycho_scan
  live      recon (ptychography) -> seg (segmentation), tomo (tomography) -> catalog.processed
            live_view: figure{"" if _no_plots else " window and"} PNGs in {live_view.directory}
  agent     RE(adaptive_ptycho_scan([ptycho_det, i0], stage.x, stage.y, new_agent_feed(), \
raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4), max_exposures=100, shutter=shutter))
  example   RE(raster_ptycho_scan([ptycho_det, i0], stage.x, stage.y, -1, 1, -1, 1, 0.12, \
shutter=shutter))"""
)

del _x_lo, _x_hi, _y_lo, _y_hi, _ip
