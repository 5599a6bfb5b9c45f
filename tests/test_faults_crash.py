"""The process dies mid-scan (SIGKILL): every document it emitted reaches the catalog."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from synaps_agent.catalog import open_catalog

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.reliability import documents_lost, run_and_kill  # noqa: E402


def stored_events(catalog, uid):
    """Events of the run's primary stream the catalog holds (0 if none)."""
    if uid not in catalog.raw or "primary" not in catalog.raw[uid]:
        return 0
    primary = catalog.raw[uid]["primary"]
    return len(primary["stage_x"].read()) if "stage_x" in primary else 0


@pytest.mark.slow
def test_documents_emitted_before_sigkill_are_recovered(tmp_path):
    directory = tmp_path / "catalog"
    # a 3 x 3 raster in a child process (moves take wall time), killed after 5 events
    emitted = run_and_kill(directory, kill_after_events=5, time_scale=2.0)
    events = [doc for name, doc in emitted if name == "event"]
    (start,) = [doc for name, doc in emitted if name == "start"]
    assert len(events) == 5 and not any(name == "stop" for name, _ in emitted)
    with open_catalog(directory) as catalog:
        # the batching writer had not stored the events when the process died
        assert stored_events(catalog, start["uid"]) < len(events)
        assert documents_lost(catalog, emitted) > 0
        report = catalog.recover()
        assert [r["uid"] for r in report] == [start["uid"]]
        assert report[0]["action"] == "rewritten" and report[0]["closed"]
        assert report[0]["documents"] >= len(emitted)
        assert documents_lost(catalog, emitted) == 0
        run = catalog.raw[start["uid"]]
        assert run.start["uid"] == start["uid"]
        assert run.stop["exit_status"] == "fail" and "write-ahead log" in run.stop["reason"]
        primary = run["primary"]
        stored_x = np.asarray(primary["stage_x"].read())
        stored_i0 = np.asarray(primary["i0"].read())
        # every event the child emitted is there (one more may have been logged just
        # before the kill), with its values
        assert len(events) <= len(stored_x) <= len(events) + 1
        np.testing.assert_allclose(stored_x[: len(events)], [e["data"]["stage_x"] for e in events])
        np.testing.assert_allclose(stored_i0[: len(events)], [e["data"]["i0"] for e in events])
        assert run.stop["num_events"]["primary"] == len(stored_x)
        frames = np.asarray(primary["ptycho_det_image"].read())
        assert frames.shape == (len(stored_x), 32, 32) and frames.sum(axis=(1, 2)).min() > 0
        # recovering again finds nothing left to do
        assert catalog.recover() == []
