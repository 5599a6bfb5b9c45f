"""Simulated detectors and the cost of persistence.

(a) Frames per second of the simulated detectors: the ptychography detector (64 x 64
frames on the 384 x 384 ``P-sparse`` phantom), noisy (``acquire()``) and noise-free
(``expected_frame()``), and the projection detector (128 x 128 frames of
``T-electrode``), at a new angle per frame (a projection of the volume each time) and at
a repeated angle (cached transmission: the noise and the frame alone).

(b) Persistence overhead per event: the same raster ptychography scan in a real
RunEngine (i) with no subscriber (baseline; the detector still writes its HDF5 file),
(ii) with the embedded Tiled catalog's ``TiledWriter`` (default batching) and (iii) with
``TiledWriter(batch_size=1)``. The modes are interleaved and repeated; the median of each
is reported, with the overhead per event as a difference from the baseline of the same
run and the rate as a ratio to it.

Run ``python -m benchmarks.sim_detector`` (``--smoke`` for CI sizes).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import base_parser, print_table, progress, write_result
from synaps_agent.sim_devices.beamline import SimBeamline, make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom

NAME = "sim_detector"
SEEDS = {"phantom_2d": 0, "phantom_3d": 0, "beamline": 0}


def _params(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "smoke": True,
            "ptycho_size": 128,
            "frame_size": 32,
            "probe_fwhm_px": 10.0,
            "ptycho_frames": 100,
            "tomo_size": 32,
            "tomo_angles": 8,
            "tomo_repeats": 20,
            "scan_points": 30,
            "scan_grid": (6, 5),
            "step_px": 3.0,
            "repeats": 1,
        }
    return {
        "smoke": False,
        "ptycho_size": 384,
        "frame_size": 64,
        "probe_fwhm_px": 20.0,
        "ptycho_frames": 2000,
        "tomo_size": 128,
        "tomo_angles": 30,
        "tomo_repeats": 100,
        "scan_points": 400,
        "scan_grid": (20, 20),
        "step_px": 6.0,
        "repeats": 3,
    }


def _move(
    bl: SimBeamline, x: float | None = None, y: float | None = None, theta: float | None = None
) -> None:
    """Move the stage instantly (time_scale 0: the statuses finish at once)."""
    for motor, value in ((bl.stage.x, x), (bl.stage.y, y), (bl.stage.theta, theta)):
        if value is not None:
            motor.set(float(value)).wait(5)


def detector_rates(p: dict[str, Any], frames_dir: Path, quiet: bool) -> dict[str, Any]:
    """Frames per second of the ptychography and projection detectors."""
    phantom = make_phantom("P-sparse", SEEDS["phantom_2d"], size=p["ptycho_size"])
    bl = make_sim_beamline(
        phantom,
        frames_dir,
        seed=SEEDS["beamline"],
        frame_size=p["frame_size"],
        probe_fwhm_px=p["probe_fwhm_px"],
        photons_per_frame=1e6,
    )
    bl.shutter.set("open").wait(5)
    det = bl.ptycho_det
    pixel_um = det.object_pixel_size.get() * 1e6
    half = (p["ptycho_size"] - p["frame_size"]) / 2 * pixel_um
    rng = np.random.default_rng(SEEDS["beamline"])
    n = int(p["ptycho_frames"])
    xy = rng.uniform(-half, half, (n, 2))
    det.acquire()  # warm up (probe, transmission caches)
    t_acq = t_exp = 0.0
    for x, y in progress(xy, "ptycho acquire()", disable=quiet):
        _move(bl, x, y)
        t0 = time.perf_counter()
        det.acquire()
        t_acq += time.perf_counter() - t0
        t0 = time.perf_counter()
        det.expected_frame()
        t_exp += time.perf_counter() - t0

    volume = make_phantom("T-electrode", SEEDS["phantom_3d"], size=p["tomo_size"])
    bl3 = make_sim_beamline(volume, frames_dir, seed=SEEDS["beamline"], photons_per_pixel=1e4)
    bl3.shutter.set("open").wait(5)
    proj = bl3.proj_det
    angles = np.linspace(0.0, 180.0, int(p["tomo_angles"]), endpoint=False) + 0.37
    t_new = 0.0
    for angle in progress(angles, "projection, new angle", disable=quiet):
        _move(bl3, theta=angle)
        t0 = time.perf_counter()
        proj.acquire()
        t_new += time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(int(p["tomo_repeats"])):
        proj.acquire()
    t_rep = time.perf_counter() - t0
    return {
        "ptycho_frame_shape": list(det.frame_shape()),
        "ptycho_acquire_fps": n / t_acq,
        "ptycho_expected_frame_fps": n / t_exp,
        "ptycho_noise_fraction_of_acquire": max(0.0, 1.0 - t_exp / t_acq),
        "projection_frame_shape": list(proj.frame_shape()),
        "projection_new_angle_fps": len(angles) / t_new,
        "projection_repeated_angle_fps": int(p["tomo_repeats"]) / t_rep,
    }


def _raster_args(bl: SimBeamline, p: dict[str, Any]) -> tuple[float, ...]:
    nx, ny = p["scan_grid"]
    step = p["step_px"] * bl.ptycho_det.object_pixel_size.get() * 1e6
    hx, hy = (nx - 1) * step / 2, (ny - 1) * step / 2
    return (-hx, hx + 1e-9, -hy, hy + 1e-9, step)


def persistence_overhead(p: dict[str, Any], workdir: Path, quiet: bool) -> dict[str, Any]:
    """Events per second of one raster scan without and with the TiledWriter."""
    from bluesky import RunEngine

    from synaps_agent.catalog import open_catalog
    from synaps_agent.plans.scans import raster_ptycho_scan

    modes = ("no_subscriber", "tiled_writer_default", "tiled_writer_batch_1")
    times: dict[str, list[float]] = {m: [] for m in modes}
    flush: dict[str, list[float]] = {m: [] for m in modes}
    events: dict[str, list[int]] = {m: [] for m in modes}
    stored: dict[str, int] = {}
    t_open = time.perf_counter()
    with open_catalog(workdir / "catalog") as catalog:
        open_seconds = time.perf_counter() - t_open
        phantom = make_phantom("P-sparse", SEEDS["phantom_2d"], size=p["ptycho_size"])
        bl = make_sim_beamline(
            phantom,
            catalog.frames_directory,
            seed=SEEDS["beamline"],
            frame_size=p["frame_size"],
            probe_fwhm_px=p["probe_fwhm_px"],
            photons_per_frame=1e6,
        )
        x0, x1, y0, y1, step = _raster_args(bl, p)
        schedule = [m for _ in range(int(p["repeats"])) for m in modes]
        # one untimed scan first: imports, first HDF5 file, the server's first request
        warm = RunEngine({}, call_returns_result=False)
        warm.subscribe(catalog.writer())
        warm(raster_ptycho_scan([bl.ptycho_det, bl.i0], bl.stage.x, bl.stage.y, x0, x0, y0, y0, 1))
        for mode in progress(schedule, "scans", disable=quiet):
            RE = RunEngine({}, call_returns_result=False)
            marks: dict[str, float] = {}
            counter = {"event": 0}

            def mark(name: str, doc: dict, marks=marks, counter=counter) -> None:
                if name == "event":
                    counter["event"] += 1
                elif name == "stop":
                    marks["stop"] = time.perf_counter()

            RE.subscribe(mark)  # first: sees the stop before the writer flushes
            if mode == "tiled_writer_default":
                RE.subscribe(catalog.writer())
            elif mode == "tiled_writer_batch_1":
                RE.subscribe(catalog.writer(batch_size=1))
            plan = raster_ptycho_scan(
                [bl.ptycho_det, bl.i0],
                bl.stage.x,
                bl.stage.y,
                x0,
                x1,
                y0,
                y1,
                step,
                shutter=bl.shutter,
            )
            t0 = time.perf_counter()
            (uid,) = RE(plan)
            t1 = time.perf_counter()
            times[mode].append(t1 - t0)
            # the stop document is the run's last; what follows it until RE returns is the
            # subscribers' handling of the stop (the default writer's flush)
            flush[mode].append(t1 - marks.get("stop", t1))
            events[mode].append(counter["event"])
            if mode != "no_subscriber":
                stored[mode] = int(catalog.raw[uid]["primary"][bl.ptycho_det.image_key].shape[0])
    n = events["no_subscriber"][0]
    med = {m: statistics.median(times[m]) for m in modes}
    base = med["no_subscriber"]
    figures: dict[str, Any] = {
        "events_per_scan": n,
        "frame_shape": [p["frame_size"], p["frame_size"]],
        "catalog_open_seconds": open_seconds,
        "repeats": int(p["repeats"]),
        "modes": {},
    }
    for m in modes:
        figures["modes"][m] = {
            "scan_seconds_median": med[m],
            "scan_seconds_all": times[m],
            "events_per_second": n / med[m],
            "ms_per_event": 1e3 * med[m] / n,
            "overhead_ms_per_event_vs_baseline": 1e3 * (med[m] - base) / n,
            "time_ratio_vs_baseline": med[m] / base,
            "rate_ratio_vs_baseline": base / med[m],
            "seconds_after_stop_median": statistics.median(flush[m]),
            "frames_read_back": stored.get(m),
        }
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write ``sim_detector.json``; return the record."""
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    p = _params(args.smoke)
    with tempfile.TemporaryDirectory(prefix="synaps-bench-") as tmp:
        work = Path(tmp)
        rates = detector_rates(p, work / "frames", args.quiet)
        persistence = persistence_overhead(p, work, args.quiet)
    figures = {"detectors": rates, "persistence": persistence}

    print_table(
        "Simulated detectors (frames per second, one process)",
        [
            [
                f"ptycho {rates['ptycho_frame_shape']} acquire() (Poisson)",
                rates["ptycho_acquire_fps"],
            ],
            [
                f"ptycho {rates['ptycho_frame_shape']} expected_frame()",
                rates["ptycho_expected_frame_fps"],
            ],
            [
                f"projection {rates['projection_frame_shape']}, new angle each frame",
                rates["projection_new_angle_fps"],
            ],
            [
                f"projection {rates['projection_frame_shape']}, repeated angle",
                rates["projection_repeated_angle_fps"],
            ],
        ],
        ["detector", "frames/s"],
    )
    rows = []
    for mode, f in persistence["modes"].items():
        rows.append(
            [
                mode,
                f["events_per_second"],
                f["ms_per_event"],
                f["overhead_ms_per_event_vs_baseline"],
                f["rate_ratio_vs_baseline"],
                f["seconds_after_stop_median"],
            ]
        )
    print_table(
        f"Raster scan of {persistence['events_per_scan']} events in a RunEngine "
        f"(median of {persistence['repeats']})",
        rows,
        ["mode", "events/s", "ms/event", "overhead ms/event", "rate / baseline", "s after stop"],
    )
    notes = [
        "2 CPU cores shared with other developers while measuring: figures are noisy; "
        "compare the ratios to the baseline measured in the same run.",
        "Ptycho frames use photons_per_frame 1e6; projections photons_per_pixel 1e4.",
        "Scan modes are interleaved (baseline, default writer, batch_size=1) and repeated.",
    ]
    path = write_result(NAME, figures, SEEDS, p, out=args.out, notes=notes)
    print(f"wrote {path}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
