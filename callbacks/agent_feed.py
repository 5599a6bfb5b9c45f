"""The agent's view of the experiment: priors from the live segmentation, gains from
how much each measurement reduced the uncertainty where it looked.

:class:`AgentFeed` sits between the adaptive plan and the
:class:`~synaps_agent.agent.ImagingAgent`. The plan calls :meth:`AgentFeed.measured` after
each exposure and :meth:`AgentFeed.ask` for the next batch. The feed reads the latest
uncertainty map (from :class:`~synaps_agent.callbacks.segmentation.LiveSegmentation`, or
any callable returning ``(map, extent)``), gives it to the agent as prior, and tells the
agent, for each measured point once a newer map exists, the *gain*: the mean uncertainty
in the probe's footprint before the measurement minus after. Each decision is emitted as
an event of an analysis run (stream ``decisions``), so it is stored and reproducible.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analysis import AnalysisRun, Subscriber

__all__ = ["AgentFeed", "FallbackFeed", "footprint_mean", "view_uncertainty"]

logger = logging.getLogger("synaps_agent.callbacks")

UncertaintySource = Callable[[], tuple[np.ndarray, tuple[float, float, float, float]] | None]
ViewPrior = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def footprint_mean(
    uncertainty: np.ndarray,
    extent: tuple[float, float, float, float],
    point: tuple[float, float],
    radius: float,
) -> float:
    """Mean of ``uncertainty`` within ``radius`` of ``point`` (stage units).

    ``uncertainty[0, 0]`` sits at ``(xmin, ymin)``; rows run along y. Points whose
    footprint misses the map count as fully uncertain (1.0).
    """
    ny, nx = uncertainty.shape
    xmin, xmax, ymin, ymax = extent
    dx, dy = (xmax - xmin) / nx, (ymax - ymin) / ny
    xs = xmin + (np.arange(nx) + 0.5) * dx
    ys = ymin + (np.arange(ny) + 0.5) * dy
    inside = (xs[None, :] - point[0]) ** 2 + (ys[:, None] - point[1]) ** 2 <= radius**2
    if not inside.any():
        return 1.0
    return float(uncertainty[inside].mean())


def view_uncertainty(uncertainty: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """How much uncertainty the rays of each view cross: the forward projection of the
    uncertainty map (a slice of the sample, rows along y, columns along x, in the
    reconstruction's frame) at each angle, as the root mean square over detector pixels of
    the mean uncertainty along a ray.

    Every view's rays cross the whole slice, so the *sum* of a projection is the same at
    every angle; its root mean square is highest for the views whose rays run along the
    uncertain structures (and so resolve them best). A map of ones gives about 1.
    """
    from synaps_agent.recon.tomo import forward_project

    umap = np.asarray(uncertainty, dtype=np.float32)
    if umap.ndim != 2 or not np.all(np.isfinite(umap)):
        raise ValueError(f"the uncertainty map must be a finite 2D array, got {umap.shape}")
    rays = forward_project(umap[None], np.asarray(angles_deg, dtype=float))[:, 0, :]
    return np.sqrt(np.mean((rays / umap.shape[0]) ** 2, axis=1)).astype(float)


@dataclass
class _Pending:
    point: np.ndarray
    before: float | None
    version: int
    time: float


class AgentFeed:
    """Connect a live uncertainty map to an agent.

    Parameters
    ----------
    agent : ImagingAgent
        Has ``update_prior``, ``tell``, ``ask``, ``record_measured``, ``record_failure``,
        ``should_stop``, ``report``.
    uncertainty : callable
        Returns the latest ``(map, extent)`` or ``None`` (e.g.
        ``LiveSegmentation.uncertainty_for_agent``).
    footprint_radius : float, optional
        Radius (stage units) over which a measurement is credited with reducing
        uncertainty (about half the probe's FWHM); needed when the agent moves in x, y.
        A rotation-only agent (tomography) is credited with the uncertainty along its
        view's rays instead (:func:`view_uncertainty`), and gets their forward projection
        over all angles as its prior; the map is then a slice of the sample.
    sink : callable, optional
        Receives the decision documents (an analysis run linked to the raw run).
    view_prior : callable, optional
        For a rotation-only agent: ``view_prior(slice, view_angles, measured_angles)``
        returns the prior over ``view_angles`` (degrees) given the latest uncertainty
        slice and the angles measured so far; recomputed before every decision. Default:
        the forward projection of the slice (:func:`view_uncertainty`).
    state_path : path, optional
        The agent's state is saved there (``<path>.json`` + ``<path>.npz``) after every
        decision and when the scan ends, so a new session can go on from it
        (:meth:`resume`). A failed save is logged; the scan goes on.
    map_frames : callable, optional
        Returns how many exposures the latest uncertainty map reflects (e.g.
        ``LiveSegmentation.frames_in_map``). With it, :meth:`map_is_current` says whether
        the map has caught up with every exposure measured in this run, and the adaptive
        plans wait for that before each decision (bounded by their ``map_timeout``), so
        the same seed gives the same scan whatever the machine's load.
    """

    def __init__(
        self,
        agent,
        uncertainty: UncertaintySource,
        *,
        footprint_radius: float | None = None,
        sink: Subscriber | None = None,
        state_path: str | Path | None = None,
        view_prior: ViewPrior | None = None,
        map_frames: Callable[[], int] | None = None,
    ) -> None:
        if agent.space.spatial_index and not (footprint_radius or 0) > 0:
            raise ValueError(
                f"footprint_radius must be positive for a spatial scan, got {footprint_radius}"
            )
        self.agent = agent
        self.uncertainty = uncertainty
        self.footprint_radius = float(footprint_radius or 0.0)
        self.sink = sink
        self.view_prior = view_prior
        self.map_frames = map_frames
        #: exposures measured in the current run (what an up-to-date map reflects)
        self.exposures_measured = 0
        #: decisions taken on a map that had not caught up (the plan's wait timed out):
        #: ``(decision, frames in the map, exposures measured, seconds waited)``
        self.stale_decisions: list[tuple[int, int, int, float]] = []
        self.measured_angles: list[float] = []
        self.state_path = None if state_path is None else Path(state_path)
        self.saves = 0
        self.analysis: AnalysisRun | None = None
        self.decisions = 0
        self.told = 0
        self.untold = 0  # measured before the first map: no gain to learn from
        #: (point, reason) of every exposure taken again because it saw no beam
        self.remeasurements: list[tuple[np.ndarray, str]] = []
        self._pending: list[_Pending] = []
        self._last_map: object | None = None  # kept alive, so `is` cannot be fooled
        self._version = 0
        self._current: tuple[np.ndarray, tuple] | None = None
        space = agent.space
        if space.angle_index:  # the views whose rays the prior over theta is computed for
            period = space.axes[space.angle_index[0]].period or 360.0
            self._view_angles = np.linspace(0.0, period, 181)[:-1]
            self._views = np.ones_like(self._view_angles)
        self._lock = threading.Lock()

    @classmethod
    def resume(
        cls, state_path: str | Path, uncertainty: UncertaintySource, **kwargs
    ) -> AgentFeed:
        """A feed around the agent saved at ``state_path`` (by a feed with that
        ``state_path``, e.g. in a session that crashed), which keeps saving there.

        Raises ``ValueError`` if the state is missing, damaged or of an unknown version.
        """
        from synaps_agent.agent import ImagingAgent

        return cls(ImagingAgent.load(state_path), uncertainty, state_path=state_path, **kwargs)

    def save_state(self) -> bool:
        """Save the agent's state to ``state_path`` (if set); ``False`` if that failed."""
        if self.state_path is None:
            return False
        try:
            self.agent.save(self.state_path)
        except Exception as exc:  # noqa: BLE001 - a full disk must not end the scan
            logger.warning("could not save the agent state to %s: %r", self.state_path, exc)
            return False
        self.saves += 1
        return True

    def already_done(self, points) -> np.ndarray:
        """Mask of ``points`` the agent has measured or seen fail (e.g. the seeds of a
        scan that is resumed from a saved state)."""
        gate = self.agent.gate
        p = self.agent.space.to_array(points)
        return gate.measured.near(p) | gate.failed.near(p)

    @property
    def region(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """``((xmin, xmax), (ymin, ymax))`` the agent may propose in, if it is 2D."""
        space = getattr(self.agent, "space", None)
        index = getattr(space, "spatial_index", [])
        if space is None or len(index) < 2:
            return None
        x, y = (space.axes[i] for i in index[:2])
        return (float(x.low), float(x.high)), (float(y.low), float(y.high))

    # -- the run ------------------------------------------------------------------------
    def open(self, raw_uid: str, parameters: dict | None = None) -> None:
        """Start the decisions' analysis run for the raw run ``raw_uid``."""
        self.exposures_measured = 0  # the run's reconstruction starts from nothing
        if self.sink is not None:
            self.analysis = AnalysisRun(
                self.sink,
                raw_uid=raw_uid,
                processor="agent",
                parameters={"footprint_radius": self.footprint_radius, **(parameters or {})},
            )

    def close(self, reason: str) -> None:
        """Tell the gains that can still be told, save the state and close the decisions'
        run."""
        self.refresh()
        self.save_state()
        if self.analysis is not None:
            self.analysis.event(
                "summary",
                {
                    "reason": reason,
                    "report": _json(self.agent.report()),
                    "told": self.told,
                    "untold": self.untold,
                    "decisions": self.decisions,
                },
            )
            self.analysis.close(reason=reason)
            self.analysis = None

    # -- from the plan ------------------------------------------------------------------
    def frames_in_map(self) -> int | None:
        """Exposures the latest map reflects (``None`` without ``map_frames``)."""
        return None if self.map_frames is None else int(self.map_frames())

    def map_is_current(self) -> bool:
        """Whether the latest map reflects every exposure measured in this run (always
        true without ``map_frames``: nothing to wait for)."""
        frames = self.frames_in_map()
        return frames is None or frames >= self.exposures_measured

    def map_wait_timed_out(self, waited: float) -> None:
        """The plan waited ``waited`` s for the map to catch up and goes on with the
        latest one: logged, kept in :attr:`stale_decisions` and stored in the decisions'
        run (stream ``stale_maps``)."""
        frames = self.frames_in_map()
        frames = -1 if frames is None else frames
        record = (self.decisions + 1, frames, self.exposures_measured, float(waited))
        self.stale_decisions.append(record)
        logger.warning(
            "decision %d: the uncertainty map reflects %d of %d exposures after %.1f s; "
            "going on with it",
            *record,
        )
        if self.analysis is not None:
            self.analysis.event(
                "stale_maps",
                {"decision": record[0], "map_frames": frames,
                 "exposures": self.exposures_measured, "waited_s": float(waited)},
            )  # fmt: skip

    def refresh(self) -> bool:
        """Take a newer uncertainty map if there is one; tell the gains it reveals."""
        latest = self.uncertainty()
        if latest is None:
            return False
        umap, extent = latest
        with self._lock:
            if umap is self._last_map:
                return False
            self._last_map = umap
            self._version += 1
            self._current = (np.asarray(umap, dtype=float), tuple(extent))
            space = self.agent.space
            if space.spatial_index:
                self.agent.update_prior(self._current[0], self._current[1])
            if space.angle_index:
                self._views = view_uncertainty(self._current[0], self._view_angles)
            ready = [p for p in self._pending if p.version < self._version]
            self._pending = [p for p in self._pending if p.version >= self._version]
        for pending in ready:
            if pending.before is None:  # measured before any map: nothing to compare with
                self.untold += 1
                continue
            after = self._uncertainty_at(pending.point)
            self.agent.tell(pending.point, {"gain": max(pending.before - after, 0.0)})
            self.told += 1
        return True

    def _uncertainty_at(self, point: np.ndarray) -> float:
        """The uncertainty a measurement at ``point`` looks at: in the probe's footprint
        (spatial axes), else along the view's rays (a rotation alone)."""
        space = self.agent.space
        if space.spatial_index:
            xy = tuple(point[i] for i in space.spatial_index[:2])
            return footprint_mean(*self._current, xy, self.footprint_radius)
        period = space.axes[space.angle_index[0]].period or 360.0
        angle = point[space.angle_index[0]]
        return float(np.interp(angle % period, self._view_angles, self._views, period=period))

    def measured(self, point) -> None:
        """Record that ``point`` was just measured; its gain is told after the next map.

        Points measured before the first map (the seeds) are never told a gain: there is
        no uncertainty before them to compare with (taking 1.0 would credit them with
        ``1 - after``, i.e. teach the agent that the *certain* regions pay).
        """
        point = np.asarray(point, dtype=float).ravel()
        self.exposures_measured += 1
        self.agent.record_measured(point)  # not proposed again while its gain is pending
        before = None if self._current is None else self._uncertainty_at(point)
        if self.agent.space.angle_index:
            self.measured_angles.append(float(point[self.agent.space.angle_index[0]]))
        with self._lock:
            self._pending.append(_Pending(point, before, self._version, time.time()))

    def failed(self, point, reason: str) -> None:
        """A move or exposure at ``point`` failed: the agent will not propose it again."""
        self.agent.record_failure(np.asarray(point, dtype=float), reason)
        if self.analysis is not None:
            self.analysis.event(
                "failures", {"point": np.asarray(point, dtype=float), "reason": reason}
            )

    def remeasured(self, point, reason: str) -> None:
        """The exposure at ``point`` saw no beam and was taken again: recorded in
        :attr:`remeasurements` and in the decisions' run (stream ``remeasurements``)."""
        point = np.asarray(point, dtype=float)
        self.remeasurements.append((point, reason))
        if self.analysis is not None:
            self.analysis.event("remeasurements", {"point": point, "reason": reason})

    def ask(self, batch_size: int) -> np.ndarray:
        """The next points (travel-ordered), after taking the newest map into account."""
        self.refresh()
        self._update_view_prior()
        docs, points = self.agent.ask(batch_size)
        frames = self.frames_in_map()
        frames = -1 if frames is None else frames
        self.decisions += 1
        self.save_state()
        if self.analysis is not None:
            for doc, point in zip(docs, np.asarray(points, dtype=float), strict=False):
                self.analysis.event(
                    "decisions",
                    {
                        "decision": self.decisions,
                        "point": point,
                        "details": _json(doc),
                        "pending": len(self._pending),
                        "told": self.told,
                        "map_frames": frames,
                    },
                )
        return np.asarray(points, dtype=float)

    def _update_view_prior(self) -> None:
        """Give a rotation-only agent its prior over the views for the next decision."""
        if not self.agent.space.angle_index or self._current is None:
            return
        if self.view_prior is None:
            prior = self._views
        else:
            prior = np.asarray(
                self.view_prior(
                    self._current[0], self._view_angles, np.asarray(self.measured_angles)
                ),
                dtype=float,
            )
        self.agent.update_prior_1d(prior, self._view_angles)

    def should_stop(self) -> tuple[bool, str]:
        """The agent's stopping rule."""
        return self.agent.should_stop()


def _json(value) -> str:
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


class FallbackFeed:
    """A feed that finishes the scan on a planned pattern when the one it wraps fails.

    Wraps any feed of the adaptive plans (:class:`AgentFeed`, or another object with the
    same methods). While the wrapped feed works, every call goes to it. The first call
    that raises, or an ``ask`` that does not answer within ``ask_timeout`` seconds (the
    agent hangs), switches the scan to ``pattern``: from then on the wrapped feed is no
    longer called (but for a best-effort ``close``), ``ask`` returns the pattern's points
    not measured yet, in the planned order, and the scan stops when the pattern is
    complete (or at the plan's budget). The reason is logged, kept in :attr:`fell_back`
    and ends the run's stop reason, so the raw run says the agent was gone.

    Parameters
    ----------
    feed
        The feed to wrap.
    pattern : (n, d) array_like
        The planned pattern, one column per axis of the agent's space (e.g.
        ``raster_positions(...)`` for x, y; angles as ``(n, 1)`` for theta).
    ask_timeout : float, optional
        Seconds an ``ask`` may take; ``None``: no limit (only failures fall back). A hung
        ask is left running on its daemon thread and never asked again.
    """

    def __init__(self, feed, pattern, *, ask_timeout: float | None = None) -> None:
        from synaps_agent.plans.patterns import checked_pattern

        space = getattr(getattr(feed, "agent", None), "space", None) or feed.space
        if ask_timeout is not None and not ask_timeout > 0:
            raise ValueError(f"ask_timeout must be positive, got {ask_timeout!r}")
        self.feed = feed
        self.pattern = checked_pattern(pattern, space.ndim, "FallbackFeed pattern")
        self.ask_timeout = ask_timeout
        #: why the scan left the wrapped feed, once it did
        self.fell_back: str | None = None
        self.measured_points: list[np.ndarray] = []
        self.failures = 0
        self._budget: int | None = None

    # -- the guard
    def _call(self, method: str, *args, default=None):
        """``feed.method(*args)`` unless fallen back; a failure falls back."""
        if self.fell_back is not None:
            return default
        function = getattr(self.feed, method, None)
        if function is None:
            return default
        try:
            return function(*args)
        except Exception as exc:  # noqa: BLE001 - any failure of the analysis side
            self._fall_back(f"the agent feed failed in {method}: {exc!r}")
            return default

    def _fall_back(self, why: str) -> None:
        self.fell_back = f"{why}; fell back to the planned pattern"
        logger.warning(self.fell_back)

    def remaining(self) -> np.ndarray:
        """The pattern's points not measured yet, in the planned order."""
        from synaps_agent.plans.patterns import unmeasured_points

        return unmeasured_points(self.pattern, self.measured_points)

    # -- the plan's calls
    @property
    def region(self):
        return getattr(self.feed, "region", None)

    def already_done(self, points) -> np.ndarray:
        done = self._call("already_done", points)
        return np.zeros(len(points), dtype=bool) if done is None else done

    def open(self, raw_uid: str, parameters: dict | None = None) -> None:
        self._budget = (parameters or {}).get("max_exposures")
        self._call("open", raw_uid, parameters)

    def measured(self, point) -> None:
        self.measured_points.append(np.asarray(point, dtype=float).ravel())
        self._call("measured", point)

    def failed(self, point, reason: str) -> None:
        self.failures += 1
        self._call("failed", point, reason)

    def remeasured(self, point, reason: str) -> None:
        self._call("remeasured", point, reason)

    def map_is_current(self) -> bool:
        return bool(self._call("map_is_current", default=True))

    def map_wait_timed_out(self, waited: float) -> None:
        self._call("map_wait_timed_out", waited)

    def ask(self, batch_size: int) -> np.ndarray:
        """The wrapped feed's next points, or the pattern's once fallen back."""
        if self.fell_back is None:
            points = self._ask_within_timeout(batch_size)
            if self.fell_back is None:
                return np.asarray(points, dtype=float)
        return self.remaining()[: int(batch_size)]

    def _ask_within_timeout(self, batch_size: int):
        """The wrapped feed's answer, asked on a worker thread that is waited for at most
        ``ask_timeout`` s (for ever if None); None after falling back."""
        answer: dict = {}

        def work() -> None:
            try:
                answer["points"] = self.feed.ask(batch_size)
            except Exception as exc:  # noqa: BLE001 - reported below
                answer["error"] = exc

        worker = threading.Thread(target=work, name="synaps-agent-ask", daemon=True)
        worker.start()
        worker.join(self.ask_timeout)
        if worker.is_alive():
            self._fall_back(f"the agent did not answer within {self.ask_timeout:g} s")
        elif "error" in answer:
            self._fall_back(f"the agent feed failed in ask: {answer['error']!r}")
        return answer.get("points")

    def should_stop(self) -> tuple[bool, str]:
        if self.fell_back is None:
            answer = self._call("should_stop")
            if self.fell_back is None:
                return answer
        if len(self.remaining()) == 0:
            return True, f"{self.fell_back}; the planned pattern is complete"
        if self._budget is not None and len(self.measured_points) + self.failures >= self._budget:
            return True, f"{self.fell_back}; exposure budget of the plan reached"
        return False, ""

    def close(self, reason: str) -> None:
        """Close the wrapped feed (best effort once fallen back: it may be broken)."""
        if self.fell_back is not None:
            reason = f"{reason} ({self.fell_back})"
        try:
            self.feed.close(reason)
        except Exception as exc:  # noqa: BLE001 - the scan's data is safe; report only
            logger.warning("closing the agent feed failed: %r", exc)
