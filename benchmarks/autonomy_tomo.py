"""Autonomous tomography: how few angles reach the full-angle quality on T-electrode.

Every strategy is a real scan in a Bluesky RunEngine on the simulated beamline
(``make_sim_beamline``, projection camera at 25 keV, Poisson noise, flat fields), with
the live :class:`~synaps_agent.callbacks.tomo.TomoReconstruction` subscribed. Its final
volume (streaming FBP with angle-gap weighting; the same engine for every strategy) is
scored against the phantom's ground truth:

* ``uniform``: ``tomo_scan`` with ``n`` angles evenly over 180 deg; ``n = N`` is the
  full-angle reference.
* ``golden``: ``tomo_scan`` in golden-angle order.
* ``adaptive``: ``adaptive_tomo_scan`` with a
  :class:`~synaps_agent.agent.angles.CoverageAgent` over theta (the GP agent whose
  acquisition picks, among the views that keep the angular coverage for the scan's
  budget, which come first: :func:`~synaps_agent.agent.angles.spread_views`) and an
  :class:`~synaps_agent.callbacks.agent_feed.AgentFeed` whose uncertainty map is the live
  segmentation uncertainty of the current reconstruction (a central slab, averaged along
  z): the two-class (solid / not solid) threshold segmenter's ``1 - |2 p - 1|`` with
  ``p`` a logistic of the attenuation around the threshold; its forward projection is
  the prior over the views. The scan starts from a few uniform seed angles, measures
  flat fields first (as ``tomo_scan``) and stops at the budget.
* ``unconstrained``: the same with the plain :class:`~synaps_agent.agent.ImagingAgent`
  (the acquisition alone chooses; the previous ``adaptive``).

Quality, inside the cylinder every view sees: relative error ``||rec - mu|| / ||mu||``
of the linear attenuation (1/m), the mean SSIM of the axial slices
(:func:`synaps_agent.metrics.ssim`), and the IoU of the solid phase (active material and
secondary phase, which X-rays at 25 keV tell from pore and carbon-binder) segmented by
one fixed threshold (halfway between the true mean attenuations of binder and active
material) against the phantom's labels. Each budget is its own scan.

Every budget is run twice: with the full-angle scan's exposure per projection (half the
angles, half the dose), and with the full-angle scan's total dose (longer exposures).
The adaptive scans' agents may not pick a view within ``min_spacing`` of the uniform
spacing of a measured one (their duplicate tolerance; a quarter: with half, a scan whose
views end 1.0-1.1 uniform spacings apart has no admissible view left before its budget).

Headline: for each strategy and dose, the fewest angles (of the budgets run) at which the
relative error is within ``tolerance`` (relative) of the full-angle reference, as a
fraction of ``N``; the same with IoU within 0.02.

Run ``python -m benchmarks.autonomy_tomo`` (``--smoke`` for CI sizes). Writes
``autonomy_tomo.json`` and ``autonomy_tomo.png`` (quality vs angles; chosen angles).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import base_parser, print_table, results_dir, torch_threads, write_result
from synaps_agent.agent import (
    AgentConfig,
    ImagingAgent,
    ScanSpace,
    StoppingRule,
    axis_from_motor,
    timing_from_detector,
)
from synaps_agent.agent.angles import CoverageAgent, angular_gaps
from synaps_agent.callbacks.agent_feed import AgentFeed
from synaps_agent.callbacks.segmentation import cylinder_mask
from synaps_agent.callbacks.tomo import TomoReconstruction
from synaps_agent.metrics import ssim
from synaps_agent.plans.adaptive import adaptive_tomo_scan
from synaps_agent.plans.scans import tomo_scan
from synaps_agent.sim_devices.beamline import SimBeamline, make_sim_beamline
from synaps_agent.sim_devices.optics import wavelength
from synaps_agent.sim_devices.phantoms import make_phantom

NAME = "autonomy_tomo"
SEEDS = {"phantom": 11, "beamline": 11, "agent": 11}  # outside the development seeds 0-9
STRATEGIES = ("uniform", "golden", "adaptive", "unconstrained")
#: per-projection exposure as in the full-angle scan, or the full-angle scan's total dose
DOSES = ("exposure", "total")
IOU_TOLERANCE = 0.02


def _params(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "smoke": True,
            "size": 24,
            "num_angles": 32,
            "fractions": [0.25, 0.5],
            "photons_per_pixel": 1e4,
            "num_flats": 4,
            "seed_angles": 4,
            "batch_size": 4,
            "uncertainty_slab": 4,
            "tolerance": 0.05,
            "min_spacing": 0.25,
            "coverage_ratio": 0.5,
            "coverage_slack": 0.0,
            "doses": ["exposure", "total"],
            "torch_threads": 1,
        }
    return {
        "smoke": False,
        "size": 128,
        "num_angles": 360,
        "fractions": [0.125, 0.25, 0.375, 0.5, 0.75],
        "photons_per_pixel": 1e4,
        "num_flats": 10,
        "seed_angles": 8,
        "batch_size": 4,
        "uncertainty_slab": 16,
        "tolerance": 0.05,
        "min_spacing": 0.25,
        "coverage_ratio": 0.5,
        "coverage_slack": 0.0,
        "doses": ["exposure", "total"],
        "torch_threads": 1,
    }


# ------------------------------------------------------------------------------ truth
class Truth:
    """The phantom's attenuation (1/m), solid-phase labels, cylinder and solid threshold."""

    def __init__(self, beamline: SimBeamline) -> None:
        phantom = beamline.phantom
        energy = float(beamline.proj_det.energy.get())
        _, beta = phantom.refractive_index(energy)
        self.mu = (4.0 * np.pi * beta / wavelength(energy)).astype(np.float32)
        self.labels = np.asarray(phantom.labels)
        self.solid = self.labels >= 2
        self.mask = cylinder_mask(self.mu.shape)
        binder = float(self.mu[self.labels == 1].mean())
        active = float(self.mu[self.labels == 2].mean())
        self.threshold = 0.5 * (binder + active)
        self.width = 0.15 * (active - binder)  # of the logistic giving the uncertainty

    def score(self, volume: np.ndarray) -> dict[str, float]:
        """Relative error, mean slice SSIM and solid IoU inside the cylinder."""
        if volume.shape != self.mu.shape:
            raise ValueError(f"reconstruction shape {volume.shape} != truth {self.mu.shape}")
        m = self.mask
        rel = float(np.linalg.norm(volume[m] - self.mu[m]) / np.linalg.norm(self.mu[m]))
        disc = m[0]
        rows = np.flatnonzero(disc.any(axis=1))
        cols = np.flatnonzero(disc.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        data_range = float(self.mu[m].max() - self.mu[m].min())
        ssims = [
            ssim(v[box], t[box], data_range=data_range)
            for v, t in zip(volume, self.mu, strict=True)
        ]
        pred = (volume > self.threshold) & m
        true = self.solid & m
        iou = float((pred & true).sum() / max((pred | true).sum(), 1))
        return {"rel_error": rel, "ssim": float(np.mean(ssims)), "solid_iou": iou}

    def uncertainty(self, slab: np.ndarray) -> np.ndarray:
        """Solid / not-solid segmentation uncertainty of a slab, averaged along z (2D);
        0 outside the cylinder (no view can resolve it)."""
        p = 1.0 / (1.0 + np.exp(-(slab - self.threshold) / self.width))
        umap = (1.0 - np.abs(2.0 * p - 1.0)).mean(axis=0)
        return np.where(self.mask[0], umap, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------ scans
class _Angles:
    """Records the rotation readback of every ``primary`` event."""

    def __init__(self, theta_key: str) -> None:
        self.theta_key = theta_key
        self.primary: set[str] = set()
        self.angles: list[float] = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "descriptor" and doc.get("name") == "primary":
            self.primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self.primary:
            self.angles.append(float(doc["data"][self.theta_key]))


def _live_uncertainty(
    recon: TomoReconstruction, recorder: _Angles, truth: Truth, slab_size: int
):
    """The feed's uncertainty source: the segmentation uncertainty of the live
    reconstruction's central slab, once the reconstruction holds every projection taken
    so far (so the decisions do not depend on the machine's load); a new map only when
    it holds more angles."""
    cache: dict[str, Any] = {"angles": -1, "map": None}

    def source():
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and (
            recon.fbp is None or recon.fbp.num_angles < len(recorder.angles)
        ):
            time.sleep(0.002)
        fbp = recon.fbp
        if fbp is None or fbp.num_angles == 0:
            return None
        if fbp.num_angles != cache["angles"]:
            nz = truth.mu.shape[0]
            z0 = max(0, nz // 2 - slab_size // 2)
            slab = recon.snapshot(slices=list(range(z0, min(nz, z0 + slab_size))))
            cache["angles"], cache["map"] = fbp.num_angles, truth.uncertainty(slab)
        return cache["map"], (0.0, 1.0, 0.0, 1.0)

    return source


def run_strategy(
    strategy: str,
    budget: int,
    p: dict[str, Any],
    frames_dir: Path,
    dose: str = "exposure",
) -> dict[str, Any]:
    """One scan of ``budget`` angles; its final reconstruction scored against the truth.

    ``dose="exposure"``: every projection gets ``photons_per_pixel``; ``"total"``: each
    gets ``photons_per_pixel * num_angles / budget`` (longer exposures), so the scan
    deposits the full-angle scan's dose.
    """
    from bluesky import RunEngine

    if dose not in DOSES:
        raise ValueError(f"unknown dose {dose!r}; expected one of {DOSES}")
    photons = p["photons_per_pixel"] * (p["num_angles"] / budget if dose == "total" else 1.0)
    phantom = make_phantom("T-electrode", SEEDS["phantom"], size=p["size"])
    bl = make_sim_beamline(phantom, frames_dir, seed=SEEDS["beamline"], photons_per_pixel=photons)
    truth = Truth(bl)
    recon = TomoReconstruction(snapshot_interval=0.0)
    recorder = _Angles(bl.stage.theta.name)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(recorder)
    RE.subscribe(recon)
    flats = {
        "num_flats": p["num_flats"],
        "flat_motor": bl.stage.x,
        "flat_position": bl.flat_field_x,
        "shutter": bl.shutter,
    }
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if strategy in ("uniform", "golden"):
        RE(tomo_scan([bl.proj_det], bl.stage.theta, num=budget, scheme=strategy, **flats))
    elif strategy in ("adaptive", "unconstrained"):
        extra = _adaptive(RE, bl, recon, recorder, truth, budget, p, flats,
                          coverage=strategy == "adaptive")  # fmt: skip
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not recon.wait(300) or recon.errors or recon.final_volume is None:
        raise RuntimeError(f"{strategy} {budget}: reconstruction failed: {recon.errors}")
    seconds = time.perf_counter() - t0
    return {
        "strategy": strategy,
        "dose": dose,
        "photons_per_pixel": photons,
        "angles": len(recorder.angles),
        "budget": budget if p.get("use_budget", True) else None,
        "seconds": seconds,
        "chosen_angles": recorder.angles,
        "largest_gap": float(angular_gaps(recorder.angles).max()),
        **truth.score(recon.final_volume),
        **extra,
    }


def _adaptive(
    RE,
    bl: SimBeamline,
    recon: TomoReconstruction,
    recorder: _Angles,
    truth: Truth,
    budget: int,
    p: dict,
    flats: dict[str, Any],
    coverage: bool = True,
) -> dict[str, Any]:
    """``adaptive_tomo_scan`` of ``budget`` angles from uniform seeds (flat fields
    ``flats`` first, as ``tomo_scan``) with a :class:`CoverageAgent` (``coverage``) or a
    plain :class:`ImagingAgent`; the agent's figures."""
    theta = bl.stage.theta
    space = ScanSpace([axis_from_motor("theta", theta, 0.0, 180.0, "deg", period=180.0)])
    rule = {"budget": budget, "slack": p["coverage_slack"], "coverage_ratio": p["coverage_ratio"]}
    agent = (CoverageAgent if coverage else ImagingAgent)(
        space,
        AgentConfig(
            angle_step=0.25,
            cost_aware=False,
            beta=1.0,
            # never within a quarter of the uniform spacing of a measured view (or of one
            # another in a batch): a view that close adds almost nothing
            tolerance={"theta": p["min_spacing"] * 180.0 / budget},
            batch_min_distance=1.0,
            **timing_from_detector(bl.proj_det),
        ),
        stopping=StoppingRule(max_exposures=10 * budget),  # the plan's budget stops it
        seed=SEEDS["agent"],
        **(rule if coverage else {}),
    )
    feed = AgentFeed(agent, _live_uncertainty(recon, recorder, truth, p["uncertainty_slab"]))
    num_seeds = min(p["seed_angles"], budget)
    seeds = np.arange(num_seeds) * 180.0 / num_seeds
    RE(adaptive_tomo_scan(
        [bl.proj_det], theta, feed, seeds,
        batch_size=p["batch_size"], max_exposures=budget, **flats,
    ))  # fmt: skip
    return {"seeds": num_seeds, "decisions": feed.decisions, "told": feed.told,
            "hyperparameters": agent.surrogate.hyperparameters()}  # fmt: skip


# ------------------------------------------------------------------------------ report
def fewest_angles(
    rows: list[dict[str, Any]], reference: dict[str, Any], tolerance: float
) -> dict[str, dict[str, Any]]:
    """Per strategy and dose (key ``"STRATEGY, same DOSE"``), the fewest angles below the
    reference's whose relative error is within ``tolerance`` (relative) of the
    reference's, and whose solid IoU is within ``IOU_TOLERANCE`` (``None``: no budget
    run reached it)."""
    out: dict[str, dict[str, Any]] = {}
    for strategy, dose in ((s, d) for d in DOSES for s in STRATEGIES):
        own = sorted(
            (r for r in rows if r["strategy"] == strategy and r.get("dose", "exposure") == dose
             and r is not reference),
            key=lambda r: r["angles"],
        )  # fmt: skip
        if not own:
            continue
        hit_err = [r["angles"] for r in own
                   if r["rel_error"] <= reference["rel_error"] * (1.0 + tolerance)]  # fmt: skip
        hit_iou = [r["angles"] for r in own
                   if r["solid_iou"] >= reference["solid_iou"] - IOU_TOLERANCE]  # fmt: skip
        n = reference["angles"]
        out[f"{strategy}, same {dose}"] = {
            "angles_rel_error": hit_err[0] if hit_err else None,
            "fraction_rel_error": hit_err[0] / n if hit_err else None,
            "angles_iou": hit_iou[0] if hit_iou else None,
            "fraction_iou": hit_iou[0] / n if hit_iou else None,
        }
    return out


def plot(rows: list[dict[str, Any]], reference: dict[str, Any], path: Path) -> Path:
    """Quality vs angles per strategy (relative error, SSIM, IoU) and the chosen angles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
    markers = {"uniform": "o-", "golden": "s--", "adaptive": "^-", "unconstrained": "v:"}
    for ax, key, label in zip(
        axes[:3],
        ("rel_error", "ssim", "solid_iou"),
        ("relative error (attenuation)", "mean slice SSIM", "solid-phase IoU"),
        strict=True,
    ):
        for strategy, dose in ((s, d) for d in DOSES for s in STRATEGIES):
            own = sorted((r for r in rows if r["strategy"] == strategy and r["dose"] == dose
                          and r is not reference), key=lambda r: r["angles"])  # fmt: skip
            if own:
                ax.plot([r["angles"] for r in own], [r[key] for r in own], markers[strategy],
                        alpha=1.0 if dose == "exposure" else 0.45,
                        label=f"{strategy}, same {dose}")  # fmt: skip
        full = f"uniform {reference['angles']}"
        ax.axhline(reference[key], color="gray", lw=0.8, ls=":", label=full)
        ax.set(xlabel="angles measured", ylabel=label, title=label)
        ax.legend(fontsize=8)
    ax = axes[3]
    largest = max(r["budget"] for r in rows if r["strategy"] == "adaptive")
    for i, strategy in enumerate(STRATEGIES):
        chosen = next(r for r in rows if r["strategy"] == strategy and r["budget"] == largest
                      and r["dose"] == "exposure")  # fmt: skip
        theta = np.mod(chosen["chosen_angles"], 180.0)
        ax.plot(theta, np.full_like(theta, i) + np.linspace(-0.3, 0.3, len(theta)), ".",
                label=strategy)  # fmt: skip
    ax.set(xlabel="theta (deg, mod 180)", yticks=range(len(STRATEGIES)),
           yticklabels=STRATEGIES, title=f"angles chosen, budget {largest}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every strategy at every budget, print the table, write the JSON and the PNG."""
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    p = _params(args.smoke)
    n = p["num_angles"]
    budgets = sorted({max(2, round(f * n)) for f in p["fractions"]})
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with torch_threads(p["torch_threads"]), tempfile.TemporaryDirectory() as frames:
        reference = run_strategy("uniform", n, p, Path(frames))
        rows.append(reference)
        for budget, dose, strategy in (
            (b, d, s) for d in p["doses"] for b in budgets for s in STRATEGIES
        ):
            rows.append(run_strategy(strategy, budget, p, Path(frames), dose))
            if not args.quiet:
                r = rows[-1]
                print(f"{strategy:>8} {budget:4d} same {dose:>8}: rel error {r['rel_error']:.4f}, "
                      f"IoU {r['solid_iou']:.4f} ({r['seconds']:.1f} s)",
                      flush=True)  # fmt: skip
    headline = fewest_angles(rows, reference, p["tolerance"])
    columns = ["strategy", "same", "angles", "fraction of N", "photons/px", "rel error", "SSIM",
               "solid IoU", "s"]  # fmt: skip
    table = [[r["strategy"], r["dose"], r["angles"], r["angles"] / n, r["photons_per_pixel"],
              r["rel_error"], r["ssim"], r["solid_iou"], r["seconds"]] for r in rows]  # fmt: skip
    print_table(f"T-electrode {p['size']}^3, N = {n}: quality vs angles", table, columns)
    print_table(
        f"fewest angles reaching the full-angle quality (rel error within "
        f"{p['tolerance']:.0%}, IoU within {IOU_TOLERANCE})",
        [[s, h["angles_rel_error"], h["fraction_rel_error"], h["angles_iou"], h["fraction_iou"]]
         for s, h in headline.items()],  # fmt: skip
        ["strategy", "angles (error)", "fraction", "angles (IoU)", "fraction"],
    )
    figures = {
        "reference": {k: reference[k] for k in ("angles", "rel_error", "ssim", "solid_iou")},
        "rows": rows,
        "headline": headline,
        "total_seconds": time.perf_counter() - t_start,
    }
    out = results_dir(args.out)
    png = plot(rows, reference, out / f"{NAME}.png")
    figures["png"] = png.name
    path = write_result(
        NAME,
        figures,
        SEEDS,
        {**p, "budgets": budgets, "iou_tolerance": IOU_TOLERANCE},
        out=args.out,
        notes=[
            "each budget is its own scan; the same TomoReconstruction (streaming FBP, "
            "angle-gap weighting) reconstructs every scan",
            "adaptive and unconstrained: flat fields measured by adaptive_tomo_scan; live "
            "uncertainty = solid/non-solid threshold-segmentation uncertainty of the central "
            "slab, averaged along z, its forward projection the prior over the views",
            "adaptive = CoverageAgent (spread_views with the scan's budget: the acquisition "
            "picks which of the slots keeping the coverage come first); unconstrained = the "
            "plain ImagingAgent (the acquisition alone)",
        ],
    )
    return {"path": path, "png": png, "figures": figures, "params": p}


if __name__ == "__main__":
    main()
