"""The main job: a simulated experiment stored in the embedded catalog, with figures.

It runs a raster ptychography scan of ``P-sparse`` and a tomography scan of
``T-electrode`` on the simulated beamline (stored, read back, figures of the phantoms,
diffraction patterns and projections), then the adaptive experiment: a raster scan and
the agent's scan of a smaller P-sparse phantom, both with live reconstruction and
segmentation, scored against ground truth (figure ``adaptive_vs_raster.png``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from bluesky import RunEngine

from .callbacks.progress import ScanProgress
from .catalog import open_catalog
from .figures import plot_diffraction_patterns, plot_phantom, plot_projections
from .plans.scans import raster_ptycho_scan, tomo_scan
from .sim_devices.beamline import make_sim_beamline
from .sim_devices.phantoms import make_phantom

__all__ = ["run_demo"]


def _ptycho_scan_extent(bl, step_px: float) -> tuple[float, float]:
    """Half-width (um) of a raster that keeps the probe window on the object, and the step."""
    det = bl.ptycho_det
    pixel_um = det.object_pixel_size.get() * 1e6
    rows, cols = bl.sample.image_shape
    half = (min(rows, cols) - det.frame_size.get()) / 2 * pixel_um
    return half, step_px * pixel_um


def run_demo(
    out: str | Path,
    *,
    size: int | None = None,
    seed: int = 0,
    num_angles: int = 90,
    adaptive: bool = True,
    log=print,
) -> dict:
    """Run the simulated experiment; return (and write) the summary.

    Parameters
    ----------
    out : path
        Results folder: ``catalog/`` (embedded Tiled), ``figures/``, ``summary.json``.
    size : int, optional
        Edge of the phantoms in pixels (default: the benchmark protocol's sizes).
    seed : int
        Phantom and noise seed.
    num_angles : int
        Tomography angles.
    adaptive : bool
        Run the adaptive experiment (the agent against a raster scan, with live
        reconstruction and segmentation) after the scans above.
    """
    out = Path(out).resolve()
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    summary: dict = {"catalog_directory": str(out / "catalog"), "runs": {}, "figures": []}
    t0 = time.perf_counter()
    with open_catalog(out / "catalog") as catalog:
        RE = RunEngine({}, call_returns_result=False)
        RE.subscribe(catalog.writer())
        RE.subscribe(ScanProgress())

        # -- ptychography ------------------------------------------------------------
        for case in ("P-sparse", "P-dense"):
            phantom = make_phantom(case, seed=seed, size=size)
            summary["figures"].append(str(plot_phantom(phantom, figures / f"phantom_{case}.png")))
        phantom = make_phantom("P-sparse", seed=seed, size=size)
        bl = make_sim_beamline(phantom, catalog.frames_directory, seed=seed)
        half, step = _ptycho_scan_extent(bl, step_px=6.0)
        log(f"raster ptychography of {phantom.name} ({phantom.shape}), step {step:.3f} um ...")
        bl.clock.reset()
        (uid,) = RE(
            raster_ptycho_scan(
                [bl.ptycho_det, bl.i0],
                bl.stage.x,
                bl.stage.y,
                -half,
                half,
                -half,
                half,
                step,
                shutter=bl.shutter,
                md={"purpose": "synaps demo"},
            )
        )
        run = catalog.raw[uid]
        primary = run["primary"]
        frames = primary[bl.ptycho_det.image_key]
        n = frames.shape[0]
        # show the range of what the sample does: from most to least transmitted frame
        totals = np.asarray(primary[bl.ptycho_det.total_counts.name].read())
        by_counts = np.argsort(totals)
        picks = [int(by_counts[int(q * (n - 1))]) for q in (0.0, 0.1, 0.5, 1.0)]
        xs = np.asarray(primary["stage_x"].read())
        ys = np.asarray(primary["stage_y"].read())
        patterns = np.stack([np.asarray(frames[i]) for i in picks])
        summary["figures"].append(
            str(
                plot_diffraction_patterns(
                    patterns,
                    [(xs[i], ys[i]) for i in picks],
                    figures / "diffraction_patterns.png",
                    title=f"{phantom.name}: far-field patterns read back from Tiled",
                )
            )
        )
        summary["runs"]["ptychography"] = {
            "uid": uid,
            "frames": int(n),
            "frame_shape": list(frames.shape[1:]),
            "simulated_seconds": dict(bl.clock.by_kind),
        }

        # -- tomography --------------------------------------------------------------
        volume = make_phantom("T-electrode", seed=seed, size=size and max(32, size // 3))
        summary["figures"].append(str(plot_phantom(volume, figures / "phantom_T-electrode.png")))
        bl3 = make_sim_beamline(volume, catalog.frames_directory, seed=seed)
        log(f"tomography of {volume.name} ({volume.shape}), {num_angles} angles ...")
        bl3.clock.reset()
        (uid,) = RE(
            tomo_scan(
                [bl3.proj_det, bl3.i0],
                bl3.stage.theta,
                num=num_angles,
                scheme="golden",
                num_darks=5,
                num_flats=5,
                flat_motor=bl3.stage.x,
                flat_position=bl3.flat_field_x,
                shutter=bl3.shutter,
                md={"purpose": "synaps demo"},
            )
        )
        run = catalog.raw[uid]
        projections = run["primary"][bl3.proj_det.image_key]
        angles = np.asarray(run["primary"]["stage_theta"].read())
        flat = np.asarray(run["flat"][bl3.proj_det.image_key].read()).mean(axis=0)
        dark = np.asarray(run["dark"][bl3.proj_det.image_key].read()).mean(axis=0)
        order = np.argsort(angles)[:: max(1, num_angles // 4)][:4]
        normalized = [
            (np.asarray(projections[int(i)]) - dark) / np.maximum(flat - dark, 1) for i in order
        ]
        summary["figures"].append(
            str(
                plot_projections(
                    np.stack(normalized),
                    angles[order],
                    figures / "projections.png",
                    title=f"{volume.name}: flat/dark-corrected projections read back from Tiled",
                )
            )
        )
        summary["runs"]["tomography"] = {
            "uid": uid,
            "projections": int(projections.shape[0]),
            "frame_shape": list(projections.shape[1:]),
            "simulated_seconds": dict(bl3.clock.by_kind),
        }
        # -- the adaptive experiment: the agent against raster ------------------------------
        if adaptive:
            from .experiment import particle_diameters_um, run_adaptive_comparison
            from .figures import plot_adaptive_comparison, plot_particle_sizes

            log("adaptive experiment (live reconstruction, segmentation, agent) ...")
            adaptive_size = 128 if size is None else max(96, min(size, 192))
            outcomes = run_adaptive_comparison(
                catalog, size=adaptive_size, seed=300 + seed, log=log, progress=True
            )
            phantom = make_phantom("P-sparse", 300 + seed, size=adaptive_size)
            summary["figures"].append(
                str(plot_adaptive_comparison(outcomes, phantom, figures / "adaptive_vs_raster.png"))
            )
            diameters = particle_diameters_um(outcomes, phantom)
            title = f"{phantom.name} seed {phantom.seed}: particle sizes over the scanned region"
            summary["figures"].append(
                str(plot_particle_sizes(diameters, figures / "particle_sizes.png", title=title))
            )
            raster_curve = outcomes["raster"].fair_curve
            summary["runs"]["adaptive"] = {
                name: {
                    "uid": o.raw_uid,
                    "exposures": o.exposures,
                    "simulated_seconds": round(o.simulated_seconds, 2),
                    # fair: the stored frames reconstructed offline with a fixed engine
                    "final_mean_iou": round(o.final_iou, 4),
                    "fair_iou_curve": [[n, round(v, 4)] for n, v in o.fair_curve],
                    # live: the segmentation snapshots taken during the scan
                    "live_final_mean_iou": round(o.live_final_iou, 4),
                    "iou_curve": [[n, round(v, 4)] for n, v in o.curve],
                }
                for name, o in outcomes.items()
            }
            summary["runs"]["adaptive"]["particles"] = {
                name.replace(" ", "_"): _size_summary(d) for name, d in diameters.items()
            }
            agent = outcomes["agent"]
            raster_at_budget = [v for n, v in raster_curve if n <= agent.exposures]
            summary["runs"]["adaptive"]["raster_iou_at_agent_budget"] = (
                round(raster_at_budget[-1], 4) if raster_at_budget else None
            )
    summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"\nruns stored in the embedded Tiled catalog at {out / 'catalog'}")
    for kind, info in summary["runs"].items():
        if "uid" in info:
            log(f"  {kind:13s} uid {info['uid']}")
    for name, info in summary["runs"].get("adaptive", {}).items():
        if isinstance(info, dict) and "uid" in info:
            log(
                f"  adaptive/{name:7s} uid {info['uid']}: {info['exposures']} exposures, "
                f"final mean IoU {info['final_mean_iou']}"
            )
    log(
        "open them with:\n"
        "  from synaps_agent.catalog import open_catalog\n"
        f"  catalog = open_catalog({str(out / 'catalog')!r})\n"
        f"  run = catalog.raw[{summary['runs']['ptychography']['uid']!r}]\n"
        "  frames = run['primary']['ptycho_det_image'].read()\n"
        "  catalog.close()"
    )
    log(f"figures in {figures}; summary in {out / 'summary.json'}")
    return summary


def _size_summary(diameters_um) -> dict:
    """Count and median equivalent diameter (um) of a set of particles."""
    d = np.asarray(diameters_um, dtype=float)
    median = round(float(np.median(d)), 4) if d.size else None
    return {"count": int(d.size), "median_diameter_um": median}
