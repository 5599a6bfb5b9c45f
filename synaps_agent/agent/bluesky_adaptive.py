"""The imaging agent as a bluesky-adaptive ``Optimizer``.

bluesky-adaptive's plans (``bluesky_adaptive.plans.optimize``) drive any object with
``suggest`` / ``ingest`` (and, optionally, ``should_stop``, ``register_failures``,
``checkpoint``). :class:`AgentOptimizer` gives :class:`~synaps_agent.agent.ImagingAgent`
that face, so a facility already using bluesky-adaptive can swap it in. No import of
bluesky-adaptive is needed here: its protocols are structural.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AgentOptimizer"]

ID_KEY = "_id"


class AgentOptimizer:
    """Wrap an :class:`~synaps_agent.agent.ImagingAgent` for bluesky-adaptive.

    Parameters
    ----------
    agent : ImagingAgent
        The agent; its scan space's axes are, in order, the actuators named in ``names``.
    names : sequence of str
        Actuator (motor) names in the order of the agent's axes, e.g.
        ``["stage_x", "stage_y"]``: suggestions are ``{name: value, "_id": ...}``.
    objective : str
        Key of the outcome the agent learns from (its "gain").
    checkpoint_path : path, optional
        Where :meth:`checkpoint` saves the agent's state (JSON + NPZ, no pickle).
    """

    def __init__(
        self,
        agent: Any,
        names: Sequence[str],
        *,
        objective: str = "gain",
        checkpoint_path: str | Path | None = None,
    ) -> None:
        if len(names) != agent.space.ndim:
            raise ValueError(f"{len(names)} names for a {agent.space.ndim}-axis scan space")
        self.agent = agent
        self.names = list(names)
        self.objective = objective
        self.checkpoint_path = checkpoint_path
        self._ids = itertools.count()
        self._suggested: dict[str, np.ndarray] = {}
        self._observed: list[tuple[str, dict, dict]] = []

    def suggest(self, num_points: int | None = None) -> list[dict]:
        """The agent's next points, as ``{name: value, "_id": id}``."""
        _, points = self.agent.ask(int(num_points or 1))
        suggestions = []
        for point in np.asarray(points, dtype=float):
            uid = f"synaps-{next(self._ids)}"
            self._suggested[uid] = point
            suggestions.append(
                {**dict(zip(self.names, map(float, point), strict=True)), ID_KEY: uid}
            )
        return suggestions

    def ingest(self, points: Sequence[Mapping]) -> None:
        """Tell the agent the outcomes (points suggested by us, or given by hand)."""
        for outcome in points:
            if self.objective not in outcome:
                raise ValueError(f"outcome {dict(outcome)} has no {self.objective!r}")
            uid = outcome.get(ID_KEY)
            if uid in self._suggested:
                point = self._suggested.pop(uid)
            else:
                missing = [n for n in self.names if n not in outcome]
                if missing:
                    raise ValueError(f"outcome {uid!r} is not ours and lacks {missing}")
                point = np.array([float(outcome[n]) for n in self.names])
            self.agent.tell(point, {"gain": float(outcome[self.objective])})
            self._observed.append(
                (
                    str(uid),
                    dict(zip(self.names, point.tolist(), strict=True)),
                    {self.objective: float(outcome[self.objective])},
                )
            )

    def register_failures(self, suggestions: Sequence[Mapping]) -> None:
        """Acquisition failed: the agent will not propose these points again."""
        for suggestion in suggestions:
            point = [float(suggestion[n]) for n in self.names]
            self.agent.record_failure(point, "acquisition failed (bluesky-adaptive)")
            self._suggested.pop(suggestion.get(ID_KEY), None)

    def get_best_points(self) -> list[tuple[Any, Mapping, Mapping]]:
        """The observation with the largest objective."""
        if not self._observed:
            return []
        return [max(self._observed, key=lambda item: item[2][self.objective])]

    def should_stop(self) -> tuple[bool, str | None]:
        """The agent's stopping rule."""
        stop, reason = self.agent.should_stop()
        return stop, (reason or None)

    def checkpoint(self) -> None:
        """Save the agent's state (if a path was given)."""
        if self.checkpoint_path is not None:
            self.agent.save(self.checkpoint_path)
