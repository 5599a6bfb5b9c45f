"""Reliability: inject each fault into a raster scan and count what was lost.

Each fault runs a ptychography raster scan in a real RunEngine, persisting through the
buffered catalog writer (``Catalog.writer(buffered=True)``) of a fresh embedded catalog,
and injects one fault a third of the way through:

* ``beam_dump``: the beam dies for a while (``Beam.schedule_dump``); the beam suspender
  holds the scan. Recovery: beam back -> next exposure. The exposures flagged by I0 = 0
  are recorded (exactly the one taken as the beam died). ``beam_dump_monitor_first``:
  the same with the I0 monitor triggered before the detector in each event.
* ``tiled_down``: the Tiled server is stopped mid-scan and restarted after the scan.
  Recovery: server back -> every document stored.
* ``pause_resume``: ``RE.request_pause()`` from another thread, then ``RE.resume()``.
  Recovery: resume -> next exposure.
* ``ctrl_c``: one SIGINT (a deferred pause at the next checkpoint), then ``RE.resume()``.
* ``abort``: a pause, then ``RE.abort(reason)``. Recovery: abort -> the aborted run
  stored (with the reason in its stop document).
* ``callback_error``: an analysis callback raises on every event (isolated, reported).
* ``sigkill``: the scanning process is killed; ``Catalog.recover()`` in a new process
  stores what the write-ahead log holds. Recovery: the time ``recover`` takes.

Documents lost: every document the RunEngine emitted (before the fault, for the killed
process: what it printed before dying) checked against the catalog: the run's start and
stop, its streams, every event (by ``seq_num``, with its values) and every frame.
Must be 0.

Run ``python -m benchmarks.reliability`` (``--smoke`` for CI sizes).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import REPO_DIR, base_parser, print_table, write_result

NAME = "reliability"
ABORT_REASON = "reliability benchmark: abort"
SEEDS = {"phantom": 1, "beamline": 3}
FAULTS = (
    "beam_dump",
    "beam_dump_monitor_first",
    "tiled_down",
    "pause_resume",
    "ctrl_c",
    "abort",
    "callback_error",
    "sigkill",
)


def _params(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"smoke": True, "phantom_size": 96, "frame_size": 32, "step": 0.2,
                "half_width": 0.2, "beam_down_s": 0.3, "tiled_down_s": 0.5,
                "child_time_scale": 2.0}
    return {"smoke": False, "phantom_size": 192, "frame_size": 32, "step": 0.1,
            "half_width": 0.8, "beam_down_s": 2.0, "tiled_down_s": 3.0,
            "child_time_scale": 1.0}


# ------------------------------------------------------------------------------ the scan
@functools.cache
def _phantom(size: int) -> Any:
    from synaps_agent.sim_devices.phantoms import make_phantom

    return make_phantom("P-dense", seed=SEEDS["phantom"], size=size)


def make_beamline(catalog: Any, p: dict[str, Any], time_scale: float = 0.0) -> Any:
    """The simulated beamline of every scan (frames into the catalog's folder)."""
    from synaps_agent.sim_devices.beamline import make_sim_beamline

    phantom = _phantom(p["phantom_size"])
    bl = make_sim_beamline(
        phantom, catalog.frames_directory, seed=SEEDS["beamline"], photons_per_frame=1e5,
        frame_size=p["frame_size"], probe_fwhm_px=10, time_scale=time_scale,
    )
    bl.beam.clock = bl.clock  # outages on the beamline's clock (make_sim_beamline: not yet)
    return bl


def raster(bl: Any, p: dict[str, Any], *, monitor_first: bool = False) -> Any:
    """The scanned raster: a square of ``2 * half_width`` um with ``step`` um (the I0
    monitor triggered after the detector in each event, or before it)."""
    from synaps_agent.plans.scans import raster_ptycho_scan

    h = p["half_width"]
    detectors = [bl.i0, bl.ptycho_det] if monitor_first else [bl.ptycho_det, bl.i0]
    return raster_ptycho_scan(
        detectors, bl.stage.x, bl.stage.y, -h, h, -h, h, p["step"], shutter=bl.shutter,
    )


def num_points(p: dict[str, Any]) -> int:
    from synaps_agent.plans.patterns import raster_positions

    h = p["half_width"]
    return len(raster_positions(-h, h, -h, h, p["step"]))


def documents_lost(catalog: Any, emitted: list[tuple[str, dict]]) -> int:
    """How many of the ``emitted`` documents the catalog does not hold.

    Counted: a missing start or stop (or a stop other than the emitted one), a missing
    stream per descriptor, each event whose ``seq_num`` is absent or whose values
    differ, each frame (stream_datum index) not readable.
    """
    lost = 0
    starts = [d for n, d in emitted if n == "start"]
    for start in starts:
        uid = start["uid"]
        if uid not in catalog.raw:
            return len(emitted)
        run = catalog.raw[uid]
        stops = [d for n, d in emitted if n == "stop" and d["run_start"] == uid]
        stored_stop = run.metadata.get("stop")
        if stops and (stored_stop is None or stored_stop["uid"] != stops[0]["uid"]):
            lost += 1
        streams = {d["uid"]: d for n, d in emitted if n == "descriptor" and d["run_start"] == uid}
        for descriptor in streams.values():
            if descriptor["name"] not in run:
                lost += 1 + sum(n == "event" and d["descriptor"] == descriptor["uid"]
                                for n, d in emitted)
                continue
            stream = run[descriptor["name"]]
            events = [d for n, d in emitted if n == "event" and d["descriptor"] in streams
                      and d["descriptor"] == descriptor["uid"]]
            if not events:
                continue
            stored_seq = list(np.asarray(stream["seq_num"].read())) if "seq_num" in stream else []
            scalar_keys = [
                k for k, v in descriptor["data_keys"].items()
                if not v.get("external") and v.get("dtype") in ("number", "integer")
                and k in stream
            ]
            columns = {k: np.asarray(stream[k].read(), dtype=float) for k in scalar_keys}
            for event in events:
                if event["seq_num"] not in stored_seq:
                    lost += 1
                    continue
                row = stored_seq.index(event["seq_num"])
                if not all(
                    np.isclose(columns[k][row], float(event["data"][k])) for k in scalar_keys
                ):
                    lost += 1
            frames = sum(
                d["indices"]["stop"] - d["indices"]["start"]
                for n, d in emitted
                if n == "stream_datum" and d["descriptor"] == descriptor["uid"]
            )
            image_keys = [k for k, v in descriptor["data_keys"].items() if v.get("external")]
            for key in image_keys:
                stored = len(stream[key].read()) if key in stream else 0
                lost += max(frames - stored, 0)
    return lost


class _Recorder:
    """Every document the RunEngine emits, and the time of each primary event."""

    def __init__(self) -> None:
        self.documents: list[tuple[str, dict]] = []
        self.event_times: list[float] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.documents.append((name, doc))
        if name == "event":
            self.event_times.append(time.perf_counter())

    def first_event_after(self, t: float) -> float:
        later = [e for e in self.event_times if e >= t]
        return later[0] - t if later else float("nan")


def _session(catalog: Any, p: dict[str, Any], time_scale: float = 0.0):
    """A beamline, a prepared RunEngine, its buffered writer and a document recorder."""
    from bluesky import RunEngine

    from synaps_agent.reliability import prepare_run_engine

    bl = make_beamline(catalog, p, time_scale)
    RE = RunEngine({}, call_returns_result=False)
    writer = catalog.writer(buffered=True)
    RE.subscribe(writer)
    recorder = _Recorder()
    RE.subscribe(recorder)
    prepare_run_engine(RE, bl.i0)
    return bl, RE, writer, recorder


def _at_event(RE: Any, seq_num: int, action: Any, *, thread: bool = True) -> int:
    def callback(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == seq_num:
            if thread:
                threading.Thread(target=action, daemon=True).start()
            else:
                action()

    return RE.subscribe(callback)


def _outcome(catalog: Any, writer: Any, recorder: _Recorder, recovery_s: float,
             **extra: Any) -> dict[str, Any]:
    writer.flush(timeout=120)
    starts = [d for n, d in recorder.documents if n == "start"]
    stop = catalog.raw[starts[0]["uid"]].metadata.get("stop") if starts else None
    return {
        "completed": bool(stop and stop["exit_status"] == "success"),
        "exit_status": stop["exit_status"] if stop else None,
        "stop_reason": stop.get("reason", "") if stop else None,
        "documents_emitted": len(recorder.documents),
        "documents_lost": documents_lost(catalog, recorder.documents),
        "recovery_s": recovery_s,
        **extra,
    }


# ------------------------------------------------------------------------------ faults
def fault_beam_dump(catalog: Any, p: dict[str, Any], monitor_first: bool = False) -> dict[str, Any]:
    bl, RE, writer, recorder = _session(catalog, p)
    restored: list[float] = []
    bl.beam.subscribe(lambda intensity: intensity > 0 and restored.append(time.perf_counter()))
    bl.beam.schedule_dump(max(num_points(p) // 3, 1), down_for=p["beam_down_s"])
    try:
        RE(raster(bl, p, monitor_first=monitor_first))
        recovery = recorder.first_event_after(restored[0]) if restored else float("nan")
        result = _outcome(catalog, writer, recorder, recovery, dumps=bl.beam.dumps,
                          beam_down_simulated_s=bl.clock.by_kind.get("beam_down", 0.0))
    finally:
        writer.close(timeout=60)
    # the exposures flagged by I0 = 0 in the stored run: the one taken as the beam died
    uid = next(d["uid"] for n, d in recorder.documents if n == "start")
    i0 = np.asarray(catalog.raw[uid]["primary"]["i0"].read(), dtype=float)
    result["flagged_exposures"] = np.flatnonzero(i0 <= 0).tolist()
    return result


def fault_beam_dump_monitor_first(catalog: Any, p: dict[str, Any]) -> dict[str, Any]:
    return fault_beam_dump(catalog, p, monitor_first=True)


@contextmanager
def _client_gives_up_fast() -> Iterator[None]:
    """Tiled's client retries a dead server for up to 45 s by itself; cut that to about
    a second so that what is measured is the buffered writer's own retry."""
    import tiled.client.utils as client_utils

    saved = client_utils.TILED_RETRY_ATTEMPTS, client_utils.TILED_RETRY_TIMEOUT
    client_utils.TILED_RETRY_ATTEMPTS, client_utils.TILED_RETRY_TIMEOUT = 2, 1.0
    try:
        yield
    finally:
        client_utils.TILED_RETRY_ATTEMPTS, client_utils.TILED_RETRY_TIMEOUT = saved


def fault_tiled_down(catalog: Any, p: dict[str, Any]) -> dict[str, Any]:
    bl, RE, writer, recorder = _session(catalog, p)
    _at_event(RE, max(num_points(p) // 3, 1), catalog.stop_server, thread=False)
    with _client_gives_up_fast():
        return _tiled_down(catalog, bl, RE, writer, recorder, p)


def _tiled_down(catalog, bl, RE, writer, recorder, p: dict[str, Any]) -> dict[str, Any]:
    try:
        t0 = time.perf_counter()
        RE(raster(bl, p))
        scan_s = time.perf_counter() - t0
        unwritten_after_scan = writer.pending
        time.sleep(p["tiled_down_s"])
        catalog.restart_server()
        t_back = time.perf_counter()
        writer.flush(timeout=120)
        recovery = time.perf_counter() - t_back
        return _outcome(catalog, writer, recorder, recovery, scan_s=scan_s,
                        buffered_while_down=unwritten_after_scan,
                        failed_attempts=writer.failed_attempts, rewrites=writer.rewrites)
    finally:
        writer.close(timeout=60)


def _pause_and(catalog: Any, p: dict[str, Any], how: str) -> dict[str, Any]:
    from bluesky.utils import RunEngineInterrupted

    bl, RE, writer, recorder = _session(catalog, p)
    if how == "ctrl_c":
        token = _at_event(RE, max(num_points(p) // 3, 1),
                          lambda: os.kill(os.getpid(), signal.SIGINT), thread=False)
    else:
        token = _at_event(RE, max(num_points(p) // 3, 1), RE.request_pause)
    try:
        try:
            RE(raster(bl, p))
            paused = False
        except RunEngineInterrupted:
            paused = True
        RE.unsubscribe(token)
        t0 = time.perf_counter()
        if how == "abort":
            RE.abort(reason=ABORT_REASON)
            writer.flush(timeout=120)
            recovery = time.perf_counter() - t0
        else:
            RE.resume()
            recovery = recorder.first_event_after(t0)
        return _outcome(catalog, writer, recorder, recovery, paused=paused)
    finally:
        writer.close(timeout=60)


def fault_pause_resume(catalog: Any, p: dict[str, Any]) -> dict[str, Any]:
    return _pause_and(catalog, p, "pause")


def fault_ctrl_c(catalog: Any, p: dict[str, Any]) -> dict[str, Any]:
    return _pause_and(catalog, p, "ctrl_c")


def fault_abort(catalog: Any, p: dict[str, Any]) -> dict[str, Any]:
    result = _pause_and(catalog, p, "abort")
    result["completed"] = result["exit_status"] == "abort"  # closed, as asked
    return result


def fault_callback_error(catalog: Any, p: dict[str, Any]) -> dict[str, Any]:
    from synaps_agent.callbacks.analysis import StreamingAnalysis

    class Broken(StreamingAnalysis):
        processor = "broken"

        def start(self, doc: dict) -> None:
            self.start_worker()

        def event(self, doc: dict) -> None:
            if doc["seq_num"] % 2:
                raise RuntimeError("analysis bug on the RunEngine thread")
            self.submit(doc["seq_num"])

        def process(self, item: Any) -> None:
            raise RuntimeError("analysis bug on the worker")

        def stop(self, doc: dict) -> None:
            self.finish()

    bl, RE, writer, recorder = _session(catalog, p)
    broken = Broken()
    RE.subscribe(broken)
    try:
        RE(raster(bl, p))
        broken.wait(30)
        return _outcome(catalog, writer, recorder, 0.0, errors_reported=len(broken.errors))
    finally:
        writer.close(timeout=60)


# ------------------------------------------------------------------------------ sigkill
def child_scan(directory: str, time_scale: float, smoke: bool) -> None:
    """Run in the child process: a raster scan, each document printed after it is logged."""
    from bluesky import RunEngine

    from synaps_agent.catalog import open_catalog

    p = _params(smoke)
    catalog = open_catalog(directory)
    bl = make_beamline(catalog, p, time_scale)
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(catalog.writer(buffered=True))  # first: a document is logged, then shown

    def show(name: str, doc: dict) -> None:
        print(json.dumps({"name": name, "doc": doc}, default=float), flush=True)

    RE.subscribe(show)
    RE(raster(bl, p))


def run_and_kill(directory: Path, kill_after_events: int, *, time_scale: float = 1.0,
                 smoke: bool = True, argv: list[str] | None = None) -> list[tuple[str, dict]]:
    """Scan in a child process and SIGKILL it after ``kill_after_events`` events.

    The child is :func:`child_scan` (a raster), or the Python command line ``argv`` (its
    documents printed as JSON lines ``{"name": ..., "doc": ...}``, like ``child_scan``).
    Returns the documents the child emitted (printed) before it died.
    """
    if argv is None:
        argv = ["-m", "benchmarks.reliability", "--child", str(directory), str(time_scale),
                *(["--smoke"] if smoke else [])]
    child = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_DIR,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    documents: list[tuple[str, dict]] = []
    try:
        for line in child.stdout:
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            documents.append((entry["name"], entry["doc"]))
            if sum(name == "event" for name, _ in documents) >= kill_after_events:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the scanning child ended with {child.returncode}, not SIGKILL")
    return documents


def fault_sigkill(catalog: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The child scans into its own catalog folder (beside ``catalog``'s), is killed, and
    this process reopens that folder and recovers."""
    from synaps_agent.catalog import open_catalog

    directory = Path(catalog.directory).parent / "sigkill"
    emitted = run_and_kill(directory, max(num_points(p) // 3, 1),
                           time_scale=p["child_time_scale"], smoke=p["smoke"])
    t0 = time.perf_counter()
    catalog = open_catalog(directory)
    try:
        report = catalog.recover()
        recovery = time.perf_counter() - t0
        stop = catalog.raw[emitted[0][1]["uid"]].metadata.get("stop")
        return {
            "completed": False,
            "exit_status": stop["exit_status"] if stop else None,
            "documents_emitted": len(emitted),
            "documents_lost": documents_lost(catalog, emitted),
            "recovery_s": recovery,
            "runs_recovered": len(report),
        }
    finally:
        catalog.close()


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Inject every fault, print the table, write the JSON; return the record."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child_scan(argv[1], float(argv[2]), "--smoke" in argv)
        return {}
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="*", default=list(FAULTS), choices=FAULTS)
    args = parser.parse_args(argv)
    p = _params(args.smoke)
    p["points_per_scan"] = num_points(p)
    results: dict[str, dict[str, Any]] = {}
    from synaps_agent.catalog import open_catalog

    with tempfile.TemporaryDirectory(prefix="synaps-reliability-") as tmp:
        catalog = open_catalog(Path(tmp) / "catalog")  # one catalog for every scan
        try:
            for fault in args.faults:
                if not args.quiet:
                    print(f"injecting {fault} ...", file=sys.stderr)
                t0 = time.perf_counter()
                results[fault] = globals()[f"fault_{fault}"](catalog, p)
                results[fault]["wall_s"] = time.perf_counter() - t0
        finally:
            catalog.close()
    figures = {
        "faults_injected": len(results),
        "beam_dump_flagged_as_expected": all(
            len(r["flagged_exposures"]) == 1 for f, r in results.items() if f.startswith("beam")
        ),
        "abort_reason_stored": all(
            r["stop_reason"] == ABORT_REASON for f, r in results.items() if f == "abort"
        ),
        "scans_completed": sum(r["completed"] for r in results.values()),
        "documents_emitted": sum(r["documents_emitted"] for r in results.values()),
        "documents_lost": sum(r["documents_lost"] for r in results.values()),
        "faults": results,
    }
    print_table(
        f"reliability: {p['points_per_scan']} exposures per scan",
        [[f, r["completed"], r["exit_status"], r["documents_emitted"], r["documents_lost"],
          r["recovery_s"], r["wall_s"]] for f, r in results.items()],
        ["fault", "completed", "exit status", "documents", "lost", "recovery s", "wall s"],
    )
    notes = [
        "2 CPU cores shared with other developers while measuring: times are noisy.",
        "completed: the scan ended with exit_status success (abort: the aborted run is "
        "stored and closed; sigkill: never, the run is closed as 'fail' by recovery).",
        "recovery_s: beam_dump, pause_resume, ctrl_c: from the beam's return / resume() "
        "to the next exposure; tiled_down: server restart to everything stored; abort: "
        "abort() to the aborted run stored; sigkill: open_catalog + recover().",
        "tiled_down: Tiled's client, which retries a dead server for up to 45 s by itself, "
        "is cut to 2 attempts / 1 s, so the buffered writer's own retry (backoff up to "
        "2 s, rewrite of the run) is what is measured.",
    ]
    path = write_result(NAME, figures, SEEDS, p, out=args.out, notes=notes)
    print(f"wrote {path}")
    return {"path": str(path), "figures": figures, "params": p}


if __name__ == "__main__":
    main()
