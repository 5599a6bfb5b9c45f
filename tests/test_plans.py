"""Every scan in a real RunEngine: documents valid, runs stored in Tiled and read back."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine

from synaps_agent.catalog import open_catalog
from synaps_agent.plans.patterns import (
    fermat_spiral_positions,
    golden_angles,
    raster_positions,
    uniform_angles,
)
from synaps_agent.plans.scans import (
    ptycho_scan,
    ptycho_tomo_scan,
    raster_ptycho_scan,
    spiral_ptycho_scan,
    tomo_scan,
)


# -- patterns ------------------------------------------------------------------------
def test_raster_positions_snake_and_extent():
    points = raster_positions(0, 1, 0, 0.5, 0.5)
    np.testing.assert_allclose(points, [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [0.5, 0.5], [0, 0.5]])
    assert len(raster_positions(0, 1, 0, 1, 0.25, snake=False)) == 25


def test_fermat_spiral_fills_the_disc_evenly():
    points = fermat_spiral_positions(1.0, -2.0, 3.0, 0.1)
    radii = np.hypot(points[:, 0] - 1.0, points[:, 1] + 2.0)
    assert radii.max() <= 3.0 + 1e-9
    # about uniform density: half the points inside radius 3/sqrt(2)
    inside = np.mean(radii <= 3.0 / np.sqrt(2))
    assert 0.47 < inside < 0.53
    # no two points closer than a fraction of the step (no pile-up)
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(points).query(points, k=2)
    assert distances[:, 1].min() > 0.05


def test_golden_angles_cover_any_prefix_evenly():
    angles = golden_angles(50)
    assert np.all((angles >= 0) & (angles < 180))
    for prefix in (5, 13, 50):
        gaps = np.diff(np.sort(np.r_[angles[:prefix], angles[0] + 180]))
        assert gaps.max() < 3.0 * 180 / prefix
    np.testing.assert_allclose(uniform_angles(4), [0, 45, 90, 135])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: raster_positions(0, 1, 0, 1, 0), "step must be positive"),
        (lambda: raster_positions(0, 1, 0, 1, float("nan")), "step must be a finite number"),
        (lambda: raster_positions(float("nan"), 1, 0, 1, 0.1), "x_start must be a finite"),
        (lambda: raster_positions(0, 1, 0, float("inf"), 0.1), "y_stop must be a finite"),
        (lambda: fermat_spiral_positions(0, 0, -1, 0.1), "radius must be positive"),
        (lambda: golden_angles(0), "number of angles must be a positive integer"),
    ],
)
def test_patterns_refuse_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- scans ---------------------------------------------------------------------------
def test_spiral_scan_documents_and_readback(RE, catalog, documents, ptycho_beamline):
    bl = ptycho_beamline
    RE(spiral_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, 0.1, -0.1, 0.5, 0.15))
    (start,) = documents.of("start")
    expected = fermat_spiral_positions(0.1, -0.1, 0.5, 0.15)
    run = catalog.raw[start["uid"]]
    np.testing.assert_allclose(run["primary"]["stage_x"].read(), expected[:, 0])
    np.testing.assert_allclose(run["primary"]["stage_y"].read(), expected[:, 1])
    assert run.start["scan_pattern"]["kind"] == "fermat_spiral"
    assert run["primary"][bl.ptycho_det.image_key].shape == (len(expected), 32, 32)
    # one stream resource, one stream datum per frame, all schema-valid (checked by fixture)
    assert len(documents.of("stream_resource")) == 1
    assert len(documents.of("stream_datum")) == len(expected)


def test_tomo_scan_with_darks_and_flats(RE, catalog, documents, tomo_beamline):
    bl = tomo_beamline
    RE(
        tomo_scan(
            [bl.proj_det, bl.i0],
            bl.stage.theta,
            num=7,
            scheme="golden",
            num_darks=3,
            num_flats=4,
            flat_motor=bl.stage.x,
            flat_position=bl.flat_field_x,
            shutter=bl.shutter,
        )
    )
    (start,) = documents.of("start")
    run = catalog.raw[start["uid"]]
    key = bl.proj_det.image_key
    assert set(run) >= {"primary", "dark", "flat"}
    dark = np.asarray(run["dark"][key].read()).astype(float)
    flat = np.asarray(run["flat"][key].read()).astype(float)
    projections = np.asarray(run["primary"][key].read()).astype(float)
    assert dark.shape == (3, 32, 32) and flat.shape == (4, 32, 32)
    assert projections.shape == (7, 32, 32)
    np.testing.assert_allclose(run["primary"]["stage_theta"].read(), golden_angles(7))
    # darks are dark, flats are bright and flat (sample out), projections absorb
    assert dark.mean() == pytest.approx(bl.proj_det.dark_level.get(), rel=0.05)
    assert flat.mean() == pytest.approx(2e3 * bl.proj_det.flat_profile.mean() + 100, rel=0.02)
    assert projections.mean() < 0.985 * flat.mean()  # ~4 % absorbed by the 16 um sample
    # the sample came back from its flat-field position, the shutter is closed again
    assert bl.stage.x.position == 0.0 and not bl.shutter.is_open
    assert run.start["geometry"]["proj_det"]["radiation"] == "xray"


def test_ptycho_tomo_scan_records_all_three_axes(RE, catalog, documents, tmp_path):
    from synaps_agent.sim_devices.beamline import make_sim_beamline
    from synaps_agent.sim_devices.phantoms import make_phantom

    volume = make_phantom("T-electrode", seed=3, size=48, pixel_size=20e-9)
    bl = make_sim_beamline(volume, catalog.frames_directory, frame_size=16, probe_fwhm_px=5)
    positions = [(-0.1, 0.0), (0.0, 0.0), (0.1, 0.0)]
    RE(
        ptycho_tomo_scan(
            [bl.ptycho_det],
            bl.stage.x,
            bl.stage.y,
            bl.stage.theta,
            positions,
            [0.0, 60.0],
            shutter=bl.shutter,
        )
    )
    (start,) = documents.of("start")
    run = catalog.raw[start["uid"]]
    primary = run["primary"]
    np.testing.assert_allclose(primary["stage_theta"].read(), [0, 0, 0, 60, 60, 60])
    np.testing.assert_allclose(primary["stage_x"].read(), [-0.1, 0, 0.1] * 2)
    frames = np.asarray(primary[bl.ptycho_det.image_key].read())
    # the projected object changes with the angle: same position, different pattern
    assert not np.array_equal(frames[1], frames[4])
    assert run.start["modality"] == "ptycho-tomography"


def test_stored_run_reads_through_databroker(RE, catalog, documents, ptycho_beamline):
    bl = ptycho_beamline
    RE(raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, -0.2, 0.2, 0, 0, 0.2))
    (start,) = documents.of("start")
    header = catalog.databroker()[start["uid"]]
    table = header.table()
    np.testing.assert_allclose(table["stage_x"].to_numpy(), [-0.2, 0.0, 0.2])
    assert header.start["modality"] == "ptychography"
    assert header.stop["exit_status"] == "success"
    # databroker did not change how this process reads runs
    assert "ptycho_det_image" in catalog.raw[start["uid"]]["primary"]


# -- bad input: clear errors before any motion ----------------------------------------
@pytest.mark.parametrize(
    ("make_plan", "message"),
    [
        (lambda bl: tomo_scan([bl.proj_det], bl.stage.theta, []), "angle list is empty"),
        (
            lambda bl: raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, 0, 1, 0, 1, 0),
            "step must be positive",
        ),
        (
            lambda bl: raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, 0, 50, 0, 1, 1),
            "stage_x: .* outside the soft limits",
        ),
        (
            lambda bl: ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, []),
            "non-empty list of \\(x, y\\) pairs",
        ),
        (
            lambda bl: tomo_scan([bl.proj_det], bl.stage.theta, [0, 500]),
            "stage_theta: .* outside the soft limits",
        ),
        (
            lambda bl: tomo_scan([bl.proj_det], bl.stage.theta, [0, 90], num_darks=2),
            "dark fields need a shutter",
        ),
        (lambda bl: ptycho_scan([], bl.stage.x, bl.stage.y, [(0, 0)]), "at least one detector"),
    ],
)
def test_bad_scans_fail_before_any_motion(RE, documents, ptycho_beamline, make_plan, message):
    bl = ptycho_beamline
    bl.stage.x.set(0.05).wait(1)
    before = bl.clock.elapsed
    with pytest.raises(ValueError, match=message):
        RE(make_plan(bl))
    assert documents.documents == []  # no run was opened
    assert bl.stage.x.position == 0.05 and bl.clock.elapsed == before  # nothing moved


def test_motor_limit_error_from_a_plain_move_aborts_cleanly(RE, ptycho_beamline):
    import bluesky.plan_stubs as bps
    from ophyd.utils.errors import LimitError

    bl = ptycho_beamline
    with pytest.raises(LimitError, match="outside the soft limits"):
        RE(bps.mv(bl.stage.y, 1e6))
    assert bl.stage.y.position == 0.0


# -- the other way to the catalog: a Tiled server by URL and API key -------------------
def test_catalog_by_url_and_api_key(tmp_path, ptycho_beamline):
    from tiled.server import SimpleTiledServer

    frames_dir = ptycho_beamline.ptycho_det.frames_directory
    from synaps_agent.catalog import _process_api_key

    # tiled keeps one single-user key per process (see _process_api_key): reuse it here so
    # the session's embedded catalog keeps working after this server
    server = SimpleTiledServer(
        directory=tmp_path / "remote", readable_storage=[frames_dir], api_key=_process_api_key()
    )
    try:
        url = server.uri.split("?")[0]
        with pytest.raises(Exception):  # noqa: B017 - no key, no access
            open_catalog(uri=url, api_key="wrong-key")
        catalog = open_catalog(uri=url, api_key=server.api_key)
        engine = RunEngine({}, call_returns_result=False)
        engine.subscribe(catalog.writer())
        bl = ptycho_beamline
        (uid,) = engine(
            raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, 0, 0.2, 0, 0, 0.1)
        )
        frames = catalog.raw[uid]["primary"][bl.ptycho_det.image_key].read()
        assert frames.shape == (3, 32, 32)
        catalog.close()  # leaves the remote server running
        assert uid in open_catalog(uri=url, api_key=server.api_key).raw
    finally:
        server.close()


# -- stubs ---------------------------------------------------------------------------
def _messages(plan, replies=None):
    """Drive ``plan`` without a RunEngine: each message's (command, object, kwargs
    without the group names); ``replies`` maps a command to what it is sent back."""
    replies = replies or {}
    out, reply = [], None
    try:
        while True:
            msg = plan.send(reply)
            kwargs = {k: v for k, v in msg.kwargs.items() if k != "group"}
            out.append((msg.command, msg.obj, msg.args, kwargs))
            reply = replies.get(msg.command)
    except StopIteration as stop:
        return out, stop.value


def test_expose_and_move_yield_what_bluesky_stubs_yield(ptycho_beamline):
    """``plans.stubs`` yields its messages itself (bluesky's stubs format the caller's
    stack on every call): the same messages, in the same order, as bluesky's own."""
    import bluesky.plan_stubs as bps

    from synaps_agent.plans.stubs import expose, move, move_and_expose

    bl = ptycho_beamline
    detectors, extra = [bl.ptycho_det], [bl.i0, bl.stage.x]
    reading = {"x": {"value": 1.0, "timestamp": 0.0}}
    ours, ours_value = _messages(expose(detectors, extra, stream="dark"), {"read": reading})
    theirs, theirs_value = _messages(
        bps.trigger_and_read([*detectors, *extra], name="dark"), {"read": reading}
    )
    assert ours == theirs
    assert ours_value == theirs_value == reading
    assert [m[0] for m in ours][-4:] == ["read", "read", "read", "save"]

    moves = {bl.stage.x: 0.5, bl.stage.y: -0.25}
    ours, _ = _messages(move(moves))
    theirs, _ = _messages(bps.mv(bl.stage.x, 0.5, bl.stage.y, -0.25))
    assert ours == theirs
    ours, _ = _messages(move_and_expose(detectors, moves))
    assert [m[0] for m in ours[:3]] == ["set", "set", "wait"]
    assert ours[3:] == _messages(bps.trigger_and_read([*detectors, *moves]))[0]


def test_expose_drops_the_event_when_a_read_fails(ptycho_beamline):
    from synaps_agent.plans.stubs import expose

    plan = expose([ptycho_beamline.ptycho_det])
    commands = []
    msg = plan.send(None)
    with pytest.raises(RuntimeError, match="read failed"):
        while True:
            commands.append(msg.command)
            msg = (
                plan.throw(RuntimeError("read failed"))
                if msg.command == "read"
                else plan.send(None)
            )
    assert commands[-1] == "drop"
    assert "save" not in commands


def test_expose_closed_during_a_read_ends_quietly(ptycho_beamline):
    """A plan closed mid-event (the RunEngine halting) gets GeneratorExit: ``expose``
    must not answer it with a ``drop`` message (a closed generator cannot yield)."""
    from synaps_agent.plans.stubs import expose

    plan = expose([ptycho_beamline.ptycho_det])
    msg = plan.send(None)
    while msg.command != "read":
        msg = plan.send(None)
    plan.close()  # raises RuntimeError if the generator yields on GeneratorExit
    with pytest.raises(StopIteration):
        plan.send(None)
