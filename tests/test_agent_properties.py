"""Property-based tests (hypothesis) of the agent's safety: over random soft limits, excluded
regions, observations (anywhere inside the limits, excluded regions included), failures,
priors and acquisition settings, ``ImagingAgent.ask`` never returns a point outside the soft
limits, inside an excluded region, at a failed point or at an already measured point; when
nothing admissible is left it says so with ``NoAdmissibleCandidateError``.

Examples are derandomized (a fixed sequence, reproducible in CI) and the hypothesis database
is off (nothing written into the checkout).
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from synaps_agent.agent import (
    AgentConfig,
    Axis,
    Disc,
    ImagingAgent,
    NoAdmissibleCandidateError,
    Rectangle,
    ScanSpace,
    SurrogateConfig,
)

PROPERTY_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
QUICK_FIT = SurrogateConfig(fit_steps_initial=3, fit_steps=1)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def spatial_axis(draw, name: str) -> Axis:
    low = draw(st.floats(-1e3, 1e3, allow_nan=False))
    span = draw(st.floats(0.5, 200.0, allow_nan=False))
    return Axis(name, low, low + span, "um", velocity=draw(st.floats(0.5, 100.0)),
                settle_time=draw(st.floats(0.0, 0.5)))  # fmt: skip


@st.composite
def angle_axis(draw) -> Axis:
    low = draw(st.sampled_from([0.0, -90.0, 17.5]))
    span = draw(st.floats(20.0, 360.0))
    period = draw(st.sampled_from([180.0, 360.0]))
    return Axis("theta", low, low + span, "deg", period=period, velocity=30.0)


def fraction() -> st.SearchStrategy[float]:
    return st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def region(draw, axes: tuple[Axis, ...]):
    """A rectangle or disc over a random subset of the axes, possibly reaching past the limits
    (so it may touch or cover a limit)."""
    names = draw(st.lists(st.sampled_from([a.name for a in axes]), min_size=1, unique=True))
    chosen = [a for a in axes if a.name in names]
    centre = [a.low + draw(st.floats(-0.1, 1.1)) * a.span for a in chosen]
    if draw(st.booleans()):
        half = [draw(st.floats(0.01, 0.6)) * a.span for a in chosen]
        low = [c - h for c, h in zip(centre, half, strict=True)]
        high = [c + h for c, h in zip(centre, half, strict=True)]
        return Rectangle(tuple(a.name for a in chosen), low, high)
    radius = draw(st.floats(0.02, 0.5)) * min(a.span for a in chosen)
    return Disc(tuple(a.name for a in chosen), centre, radius)


@st.composite
def scan_case(draw):
    """A space, an agent configuration, observations, failures and whether to set priors."""
    kind = draw(st.sampled_from(["xy", "theta", "xy_theta"]))
    axes: list[Axis] = []
    if kind != "theta":
        axes += [draw(spatial_axis("x")), draw(spatial_axis("y"))]
    if kind != "xy":
        axes.append(draw(angle_axis()))
    regions = draw(st.lists(region(tuple(axes)), max_size=4))
    space = ScanSpace(axes, regions)
    si = space.spatial_index
    span = float(np.min(space.high[si] - space.low[si])) if si else 1.0
    config = AgentConfig(
        acquisition=draw(st.sampled_from(["ucb", "ei", "variance"])),
        beta=draw(st.floats(0.0, 25.0)),
        cost_aware=draw(st.booleans()),
        exposure_time=draw(st.floats(0.01, 5.0)),
        probe_fwhm=span * draw(st.floats(0.02, 0.3)) if si else None,
        max_step=span * draw(st.floats(0.03, 0.3)) if si and draw(st.booleans()) else None,
        angle_step=draw(st.sampled_from([0.5, 1.0, 3.0])),
        max_candidates=draw(st.sampled_from([16, 128, 512])),
        batch_min_distance=draw(st.floats(0.5, 4.0)),
        surrogate=QUICK_FIT,
    )
    n_obs = draw(st.integers(0, 25))
    unit = draw(st.lists(st.lists(fraction(), min_size=space.ndim, max_size=space.ndim),
                         min_size=n_obs, max_size=n_obs))  # fmt: skip
    observed = space.low + np.asarray(unit, dtype=float).reshape(-1, space.ndim) * (
        space.high - space.low
    )
    gains = draw(st.lists(st.floats(-1.0, 10.0), min_size=n_obs, max_size=n_obs))
    failures = draw(st.lists(st.lists(fraction(), min_size=space.ndim, max_size=space.ndim),
                             max_size=3))  # fmt: skip
    failed = space.low + np.asarray(failures, dtype=float).reshape(-1, space.ndim) * (
        space.high - space.low
    )
    batches = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    return {
        "space": space, "config": config, "observed": observed, "gains": gains,
        "failed": failed, "batches": batches, "priors": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)), "map_seed": draw(st.integers(0, 2**16)),
    }  # fmt: skip


def set_priors(agent: ImagingAgent, rng: np.random.Generator) -> None:
    """Random uncertainty map over (a region around) the spatial limits, random angle prior."""
    space = agent.space
    si = space.spatial_index
    if len(si) == 2:
        x, y = space.axes[si[0]], space.axes[si[1]]
        ny, nx = rng.integers(2, 24, size=2)
        extent = (x.low - 0.1 * x.span, x.high, y.low, y.high + 0.2 * y.span)
        agent.update_prior(rng.random((ny, nx)) ** 3, extent)
    if space.angle_index:
        angles = np.linspace(0.0, 180.0, 19)
        agent.update_prior_1d(rng.random(19), angles)


def assert_safe(agent: ImagingAgent, points: np.ndarray) -> None:
    space = agent.space
    assert points.ndim == 2 and points.shape[1] == space.ndim and len(points) >= 1
    assert np.all(np.isfinite(points))
    assert np.all(points >= space.low) and np.all(points <= space.high), points
    assert not np.any(space.in_excluded(points)), (space.excluded, points)
    assert not np.any(agent.gate.failed.near(points)), "suggested a failed point"
    assert not np.any(agent.gate.measured.near(points)), "suggested a measured point"


@PROPERTY_SETTINGS
@given(case=scan_case())
def test_ask_never_leaves_the_limits_or_enters_an_excluded_region(case):
    space = case["space"]
    agent = ImagingAgent(space, case["config"], seed=case["seed"])
    if case["priors"]:
        set_priors(agent, np.random.default_rng(case["map_seed"]))
    if len(case["observed"]):
        agent.tell_many(case["observed"], [{"gain": g} for g in case["gains"]])
    for point in case["failed"]:
        agent.record_failure(point, "simulated motor fault")
    for batch_size in case["batches"]:
        try:
            docs, points = agent.ask(batch_size)
        except NoAdmissibleCandidateError as exc:
            assert "no admissible candidate" in str(exc)
            event("no admissible candidate left")
            return
        event(f"suggested a batch ({len(space.excluded)} excluded regions)")
        assert len(points) <= batch_size and len(docs) == len(points)
        assert_safe(agent, points)
        # the same numbers go into the decision documents
        for doc, point in zip(docs, points, strict=True):
            assert [doc["point"][n] for n in space.names] == point.tolist()
        # measure them (closed loop): the next batch must avoid them too
        agent.tell_many(points, [{"gain": float(i)} for i in range(len(points))])


@PROPERTY_SETTINGS
@given(
    low=st.floats(-100, 100),
    span=st.floats(1e-6, 100),
    values=st.lists(finite, min_size=1, max_size=20),
)
def test_gate_finalize_clips_into_limits_or_refuses(low, span, values):
    """Whatever a (buggy) selection hands to the final gate, it comes out inside the limits or
    is refused with ``UnsafePointError``."""
    from synaps_agent.agent.safety import SafetyGate, UnsafePointError

    space = ScanSpace([Axis("x", low, low + span)], [Rectangle(("x",), [low], [low + span / 4])])
    gate = SafetyGate(space, np.array([span / 1000]))
    try:
        out = gate.finalize(np.asarray(values, dtype=float)[:, None])
    except UnsafePointError as exc:
        assert "excluded" in str(exc) or "non-finite" in str(exc)
        return
    assert np.all(space.contains(out))
