"""StreamFrameReader: frames of a growing HDF5 file, read as the documents arrive."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.callbacks.frames import StreamFrameReader
from synaps_agent.sim_devices.frame_files import HDF5FrameWriter


def _writer(tmp_path, name: str) -> HDF5FrameWriter:
    writer = HDF5FrameWriter(tmp_path, name, (4, 5))
    writer.open()
    return writer


def _frame(value: int) -> np.ndarray:
    return np.full((4, 5), value, np.uint32)


def test_reader_follows_a_growing_file_and_closes_what_it_opened(tmp_path):
    reader = StreamFrameReader()
    writers = [_writer(tmp_path, f"det{i}") for i in range(StreamFrameReader.max_open_files + 2)]
    seen = {}
    for step in range(3):  # each file grows between reads (the writer keeps it open)
        for i, writer in enumerate(writers):
            writer.append(_frame(10 * i + step))
            for name, doc in writer.collect_asset_docs():
                if name == "stream_resource":
                    reader.stream_resource(doc)
                else:
                    key, _, frames = reader.stream_datum(doc)
                    seen.setdefault(key, []).extend(int(f[0, 0]) for f in frames)
            assert len(reader._open) <= StreamFrameReader.max_open_files
    assert seen == {f"det{i}": [10 * i, 10 * i + 1, 10 * i + 2] for i in range(len(writers))}
    handles = [entry[0] for entry in reader._open.values()]
    reader.clear()
    assert handles and not any(handle.id.valid for handle in handles)
    writers[0].append(_frame(99))
    datum = [doc for name, doc in writers[0].collect_asset_docs() if name == "stream_datum"]
    with pytest.raises(KeyError, match="unknown stream resource"):
        reader.stream_datum(datum[0])  # the resources went with clear()
    for writer in writers:
        writer.close()


def test_reader_names_a_datum_beyond_the_file(tmp_path):
    writer = _writer(tmp_path, "det")
    writer.append(_frame(1))
    reader = StreamFrameReader()
    docs = list(writer.collect_asset_docs())
    reader.stream_resource(docs[0][1])
    datum = dict(docs[1][1], indices={"start": 0, "stop": 3})
    with pytest.raises(IndexError, match="frames 0:3 not in .* holds 1"):
        reader.stream_datum(datum)
    writer.close()
    reader.close()
