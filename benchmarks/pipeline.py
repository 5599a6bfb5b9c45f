"""The whole adaptive scan in the RunEngine with persistence: the rate it holds, the
backlog it leaves, and how long the beamline waits for the agent.

For each case, on the same simulated beamline, one RunEngine runs three scans over the
same region, each persisted in an embedded Tiled catalog as it runs:

* ``baseline``: a snake raster with persistence only (no analysis subscribed): the
  events per second of the RunEngine, the simulated devices and the catalog writer.
* ``adaptive``: :func:`~synaps_agent.plans.adaptive.adaptive_ptycho_scan` with the whole
  loop subscribed: live ptychography (:class:`PtychoReconstruction`), live segmentation
  with uncertainty (:class:`LiveSegmentation`, the shipped U-Net) and the agent
  (:class:`AgentFeed` over :class:`ImagingAgent`), its decisions stored too; once
  ``free`` (each decision takes the latest map there is) and once ``lockstep`` (the
  reconstruction on its deterministic chunk schedule, each decision waiting for the map
  of every exposure: reproducible scans, as ``experiment.run_strategies`` runs them).

Nothing is paced: each scan goes as fast as the RunEngine lets it (the simulated motors and
detector keep their own simulated clock). Reported per scan: events per second (wall time
from the first event to RunStop); for the adaptive scan its ratio to the baseline, the
reconstruction's backlog (frames emitted but not yet in the engine, sampled every
``sample_interval`` s: maximum and at RunStop), the seconds after RunStop until the
reconstruction and the segmentation have finished, the frames the last live
segmentation before RunStop was missing, and per decision the time the beamline waits
for the agent (the wall time of ``AgentFeed.ask``, p50/p95, and its share of the scan)
and the beamline's idle time per decision (the gap before each batch's first event less
the median gap between events inside a batch: waiting for the map plus asking).

Run ``python -m benchmarks.pipeline`` (``--smoke`` for CI sizes).
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import base_parser, print_table, torch_threads, write_result
from synaps_agent.agent import (
    AgentConfig,
    ImagingAgent,
    ScanSpace,
    StoppingRule,
    axis_from_motor,
    timing_from_detector,
)
from synaps_agent.callbacks.agent_feed import AgentFeed
from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.callbacks.ptycho import PtychoReconstruction
from synaps_agent.callbacks.segmentation import LiveSegmentation, normalize_reconstruction
from synaps_agent.catalog import open_catalog
from synaps_agent.experiment import default_segmenter
from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions
from synaps_agent.plans.scans import ptycho_scan
from synaps_agent.recon.ptycho import PtychoConfig
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom

NAME = "pipeline"
CASES = ("P-sparse", "P-dense")
#: free: each decision takes the latest map there is; lockstep: it waits for the map of
#: every exposure, the reconstruction on its deterministic chunk schedule
MODES = ("free", "lockstep")
SEEDS = {"phantom": 30, "beamline": 30, "agent": 30, "engine": 30, "jitter": 30}


def _params(smoke: bool) -> dict[str, Any]:
    common = {
        "photons_per_frame": 1e6,
        "batch_size": 8,  # points per decision
        "budget_fraction": 0.5,  # of the raster's exposures
        "recon_batch_size": 32,
        "torch_threads": 1,
        "sample_interval": 0.1,
        "snapshot_interval": 1.0,
        "segmentation_interval": 0.5,
        "iterations_per_frame": 8,  # lockstep: mini-batch updates per frame received
    }
    if smoke:
        return {**common, "smoke": True, "size": 96, "frame_size": 32, "probe_fwhm_px": 10.0,
                "step_px": 4.0, "region_px": 32.0, "final_epochs": 3}  # fmt: skip
    return {**common, "smoke": False, "size": 384, "frame_size": 64, "probe_fwhm_px": 20.0,
            "step_px": 6.0, "region_px": 120.0, "final_epochs": 20}  # fmt: skip


class _Events:
    """Counts events and times each of them and the RunStop (wall clock)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.t_stop: float | None = None

    @property
    def count(self) -> int:
        return len(self.times)

    @property
    def t_first(self) -> float:
        return self.times[0]

    def __call__(self, name: str, doc: dict) -> None:
        if name == "event":
            self.times.append(time.perf_counter())
        elif name == "stop":
            self.t_stop = time.perf_counter()

    def rate(self) -> float:
        """Events per second from the first event to RunStop."""
        return (self.count - 1) / max(self.t_stop - self.t_first, 1e-9)


