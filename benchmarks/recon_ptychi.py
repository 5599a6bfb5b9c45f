"""Side by side with pty-chi: time per epoch and final phase error on the same data.

The frames, positions and initial probe are those of ``recon_ptycho`` (its ``simulate``:
simulated detector, Poisson noise at the standard fluence, snake raster with +-1 px
known jitter, flat-phase Gaussian probe guess 1.2 x too wide) for P-sparse and P-dense.
They go to an ``.npz`` that ``_ptychi_driver.py`` reconstructs with pty-chi, run by the
interpreter of pty-chi's own environment (``--ptychi-python``, default ``$PTYCHI_PYTHON``)
in a subprocess; our ``PtychoEngine`` reconstructs the same data in this process. Both
run the same algorithm family (LSQ-ML by default; ``--algorithms lsqml rpie``), the same
number of epochs and batch size, on the CPU with the same number of torch threads, each
with its own default step sizes, and both refine the probe (positions fixed).

Reported per case and algorithm: seconds per epoch (mean over the epochs, setup
excluded, both timed the same way: one epoch per call), the ratio pty-chi / ours (above
1: ours is faster), and the phase error of both objects against the phantom with the
same code (``metrics.complex_errors`` on one mask: the pixels our engine lit above 10 %
of the peak, eroded 2 px), plus the overlap of each refined probe with the true probe.

Without a pty-chi interpreter the benchmark prints that it is skipped, and why, and
returns (exit status 0). Not run in CI. ``scripts/setup_ptychi_env.sh`` builds the
pty-chi environment (default ``/work/ptychi-venv``).
Run ``python -m benchmarks.recon_ptychi --ptychi-python /path/to/venv/bin/python``
(``--smoke`` for tiny sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import recon_ptycho
from benchmarks._common import (
    base_parser,
    print_table,
    progress,
    results_dir,
    torch_threads,
    write_result,
)
from benchmarks._ptychi_driver import ALGORITHMS as DRIVER_ALGORITHMS
from benchmarks._ptychi_driver import write_problem
from synaps_agent.callbacks.ptycho import place_in_frame
from synaps_agent.metrics import align_complex, complex_errors

NAME = "recon_ptychi"
CASES = recon_ptycho.CASES
DRIVER = Path(__file__).resolve().with_name("_ptychi_driver.py")
SEEDS = {**recon_ptycho.SEEDS, "ptychi": 0}
#: Object margin (pixels) around the phantom in pty-chi's object buffer.
PTYCHI_MARGIN = 4
SUBPROCESS_TIMEOUT_S = 4 * 3600


def ptychi_interpreter(path: str | None) -> tuple[str | None, str]:
    """The pty-chi interpreter to use, or ``None`` and the reason it cannot be used.

    ``path`` (or ``$PTYCHI_PYTHON`` when ``path`` is ``None``) must be an executable that
    can import pty-chi and torch (``_ptychi_driver.py --check``).
    """
    path = path if path is not None else os.environ.get("PTYCHI_PYTHON")
    if not path:
        return None, "no pty-chi interpreter given (--ptychi-python or $PTYCHI_PYTHON)"
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        return None, f"pty-chi interpreter {path!r} is not an executable file"
    try:
        done = subprocess.run(
            [path, str(DRIVER), "--check"], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"pty-chi interpreter {path!r} could not be run: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        return None, f"pty-chi cannot be imported by {path!r}: {last}"
    return path, done.stdout.strip()


def run_ptychi(
    python: str, data: dict[str, Any], p: dict[str, Any], algorithm: str, workdir: Path
) -> dict[str, Any]:
    """Reconstruct ``data`` with pty-chi in a subprocess; its result arrays and metadata."""
    problem = write_problem(
        workdir / f"problem_{algorithm}.npz",
        data["frames"],
        data["positions"],
        data["probe_guess"],
        data["truth"].shape,
        algorithm=algorithm,
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        torch_threads=p["torch_threads"],
        seed=SEEDS["ptychi"],
        margin=PTYCHI_MARGIN,
    )
    result = workdir / f"result_{algorithm}.npz"
    done = subprocess.run(
        [python, str(DRIVER), str(problem), str(result)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=workdir,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pty-chi driver failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with np.load(result) as out:
        record = {key: out[key] for key in out.files if key != "meta"}
        record.update(json.loads(str(out["meta"])))
    return record


def run_ours(data: dict[str, Any], p: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """Reconstruct ``data`` with ``PtychoEngine``, one timed epoch per call."""
    engine = recon_ptycho._engine(data, p, algorithm)
    engine.add_frames(data["frames"], data["positions"])
    epoch_seconds = []
    for _ in range(int(p["epochs"])):
        t0 = time.perf_counter()
        engine.run_epochs(1)
        epoch_seconds.append(time.perf_counter() - t0)
    snap = engine.snapshot()
    return {
        "snapshot": snap,
        "object": snap.object,
        "origin": snap.origin,
        "probe": snap.probe,
        "epoch_seconds": np.asarray(epoch_seconds),
    }


def errors_on_mask(
    obj: np.ndarray, origin: np.ndarray, truth: np.ndarray, mask: np.ndarray
) -> dict[str, Any]:
    """``complex_errors`` of ``obj`` (index 0 at caller pixel ``origin``) on ``mask``.

    Also returns the object on the phantom's grid aligned to the truth (``aligned``).
    """
    rec = place_in_frame(obj, origin, (0, 0), truth.shape, fill=1.0)
    errors = complex_errors(rec, truth, mask=mask)
    errors["aligned"] = align_complex(rec, truth, mask=mask)
    return errors


def probe_overlap(probe: np.ndarray, truth: np.ndarray) -> float:
    """``|<probe, truth>| / (|probe| |truth|)`` (1 for the true probe up to a phase)."""
    return float(abs(np.vdot(probe, truth)) / (np.linalg.norm(probe) * np.linalg.norm(truth)))


def compare(
    python: str, data: dict[str, Any], p: dict[str, Any], algorithm: str, workdir: Path
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Both engines on ``data``: figures, and the aligned phase images for the figure."""
    with torch_threads(p["torch_threads"]):
        ours = run_ours(data, p, algorithm)
    theirs = run_ptychi(python, data, p, algorithm, workdir)
    mask = recon_ptycho.phase_error(ours["snapshot"], data["truth"])["mask"]
    figures: dict[str, Any] = {"n_pixels": int(mask.sum())}
    images: dict[str, np.ndarray] = {"mask": mask}
    for label, run in (("ours", ours), ("ptychi", theirs)):
        errors = errors_on_mask(run["object"], run["origin"], data["truth"], mask)
        images[label] = errors.pop("aligned")
        seconds = np.asarray(run["epoch_seconds"], dtype=float)
        figures[label] = {
            "seconds_per_epoch": float(seconds.mean()),
            "median_seconds_per_epoch": float(np.median(seconds)),
            "epoch_seconds": seconds.tolist(),
            "phase_rmse": errors["phase_rmse"],
            "amplitude_rmse": errors["amplitude_rmse"],
            "complex_nrmse": errors["complex_nrmse"],
            "probe_overlap_with_truth": probe_overlap(run["probe"], data["true_probe"]),
        }
    figures["ptychi"]["setup_seconds"] = theirs["setup_seconds"]
    figures["ptychi"]["torch_threads"] = theirs["torch_threads"]
    figures["time_per_epoch_ratio_ptychi_over_ours"] = (
        figures["ptychi"]["seconds_per_epoch"] / figures["ours"]["seconds_per_epoch"]
    )
    figures["phase_error_ratio_ours_over_ptychi"] = (
        figures["ours"]["phase_rmse"] / figures["ptychi"]["phase_rmse"]
    )
    return figures, images


