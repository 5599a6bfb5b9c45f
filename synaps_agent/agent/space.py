"""The scan space: motor axes with soft limits and kinematics, excluded regions, travel time.

Points are ``numpy`` arrays of shape ``(n, d)`` whose columns follow the axis order of the
:class:`ScanSpace` (e.g. ``("x", "y")`` in um, ``("theta",)`` in degrees or
``("x", "y", "theta")``), or dicts keyed by axis name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Axis",
    "axis_from_motor",
    "device_value",
    "Disc",
    "Rectangle",
    "Region",
    "ScanSpace",
    "region_from_dict",
    "trapezoid_time",
]


def trapezoid_time(
    distance: np.ndarray | float, velocity: float, acceleration_time: float
) -> np.ndarray:
    """Duration of point-to-point moves with a trapezoidal (or triangular) velocity profile.

    Parameters
    ----------
    distance : array_like
        Travel distances (absolute value taken), in the axis' units.
    velocity : float
        Top speed, units per second (> 0).
    acceleration_time : float
        Seconds to reach top speed from rest (>= 0).

    Returns
    -------
    numpy.ndarray
        Seconds from start to arrival (settle time not included); 0 for a null move.
    """
    d = np.abs(np.asarray(distance, dtype=float))
    if acceleration_time <= 0:
        return d / velocity
    ramp = velocity * acceleration_time  # distance covered by both ramps together
    full = d / velocity + acceleration_time
    tri = 2.0 * np.sqrt(d * acceleration_time / velocity)
    return np.where(d >= ramp, full, tri)


@dataclass(frozen=True)
class Axis:
    """One motor axis of the scan.

    Parameters
    ----------
    name : str
        Axis name, e.g. ``"x"``, ``"y"``, ``"theta"``.
    low, high : float
        Soft limits of the motor; suggestions never leave ``[low, high]``.
    unit : str
        Engineering unit, e.g. ``"um"`` or ``"deg"``.
    period : float or None
        Period of a periodic axis (e.g. 180 deg for parallel-beam tomography): points that
        differ by a multiple of ``period`` are equivalent for the model and for duplicates.
        Motor travel is still the physical coordinate difference (no wrap-around).
    velocity : float
        Top speed in units per second.
    acceleration_time : float
        Seconds to reach top speed.
    settle_time : float
        Seconds waited after a move of this axis.
    tolerance : float or None
        Two points closer than this along the axis (and within tolerance on the others) are
        duplicates. ``None``: the agent picks a default from the candidate spacing.
    """

    name: str
    low: float
    high: float
    unit: str = ""
    period: float | None = None
    velocity: float = 1.0
    acceleration_time: float = 0.0
    settle_time: float = 0.0
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(
                f"axis {self.name!r}: need finite low < high, got {self.low}, {self.high}"
            )
        if self.period is not None and not self.period > 0:
            raise ValueError(f"axis {self.name!r}: period must be positive, got {self.period}")
        if not self.velocity > 0:
            raise ValueError(f"axis {self.name!r}: velocity must be positive")
        if self.acceleration_time < 0 or self.settle_time < 0:
            raise ValueError(f"axis {self.name!r}: acceleration/settle times must be >= 0")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"axis {self.name!r}: tolerance must be positive")

    @property
    def span(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def device_value(device: Any, attribute: str) -> float | None:
    """``device.<attribute>`` as a number: an ophyd signal's reading or a plain number
    (ophyd's ``settle_time`` is one); ``None`` when the device has no such attribute."""
    value = getattr(device, attribute, None)
    if value is None:
        return None
    return float(value.get() if hasattr(value, "get") else value)


def axis_from_motor(
    name: str, motor: Any, low: float, high: float, unit: str = "um", **fields: Any
) -> Axis:
    """An :class:`Axis` over ``[low, high]`` with the kinematics ``motor`` states: its
    ``velocity``, ``acceleration`` (time) and ``settle_time`` where it has them (the
    :class:`Axis` defaults otherwise); ``fields`` are further :class:`Axis` fields
    (``period``, ``tolerance``)."""
    for key, attribute in (("velocity", "velocity"), ("acceleration_time", "acceleration"),
                           ("settle_time", "settle_time")):  # fmt: skip
        value = device_value(motor, attribute)
        if value is not None:
            fields.setdefault(key, value)
    return Axis(name, float(low), float(high), unit, **fields)


@dataclass(frozen=True)
class Rectangle:
    """An axis-aligned box (closed: the boundary is excluded too) over the named axes."""

    axes: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        if not len(self.axes) == len(self.low) == len(self.high):
            raise ValueError("Rectangle: axes, low and high must have the same length")

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """Mask of rows of ``coords`` (columns = ``self.axes``) inside the closed box."""
        lo, hi = np.asarray(self.low), np.asarray(self.high)
        return np.all((coords >= lo) & (coords <= hi), axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "rectangle", "axes": list(self.axes), "low": list(self.low),
                "high": list(self.high)}  # fmt: skip


@dataclass(frozen=True)
class Disc:
    """A closed disc (or ball) of ``radius`` around ``center`` over the named axes."""

    axes: tuple[str, ...]
    center: tuple[float, ...]
    radius: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "center", tuple(float(v) for v in self.center))
        if len(self.axes) != len(self.center) or not self.radius > 0:
            raise ValueError("Disc: axes and center lengths differ, or radius <= 0")

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """Mask of rows of ``coords`` (columns = ``self.axes``) inside the closed disc."""
        d2 = np.sum((coords - np.asarray(self.center)) ** 2, axis=1)
        return d2 <= self.radius**2

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "disc", "axes": list(self.axes), "center": list(self.center),
                "radius": float(self.radius)}  # fmt: skip


