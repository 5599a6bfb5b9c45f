"""Surviving what real beamlines do: beam dumps, a Tiled server that is down, crashes.

- :func:`beam_suspender`: a ``bluesky.suspenders.SuspendFloor`` on the beam monitor
  that pauses the scan while the beam is down and resumes when it is back.
- :func:`prepare_run_engine`: a RunEngine that resumes pauses and suspensions without
  taking exposures twice, records its interruptions, pauses between exposures
  (:func:`checkpoint_each_event`) and stores why a run was aborted
  (:func:`keep_abort_reason`).
- :class:`BufferedWriter`: a document writer that never blocks the RunEngine; a
  thread writes the documents in order, retries with backoff while the server is
  down, and keeps a write-ahead log so a crash loses nothing
  (:func:`recover_runs` writes what the log holds and the catalog lacks).

Usage::

    prepare_run_engine(RE, beamline.i0)
    RE.subscribe(catalog.writer(buffered=True))
    ...
    catalog.recover()  # after a crash: store what the write-ahead log holds
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluesky.suspenders import SuspendFloor
from bluesky.utils import Msg

__all__ = [
    "BufferedWriter",
    "ShutterGatedFloor",
    "WriteAheadLog",
    "beam_suspender",
    "checkpoint_each_event",
    "keep_abort_reason",
    "prepare_run_engine",
    "recover_runs",
]

logger = logging.getLogger(__name__)


def beam_suspender(
    monitor: Any,
    *,
    suspend_below: float = 0.1,
    resume_above: float = 0.5,
    sleep: float = 0.0,
    nominal: float | None = None,
    shutter: Any | None = None,
    **kwargs: Any,
):
    """A suspender that holds the scan while the beam is down.

    Parameters
    ----------
    monitor : BeamMonitor or ophyd Signal
        A :class:`~synaps_agent.sim_devices.beam.BeamMonitor` (its live ``source``
        signal is watched) or any signal giving the incident intensity.
    suspend_below, resume_above : float
        Fractions of the nominal intensity: the scan is suspended when the signal drops
        below ``suspend_below * nominal`` and resumes once it is back above
        ``resume_above * nominal``.
    sleep : float
        Seconds to wait after the beam is back before resuming (beam settles).
    nominal : float, optional
        Nominal intensity; default the monitor's ``nominal_flux``.
    shutter : shutter, optional
        For a monitor behind the shutter (an I0 ion chamber reading 0 whenever the
        shutter is closed): a drop while the shutter is closed does not suspend, so a
        plan that closes it (darks, the end of a scan) is not held forever. Our
        simulated ``Shutter`` or any signal whose value is the shutter's state (open
        when it equals the shutter's ``open_value``, default ``"open"``).
    **kwargs
        Passed to :class:`bluesky.suspenders.SuspendFloor` (``pre_plan``, ``post_plan``...).

    Returns
    -------
    bluesky.suspenders.SuspendFloor
        Install it with ``RE.install_suspender(...)``.
    """
    signal = getattr(monitor, "source", monitor)
    if nominal is None:
        flux = getattr(monitor, "nominal_flux", None)
        if flux is None:
            raise ValueError(
                f"{getattr(monitor, 'name', monitor)!r} has no nominal_flux: pass nominal="
            )
        nominal = float(flux.get())
    if not nominal > 0:
        raise ValueError(f"nominal intensity must be positive, got {nominal}")
    if not 0 <= suspend_below <= resume_above:
        raise ValueError(
            f"need 0 <= suspend_below <= resume_above, got {suspend_below}, {resume_above}"
        )
    kwargs.setdefault("tripped_message", "beam intensity below threshold (beam dump?)")
    thresholds = dict(resume_thresh=resume_above * nominal, sleep=sleep, **kwargs)
    if shutter is None:
        return SuspendFloor(signal, suspend_below * nominal, **thresholds)
    return ShutterGatedFloor(signal, suspend_below * nominal, shutter=shutter, **thresholds)


class ShutterGatedFloor(SuspendFloor):
    """A ``SuspendFloor`` that does not trip while the shutter is closed (see
    :func:`beam_suspender`'s ``shutter``)."""

    def __init__(self, signal: Any, suspend_thresh: float, *, shutter: Any, **kwargs: Any):
        super().__init__(signal, suspend_thresh, **kwargs)
        self._shutter_signal = getattr(shutter, "state", shutter)
        self._open_value = getattr(shutter, "open_value", "open")
        self._shutter_open = False
        self._last_value: float | None = None

    @property
    def shutter_is_open(self) -> bool:
        """The shutter's state as last reported to this suspender (it trips only if open)."""
        return self._shutter_open

    def __call__(self, value: float, **kwargs: Any) -> None:
        self._last_value = value
        super().__call__(value, **kwargs)

    def _follow_shutter(self, value: Any = None, **kwargs: Any) -> None:
        self._shutter_open = value == self._open_value
        if not self._shutter_open and self._tripped and self._last_value is not None:
            # the monitor's drop was seen before the shutter's close: not a beam dump
            self(self._last_value)

    def _should_suspend(self, value: float) -> bool:
        return self._shutter_open and super()._should_suspend(value)

    def _should_resume(self, value: float) -> bool:
        return not self._shutter_open or super()._should_resume(value)

    def install(self, RE: Any, *, event_type: str | None = None) -> None:
        """Follow the shutter (from a subscription: no Channel Access call in the monitor's
        callback), then watch the monitor."""
        self._shutter_signal.subscribe(self._follow_shutter, run=True)
        super().install(RE, event_type=event_type)

    def remove(self) -> None:
        self._shutter_signal.clear_sub(self._follow_shutter)
        super().remove()


def checkpoint_each_event(plan: Generator[Msg, Any, Any]) -> Generator[Msg, Any, Any]:
    """``plan`` with a ``checkpoint`` message after each ``save`` (each finished event).

    Yields the plan's messages unchanged, plus the checkpoints. A checkpoint is where a
    deferred pause takes effect; it is never placed between ``create`` and ``save``.
    """
    from bluesky.preprocessors import plan_mutator
    from bluesky.utils import single_gen

    def after_save(msg: Msg):
        if msg.command != "save":
            return None, None

        def head():
            return (yield msg)

        return head(), single_gen(Msg("checkpoint"))

    return (yield from plan_mutator(plan, after_save))


def keep_abort_reason(RE: Any) -> Callable[[Generator[Msg, Any, Any]], Generator[Msg, Any, Any]]:
    """A preprocessor that puts ``RE.abort(reason)``'s reason in the run's stop document.

    bluesky (1.15) stashes the reason on the RunEngine, but a plan that closes its own
    run when aborted (``run_wrapper``/``run_decorator``: every scan) sends ``close_run``
    with ``exit_status="abort"`` and no reason, so the stop document says ``""``. The
    returned preprocessor yields the plan's messages unchanged, except such a
    ``close_run``, which gets the reason given to ``RE.abort``.
    """
    from bluesky.preprocessors import msg_mutator

    def with_reason(msg: Msg) -> Msg:
        if (
            msg.command == "close_run"
            and msg.kwargs.get("exit_status") == "abort"
            and not msg.kwargs.get("reason")
        ):
            reason = getattr(RE, "_reason", "")  # set by RE.abort(reason)
            if reason:
                return msg._replace(kwargs={**msg.kwargs, "reason": reason})
        return msg

    def preprocessor(plan: Generator[Msg, Any, Any]) -> Generator[Msg, Any, Any]:
        return (yield from msg_mutator(plan, with_reason))

    preprocessor.keeps_abort_reason = True
    return preprocessor


def prepare_run_engine(RE: Any, monitor: Any | None = None, **suspender_kwargs: Any) -> Any:
    """Make a RunEngine ride out beam dumps, pauses and suspensions without duplicates.

    - ``RE.rewindable = False``: our detectors append each frame to their file when
      triggered, so replaying the messages since the last checkpoint after a pause or
      suspension would take (and store) exposures twice; the scan instead resumes
      exactly where it stopped. An exposure taken while the beam was going down stays
      in the run, flagged by its zero I0 reading.
    - ``RE.record_interruptions = True``: every pause, suspension and resume is an
      event of the run's ``interruptions`` stream, stored with the run.
    - :func:`checkpoint_each_event` as a preprocessor: a checkpoint after every event,
      so a deferred pause (``RE.request_pause(defer=True)``, the first Ctrl-C) stops
      between two exposures even in plans that declare no checkpoints.
    - :func:`keep_abort_reason` as a preprocessor: ``RE.abort(reason)``'s reason is in
      the aborted run's stop document (bluesky leaves it out for scans).
    - with ``monitor``: installs :func:`beam_suspender` on it and returns the suspender.

    Returns
    -------
    SuspendFloor or None
        The installed suspender, if a monitor was given.
    """
    RE.rewindable = False
    RE.record_interruptions = True
    if checkpoint_each_event not in RE.preprocessors:
        RE.preprocessors.append(checkpoint_each_event)
    if not any(getattr(p, "keeps_abort_reason", False) for p in RE.preprocessors):
        RE.preprocessors.append(keep_abort_reason(RE))
    if monitor is None:
        return None
    suspender = beam_suspender(monitor, **suspender_kwargs)
    RE.install_suspender(suspender)
    return suspender


def _schema_error(name: str, doc: dict) -> str | None:
    """Why ``doc`` is not a valid ``name`` document (event-model schema), or None."""
    from event_model import DocumentNames, schema_validators
    from jsonschema.exceptions import ValidationError

    try:
        validator = schema_validators[DocumentNames(name)]
    except ValueError:
        return f"{name!r} is not an event-model document name"
    try:
        validator.validate(doc)
    except ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "document"
        return f"invalid {name} document ({where}): {exc.message}"
    return None


class _RunTracker:
    """Which run a document belongs to (start uid), from the documents' references."""

    def __init__(self) -> None:
        self._descriptors: dict[str, str] = {}
        self._resources: dict[str, str] = {}

    def run_of(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("stop", "stream_resource", "resource") or name == "descriptor":
            run = doc.get("run_start")
            if name == "descriptor":
                self._descriptors[doc["uid"]] = run
            elif name == "resource" and run is not None:
                self._resources[doc["uid"]] = run
            return run
        if name in ("event", "event_page", "stream_datum"):
            return self._descriptors.get(doc.get("descriptor"))
        if name == "datum":
            return self._resources.get(doc.get("resource"))
        if name == "datum_page":
            resource = doc.get("resource")
            return self._resources.get(resource[0] if isinstance(resource, list) else resource)
        return None


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class WriteAheadLog:
    """Documents appended as JSON lines, one file per run, before anyone writes them.

    A line is flushed to the operating system before :meth:`append` returns, so a
    process killed right after still leaves it on disk. JSON only: reading a log never
    unpickles anything.
    """

    SUFFIX = ".jsonl"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        self._lock = threading.Lock()

    def path(self, run_uid: str) -> Path:
        return self.directory / f"{run_uid}{self.SUFFIX}"

    def append(self, run_uid: str, name: str, doc: dict) -> None:
        """Append one document of run ``run_uid`` (the file closes at the stop document)."""
        line = json.dumps({"name": name, "doc": doc}, default=_json_default)
        with self._lock:
            handle = self._files.get(run_uid)
            if handle is None:
                handle = self._files[run_uid] = open(self.path(run_uid), "a", encoding="utf-8")
            handle.write(line + "\n")
            handle.flush()
            if name == "stop":
                handle.close()
                del self._files[run_uid]

    def retire(self, run_uid: str) -> None:
        """Forget a run that is safely stored."""
        with self._lock:
            handle = self._files.pop(run_uid, None)
            if handle is not None:
                handle.close()
            self.path(run_uid).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()

    def runs(self) -> list[str]:
        """Uids of the runs with a log."""
        return sorted(p.name[: -len(self.SUFFIX)] for p in self.directory.glob(f"*{self.SUFFIX}"))

    def read(self, run_uid: str) -> list[tuple[str, dict]]:
        """The documents of a run as logged. A line cut short by a crash (only the last
        one can be) is left out; a garbled line elsewhere raises ``ValueError``."""
        lines = self.path(run_uid).read_text(encoding="utf-8").splitlines()
        documents = []
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                documents.append((entry["name"], entry["doc"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                if number == len(lines):
                    break  # the write the crash interrupted
                raise ValueError(
                    f"write-ahead log {self.path(run_uid)}: line {number} is not a logged "
                    f"document ({exc})"
                ) from None
        return documents


@dataclass
class _RunState:
    writer: Callable[[str, dict], Any]
    history: list = field(default_factory=list)
    broken: bool = False


class BufferedWriter:
    """A document callback that never blocks the RunEngine and never drops a document.

    ``__call__`` only logs the document (write-ahead, if ``wal_directory``) and queues
    it; a thread hands the documents, in order, to one writer per run made by
    ``writer_factory`` (e.g. a ``TiledWriter``). When writing fails (server down, slow,
    restarting) the thread waits with exponential backoff, discards what was partially
    stored of that run (``discard_run``) and writes the run again from its first
    document, until it succeeds; later documents wait in the queue meanwhile.

    Parameters
    ----------
    writer_factory : callable
        ``writer_factory()`` returns a fresh document callback for one run.
    discard_run : callable, optional
        ``discard_run(uid)`` removes a partially written run before it is rewritten.
    wal_directory : path, optional
        Folder of the write-ahead log (see :func:`recover_runs`).
    initial_backoff, max_backoff : float
        Seconds between attempts while writing fails: doubling from the first to the
        second.
    validate : bool
        Check every document against its event-model schema first; an invalid one is
        not written (nor logged ahead) but kept in :attr:`rejected` with the reason.
    """

    def __init__(
        self,
        writer_factory: Callable[[], Callable[[str, dict], Any]],
        *,
        discard_run: Callable[[str], None] | None = None,
        wal_directory: str | Path | None = None,
        initial_backoff: float = 0.05,
        max_backoff: float = 2.0,
        validate: bool = False,
    ) -> None:
        if not 0 < initial_backoff <= max_backoff:
            raise ValueError(
                f"need 0 < initial_backoff <= max_backoff, got {initial_backoff}, {max_backoff}"
            )
        self.writer_factory = writer_factory
        self.discard_run = discard_run
        self.wal = WriteAheadLog(wal_directory) if wal_directory is not None else None
        self.initial_backoff = float(initial_backoff)
        self.max_backoff = float(max_backoff)
        self.validate = bool(validate)
        self.failed_attempts = 0
        self.rewrites = 0
        self.written = 0
        self.last_error: str | None = None
        self.outage_seconds = 0.0
        self.rejected: list[tuple[str, dict, str]] = []
        self._tracker = _RunTracker()
        self._runs: dict[str, _RunState] = {}
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._closing = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="buffered-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Documents received and not yet written."""
        return self._pending

    def __call__(self, name: str, doc: dict) -> None:
        """Log and queue one document (returns at once). A document that belongs to no
        run seen so far (an event before its descriptor...) is not written: it is kept
        in :attr:`rejected` with the reason, and logged as an error."""
        if self._closed:
            raise RuntimeError("BufferedWriter is closed")
        reason = _schema_error(name, doc) if self.validate else None
        run = self._tracker.run_of(name, doc) if reason is None else None
        if reason is None and run is None:
            reason = f"{name} document refers to no run this writer has seen (out of order?)"
        if reason is not None:
            logger.error("BufferedWriter: %s: %r", reason, doc)
            self.rejected.append((name, doc, reason))
            return
        if self.wal is not None:
            self.wal.append(run, name, doc)
        with self._idle:
            self._pending += 1
        self._queue.put((run, name, doc))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued document is written; False if ``timeout`` ran out."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout``), then stop the thread. Documents still unwritten stay
        in the write-ahead log. Returns True if everything was written."""
        if self._closed:
            return self._pending == 0
        done = self.flush(timeout)
        self._closed = True
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout=5.0)
        if self.wal is not None:
            self.wal.close()
        return done

    # -- the writing thread ------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            run, name, doc = item
            try:
                self._write(run, name, doc)
            except _Closing:
                return
            with self._idle:
                self._pending -= 1
                self.written += 1
                self._idle.notify_all()

    def _write(self, run: str, name: str, doc: dict) -> None:
        state = self._runs.get(run)
        if state is None:
            state = self._runs[run] = _RunState(writer=self.writer_factory())
        state.history.append((name, doc))
        if not state.broken:
            try:
                state.writer(name, doc)
            except Exception as exc:
                self._failed(run, exc)
                state.broken = True
        if state.broken:
            self._rewrite(run, state)
        if name == "stop":
            del self._runs[run]
            if self.wal is not None:
                self.wal.retire(run)

    def _failed(self, run: str, exc: Exception) -> None:
        self.failed_attempts += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.warning("writing run %s failed (%s); retrying", run, self.last_error)

    def _rewrite(self, run: str, state: _RunState) -> None:
        """Write the run again from its first document until it goes through."""
        backoff = self.initial_backoff
        started = time.monotonic()
        while True:
            if self._closing.wait(backoff):
                raise _Closing
            backoff = min(2 * backoff, self.max_backoff)
            try:
                if self.discard_run is not None:
                    self.discard_run(run)
                writer = self.writer_factory()
                for name, doc in state.history:
                    writer(name, doc)
            except Exception as exc:
                self._failed(run, exc)
                continue
            state.writer, state.broken = writer, False
            self.rewrites += 1
            self.outage_seconds += time.monotonic() - started
            return


class _Closing(Exception):
    """The writer was closed while a run could not be written."""


def _closing_stop(run_uid: str, documents: list[tuple[str, dict]]) -> dict:
    """A stop document for a run whose process died before closing it."""
    import uuid

    streams = {d["uid"]: d.get("name", "primary") for n, d in documents if n == "descriptor"}
    num_events: dict[str, int] = {}
    for name, doc in documents:
        if name in ("event", "event_page") and doc.get("descriptor") in streams:
            stream = streams[doc["descriptor"]]
            count = len(doc["seq_num"]) if name == "event_page" else 1
            num_events[stream] = num_events.get(stream, 0) + count
    return {
        "run_start": run_uid,
        "time": time.time(),
        "uid": str(uuid.uuid4()),
        "exit_status": "fail",
        "reason": "the process ended before the run was closed; recovered from the "
        "write-ahead log",
        "num_events": num_events,
    }


def recover_runs(
    wal_directory: str | Path,
    writer_factory: Callable[[], Callable[[str, dict], Any]],
    *,
    stored_complete: Callable[[str], bool],
    discard_run: Callable[[str], None] | None = None,
    close_interrupted: bool = True,
) -> list[dict]:
    """Store the runs a write-ahead log holds and the catalog lacks (after a crash).

    Parameters
    ----------
    wal_directory : path
        The :class:`BufferedWriter`'s write-ahead log folder.
    writer_factory : callable
        ``writer_factory()`` returns a fresh document callback for one run.
    stored_complete : callable
        ``stored_complete(uid)``: True if the catalog already has the whole run (its stop).
    discard_run : callable, optional
        ``discard_run(uid)`` removes a partially stored run before it is written again.
    close_interrupted : bool
        Give a run that never got its stop document one, with ``exit_status="fail"``
        and a reason saying it was recovered.

    Returns
    -------
    list of dict
        Per logged run: ``uid``, ``documents`` (logged), ``action`` (``"already stored"``
        or ``"rewritten"``) and ``closed`` (a stop document was added).
    """
    wal = WriteAheadLog(wal_directory)
    report = []
    for uid in wal.runs():
        documents = wal.read(uid)
        entry = {"uid": uid, "documents": len(documents), "closed": False}
        if stored_complete(uid):
            entry["action"] = "already stored"
        else:
            if close_interrupted and not any(name == "stop" for name, _ in documents):
                documents.append(("stop", _closing_stop(uid, documents)))
                entry["closed"] = True
            if discard_run is not None:
                discard_run(uid)
            writer = writer_factory()
            for name, doc in documents:
                writer(name, doc)
            entry["action"] = "rewritten"
        wal.retire(uid)
        report.append(entry)
    return report
