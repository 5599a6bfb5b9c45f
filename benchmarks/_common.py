"""Shared helpers of the benchmarks (see ``../shared/BENCHMARKS.md`` for the protocol).

Every benchmark is a module of this package with a ``main(argv) -> dict`` function, run as
``python -m benchmarks.NAME [--smoke] [--out DIR]`` from the repository root. It prints a
rich table and writes ``DIR/NAME.json`` (default ``benchmarks/results/``) holding the
figures, the machine, the git commit, the named seeds and the parameters.

``--smoke`` selects tiny sizes (seconds, for CI); the figures it produces are not
meaningful and must go to another folder (``--out``) than the recorded results.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BENCHMARKS_DIR",
    "RESULTS_DIR",
    "Timer",
    "base_parser",
    "git_commit",
    "jsonable",
    "machine_info",
    "print_table",
    "progress",
    "results_dir",
    "torch_threads",
    "write_result",
]

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"


# ------------------------------------------------------------------------------ machine
def machine_info() -> dict[str, Any]:
    """Cores, torch version and threads, device, python, platform, CPU model."""
    import torch

    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    return {
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "cpu_model": cpu_model,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_available": bool(torch.cuda.is_available()),
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def git_commit(repo: Path = REPO_DIR) -> dict[str, Any]:
    """``git rev-parse HEAD`` of the repository and whether the tree has local changes.

    Never raises: without git (or outside a repository) the commit is ``None``.
    """
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# ------------------------------------------------------------------------------ results
def jsonable(value: Any) -> Any:
    """Convert numpy / torch scalars and arrays, paths, tuples into JSON types.

    Non-finite floats become ``None`` (JSON has no NaN).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, complex):
        return {"real": jsonable(value.real), "imag": jsonable(value.imag)}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def results_dir(out: str | Path | None = None) -> Path:
    """The folder results go to (created): ``out`` or ``benchmarks/results``."""
    path = Path(out) if out is not None else RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_result(
    name: str,
    figures: dict[str, Any],
    seeds: dict[str, int],
    params: dict[str, Any],
    *,
    out: str | Path | None = None,
    command: str | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``OUT/NAME.json`` with the figures, machine, git commit, seeds and parameters.

    Parameters
    ----------
    name : str
        Benchmark name (file stem).
    figures : dict
        The measured figures (rates, errors, ratios, curves).
    seeds : dict
        Every seed used, by name.
    params : dict
        Sizes and settings of the run (including ``smoke``).
    out : path, optional
        Results folder (default ``benchmarks/results``).
    command : str, optional
        The command line that produced the run (default: ``sys.argv``).
    notes : sequence of str
        Free-form remarks stored with the figures.

    Returns
    -------
    Path
        The JSON file written.
    """
    path = results_dir(out) / f"{name}.json"
    record = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(["python", *sys.argv]),
        "machine": machine_info(),
        "git": git_commit(),
        "seeds": seeds,
        "params": params,
        "figures": figures,
        "notes": list(notes),
    }
    path.write_text(json.dumps(jsonable(record), indent=2) + "\n")
    return path


# ------------------------------------------------------------------------------ output
def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.3f}".rstrip("0").rstrip(".")
    return str(value)


def print_table(title: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
    """Print a table with rich (floats get 3 significant digits)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console = Console()
    if not console.is_terminal:  # log files: do not squeeze the columns to 80 characters
        console = Console(width=160)
    console.print(table)


def progress(iterable: Any, desc: str, total: int | None = None, *, disable: bool = False) -> Any:
    """A tqdm progress bar on stderr (quiet when ``disable``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, file=sys.stderr)


class Timer:
    """Accumulating wall-clock timer: ``with timer: ...`` adds to ``timer.seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0
        self._t0 = 0.0

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.count += 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous number."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def base_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: ``--smoke``, ``--out``, ``--quiet``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (CI); figures are not meaningful"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results folder (default {RESULTS_DIR.relative_to(REPO_DIR)})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser
