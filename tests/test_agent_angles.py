"""View selection that keeps the angular coverage of a tomography scan
(``synaps_agent.agent.angles``): the geometry, the slots, the rule and the agent using it."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import AgentConfig, Axis, ImagingAgent, ScanSpace
from synaps_agent.agent.angles import (
    CoverageAgent,
    angular_distance,
    angular_gaps,
    largest_gap_bound,
    spread_views,
    view_slots,
)

GRID = np.arange(0.0, 180.0, 0.25)  # the agent's candidate angles at angle_step 0.25


def test_angular_distance_and_gaps_wrap_around_the_half_turn():
    # 181 is the view at 1; 179 is 1 from 178 and 2 from 181
    np.testing.assert_allclose(angular_distance([1.0, 90.0, 179.0, 3.0], [178.0, 181.0]),
                               [0.0, 88.0, 1.0, 2.0])  # fmt: skip
    np.testing.assert_allclose(angular_distance([10.0, 100.0], []), [90.0, 90.0])
    gaps = angular_gaps([170.0, 10.0, 40.0])  # any order
    np.testing.assert_allclose(gaps, [30.0, 130.0, 20.0])  # after 10, 40, 170 (to 190)
    assert gaps.sum() == pytest.approx(180.0)
    np.testing.assert_allclose(angular_gaps([0.0, 90.0, 180.0]), [0.0, 90.0, 90.0])
    with pytest.raises(ValueError, match="at least one measured angle"):
        angular_gaps([])
    with pytest.raises(ValueError, match="measured angles must be finite"):
        angular_distance([0.0], [np.nan])
    with pytest.raises(ValueError, match="period must be positive"):
        angular_gaps([0.0], period=0.0)


def test_view_slots_fill_the_largest_gaps_first_and_split_them_evenly():
    slots, spacing = view_slots([0.0, 90.0], 2)
    np.testing.assert_allclose(np.sort(slots), [45.0, 135.0])
    np.testing.assert_allclose(spacing, [45.0, 45.0])
    # gaps of 30 and 150 deg: all three views into the 150 (37.5 apart) before the 30
    slots, spacing = view_slots([0.0, 30.0], 3)
    np.testing.assert_allclose(np.sort(slots), [67.5, 105.0, 142.5])
    np.testing.assert_allclose(spacing, 37.5)
    slots, spacing = view_slots([0.0, 30.0], 4)  # 150 / 5 = 30: now a tie, the 150 first
    assert np.sort(slots)[0] > 30.0 and spacing.max() == pytest.approx(30.0)
    assert view_slots([5.0], 0)[0].size == 0
    with pytest.raises(ValueError, match="remaining must be non-negative"):
        view_slots([0.0], -1)


def scan_with(scores_of, views, *, seeds=8, batch=4, **rule):
    """Every view of a scan of ``views`` views chosen by ``spread_views`` (``rule``) from
    uniform seeds, in batches, among the candidates farther than the duplicate tolerance
    (a quarter of the uniform spacing) from measured views."""
    tolerance = 0.25 * 180.0 / views
    measured = list(np.arange(seeds) * 180.0 / seeds)
    batches = []
    while len(measured) < views:
        free = angular_distance(GRID, measured) > tolerance
        scores = np.where(free, scores_of(GRID), -np.inf)
        idx = spread_views(scores, GRID, measured, min(batch, views - len(measured)),
                           min_separation=tolerance, **rule)  # fmt: skip
        assert len(idx) > 0
        batches.append(GRID[idx])
        measured += list(GRID[idx])
    return np.asarray(measured), batches


def peaked(center):
    """Scores peaked at the view ``center`` (deg), as uncertain views would be."""
    return lambda a: -angular_distance(a, [center])


@pytest.mark.parametrize("budget", [23, 45, 90, 135, 180])
def test_a_whole_scan_with_a_budget_ends_nearly_uniform_whatever_the_scores(budget):
    spacing = 180.0 / budget
    for scores_of in (peaked(60.0), peaked(150.0),
                      lambda a: np.random.default_rng(budget).random(a.shape)):  # fmt: skip
        theta, _ = scan_with(scores_of, budget, budget=budget)
        assert len(theta) == budget
        assert np.min(angular_gaps(theta)) > 0.25 * spacing  # never a near duplicate
        # uniform seeds: at most 1.25 uniform spacings (1.44 at 23 views from 8 seeds,
        # whose 22.5 deg gaps cannot hold 15 / 8 views each), plus the candidate grid
        limit = (1.44 if budget == 23 else 1.25) * spacing + 0.25
        assert np.max(angular_gaps(theta)) <= limit, (budget, np.max(angular_gaps(theta)))


def test_the_scores_decide_which_slots_come_first():
    """The uncertain side is measured first: the first batch lands next to the peak."""
    for center in (60.0, 150.0):
        _, batches = scan_with(peaked(center), 90, budget=90)
        assert np.all(angular_distance(batches[0], [center]) <= 8.0), batches[0]
        # and half of the scan is spent closer to the peak than a uniform order would be
        first_half = np.concatenate(batches[: len(batches) // 2])
        assert np.mean(angular_distance(first_half, [center])) < 0.8 * 45.0


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_without_a_budget_no_gap_exceeds_the_bound(ratio):
    for budget in (45, 90):
        theta, batches = scan_with(peaked(60.0), budget, ratio=ratio)
        assert np.max(angular_gaps(theta)) <= largest_gap_bound(budget, ratio) + 0.25
        # the scores still steer: the first pick is the best view in a largest gap
        assert angular_distance(batches[0][:1], [60.0])[0] <= 12.0
    # a rule that only follows the scores crowds around the peak instead
    crowd, _ = scan_with(peaked(60.0), 90, ratio=1e-6)
    assert np.max(angular_gaps(crowd)) > 3 * largest_gap_bound(90, 1.0)
    assert largest_gap_bound(90, 0.5) == pytest.approx(8.0)


def test_spread_views_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="scores .* and candidate angles .* differ"):
        spread_views(np.ones(3), GRID, [], 1)
    with pytest.raises(ValueError, match="ratio must be in"):
        spread_views(np.ones(2), [0.0, 1.0], [], 1, ratio=0.0)
    with pytest.raises(ValueError, match="slack and min_separation"):
        spread_views(np.ones(2), [0.0, 1.0], [], 1, slack=-1.0)
    with pytest.raises(ValueError, match="budget >= 1"):
        spread_views(np.ones(2), [0.0, 1.0], [], 1, budget=0)
    with pytest.raises(ValueError, match="candidate angles must be finite"):
        spread_views(np.ones(2), [0.0, np.inf], [], 1)
    with pytest.raises(ValueError, match="num_views >= 1"):
        largest_gap_bound(0, 0.5)
    # never a -inf / NaN scored candidate, and fewer views when candidates run out
    idx = spread_views(np.array([np.nan, 1.0, -np.inf]), [0.0, 60.0, 120.0], [], 3)
    assert idx.tolist() == [1]


def theta_space():
    return ScanSpace([Axis("theta", 0.0, 180.0, "deg", period=180.0, velocity=30.0)])


@pytest.mark.parametrize("cost_aware", [False, True])
def test_coverage_agent_steers_to_the_prior_and_keeps_the_coverage(cost_aware):
    """The real agent (GP, gate, travel order) asked batch after batch, told a gain that
    is largest near 120 deg: its first batch goes there, its scan ends nearly uniform
    (also when travel time divides the scores)."""
    budget = 60
    seeds = (150.0 + np.arange(6) * 30.0) % 180.0  # the last seed leaves theta at 120 deg
    config = AgentConfig(angle_step=0.25, cost_aware=cost_aware, beta=1.0,
                         tolerance={"theta": 0.25 * 180.0 / budget})  # fmt: skip
    angles = np.arange(0.0, 180.0, 1.0)
    prior = 1.0 + np.exp(-0.5 * (angular_distance(angles, [120.0]) / 10.0) ** 2)

    def run(agent):
        agent.update_prior_1d(prior, angles)
        for s in seeds:
            agent.record_measured([s])
        batches = []
        while len(agent.gate.measured.points) < budget:
            _, points = agent.ask(min(4, budget - len(agent.gate.measured.points)))
            batches.append(points[:, 0])
            for p in points:
                agent.record_measured(p)
                gain = float(np.interp(p[0] % 180, angles, prior, period=180.0)) - 1.0
                agent.tell(p, {"gain": gain})
        return agent.gate.measured.points[:, 0], batches

    theta, batches = run(CoverageAgent(theta_space(), config, seed=3, budget=budget))
    assert len(theta) == budget
    assert np.all(angular_distance(batches[0], [120.0]) <= 15.0), batches[0]
    assert np.max(angular_gaps(theta)) <= 1.25 * 180.0 / budget + 0.25
    if cost_aware:
        return
    # the plain agent, same prior and gains, leaves gaps several uniform spacings wide
    plain, _ = run(ImagingAgent(theta_space(), config, seed=3))
    assert np.max(angular_gaps(plain)) > 2 * np.max(angular_gaps(theta))


def test_coverage_agent_checks_its_settings_and_space():
    with pytest.raises(ValueError, match="one periodic"):
        CoverageAgent(ScanSpace([Axis("x", 0.0, 1.0, "mm")]))
    with pytest.raises(ValueError, match="ratio must be in"):
        CoverageAgent(theta_space(), coverage_ratio=2.0)
    with pytest.raises(ValueError, match="budget >= 1"):
        CoverageAgent(theta_space(), budget=0)
