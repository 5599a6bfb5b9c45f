"""autonomy: segmentation IoU against exposures and time, agent vs raster, random, greedy.

For each case (``P-sparse``, ``P-dense``; seeds outside development) every strategy scans
the same region of the same phantom on the simulated beamline, in a real RunEngine with
live ptychographic reconstruction and segmentation, every run stored in an embedded
catalog (:func:`synaps_agent.experiment.run_strategies`). Raster is a full snake raster
at about 70 % overlap; random, greedy-uncertainty (no GP) and the agent start from the
same coarse seed lattice and get ``budget_fraction`` of raster's exposures. Each stored
segmentation snapshot is scored against the phantom's ground truth (mean IoU over the
region), giving IoU against exposures and against simulated time (motor travel, settle and
exposure on the beamline's clock).

Headline: the fraction of raster's exposures a strategy needs to reach raster's final IoU
within 0.02 (``None``: not reached within its budget).

    python -m benchmarks.autonomy [--smoke] [--out DIR] [--cases P-sparse P-dense]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import base_parser, print_table, results_dir, write_result

NAME = "autonomy"
SEEDS = {"P-sparse": 410, "P-dense": 411}  # outside the development seeds 0-9
STRATEGIES = ("raster", "random", "greedy", "agent")
TOLERANCE = 0.02


def _params(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"smoke": True, "size": 56, "budget_fraction": 0.5, "final_epochs": 5,
                "batch_size": 8, "cases": ["P-sparse"]}  # fmt: skip
    return {"smoke": False, "size": 96, "budget_fraction": 0.5, "final_epochs": 200,
            "batch_size": 8, "cases": ["P-sparse", "P-dense"]}  # fmt: skip


def iou_at(curve: list[tuple[float, float]], budget: float) -> float | None:
    """The IoU of the latest snapshot taken at or before ``budget`` (a step function)."""
    values = [iou for n, iou in curve if n <= budget]
    return values[-1] if values else None


def fraction_to_reach(
    curve: list[tuple[int, float]], target: float, reference: int
) -> float | None:
    """Exposures of the first snapshot with IoU >= ``target``, as a fraction of
    ``reference`` exposures; ``None`` if never reached."""
    for n, iou in curve:
        if iou >= target:
            return n / reference
    return None


def summarize_case(case: str, outcomes: dict) -> dict[str, Any]:
    """Figures of one case: per strategy the curves, finals and the headline fraction, and
    the agent's IoU minus each baseline's at common budgets past the seed batch."""
    raster = outcomes.get("raster")
    target = None if raster is None else raster.final_iou - TOLERANCE
    strategies: dict[str, Any] = {}
    for name, out in outcomes.items():
        strategies[name] = {
            "raw_uid": out.raw_uid,
            "exposures": out.exposures,
            "simulated_seconds": out.simulated_seconds,
            "final_iou": out.final_iou,
            "iou_vs_exposures": out.curve,
            "iou_vs_seconds": out.time_curve(),
            "fraction_of_raster_to_reach": None
            if raster is None
            else fraction_to_reach(out.curve, target, raster.exposures),
        }
    adaptive = [s for s in outcomes if s != "raster"]
    margins: dict[str, Any] = {}
    if "agent" in outcomes:
        agent = outcomes["agent"]
        first = min(n for n, _ in agent.curve) if agent.curve else 0
        budgets = sorted({n for n, _ in agent.curve if n > first})
        for name in adaptive:
            if name == "agent":
                continue
            diffs = []
            for b in budgets:
                mine, theirs = iou_at(agent.curve, b), iou_at(outcomes[name].curve, b)
                if mine is not None and theirs is not None:
                    diffs.append((b, mine - theirs))
            margins[name] = {
                "agent_minus_baseline": diffs,
                "agent_ahead_at_every_budget": bool(diffs) and all(d > 0 for _, d in diffs),
                "min_margin": min((d for _, d in diffs), default=None),
            }
    return {
        "raster_final_iou": None if raster is None else raster.final_iou,
        "target_iou": target,
        "strategies": strategies,
        "agent_vs_baselines": margins,
    }


def plot(figures: dict[str, Any], path: Path) -> Path:
    """IoU vs exposures and vs simulated time per case, plus the scan paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(figures["cases"])
    fig, axes = plt.subplots(len(cases), 2, figsize=(11, 4 * len(cases)), squeeze=False)
    colours = {"raster": "k", "random": "tab:orange", "greedy": "tab:green", "agent": "tab:blue"}
    for row, case in zip(axes, cases, strict=True):
        info = figures["cases"][case]
        for name, s in info["strategies"].items():
            for ax, key in zip(row, ("iou_vs_exposures", "iou_vs_seconds"), strict=True):
                pts = np.asarray(s[key], dtype=float).reshape(-1, 2)
                ax.plot(pts[:, 0], pts[:, 1], "-o", ms=3, color=colours.get(name), label=name)
        for ax, xlabel in zip(row, ("exposures", "simulated time (s, travel + exposure)"),
                              strict=True):  # fmt: skip
            if info["target_iou"] is not None:
                ax.axhline(info["target_iou"], color="grey", ls=":", label="raster final - 0.02")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean IoU vs ground truth")
            ax.set_title(case)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON and the PNG; return the record."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=None, help="cases to run")
    parser.add_argument("--size", type=int, default=None, help="phantom edge in pixels")
    parser.add_argument("--final-epochs", type=int, default=None,
                        help="reconstruction epochs over all frames after each scan")  # fmt: skip
    args = parser.parse_args(argv)
    p = _params(args.smoke)
    if args.cases:
        p["cases"] = list(args.cases)
    if args.size:
        p["size"] = int(args.size)
    if args.final_epochs:
        p["final_epochs"] = int(args.final_epochs)
    from synaps_agent.catalog import open_catalog
    from synaps_agent.experiment import default_segmenter, run_strategies

    log = (lambda *a: None) if args.quiet else print
    t_start = time.perf_counter()
    figures: dict[str, Any] = {"cases": {}, "tolerance": TOLERANCE}
    segmenter = default_segmenter()
    with tempfile.TemporaryDirectory(prefix="synaps-autonomy-") as tmp:
        with open_catalog(tmp) as catalog:
            for case in p["cases"]:
                outcomes = run_strategies(
                    catalog,
                    STRATEGIES,
                    case=case,
                    size=p["size"],
                    seed=SEEDS[case],
                    budget_fraction=p["budget_fraction"],
                    segmenter=segmenter,
                    final_epochs=p["final_epochs"],
                    batch_size=p["batch_size"],
                    log=log,
                )
                figures["cases"][case] = summarize_case(case, outcomes)
    figures["wall_seconds"] = time.perf_counter() - t_start
    png = plot(figures, results_dir(args.out) / f"{NAME}.png")
    figures["figure"] = png.name
    rows = []
    for case, info in figures["cases"].items():
        for name, s in info["strategies"].items():
            rows.append([case, name, s["exposures"], s["simulated_seconds"], s["final_iou"],
                         s["fraction_of_raster_to_reach"]])  # fmt: skip
    print_table(
        f"Autonomy: final mean IoU and fraction of raster's exposures to reach raster's final "
        f"IoU - {TOLERANCE}",
        rows,
        ["case", "strategy", "exposures", "simulated s", "final IoU", "fraction to reach"],
    )
    margin_rows = [
        [case, name, m["min_margin"], m["agent_ahead_at_every_budget"],
         len(m["agent_minus_baseline"])]
        for case, info in figures["cases"].items()
        for name, m in info["agent_vs_baselines"].items()
    ]  # fmt: skip
    print_table(
        "Agent IoU minus baseline IoU at common budgets past the seed batch",
        margin_rows,
        ["case", "baseline", "smallest margin", "ahead at every budget", "budgets"],
    )
    notes = [
        "IoU: mean over phases of the stored live segmentation snapshots against the "
        "phantom's labels, over the scanned region less a margin; exposures = frames the "
        "reconstruction had received at the snapshot.",
        "Simulated time: the beamline's clock (trapezoid moves with settle time, exposure "
        "time) at each event, not the computer's wall time.",
        "Each strategy's reconstruction and segmentation run live on the same machine; the "
        "last snapshot follows the final epochs after the scan. How far the live "
        "reconstruction got during the scan depends on the machine's load, so the curves "
        "(and with few final epochs the final IoU) vary from run to run.",
    ]
    path = write_result(NAME, figures, {**SEEDS}, p, out=args.out, notes=notes)
    print(f"wrote {path} and {png}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
