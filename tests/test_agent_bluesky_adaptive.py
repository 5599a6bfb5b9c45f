"""The agent inside bluesky-adaptive's own optimization plan."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import AgentConfig, Axis, ImagingAgent, ScanSpace, StoppingRule
from synaps_agent.agent.bluesky_adaptive import AgentOptimizer

bluesky_adaptive = pytest.importorskip("bluesky_adaptive")


def test_agent_runs_in_bluesky_adaptive_optimize(RE, catalog, documents, ptycho_beamline, tmp_path):
    from bluesky_adaptive.plans import optimize
    from bluesky_adaptive.protocols import OptimizationProblem

    bl = ptycho_beamline
    det = bl.ptycho_det
    space = ScanSpace(
        [Axis("x", -0.8, 0.8, "um", velocity=2.0), Axis("y", -0.8, 0.8, "um", velocity=2.0)]
    )
    agent = ImagingAgent(
        space,
        AgentConfig(probe_fwhm=0.2, exposure_time=0.005),
        stopping=StoppingRule(max_exposures=30),
        seed=5,
    )
    optimizer = AgentOptimizer(
        agent, ["stage_x", "stage_y"], objective="gain", checkpoint_path=tmp_path / "agent"
    )
    bl.shutter.set("open")
    flat = det.probe()
    flat_total = float(np.sum(np.abs(flat) ** 2))

    def evaluate(uid, suggestions):
        """The gain of a point: the fraction of photons the sample absorbed there."""
        run = catalog.raw[uid]
        counts = np.asarray(run["primary"][det.total_counts.name].read(), dtype=float)
        xs = np.asarray(run["primary"]["stage_x"].read())
        ys = np.asarray(run["primary"]["stage_y"].read())
        order = run.start["blop_acquisition_order"]
        by_id = {s["_id"]: s for s in suggestions}
        outcomes = []
        for uid_, x, y, total in zip(order, xs, ys, counts, strict=True):
            assert abs(by_id[uid_]["stage_x"] - x) < 1e-9 and abs(by_id[uid_]["stage_y"] - y) < 1e-9
            outcomes.append({"_id": uid_, "gain": 1.0 - total / flat_total})
        return outcomes

    problem = OptimizationProblem(
        optimizer=optimizer,
        actuators=[bl.stage.x, bl.stage.y],
        sensors=[det],
        evaluation_function=evaluate,
    )
    RE(optimize(problem, iterations=None, n_points=5, checkpoint_interval=2))
    assert agent.surrogate.n >= 30  # stopped by the agent's own rule
    stop, reason = optimizer.should_stop()
    assert stop and "exposure budget" in reason
    best_id, best_point, best_outcome = optimizer.get_best_points()[0]
    assert best_outcome["gain"] > 0.0  # it found absorbing material
    assert (tmp_path / "agent.json").exists()  # checkpoints were written
    # every point the agent proposed was inside its space
    measured = np.array([[p["stage_x"], p["stage_y"]] for _, p, _ in optimizer._observed])
    assert np.all(space.contains(measured))
