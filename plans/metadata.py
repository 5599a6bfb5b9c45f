"""RunStart metadata that lets anyone rebuild the geometry from the stored run alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["scan_metadata"]

METADATA_VERSION = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no inf/nan
    return value


def detector_geometry(detector: Any) -> dict:
    """The detector's geometry: its ``geometry()`` if it has one, else its configuration."""
    if hasattr(detector, "geometry"):
        return detector.geometry()
    if hasattr(detector, "read_configuration"):
        return {key: reading["value"] for key, reading in detector.read_configuration().items()}
    return {}


def sample_metadata(detectors: Sequence[Any]) -> dict:
    """Name, seed and size of a simulated sample (real samples come from the user's md)."""
    for det in detectors:
        sample = getattr(det, "sample", None)
        phantom = getattr(sample, "phantom", None)
        if phantom is not None:
            return {
                "name": phantom.name,
                "seed": int(phantom.seed),
                "shape": list(phantom.labels.shape),
                "pixel_size_m": float(sample.pixel_size),
                "simulated": True,
            }
    return {}


def scan_metadata(
    *,
    modality: str,
    plan_name: str,
    detectors: Sequence[Any],
    motors: Sequence[Any],
    pattern: dict,
    num_points: int,
    md: dict | None,
) -> dict:
    """Compose the RunStart metadata of a scan.

    Keys: ``modality`` ("ptychography", "tomography", "ptycho-tomography"),
    ``geometry`` (per detector name), ``sample``, ``scan_pattern`` (kind and its
    parameters), ``motors``, ``detectors``, ``units`` (per motor), ``num_points``,
    ``plan_name``, ``synaps_metadata_version``. The user's ``md`` is merged last, and a
    user's ``sample`` entry is kept over the simulated one.
    """
    units = {getattr(m, "name", str(m)): getattr(m, "egu", "") for m in motors}
    result = {
        "modality": modality,
        "plan_name": plan_name,
        "detectors": [d.name for d in detectors],
        "motors": [m.name for m in motors],
        "geometry": {d.name: detector_geometry(d) for d in detectors},
        "sample": sample_metadata(detectors),
        "scan_pattern": pattern,
        "units": units,
        "num_points": int(num_points),
        "synaps_metadata_version": METADATA_VERSION,
    }
    result.update(md or {})
    return _jsonable(result)