class _TimedFeed(AgentFeed):
    """An :class:`AgentFeed` that records how long each decision keeps the plan waiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ask_seconds: list[float] = []

    def ask(self, batch_size: int) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return super().ask(batch_size)
        finally:
            self.ask_seconds.append(time.perf_counter() - t0)


def _setup(case: str, p: dict[str, Any], frames_dir: Path) -> dict[str, Any]:
    phantom = make_phantom(case, SEEDS["phantom"], size=p["size"])
    bl = make_sim_beamline(
        phantom,
        frames_dir,
        seed=SEEDS["beamline"],
        frame_size=p["frame_size"],
        probe_fwhm_px=p["probe_fwhm_px"],
        photons_per_frame=p["photons_per_frame"],
    )
    pixel_um = bl.ptycho_det.object_pixel_size.get() * 1e6
    half = p["region_px"] / 2 * pixel_um
    step = p["step_px"] * pixel_um
    raster = raster_positions(-half, half, -half, half, step, jitter=0.2, seed=SEEDS["jitter"])
    seeds = raster_positions(-half, half, -half, half, 4 * step, seed=SEEDS["jitter"])
    return {"bl": bl, "pixel_um": pixel_um, "half": half, "step": step, "raster": raster,
            "seeds": seeds}  # fmt: skip


def baseline_run(RE, setup: dict[str, Any]) -> dict[str, Any]:
    """The raster with persistence only: the RunEngine's own rate."""
    bl = setup["bl"]
    events = _Events()
    token = RE.subscribe(events)
    try:
        RE(ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, setup["raster"],
                       shutter=bl.shutter, md={"benchmark": NAME, "mode": "baseline"}))  # fmt: skip
    finally:
        RE.unsubscribe(token)
    return {"events": events.count, "events_per_s": events.rate()}


def _chunk_schedule(seeds: int, p: dict[str, Any]) -> dict[str, int]:
    chunk = math.gcd(seeds, p["batch_size"])
    return {"chunk_frames": chunk, "chunk_iterations": p["iterations_per_frame"] * chunk}


def _sample(recon, seg, events: _Events, samples: list, done: threading.Event, every: float):
    """Sample the reconstruction's backlog and the segmentation's lag until ``done``."""
    while not done.is_set():
        in_engine = sum(e.num_frames for e in list(recon.engines.values()))
        latest = seg.latest
        samples.append(
            {
                "t": time.perf_counter(),
                "emitted": events.count,
                "backlog": events.count - in_engine,
                "segmented_frames": 0 if latest is None else int(latest.num_frames),
            }
        )
        done.wait(every)


