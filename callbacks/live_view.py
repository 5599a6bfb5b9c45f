"""A live figure of a ptychography scan: reconstruction, segmentation, uncertainty, and the
points measured (the agent's choices in an adaptive scan).

:class:`LiveView` is subscribed to the RunEngine beside the live analyses it shows. It
never draws on the RunEngine's thread: documents only mark the figure stale, and a worker
thread of its own renders (matplotlib's Agg canvas, no display needed) and writes a PNG
at most every ``interval`` seconds during a run, then the final figure once the
reconstruction (and segmentation) have finished. In an interactive matplotlib session
(``show=True``) the same panels are also drawn into a window, from the GUI's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..figures import draw_scan_panels

__all__ = ["LiveView"]

logger = logging.getLogger(__name__)


class LiveView:
    """Show a ptychography run's reconstruction, segmentation and uncertainty as it grows.

    Parameters
    ----------
    reconstruction : PtychoReconstruction
        Gives ``snapshot()`` (the object, its origin, the measured positions) and
        ``wait(timeout)``.
    segmentation : LiveSegmentation, optional
        Gives ``latest`` (labels and uncertainty) and ``wait(timeout)``.
    directory : path, optional
        Where the PNGs go: ``live_<uid8>.png``, rewritten at each update, and
        ``live_<uid8>_final.png`` at the end. None: no files.
    interval : float
        Least seconds between two renders during a run.
    keep_history : bool
        Also keep every update as ``live_<uid8>_<n>.png``.
    show : bool
        Also draw into an interactive matplotlib window (needs a GUI backend, e.g. QtAgg
        with a Qt binding installed, chosen before the view is made; with a file-only
        backend such as Agg a warning says that no window will appear).
    final_timeout : float
        Seconds to wait for the analyses to finish before drawing the final figure.
    """

    def __init__(
        self,
        reconstruction: Any,
        segmentation: Any | None = None,
        *,
        directory: str | Path | None = None,
        interval: float = 5.0,
        keep_history: bool = False,
        show: bool = False,
        final_timeout: float = 300.0,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.reconstruction = reconstruction
        self.segmentation = segmentation
        self.directory = None if directory is None else Path(directory)
        self.interval = float(interval)
        self.keep_history = keep_history
        self.final_timeout = float(final_timeout)
        self.paths: list[Path] = []  # every PNG written, in order
        self.final_path: Path | None = None
        self.errors: list[str] = []
        self.uid: str | None = None
        self.updates = 0
        self._stale = False
        self._run_over = False
        self._final_written = threading.Event()
        self._final_written.set()
        self._superseded = threading.Event()  # a new run started: the old worker stops
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._window = _Window() if show else None

    # -- documents (the RunEngine's thread: cheap) -------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        try:
            if name == "start" and doc.get("modality") in ("ptychography", "ptycho-tomography"):
                self._start(doc)
            elif self.uid is None:
                return
            elif name == "event":
                self._mark_stale()
            elif name == "stop" and doc.get("run_start") == self.uid:
                with self._wake:
                    self._run_over = True
                    self._wake.notify()
        except Exception as exc:  # noqa: BLE001 - a figure never aborts a scan
            self._fail(f"{name}: {exc!r}")

    def _start(self, doc: dict) -> None:
        if self._thread is not None and self._thread.is_alive():
            # the analyses now follow the new run: the old figure cannot be finished
            with self._wake:
                self._superseded.set()
                self._wake.notify()
            self._thread.join(timeout=30)
        self._superseded.clear()
        with self._wake:
            self.uid = doc["uid"]
            self.updates = 0
            self._stale = False
            self._run_over = False
            self._final_written.clear()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._work, name="synaps-live-view", daemon=True)
        self._thread.start()

    def _mark_stale(self) -> None:
        with self._wake:
            self._stale = True
            self._wake.notify()
        if self._window is not None:
            self._window.request(self)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run's final figure is written (or given up, when a new
        run started first); True if that happened within ``timeout``."""
        return self._final_written.wait(timeout)

    # -- the worker --------------------------------------------------------------------
    def _work(self) -> None:
        last = -np.inf
        try:
            while True:
                with self._wake:
                    while not (self._stale or self._run_over or self._superseded.is_set()):
                        self._wake.wait()
                    if self._superseded.is_set():
                        return
                    run_over = self._run_over
                    if not run_over:
                        delay = last + self.interval - time.monotonic()
                        if delay > 0:
                            self._wake.wait(delay)
                            continue
                    self._stale = False
                if run_over:
                    break
                self._save(final=False)
                last = time.monotonic()
            deadline = time.monotonic() + self.final_timeout
            for analysis in (self.reconstruction, self.segmentation):
                while analysis is not None and not analysis.wait(0.5):
                    if self._superseded.is_set():
                        return
                    if time.monotonic() > deadline:
                        self._fail(f"{type(analysis).__name__} did not finish in time")
                        break
            self._save(final=True)
            if self._window is not None:
                self._window.request(self, force=True)
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the scan
            self._fail(f"render: {exc!r}")
        finally:
            self._final_written.set()

    def _save(self, *, final: bool) -> None:
        figure = self.render()
        if figure is None or self.directory is None:
            return
        stem = f"live_{self.uid[:8]}"
        targets = [self.directory / (f"{stem}_final.png" if final else f"{stem}.png")]
        if self.keep_history and not final:
            targets.append(self.directory / f"{stem}_{self.updates:03d}.png")
        for path in targets:
            figure.savefig(path, dpi=80)
            self.paths.append(path)
        if final:
            self.final_path = targets[0]
        self.updates += 1

    def render(self, figure: Figure | None = None) -> Figure | None:
        """Draw the current state into ``figure`` (a new Agg one by default); None if
        nothing has been reconstructed yet."""
        snapshot = self.reconstruction.snapshot()
        if snapshot is None:
            return None
        latest = None if self.segmentation is None else self.segmentation.latest
        if figure is None:
            figure = Figure(figsize=(13, 4.4), layout="constrained")
            FigureCanvasAgg(figure)
        figure.clear()
        axes = figure.subplots(1, 3)
        draw_scan_panels(
            figure,
            axes,
            phase=np.angle(snapshot.object),
            phase_origin=tuple(snapshot.origin),
            labels=None if latest is None else np.asarray(latest.result.labels),
            uncertainty=None if latest is None else np.asarray(latest.result.uncertainty),
            map_origin=(0, 0) if latest is None else tuple(latest.origin),
            points=np.asarray(snapshot.positions),
        )
        figure.suptitle(
            f"run {self.uid[:8] if self.uid else ''}: {snapshot.num_frames} exposures, "
            f"{snapshot.num_iterations} updates"
        )
        return figure

    def _fail(self, message: str) -> None:
        logger.warning("live view: %s", message)
        self.errors.append(message)


