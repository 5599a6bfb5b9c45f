"""ScanProgress: a bar over a real scan's exposures, total from the plan's metadata."""

from __future__ import annotations

import io

from synaps_agent.callbacks.progress import ScanProgress
from synaps_agent.plans.scans import raster_ptycho_scan


def test_the_bar_counts_the_exposures_of_each_run(RE, documents, ptycho_beamline):
    bl = ptycho_beamline
    out = io.StringIO()
    progress = ScanProgress(file=out)
    RE.subscribe(progress)
    RE(raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, -0.1, 0.1, -0.1, 0.1, 0.1))
    (start,) = documents.of("start")
    events = [e for e in documents.of("event") if e["descriptor"] in progress._primary]
    assert start["num_points"] == 9 and len(events) == 9
    assert progress.exposures == 9
    text = out.getvalue()
    assert "raster_ptycho_scan" in text and "9/9" in text and "success" in text
    # a second run starts its own bar from zero
    RE(raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, 0.0, 0.1, 0.0, 0.0, 0.1))
    assert progress.exposures == 2 and "2/2" in out.getvalue()
