"""Analysis on another machine: documents out over 0MQ, the agent's suggestions back.

The RunEngine at the beamline publishes its documents with bluesky's
:class:`~bluesky.callbacks.zmq.Publisher` (JSON, never pickle) to a 0MQ
:class:`~bluesky.callbacks.zmq.Proxy`; on the analysis node (a GPU machine) an
:class:`AnalysisServer` subscribes the live callbacks -- :class:`PtychoReconstruction`
feeding :class:`LiveSegmentation` -- to a :class:`~bluesky.callbacks.zmq.RemoteDispatcher`
and runs the agent. Frames travel as files: StreamResource/StreamDatum documents name the
HDF5 files, which the analysis node reads from the shared filesystem, as at a facility.

The plan gets the agent's suggestions back through a :class:`RemoteAgentFeed`, which has
the interface of :class:`~synaps_agent.callbacks.agent_feed.AgentFeed` (so
:func:`~synaps_agent.plans.adaptive.adaptive_ptycho_scan` runs unchanged) and talks to the
server over a 0MQ REQ/REP socket with a timeout. If the analysis side does not answer,
the feed raises :class:`AnalysisUnavailableError` naming the address and the timeout --
or, given ``fallback=`` a planned pattern, finishes the scan on that pattern and says so
in the run's stop reason.

Every socket binds 127.0.0.1 unless told otherwise; messages are JSON (arrays as lists).

Example (three processes; see ``docs/remote.md``)::

    # anywhere:           proxy = DocumentProxy(in_port=5577, out_port=5578).start()
    # analysis node:      python -m synaps_agent.remote --proxy tcp://HOST:5578 --reply-port 5580
    # beamline (profile): RE.subscribe(connect_publisher("tcp://HOST:5577", "tcp://HOST:5578"))
    #                     feed = RemoteAgentFeed("tcp://GPU:5580", agent, footprint_radius=0.1)
    #                     RE(adaptive_ptycho_scan([det], x, y, feed, seeds))
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import zmq
from bluesky.callbacks.zmq import Proxy, Publisher, RemoteDispatcher
from bluesky.run_engine import Dispatcher

from .agent import AgentConfig, ImagingAgent, ScanSpace, StoppingRule
from .callbacks.agent_feed import AgentFeed
from .callbacks.analysis import DocumentSink, Subscriber
from .callbacks.ptycho import PtychoReconstruction
from .callbacks.segmentation import (
    LiveSegmentation,
    VolumeSegmentation,
    cylinder_mask,
    normalize_reconstruction,
)
from .callbacks.tomo import TomoReconstruction
from .plans.patterns import checked_pattern, unmeasured_points
from .recon.ptycho import PtychoConfig

__all__ = [
    "PREFIX",
    "AnalysisServer",
    "AnalysisUnavailableError",
    "DocumentProxy",
    "RemoteAgentFeed",
    "RemoteAnalysisError",
    "agent_from_spec",
    "agent_spec",
    "connect_publisher",
    "json_deserializer",
    "json_serializer",
    "publisher_socket",
    "serve_analysis",
]

logger = logging.getLogger("synaps_agent.remote")

LOOPBACK = "127.0.0.1"
PREFIX = b"synaps"  # the documents' 0MQ prefix; other publishers on the proxy are ignored
_PROBE_PREFIX = b"synaps-probe"
_OPERATIONS = (
    "ping", "open", "measured", "failed", "remeasured", "map_is_current", "map_wait_timed_out",
    "ask", "should_stop", "close",
)  # fmt: skip


# -- JSON on the wire ------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def json_serializer(doc: Any) -> bytes:
    """JSON bytes of ``doc`` (numpy arrays and scalars become lists and numbers)."""
    return json.dumps(doc, default=_plain, allow_nan=True).encode()


def _tcp(host: str, port: int) -> str:
    return f"tcp://{host}:{int(port)}"


# -- documents out: proxy and publisher ------------------------------------------------------
class DocumentProxy:
    """A 0MQ document proxy (SUB in, PUB out, as bluesky's
    :class:`~bluesky.callbacks.zmq.Proxy`) forwarding on a background thread.

    The sockets are made by bluesky's public ``Proxy.configure_server_socket`` (the same
    address handling as its ``Proxy``); the forwarder is 0MQ's steerable proxy, so that
    :meth:`stop` ends it cleanly (bluesky's ``Proxy.start`` blocks until the process ends).

    Parameters
    ----------
    host : str
        Interface both sides bind (loopback by default; a facility names its network).
    in_port, out_port : int
        Where publishers send and dispatchers subscribe; 0 picks free ports.
    """

    def __init__(self, host: str = LOOPBACK, in_port: int = 0, out_port: int = 0) -> None:
        self._context = zmq.Context()
        sockets = []
        try:
            for kind, port in ((zmq.SUB, in_port), (zmq.PUB, out_port)):
                address = _tcp(host, port) if port else f"tcp://{host}"
                sockets.append(Proxy.configure_server_socket(self._context, kind, address, None))
        except BaseException:
            for sock, _ in sockets:
                sock.close(linger=0)
            self._context.destroy(linger=0)
            raise
        (self._frontend, in_address), (self._backend, out_address) = sockets
        self._frontend.setsockopt(zmq.SUBSCRIBE, b"")
        self.in_address: str = str(in_address)
        self.out_address: str = str(out_address)
        self._thread: threading.Thread | None = None
        self._control: zmq.Socket | None = None

    def start(self) -> DocumentProxy:
        """Forward messages on a daemon thread until :meth:`stop`; returns ``self``."""
        if self._context.closed:
            raise RuntimeError("this DocumentProxy was stopped: make a new one")
        endpoint = f"inproc://synaps-proxy-control-{id(self)}"
        self._control = self._context.socket(zmq.PAIR)
        self._control.bind(endpoint)
        peer = self._context.socket(zmq.PAIR)
        peer.connect(endpoint)
        self._thread = threading.Thread(
            target=self._run, args=(peer,), name="synaps-0mq-proxy", daemon=True
        )
        self._thread.start()
        return self

    def _run(self, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, control)
        finally:
            control.close(linger=0)

    def stop(self) -> None:
        """End the forwarder, close every socket and the context."""
        if self._thread is not None:
            self._control.send(b"TERMINATE")
            self._thread.join(10)
            self._control.close(linger=0)
        self._thread = None
        if not self._context.closed:
            self._frontend.close(linger=0)
            self._backend.close(linger=0)
            self._context.destroy(linger=0)

    def __enter__(self) -> DocumentProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DocumentProxy(in={self.in_address}, out={self.out_address})"


def publisher_socket(publisher: Publisher) -> zmq.Socket:
    """The 0MQ PUB socket inside bluesky's :class:`~bluesky.callbacks.zmq.Publisher`.

    The one private attribute of bluesky this module reads (``Publisher._socket``, as of
    bluesky 1.15): :func:`connect_publisher` must probe on the very socket the documents
    leave by (0MQ's slow-joiner drop is per connection) with a prefix the dispatchers
    ignore, and ``Publisher.__call__`` always sends the documents' prefix. If bluesky
    renames it, this raises (and ``test_bluesky_internals_we_rely_on`` fails) instead
    of a scan silently losing its start document.
    """
    sock = getattr(publisher, "_socket", None)
    if not isinstance(sock, zmq.Socket) or sock.type != zmq.PUB:
        raise RuntimeError(
            f"bluesky {_bluesky_version()}: Publisher no longer keeps its 0MQ PUB socket in "
            "`_socket`; synaps_agent.remote.publisher_socket must follow it"
        )
    return sock


def _bluesky_version() -> str:
    import bluesky

    return str(bluesky.__version__)


def connect_publisher(
    proxy_in: str, proxy_out: str, *, prefix: bytes = PREFIX, timeout: float = 10.0
) -> Publisher:
    """A JSON :class:`~bluesky.callbacks.zmq.Publisher` whose messages reach the proxy.

    0MQ drops what a publisher sends before the proxy's subscription reaches it (the
    "slow joiner"), which would lose a scan's start document. This sends probe messages
    (prefix ``synaps-probe``, ignored by dispatchers with another prefix) until one
    comes out of ``proxy_out``.

    Parameters
    ----------
    proxy_in, proxy_out : str
        The proxy's input and output addresses (``tcp://host:port``).
    prefix : bytes
        Prefix of the documents (the analysis server subscribes to it).
    timeout : float
        Seconds to wait for the proxy.

    Returns
    -------
    Publisher
        Subscribe it to the RunEngine: ``RE.subscribe(publisher)``.

    Raises
    ------
    AnalysisUnavailableError
        If no probe came through within ``timeout``.
    """
    publisher = Publisher(proxy_in, prefix=prefix, serializer=json_serializer)
    context = zmq.Context.instance()
    probe = context.socket(zmq.SUB)
    probe.setsockopt(zmq.LINGER, 0)
    probe.setsockopt(zmq.SUBSCRIBE, _PROBE_PREFIX + b" ")
    probe.connect(proxy_out)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            # an undecodable body: dispatchers without a prefix drop it (non-strict)
            publisher_socket(publisher).send(_PROBE_PREFIX + b" probe \x00")
            if probe.poll(50):
                probe.recv()
                return publisher
    finally:
        probe.close()
    publisher.close()
    raise AnalysisUnavailableError(
        f"no message came through the 0MQ proxy {proxy_in} -> {proxy_out} within {timeout} s "
        "(is the proxy running?)"
    )


# -- the agent's settings as JSON -----------------------------------------------------------
def agent_spec(agent: ImagingAgent) -> dict:
    """The JSON description the analysis side builds the same agent from."""
    return {
        "space": agent.space.to_dict(),
        "config": asdict(agent.config),
        "stopping": agent.stopping.to_dict(),
        "seed": agent.seed,
        "strategy": agent.strategy,
    }


def agent_from_spec(spec: Mapping[str, Any]) -> ImagingAgent:
    """A fresh :class:`ImagingAgent` from :func:`agent_spec` output (``ValueError`` if bad)."""
    try:
        strategy = spec.get("strategy", ImagingAgent.strategy)
        if strategy != ImagingAgent.strategy:
            from .agent import make_strategy

            build: Callable[..., ImagingAgent] = lambda *a, **k: make_strategy(strategy, *a, **k)  # noqa: E731
        else:
            build = ImagingAgent
        return build(
            ScanSpace.from_dict(spec["space"]),
            AgentConfig.from_dict(spec["config"]),
            stopping=StoppingRule.from_dict(spec["stopping"]),
            seed=int(spec["seed"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad agent specification: {type(exc).__name__}: {exc}") from None


# -- the analysis side ----------------------------------------------------------------------
class AnalysisServer:
    """The analysis node: live reconstruction, segmentation and the agent.

    Documents arrive through a :class:`~bluesky.callbacks.zmq.RemoteDispatcher`
    subscribed to the proxy's output; the agent answers a :class:`RemoteAgentFeed` on a
    REP socket. Derived documents (reconstructions, segmentations, decisions) go to
    ``sink`` (e.g. ``catalog.writer("processed")`` or a Tiled writer).

    Ptychography runs feed :class:`PtychoReconstruction` and :class:`LiveSegmentation`;
    tomography runs feed :class:`TomoReconstruction` (streaming FBP) and, with a
    ``tomo_segmenter``, :class:`VolumeSegmentation` of its final volume. An agent over
    the sample plane (x, y, and theta for ptycho-tomography) reads the ptychographic
    segmentation's uncertainty; an agent over theta alone reads
    :meth:`tomography_uncertainty` (the live tomogram's central slab segmented by
    ``tomo_segmenter``), so ``adaptive_tomo_scan`` runs remotely too.

    Parameters
    ----------
    proxy_out : str or Dispatcher
        The 0MQ proxy's output address (``tcp://host:port``), or a ready document
        dispatcher with ``subscribe``/``start``/``stop`` (e.g. ``bluesky_kafka``'s
        ``RemoteDispatcher``, see ``docs/remote.md``).
    segmenter : Segmenter
        Has ``segment(image, coverage)``.
    reply_host, reply_port : str, int
        Where the agent's REP socket binds (loopback, a free port by default).
    sink : callable, optional
        Receives the derived documents.
    prefix : bytes
        Only documents published with this prefix are analysed.
    ptycho_config : PtychoConfig, optional
    snapshot_interval, final_epochs, min_interval : float, int, float
        As in :class:`PtychoReconstruction` / :class:`LiveSegmentation`.
    tomo_segmenter : Segmenter, optional
        Segments real slices of a tomogram (linear attenuation, 1/m), e.g. a
        :class:`~synaps_agent.segment.forest.ForestSegmenter` trained on reconstructions
        of other volumes wrapped in :class:`~synaps_agent.segment.base.ProbabilisticSegmenter`.
        Without it the node reconstructs tomography runs but refuses a rotation agent.
    tomo_snapshot_interval : float
        Seconds between the live tomography's snapshot documents.
    tomo_slab : int
        Central slices of the tomogram the rotation agent's map averages.
    tomo_sync : float
        Longest wait (s), before a rotation agent's decision, for the reconstruction to
        hold every projection the agent was told of (the decisions then do not depend on
        the network or the node's load; the agent goes on with what it has after that).
    keep_documents : int
        How many of the latest received documents :attr:`received` keeps.
    """

    def __init__(
        self,
        proxy_out: str | Dispatcher,
        *,
        segmenter,
        reply_host: str = LOOPBACK,
        reply_port: int = 0,
        sink: Subscriber | None = None,
        prefix: bytes = PREFIX,
        ptycho_config: PtychoConfig | None = None,
        snapshot_interval: float = 1.0,
        final_epochs: int = 30,
        min_interval: float = 0.5,
        tomo_segmenter=None,
        tomo_snapshot_interval: float = 1.0,
        tomo_slab: int = 8,
        tomo_sync: float = 10.0,
        keep_documents: int = 10_000,
    ) -> None:
        if tomo_slab < 1 or not tomo_sync >= 0:
            raise ValueError(f"tomo_slab must be >= 1 and tomo_sync >= 0, got {tomo_slab}, "
                             f"{tomo_sync}")  # fmt: skip
        self.proxy_out = proxy_out
        self.sink = DocumentSink(*([sink] if sink is not None else []))
        self.segmentation = LiveSegmentation(
            self.sink,
            segmenter=segmenter,
            min_interval=min_interval,
            preprocess=normalize_reconstruction,
        )
        self.reconstruction = PtychoReconstruction(
            DocumentSink(self.sink, self.segmentation),
            config=ptycho_config or PtychoConfig(),
            snapshot_interval=snapshot_interval,
            final_epochs=final_epochs,
        )
        self.tomo_segmenter = tomo_segmenter
        self.tomo_slab = int(tomo_slab)
        self.tomo_sync = float(tomo_sync)
        self.volume_segmentation = (
            None
            if tomo_segmenter is None
            else VolumeSegmentation(self.sink, segmenter=tomo_segmenter)
        )
        self.tomography = TomoReconstruction(
            DocumentSink(self.sink, *filter(None, [self.volume_segmentation])),
            snapshot_interval=tomo_snapshot_interval,
        )
        self._tomo_map: tuple[int, tuple[np.ndarray, tuple]] | None = None
        self.feed: AgentFeed | None = None
        # the latest documents, as they arrived (bounded: the node runs for days)
        self.received: deque[tuple[str, dict]] = deque(maxlen=keep_documents)
        self._starts: deque[str] = deque(maxlen=1000)  # uids of the runs that started
        if isinstance(proxy_out, str):
            self.dispatcher: Dispatcher = RemoteDispatcher(
                proxy_out, prefix=prefix, deserializer=json_deserializer
            )
        else:
            self.dispatcher = proxy_out
        self._arrived = threading.Condition()
        self.dispatcher.subscribe(self._record)
        self.dispatcher.subscribe(self.reconstruction)
        self.dispatcher.subscribe(self.tomography)
        self._context = zmq.Context()
        self._reply = self._context.socket(zmq.REP)
        self._reply.setsockopt(zmq.LINGER, 0)
        if reply_port:
            self._reply.bind(_tcp(reply_host, reply_port))
            port = reply_port
        else:
            port = self._reply.bind_to_random_port(f"tcp://{reply_host}")
        self.reply_address = _tcp(reply_host, port)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life cycle
    def start(self) -> AnalysisServer:
        """Start the dispatcher and the reply threads; returns ``self``."""
        self._threads = [
            threading.Thread(target=self._dispatch, name="synaps-remote-dispatch", daemon=True),
            threading.Thread(target=self._serve, name="synaps-remote-agent", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if isinstance(self.dispatcher, RemoteDispatcher):
            # its socket connects when its thread starts, just before its event loop
            # runs; a document published before the subscription reaches the proxy is
            # lost (0MQ PUB/SUB), so start the node before the scan ('open' then checks
            # that the run's start arrived)
            deadline = time.monotonic() + 10
            while not self.dispatcher.loop.is_running() and time.monotonic() < deadline:
                time.sleep(0.01)
        logger.info(
            "analysis server: documents from %s, agent at %s", self.proxy_out, self.reply_address
        )
        return self

    def stop(self) -> None:
        """Stop both threads, close every socket and the callbacks' workers."""
        if self._stop.is_set():
            return  # stopped already
        self._stop.set()
        if isinstance(self.dispatcher, RemoteDispatcher):  # cancel its polling task
            loop = self.dispatcher.loop
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        else:
            self.dispatcher.stop()
        for thread in self._threads:
            thread.join(30)
        self._threads = []
        if not self._reply.closed:
            self._reply.close()
        self._context.term()
        for analysis in self._analyses():
            analysis.stop_worker(timeout=30)

    def __enter__(self) -> AnalysisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _analyses(self) -> list:
        return [self.reconstruction, self.segmentation, self.tomography,
                *filter(None, [self.volume_segmentation])]  # fmt: skip

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every reconstruction and segmentation has finished its run."""
        return all(analysis.wait(timeout) for analysis in self._analyses())

    def tomography_uncertainty(self) -> tuple[np.ndarray, tuple[float, ...]] | None:
        """A rotation agent's map: the segmentation uncertainty of the live tomogram's
        central ``tomo_slab`` slices, averaged along z, 0 outside the cylinder every view
        sees (no view resolves it better). Recomputed only when the reconstruction holds
        more projections; ``None`` before the first one.

        Waits (at most ``tomo_sync`` s) until the reconstruction holds every projection
        the agent was told of: documents and requests travel on different sockets.
        """
        recon = self.tomography
        told = len(self.feed.measured_angles) if self.feed is not None else 0
        deadline = time.monotonic() + self.tomo_sync
        while (recon.fbp is None or recon.fbp.num_angles < told) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        fbp = recon.fbp
        if fbp is None or fbp.num_angles == 0:
            return None
        num_angles = fbp.num_angles
        if self._tomo_map is not None and self._tomo_map[0] == num_angles:
            return self._tomo_map[1]
        nz = fbp.shape[0]
        z0 = max(0, (nz - self.tomo_slab) // 2)
        slab = recon.snapshot(slices=list(range(z0, min(nz, z0 + self.tomo_slab))))
        inside = cylinder_mask(slab.shape)[0]
        coverage = inside.astype(np.float32)
        uncertainty = np.mean(
            [self.tomo_segmenter.segment(image, coverage=coverage).uncertainty for image in slab],
            axis=0,
        )
        umap = np.where(inside, uncertainty, 0.0).astype(np.float32)
        self._tomo_map = (num_angles, (umap, (0.0, 1.0, 0.0, 1.0)))
        return self._tomo_map[1]

    def _uncertainty_source(self, agent: ImagingAgent) -> Callable[[], Any]:
        """The map an agent over ``agent.space`` reads (see the class docstring)."""
        if agent.space.spatial_index:
            return self.segmentation.uncertainty_for_agent
        if self.tomo_segmenter is None:
            raise ValueError(
                "this analysis node has no tomography segmenter for an agent over theta "
                "alone: start it with --tomo-segmenter FILE (serve_analysis(tomo_segmenter=))"
            )
        self._tomo_map = None
        return self.tomography_uncertainty

    def _record(self, name: str, doc: dict) -> None:
        with self._arrived:
            self.received.append((name, doc))
            if name == "start":
                self._starts.append(doc.get("uid"))
            self._arrived.notify_all()

    def _wait_for_start(self, raw_uid: str, timeout: float) -> None:
        """Wait until the start document of ``raw_uid`` has come through the dispatcher."""

        with self._arrived:
            if not self._arrived.wait_for(lambda: raw_uid in self._starts, timeout):
                raise RuntimeError(
                    f"the start document of run {raw_uid} did not arrive from "
                    f"{self.proxy_out} within {timeout:g} s: is the RunEngine's publisher "
                    "subscribed, with this prefix, to the proxy this node listens to?"
                )

    def _dispatch(self) -> None:
        try:
            self.dispatcher.start()
        except asyncio.CancelledError:
            pass  # stop() cancelled the polling task
        except Exception:
            if not self._stop.is_set():
                raise
            # another dispatcher whose stop() closed its consumer under the poll

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._reply, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            try:
                request = json.loads(self._reply.recv())
                reply = {"ok": True, **self.handle(request)}
            except Exception as exc:  # noqa: BLE001 - every request gets an answer
                logger.exception("agent request failed")
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self._reply.send(json_serializer(reply))
        self._reply.close()

    # -- the agent's requests
    def handle(self, request: Mapping[str, Any]) -> dict:
        """Answer one request of a :class:`RemoteAgentFeed` (a JSON object with ``op``)."""
        if not isinstance(request, Mapping) or not isinstance(request.get("op"), str):
            raise ValueError(f"a request is a JSON object with an 'op' string, got {request!r}")
        op = request["op"]
        if op not in _OPERATIONS:
            raise ValueError(f"unknown request {op!r} (known: {', '.join(_OPERATIONS)})")
        if op == "ping":
            return {"documents": len(self.received), "idle": self.wait(0)}
        if op == "open":
            # the agent's decisions need the live maps of this very run
            wait = min(max(float(request.get("wait", 5.0)), 0.0), 60.0)
            self._wait_for_start(str(request["raw_uid"]), wait)
            agent = agent_from_spec(request["agent"])
            uncertainty = self._uncertainty_source(agent)
            if self.feed is not None and self.feed.analysis is not None:
                self.feed.close("a new scan opened before this one closed")
            self.feed = AgentFeed(
                agent,
                uncertainty,
                footprint_radius=request.get("footprint_radius"),
                sink=self.sink,
                # the plan waits for the map to hold every exposure before a decision
                # (tomography: tomography_uncertainty waits for the projections itself)
                map_frames=self.segmentation.frames_in_map if agent.space.spatial_index else None,
            )
            self.feed.open(str(request["raw_uid"]), request.get("parameters") or {})
            return {}
        feed = self.feed
        if feed is None:
            raise RuntimeError(f"{op!r} before 'open': no agent for this scan yet")
        if op == "measured":
            feed.measured(_point(request))
            return {}
        if op == "failed":
            feed.failed(_point(request), str(request.get("reason", "")))
            return {}
        if op == "remeasured":
            feed.remeasured(_point(request), str(request.get("reason", "")))
            return {}
        if op == "ask":
            batch_size = request.get("batch_size")
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
            return {"points": feed.ask(batch_size).tolist()}
        if op == "should_stop":
            stop, reason = feed.should_stop()
            return {"stop": bool(stop), "reason": str(reason)}
        if op == "map_is_current":
            return {"current": bool(feed.map_is_current())}
        if op == "map_wait_timed_out":
            feed.map_wait_timed_out(float(request.get("waited", 0.0)))
            return {}
        feed.close(str(request.get("reason", "")))
        return {"told": feed.told, "decisions": feed.decisions}  # close


def json_deserializer(data: bytes) -> dict:
    """A published document from JSON ``data`` (never unpickles; a non-object is refused)."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"a document is a JSON object, got {type(doc).__name__}")
    return doc


def _point(request: Mapping[str, Any]) -> np.ndarray:
    point = np.asarray(request.get("point"), dtype=float).ravel()
    if point.size < 1 or not np.all(np.isfinite(point)):
        raise ValueError(f"point must be finite coordinates, got {request.get('point')!r}")
    return point


def serve_analysis(
    proxy_out: str | Dispatcher,
    *,
    reply_host: str = LOOPBACK,
    reply_port: int = 0,
    segmenter=None,
    sink: Subscriber | None = None,
    **options: Any,
) -> AnalysisServer:
    """Build and start the analysis node (the segmenter defaults to the shipped U-Net).

    Returns the running :class:`AnalysisServer`; ``server.reply_address`` is what the
    beamline's :class:`RemoteAgentFeed` connects to. Stop it with ``server.stop()``.
    """
    if segmenter is None:
        from .experiment import default_segmenter

        segmenter = default_segmenter()
    server = AnalysisServer(
        proxy_out,
        segmenter=segmenter,
        reply_host=reply_host,
        reply_port=reply_port,
        sink=sink,
        **options,
    )
    return server.start()


# -- the beamline side: suggestions back ---------------------------------------------------
class RemoteAnalysisError(RuntimeError):
    """The analysis side answered with an error (its message is included)."""


class AnalysisUnavailableError(TimeoutError):
    """The analysis side did not answer in time (the message names address and timeout)."""


class RemoteAgentFeed:
    """An :class:`~synaps_agent.callbacks.agent_feed.AgentFeed` running on the analysis node.

    Same interface (``region``, ``open``, ``measured``, ``failed``, ``remeasured``,
    ``map_is_current``, ``map_wait_timed_out``, ``ask``, ``should_stop``, ``close``), so
    the adaptive plans
    (:func:`~synaps_agent.plans.adaptive.adaptive_ptycho_scan`, ``adaptive_tomo_scan``)
    use it unchanged. Each call is one JSON request on a REQ socket.

    Parameters
    ----------
    address : str
        The server's reply address (``AnalysisServer.reply_address``).
    agent : ImagingAgent or dict
        The agent to run there (its space, settings, stopping rule and seed are sent; see
        :func:`agent_spec`).
    footprint_radius : float, optional
        As in :class:`AgentFeed` (needed when the agent moves in x, y; not for an agent
        over theta alone).
    timeout : float
        Seconds to wait for each answer.
    fallback : (n, d) sequence, optional
        A planned pattern, one column per axis of the agent's space (``d``; e.g.
        ``raster_positions(...)`` for x, y, or angles as ``(n, 1)`` for theta). If the
        analysis side stops answering, the scan continues on
        the pattern's points not yet measured (within the plan's budget) and the stop
        reason says so; without it, :class:`AnalysisUnavailableError` ends the scan.
    """

    def __init__(
        self,
        address: str,
        agent: ImagingAgent | Mapping[str, Any],
        *,
        footprint_radius: float | None = None,
        timeout: float = 10.0,
        fallback: Sequence[Sequence[float]] | np.ndarray | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.address = address
        self.spec = agent_spec(agent) if isinstance(agent, ImagingAgent) else dict(agent)
        self.space = ScanSpace.from_dict(self.spec["space"])
        if self.space.spatial_index and not (footprint_radius or 0) > 0:
            raise ValueError(
                f"footprint_radius must be positive for a spatial scan, got {footprint_radius}"
            )
        self.footprint_radius = None if footprint_radius is None else float(footprint_radius)
        self.timeout = float(timeout)
        self.fallback: np.ndarray | None = (
            None if fallback is None else checked_pattern(fallback, self.space.ndim)
        )
        self.fell_back: str | None = None  # why the scan left the agent, once it did
        self.decisions = 0
        self._measured: list[np.ndarray] = []
        self._failed = 0
        self._budget: int | None = None
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None

    @property
    def region(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """``((xmin, xmax), (ymin, ymax))`` of the agent's space, if it is 2D."""
        index = self.space.spatial_index
        if len(index) < 2:
            return None
        x, y = (self.space.axes[i] for i in index[:2])
        return (float(x.low), float(x.high)), (float(y.low), float(y.high))

    # -- the wire
    def _request(self, op: str, **fields: Any) -> dict | None:
        """One request; None once fallen back. Raises if the answer is late (no fallback)."""
        if self.fell_back is not None:
            return None
        if self._context.closed:
            raise RuntimeError("this RemoteAgentFeed is closed: make a new one for each scan")
        if self._socket is None:
            self._socket = self._context.socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.address)
        self._socket.send(json_serializer({"op": op, **fields}))
        if not self._socket.poll(int(self.timeout * 1000)):
            self._socket.close()  # a REQ socket without its reply cannot be reused
            self._socket = None
            message = (
                f"the analysis side at {self.address} did not answer {op!r} within "
                f"{self.timeout:g} s"
            )
            if self.fallback is None:
                self.fell_back = message  # later calls (close) do not wait again
                raise AnalysisUnavailableError(message)
            self.fell_back = f"{message}; fell back to the planned pattern"
            logger.warning(self.fell_back)
            return None
        reply = json.loads(self._socket.recv())
        if not reply.get("ok"):
            raise RemoteAnalysisError(f"the analysis side at {self.address}: {reply.get('error')}")
        return reply

    def close_socket(self) -> None:
        """Close the socket and its context (the feed cannot be used afterwards)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if not self._context.closed:
            self._context.term()

    # -- the plan's calls
    def open(self, raw_uid: str, parameters: dict | None = None) -> None:
        """Build the agent on the analysis side and start its decisions' run."""
        parameters = dict(parameters or {})
        self._budget = parameters.get("max_exposures")
        self._request(
            "open",
            wait=self.timeout / 2,  # for the run's start document to reach the server
            raw_uid=raw_uid,
            parameters=parameters,
            agent=self.spec,
            footprint_radius=self.footprint_radius,
        )

    def measured(self, point) -> None:
        """Record that ``point`` was just measured."""
        point = np.asarray(point, dtype=float).ravel()
        self._measured.append(point)
        self._request("measured", point=point)

    def failed(self, point, reason: str) -> None:
        """A move or exposure at ``point`` failed: it is not proposed again."""
        self._failed += 1
        self._request("failed", point=np.asarray(point, dtype=float).ravel(), reason=reason)

    def remeasured(self, point, reason: str) -> None:
        """The exposure at ``point`` saw no beam and was taken again (recorded remotely)."""
        self._request("remeasured", point=np.asarray(point, dtype=float).ravel(), reason=reason)

    def ask(self, batch_size: int) -> np.ndarray:
        """The next points: the agent's, or the fallback pattern's once fallen back."""
        reply = self._request("ask", batch_size=int(batch_size))
        self.decisions += 1
        if reply is not None:
            return np.asarray(reply["points"], dtype=float).reshape(-1, self.space.ndim)
        return self._remaining_pattern()[:batch_size]

    def map_is_current(self) -> bool:
        """Whether the node's uncertainty map reflects every exposure it was told of (the
        plan waits for it before each decision, see ``wait_for_map``); true once fallen
        back (there is no map to wait for)."""
        reply = self._request("map_is_current")
        return True if reply is None else bool(reply["current"])

    def map_wait_timed_out(self, waited: float) -> None:
        """The plan gave up waiting for the map after ``waited`` s: recorded on the node
        (its decisions' run, stream ``stale_maps``)."""
        self._request("map_wait_timed_out", waited=float(waited))

    def should_stop(self) -> tuple[bool, str]:
        """The agent's stopping rule; after a fallback, the end of the pattern or budget."""
        reply = self._request("should_stop")
        if reply is not None:
            return bool(reply["stop"]), str(reply["reason"])
        if len(self._remaining_pattern()) == 0:
            return True, f"{self.fell_back}; the planned pattern is complete"
        if self._budget is not None and len(self._measured) + self._failed >= self._budget:
            return True, f"{self.fell_back}; exposure budget of the plan reached"
        return False, ""

    def close(self, reason: str) -> None:
        """Close the decisions' run on the analysis side (if it is still there) and the
        socket: one feed serves one scan."""
        try:
            self._request("close", reason=reason)
        finally:
            self.close_socket()

    def _remaining_pattern(self) -> np.ndarray:
        """The fallback pattern's points not measured yet (in the planned order)."""
        if self.fallback is None:
            return np.zeros((0, self.space.ndim))
        return unmeasured_points(self.fallback, self._measured)


# -- command line ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m synaps_agent.remote``: run the analysis node until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="synaps-analysis",
        description="Run reconstruction, segmentation and the agent for a remote RunEngine.",
    )
    parser.add_argument("--proxy", required=True, help="0MQ proxy output, e.g. tcp://host:5578")
    parser.add_argument("--reply-host", default=LOOPBACK, help="interface of the agent socket")
    parser.add_argument("--reply-port", type=int, default=5580, help="port of the agent socket")
    parser.add_argument("--catalog", default=None, help="embedded catalog folder for products")
    parser.add_argument(
        "--tomo-segmenter",
        default=None,
        metavar="FILE",
        help="a ForestSegmenter file (ForestSegmenter.save) for tomogram slices, so the node "
        "also runs the agent of adaptive_tomo_scan; it is unpickled: only files you made",
    )
    args = parser.parse_args(argv)
    tomo_segmenter = None
    if args.tomo_segmenter:
        from .segment.base import ProbabilisticSegmenter
        from .segment.forest import ForestSegmenter

        tomo_segmenter = ProbabilisticSegmenter(ForestSegmenter.load(args.tomo_segmenter))
    catalog = None
    sink = None
    if args.catalog:
        from .catalog import open_catalog

        catalog = open_catalog(args.catalog)
        sink = catalog.writer("processed")
    server = serve_analysis(
        args.proxy,
        reply_host=args.reply_host,
        reply_port=args.reply_port,
        sink=sink,
        tomo_segmenter=tomo_segmenter,
    )
    # Ctrl-C or SIGTERM (a service manager) stops it cleanly; set explicitly, as a
    # process started in the background of a shell inherits SIGINT ignored
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: stopping.set())
    print(f"analysis node: documents from {args.proxy}; agent at {server.reply_address}")
    sys.stdout.flush()
    try:
        while not stopping.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if catalog is not None:
            catalog.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
