"""Frames referenced by StreamResource/StreamDatum documents, read back as arrays.

Area detectors write frames to files and announce them with ``stream_resource`` and
``stream_datum`` documents; a streaming analysis needs the frames themselves. The
:class:`StreamFrameReader` follows those documents and returns, for each ``stream_datum``,
the frames and the event sequence numbers they belong to. It reads HDF5 (SWMR, so the
file may still be growing) and is the same for live documents and for documents replayed
from Tiled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

__all__ = ["StreamFrameReader", "path_from_uri"]


def path_from_uri(uri: str) -> Path:
    """Local path of a ``file://`` URI (``file://localhost/abs`` or ``file:///abs``)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"cannot read frames from {uri!r}: only local file URIs are supported")
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"cannot read frames from {uri!r}: the file is on host {parsed.netloc!r}")
    return Path(parsed.path)


class StreamFrameReader:
    """Resolve ``stream_datum`` documents to frames.

    Call :meth:`stream_resource` with each StreamResource document and
    :meth:`stream_datum` with each StreamDatum; the latter returns
    ``(data_key, seq_nums, frames)`` with ``frames`` of shape ``(n, *frame_shape)``.
    """

    #: files kept open at once (the most recently read ones)
    max_open_files = 4

    def __init__(self) -> None:
        self._resources: dict[str, dict] = {}
        self._open: dict[str, Any] = {}  # resource uid -> (file, dataset), oldest first

    def stream_resource(self, doc: dict) -> None:
        if doc.get("mimetype") != "application/x-hdf5":
            raise ValueError(
                f"stream resource {doc.get('uid')}: mimetype {doc.get('mimetype')!r} is not "
                "supported (only application/x-hdf5)"
            )
        self._resources[doc["uid"]] = doc

    def data_key(self, resource_uid: str) -> str | None:
        resource = self._resources.get(resource_uid)
        return None if resource is None else resource["data_key"]

    def _dataset(self, resource: dict) -> Any:
        """The resource's dataset, opened once (SWMR) and refreshed: the writer may have
        grown it since the last read."""
        import h5py

        uid = resource["uid"]
        entry = self._open.pop(uid, None)
        if entry is None:
            path = path_from_uri(resource["uri"])
            handle = h5py.File(path, "r", swmr=True, libver="latest")
            entry = (handle, handle[resource["parameters"]["dataset"]])
        self._open[uid] = entry  # now the most recent
        while len(self._open) > self.max_open_files:
            oldest = next(iter(self._open))
            self._open.pop(oldest)[0].close()
        node = entry[1]
        node.refresh()
        return node

    def stream_datum(self, doc: dict) -> tuple[str, range, np.ndarray]:
        resource = self._resources.get(doc["stream_resource"])
        if resource is None:
            raise KeyError(f"stream datum {doc['uid']} refers to an unknown stream resource")
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]
        node = self._dataset(resource)
        if stop > node.shape[0]:
            raise IndexError(
                f"{resource['data_key']}: frames {start}:{stop} not in "
                f"{path_from_uri(resource['uri'])} (it holds {node.shape[0]})"
            )
        frames = np.asarray(node[start:stop])
        seq = doc.get("seq_nums") or {"start": 0, "stop": 0}
        seq_nums = range(seq["start"], seq["stop"])
        return resource["data_key"], seq_nums, frames

    def close(self) -> None:
        """Close the open files (a later read opens them again)."""
        while self._open:
            self._open.popitem()[1][0].close()

    def clear(self) -> None:
        """Forget every resource and close their files."""
        self.close()
        self._resources.clear()
