"""Analysis on another machine: documents over a real 0MQ proxy on loopback, the agent's
suggestions back over REQ/REP, and what happens when the analysis side dies mid-scan."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from synaps_agent.agent import AgentConfig, Axis, ImagingAgent, ScanSpace, StoppingRule
from synaps_agent.callbacks.segmentation import normalize_reconstruction
from synaps_agent.plans.adaptive import adaptive_ptycho_scan
from synaps_agent.plans.patterns import raster_positions
from synaps_agent.plans.scans import ptycho_scan
from synaps_agent.recon.ptycho import PtychoConfig
from synaps_agent.remote import (
    AnalysisServer,
    AnalysisUnavailableError,
    DocumentProxy,
    RemoteAgentFeed,
    RemoteAnalysisError,
    agent_from_spec,
    agent_spec,
    connect_publisher,
    json_deserializer,
    json_serializer,
)
from synaps_agent.segment.base import ProbabilisticSegmenter
from synaps_agent.segment.forest import ForestSegmenter
from synaps_agent.sim_devices.phantoms import make_phantom

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_segmenter():
    """A small forest trained on one other phantom (enough for uncertainty maps)."""
    rng = np.random.default_rng(5)
    phantom = make_phantom("P-dense", 21, size=96)
    t = phantom.transmission(8000.0)
    image = normalize_reconstruction(t + rng.normal(0, 0.01, t.shape))
    forest = ForestSegmenter(n_estimators=8, n_jobs=1).fit([image], [phantom.labels])
    return ProbabilisticSegmenter(forest)


@pytest.fixture
def proxy():
    with DocumentProxy() as running:
        yield running


@pytest.fixture
def publisher(RE, proxy):
    """The RunEngine's documents go to the proxy (JSON), as at the beamline."""
    pub = connect_publisher(proxy.in_address, proxy.out_address)
    RE.subscribe(pub)
    yield pub
    pub.close()


def _server(proxy, segmenter, sink=None) -> AnalysisServer:
    return AnalysisServer(
        proxy.out_address,
        segmenter=segmenter,
        sink=sink,
        ptycho_config=PtychoConfig(batch_size=16, seed=1),
        snapshot_interval=0.3,
        final_epochs=10,
        min_interval=0.1,
    )


@pytest.fixture
def server(proxy, small_segmenter):
    with _server(proxy, small_segmenter) as running:
        yield running


def _agent(bl, budget: int) -> ImagingAgent:
    space = ScanSpace(
        [
            Axis("x", -0.5, 0.5, "um", velocity=bl.stage.x.velocity.get(), settle_time=0.02),
            Axis("y", -0.5, 0.5, "um", velocity=bl.stage.y.velocity.get(), settle_time=0.02),
        ]
    )
    return ImagingAgent(
        space,
        AgentConfig(probe_fwhm=0.2, max_step=0.1, exposure_time=0.005),
        stopping=StoppingRule(max_exposures=budget),
        seed=7,
    )