Region = Rectangle | Disc


def region_from_dict(d: Mapping[str, Any]) -> Region:
    """Inverse of ``Rectangle.to_dict`` / ``Disc.to_dict``."""
    kind = d.get("kind")
    if kind == "rectangle":
        return Rectangle(tuple(d["axes"]), tuple(d["low"]), tuple(d["high"]))
    if kind == "disc":
        return Disc(tuple(d["axes"]), tuple(d["center"]), float(d["radius"]))
    raise ValueError(f"unknown region kind {kind!r}")


class ScanSpace:
    """Where the agent may measure: axes with soft limits, minus excluded regions.

    Parameters
    ----------
    axes : sequence of Axis
        The scan axes, in the column order of point arrays.
    excluded : sequence of Rectangle or Disc
        Forbidden regions (e.g. a clamp, a known void, a damaged area).
    """

    def __init__(self, axes: Sequence[Axis], excluded: Sequence[Region] = ()) -> None:
        if not axes:
            raise ValueError("ScanSpace needs at least one axis")
        self.axes: tuple[Axis, ...] = tuple(axes)
        self.names: tuple[str, ...] = tuple(a.name for a in self.axes)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate axis names: {self.names}")
        self.excluded: tuple[Region, ...] = tuple(excluded)
        for r in self.excluded:
            unknown = set(r.axes) - set(self.names)
            if unknown:
                raise ValueError(f"excluded region uses unknown axes {sorted(unknown)}")
        self.low = np.array([a.low for a in self.axes], dtype=float)
        self.high = np.array([a.high for a in self.axes], dtype=float)

    # -- conversions -----------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def periodic(self) -> np.ndarray:
        """Boolean mask of periodic axes."""
        return np.array([a.period is not None for a in self.axes])

    @property
    def spatial_index(self) -> list[int]:
        """Indices of the non-periodic axes."""
        return [i for i, a in enumerate(self.axes) if a.period is None]

    @property
    def angle_index(self) -> list[int]:
        """Indices of the periodic axes."""
        return [i for i, a in enumerate(self.axes) if a.period is not None]

    def to_array(self, points: Any) -> np.ndarray:
        """Points as a float array of shape ``(n, d)``.

        Accepts a dict ``{axis: value}``, a sequence of such dicts, or an array of shape
        ``(d,)`` or ``(n, d)``.
        """
        if isinstance(points, Mapping):
            points = [points]
        if isinstance(points, Sequence) and len(points) and isinstance(points[0], Mapping):
            try:
                arr = np.array([[float(p[n]) for n in self.names] for p in points], dtype=float)
            except KeyError as exc:
                raise ValueError(f"point is missing axis {exc}; axes are {self.names}") from None
            return arr
        arr = np.asarray(points, dtype=float)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.ndim:
            if arr.size == 0:
                return np.zeros((0, self.ndim))
            raise ValueError(f"points must have {self.ndim} columns {self.names}, got {arr.shape}")
        return arr

    def to_dicts(self, points: np.ndarray) -> list[dict[str, float]]:
        """Rows of ``points`` as dicts keyed by axis name."""
        arr = self.to_array(points)
        return [{n: float(v) for n, v in zip(self.names, row, strict=True)} for row in arr]

    def columns(self, points: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """The columns of ``points`` for the named axes."""
        return points[:, [self.names.index(n) for n in names]]

    # -- membership ------------------------------------------------------------------------
    def in_limits(self, points: Any) -> np.ndarray:
        """Mask of finite points inside the soft limits (inclusive)."""
        p = self.to_array(points)
        return np.all(np.isfinite(p) & (p >= self.low) & (p <= self.high), axis=1)

    def in_excluded(self, points: Any) -> np.ndarray:
        """Mask of points inside any excluded region."""
        p = self.to_array(points)
        mask = np.zeros(len(p), dtype=bool)
        for r in self.excluded:
            mask |= r.contains(self.columns(p, r.axes))
        return mask

    def contains(self, points: Any) -> np.ndarray:
        """Mask of points inside the limits and outside every excluded region."""
        p = self.to_array(points)
        return self.in_limits(p) & ~self.in_excluded(p)

    def clip(self, points: Any) -> np.ndarray:
        """Points clipped into the soft limits (exactly onto a limit when outside)."""
        return np.clip(self.to_array(points), self.low, self.high)

    def wrap(self, points: Any) -> np.ndarray:
        """Periodic coordinates moved to their representative in ``[low, low + period)``
        when that representative is inside the limits (otherwise left unchanged)."""
        p = self.to_array(points).copy()
        for i in self.angle_index:
            ax = self.axes[i]
            w = ax.low + np.mod(p[:, i] - ax.low, ax.period)
            p[:, i] = np.where(w <= ax.high, w, p[:, i])
        return p

    def validate(self, points: Any) -> np.ndarray:
        """Return ``points`` as an array, or raise ``ValueError`` if any is not admissible."""
        p = self.to_array(points)
        bad = ~self.contains(p)
        if bad.any():
            raise ValueError(f"points outside the scan space: {p[bad][:5].tolist()}")
        return p

    # -- metric ----------------------------------------------------------------------------
    def scaled_embedding(self, points: Any, tolerance: np.ndarray) -> np.ndarray:
        """Euclidean coordinates in which a distance <= 1 means "within tolerance".

        Non-periodic axes are divided by their tolerance; a periodic axis of period ``P``
        becomes a circle of circumference ``P / tolerance`` (chord ~ arc for near points), so
        179.9 deg is next to 0 deg when ``P = 180``.
        """
        p = self.to_array(points)
        cols = []
        for i, ax in enumerate(self.axes):
            if ax.period is None:
                cols.append(p[:, i] / tolerance[i])
            else:
                r = ax.period / (2 * math.pi) / tolerance[i]
                phase = 2 * math.pi * p[:, i] / ax.period
                cols.extend([r * np.cos(phase), r * np.sin(phase)])
        return np.stack(cols, axis=1) if cols else np.zeros((len(p), 0))

    def travel_time(self, start: Any, targets: Any) -> np.ndarray:
        """Seconds to move from ``start`` to each target, all axes moving simultaneously.

        Per axis: trapezoid profile plus that axis' settle time when it moves; the move
        lasts as long as its slowest axis.

        Parameters
        ----------
        start : point (dict or array of shape ``(d,)``)
        targets : points (``(n, d)`` array, dict or list of dicts)

        Returns
        -------
        numpy.ndarray of shape ``(n,)``
        """
        s = self.to_array(start)[0]
        t = self.to_array(targets)
        out = np.zeros(len(t))
        for i, ax in enumerate(self.axes):
            d = np.abs(t[:, i] - s[i])
            ti = trapezoid_time(d, ax.velocity, ax.acceleration_time)
            ti = ti + np.where(d > 0, ax.settle_time, 0.0)
            out = np.maximum(out, ti)
        return out

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "axes": [a.to_dict() for a in self.axes],
            "excluded": [r.to_dict() for r in self.excluded],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScanSpace:
        return cls(
            [Axis(**a) for a in d["axes"]], [region_from_dict(r) for r in d.get("excluded", [])]
        )

    def __repr__(self) -> str:
        ax = ", ".join(f"{a.name}[{a.low}, {a.high}]{a.unit}" for a in self.axes)
        return f"ScanSpace({ax}; {len(self.excluded)} excluded)"
