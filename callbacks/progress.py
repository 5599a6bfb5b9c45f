"""A progress bar over a scan's exposures, for long scripted runs (``synaps demo``)."""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["ScanProgress"]


class ScanProgress:
    """Document callback: one tqdm bar per run, advanced by each event of its ``primary``
    stream, its total the plan's ``num_points`` from the start document (unknown: an
    open-ended bar), closed at the stop document with the run's exit status.

    Parameters
    ----------
    file : text stream, optional
        Where the bar is drawn (default ``sys.stderr``).
    """

    def __init__(self, file: IO[str] | None = None) -> None:
        self.file = file
        self._bar: Any = None
        self._primary: set[str] = set()
        self.exposures = 0

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._close()
            total = doc.get("num_points")
            self._bar = tqdm(
                total=int(total) if isinstance(total, int) and total > 0 else None,
                desc=str(doc.get("plan_name", "scan")),
                unit="exp",
                file=self.file or sys.stderr,
                leave=True,
                dynamic_ncols=True,
            )
            self._primary.clear()
            self.exposures = 0
        elif name == "descriptor" and doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        elif name == "event" and doc.get("descriptor") in self._primary:
            self._advance(1)
        elif name == "event_page" and doc.get("descriptor") in self._primary:
            self._advance(len(doc.get("seq_num", [])))
        elif name == "stop":
            if self._bar is not None:
                self._bar.set_postfix_str(str(doc.get("exit_status", "")))
            self._close()

    def _advance(self, n: int) -> None:
        self.exposures += n
        if self._bar is not None:
            self._bar.update(n)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
