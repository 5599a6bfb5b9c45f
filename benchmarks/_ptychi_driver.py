"""Run one pty-chi reconstruction from an ``.npz`` problem; used by ``recon_ptychi``.

Run by the interpreter of pty-chi's own environment (``python _ptychi_driver.py IN OUT``),
so it imports only numpy at module level, torch and ptychi inside :func:`run_ptychi`, and
never ``synaps_agent``. The problem file (written by :func:`write_problem`) holds the
diffraction frames (photon counts, zero frequency at index ``n // 2``), the probe
positions ``(row, col)`` in object pixels of the caller's frame (a window centred at
``p`` covers the object pixels ``round(p) - n // 2 ... round(p) - n // 2 + n - 1``), the
initial probe (centred at ``n // 2``), the object shape and the settings (algorithm,
epochs, batch size, torch threads, seed). The result file holds the object (its index
``(0, 0)`` is the caller's pixel ``origin``), the probe and the time of the epochs.

torchvision: pty-chi imports ``torchvision.transforms.GaussianBlur`` at module level but
calls it only in ``utils.generate_gaussian_random_image`` (a random initial object, not
used here: the initial object is given). The torchvision wheels available for torch 2.13
are CUDA builds whose C extension cannot load next to the CPU torch, so when torchvision
cannot be imported, :func:`_allow_missing_torchvision` registers a module whose
``GaussianBlur`` raises when it is constructed: if pty-chi ever used it, the run fails.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

#: Settings stored with the problem, with their types.
SETTINGS = {
    "algorithm": str,
    "epochs": int,
    "batch_size": int,
    "torch_threads": int,
    "seed": int,
    "margin": int,
}
ALGORITHMS = ("lsqml", "rpie", "epie")


def write_problem(
    path: str | Path,
    frames: np.ndarray,
    positions: np.ndarray,
    probe: np.ndarray,
    object_shape: tuple[int, int],
    **settings: Any,
) -> Path:
    """Write a reconstruction problem to ``path`` (``.npz``) and return the path.

    Parameters
    ----------
    path : path
        File to write.
    frames : ndarray, shape (n, ny, nx)
        Photon counts, zero frequency at index ``(ny // 2, nx // 2)``.
    positions : ndarray, shape (n, 2)
        Probe centres ``(row, col)``, object pixels of the caller's frame.
    probe : ndarray of complex, shape (ny, nx)
        Initial probe, centred at ``(ny // 2, nx // 2)``.
    object_shape : (int, int)
        Shape of the object the positions cover (its index ``(0, 0)`` is caller pixel 0).
    **settings
        Exactly the keys of :data:`SETTINGS` (algorithm, epochs, batch_size,
        torch_threads, seed, margin).

    Raises
    ------
    ValueError
        For inconsistent shapes, non-finite values or missing / unknown settings.
    """
    frames = np.asarray(frames)
    positions = np.asarray(positions, dtype=np.float64)
    probe = np.asarray(probe)
    if frames.ndim != 3:
        raise ValueError(f"frames must have shape (n, ny, nx), got {frames.shape}")
    if positions.shape != (len(frames), 2):
        raise ValueError(f"positions must have shape ({len(frames)}, 2), got {positions.shape}")
    if probe.shape != frames.shape[1:]:
        raise ValueError(f"probe must have the frame shape {frames.shape[1:]}, got {probe.shape}")
    if not (np.all(np.isfinite(frames)) and np.all(np.isfinite(positions))):
        raise ValueError("frames and positions must be finite")
    if len(object_shape) != 2 or min(object_shape) <= 0:
        raise ValueError(f"object_shape must be two positive sizes, got {object_shape!r}")
    missing = set(SETTINGS) - set(settings)
    unknown = set(settings) - set(SETTINGS)
    if missing or unknown:
        raise ValueError(f"settings: missing {sorted(missing)}, unknown {sorted(unknown)}")
    clean = {key: kind(settings[key]) for key, kind in SETTINGS.items()}
    if clean["algorithm"] not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {clean['algorithm']!r}")
    path = Path(path)
    np.savez(
        path,
        frames=frames,
        positions=positions,
        probe=probe.astype(np.complex64),
        object_shape=np.asarray(object_shape, dtype=np.int64),
        settings=np.array(json.dumps(clean)),
    )
    return path


def read_problem(path: str | Path) -> dict[str, Any]:
    """Read a problem written by :func:`write_problem` (arrays and settings in one dict)."""
    with np.load(Path(path)) as data:
        problem = {
            "frames": data["frames"],
            "positions": data["positions"],
            "probe": data["probe"],
            "object_shape": tuple(int(v) for v in data["object_shape"]),
        }
        problem.update(json.loads(str(data["settings"])))
    return problem


def _allow_missing_torchvision() -> bool:
    """Register a ``torchvision`` without ``GaussianBlur`` if the real one cannot load.

    Returns whether the replacement was registered.
    """
    try:
        importlib.import_module("torchvision.transforms")
        return False
    except (ImportError, RuntimeError, OSError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    class GaussianBlur:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("torchvision is not available in this environment")

    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = GaussianBlur  # type: ignore[attr-defined]
    package.transforms = transforms  # type: ignore[attr-defined]
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms
    return True


def _options(problem: dict[str, Any], api: Any) -> Any:
    """pty-chi task options (no data): far field, CPU, float32, fixed positions."""
    algorithm = problem["algorithm"]
    if algorithm == "lsqml":
        options = api.LSQMLOptions()
    elif algorithm == "rpie":
        options = api.RPIEOptions()
    else:
        options = api.EPIEOptions()
    options.data_options.fft_shift = True  # zero frequency at n // 2
    options.data_options.free_space_propagation_distance_m = np.inf
    margin = int(problem["margin"])
    options.object_options.pixel_size_m = 1e-8
    # positions + origin = buffer index; pty-chi rounds the origin and subtracts 0.5,
    # then a window of n pixels centred at index i starts at i - (n - 1) / 2: with the
    # origin ``margin`` a window centred at caller pixel p starts at buffer index
    # p + margin - n / 2, i.e. at caller pixel p - n / 2 (as in PtychoEngine).
    options.object_options.determine_position_origin_coords_by = (
        api.ObjectPosOriginCoordsMethods.SPECIFIED
    )
    options.object_options.position_origin_coords = np.array([margin, margin], dtype=np.float64)
    options.object_options.optimizable = True
    options.probe_options.optimizable = True
    options.probe_position_options.optimizable = False
    options.opr_mode_weight_options.optimizable = False
    rec = options.reconstructor_options
    rec.num_epochs = int(problem["epochs"])
    rec.batch_size = int(problem["batch_size"])
    rec.default_device = api.Devices.CPU
    rec.default_dtype = api.Dtypes.FLOAT32
    rec.random_seed = int(problem["seed"])
    rec.displayed_loss_function = None
    return options


def run_ptychi(problem: dict[str, Any]) -> dict[str, Any]:
    """Reconstruct ``problem`` with pty-chi; object, origin, probe and epoch timing."""
    import torch

    torch.set_num_threads(int(problem["torch_threads"]))
    replaced = _allow_missing_torchvision()
    api = importlib.import_module("ptychi.api")
    task_module = importlib.import_module("ptychi.api.task")
    options = _options(problem, api)
    t0 = time.perf_counter()
    ny, nx = problem["object_shape"]
    margin = int(problem["margin"])
    task = task_module.PtychographyTask(
        options,
        diffraction_data=problem["frames"].astype(np.float32),
        object_data=np.ones((1, ny + 2 * margin, nx + 2 * margin), dtype=np.complex64),
        probe_data=problem["probe"][None, None].astype(np.complex64),
        probe_position_y_px=problem["positions"][:, 0].astype(np.float32),
        probe_position_x_px=problem["positions"][:, 1].astype(np.float32),
    )
    setup_seconds = time.perf_counter() - t0
    epoch_seconds = []
    for _ in range(int(problem["epochs"])):
        t0 = time.perf_counter()
        task.run(1)
        epoch_seconds.append(time.perf_counter() - t0)
    obj = task.get_data_to_cpu("object", as_numpy=True)
    probe = task.get_data_to_cpu("probe", as_numpy=True)
    return {
        "object": np.asarray(obj)[0].astype(np.complex64),
        "origin": np.array([-margin, -margin], dtype=np.int64),
        "probe": np.asarray(probe)[0, 0].astype(np.complex64),
        "epoch_seconds": np.asarray(epoch_seconds),
        "setup_seconds": setup_seconds,
        "torch_threads": torch.get_num_threads(),
        "ptychi_version": importlib.metadata.version("ptychi"),
        "torch_version": torch.__version__,
        "torchvision_replaced": replaced,
    }


def check() -> dict[str, Any]:
    """Import torch and pty-chi as :func:`run_ptychi` does; their versions."""
    import torch

    replaced = _allow_missing_torchvision()
    importlib.import_module("ptychi.api.task")
    return {
        "ptychi_version": importlib.metadata.version("ptychi"),
        "torch_version": torch.__version__,
        "torchvision_replaced": replaced,
    }


def main(argv: list[str] | None = None) -> int:
    """``_ptychi_driver.py PROBLEM.npz RESULT.npz`` (reconstruct, save) or ``--check``.

    ``--check`` prints the versions as JSON (exit status 0 when pty-chi imports).
    """
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        print(json.dumps(check()))
        return 0
    if len(args) != 2:
        print("usage: _ptychi_driver.py PROBLEM.npz RESULT.npz | --check", file=sys.stderr)
        return 2
    result = run_ptychi(read_problem(args[0]))
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
    np.savez(args[1], **arrays, meta=np.array(json.dumps(meta)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
