"""The closed loop: live reconstruction -> segmentation -> agent -> next motor move."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import (
    AgentConfig,
    Axis,
    ImagingAgent,
    ScanSpace,
    StoppingRule,
    axis_from_motor,
    make_strategy,
    timing_from_detector,
)
from synaps_agent.callbacks.agent_feed import AgentFeed, footprint_mean
from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.callbacks.ptycho import PtychoReconstruction
from synaps_agent.callbacks.segmentation import LiveSegmentation, normalize_reconstruction
from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions
from synaps_agent.recon.ptycho import PtychoConfig
from synaps_agent.segment.base import ProbabilisticSegmenter
from synaps_agent.segment.forest import ForestSegmenter
from synaps_agent.sim_devices.phantoms import make_phantom


@pytest.fixture(scope="module")
def segmenter():
    rng = np.random.default_rng(0)
    images, labels = [], []
    for seed in (11, 12):
        phantom = make_phantom("P-dense", seed, size=96)
        t = phantom.transmission(8000.0)
        images.append(normalize_reconstruction(t + rng.normal(0, 0.01, t.shape)))
        labels.append(phantom.labels)
    return ProbabilisticSegmenter(ForestSegmenter(n_estimators=15, n_jobs=1).fit(images, labels))


def test_footprint_mean_reads_the_right_pixels():
    umap = np.zeros((10, 20))
    umap[2, 15] = 1.0  # pixel centre at x = 15.5, y = 2.5 with extent (0, 20, 0, 10)
    assert footprint_mean(umap, (0, 20, 0, 10), (15.5, 2.5), 0.4) == 1.0
    assert footprint_mean(umap, (0, 20, 0, 10), (4.5, 2.5), 0.4) == 0.0
    assert footprint_mean(umap, (0, 20, 0, 10), (50, 50), 0.4) == 1.0  # off the map


def test_the_agents_clock_keeps_the_beamlines_time(RE, catalog, ptycho_beamline):
    """An agent built from the devices (the motors' kinematics, the detector's exposure
    and readout) charges what the simulated beamline spends, seeds included, diagonal
    moves as long as their longer axis: so a time budget means beamline seconds."""
    bl = ptycho_beamline
    motors = {"x": bl.stage.x, "y": bl.stage.y}
    space = ScanSpace([axis_from_motor(name, m, -0.5, 0.5) for name, m in motors.items()])
    assert space.axes[0].acceleration_time == bl.stage.x.acceleration.get() > 0
    agent = make_strategy(
        "random", space,
        AgentConfig(probe_fwhm=0.2, max_step=0.1, **timing_from_detector(bl.ptycho_det)),
        stopping=StoppingRule(max_time=8.0), seed=2,
        start_position={name: m.position for name, m in motors.items()},
    )  # fmt: skip
    assert agent.config.time_per_point == pytest.approx(0.005 + 0.15)  # the sim's defaults
    feed = AgentFeed(agent, lambda: None, footprint_radius=0.1)
    bl.clock.reset()
    seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)
    plan = adaptive_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds,
                                batch_size=4, max_exposures=500, shutter=bl.shutter)  # fmt: skip
    (uid,) = RE(plan)
    assert "time budget" in catalog.raw[uid].stop["reason"]
    assert agent.elapsed_time == pytest.approx(bl.clock.elapsed, rel=1e-9)
    assert bl.clock.by_kind["readout"] == pytest.approx(0.15 * feed.exposures_measured)
    # it stopped at the first decision after 8 s: within one batch of four points
    longest_point = 0.155 + float(np.max(space.travel_time([-0.5, -0.5], [[0.5, 0.5]])))
    assert 8.0 <= bl.clock.elapsed < 8.0 + 4 * longest_point


@pytest.mark.slow
def test_adaptive_scan_closes_the_loop(RE, catalog, documents, ptycho_beamline, segmenter):
    bl = ptycho_beamline
    space = ScanSpace(
        [
            Axis("x", -0.6, 0.6, "um", velocity=bl.stage.x.velocity.get(), settle_time=0.02),
            Axis("y", -0.6, 0.6, "um", velocity=bl.stage.y.velocity.get(), settle_time=0.02),
        ]
    )
    budget = 90
    agent = ImagingAgent(
        space,
        AgentConfig(probe_fwhm=0.2, max_step=0.08, exposure_time=0.005),
        stopping=StoppingRule(max_exposures=budget),
        seed=3,
    )
    seg = LiveSegmentation(
        DocumentSink(catalog.writer("processed")),
        segmenter=segmenter,
        min_interval=0.1,
        preprocess=normalize_reconstruction,
    )
    recon = PtychoReconstruction(
        DocumentSink(catalog.writer("processed"), seg),
        config=PtychoConfig(batch_size=16, seed=1),
        snapshot_interval=0.3,
        final_epochs=20,
    )
    feed = AgentFeed(
        agent,
        seg.uncertainty_for_agent,
        footprint_radius=0.1,
        sink=DocumentSink(catalog.writer("processed")),
        # each decision waits (the plan's map_timeout) for the map of every exposure so
        # far: on a loaded machine the maps lag, and without the wait a short scan could
        # end before any gain was learned
        map_frames=seg.frames_in_map,
    )
    RE.subscribe(recon)
    seeds = raster_positions(-0.5, 0.5, -0.5, 0.5, 0.25)
    (uid,) = RE(
        adaptive_ptycho_scan(
            [bl.ptycho_det],
            bl.stage.x,
            bl.stage.y,
            feed,
            seeds,
            batch_size=6,
            max_exposures=200,
            shutter=bl.shutter,
        )
    )
    assert recon.wait(120) and seg.wait(120)
    assert recon.errors == [] and seg.errors == []
    run = catalog.raw[uid]
    # the agent's stopping rule ended the run, and said why
    assert "exposure budget" in run.stop["reason"]
    xs = np.asarray(run["primary"]["stage_x"].read())
    ys = np.asarray(run["primary"]["stage_y"].read())
    assert len(seeds) + 6 <= len(xs) <= 200
    agent_points = np.column_stack([xs, ys])[len(seeds) :]
    assert np.all(space.contains(agent_points))
    # gains were learned from the segmentation's uncertainty maps
    assert feed.told > 0 and agent.surrogate.n == feed.told
    # every decision is stored, linked to the raw run
    (decisions,) = [
        r
        for r in catalog.processed.values()
        if r.start.get("raw_uid") == uid and r.start["processor"]["name"] == "agent"
    ]
    stored_points = np.asarray(decisions["decisions"]["point"].read())
    np.testing.assert_allclose(stored_points, agent_points)  # each move was a decision
    assert int(np.asarray(decisions["decisions"]["decision"].read())[-1]) == feed.decisions
    assert decisions.stop["exit_status"] == "success"
    # the agent's points stay connected to what was measured (ptychographic overlap)
    measured = np.column_stack([xs, ys])
    for i in range(len(seeds), len(measured)):
        nearest = np.min(np.hypot(*(measured[:i] - measured[i]).T))
        assert nearest <= 0.08 + 1e-9 or nearest <= 0.25 * 2**0.5 + 1e-9
