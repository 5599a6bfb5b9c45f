"""Scans in a real RunEngine, stored in the embedded Tiled catalog and read back."""

from __future__ import annotations

import h5py
import numpy as np

from synaps_agent.plans.scans import raster_ptycho_scan


def frames_from_files(documents, data_key):
    """The frames as the detector wrote them, from the stream documents' files."""
    resources = {d["uid"]: d for d in documents.of("stream_resource") if d["data_key"] == data_key}
    frames = []
    for datum in documents.of("stream_datum"):
        resource = resources.get(datum["stream_resource"])
        if resource is None:
            continue
        path = resource["uri"].replace("file://localhost", "", 1)
        with h5py.File(path, "r") as f:
            dataset = f[resource["parameters"]["dataset"]]
            frames.append(dataset[datum["indices"]["start"] : datum["indices"]["stop"]])
    return np.concatenate(frames)


def test_raster_ptycho_scan_is_stored_and_read_back(RE, catalog, documents, ptycho_beamline):
    bl = ptycho_beamline
    det = bl.ptycho_det
    RE(
        raster_ptycho_scan(
            [det, bl.i0], bl.stage.x, bl.stage.y, -0.4, 0.4, -0.3, 0.3, 0.2, shutter=bl.shutter
        )
    )
    (start,) = documents.of("start")
    uid = start["uid"]
    events = documents.of("event")
    assert len(events) == 5 * 4 == start["num_points"]

    run = catalog.raw[uid]
    primary = run["primary"]
    frames = primary[det.image_key].read()
    assert frames.shape == (20, 32, 32)
    # frames bit-for-bit equal to what the detector wrote
    np.testing.assert_array_equal(np.asarray(frames), frames_from_files(documents, det.image_key))
    # positions as emitted, snake order
    xs = np.asarray(primary["stage_x"].read())
    ys = np.asarray(primary["stage_y"].read())
    np.testing.assert_allclose(xs, [e["data"]["stage_x"] for e in events])
    np.testing.assert_allclose(ys[:5], -0.3)
    np.testing.assert_allclose(xs[:5], [-0.4, -0.2, 0.0, 0.2, 0.4], atol=1e-12)
    np.testing.assert_allclose(xs[5:10], [0.4, 0.2, 0.0, -0.2, 0.4 - 0.8], atol=1e-12)
    # metadata enough to rebuild the geometry
    md = run.start
    geometry = md["geometry"]["ptycho_det"]
    assert md["modality"] == "ptychography"
    assert geometry["object_pixel_size_m"] == det.object_pixel_size.get()
    assert geometry["frame_shape"] == [32, 32]
    assert md["units"] == {"stage_x": "um", "stage_y": "um"}
    assert md["sample"]["name"] == "P-dense" and md["sample"]["seed"] == 1
    assert run.stop["exit_status"] == "success"
    # the shutter was opened for the scan: frames have photons; it is closed afterwards
    assert np.asarray(frames).sum(axis=(1, 2)).min() > 0.5 * det.photons_per_frame.get()
    assert not bl.shutter.is_open
