"""The live figure, headless: PNGs of the reconstruction, segmentation and uncertainty
written during a real raster scan (real RunEngine, live reconstruction and segmentation),
and the final one once the analyses finish."""

from __future__ import annotations

import time

import numpy as np
import pytest
from matplotlib.image import imread

from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.callbacks.live_view import LiveView
from synaps_agent.callbacks.ptycho import PtychoReconstruction
from synaps_agent.callbacks.segmentation import LiveSegmentation, normalize_reconstruction
from synaps_agent.plans.scans import raster_ptycho_scan
from synaps_agent.recon.ptycho import PtychoConfig
from synaps_agent.segment.base import ProbabilisticSegmenter
from synaps_agent.segment.forest import ForestSegmenter
from synaps_agent.sim_devices.phantoms import make_phantom


@pytest.fixture(scope="module")
def segmenter() -> ProbabilisticSegmenter:
    """A small forest trained on a noisy transmission of another P-dense phantom."""
    rng = np.random.default_rng(0)
    phantom = make_phantom("P-dense", 11, size=96)
    t = phantom.transmission(8000.0)
    noisy = t + rng.normal(0, 0.01, t.shape) + 1j * rng.normal(0, 0.01, t.shape)
    forest = ForestSegmenter(n_estimators=10, n_jobs=1).fit(
        [normalize_reconstruction(noisy)], [phantom.labels], seed=0
    )
    return ProbabilisticSegmenter(forest)


def _phase_panel(png: np.ndarray) -> np.ndarray:
    """The left third of the figure (the reconstructed phase), as grey levels."""
    grey = png[..., :3].mean(axis=-1)
    return grey[:, : grey.shape[1] // 3]


@pytest.mark.slow
def test_live_view_writes_the_reconstruction_as_it_grows(
    RE, catalog, ptycho_beamline, segmenter, tmp_path, caplog
):
    bl = ptycho_beamline
    seg = LiveSegmentation(
        DocumentSink(catalog.writer("processed")),
        segmenter=segmenter,
        min_interval=0.2,
        preprocess=normalize_reconstruction,
        characterize=False,
    )
    recon = PtychoReconstruction(
        DocumentSink(catalog.writer("processed"), seg),
        config=PtychoConfig(batch_size=16, seed=1),
        snapshot_interval=0.5,
        final_epochs=40,
    )
    # show=True: the window too (drawn with pyplot; Agg here, so nothing appears)
    with caplog.at_level("WARNING", logger="synaps_agent.callbacks.live_view"):
        view = LiveView(recon, seg, directory=tmp_path, interval=0.0, keep_history=True,
                        show=True)  # fmt: skip
    assert "backend is 'agg'" in caplog.text and "no window will appear" in caplog.text
    RE.subscribe(recon)
    RE.subscribe(view)
    (uid,) = RE(
        raster_ptycho_scan(
            [bl.ptycho_det], bl.stage.x, bl.stage.y, -0.42, 0.42, -0.42, 0.42, 0.12,
            shutter=bl.shutter,
        )  # fmt: skip
    )
    assert view.wait(240), "the final figure was not written"
    assert view.errors == [] and recon.errors == [] and seg.errors == []
    assert view.final_path == tmp_path / f"live_{uid[:8]}_final.png"
    history = sorted(tmp_path.glob(f"live_{uid[:8]}_[0-9]*.png"))
    assert len(history) >= 1, "no figure was written during the scan"

    final = imread(view.final_path)
    panel = _phase_panel(final)
    assert panel.std() > 0.05, "the reconstruction panel is blank"
    first = imread(history[0])
    assert first.shape == final.shape
    assert np.abs(_phase_panel(first) - panel).mean() > 0.005, "the panel did not change"

    # what is drawn is the reconstruction, the segmentation and the measured points
    figure = view.render()
    phase_ax, labels_ax, uncertainty_ax = figure.axes[:3]
    snapshot = recon.snapshot()
    np.testing.assert_allclose(phase_ax.images[0].get_array(), np.angle(snapshot.object))
    np.testing.assert_array_equal(labels_ax.images[0].get_array(), seg.latest.result.labels)
    assert snapshot.num_frames == 64
    points = uncertainty_ax.collections[0].get_offsets()
    assert len(points) == 64
    np.testing.assert_allclose(points, snapshot.positions[:, ::-1])  # (col, row) on screen

    import matplotlib.pyplot as plt

    window = plt.figure("synaps live view")  # the window's figure, found by its label
    try:
        assert len(window.axes) >= 3 and window.axes[0].images, "the window was not drawn"
    finally:
        plt.close(window)


def test_a_failing_live_view_does_not_stop_the_scan(RE, catalog, ptycho_beamline, tmp_path):
    bl = ptycho_beamline

    class Broken:
        def snapshot(self):
            raise RuntimeError("no reconstruction here")

        def wait(self, timeout):
            return True

    view = LiveView(Broken(), directory=tmp_path, interval=0.0)
    RE.subscribe(view)
    (uid,) = RE(
        raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, -0.1, 0.1, 0, 0, 0.1)
    )
    assert view.wait(60)
    assert catalog.raw[uid].stop["exit_status"] == "success"
    assert any("no reconstruction here" in error for error in view.errors)
    assert view.final_path is None


def test_a_new_run_does_not_wait_for_the_previous_figure(RE, ptycho_beamline, tmp_path):
    bl = ptycho_beamline

    class NeverFinishes:
        """An analysis still busy with the previous run when the next one starts."""

        def snapshot(self):
            return None

        def wait(self, timeout):
            time.sleep(min(timeout, 0.05))
            return False

    view = LiveView(NeverFinishes(), directory=tmp_path, interval=0.0, final_timeout=60)
    RE.subscribe(view)
    plan = [bl.ptycho_det], bl.stage.x, bl.stage.y, -0.1, 0.1, 0, 0, 0.1
    (first,) = RE(raster_ptycho_scan(*plan))
    worker = view._thread
    (second,) = RE(raster_ptycho_scan(*plan))
    # the first run's figure was given up at once (not after final_timeout, which would
    # have recorded "did not finish in time"), and the view follows the second run
    assert not worker.is_alive()
    assert view.uid == second != first
    assert view.errors == [] and view.final_path is None


def test_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval"):
        LiveView(None, interval=-1)


# a session with the Qt window: QtAgg on Qt's offscreen platform (no display needed), in
# its own process so that this one keeps its matplotlib backend
QT_SESSION = r"""
import sys
import numpy as np
from PySide6 import QtWidgets

app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
from bluesky import RunEngine
from bluesky.callbacks.mpl_plotting import initialize_qt_teleporter

from synaps_agent.callbacks.live_view import LiveView
from synaps_agent.callbacks.ptycho import PtychoReconstruction
from synaps_agent.plans.scans import raster_ptycho_scan
from synaps_agent.recon.ptycho import PtychoConfig
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom

# chosen after importing synaps_agent: synaps_agent.figures forces Agg when imported
import matplotlib

matplotlib.use("QtAgg")
import matplotlib.pyplot as plt

plt.ion()  # as in an interactive IPython session
initialize_qt_teleporter()
bl = make_sim_beamline(make_phantom("P-dense", seed=1, size=96), sys.argv[1], seed=3,
                       photons_per_frame=1e5, frame_size=32, probe_fwhm_px=10)
recon = PtychoReconstruction(config=PtychoConfig(batch_size=16, seed=1),
                             snapshot_interval=0.2, final_epochs=5)
view = LiveView(recon, show=True, interval=0.0)
RE = RunEngine({}, call_returns_result=False)
RE.subscribe(recon)
RE.subscribe(view)
RE(raster_ptycho_scan([bl.ptycho_det], bl.stage.x, bl.stage.y, -0.3, 0.3, -0.3, 0.3, 0.15,
                      shutter=bl.shutter))
assert recon.wait(120) and view.wait(120)
window = view._window
for _ in range(100):  # let Qt run the draws the scan asked for
    plt.pause(0.05)
    if window._figure is not None and window._figure.axes:
        break
figure = window._figure
print("CANVAS", type(figure.canvas).__name__, window.backend)
print("VISIBLE", figure.canvas.manager.window.isVisible())
print("AXES", len(figure.axes), len(figure.axes[0].images))
title = figure.get_suptitle()
window.draw(view)  # one more update, with the final reconstruction
plt.pause(0.2)
image = figure.canvas.grab().toImage()  # what Qt painted in the window
pixels = np.array([image.pixelColor(x, y).lightness() for x in range(0, image.width(), 7)
                   for y in range(0, image.height(), 7)])
print("PAINTED", image.width(), image.height(), float(pixels.std()))
print("TITLES", title, "|", figure.get_suptitle())
plt.close(figure)
plt.pause(0.1)
print("CLOSED", not plt.fignum_exists(figure.number), len(QtWidgets.QApplication.topLevelWidgets()))
print("ERRORS", len(view.errors) + len(recon.errors))
"""


@pytest.mark.slow
def test_live_window_on_qt(tmp_path):
    """The interactive window with a real Qt binding (QtAgg, offscreen platform): created
    from Qt's thread while a scan runs, updated, painted, closed, without an error."""
    import os
    import subprocess
    import sys

    pytest.importorskip("PySide6.QtWidgets")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", QT_SESSION, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["CANVAS"] == "FigureCanvasQTAgg qtagg"
    assert lines["VISIBLE"] == "True"
    axes, images = map(int, lines["AXES"].split())
    assert axes >= 3 and images == 1  # phase, segmentation, uncertainty panels
    width, height, spread = lines["PAINTED"].split()
    assert int(width) > 500 and int(height) > 100 and float(spread) > 5  # not blank
    before, after = lines["TITLES"].split(" | ")
    assert "exposures" in before and "25 exposures" in after
    closed, windows = lines["CLOSED"].split()
    assert closed == "True"
    assert lines["ERRORS"] == "0"
