"""Live segmentation of a live (or replayed) ptychographic reconstruction.

:class:`LiveSegmentation` consumes the documents of a reconstruction's *analysis run*
(start with ``processor.name == "ptycho_reconstruction"``, its descriptor and the
``reconstruction`` events emitted by
:class:`~synaps_agent.callbacks.ptycho.PtychoReconstruction`), so the same object can be
subscribed to the reconstruction's sink in process, fed from a 0MQ/Kafka stream, or fed
the stored processed run (``catalog.processed[uid].documents()``) to replay it.

Every reconstruction snapshot is handed to a worker thread that segments
``amplitude * exp(1j * phase)`` with a :class:`~synaps_agent.segment.base.Segmenter`
(coverage = the illumination) and emits an analysis run of its own (processor
``"segmentation"``) with a ``segmentation`` stream (labels, probabilities, uncertainty,
...) and, for the final snapshot, a ``particles`` stream (sample summary and particle
table). Snapshots arriving faster than the worker segments them are coalesced: only the
newest non-final snapshot of each angle is segmented; final snapshots always are.

>>> seg = LiveSegmentation(catalog.writer("processed"), segmenter=segmenter)  # doctest: +SKIP
>>> recon = PtychoReconstruction(DocumentSink(catalog.writer("processed"), seg))  # doctest: +SKIP
>>> RE.subscribe(recon); RE(plan); recon.wait(); seg.wait()         # doctest: +SKIP
>>> uncertainty, (xmin, xmax, ymin, ymax) = seg.uncertainty_for_agent()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from synaps_agent.segment.base import SegmentationResult, Segmenter

from .analysis import AnalysisRun, StreamingAnalysis, Subscriber

__all__ = [
    "LiveSegmentation",
    "ReconstructionSnapshot",
    "SegmentationSnapshot",
    "VolumeSegmentation",
    "VolumeSegmentationSnapshot",
    "cylinder_mask",
    "measured_summary",
    "normalize_reconstruction",
    "particles_event",
    "stage_extent",
]

RECONSTRUCTION_PROCESSOR = "ptycho_reconstruction"
RECONSTRUCTION_STREAM = "reconstruction"
TOMO_PROCESSOR = "tomo_reconstruction"
VOLUME_STREAM = "tomogram_volume"
PHASE_NAMES = ("pore", "carbon_binder", "active", "secondary")


@dataclass(frozen=True)
class ReconstructionSnapshot:
    """One ``reconstruction`` event, as the worker needs it."""

    phase: np.ndarray
    amplitude: np.ndarray
    illumination: np.ndarray
    origin: tuple[int, int]
    theta: float
    final: bool
    seq_num: int
    num_frames: int
    arrival: int = 0


@dataclass
class SegmentationSnapshot:
    """The most recent segmentation (:attr:`LiveSegmentation.latest`).

    Attributes
    ----------
    result : SegmentationResult
        What the segmenter returned.
    origin : (int, int)
        Pixel coordinates ``(row, col)`` of array index ``(0, 0)`` in the stage-origin
        pixel frame of the reconstruction.
    image_geometry : dict or None
        Pixel-to-stage mapping copied from the reconstruction's start document.
    raw_uid : str or None
        uid of the raw (measured) run.
    time : float
        ``time.time()`` when the segmentation finished.
    theta : float
        Rotation angle of the snapshot.
    final : bool
        Whether it is the segmentation of the reconstruction's final snapshot.
    recon_uid : str or None
        uid of the reconstruction's analysis run.
    seq_num : int
        seq_num of the reconstruction event segmented.
    num_frames : int
        Frames the segmented reconstruction held (-1 if its event did not say).
    """

    result: SegmentationResult
    origin: tuple[int, int]
    image_geometry: dict | None
    raw_uid: str | None
    time: float
    theta: float = 0.0
    final: bool = False
    recon_uid: str | None = None
    seq_num: int = 0
    num_frames: int = -1
    summary: dict | None = field(default=None, repr=False)


class LiveSegmentation(StreamingAnalysis):
    """Segment reconstruction snapshots as they arrive, with uncertainty for the agent.

    Parameters
    ----------
    sink : callable or list of callables, optional
        Receives the segmentation analysis run's documents (e.g.
        ``DocumentSink(catalog.writer("processed"))``).
    segmenter : Segmenter
        ``segment(image_complex, coverage) -> SegmentationResult``.
    min_interval : float
        Least time (s) between two segmentations of non-final snapshots; snapshots
        arriving in between are coalesced (the newest wins). Final snapshots are always
        segmented at once.
    characterize : bool
        Measure particles (``particles`` stream) on final snapshots.
    pixel_size : float, optional
        Pixel edge in metres for the particle measurements; by default the
        reconstruction's ``image_geometry["pixel_size_m"]``.
    preprocess : callable, optional
        ``f(image_complex, illumination) -> image`` applied before segmenting, to bring
        the reconstruction into the frame the segmenter was trained in (a ptychographic
        reconstruction has an arbitrary global phase and amplitude scale), e.g.
        :func:`normalize_reconstruction` -- then train the segmenter on images passed
        through the same function.
    coverage_threshold : float
        Pixels whose illumination is below this fraction of its maximum count as not
        measured (for ``mean_uncertainty_measured`` and the particle statistics).
    store_probabilities : bool
        Include the ``(C, H, W)`` float16 probabilities in the ``segmentation`` events.
    """

    processor = "segmentation"

    def __init__(
        self,
        sink: Subscriber | Iterable[Subscriber] | None = None,
        *,
        segmenter: Segmenter,
        min_interval: float = 0.5,
        characterize: bool = True,
        pixel_size: float | None = None,
        preprocess: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        coverage_threshold: float = 0.1,
        store_probabilities: bool = True,
    ) -> None:
        super().__init__(sink)
        if not callable(getattr(segmenter, "segment", None)):
            raise TypeError(f"{segmenter!r} has no segment(image, coverage) method")
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        if pixel_size is not None and not pixel_size > 0:
            raise ValueError(f"pixel_size must be positive, got {pixel_size}")
        self.segmenter = segmenter
        self.min_interval = float(min_interval)
        self.characterize = bool(characterize)
        self.pixel_size = None if pixel_size is None else float(pixel_size)
        self.preprocess = preprocess
        self.coverage_threshold = float(coverage_threshold)
        self.store_probabilities = bool(store_probabilities)
        self.analysis: AnalysisRun | None = None
        self.raw_uid: str | None = None
        self.recon_uid: str | None = None
        self.image_geometry: dict | None = None
        self.skipped: list[tuple[int, str]] = []
        self.num_segmented = 0
        self._descriptors: set[str] = set()
        self._pending: list[ReconstructionSnapshot] = []
        self._pending_lock = threading.Lock()
        self._latest: dict[float, SegmentationSnapshot] = {}
        self._latest_any: SegmentationSnapshot | None = None
        self._latest_lock = threading.Lock()
        self._arrivals = 0
        self._last_segmented = -math.inf

    # -- documents --------------------------------------------------------------------
    def start(self, doc: dict) -> None:
        if doc.get("processor", {}).get("name") != RECONSTRUCTION_PROCESSOR:
            return  # not a reconstruction (maybe our own run): leave the current one alone
        self.stop_worker(timeout=30)
        if self.analysis is not None:
            self.analysis.close(exit_status="abort", reason="a new reconstruction started")
        self.recon_uid = doc["uid"]
        self.raw_uid = doc.get("raw_uid")
        self.image_geometry = doc.get("image_geometry")
        self.skipped = []
        self.num_segmented = 0
        self._descriptors = set()
        with self._pending_lock:
            self._pending = []
        with self._latest_lock:
            self._latest = {}
            self._latest_any = None
        self._last_segmented = -math.inf
        self.analysis = AnalysisRun(
            self.sink,
            raw_uid=self.raw_uid or "",
            processor=self.processor,
            parameters={
                "segmenter": _describe(self.segmenter),
                "min_interval": self.min_interval,
                "characterize": self.characterize,
                "pixel_size": self.pixel_size,
                "coverage_threshold": self.coverage_threshold,
                "preprocess": _name_of(self.preprocess),
            },
            md={
                "recon_uid": self.recon_uid,
                "modality": doc.get("modality"),
                "sample": doc.get("sample", {}),
                "image_geometry": self.image_geometry,
            },
        )
        self.start_worker()

    def descriptor(self, doc: dict) -> None:
        if (
            self.recon_uid is not None
            and doc.get("run_start") == self.recon_uid
            and doc.get("name") == RECONSTRUCTION_STREAM
        ):
            self._descriptors.add(doc["uid"])

    def event(self, doc: dict) -> None:
        if doc.get("descriptor") not in self._descriptors:
            return
        data = doc["data"]
        snapshot = ReconstructionSnapshot(
            phase=np.asarray(data["object_phase"], dtype=np.float32),
            amplitude=np.asarray(data["object_amplitude"], dtype=np.float32),
            illumination=np.asarray(data["illumination"], dtype=np.float32),
            origin=(int(data.get("origin_row", 0)), int(data.get("origin_col", 0))),
            theta=float(data.get("theta", 0.0)),
            final=bool(data.get("final", False)),
            seq_num=int(doc.get("seq_num", 0)),
            num_frames=int(data.get("num_frames", -1)),
        )
        with self._pending_lock:
            self._arrivals += 1
            self._pending.append(replace(snapshot, arrival=self._arrivals))
        self.submit(snapshot.seq_num)

    def stop(self, doc: dict) -> None:
        if self.analysis is None or doc.get("run_start") != self.recon_uid:
            return
        self.finish()

    # -- worker -----------------------------------------------------------------------
    def process(self, item: int) -> None:
        self._drain(force=False)

    def step(self) -> bool:
        return self._drain(force=False)

    def finalize(self) -> None:
        analysis = self.analysis
        if analysis is None:
            return
        try:
            self._drain(force=True)
        finally:
            reasons = list(self.errors[-3:])
            if self.skipped:
                reasons.append(f"{len(self.skipped)} snapshots skipped")
            failed = self.num_segmented == 0 and bool(self.errors or self.skipped)
            analysis.close(exit_status="fail" if failed else "success", reason="; ".join(reasons))

    def _take(self, force: bool) -> list[ReconstructionSnapshot]:
        """Pending snapshots to segment now, in arrival order (coalesced per angle)."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        chosen: list[ReconstructionSnapshot] = []
        keep: list[ReconstructionSnapshot] = []
        newest_final: dict[float, int] = {}
        newest: dict[float, int] = {}
        for snap in pending:
            key = round(snap.theta, 3)
            newest[key] = snap.arrival
            if snap.final:
                newest_final[key] = snap.arrival
        due = force or time.monotonic() - self._last_segmented >= self.min_interval
        for snap in pending:
            key = round(snap.theta, 3)
            if snap.final:
                chosen.append(snap)
            elif snap.arrival == newest[key] and key not in newest_final:
                (chosen if due else keep).append(snap)
            # older non-final snapshots of the angle are superseded: dropped
        if keep:
            with self._pending_lock:
                self._pending = keep + self._pending
        return chosen

    def _drain(self, force: bool) -> bool:
        chosen = self._take(force)
        for snap in chosen:
            self._segment(snap)
        return bool(chosen)

    def _segment(self, snap: ReconstructionSnapshot) -> None:
        """Segment one snapshot and emit its events; errors are reported, not raised."""
        problem = _check_snapshot(snap)
        if problem:
            self.skipped.append((snap.seq_num, problem))
            self.report_warning(
                f"{self.processor}: reconstruction event {snap.seq_num} "
                f"(theta={snap.theta:g}) skipped: {problem}"
            )
            return
        self._last_segmented = time.monotonic()
        try:
            image = (snap.amplitude * np.exp(1j * snap.phase.astype(np.float64))).astype(
                np.complex64
            )
            if self.preprocess is not None:
                image = self.preprocess(image, snap.illumination)
            result = self.segmenter.segment(image, coverage=snap.illumination)
            _check_result(result, snap.phase.shape)
        except Exception as exc:  # noqa: BLE001 - one bad snapshot must not stop the run
            self.report_error(
                f"{self.processor}: segmenter failed on reconstruction event "
                f"{snap.seq_num}: {exc!r}"
            )
            return
        latest = SegmentationSnapshot(
            result=result,
            origin=snap.origin,
            image_geometry=self.image_geometry,
            raw_uid=self.raw_uid,
            time=time.time(),
            theta=snap.theta,
            final=snap.final,
            recon_uid=self.recon_uid,
            seq_num=snap.seq_num,
            num_frames=snap.num_frames,
        )
        with self._latest_lock:
            self._latest[round(snap.theta, 3)] = latest
            self._latest_any = latest
        self.num_segmented += 1
        self._emit_segmentation(snap, result)
        if self.characterize and snap.final:
            try:
                latest.summary = self._emit_particles(snap, result)
            except Exception as exc:  # noqa: BLE001
                self.report_error(f"{self.processor}: particle characterization: {exc!r}")

    def _measured(self, illumination: np.ndarray) -> np.ndarray:
        peak = float(illumination.max()) if illumination.size else 0.0
        if peak <= 0:
            return np.zeros(illumination.shape, bool)
        return illumination >= self.coverage_threshold * peak

    def _emit_segmentation(self, snap: ReconstructionSnapshot, result: SegmentationResult) -> None:
        measured = self._measured(snap.illumination)
        uncertainty = np.asarray(result.uncertainty, dtype=np.float32)
        data: dict[str, Any] = {
            "labels": np.asarray(result.labels, dtype=np.int8),
            "uncertainty": uncertainty,
            "entropy": np.asarray(result.entropy, dtype=np.float32),
            "mutual_information": np.asarray(result.mutual_information, dtype=np.float32),
            "mean_uncertainty": float(uncertainty.mean()),
            "mean_uncertainty_measured": (
                float(uncertainty[measured].mean()) if measured.any() else 1.0
            ),
            "measured_fraction": float(measured.mean()),
            "origin_row": int(snap.origin[0]),
            "origin_col": int(snap.origin[1]),
            "theta": float(snap.theta),
            "recon_seq_num": int(snap.seq_num),
            "num_frames": int(snap.num_frames),
            "final": bool(snap.final),
        }
        if self.store_probabilities:
            data["probabilities"] = np.asarray(result.probabilities, dtype=np.float16)
        self.analysis.event("segmentation", data)

    def _emit_particles(self, snap: ReconstructionSnapshot, result: SegmentationResult) -> dict:
        """Particle statistics of the measured part of a final segmentation."""
        pixel_size = self.pixel_size
        if pixel_size is None and self.image_geometry:
            pixel_size = self.image_geometry.get("pixel_size_m")
        if not pixel_size:
            self.report_warning(f"{self.processor}: no pixel size known; particles skipped")
            return {}
        measured = self._measured(snap.illumination)
        if not measured.any():
            self.report_warning(f"{self.processor}: nothing measured; particles skipped")
            return {}
        summary, (rows, cols) = measured_summary(result.labels, measured, float(pixel_size))
        table = summary.pop("table")
        r0, c0 = rows.start, cols.start
        # centroids in the stage-origin pixel frame and in stage units
        if len(table):
            centroids = np.array([list(c) for c in table["centroid_px"]], dtype=float)
            table["row"] = centroids[:, 0] + r0 + snap.origin[0]
            table["col"] = centroids[:, 1] + c0 + snap.origin[1]
            geometry = self.image_geometry or {}
            if "stage_origin_pixel" in geometry:
                so_row, so_col = (float(v) for v in geometry["stage_origin_pixel"])
                ps = float(geometry["pixel_size_m"])
                table["x"] = (table["col"] - so_col) * ps / float(geometry.get("x_unit_m", 1e-6))
                table["y"] = (table["row"] - so_row) * ps / float(geometry.get("y_unit_m", 1e-6))
            table = table.drop(columns=["centroid_px"])
        self.analysis.event(
            "particles", {**particles_event(summary, table), "theta": float(snap.theta)}
        )
        summary["table"] = table
        return summary

    # -- public -----------------------------------------------------------------------
    @property
    def latest(self) -> SegmentationSnapshot | None:
        """The most recent segmentation (any angle), None before the first one."""
        with self._latest_lock:
            return self._latest_any

    def latest_at(self, theta: float) -> SegmentationSnapshot | None:
        """The most recent segmentation at angle ``theta``."""
        with self._latest_lock:
            return self._latest.get(round(float(theta), 3))

    def frames_in_map(self, theta: float | None = None) -> int:
        """How many frames the reconstruction behind the latest segmentation held (at
        ``theta``, default the most recent of any angle): what the map of
        :meth:`uncertainty_for_agent` reflects. 0 before the first segmentation, -1 if
        the reconstruction did not say.

        An adaptive scan waits until this reaches the exposures it took (e.g.
        ``AgentFeed(..., map_frames=seg.frames_in_map)``), so its decisions do not
        depend on how fast the analysis keeps up.
        """
        latest = self.latest if theta is None else self.latest_at(theta)
        return 0 if latest is None else int(latest.num_frames)

    def uncertainty_for_agent(
        self, theta: float | None = None
    ) -> tuple[np.ndarray, tuple[float, float, float, float]] | None:
        """The latest uncertainty map and where it lies on the stage.

        Parameters
        ----------
        theta : float, optional
            Angle of the segmentation to use (default: the most recent of any angle).

        Returns
        -------
        (ndarray, (xmin, xmax, ymin, ymax)) or None
            The ``(H, W)`` float32 uncertainty in [0, 1] (1 where nothing was measured)
            and the stage coordinates (motor units) of its outer pixel edges: ``map[0, 0]``
            is the corner at ``(xmin, ymin)``, rows run along y and columns along x (as
            ``matplotlib.pyplot.imshow(map, origin="lower", extent=extent)`` shows it).
            None before the first segmentation or without a pixel-to-stage geometry.
        """
        latest = self.latest if theta is None else self.latest_at(theta)
        if latest is None or not latest.image_geometry:
            return None
        uncertainty = np.asarray(latest.result.uncertainty, dtype=np.float32)
        return uncertainty, stage_extent(latest.image_geometry, latest.origin, uncertainty.shape)


