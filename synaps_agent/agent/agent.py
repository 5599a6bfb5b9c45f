"""The imaging agent: bluesky-adaptive style ``tell`` / ``ask`` / ``report`` around the GP
surrogate, physics-aware candidates, the safety gate and the stopping rule.

No Bluesky import here: a Bluesky-facing adapter calls these methods.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synaps_agent.agent.acquisition import ACQUISITIONS, order_by_travel, select_batch
from synaps_agent.agent.candidates import CandidateGenerator, FootprintCoverage
from synaps_agent.agent.safety import SafetyGate
from synaps_agent.agent.space import ScanSpace, device_value
from synaps_agent.agent.stopping import StoppingRule, mean_uncertainty
from synaps_agent.agent.surrogate import GainSurrogate, Posterior, SurrogateConfig

__all__ = ["STATE_VERSION", "AgentConfig", "ImagingAgent", "timing_from_detector"]

STATE_VERSION = "synaps-agent-state/1"


@dataclass
class AgentConfig:
    """Settings of :class:`ImagingAgent`.

    Parameters
    ----------
    acquisition : {"ucb", "ei", "variance"}
    beta : float
        UCB exploration weight (``mean + sqrt(beta) * std``).
    cost_aware : bool
        Score = acquisition / (travel time from the current position + exposure time +
        ``point_overhead``): information per second of beam time.
    exposure_time : float
        Seconds per exposure (cost model and the agent's clock).
    point_overhead : float
        Seconds each point costs besides its travel and its exposure, in the cost-aware
        score and the agent's own clock (:attr:`time_per_point`): what a step scan spends
        per point that the motors' kinematics and the exposure do not say (move
        completion, detector arming and readout, the plan's per-point work; typically
        0.05-0.3 s at a beamline). :func:`timing_from_detector` reads it (and
        ``exposure_time``) from a detector that states it, as the simulated detectors'
        ``readout_time`` does (0.15 s by default). Without it a short exposure makes the
        score pay for nearness alone: with the simulated beamline's 5 ms exposures a
        neighbouring point (0.14 s of travel) scored 5.5 times a point across the region
        of equal value. Measured on the ``autonomy`` benchmark's phantoms (96 px; development
        seeds 1-3 and 410-414 of both cases, 14 phantoms; fair IoU with the probe held,
        three engine seeds; the agent's margin over random and greedy at 12.5 / 25 /
        37.5 / 50 % of raster's exposures, 56 cells each), 0.15 s against 0: against
        random mean +0.033 (0: +0.028), behind by more than 0.005 in 3 cells (0: 7);
        against greedy +0.038 (+0.033), 6 cells (9); at 12.5 % +0.127 over random
        (+0.101); beam time for 312 exposures 73.9 s (72.6 s; the simulated clock then
        charged no readout and added up the axes of a move). Its worst cell, P-sparse
        412 at 25 % (-0.088 against random), is one where the scorer's engine seeds
        disagree (0.890, 0.767, 0.775). With the cost left out (``cost_aware=False``) the
        agent's IoU was about as good but its beam time 106 s; on the later clock (readout
        charged, the axes of a move together) and the recorded run's eight phantoms it was
        ahead by +0.031 ± 0.014 at 12.5 % of raster's exposures (level after) and took
        1.24-1.37 times the beam time for 50 % (docs/benchmarks.md, autonomy, 16:47 run,
        item 5): the default's case is beam time, not IoU per exposure. In the recorded
        benchmark run with it (docs/benchmarks.md, autonomy, 2026-12-06 15:09) P-sparse
        410 reached raster's final IoU - 0.02 at 25 % of raster's exposures, not 12.5 %
        as with 0: single cells move by up to 0.02 with any change of the scan path.
        Default 0.15.
    probe_fwhm : float or None
        Probe footprint FWHM in spatial units (prior integration, default spacings).
    max_step : float or None
        Ptychography overlap constraint: spatial candidates lie within ``max_step`` of a
        measured point (or on the seed lattice). ``None``: no constraint.
    lattice_step : float or None
        Fine candidate lattice spacing (default ``max_step / 2``, else ``0.3 * probe_fwhm``,
        else 1/64 of the smallest spatial span).
    seed_spacing : float or None
        Coarse seed lattice spacing (default ``4 * max_step`` when ``max_step`` is set).
    lattice_jitter : float
        Each point of the candidate lattices is moved once (seeded by the agent's seed)
        by up to ``lattice_jitter / 2`` of the lattice's spacing on each axis, as a raster
        is jittered (probe positions on a common grid can make ptychography converge to
        periodic artefacts). In ``[0, 1]``; the default 0 keeps regular lattices. 0.5 was
        measured on ``autonomy`` (96 px, 2026-12-06; agent's mean fair IoU over the four
        phantoms of each case at 12.5 / 25 / 37.5 / 50 % of raster's exposures): P-sparse
        0.812 / 0.910 / 0.911 / 0.889 against 0.793 / 0.908 / 0.912 / 0.915 regular,
        P-dense 0.553 / 0.788 / 0.792 / 0.800 against 0.586 / 0.783 / 0.801 / 0.804;
        random, which shares the candidates, moved as much. It removed a collapse seen with
        ``stitch_value`` 0.3 on P-dense 413 (fair IoU 0.60 at 78 exposures, 0.40-0.57 over
        the scorer's seeds at 156, a grid pattern in the phase; jittered 0.55 / 0.79)
        and closed P-sparse 410's gap at 12.5 % (0.903 against 0.764; random 0.912
        against 0.862), but was not better overall: within the score's spread.
    angle_step : float
        Candidate angular grid step (axis units).
    max_candidates : int
        Candidates scored per decision (seeded random subsample beyond).
    tolerance : dict or None
        Per-axis duplicate tolerance (default: ``Axis.tolerance``, else a quarter of the
        lattice step for spatial axes and half the angle step for angles).
    batch_min_distance : float
        Minimum distance between points of one batch, in tolerance units.
    coverage_weight : float
        Scan spaces of (x, y) alone, with ``probe_fwhm``: a candidate is also worth the
        fraction of its footprint (radius ``probe_fwhm / 2``) no measurement has seen yet
        times ``coverage_weight`` times the range of the acquisition over the candidates,
        and each pick of a batch counts as seen for the next
        (:class:`~synaps_agent.agent.candidates.FootprintCoverage`,
        :func:`~synaps_agent.agent.acquisition.select_batch`). Unmeasured area is where
        the segmentation is surely wrong. 0: the GP's acquisition alone. The default 5
        was chosen on the ``autonomy`` benchmark (96 px P-dense 411: at 25 % of raster's
        exposures 0.569 / 0.767 / 0.795 fair IoU with weights 1 / 3 / 5, random 0.772; 10:
        0.775; development seeds 1-3, mean at 25 %: 0.764 / 0.778 / 0.786 with 3 / 5 / 10,
        level at 50 %): below it a dense sample is under-covered; the larger the weight,
        the less the GP's acquisition decides. Must be >= 0.
    coverage_depth : int
        How many times a part of the region must be seen before the coverage term stops
        valuing it: a part seen ``k`` times is worth ``(depth - k) / depth``. The default
        1 values only what nothing has seen yet. Depth 2 (a second look worth half a
        first) was tried on the development seeds 1-3 of ``autonomy`` (96 px, weight 5;
        mean fair IoU at 12.5 / 25 / 37.5 / 50 % of raster's exposures): P-dense 0.550 /
        0.781 / 0.789 / 0.792 against depth 1's 0.633 / 0.778 / 0.784 / 0.789 (random
        0.537 / 0.686 / 0.750 / 0.789), P-sparse 0.860 / 0.920 / 0.919 / 0.922 against
        0.859 / 0.908 / 0.932 / 0.926: slower to cover a dense sample early, level later.
        On the check seeds 412-414 at 25 / 50 % its margins against random (mean +0.011,
        -0.025 to +0.112) were no better than depth 1's (mean +0.013). Must be an integer
        >= 1.
    stitch_value : float
        With the coverage term and ``max_step``: a measured point with no other measured
        point within ``max_step`` (its footprint overlaps none, as the seed lattice's, 4
        raster steps apart, do not) is *lonely*, and a candidate within ``max_step`` of a
        lonely point is also worth ``stitch_value`` of a fresh footprint: ptychography
        ties a footprint to the rest of the object through overlap, so stitching the
        seeds together across the region comes before finishing one corner
        (:meth:`FootprintCoverage.stitches`; a pick of a batch stitches its neighbours
        for the next picks). Measured on the ``autonomy`` benchmark with regular
        candidate lattices (``lattice_jitter`` 0; 96 px; fair IoU at 12.5 % of raster's
        exposures, just past the seed lattice), 0.3 against 0: P-sparse 410 0.884 against
        0.764 (random 0.862), P-dense 411 0.533 against 0.587 (random 0.468); development
        seeds 1-3, mean at 12.5 / 25 / 37.5 / 50 %: P-sparse 0.870 / 0.913 / 0.909 /
        0.918 against 0.859 / 0.908 / 0.932 / 0.926, P-dense 0.584 / 0.772 / 0.785 /
        0.787 against 0.633 / 0.778 / 0.784 / 0.789; on the check seeds 412-414 its
        margins against random fell (mean +0.004 against +0.023), those of P-dense from
        25 % on. Default 0: no stitching. Must be >= 0.
    spread_early : bool
        With the coverage term (``probe_fwhm``, a scan space of (x, y)): the points of one
        batch are kept at least ``sqrt(open area / batch size)`` apart (each pick's share of
        the part of the region no measurement has seen yet; ``batch_min_distance`` once
        that is smaller), so the first batches after a seed lattice see the whole sample
        instead of tiling the corner the travel-cheapest picks start from, and the spacing
        shrinks as the region fills. A batch the candidates cannot spread that far is
        chosen with ``batch_min_distance``. The spacing used is in each decision's
        ``candidates`` summary (``batch_spacing``, tolerance units). Measured on the
        ``autonomy`` benchmark (96 px; fair IoU with the probe held, three engine seeds;
        development seeds 1-3 and 410-414 of both cases, 14 phantoms; the agent's fair IoU
        minus random's and greedy's at 12.5 / 25 / 37.5 / 50 % of raster's exposures, 56
        cells each): against random, mean margin +0.028 (off: +0.016), behind by more
        than 0.005 in 7 cells (off: 7), by at most 0.011 (off: 0.033); against greedy
        +0.033 (off: +0.020), 9 cells (off: 6), by at most 0.027 (off: 0.108). At 12.5 %
        its mean lead over random is +0.101 (off: +0.054). Scored with the earlier
        refined-probe rPIE scorer, whose engine seeds disagreed by up to 0.2, it had
        looked worse than off at 37.5-50 % (docs/benchmarks.md, autonomy). Default True;
        False lets the travel-cheapest picks of a batch tile one patch.
    surrogate : SurrogateConfig
    """

    acquisition: str = "ucb"
    beta: float = 4.0
    cost_aware: bool = True
    exposure_time: float = 1.0
    point_overhead: float = 0.15
    probe_fwhm: float | None = None
    max_step: float | None = None
    lattice_step: float | None = None
    seed_spacing: float | None = None
    angle_step: float = 0.25
    max_candidates: int = 1024
    lattice_jitter: float = 0.0
    tolerance: dict[str, float] | None = None
    batch_min_distance: float = 1.0
    coverage_weight: float = 5.0
    coverage_depth: int = 1
    stitch_value: float = 0.0
    spread_early: bool = True
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)

    @property
    def time_per_point(self) -> float:
        """Seconds a point costs besides its travel: ``exposure_time + point_overhead``."""
        return self.exposure_time + self.point_overhead

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentConfig:
        d = dict(d)
        d["surrogate"] = SurrogateConfig(**d.get("surrogate", {}))
        return cls(**d)


def timing_from_detector(detector: Any) -> dict[str, float]:
    """The :class:`AgentConfig` timing fields a detector states.

    ``exposure_time`` from its ``exposure_time`` and ``point_overhead`` from its
    ``readout_time`` (ophyd signals or plain numbers); a field whose attribute the
    detector lacks is left out, so the config's default stands. Building the config
    from the detector keeps the agent's clock and cost model in step with the beamline.

    >>> class Detector:
    ...     exposure_time = 0.5
    >>> AgentConfig(**timing_from_detector(Detector())).time_per_point
    0.65
    """
    timing = {}
    for name, attribute in (("exposure_time", "exposure_time"), ("point_overhead", "readout_time")):
        value = device_value(detector, attribute)
        if value is not None:
            timing[name] = value
    return timing


class ImagingAgent:
    """Bayesian-optimization agent choosing where (x, y) and from which side (theta) to
    measure next.

    Parameters
    ----------
    space : ScanSpace
    config : AgentConfig, optional
    stopping : StoppingRule, optional
    seed : int
        Seed of every random choice; same seed + same tells => same suggestions.
    start_position : dict or array, optional
        Current motor position (for travel costs before the first ``tell``).

    Examples
    --------
    >>> agent = ImagingAgent(space, AgentConfig(probe_fwhm=2.0, max_step=0.8), seed=1)
    >>> agent.update_prior(uncertainty_map, extent=(0, 20, 0, 20))
    >>> docs, points = agent.ask(4)
    >>> agent.tell(points[0], {"gain": 0.12})
    """

    strategy = "agent"  # what the decision documents call this way of choosing

    def __init__(
        self,
        space: ScanSpace,
        config: AgentConfig | None = None,
        *,
        stopping: StoppingRule | None = None,
        seed: int = 0,
        start_position: Any | None = None,
    ) -> None:
        self.space = space
        self.config = config = config or AgentConfig()
        if config.acquisition not in ACQUISITIONS:
            raise ValueError(
                f"acquisition must be one of {ACQUISITIONS}, got {config.acquisition!r}"
            )
        if not config.coverage_weight >= 0:
            raise ValueError(
                f"coverage_weight must be >= 0, got {config.coverage_weight!r}"
            )
        depth = config.coverage_depth
        if isinstance(depth, bool) or int(depth) != depth or depth < 1:
            raise ValueError(f"coverage_depth must be an integer >= 1, got {depth!r}")
        if not config.stitch_value >= 0:
            raise ValueError(f"stitch_value must be >= 0, got {config.stitch_value!r}")
        for name in ("exposure_time", "point_overhead"):
            value = getattr(config, name)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (real and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.stopping = stopping or StoppingRule()
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        si = space.spatial_index
        if config.lattice_step is not None:
            step = config.lattice_step
        elif config.max_step is not None:
            step = config.max_step / 2
        elif config.probe_fwhm is not None:
            step = 0.3 * config.probe_fwhm
        elif si:
            step = float(np.min(space.high[si] - space.low[si])) / 64
        else:
            step = 1.0
        seed_spacing = config.seed_spacing
        if seed_spacing is None and config.max_step is not None:
            seed_spacing = 4 * config.max_step
        tol = np.empty(space.ndim)
        user_tol = config.tolerance or {}
        for i, ax in enumerate(space.axes):
            if ax.name in user_tol:
                tol[i] = float(user_tol[ax.name])
            elif ax.tolerance is not None:
                tol[i] = ax.tolerance
            else:
                tol[i] = 0.25 * step if ax.period is None else 0.5 * config.angle_step
        self.tolerance = tol
        self.candidates = CandidateGenerator(
            space,
            step,
            config.max_step,
            seed_spacing,
            config.angle_step,
            config.max_candidates,
            jitter=config.lattice_jitter,
            seed=self.seed,
        )
        self.gate = SafetyGate(space, tol)
        self.surrogate = GainSurrogate(space, config.probe_fwhm, config.surrogate)
        self.position: np.ndarray | None = (
            None if start_position is None else space.to_array(start_position)[0]
        )
        self.elapsed_time = 0.0
        self.n_asks = 0
        self.pending_X = np.zeros((0, space.ndim))
        self.pending_P = np.zeros((0, 2))
        self.uncertainty_map: np.ndarray | None = None
        self.extent: tuple[float, float, float, float] | None = None
        self.angle_prior: tuple[np.ndarray, np.ndarray] | None = None
        self.last_ask_latency: float | None = None

    # -- priors ------------------------------------------------------------------------------
    def update_prior(
        self, uncertainty_map: np.ndarray, extent: tuple[float, float, float, float]
    ) -> None:
        """Give the live segmentation uncertainty map (per pixel, e.g. predictive entropy).

        Parameters
        ----------
        uncertainty_map : array of shape ``(ny, nx)``
            Row ``i`` at ``y``, column ``j`` at ``x``; ``[0, 0]`` at ``(xmin, ymin)``.
        extent : (xmin, xmax, ymin, ymax)
            Outer pixel edges in stage coordinates (spatial axes in space order).

        Only the pixels whose centres lie within the motors' limits are kept: the map of a
        reconstruction reaches a probe's width beyond the scan region, where it stays
        uncertain however much is measured, and would draw every footprint that touches
        the region's border back there.
        """
        umap, extent = _crop_to_box(np.asarray(uncertainty_map, dtype=float),
                                    tuple(float(v) for v in extent), self.space)  # fmt: skip
        self.surrogate.set_prior_map(umap, extent)
        self.uncertainty_map = umap
        self.extent = extent

    def update_prior_1d(self, values: np.ndarray, angles: np.ndarray) -> None:
        """Give the prior over the rotation angle (e.g. the forward projection of the
        uncertainty map along the rays at each angle), interpolated periodically."""
        self.surrogate.set_prior_angles(values, angles)
        self.angle_prior = (np.array(values, dtype=float), np.array(angles, dtype=float))

    # -- tell --------------------------------------------------------------------------------
    def tell(self, x: Any, y: Mapping[str, Any]) -> dict[str, Any]:
        """Report a measurement.

        Parameters
        ----------
        x : dict or array of shape ``(d,)``
            The measured point.
        y : dict
            ``{"gain": float}`` (uncertainty removed by the measurement); optional
            ``"time"``: seconds actually spent (otherwise the travel and
            :attr:`AgentConfig.time_per_point` are charged). A point already recorded
            by :meth:`record_measured` was charged then and is not charged again.

        Returns
        -------
        dict
            A small document describing what was recorded (``"time"``: the seconds this
            call charged to the agent's clock).
        """
        p = self.space.to_array(x)
        if len(p) != 1:
            raise ValueError("tell takes one point; use tell_many")
        if "gain" not in y:
            raise ValueError(f"y must contain 'gain', got keys {sorted(y)}")
        gain = float(y["gain"])
        if not (math.isfinite(gain) and np.all(np.isfinite(p))):
            raise ValueError(f"non-finite point or gain: {p[0].tolist()}, {gain}")
        seconds = float(y["time"]) if "time" in y else None
        prior = self._pop_pending(p)
        self.surrogate.add(p, np.array([gain]), prior)
        dt = self._arrive(p[0], seconds)
        return {"point": self.space.to_dicts(p)[0], "gain": gain, "time": dt,
                "prior": prior[0].tolist(), "n_observations": self.surrogate.n}  # fmt: skip

    def tell_many(self, xs: Any, ys: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``tell`` for each ``(x, y)`` pair, in order."""
        pts = self.space.to_array(xs)
        if len(pts) != len(ys):
            raise ValueError(f"{len(pts)} points but {len(ys)} results")
        return [self.tell(p, y) for p, y in zip(pts, ys, strict=True)]

    def _pop_pending(self, p: np.ndarray) -> np.ndarray:
        """Prior snapshot taken when ``p`` was suggested, else the current prior at ``p``."""
        if len(self.pending_X):
            e = self.space.scaled_embedding(self.pending_X, self.tolerance)
            q = self.space.scaled_embedding(p, self.tolerance)
            d2 = np.sum((e - q) ** 2, axis=1)
            j = int(np.argmin(d2))
            if d2[j] <= 1.0:
                snap = self.pending_P[j : j + 1].copy()
                keep = np.arange(len(self.pending_X)) != j
                self.pending_X, self.pending_P = self.pending_X[keep], self.pending_P[keep]
                return snap
        return self.surrogate.prior_values(p)

    def record_measured(self, point: Any) -> None:
        """``point`` was measured (its gain may be told later): never propose it again,
        and move the agent's position and clock to it.

        Without this, a batch asked before the last one's gains arrive would repeat the
        points the gains are still pending for, and the next batch's travel would be
        reckoned (and the time budget counted) from the last point whose gain was told,
        not from where the stage is.
        """
        for p in self.space.to_array(point):
            self._arrive(p)

    def _arrive(self, point: np.ndarray, seconds: float | None = None) -> float:
        """Record a measured point and charge the agent's clock ``seconds`` (default: the
        travel from the current position + ``time_per_point``); return what was charged,
        0 for a point already measured (within tolerance)."""
        point = np.asarray(point, dtype=float).reshape(1, -1)
        if self.gate.measured.near(point)[0]:
            return 0.0
        if seconds is None:
            seconds = self.config.time_per_point
            if self.position is not None:
                seconds += float(self.space.travel_time(self.position, point)[0])
        self.gate.record_measured(point)
        self.position = point[0].copy()
        self.elapsed_time += seconds
        return seconds

    # -- failures / stopping -----------------------------------------------------------------
    def record_failure(self, point: Any, reason: str) -> None:
        """A move or exposure at ``point`` failed: never propose it again (within tolerance)
        unless :meth:`clear_failures` is called."""
        self.gate.record_failure(point, reason)

    def clear_failures(self, point: Any | None = None) -> int:
        """Forget recorded failures (all, or near ``point``); returns how many."""
        return self.gate.clear_failures(point)

    def current_uncertainty(self) -> float | None:
        """Mean uncertainty over the stopping rule's ROI (2D map), else the mean of the 1D
        angle prior, else ``None``."""
        if self.uncertainty_map is not None:
            names = tuple(self.space.names[i] for i in self.space.spatial_index)
            return mean_uncertainty(self.uncertainty_map, self.extent, self.stopping.roi, names)
        if self.angle_prior is not None:
            return float(np.mean(self.angle_prior[0]))
        return None

    def should_stop(self) -> tuple[bool, str]:
        """Evaluate the stopping rule: ``(stop, reason)``. The exposure budget counts
        every point measured (:meth:`record_measured` or :meth:`tell`), whether or not its
        gain has been told yet."""
        measured = len(self.gate.measured.points)
        return self.stopping.check(measured, self.elapsed_time, self.current_uncertainty())

    # -- ask ---------------------------------------------------------------------------------
    def ask(self, batch_size: int = 1) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Suggest the next ``batch_size`` points, ordered to minimise travel.

        Returns
        -------
        docs : list of dict
            One per point: the point, its acquisition value, predicted gain and std, travel
            time from the previous point, candidate score summary, acquisition name, GP
            hyperparameters and the current position.
        points : numpy.ndarray of shape ``(batch_size, d)``
            In travel order; may be shorter if fewer admissible candidates remain.

        Raises
        ------
        NoAdmissibleCandidateError
            When no admissible candidate remains.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        t0 = time.perf_counter()
        cfg = self.config
        sur = self.surrogate
        raw = self.candidates(self.gate.measured.points, self.rng)
        n_raw = len(raw)
        cands = self._admissible(raw)
        n_admissible = len(cands)
        cands = self.candidates.subsample(cands, self.rng)
        idx, values, predicted, summary = self._choose(cands, batch_size)
        order = order_by_travel(self.space, self.position, cands[idx])
        idx, values = idx[order], values[order]
        points = self.gate.finalize(cands[idx])
        prior = sur.prior_values(points)
        self.pending_X = np.concatenate([self.pending_X, points])[-1024:]
        self.pending_P = np.concatenate([self.pending_P, prior])[-1024:]
        self.n_asks += 1
        latency = time.perf_counter() - t0
        self.last_ask_latency = latency
        hyper = sur.hyperparameters()
        summary.update(n_generated=n_raw, n_admissible=n_admissible, n_scored=len(cands))
        position = None if self.position is None else self.space.to_dicts(self.position)[0]
        docs = []
        prev = self.position
        for k, (j, point) in enumerate(zip(idx, points, strict=True)):
            travel = 0.0 if prev is None else float(self.space.travel_time(prev, point)[0])
            prev = point
            docs.append({
                "point": self.space.to_dicts(point)[0],
                "strategy": self.strategy,
                "acquisition": cfg.acquisition,
                "cost_aware": cfg.cost_aware,
                "acquisition_value": float(values[k]),
                "predicted_gain": float(predicted[0][j]),
                "predicted_std": float(predicted[1][j]),
                "prior": prior[k].tolist(),
                "travel_time": travel,
                "batch_index": k,
                "batch_size": len(points),
                "candidates": dict(summary),
                "hyperparameters": hyper,
                "current_position": position,
                "n_observations": sur.n,
                "ask_index": self.n_asks,
                "latency_s": latency,
            })  # fmt: skip
        return docs, points

    def _admissible(self, raw: np.ndarray) -> np.ndarray:
        """The gate's admissible candidates among ``raw``, checking only a random
        ``2 * max_candidates`` of a large set (the gate's cost grows with the set; the
        scorer keeps ``max_candidates`` anyway) unless too few of those pass."""
        enough = self.config.max_candidates
        if len(raw) > 2 * enough:
            pick = np.sort(self.rng.choice(len(raw), 2 * enough, replace=False))
            cands = self.gate.filter(raw[pick])
            if len(cands) >= enough:
                return cands
        return self.gate.filter(raw)

    def _choose(
        self, cands: np.ndarray, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, Any]]:
        """Pick ``batch_size`` of the admissible candidates ``cands``.

        Returns
        -------
        indices, values : chosen rows of ``cands`` and their acquisition values
        predicted : (mean, std) of the predicted gain at every candidate
        summary : statistics of the scores (stored with each decision)
        """
        cfg, sur = self.config, self.surrogate
        if sur.needs_fit():
            sur.fit(self.rng)
        post = sur.posterior(cands)
        best_f = float(np.max(sur.y)) if sur.n else 0.0
        coverage = self._coverage()
        spacing = self._batch_spacing(coverage, batch_size)
        idx, values, summary = self._select(post, cands, batch_size, best_f, coverage, spacing)
        if spacing > cfg.batch_min_distance and len(idx) < min(batch_size, len(cands)):
            # the candidates could not spread the whole batch that far: a batch as usual
            spacing = float(cfg.batch_min_distance)
            idx, values, summary = self._select(
                post, cands, batch_size, best_f, self._coverage(), spacing
            )
        summary["batch_spacing"] = spacing
        return idx, values, (post.mean, post.std), summary

    def _select(
        self,
        post: Posterior,
        cands: np.ndarray,
        batch_size: int,
        best_f: float,
        coverage: FootprintCoverage | None,
        spacing: float,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """:func:`select_batch` with this agent's settings, no two picks closer than
        ``spacing`` (tolerance units)."""
        cfg = self.config
        return select_batch(
            post,
            cands,
            batch_size,
            space=self.space,
            acquisition=cfg.acquisition,
            beta=cfg.beta,
            best_f=best_f,
            cost_aware=cfg.cost_aware,
            start=self.position,
            exposure_time=cfg.time_per_point,
            embedding=lambda c: self.space.scaled_embedding(c, self.tolerance),
            min_distance=spacing,
            coverage=coverage,
            coverage_weight=cfg.coverage_weight,
        )

    def _batch_spacing(self, coverage: FootprintCoverage | None, batch_size: int) -> float:
        """Minimum distance between the points of one batch (tolerance units):
        ``batch_min_distance``, or with ``spread_early`` each pick's share of the open
        ground if that is larger."""
        cfg = self.config
        spacing = float(cfg.batch_min_distance)
        if not (cfg.spread_early and coverage is not None and batch_size > 1):
            return spacing
        share = math.sqrt(coverage.open_area() / batch_size)
        tolerance = float(np.mean(self.tolerance[self.space.spatial_index]))
        return max(spacing, share / tolerance)

    def _coverage(self) -> FootprintCoverage | None:
        """The footprints measured so far, for the coverage term of the acquisition
        (None where it does not apply: ``coverage_weight`` 0, no ``probe_fwhm``, or a scan
        space other than (x, y))."""
        cfg = self.config
        # a rotation axis besides (x, y): every angle is its own projection, and a
        # footprint seen at one angle is not seen at the others
        planar = len(self.space.spatial_index) == 2 and not self.space.angle_index
        if not (cfg.coverage_weight > 0 and cfg.probe_fwhm is not None and planar):
            return None
        return FootprintCoverage(
            self.space,
            cfg.probe_fwhm / 2,
            self.gate.measured.points,
            depth=cfg.coverage_depth,
            reach=cfg.max_step,
            stitch_value=cfg.stitch_value,
        )

    # -- report ------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Summary: GP hyperparameters, observation counts, gains, uncertainty, stop status."""
        sur = self.surrogate
        stop, reason = self.should_stop()
        return {
            "n_observations": sur.n,
            "n_failures": len(self.gate.failed.points),
            "n_asks": self.n_asks,
            "elapsed_time": self.elapsed_time,
            "position": None if self.position is None else self.space.to_dicts(self.position)[0],
            "hyperparameters": sur.hyperparameters(),
            "best_gain": float(np.max(sur.y)) if sur.n else None,
            "mean_gain": float(np.mean(sur.y)) if sur.n else None,
            "total_gain": float(np.sum(sur.y)),
            "mean_uncertainty": self.current_uncertainty(),
            "max_uncertainty": None
            if self.uncertainty_map is None
            else float(np.max(self.uncertainty_map)),
            "last_ask_latency_s": self.last_ask_latency,
            "stop": stop,
            "stop_reason": reason,
        }

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full state as ``{"meta": JSON-able dict, "arrays": {name: ndarray}}``."""
        arrays: dict[str, np.ndarray] = {
            f"s.{k}": np.asarray(v) for k, v in self.surrogate.state_arrays().items()
        }
        arrays["measured"] = self.gate.measured.points
        arrays["failed"] = self.gate.failed.points
        arrays["pending_X"], arrays["pending_P"] = self.pending_X, self.pending_P
        if self.uncertainty_map is not None:
            arrays["umap"] = self.uncertainty_map
            arrays["uextent"] = np.asarray(self.extent)
        if self.angle_prior is not None:
            arrays["aprior_values"], arrays["aprior_angles"] = self.angle_prior
        meta = {
            "version": STATE_VERSION,
            "strategy": self.strategy,
            "space": self.space.to_dict(),
            "config": asdict(self.config),
            "stopping": self.stopping.to_dict(),
            "seed": self.seed,
            "rng": self.rng.bit_generator.state,
            "position": None if self.position is None else self.position.tolist(),
            "elapsed_time": self.elapsed_time,
            "n_asks": self.n_asks,
            "failure_reasons": list(self.gate.failure_reasons),
            "surrogate": self.surrogate.state_meta(),
        }
        return {"meta": meta, "arrays": arrays}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (validated; ``ValueError`` when unusable)."""
        try:
            meta, arrays = state["meta"], state["arrays"]
            if meta.get("version") != STATE_VERSION:
                raise ValueError(
                    f"unknown agent state version {meta.get('version')!r} "
                    f"(expected {STATE_VERSION!r})"
                )
            if ScanSpace.from_dict(meta["space"]).to_dict() != self.space.to_dict():
                raise ValueError("state was saved for a different scan space")
            s_arrays = {k[2:]: v for k, v in arrays.items() if k.startswith("s.")}
            self.surrogate.load_state(s_arrays, meta["surrogate"])
            d = self.space.ndim
            measured = np.asarray(arrays["measured"], dtype=float).reshape(-1, d)
            failed = np.asarray(arrays["failed"], dtype=float).reshape(-1, d)
            if len(meta["failure_reasons"]) != len(failed):
                raise ValueError("failure reasons and failed points disagree")
            self.gate.measured.set(measured)
            self.gate.failed.set(failed)
            self.gate.failure_reasons = [str(r) for r in meta["failure_reasons"]]
            self.pending_X = np.asarray(arrays["pending_X"], dtype=float).reshape(-1, d)
            self.pending_P = np.asarray(arrays["pending_P"], dtype=float).reshape(-1, 2)
            if "umap" in arrays:
                self.uncertainty_map = np.asarray(arrays["umap"], dtype=float)
                self.extent = tuple(float(v) for v in arrays["uextent"])
            else:
                self.uncertainty_map, self.extent = None, None
            if "aprior_values" in arrays:
                self.angle_prior = (np.asarray(arrays["aprior_values"], dtype=float),
                                    np.asarray(arrays["aprior_angles"], dtype=float))  # fmt: skip
            else:
                self.angle_prior = None
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = meta["rng"]
            self.seed = int(meta["seed"])
            pos = meta["position"]
            self.position = None if pos is None else np.asarray(pos, dtype=float)
            self.elapsed_time = float(meta["elapsed_time"])
            self.n_asks = int(meta["n_asks"])
            self.stopping = StoppingRule.from_dict(meta["stopping"])
        except ValueError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"corrupted agent state: {type(exc).__name__}: {exc}") from None

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write the state as ``<path>.json`` (metadata) + ``<path>.npz`` (arrays); no pickle.

        Returns
        -------
        (json_path, npz_path)
        """
        base = _base(path)
        state = self.state_dict()
        buf = io.BytesIO()
        np.savez(buf, **state["arrays"])
        payload = buf.getvalue()
        meta = dict(state["meta"], arrays_sha256=hashlib.sha256(payload).hexdigest())
        jpath, npath = _paths(base)
        npath.write_bytes(payload)
        jpath.write_text(json.dumps(meta, indent=1))
        return jpath, npath

    @classmethod
    def _saved_class(cls, meta: Mapping[str, Any]) -> type[ImagingAgent]:
        """The class that saved ``meta`` (a baseline strategy saved by a baseline),
        if it is this class or a subclass of it."""
        from synaps_agent.agent.baselines import STRATEGIES

        saved = STRATEGIES.get(str(meta.get("strategy", cls.strategy)))
        if saved is None:
            raise ValueError(f"unknown strategy {meta.get('strategy')!r} in the agent state")
        return saved if issubclass(saved, cls) else cls

    @classmethod
    def load(cls, path: str | Path) -> ImagingAgent:
        """Rebuild an agent saved by :meth:`save` (as the strategy that saved it);
        ``ValueError`` on corrupted or unknown-version files."""
        base = _base(path)
        jpath, npath = _paths(base)
        try:
            meta = json.loads(jpath.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read agent state {jpath}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise ValueError(f"{jpath}: unknown agent state version {version!r}")
        try:
            payload = npath.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read agent arrays {npath}: {exc}") from None
        if hashlib.sha256(payload).hexdigest() != meta.get("arrays_sha256"):
            raise ValueError(f"{npath}: checksum mismatch (corrupted or from another save)")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            agent = cls._saved_class(meta)(
                ScanSpace.from_dict(meta["space"]),
                AgentConfig.from_dict(meta["config"]),
                stopping=StoppingRule.from_dict(meta["stopping"]),
                seed=int(meta["seed"]),
            )
        except Exception as exc:  # zip / format / content errors from a damaged file
            raise ValueError(f"corrupted agent state {base}: {type(exc).__name__}: {exc}") from None
        agent.load_state_dict({"meta": meta, "arrays": arrays})
        return agent


def _crop_to_box(
    umap: np.ndarray, extent: tuple[float, float, float, float], space: ScanSpace
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The rows and columns of ``umap`` whose pixel centres lie within the spatial limits
    of ``space`` (at least two along each axis), and their outer edges."""
    si = space.spatial_index
    if umap.ndim != 2 or len(si) != 2:
        return umap, extent
    ny, nx = umap.shape
    x0, x1, y0, y1 = extent
    dx, dy = (x1 - x0) / max(nx, 1), (y1 - y0) / max(ny, 1)
    xs, ys = x0 + (np.arange(nx) + 0.5) * dx, y0 + (np.arange(ny) + 0.5) * dy
    (lx, ly), (hx, hy) = space.low[si], space.high[si]
    cols = np.flatnonzero((xs >= lx - 1e-9 * abs(dx)) & (xs <= hx + 1e-9 * abs(dx)))
    rows = np.flatnonzero((ys >= ly - 1e-9 * abs(dy)) & (ys <= hy + 1e-9 * abs(dy)))
    if len(cols) < 2 or len(rows) < 2:
        return umap, extent
    c0, c1, r0, r1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    cropped = umap[r0:r1, c0:c1]
    return cropped, (x0 + c0 * dx, x0 + c1 * dx, y0 + r0 * dy, y0 + r1 * dy)


def _base(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".npz") else p


def _paths(base: Path) -> tuple[Path, Path]:
    return base.parent / (base.name + ".json"), base.parent / (base.name + ".npz")