def adaptive_run(
    RE, setup: dict[str, Any], catalog, segmenter, p: dict[str, Any], *, lockstep: bool
) -> dict:
    """The adaptive scan with reconstruction, segmentation and agent subscribed.

    ``lockstep``: the reconstruction on its deterministic chunk schedule (chunks ending
    where decisions are taken) and every decision waits for the map of all exposures
    (reproducible scans, as ``experiment.run_strategies``); otherwise everything runs
    free and each decision takes the latest map there is.
    """
    bl, half, pixel_um = setup["bl"], setup["half"], setup["pixel_um"]
    budget = max(len(setup["seeds"]) + p["batch_size"],
                 int(p["budget_fraction"] * len(setup["raster"])))  # fmt: skip
    seg = LiveSegmentation(
        DocumentSink(catalog.writer("processed")),
        segmenter=segmenter,
        min_interval=p["segmentation_interval"],
        preprocess=normalize_reconstruction,
    )
    recon = PtychoReconstruction(
        DocumentSink(catalog.writer("processed"), seg),
        config=PtychoConfig(batch_size=p["recon_batch_size"], seed=SEEDS["engine"]),
        snapshot_interval=p["snapshot_interval"],
        final_epochs=p["final_epochs"],
        **_chunk_schedule(len(setup["seeds"]), p) if lockstep else {},
    )
    space = ScanSpace([axis_from_motor(name, motor, -half, half)
                       for name, motor in (("x", bl.stage.x), ("y", bl.stage.y))])  # fmt: skip
    agent = ImagingAgent(
        space,
        AgentConfig(
            probe_fwhm=p["probe_fwhm_px"] * pixel_um,
            max_step=1.3 * setup["step"],
            **timing_from_detector(bl.ptycho_det),
        ),
        stopping=StoppingRule(max_exposures=budget),
        seed=SEEDS["agent"],
    )
    feed = _TimedFeed(
        agent,
        seg.uncertainty_for_agent,
        footprint_radius=p["probe_fwhm_px"] / 2 * pixel_um,
        sink=DocumentSink(catalog.writer("processed")),
        map_frames=seg.frames_in_map if lockstep else None,
    )
    events = _Events()
    tokens = [RE.subscribe(events), RE.subscribe(recon)]
    samples: list[dict] = []
    done = threading.Event()
    sampler = threading.Thread(
        target=_sample, args=(recon, seg, events, samples, done, p["sample_interval"]),
        daemon=True,
    )  # fmt: skip
    sampler.start()
    try:
        md = {"benchmark": NAME, "mode": "adaptive"}
        RE(adaptive_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, feed, setup["seeds"],
                                batch_size=p["batch_size"], max_exposures=budget,
                                shutter=bl.shutter, md=md))  # fmt: skip
        t_returned = time.perf_counter()
        if not recon.wait(1800) or not seg.wait(1800):
            raise RuntimeError("the live reconstruction or segmentation did not finish")
        t_drained = time.perf_counter()
    finally:
        done.set()
        sampler.join(30)
        for token in tokens:
            RE.unsubscribe(token)
    if recon.errors or seg.errors:
        raise RuntimeError(f"analysis failed: {recon.errors or seg.errors}")
    during = [s for s in samples if s["t"] <= events.t_stop] or samples[:1]
    at_stop = during[-1]
    asks = np.asarray(feed.ask_seconds)
    scan_seconds = events.t_stop - events.t_first
    decisions = len(asks)
    # the gap before the first event of each batch holds the decision (waiting for the
    # map, asking the agent) besides one move and exposure; the other gaps hold only those
    gaps = np.diff(np.asarray(events.times))
    first_of_batch = np.arange(len(setup["seeds"]), events.count, p["batch_size"])
    at_decision = np.zeros(gaps.size, bool)
    at_decision[first_of_batch - 1] = True
    within = float(np.median(gaps[~at_decision]))
    decision_gaps = gaps[at_decision] - within
    return {
        "events": events.count,
        "budget": budget,
        "seeds": len(setup["seeds"]),
        "events_per_s": events.rate(),
        "backlog_max": int(max(s["backlog"] for s in during)),
        "backlog_at_stop": int(at_stop["backlog"]),
        "segmentation_missing_at_stop": int(at_stop["emitted"] - at_stop["segmented_frames"]),
        "drain_s": t_drained - t_returned,
        "decisions": decisions,
        "ask_p50_ms": float(np.percentile(asks, 50) * 1e3),
        "ask_p95_ms": float(np.percentile(asks, 95) * 1e3),
        "ask_share": float(asks.sum() / scan_seconds),
        "measure_s_per_batch": float((scan_seconds - asks.sum()) / max(decisions, 1)),
        "event_ms_within_batch": within * 1e3,
        "beamline_idle_per_decision_p50_ms": float(np.percentile(decision_gaps, 50) * 1e3),
        "beamline_idle_per_decision_p95_ms": float(np.percentile(decision_gaps, 95) * 1e3),
        "idle_share": float(decision_gaps.sum() / scan_seconds),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its table, write the JSON; return the record."""
    from bluesky import RunEngine

    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    p = _params(args.smoke)
    t_start = time.perf_counter()
    cases: dict[str, Any] = {}
    segmenter = default_segmenter()
    with torch_threads(p["torch_threads"]), tempfile.TemporaryDirectory() as tmp:
        with open_catalog(Path(tmp) / "catalog") as catalog:
            RE = RunEngine({}, call_returns_result=False)
            RE.subscribe(catalog.writer())
            for case in CASES:
                setup = _setup(case, p, catalog.frames_directory)
                cases[case] = {"baseline": baseline_run(RE, setup)}
                for mode in MODES:
                    lockstep = mode == "lockstep"
                    run = adaptive_run(RE, setup, catalog, segmenter, p, lockstep=lockstep)
                    run["rate_vs_baseline"] = (
                        run["events_per_s"] / cases[case]["baseline"]["events_per_s"]
                    )
                    cases[case][mode] = run
                    if not args.quiet:
                        print(f"{case} {mode}: {run['events_per_s']:.1f} ev/s", flush=True)
    figures = {"cases": cases, "wall_seconds": time.perf_counter() - t_start}
    columns = ["events_per_s", "rate_vs_baseline", "backlog_max", "backlog_at_stop", "drain_s",
               "segmentation_missing_at_stop", "decisions", "ask_p50_ms", "ask_p95_ms",
               "beamline_idle_per_decision_p50_ms", "beamline_idle_per_decision_p95_ms",
               "idle_share", "event_ms_within_batch"]  # fmt: skip
    print_table(
        f"Adaptive scan in the RunEngine with persistence ({p['size']} px, "
        f"{p['frame_size']}^2 frames, batches of {p['batch_size']})",
        [[case, mode, r["baseline"]["events_per_s"], *(r[mode][c] for c in columns)]
         for case, r in cases.items() for mode in MODES],  # fmt: skip
        ["case", "mode", "baseline ev/s", "ev/s", "ratio", "backlog max", "backlog at stop",
         "drain s", "seg. missing at stop", "decisions", "ask p50 ms", "ask p95 ms",
         "idle/decision p50 ms", "p95 ms", "idle share", "ms/event in batch"],  # fmt: skip
    )
    notes = [
        "Not paced: each scan runs as fast as the RunEngine goes; the simulated devices keep "
        "their own simulated clock, so wall time here is software time.",
        "Both scans persist every document to the embedded Tiled catalog as they run.",
        "ask = AgentFeed.ask wall time in the plan; idle per decision = the gap before a "
        "batch's first event less the median gap between events within a batch (waiting "
        "for the map and the agent's answer); idle share = its sum over the scan time.",
    ]
    path = write_result(NAME, figures, SEEDS, p, out=args.out, notes=notes)
    print(f"wrote {path}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
