"""Streaming far-field ptychography reconstruction in torch.

The engine reconstructs while a scan runs: diffraction frames arrive one by one
(in any order, with duplicates and gaps) through :meth:`PtychoEngine.add_frames`,
and :meth:`PtychoEngine.iterate` runs mini-batch updates over whatever has been
received so far. Both may be called from different threads.

Forward model (identical to :func:`synaps_agent.sim_devices.optics.ptycho_pattern`)
-----------------------------------------------------------------------------------
For a probe position ``c = (row, col)`` in object pixels, the object window is the
integer-aligned ``(ny, nx)`` patch whose centre index ``(ny // 2, nx // 2)`` is the
object pixel nearest to ``c`` (halves round up), the probe (centred at index
``(ny // 2, nx // 2)``) is Fourier-shifted by the sub-pixel residual
``c - round(c)``, and the expected intensity is
``I = |fftshift(fft2(P_shifted * O_patch, norm="ortho"))| ** 2``.

Algorithms
----------
``"rpie"`` (default)
    Mini-batch regularised PIE (Maiden, Johnson & Li 2017). The object update of
    all frames in a batch is scatter-added and normalised by the summed probe
    intensity, ``O += sum conj(P) chi / ((1 - alpha) sum|P|^2 + alpha max sum|P|^2)``;
    the probe update is the analogous sum over the batch with ``beta_probe``.
``"epie"``
    Mini-batch ePIE, ``O += alpha sum conj(P) chi / max sum|P|^2`` (and
    ``P += beta_probe sum conj(O) chi / max sum|O|^2``).
``"lsqml"``
    Least-squares maximum-likelihood for Gaussian noise (Odstrčil, Menzel &
    Guizar-Sicairos 2018): preconditioned object and probe directions followed by
    per-position optimal step sizes from a 2 x 2 least-squares problem, relaxed by
    ``alpha`` (object) and ``beta_probe`` (probe). The preconditioners are
    ``sum|P|^2 + 0.1 max sum|P|^2`` (and likewise for the probe); a smaller Tikhonov
    term (``1e-2``) let the weakly lit probe tails take huge steps and made LSQ-ML
    diverge on large objects and with small batches. Its defaults are the unrelaxed
    optimal steps (``alpha = beta_probe = 1``) with ``momentum = 0.5``: on the sparse
    384^2 object (P-sparse, wrong probe) the probe step relaxed by 0.5 left the object
    at the flat-object error for 10 epochs (0.25 rad after 20), the optimal step
    reached 0.20 and with momentum 0.16 rad.

Probe refinement fixes the probe's total intensity (to the median total counts of the
first frames when ``normalize_probe``, else to the guess's): after each probe update
the probe is rescaled to it and the object inversely, so the exit waves are unchanged
but the probe / object scale cannot drift (it did, by 2x in 20 epochs). With
``center_probe`` probe and object are also shifted back together whenever the probe's
intensity centre strays more than ``center_probe_tolerance`` from the guess's: their
common translation cannot drift either (it did, by 0.6 px).

Step sizes: in rPIE ``alpha`` is relative to the largest *batch-summed* illumination,
so its effect depends a little on the batch size (overlapping frames in a batch raise
the maximum). The default ``alpha = 0.3`` is stable from batch 8 to 512 on a 384^2
strong-phase object with 64^2 frames; ``0.05`` (the previous default) stagnated in
phase vortices or diverged there even with the true probe (0.19 rad after 20 epochs at
batch 32, 0.99 rad after 10 epochs at batch 8), while on small objects it converges a
little faster.

Conventions
-----------
Positions are float object-pixel coordinates ``(row, col)`` in the *caller's*
pixel frame. The reconstruction grid grows when a window leaves it; its index
``(0, 0)`` sits at the caller's pixel :attr:`PtychoEngine.origin`, so a caller
position ``p`` is object index ``p - origin``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["PtychoConfig", "PtychoEngine", "PtychoSnapshot", "intensity_centre", "reconstruct"]

_ALGORITHMS = ("rpie", "epie", "lsqml")
#: Step-size defaults of :class:`PtychoConfig` by algorithm (see the module docstring).
_DEFAULT_STEPS = {
    "rpie": {"alpha": 0.3, "beta_probe": 0.5, "momentum": 0.0},
    "epie": {"alpha": 0.3, "beta_probe": 0.5, "momentum": 0.0},
    "lsqml": {"alpha": 1.0, "beta_probe": 1.0, "momentum": 0.5},
}
_COMPLEX_DTYPES = {"complex64": torch.complex64, "complex128": torch.complex128}
#: Largest per-position LSQ-ML step (over-relaxation up to 2 speeds up convergence).
_LSQML_MAX_STEP = 2.0
#: Largest per-position LSQ-ML probe step.
_LSQML_MAX_PROBE_STEP = 1.0
#: Tikhonov term of the LSQ-ML object / probe preconditioners, relative to their maximum.
_LSQML_DELTA = 0.1


@dataclass
class PtychoConfig:
    """Settings of a :class:`PtychoEngine`.

    Parameters
    ----------
    algorithm : {"rpie", "epie", "lsqml"}
        Update rule (see the module docstring).
    batch_size : int
        Frames per mini-batch.
    alpha : float, optional
        Object update parameter: rPIE regularisation in ``(0, 1]`` for ``"rpie"``,
        step size for ``"epie"``, relaxation of the optimal step for ``"lsqml"``.
        Default: 0.3 (rPIE, ePIE), 1.0 (LSQ-ML).
    beta_probe : float, optional
        Probe update parameter with the same meaning as ``alpha``; ``0`` disables
        probe refinement. Default: 0.5 (rPIE, ePIE), 1.0 (LSQ-ML).
    probe_update_start : int
        Number of mini-batches (calls of the internal update, summed over
        :meth:`PtychoEngine.iterate`) before the probe is refined.
    position_correction : bool
        Refine the probe positions (gradient of the exit-wave mismatch with respect
        to a shift of the object window, a damped least-squares step per update).
    position_correction_start : int
        Number of mini-batches before positions are refined.
    position_step : float
        Relaxation of the position step (the step is also clipped to
        ``max_position_step`` pixels per update).
    max_position_step : float
        Largest position change of one frame in one update, in pixels.
    grid_margin : int
        Free-space margin (pixels) kept around the windows when the object grid is
        created or grown.
    normalize_probe : bool
        Rescale the probe guess once, when the first frames arrive, so that its
        total intensity equals the median total counts of those frames. Probe
        refinement keeps the probe's total intensity at that value (rescaling the
        object inversely), fixing the probe / object scale ambiguity.
    center_probe : bool
        Keep the centre of mass of the probe's intensity within
        ``center_probe_tolerance`` pixels of where the initial guess had it: after a
        probe update that takes it farther, probe and object are shifted back together
        (sub-pixel, in Fourier space) onto the tolerance circle. Blind ptychography
        cannot tell a probe and object shifted by ``d`` from the unshifted pair (the
        diffraction patterns are the same), so the pair can drift, and with it the
        whole object against the motor positions. On the ``autonomy`` benchmark's
        P-sparse 413 (an adaptive scan's 234 frames, 300 epochs) two of three engine
        seeds ended with the probe 0.6 px off and a mean IoU of 0.68 against 0.89 for
        the third (0.05 px off). Measured with a scratch version: the probe alone
        moved back to the guess's centre (no tolerance) gave 0.90 / 0.91 / 0.91 there
        but 0.28 rad phase error against 0.18 free on the test beamline's P-dense raster
        (256 frames, 20 epochs with momentum, ``tests/test_callbacks_ptycho.py``), whose
        free probe settled 0.12 px off the guess's centre; both moved, 0.23 rad; both
        moved past 0.3 px, 0.18 rad, and on P-sparse 413's 312 frames of a
        ``spread_early`` scan 0.865 / 0.849 / 0.902 against 0.882 / 0.773 / 0.898 free.
        Default False until the benchmarks have been run with it.
    center_probe_tolerance : float
        Pixels (>= 0) the probe's intensity centre may move from the guess's before
        ``center_probe`` acts.
    momentum : float, optional
        Heavy-ball acceleration of the object, in ``[0, 1)``: after every epoch's worth
        of mini-batches (``ceil(frames / batch_size)`` updates, also while streaming),
        the object moves on by ``momentum`` times its previous total change per epoch.
        It speeds up the slowly converging low spatial frequencies (the phase of large
        uniform particles relative to the air around them). 0 disables. Default: 0 (rPIE,
        ePIE), 0.5 (LSQ-ML).

        The defaults of ``alpha``, ``beta_probe`` and ``momentum`` are filled in when the
        config is made, so ``dataclasses.replace(config, algorithm="lsqml")`` keeps the
        previous algorithm's values; pass them as ``None`` to take the new one's.
    seed : int
        Seed of the generator that draws the mini-batches.
    device : str
        Torch device (``"cpu"``, ``"cuda"``, ...).
    dtype : {"complex64", "complex128"}
        Complex dtype of object and probe.
    """

    algorithm: str = "rpie"
    batch_size: int = 32
    alpha: float | None = None
    beta_probe: float | None = None
    probe_update_start: int = 0
    position_correction: bool = False
    position_correction_start: int = 0
    position_step: float = 1.0
    max_position_step: float = 0.3
    grid_margin: int = 4
    normalize_probe: bool = True
    center_probe: bool = False
    center_probe_tolerance: float = 0.3
    momentum: float | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "complex64"

    def __post_init__(self) -> None:
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {_ALGORITHMS}, got {self.algorithm!r}")
        for name, value in _DEFAULT_STEPS[self.algorithm].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("alpha", "beta_probe", "position_step", "max_position_step"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and non-negative, got {value!r}")
        tolerance = float(self.center_probe_tolerance)
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(
                f"center_probe_tolerance must be finite and >= 0, got {tolerance!r}"
            )
        if self.algorithm == "rpie" and not 0.0 < float(self.alpha) <= 1.0:
            raise ValueError(f"rPIE alpha must lie in (0, 1], got {self.alpha!r}")
        if self.algorithm == "rpie" and not 0.0 <= float(self.beta_probe) <= 1.0:
            raise ValueError(f"rPIE beta_probe must lie in [0, 1], got {self.beta_probe!r}")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if int(self.grid_margin) < 0:
            raise ValueError(f"grid_margin must be non-negative, got {self.grid_margin!r}")
        if self.dtype not in _COMPLEX_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_COMPLEX_DTYPES)}, got {self.dtype!r}")


def intensity_centre(probe: torch.Tensor) -> np.ndarray:
    """Centre of mass ``(row, col)`` of ``|probe|**2``, in pixels of the probe window."""
    weight = (probe.abs() ** 2).double()
    total = float(weight.sum())
    if not total > 0:
        return np.array([(probe.shape[0] - 1) / 2, (probe.shape[1] - 1) / 2])
    rows = torch.arange(probe.shape[0], dtype=torch.float64, device=probe.device)
    cols = torch.arange(probe.shape[1], dtype=torch.float64, device=probe.device)
    return np.array([float((weight.sum(1) * rows).sum()) / total,
                     float((weight.sum(0) * cols).sum()) / total])  # fmt: skip


@dataclass
class PtychoSnapshot:
    """A copy of the reconstruction state (numpy arrays, safe to keep).

    Attributes
    ----------
    object : ndarray of complex64, shape (Ny, Nx)
        Object transmission; index ``(0, 0)`` is the caller's pixel ``origin``.
    probe : ndarray of complex64, shape (ny, nx)
        Probe, centred at ``(ny // 2, nx // 2)``.
    illumination : ndarray of float32, shape (Ny, Nx)
        Sum over all received frames of ``|P_shifted|**2`` at each object pixel
        (the coverage map); empty (shape (0,)) from ``snapshot(coverage=False)``.
    origin : ndarray of int64, shape (2,)
        Caller pixel coordinate ``(row, col)`` of object index ``(0, 0)``.
    positions : ndarray of float64, shape (k, 2)
        Current (possibly corrected) positions of the received frames in the
        caller's pixel frame, in slot order (see ``ids``).
    ids : list
        Frame ids in slot order.
    error : float
        Normalised amplitude error of the latest mini-batch (``nan`` before the
        first update).
    num_frames : int
        Number of distinct frames received.
    num_iterations : int
        Number of mini-batch updates done.
    """

    object: np.ndarray
    probe: np.ndarray
    illumination: np.ndarray
    origin: np.ndarray
    positions: np.ndarray
    ids: list = field(default_factory=list)
    error: float = float("nan")
    num_frames: int = 0
    num_iterations: int = 0


# --------------------------------------------------------------------------- #
# input conversion
# --------------------------------------------------------------------------- #
def _as_tensor(array: Any, name: str) -> torch.Tensor:
    """Numpy / torch / DLPack array -> torch tensor (no copy where possible)."""
    if isinstance(array, torch.Tensor):
        return array.detach()
    if not isinstance(array, np.ndarray) and hasattr(array, "__dlpack__"):
        try:
            return torch.from_dlpack(array)
        except (TypeError, RuntimeError, BufferError, AttributeError) as exc:
            raise ValueError(f"{name}: could not import the array through DLPack: {exc}") from exc
    arr = np.asarray(array)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr)


def _fft_ramp(shape: tuple[int, int], shifts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Fourier-shift ramps ``exp(-2 pi i (fy sy + fx sx))``, shape (k, ny, nx)."""
    ny, nx = shape
    dev = shifts.device
    fy = torch.fft.fftfreq(ny, device=dev, dtype=torch.float64)
    fx = torch.fft.fftfreq(nx, device=dev, dtype=torch.float64)
    phase = (-2.0 * math.pi) * (
        shifts[:, 0, None, None] * fy[None, :, None] + shifts[:, 1, None, None] * fx[None, None, :]
    )
    return torch.polar(torch.ones_like(phase), phase).to(dtype)


# --------------------------------------------------------------------------- #
# engine
# --------------------------------------------------------------------------- #
class PtychoEngine:
    """Streaming mini-batch ptychography engine.

    Parameters
    ----------
    frame_shape : int or (int, int)
        Detector frame shape ``(ny, nx)``.
    probe_guess : array_like, shape (ny, nx)
        Initial complex probe in sqrt(photons) per pixel, centred at
        ``(ny // 2, nx // 2)``.
    object_shape : (int, int), optional
        Initial object grid covering caller pixels ``[0, Ny) x [0, Nx)`` (plus the
        margin). Default: the grid is created around the first positions.
    config : PtychoConfig, optional
        Algorithm settings.

    Notes
    -----
    A re-entrant lock serialises :meth:`add_frames`, every mini-batch update and
    :meth:`snapshot`, so frames may be added from one thread while another thread
    iterates; new frames join the mini-batch queue immediately. :meth:`snapshot` and
    :meth:`illumination` hold it only to copy the state (the coverage map, a pass over
    every frame, is summed from the copies after the lock is released), so a snapshot
    taken from another thread hardly delays the iterations.
    """

    def __init__(
        self,
        frame_shape: int | Sequence[int],
        probe_guess: Any,
        *,
        object_shape: Sequence[int] | None = None,
        config: PtychoConfig | None = None,
    ) -> None:
        self.config = config if config is not None else PtychoConfig()
        if isinstance(frame_shape, (int, np.integer)):
            frame_shape = (int(frame_shape), int(frame_shape))
        ny, nx = (int(s) for s in frame_shape)
        if ny <= 0 or nx <= 0:
            raise ValueError(f"frame_shape must be positive, got {frame_shape!r}")
        self.frame_shape: tuple[int, int] = (ny, nx)
        self.device = torch.device(self.config.device)
        self.cdtype = _COMPLEX_DTYPES[self.config.dtype]
        self.rdtype = torch.float32 if self.cdtype == torch.complex64 else torch.float64

        probe = _as_tensor(probe_guess, "probe_guess")
        if tuple(probe.shape) != self.frame_shape:
            raise ValueError(
                f"probe_guess must have the frame shape {self.frame_shape}, "
                f"got {tuple(probe.shape)}"
            )
        probe = probe.to(device=self.device, dtype=self.cdtype).clone()
        if not bool(torch.isfinite(torch.view_as_real(probe)).all()):
            raise ValueError("probe_guess contains NaN or inf")
        self.probe: torch.Tensor = probe

        self._lock = threading.RLock()
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(int(self.config.seed))

        # frame storage (capacity grows by doubling)
        self._cap = 0
        self._n = 0
        self._amp = torch.empty((0, ny, nx), dtype=self.rdtype, device=self.device)
        self._pos = torch.empty((0, 2), dtype=torch.float64, device=self.device)
        self._ids: list[Hashable] = []
        self._slot: dict[Hashable, int] = {}
        self._auto_id = 0
        self._queue: list[int] = []
        self._probe_normalised = not self.config.normalize_probe
        #: total probe intensity kept fixed by probe refinement (the gauge of the
        #: probe / object scale ambiguity); set from the data when the probe is normalised
        self._probe_power = float((self.probe.abs() ** 2).sum())
        #: where ``center_probe`` keeps the probe's intensity centre (the guess's)
        self._probe_centre = intensity_centre(self.probe)

        self.object: torch.Tensor | None = None
        self._origin = np.zeros(2, dtype=np.int64)
        if object_shape is not None:
            oy, ox = (int(s) for s in object_shape)
            if oy <= 0 or ox <= 0:
                raise ValueError(f"object_shape must be positive, got {object_shape!r}")
            m = int(self.config.grid_margin)
            self._origin = np.array([-m, -m], dtype=np.int64)
            self.object = torch.ones(
                (oy + 2 * m, ox + 2 * m), dtype=self.cdtype, device=self.device
            )

        # heavy-ball momentum of the object (per epoch's worth of updates)
        self._epoch_start: torch.Tensor | None = None
        self._displacement: torch.Tensor | None = None
        self._updates_in_epoch = 0

        self.error: float = float("nan")
        self.num_iterations: int = 0
        self.error_history: list[float] = []

        ar_y = torch.arange(ny, device=self.device)
        ar_x = torch.arange(nx, device=self.device)
        self._ar = (ar_y, ar_x)

    # ------------------------------------------------------------------ #
    # properties
    # ------------------------------------------------------------------ #
    @property
    def origin(self) -> np.ndarray:
        """Caller pixel coordinate ``(row, col)`` of object index ``(0, 0)``."""
        with self._lock:
            return self._origin.copy()

    @property
    def num_frames(self) -> int:
        """Number of distinct frames received so far."""
        return self._n

    @property
    def positions(self) -> np.ndarray:
        """Current positions (caller pixel frame, slot order), shape (k, 2)."""
        with self._lock:
            return self._pos[: self._n].cpu().numpy().copy()

    @property
    def ids(self) -> list[Hashable]:
        """Frame ids in slot order."""
        with self._lock:
            return list(self._ids)

    # ------------------------------------------------------------------ #
    # frames
    # ------------------------------------------------------------------ #
    def add_frames(
        self,
        frames: Any,
        positions_px: Any,
        ids: Iterable[Hashable] | None = None,
    ) -> None:
        """Receive diffraction frames.

        Parameters
        ----------
        frames : array_like, shape (k, ny, nx) or (ny, nx)
            Photon counts (zero frequency at index ``n // 2``). numpy arrays,
            torch tensors and any DLPack-capable array (e.g. CuPy) are accepted;
            DLPack arrays are imported without a copy.
        positions_px : array_like, shape (k, 2) or (2,)
            Probe centres, float object pixels ``(row, col)`` in the caller frame.
        ids : iterable of hashable, optional
            Frame identifiers; a frame whose id was seen before *replaces* the
            earlier one. Default: fresh unique ids.

        Raises
        ------
        ValueError
            For a wrong frame shape, NaN / inf or negative counts, a wrong
            positions shape, non-finite positions, or a wrong number of ids.
        """
        ny, nx = self.frame_shape
        fr = _as_tensor(frames, "frames")
        if fr.ndim == 2:
            fr = fr.unsqueeze(0)
        if fr.ndim != 3 or tuple(fr.shape[1:]) != self.frame_shape:
            raise ValueError(
                f"frames must have shape (k, {ny}, {nx}) or ({ny}, {nx}), got {tuple(fr.shape)}"
            )
        if fr.is_complex():
            raise ValueError("frames must be real photon counts, got a complex array")
        k = int(fr.shape[0])
        pos = _as_tensor(positions_px, "positions_px")
        if pos.is_complex() or pos.dtype == torch.bool:
            raise ValueError("positions_px must be real numbers")
        pos = pos.to(device="cpu", dtype=torch.float64)
        if pos.ndim == 1 and pos.shape[0] == 2:
            pos = pos.unsqueeze(0)
        if pos.ndim != 2 or tuple(pos.shape) != (k, 2):
            raise ValueError(
                f"positions_px must have shape ({k}, 2) for {k} frame(s), got {tuple(pos.shape)}"
            )
        if not bool(torch.isfinite(pos).all()):
            raise ValueError("positions_px contains NaN or inf")
        id_list: list[Hashable] | None = None
        if ids is not None:
            id_list = list(ids)
            if len(id_list) != k:
                raise ValueError(f"got {len(id_list)} ids for {k} frames")
        if k == 0:
            return

        counts = fr.to(device=self.device, dtype=self.rdtype)
        if counts.is_floating_point() and not bool(torch.isfinite(counts).all()):
            raise ValueError("frames contain NaN or inf counts")
        if bool((counts < 0).any()):
            raise ValueError("frames contain negative counts")
        amp = torch.fft.ifftshift(torch.sqrt(counts), dim=(-2, -1))
        pos = pos.to(self.device)

        with self._lock:
            if id_list is None:
                id_list = [("auto", self._auto_id + j) for j in range(k)]
                self._auto_id += k
            if not self._probe_normalised:
                totals = counts.sum(dim=(-2, -1))
                target = float(totals.median())
                power = float((self.probe.abs() ** 2).sum())
                if target > 0 and power > 0:
                    self.probe *= math.sqrt(target / power)
                    self._probe_power = float((self.probe.abs() ** 2).sum())
                self._probe_normalised = True
            self._ensure_grid(pos)
            new_slots: list[int] = []
            for j, fid in enumerate(id_list):
                slot = self._slot.get(fid)
                if slot is None:
                    slot = self._n
                    self._reserve(self._n + 1)
                    self._n += 1
                    self._slot[fid] = slot
                    self._ids.append(fid)
                    new_slots.append(slot)
                self._amp[slot] = amp[j]
                self._pos[slot] = pos[j]
            if new_slots:
                order = torch.randperm(len(new_slots), generator=self._gen).tolist()
                self._queue.extend(new_slots[i] for i in order)

    def _reserve(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(64, self._cap * 2, n)
        amp = torch.empty((cap, *self.frame_shape), dtype=self.rdtype, device=self.device)
        pos = torch.empty((cap, 2), dtype=torch.float64, device=self.device)
        amp[: self._n] = self._amp[: self._n]
        pos[: self._n] = self._pos[: self._n]
        self._amp, self._pos, self._cap = amp, pos, cap

    def _window_corners(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caller-frame integer window top-left corners and sub-pixel residuals."""
        ny, nx = self.frame_shape
        centre = torch.floor(pos + 0.5)
        resid = pos - centre
        half = torch.tensor([ny // 2, nx // 2], dtype=torch.float64, device=pos.device)
        return (centre - half).to(torch.int64), resid

    def cover(self, positions_px: Any) -> None:
        """Make the object grid cover the probe windows at ``positions_px`` (k, 2).

        Used to pre-size the grid to a planned scan, so that it does not grow later.
        """
        pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
        if not np.all(np.isfinite(pos)):
            raise ValueError("positions_px must be finite")
        with self._lock:
            self._ensure_grid(torch.as_tensor(pos, dtype=torch.float64, device=self.device))

    def _ensure_grid(self, pos: torch.Tensor) -> None:
        """Create or grow the object grid so that all windows of ``pos`` fit."""
        ny, nx = self.frame_shape
        m = int(self.config.grid_margin)
        corner, _ = self._window_corners(pos)
        lo = corner.min(dim=0).values.cpu().numpy()
        hi = corner.max(dim=0).values.cpu().numpy() + np.array([ny, nx])
        if self.object is None:
            self._origin = (lo - m).astype(np.int64)
            shape = tuple(int(v) for v in (hi - lo + 2 * m))
            self.object = torch.ones(shape, dtype=self.cdtype, device=self.device)
            return
        big = np.array(self.object.shape, dtype=np.int64)
        lo_l = lo - self._origin  # local index of the lowest window corner
        hi_l = hi - self._origin
        pad_before = np.where(lo_l < 0, -lo_l + m, 0)
        pad_after = np.where(hi_l > big, hi_l - big + m, 0)
        if not (pad_before.any() or pad_after.any()):
            return
        # grow by at least half a window to avoid growing at every new frame
        step = np.array([ny // 2, nx // 2])
        pad_before = np.where(pad_before > 0, np.maximum(pad_before, step), 0)
        pad_after = np.where(pad_after > 0, np.maximum(pad_after, step), 0)
        new_shape = tuple(int(v) for v in big + pad_before + pad_after)
        grown = torch.ones(new_shape, dtype=self.cdtype, device=self.device)
        y0, x0 = int(pad_before[0]), int(pad_before[1])
        grown[y0 : y0 + int(big[0]), x0 : x0 + int(big[1])] = self.object
        self.object = grown
        self._origin = self._origin - pad_before.astype(np.int64)

    # ------------------------------------------------------------------ #
    # geometry helpers for a batch
    # ------------------------------------------------------------------ #
    def _batch_geometry(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat object indices (k, ny, nx), residuals (k, 2) and shift ramps (k, ny, nx)."""
        assert self.object is not None
        return self._window_geometry(self._pos[idx], self._origin, tuple(self.object.shape))

    def _window_geometry(
        self, pos: torch.Tensor, origin_px: np.ndarray, object_shape: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_batch_geometry` of positions ``pos`` (k, 2) on a grid of
        ``object_shape`` whose index (0, 0) is the caller's pixel ``origin_px``."""
        corner, resid = self._window_corners(pos)
        origin = torch.as_tensor(origin_px, dtype=torch.int64, device=self.device)
        local = corner - origin
        big_y, big_x = object_shape
        # positions moved by position correction may leave the grid: clamp
        ny, nx = self.frame_shape
        local[:, 0].clamp_(0, big_y - ny)
        local[:, 1].clamp_(0, big_x - nx)
        ar_y, ar_x = self._ar
        rows = local[:, 0, None, None] + ar_y[None, :, None]
        cols = local[:, 1, None, None] + ar_x[None, None, :]
        flat = rows * big_x + cols
        ramp = _fft_ramp(self.frame_shape, resid, self.cdtype)
        return flat, resid, ramp

    def _shifted_probes(self, probe_f: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(probe_f[None] * ramp)

    # ------------------------------------------------------------------ #
    # iteration
    # ------------------------------------------------------------------ #
    def _next_batch(self) -> torch.Tensor:
        b = int(self.config.batch_size)
        if not self._queue:
            self._queue = torch.randperm(self._n, generator=self._gen).tolist()
        take, self._queue = self._queue[:b], self._queue[b:]
        return torch.as_tensor(take, dtype=torch.int64, device=self.device)

    def iterate(self, num_batches: int = 1) -> float:
        """Run mini-batch updates over the frames received so far.

        Batches are drawn from a shuffled queue of all frames (a new permutation
        after each pass; new frames join the current pass). The lock is taken per
        batch, so :meth:`add_frames` can interleave.

        Parameters
        ----------
        num_batches : int
            Number of mini-batch updates.

        Returns
        -------
        float
            Normalised amplitude error of the last batch,
            ``sum((|Psi| - sqrt(I))**2) / sum(I)`` (before its update), or ``nan`` if
            no frames have been received.
        """
        err = float("nan")
        for _ in range(int(num_batches)):
            with self._lock:
                if self._n == 0:
                    return float("nan")
                err = self._update(self._next_batch())
        return err

    def run_epochs(self, n: int = 1) -> float:
        """Iterate through all received frames ``n`` times (fresh permutation each).

        Returns
        -------
        float
            Frame-weighted mean error of the last epoch.
        """
        last = float("nan")
        for _ in range(int(n)):
            with self._lock:
                self._queue = []
                total = self._n
            if total == 0:
                return float("nan")
            b = int(self.config.batch_size)
            errs: list[float] = []
            weights: list[int] = []
            for start in range(0, total, b):
                with self._lock:
                    if start == 0:
                        self._queue = torch.randperm(self._n, generator=self._gen).tolist()
                    if not self._queue:
                        break
                    idx = self._next_batch()
                    errs.append(self._update(idx))
                    weights.append(int(idx.numel()))
            last = float(np.average(errs, weights=weights)) if errs else float("nan")
        return last

    @torch.no_grad()
    def _update(self, idx: torch.Tensor) -> float:
        """One mini-batch update (caller holds the lock)."""
        assert self.object is not None
        cfg = self.config
        if cfg.momentum > 0 and (
            self._epoch_start is None or self._epoch_start.shape != self.object.shape
        ):  # first update, or the grid grew: the momentum starts afresh
            self._epoch_start = self.object.clone()
            self._displacement = None
            self._updates_in_epoch = 0
        obj_flat = self.object.view(-1)
        flat, resid, ramp = self._batch_geometry(idx)
        amp = self._amp[idx]
        probe_f = torch.fft.fft2(self.probe)
        p_s = self._shifted_probes(probe_f, ramp)
        o_k = obj_flat[flat]
        psi = p_s * o_k
        big_psi = torch.fft.fft2(psi, norm="ortho")
        mag = big_psi.abs()
        err = float(((mag - amp) ** 2).sum() / (amp**2).sum().clamp_min(1e-30))
        scale = amp / mag.clamp_min(1e-12)
        chi = torch.fft.ifft2(big_psi * scale, norm="ortho") - psi

        refine_probe = cfg.beta_probe > 0 and self.num_iterations >= cfg.probe_update_start
        if cfg.algorithm == "lsqml":
            self._update_lsqml(flat, ramp, p_s, o_k, chi, refine_probe)
        else:
            self._update_pie(flat, ramp, p_s, o_k, chi, refine_probe)
        if refine_probe:
            self._fix_probe_power()
            if cfg.center_probe:
                self._recentre_probe()
        if cfg.position_correction and self.num_iterations >= cfg.position_correction_start:
            self._correct_positions(idx, flat, p_s, chi)

        self.num_iterations += 1
        if cfg.momentum > 0:
            self._momentum_step()
        self.error = err
        self.error_history.append(err)
        return err

    def _momentum_step(self) -> None:
        """Count one update; after an epoch's worth, push the object on by ``momentum``
        times its previous epoch's total displacement (heavy ball)."""
        assert self.object is not None and self._epoch_start is not None
        self._updates_in_epoch += 1
        if self._updates_in_epoch < math.ceil(self._n / int(self.config.batch_size)):
            return
        change = self.object - self._epoch_start
        if self._displacement is not None:
            push = float(self.config.momentum) * self._displacement
            self.object += push
            change += push
        self._displacement = change
        self._epoch_start = self.object.clone()
        self._updates_in_epoch = 0

    def _fix_probe_power(self) -> None:
        """Rescale the probe to its fixed total intensity, the object inversely."""
        assert self.object is not None
        power = float((self.probe.abs() ** 2).sum())
        if self._probe_power > 0 and power > 0 and math.isfinite(power):
            c = math.sqrt(self._probe_power / power)
            self.probe *= c
            self.object /= c

    def _recentre_probe(self) -> None:
        """Shift probe and object back together so the probe's intensity centre lies
        within ``center_probe_tolerance`` of ``_probe_centre`` (the diffraction patterns
        they predict do not change)."""
        drift = intensity_centre(self.probe) - self._probe_centre
        size = float(np.hypot(*drift))
        tolerance = float(self.config.center_probe_tolerance)
        if size <= max(tolerance, 1e-3):
            return
        shift = drift * (size - tolerance) / size
        self.probe = self._fourier_shift(self.probe, shift)
        if self.object is not None:
            self.object = self._fourier_shift(self.object, shift)
        if self._epoch_start is not None:  # the momentum's memory, in the same frame
            self._epoch_start = self._fourier_shift(self._epoch_start, shift)
        if self._displacement is not None:
            self._displacement = self._fourier_shift(self._displacement, shift)

    def _fourier_shift(self, a: torch.Tensor, shift: np.ndarray) -> torch.Tensor:
        """``a`` moved by ``-shift`` pixels ``(rows, cols)`` (periodic, sub-pixel)."""
        back = torch.tensor([[-float(shift[0]), -float(shift[1])]], device=a.device)
        return torch.fft.ifft2(torch.fft.fft2(a) * _fft_ramp(tuple(a.shape), back, a.dtype)[0])

    def _scatter(self, flat: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        assert self.object is not None
        out = torch.zeros(self.object.numel(), dtype=values.dtype, device=self.device)
        out.index_add_(0, flat.reshape(-1), values.reshape(-1))
        return out

    def _probe_gradient(self, ramp: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of ``values`` shifted back into the unshifted probe frame."""
        spec = torch.fft.fft2(values) * ramp.conj()
        return torch.fft.ifft2(spec.sum(dim=0))

    def _update_pie(
        self,
        flat: torch.Tensor,
        ramp: torch.Tensor,
        p_s: torch.Tensor,
        o_k: torch.Tensor,
        chi: torch.Tensor,
        refine_probe: bool,
    ) -> None:
        cfg = self.config
        assert self.object is not None
        obj_flat = self.object.view(-1)
        num = self._scatter(flat, p_s.conj() * chi)
        den = self._scatter(flat, (p_s.abs() ** 2).to(self.rdtype))
        dmax = den.max().clamp_min(1e-30)
        if cfg.algorithm == "rpie":
            step_o = num / ((1.0 - cfg.alpha) * den + cfg.alpha * dmax)
        else:
            step_o = cfg.alpha * num / dmax
        if refine_probe:
            pnum = self._probe_gradient(ramp, o_k.conj() * chi)
            pden = (o_k.abs() ** 2).sum(dim=0)
            pmax = pden.max().clamp_min(1e-30)
            if cfg.algorithm == "rpie":
                b = cfg.beta_probe
                step_p = pnum / ((1.0 - b) * pden + b * pmax)
            else:
                step_p = cfg.beta_probe * pnum / pmax
            self.probe += step_p
        obj_flat += step_o

    def _update_lsqml(
        self,
        flat: torch.Tensor,
        ramp: torch.Tensor,
        p_s: torch.Tensor,
        o_k: torch.Tensor,
        chi: torch.Tensor,
        refine_probe: bool,
    ) -> None:
        cfg = self.config
        assert self.object is not None
        obj_flat = self.object.view(-1)
        k = chi.shape[0]
        # preconditioned object direction (sum of the batch, normalised by illumination)
        p2 = (p_s.abs() ** 2).to(self.rdtype)
        num = self._scatter(flat, p_s.conj() * chi)
        den = self._scatter(flat, p2)
        delta_o = _LSQML_DELTA * den.max().clamp_min(1e-30)
        d_obj = num / (den + delta_o)
        d_o_k = d_obj[flat]
        u = p_s * d_o_k  # exit-wave change from the object direction
        dims = (-2, -1)
        a11 = (u.abs() ** 2).sum(dims)
        b1 = (u.conj() * chi).real.sum(dims)
        if refine_probe:
            pnum = self._probe_gradient(ramp, o_k.conj() * chi)
            pden = (o_k.abs() ** 2).sum(dim=0)
            delta_p = _LSQML_DELTA * pden.max().clamp_min(1e-30)
            d_probe = pnum / (pden + delta_p)
            d_p_s = torch.fft.ifft2(torch.fft.fft2(d_probe)[None] * ramp)
            v = d_p_s * o_k
            a22 = (v.abs() ** 2).sum(dims)
            a12 = (u.conj() * v).real.sum(dims)
            b2 = (v.conj() * chi).real.sum(dims)
            # regularised 2x2 solve per position
            lam = 0.1
            m11 = a11 * (1 + lam) + 1e-30
            m22 = a22 * (1 + lam) + 1e-30
            det = m11 * m22 - a12**2
            alpha_o = (m22 * b1 - a12 * b2) / det
            alpha_p = (m11 * b2 - a12 * b1) / det
            alpha_p = alpha_p.clamp(0.0, _LSQML_MAX_PROBE_STEP)
        else:
            alpha_o = b1 / (a11 * 1.1 + 1e-30)
            alpha_p = torch.zeros(k, dtype=self.rdtype, device=self.device)
        alpha_o = alpha_o.clamp(0.0, _LSQML_MAX_STEP).to(self.rdtype)
        # per-pixel illumination-weighted mean of the per-position object steps
        w = self._scatter(flat, p2 * alpha_o[:, None, None])
        alpha_map = w / den.clamp_min(1e-30)
        obj_flat += cfg.alpha * alpha_map * d_obj
        if refine_probe:
            self.probe += cfg.beta_probe * alpha_p.mean() * d_probe

    def _correct_positions(
        self,
        idx: torch.Tensor,
        flat: torch.Tensor,
        p_s: torch.Tensor,
        chi: torch.Tensor,
    ) -> None:
        """Damped least-squares position step from the object gradient."""
        assert self.object is not None
        cfg = self.config
        obj = self.object
        # central-difference gradient of the object (object-pixel units)
        gy = torch.zeros_like(obj)
        gx = torch.zeros_like(obj)
        gy[1:-1] = 0.5 * (obj[2:] - obj[:-2])
        gx[:, 1:-1] = 0.5 * (obj[:, 2:] - obj[:, :-2])
        dy = p_s * gy.view(-1)[flat]
        dx = p_s * gx.view(-1)[flat]
        dims = (-2, -1)
        ayy = (dy.abs() ** 2).sum(dims)
        axx = (dx.abs() ** 2).sum(dims)
        axy = (dy.conj() * dx).real.sum(dims)
        by = (dy.conj() * chi).real.sum(dims)
        bx = (dx.conj() * chi).real.sum(dims)
        reg = 0.1 * (ayy + axx) + 1e-30
        myy, mxx = ayy + reg, axx + reg
        det = myy * mxx - axy**2
        sy = (mxx * by - axy * bx) / det
        sx = (myy * bx - axy * by) / det
        # exit wave P(u) O(u + c): increasing c by s changes it by s . P grad O
        step = torch.stack([sy, sx], dim=1).to(torch.float64) * cfg.position_step
        step = step.clamp(-cfg.max_position_step, cfg.max_position_step)
        step = step - step.mean(dim=0, keepdim=True) if step.shape[0] > 1 else step
        self._pos[idx] += step

    # ------------------------------------------------------------------ #
    # output
    # ------------------------------------------------------------------ #
    @torch.no_grad()
    def illumination(self) -> torch.Tensor:
        """Coverage map: sum over received frames of ``|P_shifted|**2`` (object grid)."""
        with self._lock:  # only to copy the state: the sum runs without the lock
            assert self.object is not None
            state = self._coverage_state()
        return self._illumination_of(*state)

    def _coverage_state(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, tuple[int, int]]:
        """Copies of what the coverage map depends on (caller holds the lock)."""
        assert self.object is not None
        return (
            self.probe.clone(),
            self._pos[: self._n].clone(),
            self._origin.copy(),
            (int(self.object.shape[0]), int(self.object.shape[1])),
        )

    @torch.no_grad()
    def _illumination_of(
        self,
        probe: torch.Tensor,
        pos: torch.Tensor,
        origin: np.ndarray,
        object_shape: tuple[int, int],
    ) -> torch.Tensor:
        """The coverage map of ``probe`` at ``pos`` on a grid of ``object_shape`` whose
        index (0, 0) is the caller's pixel ``origin`` (no lock: the arguments are copies)."""
        out = torch.zeros(
            object_shape[0] * object_shape[1], dtype=self.rdtype, device=self.device
        )
        n = int(pos.shape[0])
        if n == 0:
            return out.view(object_shape)
        probe_f = torch.fft.fft2(probe)
        chunk = 256
        for s in range(0, n, chunk):
            flat, _, ramp = self._window_geometry(pos[s : s + chunk], origin, object_shape)
            p2 = (self._shifted_probes(probe_f, ramp).abs() ** 2).to(self.rdtype)
            out.index_add_(0, flat.reshape(-1), p2.reshape(-1))
        return out.view(object_shape)

    @torch.no_grad()
    def predict(self, positions_px: Any) -> np.ndarray:
        """Model intensities of the current object and probe at given positions.

        Parameters
        ----------
        positions_px : array_like, shape (k, 2)
            Probe centres in the caller's pixel frame; their windows must lie in
            the current object grid.

        Returns
        -------
        ndarray of float32, shape (k, ny, nx)
            Expected photons per pixel, zero frequency at ``n // 2`` (as the
            measured frames).
        """
        pos = _as_tensor(positions_px, "positions_px").to(torch.float64).reshape(-1, 2)
        with self._lock:
            if self.object is None:
                raise RuntimeError("no object grid yet: add frames or pass object_shape")
            corner, resid = self._window_corners(pos.to(self.device))
            local = corner - torch.as_tensor(self._origin, device=self.device)
            ny, nx = self.frame_shape
            big_y, big_x = self.object.shape
            inside = (local >= 0).all() and bool(
                ((local[:, 0] + ny <= big_y) & (local[:, 1] + nx <= big_x)).all()
            )
            if not inside:
                raise ValueError("a window of positions_px leaves the object grid")
            ar_y, ar_x = self._ar
            flat = (local[:, 0, None, None] + ar_y[None, :, None]) * big_x + (
                local[:, 1, None, None] + ar_x[None, None, :]
            )
            ramp = _fft_ramp(self.frame_shape, resid, self.cdtype)
            psi = (
                self._shifted_probes(torch.fft.fft2(self.probe), ramp) * self.object.view(-1)[flat]
            )
            spec = torch.fft.fftshift(torch.fft.fft2(psi, norm="ortho"), dim=(-2, -1))
            return (spec.abs() ** 2).to(torch.float32).cpu().numpy()

    def snapshot(self, coverage: bool = True) -> PtychoSnapshot:
        """A consistent copy of the current state as numpy arrays.

        Parameters
        ----------
        coverage : bool
            Sum the coverage map (``illumination``; a pass over every frame). False:
            ``illumination`` is an empty array, and the snapshot costs only the copies
            (e.g. to follow the object's convergence at a fine interval).

        Returns
        -------
        PtychoSnapshot

        Raises
        ------
        RuntimeError
            If no object grid exists yet (no frames and no ``object_shape``).
        """
        with self._lock:  # copies only; the coverage map is summed after the lock is free
            if self.object is None:
                raise RuntimeError("no object grid yet: add frames or pass object_shape")
            state = self._coverage_state()
            snap = PtychoSnapshot(
                object=self.object.detach().cpu().numpy().astype(np.complex64, copy=True),
                probe=state[0].detach().cpu().numpy().astype(np.complex64, copy=True),
                illumination=np.empty(0, dtype=np.float32),
                origin=state[2].copy(),
                positions=state[1].cpu().numpy().copy(),
                ids=list(self._ids),
                error=float(self.error),
                num_frames=int(self._n),
                num_iterations=int(self.num_iterations),
            )
        if coverage:
            snap.illumination = self._illumination_of(*state).cpu().numpy().astype(np.float32)
        return snap


def reconstruct(
    frames: Any,
    positions_px: Any,
    probe_guess: Any,
    *,
    epochs: int = 50,
    config: PtychoConfig | None = None,
    object_shape: Sequence[int] | None = None,
) -> PtychoSnapshot:
    """Batch ptychographic reconstruction of a complete scan.

    Parameters
    ----------
    frames : array_like, shape (k, ny, nx)
        Photon counts.
    positions_px : array_like, shape (k, 2)
        Probe centres in object pixels ``(row, col)``.
    probe_guess : array_like, shape (ny, nx)
        Initial probe.
    epochs : int
        Number of passes through all frames.
    config : PtychoConfig, optional
        Algorithm settings.
    object_shape : (int, int), optional
        Initial object grid (see :class:`PtychoEngine`).

    Returns
    -------
    PtychoSnapshot
        The final state.
    """
    fr = _as_tensor(frames, "frames")
    if fr.ndim != 3:
        raise ValueError(f"frames must have shape (k, ny, nx), got {tuple(fr.shape)}")
    engine = PtychoEngine(
        tuple(fr.shape[1:]), probe_guess, object_shape=object_shape, config=config
    )
    engine.add_frames(fr, positions_px)
    engine.run_epochs(epochs)
    return engine.snapshot()