def plot(figures: dict[str, Any], images: dict[str, Any], path: Path) -> Path:
    """Per case and algorithm: truth phase, our phase, pty-chi's phase (same grey scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(images)
    grey = matplotlib.colormaps["gray"].with_extremes(bad="lightsteelblue")  # not evaluated
    fig, grid = plt.subplots(len(keys), 3, figsize=(13, 4.3 * len(keys)), squeeze=False)
    for row, key in zip(grid, keys, strict=True):
        case, algorithm = key
        shown = images[key]
        result = figures["cases"][case][algorithm]
        phase_t = np.angle(shown["truth"])
        vmin, vmax = np.percentile(phase_t[shown["mask"]], [1, 99])
        row[0].imshow(np.where(shown["mask"], phase_t, np.nan), cmap=grey, vmin=vmin, vmax=vmax)
        row[0].set_title(f"{case} truth phase (evaluated pixels)")
        for ax, label, title in ((row[1], "ours", "ours"), (row[2], "ptychi", "pty-chi")):
            phase = np.where(shown["mask"], np.angle(shown[label]), np.nan)
            ax.imshow(phase, cmap=grey, vmin=vmin, vmax=vmax)
            r = result[label]
            ax.set_title(
                f"{title} {algorithm}: {r['phase_rmse']:.3f} rad, "
                f"{r['seconds_per_epoch']:.2f} s/epoch"
            )
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _parser() -> Any:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--ptychi-python",
        default=None,
        help="python of the environment with pty-chi (default: $PTYCHI_PYTHON)",
    )
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["lsqml"],
        choices=[a for a in recon_ptycho.ALGORITHMS if a in DRIVER_ALGORITHMS],
        help="algorithms to compare (default: lsqml)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison (or skip it without pty-chi); print, write JSON and PNG."""
    args = _parser().parse_args(argv)
    python, info = ptychi_interpreter(args.ptychi_python)
    if python is None:
        print(f"{NAME} skipped: {info}")
        return {"skipped": True, "reason": info}
    p = {**recon_ptycho._params(args.smoke), "algorithms": list(args.algorithms)}
    figures: dict[str, Any] = {"ptychi_environment": json.loads(info), "cases": {}}
    images: dict[tuple[str, str], Any] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            frames_dir = Path(tmp) / case
            frames_dir.mkdir()
            data = recon_ptycho.simulate(case, p, frames_dir, args.quiet)
            result: dict[str, Any] = {"frames": len(data["frames"])}
            for algorithm in progress(p["algorithms"], f"{case}: compare", disable=args.quiet):
                result[algorithm], shown = compare(python, data, p, algorithm, frames_dir)
                images[(case, algorithm)] = {**shown, "truth": data["truth"]}
            figures["cases"][case] = result
    figures["wall_seconds"] = time.perf_counter() - t_start
    png = plot(figures, images, results_dir(args.out) / f"{NAME}.png")
    figures["figure"] = png.name

    rows = []
    for case, result in figures["cases"].items():
        for algorithm in p["algorithms"]:
            r = result[algorithm]
            rows.append(
                [
                    f"{case} {algorithm}",
                    result["frames"],
                    r["ours"]["seconds_per_epoch"],
                    r["ptychi"]["seconds_per_epoch"],
                    r["time_per_epoch_ratio_ptychi_over_ours"],
                    r["ours"]["phase_rmse"],
                    r["ptychi"]["phase_rmse"],
                    r["ours"]["probe_overlap_with_truth"],
                    r["ptychi"]["probe_overlap_with_truth"],
                ]
            )
    print_table(
        f"Ours vs pty-chi {figures['ptychi_environment']['ptychi_version']}: "
        f"{p['size']}^2 object, {p['frame_size']}^2 frames, {p['photons_per_frame']:.0e} "
        f"photons/frame, {p['epochs']} epochs, batch {p['batch_size']}, "
        f"{p['torch_threads']} torch thread(s), CPU",
        rows,
        [
            "case / algorithm",
            "frames",
            "s/epoch ours",
            "s/epoch pty-chi",
            "pty-chi / ours",
            "phase RMSE ours",
            "phase RMSE pty-chi",
            "probe overlap ours",
            "probe overlap pty-chi",
        ],
    )
    notes = [
        "Same frames, positions, initial probe, epochs, batch size and torch threads for "
        "both; each engine with its own default step sizes; probe refined, positions fixed.",
        "Seconds per epoch: mean over all epochs (one epoch per call, setup excluded); "
        "2 CPU cores shared with other processes while measuring.",
        "Phase error: metrics.complex_errors of both objects on the same mask (pixels our "
        "engine lit above 10 % of the peak, eroded 2 px), after alignment to the phantom.",
        "pty-chi runs in its own environment; torchvision (CUDA-only wheels for torch "
        "2.13) is replaced by a module whose GaussianBlur raises if used (pty-chi uses it "
        "only for random initial objects, not used here).",
    ]
    command = " ".join(["python -m benchmarks.recon_ptychi", *(argv or sys.argv[1:])])
    path = write_result(NAME, figures, SEEDS, p, out=args.out, command=command, notes=notes)
    print(f"wrote {path} and {png}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
