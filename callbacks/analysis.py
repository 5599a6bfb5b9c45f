"""The common part of streaming analysis callbacks.

* :class:`DocumentSink` serialises documents from several threads into subscribers
  (e.g. ``catalog.writer("processed")``).
* :class:`AnalysisRun` composes the analysis run that carries a processor's derived
  products: its start document names the raw run (``raw_uid``) and the processor (name,
  version, parameters); each product is an event of a named stream.
* :class:`StreamingAnalysis` is a ``DocumentRouter`` whose failures are isolated (a
  failing callback is reported, logged and counted, and never raises into the
  RunEngine), with a worker thread for the math, so the RunEngine never waits on it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from event_model import DocumentRouter, compose_run

import synaps_agent

__all__ = ["AnalysisRun", "DocumentSink", "StreamingAnalysis", "data_key_for"]

logger = logging.getLogger("synaps_agent.callbacks")

Subscriber = Callable[[str, dict], Any]


class DocumentSink:
    """Fan documents out to subscribers, one document at a time across threads.

    A subscriber that raises is logged and skipped; the others still get the document.
    """

    def __init__(self, *subscribers: Subscriber) -> None:
        self._subscribers = list(subscribers)
        self._lock = threading.Lock()
        self.failures: list[str] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def __call__(self, name: str, doc: dict) -> None:
        with self._lock:
            for subscriber in self._subscribers:
                try:
                    subscriber(name, doc)
                except Exception as exc:  # noqa: BLE001 - isolate subscribers
                    message = f"{subscriber!r} failed on {name}: {exc!r}"
                    logger.exception(message)
                    self.failures.append(message)


def data_key_for(value: Any, source: str) -> dict:
    """Event-model data key describing ``value``."""
    if isinstance(value, np.ndarray):
        return {
            "source": source,
            "dtype": "array",
            "shape": list(value.shape),
            "dtype_numpy": value.dtype.str,
        }
    if isinstance(value, bool | np.bool_):
        return {"source": source, "dtype": "boolean", "shape": []}
    if isinstance(value, int | np.integer):
        return {"source": source, "dtype": "integer", "shape": []}
    if isinstance(value, float | np.floating):
        return {"source": source, "dtype": "number", "shape": []}
    if isinstance(value, str):
        return {"source": source, "dtype": "string", "shape": []}
    raise TypeError(f"cannot describe {type(value).__name__} values for {source}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=float)
    if isinstance(value, np.generic):
        return value.item()
    return value


class AnalysisRun:
    """An analysis run linked to a raw run, emitted into ``sink``.

    Parameters
    ----------
    sink : callable
        Receives ``(name, doc)``.
    raw_uid : str
        uid of the raw run the products derive from.
    processor : str
        Name of the processor (e.g. ``"ptycho_reconstruction"``).
    parameters : dict
        Everything needed to redo the analysis (JSON-serialisable).
    md : dict, optional
        Extra start metadata.
    """

    def __init__(
        self,
        sink: Subscriber,
        *,
        raw_uid: str,
        processor: str,
        parameters: dict,
        md: dict | None = None,
    ) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        metadata = {
            "raw_uid": raw_uid,
            "processor": {
                "name": processor,
                "version": synaps_agent.__version__,
                "parameters": json.loads(json.dumps(parameters, default=str)),
            },
            "synaps_analysis": True,
            **(md or {}),
        }
        self._bundle = compose_run(metadata=metadata)
        self.uid: str = self._bundle.start_doc["uid"]
        self._streams: dict[str, tuple[dict, Callable]] = {}
        self._closed = False
        self._sink("start", self._bundle.start_doc)

    def event(self, stream: str, data: dict[str, Any]) -> dict:
        """Emit one event of ``stream`` (its descriptor is made from the first event).

        Dicts and lists become JSON strings; arrays stay arrays (Tiled stores them).
        """
        data = {key: _plain(value) for key, value in data.items()}
        with self._lock:
            if self._closed:
                raise RuntimeError(f"analysis run {self.uid} is closed")
            if stream not in self._streams:
                data_keys = {k: data_key_for(v, f"synaps:{stream}") for k, v in data.items()}
                descriptor = self._bundle.compose_descriptor(name=stream, data_keys=data_keys)
                self._streams[stream] = (descriptor.descriptor_doc, descriptor.compose_event)
                self._sink("descriptor", descriptor.descriptor_doc)
            descriptor_doc, compose_event = self._streams[stream]
            expected = set(descriptor_doc["data_keys"])
            if set(data) != expected:
                raise ValueError(f"stream {stream!r}: keys {sorted(data)} != {sorted(expected)}")
            now = time.time()
            event = compose_event(data=data, timestamps={k: now for k in data})
            self._sink("event", event)
            return event

    def close(self, exit_status: str = "success", reason: str = "") -> None:
        """Emit the stop document (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sink("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))


class StreamingAnalysis(DocumentRouter):
    """A document consumer that cannot break a scan, with a worker thread for the math.

    Subclasses implement the document methods they need (``start``, ``descriptor``,
    ``event``, ``stream_resource``, ``stream_datum``, ``stop``), hand work to
    :meth:`submit`, and implement :meth:`process` (one submitted item, on the worker)
    and optionally :meth:`step` (called on the worker whenever the queue is empty;
    return ``False`` when there is nothing to do).

    Any exception in a document method or on the worker is caught, logged, kept in
    :attr:`errors` and reported in the analysis run's stop reason; the scan goes on.

    Parameters
    ----------
    sink : callable or list of callables, optional
        Receives the analysis run's documents.
    worker_nice : int
        From :meth:`start_worker` (the run's start) to :meth:`finish` (its stop), the
        worker thread runs this much nicer than the thread that starts it (or than the
        process's main thread, if that one is less nice: a callback started from another
        callback's worker is not pushed down twice), so the RunEngine's thread gets a busy
        CPU first and the scan is not slowed by the math. Linux sets the priority per
        thread; elsewhere this does nothing. At :meth:`finish` the priority is restored
        where the OS allows it (the final work gets a full share). 0 disables.
    """

    processor: str = "analysis"

    def __init__(
        self, sink: Subscriber | Iterable[Subscriber] | None = None, *, worker_nice: int = 10
    ) -> None:
        super().__init__()
        if int(worker_nice) < 0:
            raise ValueError(f"worker_nice must be non-negative, got {worker_nice!r}")
        self.worker_nice = int(worker_nice)
        self._run_nice: int | None = None
        if sink is None:
            sink = DocumentSink()
        elif not callable(sink):
            sink = DocumentSink(*sink)
        self.sink: Subscriber = sink
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stop_worker = threading.Event()
        self._finished = threading.Event()
        self._finished.set()
        # held by the worker while it runs a step; holding it pauses the worker (tests)
        self._busy = threading.Lock()

    # -- failure isolation ------------------------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False):
        try:
            return super().__call__(name, doc, validate=validate)
        except Exception as exc:  # noqa: BLE001 - a callback never aborts the scan
            self.report_error(f"{self.processor}: {name} document: {exc!r}")
            return name, doc

    def report_error(self, message: str) -> None:
        logger.error("%s\n%s", message, traceback.format_exc())
        self.errors.append(message)

    def report_warning(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)

    # -- worker -----------------------------------------------------------------------
    def start_worker(self) -> None:
        """Start the worker thread (once per run), ``worker_nice`` nicer than the run."""
        self.stop_worker(timeout=30)
        self._stop_worker.clear()
        self._finished.clear()
        self._worker = threading.Thread(
            target=self._work, name=f"{self.processor}-worker", daemon=True
        )
        self._worker.start()
        self._run_nice = _reference_nice()
        if self.worker_nice and self._run_nice is not None:
            _set_thread_nice(self._worker, min(19, self._run_nice + self.worker_nice))

    def submit(self, item: Any) -> None:
        """Queue ``item`` for :meth:`process` on the worker."""
        self._queue.put(item)

    def submit_call(self, fn: Callable[[], Any]) -> None:
        """Queue a call of ``fn()`` on the worker, in order with the submitted items
        (e.g. "the frames so far make a chunk"); its failure is isolated like
        :meth:`process`'s."""
        self._queue.put(_Call(fn))

    def finish(self) -> None:
        """Ask the worker to process what is queued, call :meth:`finalize`, and end; the
        worker's priority is restored first."""
        if self.worker_nice and self._run_nice is not None:
            _set_thread_nice(self._worker, self._run_nice)
        self._queue.put(_FINISH)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has finalized the current run; True if it did."""
        return self._finished.wait(timeout)

    def stop_worker(self, timeout: float | None = None) -> None:
        """Stop the worker without finalizing (used on errors and before a new run)."""
        if self._worker is not None and self._worker.is_alive():
            self._stop_worker.set()
            self._queue.put(None)
            self._worker.join(timeout)
        self._worker = None

    @property
    def backlog(self) -> int:
        """Items waiting for the worker."""
        return self._queue.qsize()

    def process(self, item: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> bool:
        """One unit of background work when the queue is empty; False if idle."""
        return False

    def finalize(self) -> None:
        """Called on the worker after the last item of the run."""

    def _work(self) -> None:
        """Take everything queued, process it, then do one step of background work."""
        try:
            while not self._stop_worker.is_set():
                items = []
                try:
                    items.append(self._queue.get(timeout=0.05 if self._idle else 0.0))
                    while True:
                        items.append(self._queue.get_nowait())
                except queue.Empty:
                    pass
                finish = False
                for item in items:
                    if item is _FINISH:
                        finish = True
                    elif isinstance(item, _Call):
                        self._safe(item.fn)
                    elif item is not None:
                        self._safe(self.process, item)
                if finish:
                    self._safe(self.finalize)
                    break
                self._safe(self.step)
        finally:
            self._finished.set()

    _idle = False

    def _safe(self, fn: Callable, *args: Any) -> None:
        try:
            with self._busy:
                result = fn(*args)
            if fn == self.step:
                self._idle = result is False
        except Exception as exc:  # noqa: BLE001
            self._idle = True
            self.report_error(f"{self.processor}: {getattr(fn, '__name__', fn)}: {exc!r}")


_FINISH = object()


def _thread_nice() -> int | None:
    """Scheduling niceness of the calling thread (None where not supported)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return None


def _reference_nice() -> int | None:
    """The niceness a worker is made nicer than: the calling thread's, or the process's
    main thread's if that is lower (None where not supported)."""
    own = _thread_nice()
    try:
        main = os.getpriority(os.PRIO_PROCESS, os.getpid())
    except (AttributeError, OSError):
        return own
    return main if own is None else min(own, main)


def _set_thread_nice(thread: threading.Thread | None, nice: int) -> bool:
    """Set the niceness of ``thread`` (Linux: per thread); False where it is not possible."""
    native_id = getattr(thread, "native_id", None)
    if native_id is None or not thread.is_alive() or not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, native_id, int(nice))
    except (AttributeError, OSError):  # e.g. no permission to raise the priority again
        return False
    return True


class _Call:
    """A call queued by :meth:`StreamingAnalysis.submit_call`."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
