"""Frames written to HDF5 and announced by StreamResource/StreamDatum documents.

This is what an area detector's file plugin does: the detector appends each frame to
a dataset in an HDF5 file (SWMR, so readers can follow while the scan runs) and the
RunEngine, through ``collect_asset_docs``, emits one ``stream_resource`` per file and
one ``stream_datum`` per frame.  Tiled's writer turns those into a lazily read array.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from event_model import compose_stream_resource

__all__ = ["HDF5FrameWriter"]

DATASET = "/entry/data/data"


class HDF5FrameWriter:
    """Append frames of one data key to an HDF5 file and compose the asset documents.

    Parameters
    ----------
    directory : path
        Folder for the files (must be readable by the Tiled server).
    data_key : str
        The data key the frames belong to (e.g. ``"ptycho_det_image"``).
    frame_shape : tuple of int
        Shape of one frame.
    dtype : numpy dtype
        Frame dtype.
    """

    def __init__(
        self,
        directory: str | Path,
        data_key: str,
        frame_shape: tuple[int, ...],
        dtype: np.dtype | type = np.uint32,
    ) -> None:
        self.directory = Path(directory)
        self.data_key = data_key
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.dtype = np.dtype(dtype)
        self.path: Path | None = None
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._pending: list[tuple[str, dict]] = []
        self._compose_datum = None
        self._emitted = 0
        self._written = 0

    @property
    def is_open(self) -> bool:
        return self._file is not None

    @property
    def frames_written(self) -> int:
        return self._written

    def open(self) -> Path:
        """Start a new file; queue its ``stream_resource`` document. Returns the file path."""
        if self._file is not None:
            self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = (self.directory / f"{self.data_key}_{uuid.uuid4().hex[:12]}.h5").resolve()
        self._file = h5py.File(self.path, "w", libver="latest")
        self._dataset = self._file.create_dataset(
            DATASET,
            shape=(0, *self.frame_shape),
            maxshape=(None, *self.frame_shape),
            chunks=(1, *self.frame_shape),
            dtype=self.dtype,
        )
        self._file.swmr_mode = True
        bundle = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=self.path.as_uri().replace("file:///", "file://localhost/", 1),
            data_key=self.data_key,
            parameters={"dataset": DATASET, "chunk_shape": (1, *self.frame_shape)},
        )
        self._compose_datum = bundle.compose_stream_datum
        self._pending = [("stream_resource", bundle.stream_resource_doc)]
        self._emitted = 0
        self._written = 0
        return self.path

    def append(self, frame: np.ndarray) -> int:
        """Write one frame; return its index in the file."""
        if self._dataset is None:
            raise RuntimeError(f"{self.data_key}: frame file is not open (is the detector staged?)")
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise ValueError(
                f"{self.data_key}: frame shape {frame.shape} != expected {self.frame_shape}"
            )
        index = self._written
        self._dataset.resize(index + 1, axis=0)
        self._dataset[index] = frame.astype(self.dtype, copy=False)
        self._dataset.flush()
        self._written += 1
        return index

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        """Yield the queued ``stream_resource`` and a ``stream_datum`` for each new frame."""
        pending, self._pending = self._pending, []
        yield from pending
        if self._compose_datum is None:
            return
        for index in range(self._emitted, self._written):
            yield "stream_datum", self._compose_datum(indices={"start": index, "stop": index + 1})
        self._emitted = self._written

    def close(self) -> None:
        """Close the file (frames already written stay readable)."""
        if self._file is not None:
            self._file.close()
        self._file = None
        self._dataset = None
