"""Streaming tomography: FBP speed and error as golden-angle projections arrive, and SIRT.

The T-electrode phantom's X-ray attenuation per voxel at 25 keV
(``mu = 4 pi beta / lambda * voxel``) is projected with ``project_volume`` at golden-angle
order over 180 degrees; counts are ``Poisson(I0 exp(-p))`` with ``I0`` photons per pixel,
normalised with the known flat (``I0``, no dark) by ``normalize_projection``.

* ``StreamingFBP.add()``: slices per second (one projection filtered and backprojected
  into all ``nz`` slices), and ``volume()`` (angle-gap weighting) at checkpoints.
* Relative error ``||rec - mu|| / ||mu||`` inside the cylinder seen at every angle, vs the
  number of angles received, for FBP (whole volume) and, at a few checkpoints, for SIRT
  warm-started from FBP on a slab of central slices (FBP on the same slab for reference).
* ``recon_tomo.png``: error vs angles and the central slice (truth, FBP, SIRT).

Run ``python -m benchmarks.recon_tomo`` (``--smoke`` for CI sizes).
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
from synaps_agent.plans.patterns import golden_angles
from synaps_agent.recon.tomo import StreamingFBP, normalize_projection, sirt
from synaps_agent.sim_devices.optics import poisson_counts, project_volume, wavelength
from synaps_agent.sim_devices.phantoms import make_phantom

NAME = "recon_tomo"
SEEDS = {"phantom": 0, "noise": 0}
ENERGY_EV = 25000.0


def _params(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "smoke": True,
            "size": 32,
            "num_angles": 60,
            "photons_per_pixel": 1e4,
            "checkpoints": [4, 8, 15, 30, 60],
            "sirt_checkpoints": [8, 30],
            "sirt_iterations": 10,
            "sirt_slab": 8,
            "torch_threads": 1,
        }
    return {
        "smoke": False,
        "size": 128,
        "num_angles": 360,
        "photons_per_pixel": 1e4,
        "checkpoints": [8, 16, 32, 64, 96, 128, 180, 256, 360],
        "sirt_checkpoints": [16, 45, 120, 360],
        "sirt_iterations": 10,
        "sirt_slab": 16,
        "torch_threads": 1,
    }


def attenuation_volume(size: int) -> np.ndarray:
    """T-electrode X-ray attenuation per voxel (dimensionless ``mu * voxel``) at 25 keV."""
    phantom = make_phantom("T-electrode", SEEDS["phantom"], size=size)
    _, beta = phantom.refractive_index(ENERGY_EV)
    mu = 4.0 * np.pi * beta / wavelength(ENERGY_EV) * phantom.voxel_size
    return mu.astype(np.float32)


def cylinder_mask(nz: int, nx: int, margin: float = 2.0) -> np.ndarray:
    """Voxels inside the cylinder of diameter ``nx - 2 margin`` around the rotation axis."""
    off = np.arange(nx) - (nx - 1) / 2.0
    disc = off[:, None] ** 2 + off[None, :] ** 2 <= (nx / 2.0 - margin) ** 2
    return np.broadcast_to(disc, (nz, nx, nx))


def rel_error(rec: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """``||rec - truth|| / ||truth||`` on ``mask``."""
    return float(np.linalg.norm(rec[mask] - truth[mask]) / np.linalg.norm(truth[mask]))


def plot(figures: dict[str, Any], images: dict[str, np.ndarray], path: Path) -> Path:
    """Error vs angles received, and the central slice: truth, FBP, SIRT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    fbp = figures["fbp_curve"]
    axes[0].plot(
        [c["angles"] for c in fbp], [c["rel_error"] for c in fbp], "o-", label="FBP, volume"
    )
    s = figures["sirt_curve"]
    axes[0].plot(
        [c["angles"] for c in s], [c["fbp_rel_error_slab"] for c in s], "s--", label="FBP, slab"
    )
    axes[0].plot(
        [c["angles"] for c in s],
        [c["sirt_rel_error_slab"] for c in s],
        "^-",
        label=f"SIRT x{figures['sirt_iterations']} from FBP, slab",
    )
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="golden-angle projections received",
        ylabel="relative error in the cylinder",
        title="streaming reconstruction",
    )
    axes[0].legend(fontsize=8)
    vmin, vmax = np.percentile(images["truth"], [1, 99.5])
    for ax, key in zip(axes[1:], ("truth", "fbp", "sirt"), strict=True):
        ax.imshow(images[key], cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(images[f"{key}_title"])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON and the PNG; return the record."""
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    p = _params(args.smoke)
    t_start = time.perf_counter()
    with torch_threads(p["torch_threads"]):
        mu = attenuation_volume(p["size"])
        nz, _, nx = mu.shape
        mask = cylinder_mask(nz, nx)
        angles = golden_angles(p["num_angles"])
        t0 = time.perf_counter()
        lines = project_volume(mu, angles)
        project_seconds = time.perf_counter() - t0
        rng = np.random.default_rng(SEEDS["noise"])
        i0 = float(p["photons_per_pixel"])
        counts = poisson_counts(i0 * np.exp(-lines), rng)
        projections = normalize_projection(counts, i0, 0.0)
        z0 = max(0, nz // 2 - p["sirt_slab"] // 2)
        slab = slice(z0, z0 + p["sirt_slab"])

        fbp = StreamingFBP((nz, nx))
        add_seconds = 0.0
        volume_seconds: list[float] = []
        fbp_curve: list[dict[str, Any]] = []
        sirt_curve: list[dict[str, Any]] = []
        images: dict[str, Any] = {}
        checkpoints = set(p["checkpoints"]) | set(p["sirt_checkpoints"])
        for i in progress(range(p["num_angles"]), "projections", disable=args.quiet):
            t0 = time.perf_counter()
            fbp.add(projections[i], angles[i])
            add_seconds += time.perf_counter() - t0
            n = i + 1
            if n not in checkpoints:
                continue
            t0 = time.perf_counter()
            vol = fbp.volume()
            dt = time.perf_counter() - t0
            volume_seconds.append(dt)
            fbp_curve.append(
                {
                    "angles": n,
                    "rel_error": rel_error(vol, mu, mask),
                    "volume_seconds": dt,
                    "volume_slices_per_s": nz / dt,
                }
            )
            if n in p["sirt_checkpoints"]:
                t0 = time.perf_counter()
                refined = sirt(
                    projections[:n, slab],
                    angles[:n],
                    num_iterations=p["sirt_iterations"],
                    x0=vol[slab],
                )
                dt = time.perf_counter() - t0
                fbp_err = rel_error(vol[slab], mu[slab], mask[slab])
                sirt_err = rel_error(refined, mu[slab], mask[slab])
                sirt_curve.append(
                    {
                        "angles": n,
                        "fbp_rel_error_slab": fbp_err,
                        "sirt_rel_error_slab": sirt_err,
                        "sirt_vs_fbp_error_ratio": sirt_err / fbp_err,
                        "sirt_seconds": dt,
                        "sirt_slice_iterations_per_s": p["sirt_slab"] * p["sirt_iterations"] / dt,
                    }
                )
                mid = nz // 2 - z0
                images["sirt"] = refined[mid]
                images["sirt_title"] = f"SIRT x{p['sirt_iterations']}, {n} angles"
                images["fbp"] = vol[nz // 2]
                images["fbp_title"] = f"FBP, {n} angles"
        images["truth"] = mu[nz // 2]
        images["truth_title"] = f"truth (slice {nz // 2})"

    n_total = p["num_angles"]
    figures: dict[str, Any] = {
        "volume_shape": [nz, nx, nx],
        "project_volume_seconds": project_seconds,
        "add_seconds_per_projection": add_seconds / n_total,
        "add_slices_per_s": nz * n_total / add_seconds,
        "add_projections_per_s": n_total / add_seconds,
        "volume_slices_per_s_median": float(nz / np.median(volume_seconds)),
        "volume_seconds_median": float(np.median(volume_seconds)),
        "fbp_curve": fbp_curve,
        "sirt_curve": sirt_curve,
        "sirt_iterations": p["sirt_iterations"],
        "sirt_slab": [slab.start, slab.stop],
        "final_fbp_rel_error": fbp_curve[-1]["rel_error"],
        "mean_transmission": float(np.exp(-lines).mean()),
    }
    figures["wall_seconds"] = time.perf_counter() - t_start
    png = plot(figures, images, results_dir(args.out) / f"{NAME}.png")
    figures["figure"] = png.name

    print_table(
        f"Streaming FBP speed, {nz}x{nx}x{nx} volume, 1 torch thread",
        [
            ["add(): slices/s", figures["add_slices_per_s"]],
            ["add(): projections/s", figures["add_projections_per_s"]],
            ["volume() (weighted): slices/s, median", figures["volume_slices_per_s_median"]],
            ["volume() seconds, median", figures["volume_seconds_median"]],
        ],
        ["operation", "value"],
    )
    sirt_by_n = {c["angles"]: c for c in sirt_curve}
    rows = []
    for c in fbp_curve:
        s = sirt_by_n.get(c["angles"])
        rows.append(
            [
                c["angles"],
                c["rel_error"],
                c["volume_seconds"],
                s["fbp_rel_error_slab"] if s else "",
                s["sirt_rel_error_slab"] if s else "",
                s["sirt_seconds"] if s else "",
            ]
        )
    print_table(
        f"Relative error vs golden-angle projections received ({p['photons_per_pixel']:.0e} "
        f"photons/pixel; SIRT x{p['sirt_iterations']} on slices {slab.start}-{slab.stop - 1})",
        rows,
        ["angles", "FBP error", "volume() s", "FBP slab", "SIRT slab", "SIRT s"],
    )
    notes = [
        "2 CPU cores shared with other developers while measuring: timings are noisy.",
        "Projections from project_volume + Poisson noise (known flat I0, no dark), not the "
        "ophyd projection detector (its rate is in sim_detector).",
        "Errors inside the cylinder 2 voxels inside the detector width; SIRT on a slab of "
        "central slices (parallel beam: slices are independent) to keep the run short.",
    ]
    path = write_result(NAME, figures, SEEDS, p, out=args.out, notes=notes)
    print(f"wrote {path} and {png}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
