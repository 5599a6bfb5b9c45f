"""Tests of the U-Net segmenter (synaps_agent.segment.unet / .train)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synaps_agent.segment import scoring
from synaps_agent.segment.base import Segmenter
from synaps_agent.segment.train import _nll, calibrate_temperature, main, simulate_scan
from synaps_agent.segment.unet import (
    UNet,
    UNetSegmenter,
    load_default_segmenter,
    load_segmenter,
    prepare_input,
)

# Measured on this held-out reconstruction (P-dense seed 300, native-scale 96 x 96 crop,
# 1e6 photons/frame, full raster, 20 epochs) with the shipped weights:
# mean IoU 0.90 (per class 0.94 / 0.87 / 0.97 / 0.83), ECE 0.012, AUROC 0.96; the
# thresholds leave a margin for torch/BLAS differences.
MIN_MEAN_IOU = 0.82
MAX_ECE = 0.05


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def heldout():
    """A reconstruction by our engine of a test-seed phantom (a few seconds)."""
    (rec,) = simulate_scan(
        "P-dense",
        300,
        crop=96,
        epochs=(20,),
        fluence=1e6,
        partial="full",
        native_scale=True,
        fwhm_px=9.0,
        beta_probe=0.0,
    )
    return rec


@pytest.fixture(scope="module")
def segmenter():
    return load_default_segmenter("cpu")


@pytest.fixture(scope="module")
def result(segmenter, heldout):
    return segmenter.segment(heldout["image"], heldout["coverage"])


def _measured(rec) -> np.ndarray:
    cov = rec["coverage"]
    return cov >= 0.1 * cov.max()


def test_protocol_and_metadata(segmenter):
    assert isinstance(segmenter, Segmenter)
    meta = segmenter.metadata
    assert meta["temperature"] > 0 and segmenter.temperature == meta["temperature"]
    assert meta["calibration"]["nll_after"] <= meta["calibration"]["nll_before"]
    assert 50_000 < meta["training"]["num_parameters"] < 400_000


def test_heldout_quality(result, heldout):
    mask = _measured(heldout)
    truth = heldout["labels"].astype(np.int64)
    miou = scoring.mean_iou(result.labels.astype(np.int64), truth, 4, mask)
    ece = scoring.expected_calibration_error(result.probabilities, truth, mask=mask)
    assert miou >= MIN_MEAN_IOU, miou
    assert ece <= MAX_ECE, ece


def test_probabilities_and_uncertainty_ranges(result, heldout):
    p = result.probabilities
    assert p.shape == (4, *heldout["labels"].shape) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    assert p.min() >= 0
    assert result.labels.dtype == np.int8
    np.testing.assert_array_equal(result.labels, p.argmax(axis=0))
    u = result.uncertainty
    assert u.min() >= 0 and u.max() <= 1
    assert np.all(result.mutual_information >= 0)
    assert np.all(result.mutual_information <= result.entropy + 1e-5)
    assert result.mutual_information.max() > 0  # the MC samples differ


def test_uncertainty_flags_wrong_pixels(result, heldout):
    mask = _measured(heldout)
    wrong = (result.labels != heldout["labels"]) & mask
    right = (result.labels == heldout["labels"]) & mask
    assert wrong.any() and right.any()
    assert result.uncertainty[wrong].mean() > 2 * result.uncertainty[right].mean()
    auroc = scoring.uncertainty_auroc(
        result.uncertainty,
        result.labels.astype(np.int64),
        heldout["labels"].astype(np.int64),
        mask,
    )
    assert auroc > 0.8, auroc


def test_unmeasured_region_is_uncertain(segmenter, heldout):
    image = heldout["image"].copy()
    cov = heldout["coverage"].copy()
    image[:, :30] = 1.0  # never illuminated: the engine leaves free space there
    cov[:, :30] = 0.0
    res = segmenter.segment(image, cov)
    assert np.all(res.uncertainty[:, :30] == 1.0)
    measured = cov >= 0.1 * cov.max()
    assert res.uncertainty[:, :30].mean() > res.uncertainty[measured].mean() + 0.3


def test_any_size_and_deterministic(segmenter, heldout):
    img = heldout["image"][3:70, 5:58]  # 67 x 53: not a multiple of 8
    a = segmenter.segment(img)
    b = segmenter.segment(img)
    assert a.probabilities.shape == (4, 67, 53)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.ones((8, 8, 2), np.complex64), "2D image"),
        (np.ones((0, 8), np.complex64), "too small"),
        (np.full((16, 16), np.nan + 0j), "NaN or inf"),
    ],
)
def test_bad_input_raises(segmenter, image, match):
    with pytest.raises(ValueError, match=match):
        segmenter.segment(image)
    with pytest.raises(ValueError, match=match):
        prepare_input(image)


def test_bad_coverage_and_settings_raise(segmenter):
    with pytest.raises(ValueError, match="coverage shape"):
        segmenter.segment(np.ones((16, 16), np.complex64), np.ones((15, 16)))
    with pytest.raises(ValueError, match="temperature"):
        UNetSegmenter(UNet(), temperature=0.0)
    with pytest.raises(ValueError, match="mc_samples"):
        UNetSegmenter(UNet(), mc_samples=0)


def test_temperature_lowers_nll(segmenter, heldout):
    """The shipped T (fitted on seeds 200-219) lowers the NLL on a held-out scan too."""
    lg = segmenter.logits(heldout["image"], heldout["coverage"])[:, None]
    y = heldout["labels"].astype(np.int64)[None]
    mask = _measured(heldout)[None]
    t = segmenter.temperature
    assert _nll(lg, y, mask, t) < _nll(lg, y, mask, 1.0)
    cal = calibrate_temperature(lg, y, mask)
    assert cal["nll_after"] <= cal["nll_before"]


def test_smoke_training_end_to_end(tmp_path, heldout):
    out = tmp_path / "w" / "unet.pt"
    assert main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["smoke"] is True
    seg = load_segmenter(out)
    res = seg.segment(heldout["image"][:40, :40], heldout["coverage"][:40, :40])
    np.testing.assert_allclose(res.probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_fast_head_samples_equal_channel_dropout_of_the_head():
    """The head's MC samples with the dropout masks folded into the 1x1 weights are the
    head applied to channel-dropped features (the same masks drawn explicitly here)."""
    from torch.nn import functional as F  # noqa: N812

    from synaps_agent.segment.unet import _head_samples

    model = UNet(head_dropout=0.3).eval()
    feats = torch.randn(2, 16, 12, 10)
    k = 5
    torch.manual_seed(7)
    fast = _head_samples(model.head, feats, k)
    torch.manual_seed(7)
    keep1 = (torch.rand(k, 16) >= 0.3).float() / 0.7
    keep2 = (torch.rand(k, 32) >= 0.3).float() / 0.7
    _, conv1, _, _, conv2 = model.head
    ref = []
    for s in range(k):
        hidden = F.relu(conv1(feats * keep1[s][None, :, None, None]))
        ref.append(conv2(hidden * keep2[s][None, :, None, None]))
    ref = torch.cat(ref)  # (k * B, C, H, W), sample index outermost
    assert fast.shape == ref.shape == (k * 2, 4, 12, 10)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    # without dropout every sample is the deterministic head
    plain = UNet(head_dropout=0.0).eval()
    torch.testing.assert_close(
        _head_samples(plain.head, feats, 3), plain.head(feats).repeat(3, 1, 1, 1)
    )
