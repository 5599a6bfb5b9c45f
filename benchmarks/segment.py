"""Segmentation and characterization of converged ptychographic reconstructions.

For each case (``P-sparse`` and ``P-dense``, test seeds 300+ that training never saw,
see :mod:`synaps_agent.segment.train`) a full raster scan of the 384 x 384 phantom is
simulated and reconstructed by our engine exactly as the training data are made
(:func:`synaps_agent.segment.train.simulate_scan`: 32 x 32 frames, Gaussian probe
FWHM 9 px, step 3 px with +-1 px jitter, Poisson noise, 20 rPIE epochs). The
reconstructions are cached (``--cache``, default ``/tmp/synaps_segment_bench``) so
reruns only segment.

Two segmenters are scored on the measured pixels (coverage >= 10 % of its maximum):

* the shipped U-Net (:func:`~synaps_agent.segment.unet.load_default_segmenter`, 8
  MC-dropout samples, temperature-scaled);
* the random-forest baseline (:class:`~synaps_agent.segment.forest.ForestSegmenter` on
  multiscale features), trained here on converged reconstructions of training seeds
  (native scale crops), images in the frame of
  :func:`~synaps_agent.callbacks.segmentation.normalize_reconstruction`.

Figures per case and model: per-phase IoU and mean IoU, boundary F1 (2 px), ECE,
AUROC of the uncertainty for wrong pixels; particle count and median equivalent
diameter (:func:`~synaps_agent.callbacks.segmentation.measured_summary` of the
segmentation) against the phantom's true particle instances in the same box. Speed:
time and megapixels/s of one 384 x 384 snapshot with uncertainty on 2 torch threads
(median of repeats), U-Net and forest. ``segment.png``: image, truth, segmentation,
uncertainty and errors per case, and the size distributions against ground truth.

Run ``python -m benchmarks.segment`` (``--smoke`` for CI sizes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    base_parser,
    print_table,
    progress,
    results_dir,
    torch_threads,
    write_result,
)
from synaps_agent.callbacks.segmentation import measured_summary, normalize_reconstruction
from synaps_agent.segment import scoring
from synaps_agent.segment.base import ProbabilisticSegmenter, SegmentationResult
from synaps_agent.segment.forest import ForestSegmenter
from synaps_agent.segment.train import FAMILIES, PIXEL_M, simulate_scan
from synaps_agent.segment.unet import load_default_segmenter, load_segmenter
from synaps_agent.sim_devices.phantoms import make_phantom

NAME = "segment"
PHASES = ("pore", "carbon_binder", "active", "secondary")
MEASURED = 0.1
MIN_PARTICLE_PX = 20  # particle_instances' default min_size, applied to the truth too
DEFAULT_CACHE = Path("/tmp/synaps_segment_bench")
TARGETS = {
    "mean_iou_min": 0.85,
    "ece_max": 0.05,
    "uncertainty_auroc_min": 0.85,
    "count_error_max": 0.05,
    "median_diameter_error_max": 0.10,
    "snapshot_seconds_max": 1.0,
}


def _params(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "smoke": True,
            "size": 64,
            "test_seeds": [300],
            "families": list(FAMILIES),
            "fluence": 1e5,
            "epochs": 4,
            "forest_seeds": [100],
            "forest_crop": 48,
            "forest_estimators": 10,
            "forest_pixels_per_image": 2000,
            "timing_size": 64,
            "timing_repeats": 1,
            "torch_threads": 2,
        }
    return {
        "smoke": False,
        "size": 384,
        "test_seeds": [300, 301],
        "families": list(FAMILIES),
        "fluence": 1e5,
        "epochs": 20,
        "forest_seeds": [100, 101, 102, 103],
        "forest_crop": 128,
        "forest_estimators": 50,
        "forest_pixels_per_image": 20000,
        "timing_size": 384,
        "timing_repeats": 5,
        "torch_threads": 2,
    }


# --------------------------------------------------------------------------- data


def reconstruction(
    family: str, seed: int, *, size: int, epochs: int, fluence: float, cache: Path | None
) -> dict[str, np.ndarray]:
    """A converged full-raster reconstruction of ``make_phantom(family, seed, size=size)``.

    Returns ``image`` (complex64), ``coverage`` and ``labels``, read from ``cache`` when a
    previous run stored them.
    """
    path = None
    if cache is not None:
        path = cache / f"{family}_{seed}_{size}_{epochs}ep_{fluence:.0e}.npz"
        if path.exists():
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
    with torch_threads(1):  # the engine's small batches: 2 threads only spin on a busy box
        (rec,) = simulate_scan(
            family,
            seed,
            crop=size,
            epochs=(epochs,),
            fluence=fluence,
            partial="full",
            native_scale=False,
            fwhm_px=9.0,
            beta_probe=0.0,
        )
    out = {
        "image": rec["image"],
        "coverage": rec["coverage"],
        "labels": rec["labels"],
        "error": np.array(rec["error"]),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **out)
    return out


def train_forest(p: dict[str, Any], cache: Path | None, quiet: bool) -> ProbabilisticSegmenter:
    """The random-forest baseline, trained on converged reconstructions of training seeds."""
    images, labels = [], []
    jobs = [(f, s) for s in p["forest_seeds"] for f in p["families"]]
    for family, seed in progress(jobs, "forest training scans", disable=quiet):
        path = None if cache is None else cache / f"train_{family}_{seed}_{p['forest_crop']}.npz"
        if path is not None and path.exists():
            with np.load(path) as f:
                rec = {k: f[k] for k in f.files}
        else:
            with torch_threads(1):
                (rec,) = simulate_scan(
                    family,
                    seed,
                    crop=p["forest_crop"],
                    epochs=(p["epochs"],),
                    fluence=p["fluence"],
                    partial="full",
                    native_scale=not p["smoke"],
                    fwhm_px=9.0,
                    beta_probe=0.0,
                )
            rec = {k: rec[k] for k in ("image", "coverage", "labels")}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, **rec)
        cov = rec["coverage"]
        well = cov >= 0.5 * cov.max()  # train on the well-measured interior only
        rows, cols = np.flatnonzero(well.any(axis=1)), np.flatnonzero(well.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        images.append(normalize_reconstruction(rec["image"], cov)[box])
        labels.append(rec["labels"][box].astype(np.int64))
    forest = ForestSegmenter(n_estimators=p["forest_estimators"], n_jobs=p["torch_threads"])
    forest.fit(images, labels, max_pixels_per_image=p["forest_pixels_per_image"], seed=0)
    return ProbabilisticSegmenter(forest)


def segment_with(model: str, segmenter: Any, image: np.ndarray, coverage: np.ndarray):
    """Segment with the U-Net (raw reconstruction) or the forest (normalized frame)."""
    if model == "forest":
        image = normalize_reconstruction(image, coverage)
    return segmenter.segment(image, coverage)


# --------------------------------------------------------------------------- scoring


def true_diameters(instances: np.ndarray, box: tuple[slice, ...], measured: np.ndarray):
    """Equivalent diameters (px) of the phantom's particles inside the measured box."""
    inst = np.where(measured[box], instances[box], 0)
    _, sizes = np.unique(inst[inst > 0], return_counts=True)
    sizes = sizes[sizes >= MIN_PARTICLE_PX]
    return 2.0 * np.sqrt(sizes / np.pi)


