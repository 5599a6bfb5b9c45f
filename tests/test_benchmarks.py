"""The benchmarks run at ``--smoke`` size and write sane JSON (into a temporary folder).

The figures of a smoke run mean nothing; these tests check that each benchmark still runs
end to end and records what the protocol asks for (machine, commit, seeds, figures).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.slow


def _run(name: str, out: Path) -> dict:
    module = importlib.import_module(f"benchmarks.{name}")
    result = module.main(["--smoke", "--out", str(out), "--quiet"])
    path = Path(result["path"])
    assert path == out / f"{name}.json" and path.exists()
    record = json.loads(path.read_text())
    assert record["benchmark"] == name
    assert record["params"]["smoke"] is True
    machine = record["machine"]
    assert machine["cores"] >= 1 and machine["torch_version"] and machine["device"]
    assert "commit" in record["git"]
    assert record["seeds"] and all(isinstance(v, int) for v in record["seeds"].values())
    assert record["date"] and record["notes"]
    return record


def _positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.timeout(120)
def test_sim_detector_smoke(tmp_path):
    record = _run("sim_detector", tmp_path)
    det = record["figures"]["detectors"]
    for key in (
        "ptycho_acquire_fps",
        "ptycho_expected_frame_fps",
        "projection_new_angle_fps",
        "projection_repeated_angle_fps",
    ):
        assert _positive(det[key]), key
    persistence = record["figures"]["persistence"]
    assert persistence["events_per_scan"] == record["params"]["scan_points"]
    modes = persistence["modes"]
    assert set(modes) == {"no_subscriber", "tiled_writer_default", "tiled_writer_batch_1"}
    for mode, figures in modes.items():
        assert _positive(figures["events_per_second"]), mode
        assert _positive(figures["time_ratio_vs_baseline"]), mode
        assert math.isfinite(figures["overhead_ms_per_event_vs_baseline"]), mode
    assert modes["no_subscriber"]["time_ratio_vs_baseline"] == pytest.approx(1.0)
    for mode in ("tiled_writer_default", "tiled_writer_batch_1"):
        assert modes[mode]["frames_read_back"] == persistence["events_per_scan"]


@pytest.mark.timeout(120)
def test_recon_ptycho_smoke(tmp_path):
    record = _run("recon_ptycho", tmp_path)
    assert (tmp_path / "recon_ptycho.png").stat().st_size > 10_000
    cases = record["figures"]["cases"]
    assert set(cases) == {"P-sparse", "P-dense"}
    for case, result in cases.items():
        assert result["frames"] > 100
        for key, value in result["throughput"].items():
            assert _positive(value), (case, key)
        for algorithm in ("rpie", "lsqml"):
            run = result[algorithm]
            assert run["epochs"] == record["params"]["epochs"]
            assert 0 < run["phase_rmse"] < 1.0, (case, algorithm)  # 4 epochs: loose
            assert _positive(run["seconds_per_epoch"])
            assert len(run["curve"]) == len(record["params"]["eval_epochs"])
        stream = result["streaming"]["curve"]
        assert stream[-1]["frames_received"] == result["frames"]
        assert all(0 < c["phase_rmse"] < 1.5 for c in stream)


@pytest.mark.timeout(120)
def test_recon_tomo_smoke(tmp_path):
    record = _run("recon_tomo", tmp_path)
    assert (tmp_path / "recon_tomo.png").stat().st_size > 10_000
    figures = record["figures"]
    assert _positive(figures["add_slices_per_s"])
    assert _positive(figures["volume_slices_per_s_median"])
    curve = figures["fbp_curve"]
    assert [c["angles"] for c in curve] == record["params"]["checkpoints"]
    errors = [c["rel_error"] for c in curve]
    assert all(math.isfinite(e) and e > 0 for e in errors)
    assert errors[-1] < errors[0] and errors[-1] < 1.0  # more angles, smaller error
    for c in figures["sirt_curve"]:
        assert 0 < c["sirt_rel_error_slab"] < c["fbp_rel_error_slab"] * 1.05
