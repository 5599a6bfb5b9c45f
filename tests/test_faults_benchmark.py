"""The reliability benchmark at ``--smoke`` size: every fault injected, nothing lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import reliability  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reliability_benchmark_smoke(tmp_path):
    # sigkill runs a child process of its own: tests/test_faults_crash.py covers it
    faults = [f for f in reliability.FAULTS if f != "sigkill"]
    result = reliability.main(["--smoke", "--out", str(tmp_path), "--quiet", "--faults", *faults])
    record = json.loads(Path(result["path"]).read_text())
    assert record["benchmark"] == "reliability" and record["params"]["smoke"] is True
    assert record["machine"]["cores"] >= 1 and "commit" in record["git"] and record["notes"]
    figures = record["figures"]
    assert figures["faults_injected"] == len(faults) == len(figures["faults"])
    assert figures["documents_lost"] == 0
    assert figures["scans_completed"] == len(faults)
    by_fault = figures["faults"]
    points = record["params"]["points_per_scan"]
    for fault, outcome in by_fault.items():
        assert outcome["documents_emitted"] > points, fault  # events + start, stop, ...
    assert by_fault["abort"]["exit_status"] == "abort"
    assert by_fault["abort"]["stop_reason"] == reliability.ABORT_REASON
    assert figures["abort_reason_stored"] and figures["beam_dump_flagged_as_expected"]
    for fault in ("beam_dump", "beam_dump_monitor_first"):  # either trigger order
        assert by_fault[fault]["dumps"] == 1
        # exactly the exposure taken as the beam died is flagged (the dump's exposure)
        assert by_fault[fault]["flagged_exposures"] == [max(points // 3, 1) - 1], fault
        assert by_fault[fault]["beam_down_simulated_s"] > 0  # the outage on the sim clock
    assert by_fault["tiled_down"]["buffered_while_down"] > 0
    assert by_fault["tiled_down"]["failed_attempts"] >= 1
    assert by_fault["callback_error"]["errors_reported"] >= points
    assert by_fault["pause_resume"]["paused"] and by_fault["ctrl_c"]["paused"]
    for fault in ("beam_dump", "tiled_down", "pause_resume", "ctrl_c", "abort"):
        assert by_fault[fault]["recovery_s"] >= 0, fault