def score(
    result: SegmentationResult, truth: np.ndarray, measured: np.ndarray, instances: np.ndarray
) -> dict[str, Any]:
    """Segmentation quality, calibration and characterization against ground truth."""
    pred = result.labels.astype(np.int64)
    truth = truth.astype(np.int64)
    iou = scoring.per_class_iou(pred, truth, 4, measured)
    summary, box = measured_summary(result.labels, measured, PIXEL_M)
    pred_d = summary["table"]["equivalent_diameter_px"].to_numpy(float)
    true_d = true_diameters(instances, box, measured)
    count_err = (len(pred_d) - len(true_d)) / max(len(true_d), 1)
    med_pred = float(np.median(pred_d)) if len(pred_d) else float("nan")
    med_true = float(np.median(true_d)) if len(true_d) else float("nan")
    return {
        "mean_iou": float(np.nanmean(iou)),
        "per_class_iou": {name: float(v) for name, v in zip(PHASES, iou, strict=True)},
        "boundary_f1": float(scoring.boundary_f1(pred, truth, 2, measured)),
        "pixel_accuracy": float((pred == truth)[measured].mean()),
        "ece": float(
            scoring.expected_calibration_error(result.probabilities, truth, mask=measured)
        ),
        "uncertainty_auroc": float(
            scoring.uncertainty_auroc(result.uncertainty, pred, truth, measured)
        ),
        "count": int(len(pred_d)),
        "count_truth": int(len(true_d)),
        "count_error": float(count_err),
        "median_diameter_px": med_pred,
        "median_diameter_px_truth": med_true,
        "median_diameter_error": float((med_pred - med_true) / med_true),
        "diameters_px": pred_d.round(2).tolist(),
        "diameters_px_truth": true_d.round(2).tolist(),
        "phase_fractions": summary["phase_fractions"],
    }


