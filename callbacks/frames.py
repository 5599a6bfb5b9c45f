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

    def __init__(self) -> None:
        self._resources: dict[str, dict] = {}
        self._files: dict[str, object] = {}

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

    def stream_datum(self, doc: dict) -> tuple[str, range, np.ndarray]:
        import h5py

        resource = self._resources.get(doc["stream_resource"])
        if resource is None:
            raise KeyError(f"stream datum {doc['uid']} refers to an unknown stream resource")
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]
        path = path_from_uri(resource["uri"])
        dataset = resource["parameters"]["dataset"]
        # open per read: the writer may grow the file between reads (SWMR)
        with h5py.File(path, "r", swmr=True, libver="latest") as f:
            node = f[dataset]
            node.refresh() if hasattr(node, "refresh") else None
            if stop > node.shape[0]:
                raise IndexError(
                    f"{resource['data_key']}: frames {start}:{stop} not in {path} "
                    f"(it holds {node.shape[0]})"
                )
            frames = np.asarray(node[start:stop])
        seq = doc.get("seq_nums") or {"start": 0, "stop": 0}
        seq_nums = range(seq["start"], seq["stop"])
        return resource["data_key"], seq_nums, frames

    def clear(self) -> None:
        self._resources.clear()
