"""Bad input gets a clear error; nothing untrusted is unpickled; servers listen on loopback."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import bluesky.plans as bp
import httpx
import numpy as np
import pytest
from tiled.client import from_uri

from synaps_agent.agent import AgentConfig, Axis, ImagingAgent, ScanSpace
from synaps_agent.plans.scans import ptycho_scan, raster_ptycho_scan
from synaps_agent.reliability import BufferedWriter, WriteAheadLog
from synaps_agent.replay import replay_run

UNPICKLED = []


def _mark_unpickled():
    UNPICKLED.append(True)
    return "payload"


class Payload:
    """Unpickling this calls :func:`_mark_unpickled`: proof that pickle ran."""

    def __reduce__(self):
        return (_mark_unpickled, ())


def saved_agent(tmp_path: Path) -> tuple[Path, Path]:
    space = ScanSpace([Axis("x", -1.0, 1.0, "um"), Axis("y", -1.0, 1.0, "um")])
    agent = ImagingAgent(space, AgentConfig(probe_fwhm=0.2, max_step=0.3), seed=0)
    agent.tell(np.array([0.1, 0.2]), {"gain": 0.5})
    return agent.save(tmp_path / "agent")


def rewrite_arrays(jpath: Path, npath: Path, payload: bytes) -> None:
    """Replace the arrays file and make the checksum agree (a deliberate forgery)."""
    npath.write_bytes(payload)
    meta = json.loads(jpath.read_text())
    meta["arrays_sha256"] = hashlib.sha256(payload).hexdigest()
    jpath.write_text(json.dumps(meta))


def test_damaged_or_forged_agent_state_is_refused_without_unpickling(tmp_path):
    jpath, npath = saved_agent(tmp_path)
    good_json = jpath.read_text()
    assert ImagingAgent.load(tmp_path / "agent").surrogate.n == 1
    # a save cut short
    jpath.write_text(good_json[: len(good_json) // 2])
    with pytest.raises(ValueError, match="cannot read agent state"):
        ImagingAgent.load(tmp_path / "agent")
    jpath.write_text(good_json)
    # garbage arrays whose checksum was "fixed"
    rewrite_arrays(jpath, npath, b"PK\x03\x04 not a zip at all")
    with pytest.raises(ValueError, match="corrupted agent state"):
        ImagingAgent.load(tmp_path / "agent")
    # arrays that would run code if unpickled
    buffer = io.BytesIO()
    np.savez(buffer, **{"s.X": np.array([Payload()], dtype=object)})
    rewrite_arrays(jpath, npath, buffer.getvalue())
    with pytest.raises(ValueError, match="corrupted agent state|allow_pickle=False"):
        ImagingAgent.load(tmp_path / "agent")
    assert UNPICKLED == []


def test_replay_refuses_runs_without_usable_metadata(RE, catalog, documents, ptycho_beamline):
    # claims to be ptychography but carries no geometry (a foreign or damaged run)
    RE(bp.count([ptycho_beamline.i0], num=1, md={"modality": "ptychography"}))
    uid = documents.of("start")[-1]["uid"]
    with pytest.raises(ValueError, match=f"run {uid} cannot be replayed.*detector geometry"):
        replay_run(catalog, uid, log=lambda *a: None)
    assert not [r for r in catalog.processed.values() if r.start.get("raw_uid") == uid]


def test_plan_arguments_out_of_range_fail_before_any_motion(ptycho_beamline):
    bl = ptycho_beamline
    det, x, y = bl.ptycho_det, bl.stage.x, bl.stage.y
    x.set(0.0).wait(1)
    cases = [
        (
            lambda: raster_ptycho_scan([det], x, y, -0.4, 0.4, -0.3, 0.3, 0.0),
            "step must be positive",
        ),
        (
            lambda: raster_ptycho_scan([det], x, y, -50, 50, -0.3, 0.3, 1.0),
            "stage_x: .* outside the soft limits",
        ),
        (
            lambda: ptycho_scan([det], x, y, [[0.0, float("inf")]]),
            "stage_y: scan positions must be finite",
        ),
        (lambda: ptycho_scan([det], x, y, [1.0, 2.0]), "positions must be a non-empty list"),
        (lambda: ptycho_scan([], x, y, [[0.0, 0.0]]), "at least one detector"),
    ]
    for make_plan, message in cases:
        with pytest.raises(ValueError, match=message):
            next(make_plan())
    assert x.position == 0.0


def test_buffered_writer_rejects_documents_of_no_known_run(tmp_path):
    seen = []
    writer = BufferedWriter(lambda: lambda name, doc: seen.append(name), wal_directory=tmp_path)
    writer("event", {"descriptor": "never-described", "seq_num": 1})  # out of order
    writer("start", {"uid": "r1", "time": 0})
    writer("stop", {"run_start": "r1", "uid": "s1"})
    assert writer.close(timeout=10)
    assert seen == ["start", "stop"]
    ((name, _, reason),) = writer.rejected
    assert name == "event" and "refers to no run" in reason


def test_write_ahead_log_reads_json_only_and_names_garbled_lines(tmp_path):
    wal = WriteAheadLog(tmp_path)
    wal.append("r1", "start", {"uid": "r1", "values": np.arange(3)})
    wal.append("r1", "descriptor", {"uid": "d1", "run_start": "r1"})
    with open(wal.path("r1"), "a") as f:
        f.write('{"name": "event", "doc": {"seq')  # the line a crash cut short
    assert [name for name, _ in wal.read("r1")] == ["start", "descriptor"]
    assert wal.read("r1")[0][1]["values"] == [0, 1, 2]
    lines = wal.path("r1").read_text().splitlines()
    wal.path("r1").write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match="line 2 is not a logged document"):
        wal.read("r1")


def test_embedded_tiled_refuses_writes_without_the_api_key(catalog):
    uri = catalog.uri
    anonymous = uri.split("?")[0]
    assert "api_key=" in uri and "api_key" not in anonymous
    with pytest.raises(Exception) as info:
        client = from_uri(anonymous)
        client.create_container("intruder")
    assert "intruder" not in catalog.client
    response = httpx.post(
        anonymous.replace("/api/v1", "/api/v1/metadata/"),
        json={"data": {"type": "container"}},
        headers={"Authorization": "Apikey wrong-key"},
    )
    assert response.status_code in (401, 403), info.value


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on ``port``."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                addresses.add(address)
    return addresses


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1


def test_embedded_tiled_listens_on_loopback_only(catalog):
    port = httpx.URL(catalog.uri).port
    addresses = listening_addresses(port)
    assert addresses and addresses <= LOOPBACK, addresses


def test_buffered_writer_validates_documents_against_their_schema(RE, documents, tomo_beamline):
    seen = []
    writer = BufferedWriter(lambda: lambda name, doc: seen.append(name), validate=True)
    RE.subscribe(writer)
    RE(bp.count([tomo_beamline.i0], num=2))
    assert writer.flush(timeout=30)
    assert seen == [name for name, _ in documents.documents]  # real documents pass
    (start,) = documents.of("start")
    writer("start", {"uid": "r2"})  # no time
    writer("stop", {**documents.of("stop")[0], "exit_status": "exploded"})
    writer("event", {**documents.of("event")[0], "seq_num": "one"})
    writer("no_such_document", {})
    assert writer.close(timeout=10)
    reasons = [reason for _, _, reason in writer.rejected]
    assert "invalid start document (document): 'time' is a required property" in reasons[0]
    assert "invalid stop document (exit_status)" in reasons[1]
    assert "invalid event document (seq_num)" in reasons[2]
    assert "'no_such_document' is not an event-model document name" in reasons[3]
    assert len(seen) == len(documents.documents) and start["uid"] != "r2"