def time_snapshot(segmenter: Any, model: str, image, coverage, repeats: int) -> dict[str, float]:
    """Median wall time of one segmentation with uncertainty (after a warm-up)."""
    segment_with(model, segmenter, image, coverage)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        segment_with(model, segmenter, image, coverage)
        seconds.append(time.perf_counter() - t0)
    t = float(np.median(seconds))
    return {"seconds": t, "megapixels_per_s": image.size / 1e6 / t, "repeats": repeats}


# --------------------------------------------------------------------------- figure


def plot(cases: list[dict[str, Any]], path: Path) -> Path:
    """Image, truth, U-Net segmentation, uncertainty, errors; size distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    phase_cmap = ListedColormap(["#f7f7f7", "#7fbf7b", "#2166ac", "#d6604d"])
    ncol = 6
    fig, axes = plt.subplots(len(cases), ncol, figsize=(3.1 * ncol, 3.1 * len(cases)))
    axes = np.atleast_2d(axes)
    for row, case in zip(axes, cases, strict=True):
        res, truth = case["unet_result"], case["truth"]
        measured = case["measured"]
        panels = [
            (np.angle(normalize_reconstruction(case["image"], case["coverage"])), "gray",
             f"{case['name']}: phase"),
            (truth, phase_cmap, "truth"),
            (res.labels, phase_cmap, f"U-Net (mIoU {case['unet']['mean_iou']:.3f})"),
            (res.uncertainty, "magma", "uncertainty"),
            (np.where(measured, res.labels != truth, 0.5), "Reds", "wrong pixels"),
        ]  # fmt: skip
        for ax, (img, cmap, title) in zip(row, panels, strict=False):
            kw = {"vmin": 0, "vmax": 3} if cmap is phase_cmap else {}
            ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
        ax = row[-1]
        truth_d = np.asarray(case["unet"]["diameters_px_truth"])
        top = max([1.0, *truth_d, *case["unet"]["diameters_px"], *case["forest"]["diameters_px"]])
        bins = np.linspace(0, top, 21)
        ax.hist(truth_d, bins, histtype="stepfilled", color="0.8", label="truth")
        ax.hist(case["unet"]["diameters_px"], bins, histtype="step", lw=2, label="U-Net")
        ax.hist(case["forest"]["diameters_px"], bins, histtype="step", ls="--", label="forest")
        ax.set_xlabel("equivalent diameter (px)", fontsize=8)
        ax.set_ylabel("particles", fontsize=8)
        ax.set_title("size distribution", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"folder of cached reconstructions (default {DEFAULT_CACHE}; 'none' disables)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="U-Net weights to score instead of the shipped ones (a .json beside them)",
    )
    parser.add_argument(
        "--test-seeds",
        type=int,
        nargs="+",
        default=None,
        help="phantom seeds to score (>= 300; default 300 301, smoke 300)",
    )
    args = parser.parse_args(argv)
    p = _params(args.smoke)
    if args.test_seeds:
        if min(args.test_seeds) < 300:
            parser.error("test seeds must be >= 300 (100-299 are training and validation)")
        p["test_seeds"] = list(args.test_seeds)
    cache = None if str(args.cache).lower() == "none" else args.cache
    if cache is not None and args.smoke:
        cache = cache / "smoke"
    t_start = time.perf_counter()
    seeds = {"mc_dropout": 0, "forest": 0}
    for i, s in enumerate(p["test_seeds"]):
        seeds[f"test_{i}"] = int(s)
    for i, s in enumerate(p["forest_seeds"]):
        seeds[f"forest_train_{i}"] = int(s)

    with torch_threads(p["torch_threads"]):
        unet = load_default_segmenter() if args.weights is None else load_segmenter(args.weights)
        forest = train_forest(p, cache, args.quiet)
        cases: list[dict[str, Any]] = []
        jobs = [(f, s) for f in p["families"] for s in p["test_seeds"]]
        for family, seed in progress(jobs, "cases", disable=args.quiet):
            rec = reconstruction(
                family, seed, size=p["size"], epochs=p["epochs"], fluence=p["fluence"], cache=cache
            )
            phantom = make_phantom(family, seed, size=p["size"])
            if not np.array_equal(phantom.labels, rec["labels"]):
                raise RuntimeError(f"{family} seed {seed}: reconstruction is of another phantom")
            cov = rec["coverage"]
            measured = cov >= MEASURED * cov.max()
            case = {
                "name": f"{family} {seed}",
                "family": family,
                "seed": seed,
                "image": rec["image"],
                "coverage": cov,
                "truth": rec["labels"],
                "measured": measured,
                "recon_error": float(rec["error"]),
                "measured_fraction": float(measured.mean()),
            }
            for model, seg in (("unet", unet), ("forest", forest)):
                res = segment_with(model, seg, rec["image"], cov)
                case[model] = score(res, rec["labels"], measured, phantom.instances)
                case[f"{model}_result"] = res
            cases.append(case)

        # speed: one snapshot of timing_size^2 (the first case's reconstruction, cropped)
        n = p["timing_size"]
        img, cov = cases[0]["image"][:n, :n], cases[0]["coverage"][:n, :n]
        speed = {
            "unet": time_snapshot(unet, "unet", img, cov, p["timing_repeats"]),
            "forest": time_snapshot(forest, "forest", img, cov, p["timing_repeats"]),
            "unet_mc_samples": unet.mc_samples,
            "size": [int(img.shape[0]), int(img.shape[1])],
        }
        speed["forest_over_unet_time"] = speed["forest"]["seconds"] / speed["unet"]["seconds"]

    def mean_of(model: str, key: str) -> float:
        return float(np.mean([c[model][key] for c in cases]))

    def mean_abs(model: str, key: str) -> float:
        return float(np.mean([abs(c[model][key]) for c in cases]))

    overall = {
        model: {
            "mean_iou": mean_of(model, "mean_iou"),
            "per_class_iou": {
                ph: float(np.mean([c[model]["per_class_iou"][ph] for c in cases])) for ph in PHASES
            },
            "boundary_f1": mean_of(model, "boundary_f1"),
            "ece": mean_of(model, "ece"),
            "uncertainty_auroc": mean_of(model, "uncertainty_auroc"),
            "abs_count_error": mean_abs(model, "count_error"),
            "abs_median_diameter_error": mean_abs(model, "median_diameter_error"),
        }
        for model in ("unet", "forest")
    }
    u = overall["unet"]
    targets_met = {
        "mean_iou": u["mean_iou"] >= TARGETS["mean_iou_min"],
        "ece": u["ece"] <= TARGETS["ece_max"],
        "uncertainty_auroc": u["uncertainty_auroc"] >= TARGETS["uncertainty_auroc_min"],
        "beats_forest_on_iou": u["mean_iou"] > overall["forest"]["mean_iou"],
        "count": all(abs(c["unet"]["count_error"]) <= TARGETS["count_error_max"] for c in cases),
        "median_diameter": all(
            abs(c["unet"]["median_diameter_error"]) <= TARGETS["median_diameter_error_max"]
            for c in cases
        ),
        "snapshot_seconds": speed["unet"]["seconds"] <= TARGETS["snapshot_seconds_max"],
    }
    figures: dict[str, Any] = {
        "overall": overall,
        "cases": [
            {
                k: case[k]
                for k in (
                    "name", "family", "seed", "recon_error", "measured_fraction", "unet", "forest"
                )
            }
            for case in cases
        ],  # fmt: skip
        "speed": speed,
        "targets": TARGETS,
        "targets_met": targets_met,
        "unet_weights": {
            "file": "shipped" if args.weights is None else str(args.weights),
            "temperature": unet.temperature,
            "num_parameters": unet.metadata.get("training", {}).get("num_parameters"),
            "training_steps": unet.metadata.get("training", {}).get("steps"),
        },
    }
    png = plot(cases, results_dir(args.out) / f"{NAME}.png")
    figures["figure"] = png.name
    figures["wall_seconds"] = time.perf_counter() - t_start

    rows = []
    for case in cases:
        for model in ("unet", "forest"):
            r = case[model]
            rows.append(
                [
                    case["name"], model, r["mean_iou"],
                    *(r["per_class_iou"][ph] for ph in PHASES),
                    r["boundary_f1"], r["ece"], r["uncertainty_auroc"],
                    f"{r['count']}/{r['count_truth']}", f"{100 * r['count_error']:+.1f}%",
                    f"{100 * r['median_diameter_error']:+.1f}%",
                ]
            )  # fmt: skip
    print_table(
        f"Segmentation of converged reconstructions ({p['size']}x{p['size']}, "
        f"{p['fluence']:.0e} photons/frame, {p['epochs']} epochs; measured pixels)",
        rows,
        ["case", "model", "mIoU", "pore", "binder", "active", "second.", "BF1", "ECE",
         "AUROC", "count", "count err", "median d err"],
    )  # fmt: skip
    print_table(
        f"One {n}x{n} snapshot with uncertainty, {p['torch_threads']} torch threads",
        [
            [f"U-Net ({unet.mc_samples} MC samples)", speed["unet"]["seconds"],
             speed["unet"]["megapixels_per_s"]],
            ["random forest", speed["forest"]["seconds"], speed["forest"]["megapixels_per_s"]],
        ],
        ["model", "seconds", "Mpx/s"],
    )  # fmt: skip
    print("targets met:", ", ".join(f"{k}={v}" for k, v in targets_met.items()))
    notes = [
        "Test seeds 300+ are outside the U-Net's training (100-199) and validation "
        "(200-219) seeds; the forest is trained on training seeds only.",
        "Scores over the measured pixels (coverage >= 10 % of its maximum); particles are "
        "split inside the measured box (unmeasured pixels as pore) and compared with the "
        f"phantom's instances in the same box (>= {MIN_PARTICLE_PX} px).",
        "2 CPU cores shared with other developers while measuring: timings are noisy.",
    ]
    path = write_result(NAME, figures, seeds, p, out=args.out, notes=notes)
    print(f"wrote {path} and {png}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
