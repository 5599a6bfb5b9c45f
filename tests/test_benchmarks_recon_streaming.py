"""The live-reconstruction benchmark runs at ``--smoke`` size and records what it measures.

Smoke figures mean nothing as performance; the test checks that the RunEngine, the paced
detector, the subscribed reconstruction, the monitor and the batch reference all run
end to end, and that the figures are consistent with each other.
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


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.timeout(120)
def test_recon_streaming_smoke(tmp_path):
    from benchmarks import recon_streaming

    result = recon_streaming.main(["--smoke", "--out", str(tmp_path), "--quiet"])
    path = Path(result["path"])
    assert path == tmp_path / "recon_streaming.json"
    record = json.loads(path.read_text())
    assert record["benchmark"] == "recon_streaming" and record["params"]["smoke"] is True
    assert record["machine"]["cores"] >= 1 and "commit" in record["git"]
    assert record["notes"] and all(isinstance(v, int) for v in record["seeds"].values())
    assert (tmp_path / "recon_streaming.png").stat().st_size > 10_000
    cases = record["figures"]["cases"]
    assert set(cases) == {"P-sparse", "P-dense"}
    for case, r in cases.items():
        # 11 x 11 raster: every frame reached the engine, none skipped
        assert r["frames"] == 121 and r["skipped"] == 0, case
        assert r["curve"][-1]["frames_in_engine"] == r["frames"], case
        assert 0 < r["arrival_fps"] and 0 < r["baseline_arrival_fps"], case
        # the pacing holds the scan near (never above) the 200 Hz slot clock
        assert r["baseline_arrival_fps"] < 1.1 * record["params"]["frames_per_second"], case
        assert 0 <= r["backlog_at_stop"] <= r["backlog_max"] <= r["frames"], case
        assert all(b["backlog"] >= 0 for b in r["backlog"]), case
        assert _finite(r["batch_phase_rmse"]) and _finite(r["live_final_phase_rmse"]), case
        # the reconstructions learned something: well below a flat object's error
        flat = r["flat_object_phase_rmse"]
        assert r["batch_phase_rmse"] < 0.9 * flat and r["live_final_phase_rmse"] < 0.9 * flat, case
        assert r["target_phase_rmse"] == pytest.approx(1.1 * r["batch_phase_rmse"]), case
        if r["caught_up_s_after_stop"] is not None:
            assert 0 <= r["caught_up_s_after_stop"] <= r["final_seconds_after_stop"] + 1e-9
            assert r["caught_up_epochs_after_stop"] >= 0, case
        # the batch's error after every epoch; its last is the batch error
        epochs = record["params"]["batch_epochs"]
        assert [b["epoch"] for b in r["batch_curve"]] == list(range(1, epochs + 1)), case
        assert r["batch_curve"][-1]["phase_rmse"] == r["batch_phase_rmse"], case
        assert len(r["batch_with_live_momentum_curve"]) == epochs, case
        to_target = r["batch_epochs_to_target"]
        assert to_target is None or 1 <= to_target <= epochs, case
        # the callback's defaults: momentum in the free-running schedule, final threads
        assert r["live_momentum"] == 0.5 and r["final_threads_used"] in (1, 2), case
