"""Live ptycho-tomography: one ptychographic reconstruction per angle feeds a tomogram.

:class:`PtychoTomoReconstruction` is a :class:`~synaps_agent.callbacks.ptycho.PtychoReconstruction`
(one :class:`~synaps_agent.recon.ptycho.PtychoEngine` per rotation angle, fed from the
events as they arrive) that, when an angle's scan is complete, finishes that angle's
reconstruction, turns its phase into a projection of the refractive-index decrement
``delta`` and adds it to a :class:`~synaps_agent.recon.tomo.StreamingFBP` (the same
streaming tomography as :class:`~synaps_agent.callbacks.tomo.TomoReconstruction`).

An angle is complete when it holds every planned position (``scan_pattern.positions`` of
the run's metadata), when frames of another angle start arriving (the plan rotates after
each angle's scan), or at RunStop.

Phase projection of one angle: the object is cut to a fixed window centred on the
rotation axis; a linear phase ramp and the constant phase are removed by fitting them on
the lit pixels of the outermost ``air_columns`` lit columns on each side (the scan must
reach past the sample there, into air, as usual in ptycho-tomography), unlit pixels count
as air; then ``projection = -phase / (k * pixel)`` is the line integral of ``delta`` in
voxel units (transmission ``exp(-i k sum(delta) pixel)``), so the tomogram is ``delta``
per voxel.

Documents: the analysis run (processor ``ptycho_tomo_reconstruction``) holds the stream
``reconstruction`` (each angle's object when it is done, as for ptychography),
``tomogram`` (the central slice after each angle) and, at the end, ``tomogram_volume``.
"""

from __future__ import annotations

import math

import numpy as np

from synaps_agent.metrics import illuminated_mask, remove_phase_ramp
from synaps_agent.recon.ptycho import PtychoConfig, PtychoEngine, PtychoSnapshot
from synaps_agent.recon.tomo import StreamingFBP
from synaps_agent.sim_devices.optics import wavelength

from .analysis import Subscriber
from .ptycho import PtychoReconstruction, place_in_frame

__all__ = ["PtychoTomoReconstruction", "phase_projection"]


def phase_projection(
    snapshot: PtychoSnapshot,
    window_origin: tuple[int, int],
    window_shape: tuple[int, int],
    *,
    wavenumber_pixel: float,
    air_columns: int = 4,
    illumination_fraction: float = 0.1,
) -> np.ndarray:
    """Line integrals of ``delta`` (voxel units) from one ptychographic reconstruction.

    Parameters
    ----------
    snapshot : PtychoSnapshot
        The reconstruction of one angle.
    window_origin, window_shape : (int, int)
        Pixel frame of the projection (caller pixels ``(row, col)`` of its index (0, 0),
        and its shape); the rotation axis is at its centre column.
    wavenumber_pixel : float
        ``k * pixel_size`` (radians of phase per unit ``delta`` per voxel).
    air_columns : int
        Lit columns on each side of the lit area taken as air: the phase ramp and the
        constant phase are fitted there.
    illumination_fraction : float
        Pixels lit above this fraction of the peak illumination count as measured; the
        others are set to air (projection 0).

    Returns
    -------
    ndarray of float32, shape ``window_shape``

    Raises
    ------
    ValueError
        If no column of the window is lit or ``air_columns`` is not positive.
    """
    if int(air_columns) < 1:
        raise ValueError(f"air_columns must be a positive integer, got {air_columns!r}")
    obj = place_in_frame(snapshot.object, snapshot.origin, window_origin, window_shape, fill=1.0)
    illumination = place_in_frame(
        snapshot.illumination, snapshot.origin, window_origin, window_shape, fill=0.0
    )
    lit = illuminated_mask(illumination, illumination_fraction)
    lit_columns = np.nonzero(lit.any(axis=0))[0]
    if lit_columns.size == 0:
        raise ValueError("no column of the projection window is lit")
    n = int(air_columns)
    air = np.zeros_like(lit)
    for columns in (lit_columns[:n], lit_columns[-n:]):
        air[:, columns] = lit[:, columns]
    flattened = remove_phase_ramp(obj, mask=air)
    phase = np.where(lit, np.angle(flattened), 0.0)
    return (-phase / float(wavenumber_pixel)).astype(np.float32)


