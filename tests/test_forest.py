"""Random-forest baseline segmenter on reconstruction-like images of the phantoms."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from scipy import ndimage as ndi

from synaps_agent.segment.forest import ForestSegmenter
from synaps_agent.segment.scoring import expected_calibration_error, mean_iou, per_class_iou
from synaps_agent.sim_devices.phantoms import make_phantom

SIZE = 128
#: Measured mean IoU on P-dense seed 21 (size 128): ~0.60; threshold with margin.
MIN_MEAN_IOU = 0.50


def reconstruction_like(phantom, seed: int, noise: float = 0.05, blur: float = 0.7):
    """Transmission with a slight blur and complex Gaussian noise (recon stand-in)."""
    t = phantom.transmission(8000.0).astype(np.complex128)
    t = ndi.gaussian_filter(t.real, blur) + 1j * ndi.gaussian_filter(t.imag, blur)
    rng = np.random.default_rng(seed)
    t += noise * (rng.standard_normal(t.shape) + 1j * rng.standard_normal(t.shape)) / np.sqrt(2)
    return t.astype(np.complex64)


@pytest.fixture(scope="module")
def trained():
    phantoms = [make_phantom("P-dense", seed, size=SIZE) for seed in range(3)]
    images = [reconstruction_like(p, 100 + i) for i, p in enumerate(phantoms)]
    segmenter = ForestSegmenter().fit(
        images, [p.labels for p in phantoms], max_pixels_per_image=8000, seed=0
    )
    test = make_phantom("P-dense", 21, size=SIZE)
    return segmenter, reconstruction_like(test, 7), test.labels


def test_forest_segments_unseen_phantom(trained):
    segmenter, image, truth = trained
    proba = segmenter.predict_proba(image)
    assert proba.shape == (4, SIZE, SIZE) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    pred = segmenter.predict(image)
    assert pred.shape == truth.shape and pred.dtype == np.int8
    np.testing.assert_array_equal(pred, proba.argmax(axis=0))
    iou = per_class_iou(pred, truth)
    assert mean_iou(pred, truth) > MIN_MEAN_IOU, iou
    assert iou[2] > 0.75 and iou[0] > 0.6, iou  # active material and pore
    assert expected_calibration_error(proba, truth) < 0.15


def test_save_load_round_trip(trained, tmp_path):
    segmenter, image, _ = trained
    path = tmp_path / "forest.joblib"
    segmenter.save(path)
    loaded = ForestSegmenter.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(image), segmenter.predict_proba(image))
    joblib.dump({"something": "else"}, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="not a ForestSegmenter file"):
        ForestSegmenter.load(tmp_path / "other.joblib")


def test_bad_inputs(trained):
    segmenter, image, truth = trained
    bad = image.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segmenter.predict(bad)
    with pytest.raises(ValueError, match="2D or 3D"):
        segmenter.predict(image[0])
    with pytest.raises(ValueError, match="empty"):
        segmenter.predict(np.zeros((0, 5), np.complex64))
    with pytest.raises(ValueError, match="numeric"):
        segmenter.predict(np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="complex"):
        segmenter.predict(np.abs(image))
    fresh = ForestSegmenter()
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.predict(image)
    with pytest.raises(ValueError, match="does not match"):
        fresh.fit([image], [truth[:10]])
    with pytest.raises(ValueError, match="outside"):
        fresh.fit([image], [truth.astype(np.int16) + 4])
    with pytest.raises(ValueError, match="images but"):
        fresh.fit([image, image], [truth])
    with pytest.raises(ValueError, match="no training"):
        fresh.fit([], [])
    with pytest.raises(ValueError, match="lists"):
        fresh.fit(image, truth)
    with pytest.raises(ValueError, match="all complex or all real"):
        fresh.fit([image, np.abs(image)], [truth, truth])