def _wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_hosts(port: int) -> set[str]:
    """Local addresses listening on TCP ``port`` (from /proc/net/tcp)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            hosts.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return hosts


# -- the wire -------------------------------------------------------------------------------
def test_json_wire_refuses_what_is_not_a_document():
    doc = {"uid": "a", "data": {"x": np.float32(1.5), "img": np.arange(4).reshape(2, 2)}}
    assert json_deserializer(json_serializer(doc)) == {
        "uid": "a",
        "data": {"x": 1.5, "img": [[0, 1], [2, 3]]},
    }
    with pytest.raises(ValueError, match="JSON object"):
        json_deserializer(b"[1, 2]")
    with pytest.raises(ValueError):
        json_deserializer(b"\x80\x04K\x01.")  # a pickle is never unpickled


def test_agent_spec_round_trips(ptycho_beamline):
    agent = _agent(ptycho_beamline, 30)
    twin = agent_from_spec(json.loads(json.dumps(agent_spec(agent))))
    assert agent_spec(twin) == agent_spec(agent)
    with pytest.raises(ValueError, match="bad agent specification"):
        agent_from_spec({"space": agent.space.to_dict()})


def test_sockets_bind_loopback_only(proxy, server):
    for address in (proxy.in_address, proxy.out_address, server.reply_address):
        assert address.startswith("tcp://127.0.0.1:"), address
        assert _listening_hosts(int(address.rsplit(":", 1)[1])) == {"127.0.0.1"}


def test_bad_requests_get_clear_errors(server, ptycho_beamline):
    feed = RemoteAgentFeed(
        server.reply_address, _agent(ptycho_beamline, 30), footprint_radius=0.1, timeout=20
    )
    try:
        with pytest.raises(RemoteAnalysisError, match="'ask' before 'open'"):
            feed.ask(3)
        with pytest.raises(RemoteAnalysisError, match="unknown request 'explode'"):
            feed._request("explode")
        assert feed._request("ping")["ok"] is True  # the server is still serving
        # a run whose documents never reached this node (publisher not subscribed)
        feed.timeout = 4.0
        with pytest.raises(RemoteAnalysisError, match="start document of run nowhere did not"):
            feed.open("nowhere", {"max_exposures": 10})
    finally:
        feed.close_socket()
    with pytest.raises(ValueError, match=r"fallback must be an \(n, 2\) pattern"):
        RemoteAgentFeed("tcp://127.0.0.1:1", server_spec(), footprint_radius=0.1, fallback=[1, 2])
    with pytest.raises(ValueError, match="timeout must be positive"):
        RemoteAgentFeed("tcp://127.0.0.1:1", server_spec(), footprint_radius=0.1, timeout=0)


def server_spec() -> dict:
    space = ScanSpace([Axis("x", -1, 1, "um"), Axis("y", -1, 1, "um")])
    return agent_spec(ImagingAgent(space, AgentConfig(probe_fwhm=0.2, max_step=0.1)))


# -- documents out --------------------------------------------------------------------------
def test_documents_reach_the_remote_dispatcher_intact(
    RE, documents, server, publisher, ptycho_beamline
):
    bl = ptycho_beamline
    positions = raster_positions(-0.3, 0.3, -0.3, 0.3, 0.12)
    RE(ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, positions, shutter=bl.shutter))
    sent = documents.documents
    assert _wait_until(lambda: len(server.received) >= len(sent), 30)
    assert len(server.received) == len(sent)
    for (name, doc), (sent_name, sent_doc) in zip(server.received, sent, strict=True):
        assert name == sent_name
        schema_validators[DocumentNames(name)].validate(doc)
        assert doc == json.loads(json_serializer(sent_doc))  # same content, JSON on the wire
    assert {"stream_resource", "stream_datum"} <= {name for name, _ in server.received}
    # the analysis side read the frames from the files the documents name, and
    # reconstructed every exposure
    assert server.wait(120)
    assert server.reconstruction.errors == []
    assert server.reconstruction.snapshot().num_frames == len(positions)


# -- suggestions back -----------------------------------------------------------------------
@pytest.mark.slow
def test_adaptive_scan_driven_by_the_remote_agent(
    RE, catalog, proxy, small_segmenter, ptycho_beamline
):
    bl = ptycho_beamline
    budget = 36
    agent = _agent(bl, budget)
    seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)
    # the analysis node is up before the beamline publishes (0MQ drops messages sent
    # before a subscription is in place)
    with _server(proxy, small_segmenter, sink=catalog.writer("processed")) as server:
        pub = connect_publisher(proxy.in_address, proxy.out_address)
        RE.subscribe(pub)
        feed = RemoteAgentFeed(server.reply_address, agent, footprint_radius=0.1, timeout=60)
        try:
            (uid,) = RE(
                adaptive_ptycho_scan(
                    [bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds, batch_size=6,
                    max_exposures=200, shutter=bl.shutter,
                )
            )  # fmt: skip
        finally:
            feed.close_socket()
            pub.close()
        assert server.wait(120)
        remote_agent = server.feed.agent
    with pytest.raises(RuntimeError, match="RemoteAgentFeed is closed"):
        feed.ask(1)  # the plan closed it: one feed per scan
    run = catalog.raw[uid]
    assert "exposure budget" in run.stop["reason"]  # the remote agent's stopping rule
    xs = np.asarray(run["primary"]["stage_x"].read())
    ys = np.asarray(run["primary"]["stage_y"].read())
    measured = np.column_stack([xs, ys])
    assert len(seeds) < len(measured) < 200  # the agent stopped the scan, not the plan
    assert np.all(agent.space.contains(measured[len(seeds) :]))
    # the agent on the analysis side heard of every exposure and made every decision
    np.testing.assert_allclose(np.sort(remote_agent.gate.measured.points, axis=0),
                               np.sort(measured, axis=0))  # fmt: skip
    (decisions,) = [
        r
        for r in catalog.processed.values()
        if r.start.get("raw_uid") == uid and r.start["processor"]["name"] == "agent"
    ]
    np.testing.assert_allclose(np.asarray(decisions["decisions"]["point"].read()),
                               measured[len(seeds) :])  # fmt: skip
    assert decisions.stop["exit_status"] == "success"
    # the analysis side reconstructed the run from the published documents
    recon_runs = [
        r
        for r in catalog.processed.values()
        if r.start.get("raw_uid") == uid
        and r.start["processor"]["name"] == "ptycho_reconstruction"
    ]
    assert len(recon_runs) == 1


# -- the analysis side dies mid-scan --------------------------------------------------------
def _kill_after(events: int, kill):
    seen = []

    def callback(name, doc):
        if name == "event":
            seen.append(doc)
            if len(seen) == events:
                kill()

    return callback


@pytest.mark.slow
def test_killed_analysis_process_gives_a_clear_timeout_error(
    RE, documents, proxy, publisher, ptycho_beamline, tmp_path
):
    bl = ptycho_beamline
    port = _free_port()
    log = (tmp_path / "analysis-node.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "synaps_agent.remote", "--proxy", proxy.out_address,
         "--reply-port", str(port)],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        # the node prints its addresses once it serves
        ready, _, _ = select.select([process.stdout], [], [], 120)
        line = process.stdout.readline() if ready else ""
        assert f"agent at tcp://127.0.0.1:{port}" in line, Path(log.name).read_text()[-2000:]
        assert _listening_hosts(port) == {"127.0.0.1"}  # the node's default: loopback
        feed = RemoteAgentFeed(
            f"tcp://127.0.0.1:{port}", _agent(bl, 40), footprint_radius=0.1, timeout=5.0
        )
        RE.subscribe(_kill_after(4, lambda: os.kill(process.pid, signal.SIGKILL)))
        seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)
        with pytest.raises(AnalysisUnavailableError) as info:
            RE(adaptive_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds,
                                    shutter=bl.shutter))  # fmt: skip
        feed.close_socket()
    finally:
        process.kill()
        process.wait(30)
        process.stdout.close()
        log.close()
    message = str(info.value)
    assert f"tcp://127.0.0.1:{port}" in message and "within 5 s" in message
    # it answered until it was killed; the 4th exposure could not be told
    assert "'measured'" in message and len(documents.of("event")) == 4
    # the raw run is closed, failed, with the same clear reason
    (stop,) = documents.of("stop")
    assert stop["exit_status"] == "fail"
    assert f"tcp://127.0.0.1:{port}" in stop["reason"]


@pytest.mark.slow
def test_analysis_gone_mid_scan_falls_back_to_the_planned_pattern(
    RE, catalog, proxy, server, publisher, ptycho_beamline
):
    bl = ptycho_beamline
    seeds = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.4)  # 3 x 3
    planned = raster_positions(-0.4, 0.4, -0.4, 0.4, 0.2)  # 5 x 5, includes the seeds
    feed = RemoteAgentFeed(
        server.reply_address, _agent(bl, 40), footprint_radius=0.1, timeout=1.0, fallback=planned
    )
    RE.subscribe(_kill_after(4, server.stop))
    try:
        (uid,) = RE(
            adaptive_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds,
                                 batch_size=6, max_exposures=100, shutter=bl.shutter)
        )  # fmt: skip
    finally:
        feed.close_socket()
    run = catalog.raw[uid]
    # the run completed and says it left the agent, and why
    assert run.stop["exit_status"] == "success"
    reason = run.stop["reason"]
    assert server.reply_address in reason and "within 1 s" in reason
    assert "fell back to the planned pattern" in reason and "pattern is complete" in reason
    measured = np.column_stack(
        [np.asarray(run["primary"]["stage_x"].read()), np.asarray(run["primary"]["stage_y"].read())]
    )
    # every seed, then the planned points not yet measured, in the planned order
    rest = np.array([p for p in planned if np.min(np.hypot(*(seeds - p).T)) > 1e-6])
    np.testing.assert_allclose(measured, np.vstack([seeds, rest]))
