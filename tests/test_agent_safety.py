"""Tests of the agent's scan space, safety gate, failures and stopping rule."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import (
    AgentConfig,
    Axis,
    Disc,
    ImagingAgent,
    NoAdmissibleCandidateError,
    Rectangle,
    ScanSpace,
    StoppingRule,
    SurrogateConfig,
    trapezoid_time,
)

FAST = SurrogateConfig(fit_steps_initial=3, fit_steps=1)


def _random_case(rng: np.random.Generator):
    """A random space (ptycho 2D, tomo 1D or ptycho-tomo 3D), its excluded regions, priors."""
    kind = rng.choice(["xy", "theta", "xyt"])
    axes, excluded = [], []
    if kind in ("xy", "xyt"):
        for name in ("x", "y"):
            lo = float(rng.uniform(-50, 50))
            axes.append(Axis(name, lo, lo + float(rng.uniform(2, 40)), "um", velocity=20.0))
        for _ in range(int(rng.integers(0, 4))):
            ax = axes[0], axes[1]
            c = [float(rng.uniform(a.low, a.high)) for a in ax]
            if rng.random() < 0.5:
                excluded.append(Disc(("x", "y"), c, float(rng.uniform(0.2, 0.3) * ax[0].span)))
            else:
                half = [float(rng.uniform(0.05, 0.3) * a.span) for a in ax]
                excluded.append(
                    Rectangle(
                        ("x", "y"),
                        [c[0] - half[0], c[1] - half[1]],
                        [c[0] + half[0], c[1] + half[1]],
                    )  # fmt: skip
                )
    if kind in ("theta", "xyt"):
        lo = float(rng.choice([0.0, -90.0, 10.0]))
        axes.append(Axis("theta", lo, lo + float(rng.uniform(60, 180)), "deg", period=180.0))
        if rng.random() < 0.5:
            a, b = sorted(rng.uniform(axes[-1].low, axes[-1].high, 2))
            excluded.append(Rectangle(("theta",), [a], [min(b, a + 20)]))
    return ScanSpace(axes, excluded)


def test_suggestions_inside_limits_and_outside_excluded_regions():
    """Property-style: 200 random spaces, priors, tells and batch sizes."""
    rng = np.random.default_rng(12345)
    n_checked = 0
    for case in range(200):
        space = _random_case(rng)
        si = space.spatial_index
        span = float(np.min(space.high[si] - space.low[si])) if si else 1.0
        cfg = AgentConfig(
            probe_fwhm=span / 8 if si else None,
            max_step=span / 10 if (si and rng.random() < 0.5) else None,
            angle_step=1.0,
            max_candidates=256,
            cost_aware=bool(rng.random() < 0.5),
            acquisition=str(rng.choice(["ucb", "ei", "variance"])),
            surrogate=FAST,
        )
        agent = ImagingAgent(space, cfg, seed=case)
        if len(si) == 2:
            umap = rng.random((int(rng.integers(4, 30)), int(rng.integers(4, 30)))) ** 3
            x, y = space.axes[si[0]], space.axes[si[1]]
            agent.update_prior(umap, (x.low - 1, x.high + 1, y.low - 1, y.high + 1))
        if space.angle_index:
            ang = np.linspace(0, 180, 37)[:-1]
            agent.update_prior_1d(rng.random(36), ang)
        for _ in range(int(rng.integers(0, 4))):
            try:
                _, pts = agent.ask(int(rng.integers(1, 4)))
            except NoAdmissibleCandidateError:
                break
            for p in pts:
                agent.tell(p, {"gain": float(rng.random())})
            assert np.all(space.contains(pts)), (case, pts)
            n_checked += len(pts)
        try:
            _, pts = agent.ask(int(rng.integers(1, 5)))
        except NoAdmissibleCandidateError:
            continue
        assert np.all(pts >= space.low) and np.all(pts <= space.high), (case, space, pts)
        assert not np.any(space.in_excluded(pts)), (case, space, pts)
        assert not np.any(agent.gate.measured.near(pts)), "suggested an already measured point"
        n_checked += len(pts)
    assert n_checked > 300


def test_clip_then_verify_never_leaves_limits():
    space = ScanSpace([Axis("x", 0.1, 0.3), Axis("y", -1e-9, 1e-9)])
    pts = np.array([[0.1 - 1e-17, 0.0], [0.30000000000000004, 1e-9 + 1e-25], [0.2, -5.0]])
    clipped = space.clip(pts)
    assert np.all(space.in_limits(clipped))
    assert space.contains(np.array([[0.1, 1e-9]]))[0]
    assert not space.contains(np.array([[0.30000000000000004, 0.0]]))[0]


def test_travel_time_trapezoid_matches_simulated_motors_and_takes_slowest_axis():
    from synaps_agent.sim_devices.motors import trapezoid_move_time

    for d in (0.0, 0.01, 0.5, 3.0, 40.0):
        assert trapezoid_time(d, 2.0, 0.3) == pytest.approx(trapezoid_move_time(d, 2.0, 0.3))
    space = ScanSpace(
        [
            Axis("x", 0, 100, velocity=10.0, acceleration_time=0.5, settle_time=0.1),
            Axis("theta", 0, 180, period=180, velocity=30.0, acceleration_time=0.2),
        ]
    )
    t = space.travel_time([0, 0], [[50, 0], [0, 90], [50, 90], [0, 0]])
    assert t[0] == pytest.approx(50 / 10 + 0.5 + 0.1)
    assert t[1] == pytest.approx(90 / 30 + 0.2)
    assert t[2] == pytest.approx(max(t[0], t[1]))
    assert t[3] == 0.0


def test_failed_points_not_proposed_again_until_cleared():
    space = ScanSpace([Axis("x", 0, 10), Axis("y", 0, 10)])
    cfg = AgentConfig(lattice_step=1.0, cost_aware=False, surrogate=FAST)
    agent = ImagingAgent(space, cfg, seed=0)
    yy, xx = np.mgrid[0:20, 0:20] * 0.5
    agent.update_prior(np.exp(-((xx - 7) ** 2 + (yy - 3) ** 2) / 2), (0, 10, 0, 10))
    _, first = agent.ask(1)
    agent.record_failure(first[0], "motor stall")
    _, pts = agent.ask(3)
    assert np.min(np.linalg.norm(pts - first[0], axis=1)) > agent.tolerance[0]
    assert agent.report()["n_failures"] == 1
    assert agent.clear_failures() == 1
    _, again = agent.ask(1)
    np.testing.assert_array_equal(again, first)


def test_no_admissible_candidate_raises_clear_error():
    space = ScanSpace([Axis("x", 0, 1), Axis("y", 0, 1)])
    agent = ImagingAgent(space, AgentConfig(lattice_step=0.5, surrogate=FAST), seed=0)
    for p in agent.candidates(np.zeros((0, 2)), agent.rng):
        agent.record_failure(p, "beam lost")
    with pytest.raises(NoAdmissibleCandidateError, match="no admissible candidate"):
        agent.ask(1)
    blocked = ScanSpace(
        [Axis("x", 0, 1), Axis("y", 0, 1)], [Rectangle(("x", "y"), (-1, -1), (2, 2))]
    )
    with pytest.raises(NoAdmissibleCandidateError):
        ImagingAgent(blocked, AgentConfig(lattice_step=0.25)).ask(1)


def test_stopping_rule_budget_time_and_threshold_reasons():
    space = ScanSpace([Axis("x", 0, 10), Axis("y", 0, 10)])
    umap = np.full((10, 10), 0.1)
    umap[:, 5:] = 0.9  # high uncertainty on the right half
    agent = ImagingAgent(space, AgentConfig(surrogate=FAST), stopping=StoppingRule(max_exposures=3))
    agent.update_prior(umap, (0, 10, 0, 10))
    for i in range(3):
        assert agent.should_stop() == (False, "")
        agent.tell([i, 0], {"gain": 0.1})
    stop, reason = agent.should_stop()
    assert stop and reason.startswith("exposure budget")

    rule = StoppingRule(max_time=10.0)
    assert rule.check(1, 9.9, None) == (False, "")
    assert rule.check(1, 10.0, None)[1].startswith("time budget")
    agent = ImagingAgent(space, stopping=StoppingRule(max_time=5.0))
    agent.tell([1, 1], {"gain": 0.0, "time": 6.0})
    assert agent.should_stop()[1].startswith("time budget")

    left = Rectangle(("x", "y"), (0, 0), (4.9, 10))
    for roi, threshold, expect in ((left, 0.2, True), (None, 0.2, False), (None, 0.6, True)):
        agent = ImagingAgent(space, stopping=StoppingRule(uncertainty_threshold=threshold, roi=roi))
        agent.update_prior(umap, (0, 10, 0, 10))
        stop, reason = agent.should_stop()
        assert stop is expect, (roi, threshold)
        assert reason.startswith("uncertainty below threshold") == expect
