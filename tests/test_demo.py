"""The README's main command, end to end at a small size."""

from __future__ import annotations

import json

import pytest

from synaps_agent.catalog import open_catalog
from synaps_agent.cli import main


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "results"
    assert main(["demo", "--out", str(out), "--size", "96", "--angles", "12"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for figure in summary["figures"]:
        assert (out / "figures").joinpath(figure.rsplit("/", 1)[-1]).stat().st_size > 10_000
    names = {f.rsplit("/", 1)[-1] for f in summary["figures"]}
    assert {
        "phantom_P-sparse.png",
        "phantom_P-dense.png",
        "phantom_T-electrode.png",
        "diffraction_patterns.png",
        "projections.png",
        "adaptive_vs_raster.png",
        "particle_sizes.png",
    } <= names
    adaptive = summary["runs"]["adaptive"]
    raster, agent = adaptive["raster"], adaptive["agent"]
    assert agent["exposures"] <= raster["exposures"] // 2 + 1
    # both strategies were segmented and scored against ground truth as they went
    assert len(raster["iou_curve"]) >= 2 and len(agent["iou_curve"]) >= 2
    assert 0.3 < raster["final_mean_iou"] <= 1.0 and 0.3 < agent["final_mean_iou"] <= 1.0
    # the particles each final segmentation found, against the phantom's over the region:
    # a count and a median size of the right order (the region's edge cuts particles)
    particles = adaptive["particles"]
    truth = particles["ground_truth"]
    assert truth["count"] >= 3
    for name in ("raster", "agent"):
        found = particles[name]
        assert 0.5 * truth["count"] <= found["count"] <= 2 * truth["count"], (name, particles)
        ratio = found["median_diameter_um"] / truth["median_diameter_um"]
        assert 0.6 <= ratio <= 1.6, (name, particles)
    # and fairly: their stored frames reconstructed offline, up to all their exposures
    for info in (raster, agent):
        assert info["fair_iou_curve"][-1] == [info["exposures"], info["final_mean_iou"]]
    # everything is in the catalog the summary names
    with open_catalog(summary["catalog_directory"]) as catalog:
        for info in (raster, agent, summary["runs"]["ptychography"], summary["runs"]["tomography"]):
            assert info["uid"] in catalog.raw
        processed = {r.start["processor"]["name"] for r in catalog.processed.values()}
        assert {"ptycho_reconstruction", "segmentation", "agent"} <= processed