class PtychoTomoReconstruction(PtychoReconstruction):
    """Reconstruct ptycho-tomography runs live: ptychography per angle, then tomography.

    Parameters
    ----------
    sink : callable or list of callables, optional
        Receives the analysis run's documents.
    config : PtychoConfig, optional
        Settings of each angle's ptychography engine.
    angle_epochs : int
        Epochs over an angle's frames when the angle is complete (probe refinement, if
        the config's ``beta_probe`` > 0, from there on), before its phase projection is
        taken.
    refine_iterations : int
        SIRT iterations on the volume at the end (0: filtered back-projection only).
    air_columns : int
        See :func:`phase_projection`.
    rotation_axis_col : float, optional
        Object-pixel column of the rotation axis; default the column of stage x = 0
        (``stage_origin_pixel`` of the detector geometry).
    **kwargs
        Passed to :class:`~synaps_agent.callbacks.ptycho.PtychoReconstruction`
        (``snapshot_interval``, ``max_epochs_live``, ``refine_probe_live``).
    """

    processor = "ptycho_tomo_reconstruction"

    def __init__(
        self,
        sink: Subscriber | list[Subscriber] | None = None,
        *,
        config: PtychoConfig | None = None,
        angle_epochs: int = 50,
        refine_iterations: int = 0,
        air_columns: int = 4,
        rotation_axis_col: float | None = None,
        **kwargs,
    ) -> None:
        if int(angle_epochs) < 0 or int(refine_iterations) < 0:
            raise ValueError("angle_epochs and refine_iterations must be non-negative")
        if int(air_columns) < 1:
            raise ValueError(f"air_columns must be a positive integer, got {air_columns!r}")
        super().__init__(sink, config=config, final_epochs=int(angle_epochs), **kwargs)
        self.refine_iterations = int(refine_iterations)
        self.air_columns = int(air_columns)
        self.rotation_axis_col = rotation_axis_col
        self.fbp: StreamingFBP | None = None
        self.final_volume: np.ndarray | None = None
        #: angles (rounded keys) whose projection went into the tomogram, in order
        self.done_angles: list[float] = []
        self._expected_per_angle: int | None = None
        self._projection_window: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._wavenumber_pixel = 1.0
        self._current: float | None = None
        self._frames_at_completion: dict[float, int] = {}
        self._axis = 0.0

    # -- documents --------------------------------------------------------------------
    def start(self, doc: dict) -> None:
        self.fbp = None
        self.final_volume = None
        self.done_angles = []
        self._current = None
        self._frames_at_completion = {}
        if doc.get("modality") != "ptycho-tomography":
            self.geometry = None
            return
        super().start(doc)
        geometry = self.geometry
        if self._window is None:
            raise ValueError("ptycho-tomography run without planned positions in its metadata")
        pattern = doc.get("scan_pattern", {})
        positions = pattern.get("positions") or []
        self._expected_per_angle = len(positions) or None
        detector = next(
            g for g in doc["geometry"].values() if isinstance(g, dict) and "energy_ev" in g
        )
        k = 2 * math.pi / wavelength(float(detector["energy_ev"]))
        self._wavenumber_pixel = k * geometry.pixel_size
        # projection window: the planned rows, columns symmetric about the rotation axis
        (r0, c0), (h, w) = self._window
        axis = self.rotation_axis_col
        if axis is None:
            axis = geometry.origin_pixel[1]
        self._axis = round(2 * float(axis)) / 2  # to the half pixel
        first = math.ceil(self._axis - min(self._axis - c0, c0 + w - 1 - self._axis))
        width = int(round(2 * self._axis)) - 2 * first + 1  # last = 2 axis - first
        if width < 8:
            raise ValueError(f"the planned scan leaves too few columns around the axis {axis}")
        self._projection_window = ((r0, first), (h, width))
        self.fbp = StreamingFBP((h, width), device=self.config.device)

    # -- worker -----------------------------------------------------------------------
    def _live_engines(self) -> dict[float, PtychoEngine]:
        done = set(self.done_angles)
        return {theta: e for theta, e in self.engines.items() if theta not in done}

    def process(self, item) -> None:
        theta = round(float(item[2][2]), 3)
        if self._current is not None and theta != self._current:
            # the plan rotated: the angles before are complete
            for previous in list(self.engines):
                if previous != theta and previous not in self.done_angles:
                    self._complete(previous)
        self._current = theta
        super().process(item)
        self._flush_pending()  # count the angle's frames now
        engine = self.engines.get(theta)
        if theta in self.done_angles and engine is not None:
            if engine.num_frames > self._frames_at_completion.get(theta, 0):
                self.report_warning(
                    f"{self.processor}: event {item[0]} at angle {theta} arrived after the "
                    "angle's projection went into the tomogram; it is not used"
                )
                self._frames_at_completion[theta] = engine.num_frames
            return
        if (
            engine is not None
            and self._expected_per_angle is not None
            and engine.num_frames >= self._expected_per_angle
            and theta not in self.done_angles
        ):
            self._complete(theta)

    def _complete(self, theta: float) -> None:
        """Finish one angle's ptychography and add its phase projection to the tomogram."""
        self.done_angles.append(theta)
        engine = self.engines[theta]
        self._frames_at_completion[theta] = engine.num_frames
        if engine.num_frames == 0:
            return
        engine.config = self.config  # probe refinement (if any) from here on
        engine.run_epochs(self.final_epochs)
        snapshot = engine.snapshot()
        origin, shape = self._projection_window
        projection = phase_projection(
            snapshot,
            origin,
            shape,
            wavenumber_pixel=self._wavenumber_pixel,
            air_columns=self.air_columns,
        )
        self.fbp.add(projection, theta)
        self._emit_snapshots(final=True, thetas=[theta])
        mid = shape[0] // 2
        self.analysis.event(
            "tomogram",
            {
                "central_slice": self.fbp.volume(slices=[mid])[0].astype(np.float32),
                "num_angles": int(self.fbp.num_angles),
                "theta": float(theta),
                "projection": projection,
            },
        )

    def finalize(self) -> None:
        try:
            self._flush_pending()
            for theta in list(self.engines):
                if theta not in self.done_angles:
                    self._complete(theta)
            if self.fbp is not None and self.fbp.num_angles:
                volume = self.fbp.volume()
                if self.refine_iterations > 0:
                    volume = self.fbp.refine(self.refine_iterations, method="sirt")
                self.final_volume = np.asarray(volume, dtype=np.float32)
                (r0, c0), _ = self._projection_window
                self.analysis.event(
                    "tomogram_volume",
                    {
                        "volume": self.final_volume,
                        "num_angles": int(self.fbp.num_angles),
                        "origin_row": int(r0),
                        "origin_col": int(c0),
                        "rotation_axis_col": float(self._axis),
                    },
                )
            reason = "; ".join(self.errors[-3:])
            if self.skipped:
                reason = (reason + "; " if reason else "") + f"{len(self.skipped)} frames skipped"
            self.analysis.close(exit_status="success" if not self.errors else "fail", reason=reason)
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"{self.processor}: finalize: {exc!r}")
            self.analysis.close(exit_status="fail", reason=repr(exc))

    # -- public -----------------------------------------------------------------------
    def volume(self) -> np.ndarray | None:
        """The current tomogram (``delta`` per voxel, axes ``(z, y, x)``), None before the
        first complete angle."""
        if self.fbp is None or self.fbp.num_angles == 0:
            return None
        return self.fbp.volume()

    @property
    def projection_window(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Object-pixel ``(origin, shape)`` of the projections (axis at the centre column)."""
        return self._projection_window
