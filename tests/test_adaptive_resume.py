"""Resume: the feed saves the agent after every decision; a new session goes on from it."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import (
    AgentConfig,
    Axis,
    ImagingAgent,
    RandomAgent,
    ScanSpace,
    StoppingRule,
)
from synaps_agent.callbacks.agent_feed import AgentFeed
from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions


def boundary_uncertainty(bl):
    """Uncertainty 1 where phases meet in the phantom, 0.05 elsewhere, over the stage
    extent of the sample; a new array at each call, as a live segmentation gives."""
    labels = bl.phantom.labels
    edges = (np.diff(labels, axis=0, prepend=labels[:1]) != 0) | (
        np.diff(labels, axis=1, prepend=labels[:, :1]) != 0
    )
    rows, cols = labels.shape
    half_w = cols * bl.sample.pixel_size * 1e6 / 2
    half_h = rows * bl.sample.pixel_size * 1e6 / 2
    return lambda: (np.where(edges, 1.0, 0.05), (-half_w, half_w, -half_h, half_h))


def stage_positions(run) -> np.ndarray:
    primary = run["primary"]
    return np.column_stack(
        [np.asarray(primary["stage_x"].read()), np.asarray(primary["stage_y"].read())]
    )


def make_space(bl):
    return ScanSpace(
        [
            Axis("x", -0.6, 0.6, "um", velocity=bl.stage.x.velocity.get(), settle_time=0.02),
            Axis("y", -0.6, 0.6, "um", velocity=bl.stage.y.velocity.get(), settle_time=0.02),
        ]
    )


def test_a_saved_baseline_comes_back_as_that_baseline(tmp_path):
    space = ScanSpace([Axis("x", 0, 1, "um"), Axis("y", 0, 1, "um")])
    RandomAgent(space, AgentConfig(probe_fwhm=0.1), seed=2).save(tmp_path / "random")
    restored = ImagingAgent.load(tmp_path / "random")
    assert type(restored) is RandomAgent
    np.testing.assert_array_equal(
        restored.ask(3)[1], RandomAgent.load(tmp_path / "random").ask(3)[1]
    )


@pytest.mark.slow
def test_scan_saves_every_decision_and_a_new_session_continues(
    RE, catalog, documents, ptycho_beamline, tmp_path
):
    bl = ptycho_beamline
    path = tmp_path / "agent"
    uncertainty = boundary_uncertainty(bl)
    agent = ImagingAgent(
        make_space(bl),
        AgentConfig(probe_fwhm=0.2, max_step=0.08, exposure_time=0.005),
        stopping=StoppingRule(max_exposures=1000),
        seed=5,
    )
    sink = DocumentSink(catalog.writer("processed"))
    feed = AgentFeed(agent, uncertainty, footprint_radius=0.1, sink=sink, state_path=path)
    seeds = raster_positions(-0.5, 0.5, -0.5, 0.5, 0.5)  # 9 seeds
    args = ([bl.ptycho_det], bl.stage.x, bl.stage.y)
    (uid1,) = RE(adaptive_ptycho_scan(*args, feed, seeds, batch_size=4, max_exposures=21))
    assert feed.decisions == 3 and feed.saves == feed.decisions + 1  # + the final save
    measured1 = stage_positions(catalog.raw[uid1])
    assert len(measured1) == 21

    # the saved state gives the very suggestion the live agent gives next
    expected = ImagingAgent.load(path).ask(4)[1]
    np.testing.assert_allclose(ImagingAgent.load(path).ask(4)[1], expected)
    np.testing.assert_allclose(agent.ask(4)[1], expected)

    # a new session: same plan, same seeds; the seeds are not measured again and the scan
    # goes on with the suggestion the saved state gives
    feed2 = AgentFeed.resume(path, uncertainty, footprint_radius=0.1, sink=sink)
    assert feed2.agent.surrogate.n == agent.surrogate.n > 0  # every gain told before
    (uid2,) = RE(adaptive_ptycho_scan(*args, feed2, seeds, batch_size=4, max_exposures=8))
    measured2 = stage_positions(catalog.raw[uid2])
    assert len(measured2) == 8
    np.testing.assert_allclose(measured2[:4], expected)
    gaps = measured2[:, None, :] - measured1[None]
    nearest = np.min(np.hypot(gaps[..., 0], gaps[..., 1]), axis=1)
    assert np.all(nearest > 1e-6)  # nothing of the first session measured again
    assert feed2.saves == 3  # two decisions and the end
    assert ImagingAgent.load(path).surrogate.n == feed2.agent.surrogate.n > agent.surrogate.n


def test_resume_from_a_missing_state_says_so(tmp_path):
    with pytest.raises(ValueError, match="cannot read agent state"):
        AgentFeed.resume(tmp_path / "nothing", lambda: None, footprint_radius=0.1)
