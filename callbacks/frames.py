"""Frames referenced by StreamResource/StreamDatum documents, read back as arrays.

Area detectors write frames to files and announce them with ``stream_resource`` and
``stream_datum`` documents; a streaming analysis needs the frames themselves. The
:class:`StreamFrameReader` follows those documents and returns, for each ``stream_datum``,
the frames and the event sequence numbers they belong to. It reads HDF5 (SWMR, so the
file may still be growing) and is the same for live documents and for documents replayed
from Tiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

__all__ = ["FrameRef", "StreamFrameReader", "path_from_uri"]


def path_from_uri(uri: str) -> Path:
    """Local path of a ``file://`` URI (``file://localhost/abs`` or ``file:///abs``)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"cannot read frames from {uri!r}: only local file URIs are supported")
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"cannot read frames from {uri!r}: the file is on host {parsed.netloc!r}")
    return Path(parsed.path)


@dataclass(frozen=True)
class FrameRef:
    """Where one frame lies: ``dataset[index]`` of the HDF5 file at ``path``."""

    data_key: str
    path: Path
    dataset: str
    index: int


class StreamFrameReader:
    """Resolve ``stream_datum`` documents to frames.

    :meth:`stream_resource` takes each StreamResource document; :meth:`locate` turns a
    StreamDatum into ``(seq_num, FrameRef)`` pairs without touching the files (cheap
    enough for the RunEngine's thread); :meth:`read` reads one frame (on a worker),
    keeping each file open between reads and refreshing it, since the detector may still
    be appending to it (SWMR).
    """

    def __init__(self) -> None:
        self._resources: dict[str, dict] = {}
        self._files: dict[Path, object] = {}

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

    def locate(self, doc: dict) -> list[tuple[int, FrameRef]]:
        """The frames of a StreamDatum, each with the event sequence number it belongs to."""
        resource = self._resources.get(doc["stream_resource"])
        if resource is None:
            raise KeyError(f"stream datum {doc['uid']} refers to an unknown stream resource")
        path = path_from_uri(resource["uri"])
        dataset = resource["parameters"]["dataset"]
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]
        seq = doc.get("seq_nums") or {"start": 0, "stop": 0}
        return [
            (seq_num, FrameRef(resource["data_key"], path, dataset, index))
            for seq_num, index in zip(
                range(seq["start"], seq["stop"]), range(start, stop), strict=False
            )
        ]

    def read(self, ref: FrameRef) -> np.ndarray:
        """Read one frame (raises ``IndexError`` if the file does not hold it)."""
        import h5py

        handle = self._files.get(ref.path)
        if handle is None:
            handle = self._files[ref.path] = h5py.File(ref.path, "r", swmr=True, libver="latest")
        node = handle[ref.dataset]
        if ref.index >= node.shape[0]:
            node.refresh()
        if ref.index >= node.shape[0]:
            raise IndexError(
                f"{ref.data_key}: frame {ref.index} not in {ref.path} (it holds {node.shape[0]})"
            )
        return np.asarray(node[ref.index])

    def close(self) -> None:
        """Close the files kept open by :meth:`read`."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def clear(self) -> None:
        self.close()
        self._resources.clear()