@dataclass
class VolumeSegmentationSnapshot:
    """The segmentation of a tomographic volume (:attr:`VolumeSegmentation.latest`).

    Attributes
    ----------
    labels : (nz, ny, nx) int8
        Phase per voxel.
    uncertainty : (nz, ny, nx) float32
        In [0, 1]; 1 outside the measured cylinder.
    measured : (nz, ny, nx) bool
        Voxels inside the cylinder every projection saw.
    summary : dict
        3D :func:`measured_summary` (count, diameters, phase fractions, ``table``);
        empty when characterization is off or failed.
    raw_uid, recon_uid : str or None
        The raw run and the reconstruction's analysis run.
    num_angles : int
        Projections in the reconstruction.
    time : float
        ``time.time()`` when the segmentation finished.
    """

    labels: np.ndarray
    uncertainty: np.ndarray
    measured: np.ndarray
    summary: dict
    raw_uid: str | None
    recon_uid: str | None
    num_angles: int
    time: float


class VolumeSegmentation(StreamingAnalysis):
    """Segment a tomographic reconstruction slice by slice and characterize it in 3D.

    Consumes the documents of a :class:`~synaps_agent.callbacks.tomo.TomoReconstruction`
    analysis run (processor ``"tomo_reconstruction"``): each ``tomogram_volume`` event
    (the volume, linear attenuation in 1/m) is segmented on a worker thread, one axial
    slice ``volume[z]`` at a time, by a 2D segmenter of real images (e.g. a
    :class:`~synaps_agent.segment.forest.ForestSegmenter` trained on reconstructions of
    other volumes, wrapped in :class:`~synaps_agent.segment.base.ProbabilisticSegmenter`).
    The voxels outside the cylinder every projection saw count as not measured
    (uncertainty 1, pore for the particles). Emits an analysis run (processor
    ``"volume_segmentation"``) with a ``segmentation_volume`` stream (labels,
    uncertainty, entropy) and a ``particles`` stream (3D particle table and sample
    figures, as :class:`LiveSegmentation` does for 2D).

    Parameters
    ----------
    sink : callable or list of callables, optional
        Receives the analysis run's documents.
    segmenter : Segmenter
        ``segment(slice_2d, coverage) -> SegmentationResult``.
    characterize : bool
        Measure the particles in 3D (``particles`` stream).
    voxel_size : float, optional
        Voxel edge in metres; by default the reconstruction's ``voxel_size_m``.
    cylinder_radius : float
        Radius of the measured cylinder as a fraction of the slice width.
    instance_options : dict, optional
        Passed to :func:`~synaps_agent.segment.characterize.particle_instances`; its
        defaults suit particles of radius >= 4 voxels (reduce ``crack_closing_px``,
        ``h`` and ``min_size`` for smaller ones).
    """

    processor = "volume_segmentation"

    def __init__(
        self,
        sink: Subscriber | Iterable[Subscriber] | None = None,
        *,
        segmenter: Segmenter,
        characterize: bool = True,
        voxel_size: float | None = None,
        cylinder_radius: float = 0.45,
        instance_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(sink)
        if not callable(getattr(segmenter, "segment", None)):
            raise TypeError(f"{segmenter!r} has no segment(image, coverage) method")
        if voxel_size is not None and not voxel_size > 0:
            raise ValueError(f"voxel_size must be positive, got {voxel_size}")
        if not 0 < cylinder_radius <= 0.5 * math.sqrt(2):
            raise ValueError(f"cylinder_radius must be in (0, 0.71], got {cylinder_radius}")
        self.segmenter = segmenter
        self.characterize = bool(characterize)
        self.voxel_size = None if voxel_size is None else float(voxel_size)
        self.cylinder_radius = float(cylinder_radius)
        self.instance_options = dict(instance_options or {})
        self.analysis: AnalysisRun | None = None
        self.raw_uid: str | None = None
        self.recon_uid: str | None = None
        self.recon_voxel_size: float | None = None
        self.skipped: list[tuple[int, str]] = []
        self._descriptors: set[str] = set()
        self._latest: VolumeSegmentationSnapshot | None = None

    # -- documents --------------------------------------------------------------------
    def start(self, doc: dict) -> None:
        processor = doc.get("processor", {})
        if processor.get("name") != TOMO_PROCESSOR:
            return
        self.stop_worker(timeout=30)
        if self.analysis is not None:
            self.analysis.close(exit_status="abort", reason="a new reconstruction started")
        self.recon_uid = doc["uid"]
        self.raw_uid = doc.get("raw_uid")
        self.recon_voxel_size = processor.get("parameters", {}).get("voxel_size_m")
        self.skipped = []
        self._descriptors = set()
        self._latest = None
        self.analysis = AnalysisRun(
            self.sink,
            raw_uid=self.raw_uid or "",
            processor=self.processor,
            parameters={
                "segmenter": _describe(self.segmenter),
                "characterize": self.characterize,
                "voxel_size": self.voxel_size,
                "cylinder_radius": self.cylinder_radius,
                "instance_options": self.instance_options,
                "slicing": "axial (volume[z])",
            },
            md={
                "recon_uid": self.recon_uid,
                "modality": doc.get("modality"),
                "sample": doc.get("sample", {}),
            },
        )
        self.start_worker()

    def descriptor(self, doc: dict) -> None:
        if (
            self.recon_uid is not None
            and doc.get("run_start") == self.recon_uid
            and doc.get("name") == VOLUME_STREAM
        ):
            self._descriptors.add(doc["uid"])

    def event(self, doc: dict) -> None:
        if doc.get("descriptor") not in self._descriptors:
            return
        data = doc["data"]
        volume = np.asarray(data["volume"], dtype=np.float32)
        self.submit((int(doc.get("seq_num", 0)), volume, int(data.get("num_angles", -1))))

    def stop(self, doc: dict) -> None:
        if self.analysis is None or doc.get("run_start") != self.recon_uid:
            return
        self.finish()

    # -- worker -----------------------------------------------------------------------
    def process(self, item: tuple[int, np.ndarray, int]) -> None:
        seq_num, volume, num_angles = item
        problem = _check_volume(volume)
        if problem:
            self.skipped.append((seq_num, problem))
            self.report_warning(f"{self.processor}: volume event {seq_num} skipped: {problem}")
            return
        measured = cylinder_mask(volume.shape, self.cylinder_radius)
        coverage = measured[0].astype(np.float32)
        labels = np.empty(volume.shape, np.int8)
        uncertainty = np.empty(volume.shape, np.float32)
        entropy = np.empty(volume.shape, np.float32)
        for z, image in enumerate(volume):
            result = self.segmenter.segment(image, coverage=coverage)
            _check_result(result, image.shape)
            labels[z] = result.labels
            uncertainty[z] = result.uncertainty
            entropy[z] = result.entropy
        self.analysis.event(
            "segmentation_volume",
            {
                "labels": labels,
                "uncertainty": uncertainty,
                "entropy": entropy,
                "mean_uncertainty_measured": float(uncertainty[measured].mean()),
                "measured_fraction": float(measured.mean()),
                "recon_seq_num": seq_num,
                "num_angles": num_angles,
            },
        )
        summary: dict = {}
        if self.characterize:
            try:
                summary = self._emit_particles(labels, measured)
            except Exception as exc:  # noqa: BLE001 - the segmentation is already out
                self.report_error(f"{self.processor}: particle characterization: {exc!r}")
        self._latest = VolumeSegmentationSnapshot(
            labels=labels,
            uncertainty=uncertainty,
            measured=measured,
            summary=summary,
            raw_uid=self.raw_uid,
            recon_uid=self.recon_uid,
            num_angles=num_angles,
            time=time.time(),
        )

    def _emit_particles(self, labels: np.ndarray, measured: np.ndarray) -> dict:
        voxel_size = self.voxel_size or self.recon_voxel_size
        if not voxel_size:
            self.report_warning(f"{self.processor}: no voxel size known; particles skipped")
            return {}
        summary, box = measured_summary(
            labels, measured, float(voxel_size), **self.instance_options
        )
        table = summary.pop("table")
        if len(table):
            centroids = np.array([list(c) for c in table["centroid_px"]], dtype=float)
            for axis, name in enumerate(("z", "row", "col")):
                table[name] = centroids[:, axis] + box[axis].start
            table = table.drop(columns=["centroid_px"])
        self.analysis.event("particles", particles_event(summary, table))
        summary["table"] = table
        return summary

    def finalize(self) -> None:
        analysis = self.analysis
        if analysis is None:
            return
        reasons = list(self.errors[-3:])
        if self.skipped:
            reasons.append(f"{len(self.skipped)} volumes skipped")
        failed = self._latest is None
        analysis.close(exit_status="fail" if failed else "success", reason="; ".join(reasons))

    # -- public -----------------------------------------------------------------------
    @property
    def latest(self) -> VolumeSegmentationSnapshot | None:
        """The most recent volume segmentation, None before the first one."""
        return self._latest


def cylinder_mask(shape: tuple[int, ...], radius: float = 0.45) -> np.ndarray:
    """Voxels of a ``(nz, ny, nx)`` volume inside the cylinder every projection saw.

    The cylinder's axis is the rotation axis (through the slice centre, along z), its
    radius ``radius * nx``.
    """
    nz, ny, nx = (int(n) for n in shape)
    yy, xx = np.mgrid[:ny, :nx]
    inside = (yy - ny / 2 + 0.5) ** 2 + (xx - nx / 2 + 0.5) ** 2 < (radius * nx) ** 2
    return np.broadcast_to(inside, (nz, ny, nx))


def _check_volume(volume: np.ndarray) -> str:
    """Why a volume cannot be segmented ("" if it can)."""
    if volume.ndim != 3:
        return f"volume is not 3D (shape {volume.shape})"
    if min(volume.shape) < 4:
        return f"volume of shape {volume.shape} is too small"
    bad = int(np.count_nonzero(~np.isfinite(volume)))
    if bad:
        return f"volume holds {bad} NaN or inf values"
    return ""


def measured_summary(
    labels: np.ndarray, measured: np.ndarray, pixel_size: float, **instance_options: Any
) -> tuple[dict, tuple[slice, ...]]:
    """Particles and phase fractions of the measured part of a label map (2D or 3D).

    Particles are split inside the bounding box of the measured pixels with unmeasured
    pixels counted as pore (:func:`~synaps_agent.segment.characterize.crop_to_measured`);
    phase fractions, porosity and solid fraction are over the measured pixels only.
    ``instance_options`` go to
    :func:`~synaps_agent.segment.characterize.particle_instances` (``min_size``,
    ``h``, ``crack_closing_px``, ...).

    Returns
    -------
    (dict, tuple of slice)
        :func:`~synaps_agent.segment.characterize.sample_summary` of the box (with its
        ``table``) and the box.
    """
    from synaps_agent.segment.characterize import (
        crop_to_measured,
        particle_instances,
        sample_summary,
    )

    crop, inside, box = crop_to_measured(np.asarray(labels, dtype=np.int8), measured)
    instances = particle_instances(crop, **instance_options)
    summary = sample_summary(crop, instances, float(pixel_size), exclude_border=False)
    counts = np.bincount(crop[inside].astype(np.intp), minlength=len(PHASE_NAMES))
    fractions = counts[: len(PHASE_NAMES)] / max(int(inside.sum()), 1)
    summary["phase_fractions"] = {
        name: float(f) for name, f in zip(PHASE_NAMES, fractions, strict=True)
    }
    summary["porosity"] = float(fractions[0])
    summary["solid_fraction"] = float(fractions[2] + fractions[3])
    return summary, box


def particles_event(summary: dict, table: Any) -> dict[str, Any]:
    """The data of a ``particles`` event: sample figures and the table as JSON records."""
    return {
        "count": int(summary["count"]),
        "median_diameter_m": float(summary["median_diameter_m"]),
        "mean_diameter_m": float(summary["mean_diameter_m"]),
        "porosity": float(summary["porosity"]),
        "solid_fraction": float(summary["solid_fraction"]),
        "cracked_fraction": float(summary["cracked_fraction"]),
        **{f"fraction_{k}": float(v) for k, v in summary["phase_fractions"].items()},
        "diameter_histogram": json.dumps(summary["diameter_histogram"]),
        "pixel_size_m": float(summary["pixel_size_m"]),
        "table": table.to_json(orient="records"),
    }


def normalize_reconstruction(
    image: np.ndarray, coverage: np.ndarray | None = None, *, threshold: float = 0.3
) -> np.ndarray:
    """Remove the global phase and amplitude scale of a complex image.

    The median phase of the well-measured pixels becomes 0 and their median amplitude 1,
    so reconstructions (whose global phase and scale are arbitrary) and training images
    share one frame. Use the same function on the training images (``coverage=None``).

    Parameters
    ----------
    image : (H, W) complex array
        The reconstruction.
    coverage : (H, W) array, optional
        Illumination; pixels above ``threshold`` times its maximum are used (all pixels
        without it).
    threshold : float
        Relative illumination of the pixels used.

    Returns
    -------
    (H, W) complex64 array
    """
    from synaps_agent.segment.unet import phase_reference

    image = np.asarray(image)
    # pore (the most transmissive, least phase-shifting phase) becomes phase 0, amplitude 1:
    # the frame of the phantoms' transmission the models are trained in
    return (image / phase_reference(image, coverage)).astype(np.complex64)


def stage_extent(
    image_geometry: dict, origin: tuple[int, int], shape: tuple[int, ...]
) -> tuple[float, float, float, float]:
    """Stage coordinates ``(xmin, xmax, ymin, ymax)`` of the outer pixel edges of an image.

    Parameters
    ----------
    image_geometry : dict
        ``pixel_size_m``, ``stage_origin_pixel`` ``[row, col]``, ``x_unit_m``,
        ``y_unit_m``: pixel ``(row, col)`` (its centre) sits at stage
        ``x = (col - stage_origin_pixel[1]) * pixel_size_m / x_unit_m`` and
        ``y = (row - stage_origin_pixel[0]) * pixel_size_m / y_unit_m``.
    origin : (int, int)
        Pixel ``(row, col)`` of array index ``(0, 0)``.
    shape : (int, int)
        Shape of the image.
    """
    ps = float(image_geometry["pixel_size_m"])
    so_row, so_col = (float(v) for v in image_geometry["stage_origin_pixel"])
    x_unit = float(image_geometry.get("x_unit_m", 1e-6))
    y_unit = float(image_geometry.get("y_unit_m", 1e-6))
    rows, cols = int(shape[0]), int(shape[1])
    xmin = (origin[1] - 0.5 - so_col) * ps / x_unit
    xmax = (origin[1] + cols - 0.5 - so_col) * ps / x_unit
    ymin = (origin[0] - 0.5 - so_row) * ps / y_unit
    ymax = (origin[0] + rows - 0.5 - so_row) * ps / y_unit
    return float(xmin), float(xmax), float(ymin), float(ymax)


def _check_snapshot(snap: ReconstructionSnapshot) -> str:
    """Why a snapshot cannot be segmented ("" if it can)."""
    if snap.phase.ndim != 2:
        return f"object phase is not 2D (shape {snap.phase.shape})"
    for name, array in (
        ("object_phase", snap.phase),
        ("object_amplitude", snap.amplitude),
        ("illumination", snap.illumination),
    ):
        if array.shape != snap.phase.shape:
            return f"{name} shape {array.shape} != object shape {snap.phase.shape}"
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            return f"{name} holds {bad} NaN or inf values"
    return ""


def _check_result(result: SegmentationResult, shape: tuple[int, ...]) -> None:
    for name in ("labels", "uncertainty", "entropy", "mutual_information"):
        value = np.shape(getattr(result, name))
        if value != tuple(shape):
            raise ValueError(f"segmenter returned {name} of shape {value}, expected {shape}")


def _name_of(obj: Any) -> str | None:
    if obj is None:
        return None
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


def _describe(obj: Any, depth: int = 0) -> dict:
    """Class name and simple public attributes of a segmenter (and its model)."""
    out: dict[str, Any] = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    for key, value in sorted(vars(obj).items() if hasattr(obj, "__dict__") else []):
        if key.startswith("_"):
            continue
        if _is_simple(value):
            out[key] = value
        elif depth < 1 and hasattr(value, "__dict__") and not callable(value):
            out[key] = _describe(value, depth + 1)
    return out


def _is_simple(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_simple(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_simple(v) for k, v in value.items())
    return False
