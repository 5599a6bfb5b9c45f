"""Live tomography: a streaming filtered back-projection that improves with each angle.

:class:`TomoReconstruction` starts on a RunStart whose metadata describes a tomography
scan, averages the ``dark`` and ``flat`` streams, and for each projection of the
``primary`` stream (frame from the event or from StreamResource/StreamDatum, angle from
the event) adds the flat/dark-corrected line integrals to a
:class:`~synaps_agent.recon.tomo.StreamingFBP` on a worker thread. Angles may arrive in
any order. Snapshots (the central slice while the scan runs; the whole volume, refined
with SIRT if asked, at the end) are events of an analysis run (stream ``tomogram``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from synaps_agent.recon.tomo import StreamingFBP, normalize_projection

from .analysis import AnalysisRun, StreamingAnalysis, Subscriber
from .frames import StreamFrameReader

__all__ = ["TomoGeometry", "TomoReconstruction"]

CALIBRATION_STREAMS = ("dark", "flat")


@dataclass(frozen=True)
class TomoGeometry:
    """What a tomographic reconstruction needs, read from a RunStart document."""

    image_key: str
    theta_key: str
    frame_shape: tuple[int, int]
    pixel_size: float
    radiation: str

    @classmethod
    def from_start(cls, start: dict) -> TomoGeometry | None:
        """The geometry of a tomography run, or None if the run is not one."""
        if start.get("modality") != "tomography":
            return None
        geometry = next(
            (
                g
                for g in start.get("geometry", {}).values()
                if isinstance(g, dict) and "radiation" in g
            ),
            None,
        )
        if geometry is None:
            raise ValueError("tomography run without a projection-detector geometry")
        units = start.get("units", {})
        theta_key = start["motors"][0]
        if units.get(theta_key, "deg") != "deg":
            raise ValueError(f"rotation {theta_key}: unit {units[theta_key]!r} is not 'deg'")
        return cls(
            image_key=geometry["image_key"],
            theta_key=theta_key,
            frame_shape=tuple(int(n) for n in geometry["frame_shape"]),  # type: ignore[arg-type]
            pixel_size=float(geometry["pixel_size_m"]),
            radiation=str(geometry["radiation"]),
        )


class TomoReconstruction(StreamingAnalysis):
    """Reconstruct tomography runs live (or replayed) from their documents.

    Parameters
    ----------
    sink : callable or list of callables, optional
        Receives the analysis run's documents (e.g. ``catalog.writer("processed")``).
    snapshot_interval : float
        Seconds between emitted central-slice snapshots while the scan runs (0: none).
    refine_iterations : int
        SIRT iterations on the whole volume after the last angle (0: plain FBP).
    device : str
        Torch device.
    worker_nice : int
        While a run is open, the worker runs this much nicer than the RunEngine's thread
        (see :class:`~synaps_agent.callbacks.analysis.StreamingAnalysis`). 0 disables.
    """

    processor = "tomo_reconstruction"

    def __init__(
        self,
        sink: Subscriber | list[Subscriber] | None = None,
        *,
        snapshot_interval: float = 2.0,
        refine_iterations: int = 0,
        device: str = "cpu",
        worker_nice: int = 10,
    ) -> None:
        super().__init__(sink, worker_nice=worker_nice)
        self.snapshot_interval = float(snapshot_interval)
        self.refine_iterations = int(refine_iterations)
        self.device = device
        self.geometry: TomoGeometry | None = None
        self.fbp: StreamingFBP | None = None
        self.analysis: AnalysisRun | None = None
        self.skipped: list[tuple[int, str]] = []
        self.final_volume: np.ndarray | None = None
        self._reader = StreamFrameReader()
        self._streams: dict[str, str] = {}
        self._frames: dict[tuple[str, int], np.ndarray] = {}
        self._angles: dict[int, float] = {}
        self._calibration: dict[str, list[np.ndarray]] = {}
        self._flat_dark_cache: tuple | None = None
        self._warned_flat = False
        self._lock = threading.Lock()
        self._last_emit = 0.0
        self._dirty = False

    # -- documents --------------------------------------------------------------------
    def start(self, doc: dict) -> None:
        self.stop_worker(timeout=30)
        self.geometry = geometry = TomoGeometry.from_start(doc)
        if geometry is None:
            return
        self.fbp = StreamingFBP(
            geometry.frame_shape, voxel_size=geometry.pixel_size, device=self.device
        )
        self.skipped = []
        self.final_volume = None
        self._streams.clear()
        self._frames.clear()
        self._angles.clear()
        self._calibration = {name: [] for name in CALIBRATION_STREAMS}
        self._flat_dark_cache = None
        self._warned_flat = False
        self.analysis = AnalysisRun(
            self.sink,
            raw_uid=doc["uid"],
            processor=self.processor,
            parameters={
                "filter": "ramp",
                "refine_iterations": self.refine_iterations,
                "voxel_size_m": geometry.pixel_size,
            },
            md={
                "modality": "tomography",
                "sample": doc.get("sample", {}),
                "units": {"volume": "1/m (linear attenuation coefficient)"},
            },
        )
        self._last_emit = time.monotonic()
        self.start_worker()

    def descriptor(self, doc: dict) -> None:
        if self.geometry is not None:
            self._streams[doc["uid"]] = doc.get("name", "primary")

    def stream_resource(self, doc: dict) -> None:
        if self.geometry is not None and doc.get("data_key") == self.geometry.image_key:
            self._reader.stream_resource(doc)

    def stream_datum(self, doc: dict) -> None:
        stream = self._streams.get(doc.get("descriptor"))
        if self.geometry is None or stream is None:
            return
        if self._reader.data_key(doc["stream_resource"]) != self.geometry.image_key:
            return
        _, seq_nums, frames = self._reader.stream_datum(doc)
        for seq_num, frame in zip(seq_nums, frames, strict=False):
            self._pair(stream, seq_num, frame=frame)

    def event(self, doc: dict) -> None:
        geometry = self.geometry
        stream = self._streams.get(doc.get("descriptor"))
        if geometry is None or stream is None:
            return
        data = doc["data"]
        if stream == "primary":
            self._pair(stream, doc["seq_num"], angle=float(data[geometry.theta_key]))
        else:
            self._pair(stream, doc["seq_num"], angle=float("nan"))
        frame = data.get(geometry.image_key)
        if frame is not None and doc.get("filled", {}).get(geometry.image_key, True):
            self._pair(stream, doc["seq_num"], frame=np.asarray(frame))

    def stop(self, doc: dict) -> None:
        self._reader.clear()  # the run's frame files are closed
        if self.geometry is not None and self.analysis is not None:
            self.finish()

    def _pair(
        self,
        stream: str,
        seq_num: int,
        *,
        frame: np.ndarray | None = None,
        angle: float | None = None,
    ) -> None:
        key = (stream, seq_num)
        with self._lock:
            if frame is not None:
                self._frames[key] = frame
            if angle is not None and stream == "primary":
                self._angles[seq_num] = angle
            ready = key in self._frames and (stream != "primary" or seq_num in self._angles)
            if ready:
                angle_value = self._angles.pop(seq_num, float("nan"))
                self.submit((stream, seq_num, self._frames.pop(key), angle_value))

    # -- worker -----------------------------------------------------------------------
    def _flat_dark(self, frame: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Mean flat and dark of the calibration frames so far (averaged once, then cached)."""
        if self._flat_dark_cache is None:
            darks, flats = self._calibration["dark"], self._calibration["flat"]
            dark = np.mean(darks, axis=0) if darks else 0.0
            flat = np.mean(flats, axis=0) if flats else None
            self._flat_dark_cache = (flat, dark)
        flat, dark = self._flat_dark_cache
        if flat is None:
            if not self._warned_flat:
                self.report_warning(
                    f"{self.processor}: no flat field; using each frame's 99.5th percentile "
                    "as open beam"
                )
                self._warned_flat = True
            flat = float(np.percentile(frame, 99.5))
        return flat, dark

    def process(self, item: tuple[str, int, np.ndarray, float]) -> None:
        stream, seq_num, frame, angle = item
        frame = np.asarray(frame, dtype=np.float32)
        if frame.shape != self.geometry.frame_shape:
            self._skip(seq_num, f"frame shape {frame.shape} != {self.geometry.frame_shape}")
            return
        if not np.all(np.isfinite(frame)):
            self._skip(seq_num, "frame holds NaN or inf")
            return
        if stream in CALIBRATION_STREAMS:
            self._calibration[stream].append(frame)
            self._flat_dark_cache = None
            return
        if stream != "primary":
            return
        flat, dark = self._flat_dark(frame)
        self.fbp.add(normalize_projection(frame, flat, dark), angle)
        self._dirty = True

    def _skip(self, seq_num: int, reason: str) -> None:
        self.skipped.append((seq_num, reason))
        self.report_warning(f"{self.processor}: event {seq_num} skipped: {reason}")

    def step(self) -> bool:
        if (
            self._dirty
            and self.snapshot_interval > 0
            and time.monotonic() - self._last_emit > self.snapshot_interval
        ):
            self._emit(final=False)
            return True
        return False

    def _emit(self, *, final: bool) -> None:
        self._last_emit = time.monotonic()
        self._dirty = False
        if self.fbp.num_angles == 0:
            return
        mid = self.geometry.frame_shape[0] // 2
        if final:
            volume = self.fbp.volume()
            if self.refine_iterations > 0:
                volume = self.fbp.refine(self.refine_iterations, method="sirt")
            self.final_volume = np.asarray(volume, dtype=np.float32)
            self.analysis.event(
                "tomogram_volume", {"volume": self.final_volume, "num_angles": self.fbp.num_angles}
            )
            central = self.final_volume[mid]
        else:
            central = self.fbp.volume(slices=[mid])[0]
        self.analysis.event(
            "tomogram",
            {
                "central_slice": np.asarray(central, dtype=np.float32),
                "num_angles": int(self.fbp.num_angles),
                "final": bool(final),
            },
        )

    def finalize(self) -> None:
        try:
            self._emit(final=True)
            reason = "; ".join(self.errors[-3:])
            if self.skipped:
                reason = (reason + "; " if reason else "") + f"{len(self.skipped)} frames skipped"
            self.analysis.close(exit_status="success" if not self.errors else "fail", reason=reason)
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"{self.processor}: finalize: {exc!r}")
            self.analysis.close(exit_status="fail", reason=repr(exc))

    # -- public -----------------------------------------------------------------------
    def snapshot(self, slices: list[int] | None = None) -> np.ndarray | None:
        """The current reconstruction (mu in 1/m), or some z slices of it."""
        if self.fbp is None or self.fbp.num_angles == 0:
            return None
        return self.fbp.volume(slices=slices)
