"""Streaming ptychography inside the RunEngine: does the reconstruction keep up?

A real RunEngine drives the simulated ptychography detector over a snake raster of the
whole P-sparse / P-dense phantom (+-1 px stage jitter, 1e6 photons per 64 x 64 frame,
Poisson), the frames written to HDF5 and announced by StreamResource / StreamDatum
documents, with :class:`~synaps_agent.callbacks.ptycho.PtychoReconstruction` subscribed.
Frames are triggered on a 200 Hz clock (:func:`paced`: before each trigger the plan waits
for the next 5 ms slot, or not at all when it is late), so they arrive at 200 frames/s
when the RunEngine can go that fast; the arrival rate it reached is reported beside the
same paced scan without the reconstruction (baseline).

A monitor thread samples, every ``sample_interval`` s, the frames emitted (events seen by
a subscriber placed before the reconstruction), the frames the engine holds and so the
backlog (emitted - in the engine), and, every ``snapshot_every`` s, a snapshot of the
reconstruction. Reported: backlog over time (max, at RunStop), frames taken in per second,
mini-batch updates per second while the scan runs, phase error vs frames received, and
the time after RunStop until the live phase error is within 10 % of the batch
reconstruction's (the same engine and settings, on the same frames and positions given as
arrays, ``batch_epochs`` epochs, as :func:`synaps_agent.recon.ptycho.reconstruct` does),
and, independent of the machine's load, the epochs' worth of updates the live engine
needed after RunStop to get there against the epochs the batch needs from scratch (its
error after every epoch is recorded; also with the momentum the callback's free-running
schedule uses, for reference). A snapshot copies the engine's state under its lock and
sums the coverage map after, so the monitor hardly slows the final epochs.

Run ``python -m benchmarks.recon_streaming`` (``--smoke`` for CI sizes).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import base_parser, print_table, results_dir, torch_threads, write_result
from benchmarks.recon_ptycho import phase_error
from synaps_agent.callbacks.frames import StreamFrameReader
from synaps_agent.callbacks.ptycho import PtychoGeometry, PtychoReconstruction
from synaps_agent.recon.ptycho import PtychoConfig, PtychoEngine
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom

NAME = "recon_streaming"
CASES = ("P-sparse", "P-dense")
SEEDS = {"phantom": 0, "beamline": 0, "engine": 0, "jitter": 0}
#: the live error counts as caught up within this factor of the batch error
TOLERANCE = 1.10


def _params(smoke: bool) -> dict[str, Any]:
    common = {
        "frames_per_second": 200.0,
        "photons_per_frame": 1e6,
        "batch_size": 32,
        # uniform +-1 px stage jitter (a fraction of the step: +-jitter * step / 2)
        "position_jitter_px": 1.0,
        "torch_threads": 1,
        "sample_interval": 0.1,
        "snapshot_interval": 2.0,  # the callback's own emitted snapshots (product)
    }
    if smoke:
        return {
            **common,
            "smoke": True,
            "size": 96,
            "frame_size": 32,
            "probe_fwhm_px": 10.0,
            "step_px": 4.0,
            "scan_width_px": 40.0,
            "final_epochs": 15,
            "batch_epochs": 15,
            "snapshot_every": 0.5,
            "after_stop_snapshot_every": 0.1,
        }
    return {
        **common,
        "smoke": False,
        "size": 384,
        "frame_size": 64,
        "probe_fwhm_px": 20.0,
        "step_px": 6.0,
        "scan_width_px": None,  # the whole phantom
        "final_epochs": 20,
        "batch_epochs": 20,
        "snapshot_every": 1.5,
        "after_stop_snapshot_every": 0.25,
    }


def paced(plan, detector, frames_per_second: float):
    """Trigger ``detector`` on a fixed clock: wait for the next slot before each trigger.

    Parameters
    ----------
    plan : generator
        Any plan that triggers ``detector``.
    detector : device
        The detector whose ``trigger`` messages are paced.
    frames_per_second : float
        Slot rate; slot ``n`` is at ``t0 + n / frames_per_second`` after the first trigger.
        A late trigger is not delayed (no catching up by skipping: every frame is taken).

    Yields
    ------
    Msg
        The messages of ``plan``, with a ``sleep`` inserted before a trigger that is early.
    """
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    clock = {"t0": None, "n": 0}

    def insert_wait(msg):
        if msg.command != "trigger" or msg.obj is not detector:
            return None, None
        now = time.perf_counter()
        if clock["t0"] is None:
            clock["t0"] = now
        wait = clock["t0"] + clock["n"] / frames_per_second - now
        clock["n"] += 1
        if wait <= 0:
            return None, None

        def wait_then_trigger():
            yield from bps.sleep(wait)
            return (yield msg)

        return wait_then_trigger(), None

    return (yield from bpp.plan_mutator(plan, insert_wait))


class _Recorder:
    """Counts emitted frames and keeps what the batch reconstruction needs.

    Subscribed before the reconstruction: it sees each event first. It keeps the stream
    resources and datums (the frames are read from the detector's file after the run)
    and each event's stage position.
    """

    def __init__(self, image_key: str) -> None:
        self.image_key = image_key
        self.events = 0
        self.t_stop: float | None = None
        self.t_first: float | None = None
        self.positions: dict[int, tuple[float, float]] = {}
        self.resources: list[dict] = []
        self.datums: list[dict] = []
        self.start_doc: dict | None = None

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.start_doc = doc
        elif name == "event":
            if self.t_first is None:
                self.t_first = time.perf_counter()
            self.events += 1
            x_key, y_key = self.start_doc["motors"][:2]
            self.positions[doc["seq_num"]] = (doc["data"][x_key], doc["data"][y_key])
        elif name == "stream_resource" and doc.get("data_key") == self.image_key:
            self.resources.append(doc)
        elif name == "stream_datum":
            self.datums.append(doc)
        elif name == "stop":
            self.t_stop = time.perf_counter()

    def frames_and_positions(self, geometry: PtychoGeometry) -> tuple[np.ndarray, np.ndarray]:
        """All frames (read back from the file) and their positions in object pixels."""
        reader = StreamFrameReader()
        for doc in self.resources:
            reader.stream_resource(doc)
        frames, pixels = [], []
        for doc in self.datums:
            if reader.data_key(doc["stream_resource"]) != self.image_key:
                continue
            _, seq_nums, block = reader.stream_datum(doc)
            for seq_num, frame in zip(seq_nums, block, strict=True):
                frames.append(frame)
                pixels.append(geometry.to_pixels(*self.positions[seq_num]))
        return np.asarray(frames, dtype=np.float32), np.asarray(pixels)


def _monitor(recon, recorder, p, samples, snapshots, done: threading.Event) -> None:
    """Sample backlog and engine state until ``done``; keep snapshots at intervals.

    A snapshot takes CPU (the coverage map), so snapshots are at least three times their
    own duration apart.
    """
    t_last_snap = 0.0
    snap_seconds = 0.0
    while not done.is_set():
        now = time.perf_counter()
        engines = list(recon.engines.values())
        in_engine = sum(e.num_frames for e in engines)
        iterations = sum(e.num_iterations for e in engines)
        samples.append(
            {
                "t": now,
                "emitted": recorder.events,
                "in_engine": in_engine,
                "queue": recon.backlog,
                "iterations": iterations,
            }
        )
        if recorder.t_stop is not None:
            # after RunStop the frames are all known: copies of the object only (cheap),
            # scored with the final snapshot's coverage map
            if now - t_last_snap >= p["after_stop_snapshot_every"] and in_engine:
                snap = engines[0].snapshot(coverage=False)
                snapshots.append(
                    {"t": time.perf_counter(), "emitted": recorder.events, "snap": snap}
                )
                t_last_snap = now
            done.wait(p["sample_interval"])
            continue
        if now - t_last_snap >= max(p["snapshot_every"], 3 * snap_seconds) and in_engine:
            snap = recon.snapshot()  # costs CPU: keep it under ~1/3 of the time
            snap_seconds = time.perf_counter() - now
            if snap is not None:
                snapshots.append(
                    {"t": time.perf_counter(), "emitted": recorder.events, "snap": snap}
                )
            t_last_snap = now
        done.wait(p["sample_interval"])


def _scan_plan(bl, p):
    from synaps_agent.plans.scans import raster_ptycho_scan

    pixel_um = bl.ptycho_det.object_pixel_size.get() * 1e6
    width = p["scan_width_px"] or (p["size"] - p["frame_size"])
    half = width / 2 * pixel_um
    step = p["step_px"] * pixel_um
    jitter = 2 * p["position_jitter_px"] / p["step_px"]
    plan = raster_ptycho_scan(
        [bl.ptycho_det],
        bl.stage.x,
        bl.stage.y,
        -half,
        half + 1e-9,
        -half,
        half + 1e-9,
        step,
        jitter=jitter,
        seed=SEEDS["jitter"],
        shutter=bl.shutter,
    )
    return paced(plan, bl.ptycho_det, p["frames_per_second"])


def _beamline(case: str, p: dict[str, Any], frames_dir: Path):
    phantom = make_phantom(case, SEEDS["phantom"], size=p["size"])
    return make_sim_beamline(
        phantom,
        frames_dir,
        seed=SEEDS["beamline"],
        frame_size=p["frame_size"],
        probe_fwhm_px=p["probe_fwhm_px"],
        photons_per_frame=p["photons_per_frame"],
    )


def baseline_rate(case: str, p: dict[str, Any], frames_dir: Path) -> dict[str, float]:
    """The same paced scan with no reconstruction subscribed: the RunEngine's own rate."""
    from bluesky import RunEngine

    bl = _beamline(case, p, frames_dir)
    recorder = _Recorder(bl.ptycho_det.image_key)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(recorder)
    RE(_scan_plan(bl, p))
    seconds = recorder.t_stop - recorder.t_first
    return {"frames": recorder.events, "arrival_fps": (recorder.events - 1) / seconds}


def batch_error_curve(
    frames: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    config: PtychoConfig,
    epochs: int,
    truth: np.ndarray,
) -> tuple[Any, list[dict[str, float]], float, float]:
    """What :func:`~synaps_agent.recon.ptycho.reconstruct` does, one epoch at a time.

    Returns
    -------
    (final snapshot, ``[{"epoch", "phase_rmse"}]`` after every epoch, wall seconds and
    CPU seconds of the epochs alone)
    """
    engine = PtychoEngine(frames.shape[1:], probe, config=config)
    engine.add_frames(frames, positions)
    seconds, cpu_seconds, curve = 0.0, 0.0, []
    for epoch in range(1, epochs + 1):
        t0, c0 = time.perf_counter(), time.thread_time()
        engine.run_epochs(1)
        seconds += time.perf_counter() - t0
        cpu_seconds += time.thread_time() - c0
        snap = engine.snapshot()
        curve.append({"epoch": epoch, "phase_rmse": phase_error(snap, truth)["phase_rmse"]})
    return snap, curve, seconds, cpu_seconds


def live_run(case: str, p: dict[str, Any], frames_dir: Path) -> dict[str, Any]:
    """The paced scan with the live reconstruction; monitor, then the batch reference."""
    from bluesky import RunEngine

    bl = _beamline(case, p, frames_dir)
    truth = bl.phantom.transmission(bl.ptycho_det.energy.get())
    config = PtychoConfig(batch_size=p["batch_size"], seed=SEEDS["engine"])
    # the callback's defaults unless the command line says otherwise (ablations)
    options = {k: p[k] for k in ("momentum", "final_threads") if k in p}
    recon = PtychoReconstruction(
        config=config,
        snapshot_interval=p["snapshot_interval"],
        final_epochs=p["final_epochs"],
        **options,
    )
    recorder = _Recorder(bl.ptycho_det.image_key)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(recorder)  # first: counts each frame before the reconstruction sees it
    RE.subscribe(recon)
    samples: list[dict] = []
    snapshots: list[dict] = []
    done = threading.Event()
    monitor = threading.Thread(
        target=_monitor, args=(recon, recorder, p, samples, snapshots, done), daemon=True
    )
    t_run = time.perf_counter()
    monitor.start()
    try:
        RE(_scan_plan(bl, p))
        t_returned = time.perf_counter()
        finished = recon.wait(1800)
        t_final = time.perf_counter()
    finally:
        done.set()
        monitor.join(30)
    if not finished or recon.errors:
        raise RuntimeError(f"{case}: live reconstruction failed: {recon.errors or 'timeout'}")
    t_stop, t_first = recorder.t_stop, recorder.t_first
    final_snap = recon.snapshot()
    snapshots.append({"t": t_final, "emitted": recorder.events, "snap": final_snap})

    # batch reference: the same engine settings, frames and positions from arrays (what
    # reconstruct() does, one epoch at a time to record its error vs epochs)
    frames, positions = recorder.frames_and_positions(recon.geometry)
    batch, batch_curve, batch_seconds, batch_cpu_seconds = batch_error_curve(
        frames, positions, recon.geometry.probe, config, p["batch_epochs"], truth
    )
    batch_error = batch_curve[-1]["phase_rmse"]
    # for reference: the batch with the momentum the live free-running schedule uses
    live_config = recon.free_running_config(config)
    _, momentum_curve, _, _ = batch_error_curve(
        frames, positions, recon.geometry.probe, live_config, p["batch_epochs"], truth
    )
    # what no reconstruction at all scores (a flat object over the same lit pixels)
    flat_error = phase_error(replace(batch, object=np.ones_like(batch.object)), truth)

    curve = []
    # the monitor may sample once more between the reconstruction's end and its own stop:
    # the curve ends at the final snapshot
    for s in sorted(snapshots, key=lambda s: s["t"]):
        if s["t"] > t_final:
            continue
        snap = s["snap"]
        if snap.illumination.size == 0:  # an object copy after RunStop
            if snap.object.shape != final_snap.object.shape or any(
                snap.origin != final_snap.origin
            ):
                continue
            snap = replace(snap, illumination=final_snap.illumination)
        errors = phase_error(snap, truth)
        curve.append(
            {
                "t_after_stop": s["t"] - t_stop,
                "frames_emitted": s["emitted"],
                "frames_in_engine": int(snap.num_frames),
                "iterations": int(snap.num_iterations),
                "phase_rmse": errors["phase_rmse"],
                "aligned": errors["aligned"],
            }
        )
    target = TOLERANCE * batch_error
    caught = next(
        (c for c in curve if c["t_after_stop"] >= 0 and c["phase_rmse"] <= target), None
    )
    caught_up = None if caught is None else caught["t_after_stop"]
    backlog = [
        {
            "t": s["t"] - t_first,
            "emitted": s["emitted"],
            "in_engine": s["in_engine"],
            "backlog": s["emitted"] - s["in_engine"],
            "queue": s["queue"],
            "iterations": s["iterations"],
        }
        for s in samples
        if s["t"] >= t_first
    ]
    during = [b for b in backlog if b["t"] <= t_stop - t_first]
    at_stop = during[-1] if during else {"backlog": 0, "iterations": 0}
    scan_seconds = t_stop - t_first
    drained = next(
        (b["t"] - (t_stop - t_first) for b in backlog
         if b["t"] >= t_stop - t_first and b["backlog"] == 0),
        None,
    )
    n = recorder.events
    # load-independent: epochs' worth of updates after RunStop until caught up, against
    # the epochs the batch reconstruction needs from scratch
    at_stop_iterations = at_stop["iterations"]
    return {
        "frames": n,
        "arrival_fps": (n - 1) / scan_seconds,
        "scan_seconds": scan_seconds,
        "run_seconds": t_returned - t_run,
        "backlog_max": max((b["backlog"] for b in backlog), default=0),
        "backlog_at_stop": at_stop["backlog"],
        "backlog_drained_s_after_stop": drained,
        "intake_fps": (n - at_stop["backlog"]) / scan_seconds,
        "updates_per_s_during_scan": at_stop["iterations"] / scan_seconds,
        "patterns_per_s_during_scan": at_stop["iterations"] * p["batch_size"] / scan_seconds,
        "epochs_at_stop": at_stop["iterations"] * p["batch_size"] / n,
        "final_seconds_after_stop": t_final - t_stop,
        "live_final_phase_rmse": curve[-1]["phase_rmse"],
        "batch_phase_rmse": batch_error,
        "flat_object_phase_rmse": flat_error["phase_rmse"],
        "batch_seconds": batch_seconds,
        "live_vs_batch_error_ratio": curve[-1]["phase_rmse"] / batch_error,
        "target_phase_rmse": target,
        "caught_up_s_after_stop": caught_up,
        "caught_up_epochs_after_stop": (
            None if caught is None
            else (caught["iterations"] - at_stop_iterations) * p["batch_size"] / n
        ),
        "final_epochs_per_s": (
            (curve[-1]["iterations"] - at_stop_iterations) * p["batch_size"] / n
            / max(t_final - t_stop, 1e-9)
        ),
        "batch_epochs_per_s": p["batch_epochs"] / batch_seconds,
        "batch_cpu_s_per_epoch": batch_cpu_seconds / p["batch_epochs"],
        "batch_epochs_to_target": next(
            (b["epoch"] for b in batch_curve if b["phase_rmse"] <= target), None
        ),
        "batch_curve": batch_curve,
        "batch_momentum": live_config.momentum,  # of the "batch with live momentum"
        "batch_with_live_momentum_phase_rmse": momentum_curve[-1]["phase_rmse"],
        "batch_with_live_momentum_curve": momentum_curve,
        "live_momentum": live_config.momentum,
        "final_threads_used": recon.final_threads_used,
        "warnings": len(recon.warnings),
        "skipped": len(recon.skipped),
        "curve": curve,
        "backlog": backlog,
    }


def plot(figures: dict[str, Any], path: Path) -> Path:
    """Error vs frames received and after the stop, backlog vs time, per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for i, (case, r) in enumerate(figures["cases"].items()):
        color = f"C{i}"
        scan = [c for c in r["curve"] if c["t_after_stop"] < 0]
        axes[0].plot(
            [c["frames_emitted"] for c in scan],
            [c["phase_rmse"] for c in scan],
            "o-",
            color=color,
            ms=3,
            label=case,
        )
        after = [c for c in r["curve"] if c["t_after_stop"] >= 0]
        axes[1].plot(
            [c["t_after_stop"] for c in after],
            [c["phase_rmse"] for c in after],
            "o-",
            color=color,
            ms=3,
            label=f"{case} live",
        )
        axes[1].axhline(r["batch_phase_rmse"], color=color, ls="--", lw=1, label=f"{case} batch")
        axes[1].axhline(r["target_phase_rmse"], color=color, ls=":", lw=1)
        axes[2].plot(
            [b["t"] for b in r["backlog"]],
            [b["backlog"] for b in r["backlog"]],
            color=color,
            label=case,
        )
        axes[2].axvline(r["scan_seconds"], color=color, ls=":", lw=1)
    axes[0].set(
        xlabel="frames received", ylabel="phase RMSE, lit pixels (rad)", yscale="log",
        title="live error while the scan runs",
    )
    axes[1].set(
        xlabel="s after RunStop", ylabel="phase RMSE (rad)", yscale="log",
        title="final epochs: live vs batch (dotted: +10 %)",
    )
    axes[2].set(
        xlabel="s since first frame", ylabel="frames not yet in the engine",
        title="backlog (dotted: RunStop)",
    )
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON and the PNG; return the record."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--momentum", default=None,
        help="PtychoReconstruction(momentum=...): a number or 'none' (default: its default)",
    )
    parser.add_argument(
        "--final-threads", default=None,
        help="PtychoReconstruction(final_threads=...): a number or 'none' (default: its default)",
    )
    args = parser.parse_args(argv)
    p = _params(args.smoke)
    if args.momentum is not None:
        p["momentum"] = None if args.momentum == "none" else float(args.momentum)
    if args.final_threads is not None:
        p["final_threads"] = None if args.final_threads == "none" else int(args.final_threads)
    figures: dict[str, Any] = {"cases": {}}
    t_start = time.perf_counter()
    with torch_threads(p["torch_threads"]), tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            base = baseline_rate(case, p, Path(tmp) / f"{case}-baseline")
            result = live_run(case, p, Path(tmp) / f"{case}-live")
            result["baseline_arrival_fps"] = base["arrival_fps"]
            result["arrival_vs_baseline"] = result["arrival_fps"] / base["arrival_fps"]
            figures["cases"][case] = result
    figures["wall_seconds"] = time.perf_counter() - t_start
    png = plot(figures, results_dir(args.out) / f"{NAME}.png")
    figures["figure"] = png.name

    rows = []
    for case, r in figures["cases"].items():
        rows.append(
            [
                case,
                r["frames"],
                r["baseline_arrival_fps"],
                r["arrival_fps"],
                r["intake_fps"],
                r["backlog_max"],
                r["backlog_at_stop"],
                r["patterns_per_s_during_scan"],
                r["epochs_at_stop"],
            ]
        )
    print_table(
        f"Live ptychography in the RunEngine, {p['frame_size']}^2 frames paced at "
        f"{p['frames_per_second']:.0f}/s",
        rows,
        [
            "case",
            "frames",
            "arrival fps, no recon",
            "arrival fps",
            "intake fps",
            "backlog max",
            "backlog at stop",
            "patterns/s (updates)",
            "epochs at stop",
        ],
    )
    rows = [
        [
            case,
            r["batch_phase_rmse"],
            r["target_phase_rmse"],
            r["caught_up_s_after_stop"] if r["caught_up_s_after_stop"] is not None else "never",
            r["live_final_phase_rmse"],
            r["final_seconds_after_stop"],
            r["caught_up_epochs_after_stop"]
            if r["caught_up_epochs_after_stop"] is not None
            else "never",
            r["batch_epochs_to_target"] if r["batch_epochs_to_target"] is not None else "never",
            r["batch_with_live_momentum_phase_rmse"],
            r["batch_seconds"],
        ]
        for case, r in figures["cases"].items()
    ]
    print_table(
        f"Live error vs batch ({p['batch_epochs']} epochs from arrays)",
        rows,
        [
            "case",
            "batch phase RMSE",
            "target (+10 %)",
            "s after stop to target",
            "live final phase RMSE",
            "s after stop to final",
            "epochs after stop to target",
            "batch epochs to target",
            "batch with live momentum",
            "batch s",
        ],
    )
    notes = [
        "2 CPU cores shared with other developers while measuring: rates are noisy.",
        f"Frames triggered on a {p['frames_per_second']:.0f} Hz clock (a late trigger is not "
        "delayed); arrival fps is the rate the RunEngine reached, beside the same paced scan "
        "without the reconstruction.",
        "Backlog: frames emitted by the RunEngine and not yet added to the engine.",
        f"Live: PtychoReconstruction defaults (probe held until RunStop, then {p['final_epochs']} "
        "final epochs with probe refinement; momentum 0.5 in its free-running schedule); "
        "batch: what reconstruct() does with the same config (momentum 0 for rPIE), "
        f"{p['batch_epochs']} epochs, same frames, positions and probe guess (the probe model "
        "from the run's metadata); 'batch with live momentum': the same with momentum 0.5.",
        "Epochs after stop to target: mini-batch updates after RunStop until the first "
        "snapshot within the target, in epochs (load-independent, unlike the seconds).",
        "Phase error: benchmarks.recon_ptycho.phase_error (lit pixels above 10 % of peak, "
        "eroded 2 px, after alignment); snapshots polled by a monitor thread.",
        f"{p['torch_threads']} torch thread.",
    ]
    path = write_result(NAME, figures, SEEDS, p, out=args.out, notes=notes)
    print(f"wrote {path} and {png}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