#: matplotlib backends that never open a window
_FILE_ONLY_BACKENDS = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})


def _backend() -> str:
    import matplotlib

    return str(matplotlib.get_backend()).lower()


class _Window:
    """The interactive window: drawn from the GUI's thread (bluesky's Qt teleporter when
    the backend is Qt), at most once a second."""

    def __init__(self) -> None:
        from bluesky.callbacks.mpl_plotting import QtAwareCallback

        window = self

        class _Draw(QtAwareCallback):
            def event(self, doc):
                window.draw(doc["live_view"])

        self._callback = _Draw()
        self._figure = None
        self._last = 0.0
        self.backend = _backend()
        if self.backend in _FILE_ONLY_BACKENDS:
            logger.warning(
                "live view: show=True but matplotlib's backend is %r, which draws to files "
                "only: no window will appear (choose an interactive backend first, e.g. "
                "%%matplotlib qt or MPLBACKEND=QtAgg with a Qt binding installed)",
                self.backend,
            )

    def request(self, view: LiveView, *, force: bool = False) -> None:
        """Draw ``view`` in the window, unless it was drawn less than a second ago (the
        final state is drawn with ``force``: it may come within that second)."""
        now = time.monotonic()
        if force or now - self._last >= 1.0:
            self._last = now
            self._callback("event", {"live_view": view})

    def draw(self, view: LiveView) -> None:
        import matplotlib.pyplot as plt

        if self._figure is None or not plt.fignum_exists(self._figure.number):
            self._figure = plt.figure("synaps live view", figsize=(13, 4.4))
        if view.render(self._figure) is not None:
            self._figure.canvas.draw_idle()
