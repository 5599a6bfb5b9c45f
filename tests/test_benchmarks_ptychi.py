"""The pty-chi side-by-side benchmark without pty-chi: clean skip, problem file round trip.

pty-chi lives in its own environment and is never needed here: the benchmark must skip
with a message naming why, and the problem file the driver reads must hold exactly
what the benchmark wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import recon_ptychi  # noqa: E402
from benchmarks._ptychi_driver import read_problem, write_problem  # noqa: E402

SETTINGS = {
    "algorithm": "lsqml",
    "epochs": 3,
    "batch_size": 16,
    "torch_threads": 1,
    "seed": 7,
    "margin": 4,
}


def _problem(rng: np.random.Generator) -> dict:
    frames = rng.poisson(50.0, size=(5, 8, 8)).astype(np.uint32)
    positions = rng.uniform(4.0, 20.0, size=(5, 2))
    probe = (rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))).astype(np.complex64)
    return {"frames": frames, "positions": positions, "probe": probe}


def test_skips_without_interpreter(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("PTYCHI_PYTHON", raising=False)
    result = recon_ptychi.main(["--smoke", "--quiet", "--out", str(tmp_path)])
    assert result["skipped"] is True
    assert "--ptychi-python" in result["reason"]
    assert "recon_ptychi skipped" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing recorded for a skipped run


def test_skips_with_missing_interpreter(capsys, tmp_path):
    missing = tmp_path / "no-such-venv" / "bin" / "python"
    result = recon_ptychi.main(["--smoke", "--quiet", "--ptychi-python", str(missing)])
    assert result["skipped"] is True
    assert str(missing) in result["reason"] and "not an executable" in result["reason"]
    assert str(missing) in capsys.readouterr().out


def test_skips_when_interpreter_lacks_ptychi(monkeypatch):
    # this interpreter runs the driver's check but has no pty-chi: skipped, reason named
    monkeypatch.setenv("PTYCHI_PYTHON", sys.executable)
    python, reason = recon_ptychi.ptychi_interpreter(None)
    assert python is None
    assert "cannot be imported" in reason and "ptychi" in reason


def test_skip_from_command_line_exits_zero(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.recon_ptychi", "--smoke", "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout


def test_problem_round_trip(tmp_path):
    data = _problem(np.random.default_rng(0))
    path = write_problem(
        tmp_path / "problem.npz",
        data["frames"],
        data["positions"],
        data["probe"],
        (24, 30),
        **SETTINGS,
    )
    back = read_problem(path)
    np.testing.assert_array_equal(back["frames"], data["frames"])
    np.testing.assert_array_equal(back["positions"], data["positions"])
    np.testing.assert_array_equal(back["probe"], data["probe"])
    assert back["object_shape"] == (24, 30)
    assert {key: back[key] for key in SETTINGS} == SETTINGS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"positions": np.zeros((4, 2))}, "positions must have shape"),
        ({"probe": np.ones((6, 6), complex)}, "probe must have the frame shape"),
        ({"settings": {**SETTINGS, "algorithm": "dm"}}, "algorithm must be one of"),
        ({"settings": {k: v for k, v in SETTINGS.items() if k != "epochs"}}, "missing"),
        ({"object_shape": (0, 10)}, "object_shape"),
    ],
)
def test_problem_writer_rejects_bad_input(tmp_path, change, message):
    data = {**_problem(np.random.default_rng(1)), "object_shape": (24, 30), "settings": SETTINGS}
    data.update(change)
    with pytest.raises(ValueError, match=message):
        write_problem(
            tmp_path / "bad.npz",
            data["frames"],
            data["positions"],
            data["probe"],
            data["object_shape"],
            **data["settings"],
        )
