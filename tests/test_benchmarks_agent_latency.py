"""The ``agent_latency`` benchmark runs at ``--smoke`` size and records sane figures.

Timings of a smoke run on a loaded machine mean nothing: nothing here asserts a speed, only
that every case and size was measured with the model the size calls for.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import agent_latency  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.timeout(120)
def test_agent_latency_smoke(tmp_path):
    result = agent_latency.main(["--smoke", "--out", str(tmp_path), "--quiet"])
    path = Path(result["path"])
    assert path == tmp_path / "agent_latency.json"
    record = json.loads(path.read_text())
    assert record["benchmark"] == "agent_latency" and record["params"]["smoke"] is True
    assert record["machine"]["cores"] >= 1 and "commit" in record["git"]
    assert record["seeds"] and record["notes"]
    assert (tmp_path / "agent_latency.png").stat().st_size > 10_000
    rows = record["figures"]["rows"]
    measured = {(r["case"], r["n_observations"]) for r in rows}
    expected = {(c, n) for c, sizes in record["params"]["sizes"].items() for n in sizes}
    assert measured == expected
    exact_max = agent_latency.SurrogateConfig().exact_max
    for r in rows:
        forced_exact = r["case"] == "xy_exact"
        n_end = r["n_observations"] + r["decisions"] * r["batch_size"]
        if forced_exact or n_end <= exact_max:
            assert r["model"] == "exact", r
        elif r["n_observations"] > exact_max:
            assert r["model"] == "sparse", r
        else:
            assert r["model"] == "exact+sparse", r
        assert r["decisions"] >= record["params"]["min_decisions"]
        for key in ("p50_ms", "p95_ms", "max_ms", "cpu_p95_ms", "first_decision_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["case"], key)
        assert r["p50_ms"] <= r["p95_ms"] <= r["max_ms"]
        assert r["hyperparameters"]["n_fits"] >= 1
    # small data refit often (every refit_min_new observations): the loop must see refits
    assert all(r["refit_decisions"] >= 1 for r in rows if r["n_observations"] <= 50)
