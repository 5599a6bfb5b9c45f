"""Live ptychography: reconstruct while the scan runs, from the documents alone.

:class:`PtychoReconstruction` starts on a RunStart whose metadata describes a
ptychography (or ptycho-tomography) scan, pairs each frame (inline in the event, or
referenced by StreamResource/StreamDatum) with the stage position of its event, and
hands them to a :class:`~synaps_agent.recon.ptycho.PtychoEngine` on a worker thread that
iterates continuously. :meth:`PtychoReconstruction.snapshot` returns the current state
at any time; snapshots are emitted as events of an analysis run (stream
``reconstruction``) at intervals and at the end.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from synaps_agent.recon.ptycho import PtychoConfig, PtychoEngine, PtychoSnapshot
from synaps_agent.sim_devices.optics import gaussian_probe

from .analysis import AnalysisRun, StreamingAnalysis, Subscriber
from .frames import StreamFrameReader

__all__ = ["PtychoGeometry", "PtychoReconstruction", "place_in_frame"]

#: What an event says about its frame: stage ``(x, y, theta, i0)`` (i0 None if not read).
Position = tuple[float, float, float, float | None]

#: held while final epochs run with their own torch thread count (process-wide): two
#: reconstructions finishing together would otherwise restore each other's setting out
#: of order
_THREAD_COUNT_LOCK = threading.Lock()

UNIT_TO_METRES = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9}


@dataclass(frozen=True)
class PtychoGeometry:
    """What a reconstruction needs, read from a RunStart document."""

    image_key: str
    x_key: str
    y_key: str
    theta_key: str | None
    x_scale: float  # metres per motor unit
    y_scale: float
    frame_shape: tuple[int, int]
    pixel_size: float
    origin_pixel: tuple[float, float]
    probe: np.ndarray

    @classmethod
    def from_start(cls, start: dict) -> PtychoGeometry | None:
        """The geometry of a ptychography run, or None if the run is not one."""
        if start.get("modality") not in ("ptychography", "ptycho-tomography"):
            return None
        geometry = next(
            (
                g
                for g in start.get("geometry", {}).values()
                if isinstance(g, dict) and "object_pixel_size_m" in g
            ),
            None,
        )
        if geometry is None:
            raise ValueError("ptychography run without a detector geometry in its metadata")
        motors = start["motors"]
        units = start.get("units", {})
        scales = []
        for key in motors[:2]:
            unit = units.get(key, "um")
            if unit not in UNIT_TO_METRES:
                raise ValueError(f"motor {key}: unknown length unit {unit!r}")
            scales.append(UNIT_TO_METRES[unit])
        frame_shape = tuple(int(n) for n in geometry["frame_shape"])
        probe_md = geometry["probe"]
        if probe_md.get("model") != "gaussian":
            raise ValueError(f"unknown probe model {probe_md.get('model')!r}")
        probe = gaussian_probe(
            frame_shape,
            float(geometry["object_pixel_size_m"]),
            float(probe_md["fwhm_m"]),
            float(probe_md["curvature_radius_m"]),
            float(geometry["energy_ev"]),
            float(geometry.get("photons_per_frame", 1.0)),
        )
        return cls(
            image_key=geometry["image_key"],
            x_key=motors[0],
            y_key=motors[1],
            theta_key=motors[2] if len(motors) > 2 else None,
            x_scale=scales[0],
            y_scale=scales[1],
            frame_shape=frame_shape,  # type: ignore[arg-type]
            pixel_size=float(geometry["object_pixel_size_m"]),
            origin_pixel=tuple(float(v) for v in geometry["stage_origin_pixel"]),  # type: ignore
            probe=probe,
        )

    def planned_window(self, start: dict) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """Object-pixel (origin, shape) covering the scan planned in ``start``, if known."""
        pattern = start.get("scan_pattern", {})
        kind = pattern.get("kind")
        if kind == "raster":
            xs = [pattern["x_start"], pattern["x_stop"]]
            ys = [pattern["y_start"], pattern["y_stop"]]
        elif kind == "fermat_spiral":
            xs = [pattern["x_center"] - pattern["radius"], pattern["x_center"] + pattern["radius"]]
            ys = [pattern["y_center"] - pattern["radius"], pattern["y_center"] + pattern["radius"]]
        elif kind in ("list", "ptycho_tomography") and pattern.get("positions"):
            points = np.asarray(pattern["positions"], dtype=float)
            xs, ys = (
                [points[:, 0].min(), points[:, 0].max()],
                [points[:, 1].min(), points[:, 1].max()],
            )
        elif "x_limits" in pattern and "y_limits" in pattern:  # adaptive scans: the space
            xs, ys = list(pattern["x_limits"]), list(pattern["y_limits"])
        else:
            return None
        corners = [self.to_pixels(x, y) for x in xs for y in ys]
        rows = [c[0] for c in corners]
        cols = [c[1] for c in corners]
        half = (self.frame_shape[0] // 2 + 2, self.frame_shape[1] // 2 + 2)
        origin = (math.floor(min(rows)) - half[0], math.floor(min(cols)) - half[1])
        shape = (
            math.ceil(max(rows)) + half[0] - origin[0] + 1,
            math.ceil(max(cols)) + half[1] - origin[1] + 1,
        )
        return origin, shape

    def image_geometry(self) -> dict:
        """Pixel-to-stage mapping of the reconstructed image (JSON-friendly).

        Pixel ``(row, col)`` of the object frame sits at stage
        ``x = (col - stage_origin_pixel[1]) * pixel_size_m / x_unit_m`` and
        ``y = (row - stage_origin_pixel[0]) * pixel_size_m / y_unit_m``.
        """
        return {
            "pixel_size_m": self.pixel_size,
            "stage_origin_pixel": list(self.origin_pixel),
            "x_key": self.x_key,
            "y_key": self.y_key,
            "theta_key": self.theta_key,
            "x_unit_m": self.x_scale,
            "y_unit_m": self.y_scale,
        }

    def to_pixels(self, x: float, y: float) -> tuple[float, float]:
        """Stage position (motor units) -> object pixel (row, col) of the probe centre."""
        return (
            self.origin_pixel[0] + y * self.y_scale / self.pixel_size,
            self.origin_pixel[1] + x * self.x_scale / self.pixel_size,
        )


class PtychoReconstruction(StreamingAnalysis):
    """Reconstruct ptychography runs live (or replayed) from their documents.

    Parameters
    ----------
    sink : callable or list of callables, optional
        Receives the analysis run's documents (e.g. ``catalog.writer("processed")``).
    config : PtychoConfig, optional
        Engine settings (algorithm, batch size, device, ...).
    snapshot_interval : float
        Seconds between emitted snapshots while the scan runs (0: only the final one).
    final_epochs : int
        Epochs over all frames after the run stops, before the final snapshot.
    momentum : float, optional
        Heavy-ball momentum of the object (see
        :class:`~synaps_agent.recon.ptycho.PtychoConfig`) in the free-running schedule,
        live and in the final epochs, where the config's momentum is 0 (rPIE's and
        ePIE's default; a config with momentum keeps its own); None: always the
        config's. Default 0.5: on the recon_streaming benchmark (rPIE; offline replays of
        the scan at the update rate the worker gets beside a 200 frames/s RunEngine)
        the final epochs reach the batch reconstruction's error + 10 % in 5-6 epochs
        instead of 11-13; see docs/benchmarks.md. The chunk schedule keeps the config's
        momentum (its results are a fixed reference).
    final_threads : int, optional
        Torch intra-op threads for the final epochs of the free-running schedule (the
        RunEngine is idle by then): the first final epoch runs with the process's
        threads, the second with ``final_threads``, the rest with whichever was faster
        (on an idle 2-core machine 2 threads make an epoch 1.6x faster; on a loaded one
        a thread waiting for a busy core made it 4-5x slower). ``torch.set_num_threads``
        is process-wide: other torch work in the process gets them too meanwhile; it is
        restored after, and reconstructions that switch it take turns. None: unchanged.
        The chunk schedule keeps the process's threads.
    max_epochs_live : float
        Background iterations stop after this many epochs over the frames received, so
        an idle reconstruction does not spin (more frames resume it).
    refine_probe_live : bool
        Refine the probe while frames are still arriving. Off by default: the probe from
        the metadata is held fixed until the run stops, because refining it from the few
        frames of a partial scan can lead the reconstruction into a poor local minimum;
        the final epochs refine it (if the config's ``beta_probe`` > 0).
    worker_nice : int
        While a run is open, the worker thread runs this much nicer than the RunEngine's
        thread, so the scan is not slowed by the math; the final epochs get a full share
        (see :class:`~synaps_agent.callbacks.analysis.StreamingAnalysis`). 0 disables.
    chunk_frames : int, optional
        Deterministic schedule (see Notes): the frames are taken in chunks of this many
        ``seq_num`` (chunk ``j`` holds ``seq_num`` ``j * chunk_frames + 1`` to
        ``(j + 1) * chunk_frames``). Default (None): free-running.
    chunk_iterations : int
        With ``chunk_frames``: mini-batch updates (of ``config.batch_size`` frames drawn
        from all frames received so far) after each chunk is added.
    i0_key : str, optional
        Data key of the incident-intensity (I0) monitor in the events (the simulated
        beamline's ``i0``); events without it are judged by their counts.
    min_i0_fraction : float
        A frame whose event's I0 is below this fraction of the median I0 of the run so
        far (the positive readings up to and including it) is skipped, with a warning
        naming its ``seq_num``: the beam was weak (a partial dump) or gone.
    min_counts_fraction : float
        Without an I0 reading: a frame whose total counts are below this fraction of the
        median total counts of the run's frames so far is skipped likewise. Lower than
        ``min_i0_fraction``, because the sample's absorption also lowers the counts.

    Notes
    -----
    Free-running (the default), the worker takes the frames queued since its last step
    in one mini-batch (one ``add_frames`` per angle) and iterates while it has nothing
    else to do, so its cost per frame falls as frames arrive faster and the backlog
    stays bounded; the live result depends on how fast the machine is and on its load.

    With ``chunk_frames`` the schedule is a function of the documents alone, so the same
    documents give the same snapshots, bit for bit, live, replayed
    (:func:`synaps_agent.replay.replay_run`) or on another machine: a chunk is complete
    when its last ``seq_num`` is paired with its frame, or when a frame of a later chunk
    is (a gap), or at RunStop; then its frames are added to the engine, exactly
    ``chunk_iterations`` updates run, and a snapshot is emitted (stream
    ``reconstruction``, ``final`` False); the worker does nothing between chunks. A
    frame that arrives after its chunk completed joins the next one. Each snapshot
    event says what it holds: ``num_frames`` (frames in the engine, skipped ones not
    counted) and ``seq_num_through`` (every frame with that ``seq_num`` or a lower one
    that arrived before the chunk completed is in it). A plan that waits for the
    reconstruction of its exposures (``seq_num`` 1 to ``n``) waits for a snapshot with
    ``seq_num_through >= n`` (or :attr:`seq_num_through`), and should expose in
    multiples of ``chunk_frames`` (the last partial chunk completes only at RunStop).
    """

    processor = "ptycho_reconstruction"

    def __init__(
        self,
        sink: Subscriber | list[Subscriber] | None = None,
        *,
        config: PtychoConfig | None = None,
        snapshot_interval: float = 2.0,
        final_epochs: int = 50,
        momentum: float | None = 0.5,
        final_threads: int | None = 2,
        max_epochs_live: float = 200.0,
        refine_probe_live: bool = False,
        worker_nice: int = 10,
        chunk_frames: int | None = None,
        chunk_iterations: int = 8,
        i0_key: str | None = "i0",
        min_i0_fraction: float = 0.5,
        min_counts_fraction: float = 0.2,
    ) -> None:
        super().__init__(sink, worker_nice=worker_nice)
        if chunk_frames is not None and int(chunk_frames) < 1:
            raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
        if int(chunk_iterations) < 0:
            raise ValueError(f"chunk_iterations must be non-negative, got {chunk_iterations!r}")
        for name, value in (
            ("min_i0_fraction", min_i0_fraction),
            ("min_counts_fraction", min_counts_fraction),
        ):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
        self.i0_key = i0_key
        self.min_i0_fraction = float(min_i0_fraction)
        self.min_counts_fraction = float(min_counts_fraction)
        self._i0_readings: list[float] = []  # positive I0 of the run's frames, in order
        self._frame_counts: list[float] = []  # total counts of the run's frames without I0
        self.chunk_frames = None if chunk_frames is None else int(chunk_frames)
        self.chunk_iterations = int(chunk_iterations)
        #: every frame with this ``seq_num`` or a lower one (that had arrived) is in the
        #: latest emitted snapshot (0 before the first)
        self.seq_num_through = 0
        self._chunk = 0  # the open chunk (chunk_frames only)
        self._chunk_paired: set[int] = set()
        self._chunk_items = 0  # frames queued in the open chunk
        self._max_seq_added = 0
        self._pending: dict[float, list[tuple[int, np.ndarray, float, float]]] = {}
        self.config = config or PtychoConfig()
        self.snapshot_interval = float(snapshot_interval)
        self.final_epochs = int(final_epochs)
        if momentum is not None and not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        if final_threads is not None and int(final_threads) < 1:
            raise ValueError(f"final_threads must be a positive integer, got {final_threads!r}")
        self.final_threads = None if final_threads is None else int(final_threads)
        #: torch threads the last final epochs ran with (None before a free-running finalize)
        self.final_threads_used: int | None = None
        self.max_epochs_live = float(max_epochs_live)
        self.refine_probe_live = bool(refine_probe_live)
        self.geometry: PtychoGeometry | None = None
        self.engines: dict[float, PtychoEngine] = {}
        self.analysis: AnalysisRun | None = None
        self.raw_uid: str | None = None
        self.skipped: list[tuple[int, str]] = []
        self._reader = StreamFrameReader()
        self._primary: set[str] = set()
        self._frames: dict[int, np.ndarray] = {}
        self._positions: dict[int, Position] = {}
        self._last_emit = 0.0
        self._received = 0
        self._lock = threading.Lock()

    # -- documents --------------------------------------------------------------------
    def start(self, doc: dict) -> None:
        self.stop_worker(timeout=30)
        geometry = PtychoGeometry.from_start(doc)
        self.geometry = geometry
        if geometry is None:
            return
        self.raw_uid = doc["uid"]
        self.engines = {}
        self.skipped = []
        self._frames.clear()
        self._positions.clear()
        self._primary.clear()
        self._received = 0
        self._window = geometry.planned_window(doc)
        self.analysis = AnalysisRun(
            self.sink,
            raw_uid=doc["uid"],
            processor=self.processor,
            parameters={
                "engine": asdict(self.config),
                "final_epochs": self.final_epochs,
                "momentum": self.free_running_config(self.config).momentum,
                "final_threads": self.final_threads if self.chunk_frames is None else None,
                "chunk_frames": self.chunk_frames,
                "chunk_iterations": self.chunk_iterations if self.chunk_frames else None,
            },
            md={
                "modality": doc.get("modality"),
                "sample": doc.get("sample", {}),
                # how an image pixel maps to the stage: x = (col - origin_col) * pixel / x_unit
                "image_geometry": geometry.image_geometry(),
            },
        )
        self._last_emit = time.monotonic()
        self._pending = {}
        self.seq_num_through = 0
        self._chunk = 0
        self._chunk_paired = set()
        self._chunk_items = 0
        self._max_seq_added = 0
        self._i0_readings = []
        self._frame_counts = []
        self.start_worker()

    def descriptor(self, doc: dict) -> None:
        if self.geometry is not None and doc.get("name") == "primary":
            self._primary.add(doc["uid"])

    def stream_resource(self, doc: dict) -> None:
        if self.geometry is not None and doc.get("data_key") == self.geometry.image_key:
            self._reader.stream_resource(doc)

    def stream_datum(self, doc: dict) -> None:
        if self.geometry is None or doc.get("descriptor") not in self._primary:
            return
        if self._reader.data_key(doc["stream_resource"]) != self.geometry.image_key:
            return
        _, seq_nums, frames = self._reader.stream_datum(doc)
        for seq_num, frame in zip(seq_nums, frames, strict=False):
            self._pair(seq_num, frame=frame)

    def event(self, doc: dict) -> None:
        geometry = self.geometry
        if geometry is None or doc.get("descriptor") not in self._primary:
            return
        data = doc["data"]
        theta = float(data[geometry.theta_key]) if geometry.theta_key in data else 0.0
        i0 = data.get(self.i0_key) if self.i0_key else None
        self._pair(
            doc["seq_num"],
            position=(
                float(data[geometry.x_key]),
                float(data[geometry.y_key]),
                theta,
                None if i0 is None else float(i0),
            ),
        )
        frame = data.get(geometry.image_key)
        if frame is not None and doc.get("filled", {}).get(geometry.image_key, True):
            self._pair(doc["seq_num"], frame=np.asarray(frame))

    def stop(self, doc: dict) -> None:
        self._reader.clear()  # the run's frame files are closed
        if self.geometry is None or self.analysis is None:
            return
        unpaired = len(self._frames) + len(self._positions)
        if unpaired:
            self.report_warning(f"{unpaired} frames or positions never found their pair")
        if self.chunk_frames is not None:
            with self._lock:
                if self._chunk_items:
                    self._close_chunk(None)  # the last, partial chunk
        self.finish()

    # -- pairing frames with positions ------------------------------------------------------
    def _pair(
        self,
        seq_num: int,
        *,
        frame: np.ndarray | None = None,
        position: Position | None = None,
    ) -> None:
        with self._lock:
            if frame is not None:
                self._frames[seq_num] = frame
            if position is not None:
                self._positions[seq_num] = position
            if seq_num in self._frames and seq_num in self._positions:
                item = (seq_num, self._frames.pop(seq_num), self._positions.pop(seq_num))
                if self.chunk_frames is None:
                    self.submit(item)
                else:
                    self._submit_in_chunk(item)

    def _submit_in_chunk(self, item: tuple) -> None:
        """Queue a paired frame, completing the chunks it shows are complete (before it:
        a frame of a later chunk; after it: its chunk's last frame). Caller holds the
        lock."""
        seq_num, size = int(item[0]), self.chunk_frames
        chunk = (seq_num - 1) // size
        while chunk > self._chunk:
            self._close_chunk(self._chunk)
        self.submit(item)
        self._chunk_items += 1
        if chunk == self._chunk:
            self._chunk_paired.add(seq_num)
            if len(self._chunk_paired) == size:
                self._close_chunk(self._chunk)

    def _close_chunk(self, chunk: int | None) -> None:
        """Queue the completion of ``chunk`` (None: the open one, at RunStop)."""
        through = (self._chunk + 1) * self.chunk_frames if chunk is not None else None
        self.submit_call(lambda: self._complete_chunk(through))
        self._chunk += 1
        self._chunk_paired = set()
        self._chunk_items = 0

    # -- worker -----------------------------------------------------------------------
    def _engine_for(self, theta: float) -> PtychoEngine:
        key = round(theta, 3)
        engine = self.engines.get(key)
        if engine is None:
            geometry = self.geometry
            live_config = self.free_running_config(
                self.config if self.refine_probe_live else replace(self.config, beta_probe=0.0)
            )
            engine = PtychoEngine(geometry.frame_shape, geometry.probe, config=live_config)
            if self._window is not None:  # pre-size the grid to the planned scan
                (r0, c0), (h, w) = self._window
                half_r, half_c = geometry.frame_shape[0] // 2, geometry.frame_shape[1] // 2
                engine.cover(
                    [[r0 + half_r, c0 + half_c], [r0 + h - half_r - 1, c0 + w - half_c - 1]]
                )
            self.engines[key] = engine
        return engine

    def process(self, item: tuple[int, np.ndarray, Position]) -> None:
        """Check one paired frame (``(seq_num, frame, (x, y, theta, i0))``) and queue it
        for its angle's engine, or skip it with a warning."""
        seq_num, frame, (x, y, theta, i0) = item
        geometry = self.geometry
        frame = np.asarray(frame)
        if frame.shape != geometry.frame_shape:
            self._skip(seq_num, f"frame shape {frame.shape} != {geometry.frame_shape}")
            return
        if not np.all(np.isfinite(frame)):
            self._skip(seq_num, "frame holds NaN or inf")
            return
        if frame.max(initial=0) <= 0:
            self._skip(seq_num, "frame is all zero (no beam?)")
            return
        if frame.min(initial=0) < 0:
            self._skip(seq_num, "frame holds negative counts")
            return
        weak = self._weak_beam(frame, i0)
        if weak:
            self._skip(seq_num, weak)
            return
        row, col = geometry.to_pixels(x, y)
        self._pending.setdefault(round(theta, 3), []).append((seq_num, frame, row, col))

    def _weak_beam(self, frame: np.ndarray, i0: float | None) -> str | None:
        """Why the frame saw too weak a beam (None if it did not): its I0 against the
        median I0 of the run so far, or without I0 its total counts against theirs."""
        if i0 is not None and math.isfinite(i0):
            if i0 > 0:
                self._i0_readings.append(i0)
            if not self._i0_readings:
                return f"I0 {self.i0_key} = {i0:g} (no beam?)"
            median = float(np.median(self._i0_readings))
            if i0 < self.min_i0_fraction * median:
                return (
                    f"weak beam: I0 {self.i0_key} = {i0:g} < {self.min_i0_fraction:g} x "
                    f"the run's median {median:g}"
                )
            return None
        total = float(frame.sum(dtype=np.float64))
        self._frame_counts.append(total)
        median = float(np.median(self._frame_counts))
        if total < self.min_counts_fraction * median:
            return (
                f"weak beam: {total:g} counts < {self.min_counts_fraction:g} x the run's "
                f"median {median:g}"
            )
        return None

    def _complete_chunk(self, through: int | None) -> None:
        """On the worker: add a completed chunk, run its updates, emit its snapshot."""
        self._flush_pending()
        live = self._live_engines()
        for engine in live.values():
            if engine.num_frames:
                engine.iterate(self.chunk_iterations)
        self._emit_snapshots(final=False, thetas=list(live), through=through)

    def _flush_pending(self) -> None:
        """Add the frames taken since the last flush to their engines, one batch per angle."""
        pending, self._pending = self._pending, {}
        for theta, items in pending.items():
            frames = np.stack([item[1] for item in items]).astype(np.float32)
            positions = [[item[2], item[3]] for item in items]
            self._engine_for(theta).add_frames(frames, positions, ids=[item[0] for item in items])
            self._received += len(items)
            self._max_seq_added = max(self._max_seq_added, *(int(item[0]) for item in items))

    def _skip(self, seq_num: int, reason: str) -> None:
        self.skipped.append((seq_num, reason))
        self.report_warning(f"{self.processor}: event {seq_num} skipped: {reason}")

    def _live_engines(self) -> dict[float, PtychoEngine]:
        """The engines (by angle) that iterate in the background while frames arrive."""
        return dict(self.engines)

    def step(self) -> bool:
        if self.chunk_frames is not None:
            return False  # everything happens at chunk boundaries
        self._flush_pending()
        worked = False
        live = self._live_engines()
        for engine in live.values():
            frames = engine.num_frames
            if frames == 0:
                continue
            epochs = engine.num_iterations * self.config.batch_size / frames
            if epochs < self.max_epochs_live:
                engine.iterate(1)
                worked = True
        if (
            self.snapshot_interval > 0
            and time.monotonic() - self._last_emit > self.snapshot_interval
        ):
            self._emit_snapshots(final=False, thetas=list(live))
        return worked

    def finalize(self) -> None:
        try:
            self._flush_pending()
            final_config = self.free_running_config(self.config)
            for engine in self.engines.values():
                engine.config = final_config  # probe refinement (if any) from here on
                if engine.num_frames:
                    self._run_final_epochs(engine)
            self._emit_snapshots(final=True)
            status = "success" if not self.errors else "fail"
            reason = "; ".join(self.errors[-3:])
            if self.skipped:
                reason = (reason + "; " if reason else "") + f"{len(self.skipped)} frames skipped"
            self.analysis.close(exit_status=status, reason=reason)
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"{self.processor}: finalize: {exc!r}")
            self.analysis.close(exit_status="fail", reason=repr(exc))

    def _run_final_epochs(self, engine: PtychoEngine) -> None:
        """The final epochs, with ``final_threads`` torch threads if that is faster."""
        import torch

        threads, epochs = self.final_threads, self.final_epochs
        if self.chunk_frames is not None or threads is None or epochs < 3:
            engine.run_epochs(epochs)
            self.final_threads_used = torch.get_num_threads()
            return
        with _THREAD_COUNT_LOCK:  # the count is read and restored by one at a time
            before = torch.get_num_threads()
            if threads == before:
                engine.run_epochs(epochs)
                self.final_threads_used = before
                return
            try:
                t0 = time.perf_counter()
                engine.run_epochs(1)
                one = time.perf_counter() - t0
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                engine.run_epochs(1)
                more = time.perf_counter() - t0
                if more >= one:
                    torch.set_num_threads(before)
                self.final_threads_used = torch.get_num_threads()
                engine.run_epochs(epochs - 2)
            finally:
                torch.set_num_threads(before)

    def free_running_config(self, config: PtychoConfig) -> PtychoConfig:
        """``config`` with :attr:`momentum` in the free-running schedule if its own is 0
        (the chunk schedule keeps the config's)."""
        if self.chunk_frames is not None or self.momentum is None or config.momentum > 0:
            return config
        return replace(config, momentum=self.momentum)

    def _emit_snapshots(
        self, *, final: bool, thetas: list[float] | None = None, through: int | None = None
    ) -> None:
        """Emit each angle's reconstruction (or only those of ``thetas``) in one fixed pixel
        frame (the planned scan's, or the first snapshot's), so that every event of the
        stream has the same shape. ``through``: the ``seq_num_through`` of the snapshots
        (default: the highest ``seq_num`` added)."""
        self._last_emit = time.monotonic()
        through = self._max_seq_added if through is None else int(through)
        for theta, engine in list(self.engines.items()):
            if engine.num_frames == 0 or (thetas is not None and theta not in thetas):
                continue
            snap = engine.snapshot()
            if self._window is None:
                self._window = (tuple(int(v) for v in snap.origin), snap.object.shape)
            (r0, c0), shape = self._window
            obj = place_in_frame(snap.object, snap.origin, (r0, c0), shape, fill=1.0)
            illumination = place_in_frame(snap.illumination, snap.origin, (r0, c0), shape, fill=0.0)
            self.analysis.event(
                "reconstruction",
                {
                    "object_phase": np.angle(obj).astype(np.float32),
                    "object_amplitude": np.abs(obj).astype(np.float32),
                    # coverage: saturated at one probe's peak intensity, so that "measured"
                    # means "seen by the probe", however many frames overlap there
                    "illumination": np.minimum(
                        illumination, float(np.max(np.abs(snap.probe) ** 2))
                    ).astype(np.float32),
                    "probe_real": snap.probe.real.astype(np.float32),
                    "probe_imag": snap.probe.imag.astype(np.float32),
                    "origin_row": int(r0),
                    "origin_col": int(c0),
                    "theta": float(theta),
                    "error": float(snap.error) if math.isfinite(snap.error) else -1.0,
                    "num_frames": int(snap.num_frames),
                    "num_iterations": int(snap.num_iterations),
                    "seq_num_through": through,
                    "final": bool(final),
                },
            )
        self.seq_num_through = max(self.seq_num_through, through)

    # -- public -----------------------------------------------------------------------
    def snapshot(self, theta: float = 0.0) -> PtychoSnapshot | None:
        """The current reconstruction at ``theta`` (None before the first frame)."""
        engine = self.engines.get(round(theta, 3))
        return None if engine is None or engine.num_frames == 0 else engine.snapshot()


def place_in_frame(
    array: np.ndarray,
    origin: tuple[int, int],
    frame_origin: tuple[int, int],
    frame_shape: tuple[int, int],
    fill: float,
) -> np.ndarray:
    """``array`` (index (0, 0) at pixel ``origin``) cut/padded to a fixed pixel frame.

    Returns a new array of ``frame_shape`` whose index (0, 0) is pixel ``frame_origin``,
    holding ``array`` where they overlap and ``fill`` elsewhere.
    """
    out = np.full(frame_shape, fill, dtype=array.dtype)
    r0, c0 = int(origin[0]) - frame_origin[0], int(origin[1]) - frame_origin[1]
    rs, cs = max(0, r0), max(0, c0)
    re_, ce = min(frame_shape[0], r0 + array.shape[0]), min(frame_shape[1], c0 + array.shape[1])
    if re_ > rs and ce > cs:
        out[rs:re_, cs:ce] = array[rs - r0 : re_ - r0, cs - c0 : ce - c0]
    return out
