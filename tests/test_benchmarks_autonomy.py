"""The ``autonomy`` benchmark runs at ``--smoke`` size and records sane figures.

Smoke sizes are far too small for the figures to mean anything about the agent's quality;
here every strategy must have scanned, been segmented and scored against ground truth, and
the summary must be consistent with the curves it was computed from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import autonomy  # noqa: E402

pytestmark = pytest.mark.slow


def test_curve_helpers():
    curve = [(10, 0.2), (20, 0.5), (40, 0.7)]
    assert autonomy.iou_at(curve, 5) is None
    assert autonomy.iou_at(curve, 25) == 0.5
    assert autonomy.fraction_to_reach(curve, 0.6, 80) == 0.5
    assert autonomy.fraction_to_reach(curve, 0.8, 80) is None


def test_margin_errors_and_behind_beyond_noise():
    agent = [(49, [0.5, 0.5]), (78, [0.60, 0.64]), (156, [0.80, 0.80, 0.80])]
    baseline = [(49, [0.5, 0.5]), (78, [0.70, 0.70]), (156, [0.81])]
    errors = autonomy.margin_errors(agent, baseline, [78, 100, 156])
    # at 78 the agent's seeds differ (0.02 standard error of the mean), the baseline's
    # agree; the step function carries 78 to 100; one baseline seed at 156: no error
    assert errors[0] == (78, pytest.approx(np.std([0.60, 0.64], ddof=1) / np.sqrt(2)))
    assert errors[1] == (100, errors[0][1]) and errors[2] == (156, None)
    margins = [(78, -0.08), (100, -0.03), (156, -0.01)]
    # -0.08 is beyond 2 x 0.02; -0.03 is not; -0.01 is beyond LEVEL with no error known
    assert autonomy.behind_beyond_noise(margins, errors) == [78, 156]
    assert autonomy.behind_beyond_noise([(156, -0.004)], errors) == []  # within LEVEL


def test_at_ceiling_needs_both_scans_at_the_segmenters_ceiling():
    agent = [(49, 0.5), (78, 0.80), (156, 0.90)]
    baseline = [(49, 0.5), (78, 0.90), (156, 0.897)]
    # at 78 only the baseline is at 0.9 - LEVEL or above; from 156 on both are (the
    # step function carries 156 to 200); nothing is at a ceiling that is not a number
    assert autonomy.at_ceiling(agent, baseline, [78, 156, 200], 0.9) == [156, 200]
    assert autonomy.at_ceiling(agent, baseline, [78, 156], 0.95) == []
    assert autonomy.at_ceiling(agent, baseline, [78, 156], float("nan")) == []
    assert autonomy.at_ceiling(agent, baseline, [40], 0.1) == []  # before either curve


def test_summarize_by_budget_gives_each_budget_a_verdict_over_the_phantoms():
    def record(random_margins, ceiling_at=()):
        return {"agent_minus_random": list(zip((78, 156, 234), random_margins, strict=True)),
                "agent_and_random_at_ceiling": list(ceiling_at)}  # fmt: skip

    phantoms = [
        record((0.10, 0.01, 0.000), ceiling_at=(234,)),
        record((0.12, -0.02, -0.010), ceiling_at=(234,)),
        record((0.08, 0.02, 0.004)),
        record((0.14, -0.01, 0.002), ceiling_at=(156,)),
    ]
    (random,) = autonomy.summarize_by_budget(phantoms).values()
    rows = {r["budget"]: r for r in random["budgets"]}
    assert rows[78]["mean"] == pytest.approx(0.11) and rows[78]["phantoms"] == 4
    assert rows[78]["standard_error"] == pytest.approx(np.std([0.10, 0.12, 0.08, 0.14],
                                                              ddof=1) / 2)  # fmt: skip
    assert rows[78]["verdict"] == "ahead" and rows[78]["ahead"] == 4
    # 156: a mean of 0 with a spread, one phantom of four at the ceiling: undecided
    assert rows[156]["verdict"] == "within noise" and rows[156]["behind"] == 2
    # 234: nothing to tell apart, and half the phantoms are at the ceiling
    assert rows[234]["verdict"] == "at the ceiling" and rows[234]["at_ceiling"] == 2
    assert random["beats_at_every_budget"] is False
    behind = [record((-0.10, 0.0, 0.0)), record((-0.12, 0.0, 0.0)), record((-0.11, 0.0, 0.0))]
    rows = autonomy.summarize_by_budget(behind)["random"]["budgets"]
    assert rows[0]["verdict"] == "behind"
    ahead = [record((0.10, 0.02, 0.0), (234,)), record((0.12, 0.03, 0.0), (234,))]
    assert autonomy.summarize_by_budget(ahead)["random"]["beats_at_every_budget"] is True


def test_exposures_to_the_ceiling_are_compared_phantom_by_phantom():
    assert autonomy.exposures_to_reach([(49, 0.5), (78, 0.88), (117, 0.9)], 0.88) == 78
    assert autonomy.exposures_to_reach([(49, 0.5)], 0.88) is None
    assert autonomy.exposures_to_reach([(49, 0.5)], float("nan")) is None
    phantoms = [
        {"exposures_to_ceiling": {"random": 156, "greedy": 117, "agent": 78}},
        {"exposures_to_ceiling": {"random": None, "greedy": 78, "agent": 78}},
        {"exposures_to_ceiling": {"random": 117, "greedy": None, "agent": 156}},
    ]
    summary = autonomy.summarize_to_ceiling(phantoms)
    assert summary["median_exposures"] == {"random": 156.0, "greedy": 117.0, "agent": 78.0}
    assert summary["agent_vs_random"] == {"fewer": 2, "same": 0, "more": 1}
    assert summary["agent_vs_greedy"] == {"fewer": 2, "same": 1, "more": 0}
    never = [{"exposures_to_ceiling": {"random": None, "agent": 78}}] * 2
    assert autonomy.summarize_to_ceiling(never)["median_exposures"]["random"] is None


@pytest.mark.timeout(240)
def test_autonomy_smoke(tmp_path):
    result = autonomy.main(
        ["--smoke", "--out", str(tmp_path), "--quiet", "--check-seeds", "431",
         "--score-repeats", "2"]
    )
    record = json.loads(Path(result["path"]).read_text())
    assert record["benchmark"] == "autonomy" and record["params"]["smoke"] is True
    assert all(seed > 9 for seed in record["seeds"].values())  # outside development seeds
    assert (tmp_path / "autonomy.png").stat().st_size > 10_000
    (case,) = record["params"]["cases"]
    info = record["figures"]["cases"][case]
    strategies = info["strategies"]
    assert set(strategies) == {"raster", "random", "greedy", "agent"}
    raster = strategies["raster"]
    assert info["target_iou"] == pytest.approx(raster["final_iou"] - autonomy.TOLERANCE)
    assert raster["fraction_of_raster_to_reach"] == 1.0  # raster reaches its own final IoU
    assert 0.0 < info["ceiling_iou"] <= 1.0  # the segmenter on the true object
    for name, s in strategies.items():
        assert 0.0 < s["final_iou"] <= 1.0, name
        # the fair curve (offline reconstructions of the stored frames) ends at all of the
        # strategy's exposures; the live one is kept beside it
        assert s["iou_vs_exposures"][-1] == [s["exposures"], s["final_iou"]], name
        assert s["live_iou_vs_exposures"] and 0.0 < s["live_final_iou"] <= 1.0, name
        assert 0.0 < s["coverage"]["covered_fraction"] <= 1.0, name
        assert s["iou_vs_exposures"] and len(s["iou_vs_seconds"]) == len(s["iou_vs_exposures"])
        # the fair IoU is the mean of two engine seeds' scores, both kept
        for (n, mean), (m, seeds) in zip(s["iou_vs_exposures"], s["iou_of_each_engine_seed"],
                                         strict=True):
            assert n == m and len(seeds) == 2 and mean == pytest.approx(np.mean(seeds)), name
        # the adaptive strategies got half of raster's exposures, on the same clock
        if name != "raster":
            assert s["exposures"] == max(20, raster["exposures"] // 2)
        seconds = [t for t, _ in s["iou_vs_seconds"]]
        assert 0 < seconds[-1] <= s["simulated_seconds"] + 1e-9
    for name, m in info["agent_vs_baselines"].items():
        margins = m["agent_minus_baseline"]
        assert margins and m["min_margin"] == pytest.approx(min(d for _, d in margins)), name
        assert m["behind_at"] == [b for b, d in margins if d < -autonomy.LEVEL], name
        errors = autonomy.margin_errors(
            strategies["agent"]["iou_of_each_engine_seed"],
            strategies[name]["iou_of_each_engine_seed"], [b for b, _ in margins],
        )  # fmt: skip
        assert m["standard_error"] == [list(e) for e in errors], name
        assert all(e is not None and e >= 0 for _, e in errors), name
        assert set(m["behind_beyond_noise_at"]) <= set(m["behind_at"]), name
        assert m["at_ceiling_at"] == autonomy.at_ceiling(
            strategies["agent"]["iou_vs_exposures"], strategies[name]["iou_vs_exposures"],
            [b for b, _ in margins], info["ceiling_iou"],
        ), name  # fmt: skip
        assert m["agent_ahead_at_every_budget"] == all(d > 0 for _, d in margins), name
    # the seed check: the baselines and the agent on a further phantom, margins from
    # their curves, and a summary over the cells that counts each of them once
    (check,) = record["figures"]["seed_check"]
    assert check["seed"] == record["seeds"]["check_0"] == 431 and check["case"] == case
    agent_curve = dict(check["agent"])
    summary = record["figures"]["seed_check_summary"]
    for name in ("random", "greedy"):
        assert check["agent"][0] == check[name][0]  # the same seed lattice, the same score
        baseline_curve = dict(check[name])
        margins = check[f"agent_minus_{name}"]
        assert margins
        for budget, margin in margins:
            assert budget > check["agent"][0][0]
            assert margin == pytest.approx(agent_curve[budget] - baseline_curve[budget])
        m = summary[name]
        assert m["cells"] == len(margins) == m["ahead"] + m["level"] + m["behind"]
        errors = check[f"agent_minus_{name}_error"]
        assert [b for b, _ in errors] == [b for b, _ in margins]
        # the errors come from the kept engine seeds' scores, whose means are the curve
        seeds = check[f"{name}_iou_of_each_engine_seed"]
        assert [n for n, _ in seeds] == [n for n, _ in check[name]]
        assert [np.mean(v) for _, v in seeds] == pytest.approx([iou for _, iou in check[name]])
        assert [list(e) for e in errors] == [list(e) for e in autonomy.margin_errors(
            check["agent_iou_of_each_engine_seed"], seeds, [b for b, _ in margins])]
        assert m["behind_beyond_noise"] == len(autonomy.behind_beyond_noise(margins, errors))
        assert m["behind_beyond_noise"] <= m["behind"]
        ceiling_at = check[f"agent_and_{name}_at_ceiling"]
        assert ceiling_at == autonomy.at_ceiling(
            check["agent"], check[name], [b for b, _ in margins], check["ceiling_iou"])
        behind = {b for b, d in margins if d < -autonomy.LEVEL}
        assert m["behind_at_ceiling"] == len(behind & set(ceiling_at))
        assert m["behind_beyond_noise_below_ceiling"] == len(
            set(autonomy.behind_beyond_noise(margins, errors)) - set(ceiling_at))
        assert m["min"] == pytest.approx(min(d for _, d in margins))
        assert m["mean"] == pytest.approx(np.mean([d for _, d in margins]))
    # over both phantoms (headline and check): each budget's margins pooled
    by_budget = record["figures"]["by_budget"]
    for name in ("random", "greedy"):
        pooled = {}
        for b, d in [*info["agent_vs_baselines"][name]["agent_minus_baseline"],
                     *check[f"agent_minus_{name}"]]:  # fmt: skip
            pooled.setdefault(b, []).append(d)
        rows = by_budget[name]["budgets"]
        assert [r["budget"] for r in rows] == sorted(pooled)
        for r in rows:
            assert r["phantoms"] == len(pooled[r["budget"]])
            assert r["mean"] == pytest.approx(np.mean(pooled[r["budget"]]))
    # the budgets include every sixteenth of raster's exposures from an eighth to a quarter
    budgets = {n for n, _ in strategies["agent"]["iou_vs_exposures"]}
    assert {int(f * raster["exposures"]) for f in (0.125, 0.1875, 0.25)} <= budgets
    # exposures to the ceiling - TOLERANCE: the first fair budget at or above it
    reach = record["figures"]["to_ceiling"]
    for name, s in strategies.items():
        first = next((n for n, iou in s["iou_vs_exposures"]
                      if iou >= info["ceiling_iou"] - autonomy.TOLERANCE), None)  # fmt: skip
        assert s["exposures_to_ceiling"] == first, name
    assert set(reach["median_exposures"]) == {"random", "greedy", "agent"}
    assert sum(reach["agent_vs_random"].values()) == 2  # the headline and the check phantom


def test_check_seeds_refuse_development_seeds():
    with pytest.raises(SystemExit):
        autonomy.main(["--smoke", "--check-seeds", "3"])
