"""Replay: a stored run through the same callbacks, and clear errors for what is not ours."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest

from synaps_agent.cli import main
from synaps_agent.plans.scans import tomo_scan
from synaps_agent.replay import replay_run


def test_replay_of_a_stored_tomography_run(RE, catalog, documents, tomo_beamline):
    bl = tomo_beamline
    RE(
        tomo_scan(
            [bl.proj_det],
            bl.stage.theta,
            num=24,
            num_flats=2,
            flat_motor=bl.stage.x,
            flat_position=bl.flat_field_x,
            shutter=bl.shutter,
        )
    )
    uid = documents.of("start")[-1]["uid"]
    result = replay_run(catalog, uid, log=lambda *a: None)
    assert result["modality"] == "tomography" and result["errors"] == []
    (analysis_uid,) = result["analysis_uids"]
    stored = catalog.processed[analysis_uid]
    assert stored.start["raw_uid"] == uid
    assert stored.start["processor"]["name"] == "tomo_reconstruction"
    volume = np.asarray(stored["tomogram_volume"]["volume"].read())[-1]
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all() and volume.max() > 0


def test_replay_refuses_runs_that_are_not_ours(RE, catalog, documents, tomo_beamline):
    RE(bp.count([tomo_beamline.i0], num=2))
    uid = documents.of("start")[-1]["uid"]
    with pytest.raises(ValueError, match="not a SYNAPS imaging run"):
        replay_run(catalog, uid)
    with pytest.raises(KeyError, match="no raw run"):
        replay_run(catalog, "not-a-uid")


def test_replay_command_reports_an_unknown_uid(tmp_path, capsys):
    assert main(["replay", "no-such-run", "--catalog", str(tmp_path / "cat")]) == 2
    assert "no raw run 'no-such-run'" in capsys.readouterr().err
