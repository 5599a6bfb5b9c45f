"""The Bayesian-optimization agent: surrogate, acquisition, candidates, safety, stopping.

Pure Python (numpy / torch / gpytorch); no Bluesky dependency in this layer.

>>> from synaps_agent.agent import Axis, ScanSpace, ImagingAgent, AgentConfig
>>> space = ScanSpace([Axis("x", 0, 20, "um"), Axis("y", 0, 20, "um")])
>>> agent = ImagingAgent(space, AgentConfig(probe_fwhm=2.0, max_step=0.8), seed=0)
"""

from synaps_agent.agent.acquisition import (
    ACQUISITIONS,
    expected_improvement,
    information_per_second,
    order_by_travel,
    path_time,
    posterior_variance,
    select_batch,
    upper_confidence_bound,
)
from synaps_agent.agent.agent import (
    STATE_VERSION,
    AgentConfig,
    ImagingAgent,
    timing_from_detector,
)
from synaps_agent.agent.baselines import (
    STRATEGIES,
    GreedyUncertaintyAgent,
    RandomAgent,
    make_strategy,
)
from synaps_agent.agent.candidates import CandidateGenerator, angle_grid, lattice
from synaps_agent.agent.safety import NoAdmissibleCandidateError, SafetyGate, UnsafePointError
from synaps_agent.agent.space import (
    Axis,
    Disc,
    Rectangle,
    ScanSpace,
    axis_from_motor,
    trapezoid_time,
)
from synaps_agent.agent.stopping import StoppingRule, mean_uncertainty
from synaps_agent.agent.surrogate import GainSurrogate, GridPriorMean, Posterior, SurrogateConfig

__all__ = [
    "ACQUISITIONS",
    "STATE_VERSION",
    "STRATEGIES",
    "AgentConfig",
    "Axis",
    "CandidateGenerator",
    "Disc",
    "GainSurrogate",
    "GreedyUncertaintyAgent",
    "GridPriorMean",
    "ImagingAgent",
    "NoAdmissibleCandidateError",
    "Posterior",
    "RandomAgent",
    "Rectangle",
    "SafetyGate",
    "ScanSpace",
    "StoppingRule",
    "SurrogateConfig",
    "UnsafePointError",
    "angle_grid",
    "axis_from_motor",
    "expected_improvement",
    "information_per_second",
    "lattice",
    "make_strategy",
    "mean_uncertainty",
    "order_by_travel",
    "path_time",
    "posterior_variance",
    "select_batch",
    "timing_from_detector",
    "trapezoid_time",
    "upper_confidence_bound",
]
