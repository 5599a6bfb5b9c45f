"""User-set stopping rules: uncertainty threshold, exposure budget, time budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from synaps_agent.agent.space import Region, region_from_dict

__all__ = ["StoppingRule", "mean_uncertainty"]


def mean_uncertainty(
    uncertainty_map: np.ndarray,
    extent: tuple[float, float, float, float],
    roi: Region | None = None,
    axes: tuple[str, str] = ("x", "y"),
) -> float:
    """Mean of an uncertainty map over a region of interest.

    Parameters
    ----------
    uncertainty_map : array of shape ``(ny, nx)``
        Row ``i`` is at ``y``, column ``j`` at ``x`` (origin at ``(xmin, ymin)``).
    extent : (xmin, xmax, ymin, ymax)
        Outer edges of the map in stage coordinates.
    roi : Rectangle or Disc over ``axes``, optional
        Only pixel centres inside it count; ``None`` for the whole map.
    axes : (str, str)
        The names of the map's (x, y) axes, for the region.

    Returns
    -------
    float
        ``nan`` when no pixel centre is in the ROI.
    """
    u = np.asarray(uncertainty_map, dtype=float)
    if roi is None:
        return float(np.mean(u))
    ny, nx = u.shape
    x0, x1, y0, y1 = extent
    xs = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx
    ys = y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny
    gx, gy = np.meshgrid(xs, ys)
    coords = {axes[0]: gx.ravel(), axes[1]: gy.ravel()}
    pts = np.stack([coords[a] for a in roi.axes], axis=1)
    mask = roi.contains(pts)
    return float(np.mean(u.ravel()[mask])) if mask.any() else float("nan")


@dataclass
class StoppingRule:
    """Stop when any enabled criterion is met.

    Parameters
    ----------
    uncertainty_threshold : float, optional
        Stop when the mean uncertainty over ``roi`` drops below this value.
    max_exposures : int, optional
        Stop after this many exposures (successful measurements told to the agent).
    max_time : float, optional
        Stop when the agent's clock (:attr:`ImagingAgent.elapsed_time`: the travel and
        ``AgentConfig.time_per_point`` of every point measured) reaches this many seconds.
    roi : Rectangle or Disc, optional
        Region of interest for the threshold (whole uncertainty map if ``None``).
    """

    uncertainty_threshold: float | None = None
    max_exposures: int | None = None
    max_time: float | None = None
    roi: Region | None = None

    def check(
        self, n_exposures: int, elapsed_time: float, mean_uncertainty: float | None
    ) -> tuple[bool, str]:
        """Evaluate the rule.

        Returns
        -------
        (stop, reason)
            ``reason`` names the criterion met (``"exposure budget ..."``, ``"time budget ..."``,
            ``"uncertainty ... below threshold ..."``), or is ``""`` when not stopping.
        """
        if self.max_exposures is not None and n_exposures >= self.max_exposures:
            return True, f"exposure budget reached: {n_exposures} >= {self.max_exposures}"
        if self.max_time is not None and elapsed_time >= self.max_time:
            return True, f"time budget reached: {elapsed_time:.3g} s >= {self.max_time:.3g} s"
        if (
            self.uncertainty_threshold is not None
            and mean_uncertainty is not None
            and np.isfinite(mean_uncertainty)
            and mean_uncertainty < self.uncertainty_threshold
        ):
            return True, (
                f"uncertainty below threshold: mean {mean_uncertainty:.4g} < "
                f"{self.uncertainty_threshold:.4g}"
            )
        return False, ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "uncertainty_threshold": self.uncertainty_threshold,
            "max_exposures": self.max_exposures,
            "max_time": self.max_time,
            "roi": None if self.roi is None else self.roi.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StoppingRule:
        roi = d.get("roi")
        return cls(
            uncertainty_threshold=d.get("uncertainty_threshold"),
            max_exposures=d.get("max_exposures"),
            max_time=d.get("max_time"),
            roi=None if roi is None else region_from_dict(roi),
        )
