"""The pipeline benchmark runs at ``--smoke`` size and its figures agree with each other.

Smoke figures mean nothing as performance; the test checks that the whole adaptive loop
(RunEngine, persistence, live reconstruction, segmentation, agent) runs end to end for
both cases and that what the benchmark reports is consistent with the scans it ran.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pipeline_smoke(tmp_path):
    from benchmarks import pipeline

    result = pipeline.main(["--smoke", "--out", str(tmp_path), "--quiet"])
    record = json.loads(Path(result["path"]).read_text())
    assert record["benchmark"] == "pipeline" and record["params"]["smoke"] is True
    cases = record["figures"]["cases"]
    assert set(cases) == set(pipeline.CASES)
    for (case, r), mode in itertools.product(cases.items(), pipeline.MODES):
        baseline, adaptive = r["baseline"], r[mode]
        # the raster measured every planned point; the adaptive scan stopped at its budget
        assert baseline["events"] > adaptive["events"], case
        assert adaptive["events"] == adaptive["budget"], case
        assert baseline["events_per_s"] > 0 and adaptive["events_per_s"] > 0, case
        ratio = adaptive["events_per_s"] / baseline["events_per_s"]
        assert math.isclose(adaptive["rate_vs_baseline"], ratio, rel_tol=1e-9), case
        # the seeds first, then one decision per batch of 8 until the budget
        assert adaptive["decisions"] == math.ceil((adaptive["budget"] - adaptive["seeds"]) / 8)
        assert 0 <= adaptive["backlog_at_stop"] <= adaptive["backlog_max"] <= adaptive["events"]
        assert 0 <= adaptive["segmentation_missing_at_stop"] <= adaptive["events"], case
        assert 0 < adaptive["ask_p50_ms"] <= adaptive["ask_p95_ms"], case
        assert 0 < adaptive["ask_share"] < 1 and adaptive["drain_s"] >= 0, case
        assert 0 <= adaptive["idle_share"] < 1 and adaptive["event_ms_within_batch"] > 0, case
        p50 = adaptive["beamline_idle_per_decision_p50_ms"]
        assert p50 <= adaptive["beamline_idle_per_decision_p95_ms"], case
