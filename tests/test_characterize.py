"""Particle characterization on synthetic shapes, the benchmark phantoms and a 3D volume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synaps_agent.segment.characterize import (
    crop_to_measured,
    particle_footprint,
    particle_instances,
    particle_table,
    sample_summary,
)
from synaps_agent.sim_devices.phantoms import make_phantom

PIXEL = 20e-9
MIN_SIZE = 20


def _paint_ball(labels, center, radius, value=2):
    grid = np.indices(labels.shape)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True))
    labels[dist2 <= radius**2] = value
    return dist2 <= radius**2


def _row_at(table, instances, point):
    return table[table["label"] == instances[point]].iloc[0]


def test_isolated_disks_sizes_and_centroids():
    labels = np.zeros((128, 128), np.int8)
    disks = {(30, 30): 6.0, (30, 80): 10.0, (85, 60): 15.5}
    for c, r in disks.items():
        _paint_ball(labels, c, r)
    inst = particle_instances(labels)
    assert inst.max() == 3
    table = particle_table(labels, inst, PIXEL)
    assert list(table.columns[:4]) == ["label", "phase", "area_px", "area_m2"]
    for c, r in disks.items():
        row = _row_at(table, inst, c)
        assert row["equivalent_diameter_px"] == pytest.approx(2 * r, rel=0.03)
        assert row["equivalent_diameter_m"] == pytest.approx(2 * r * PIXEL, rel=0.03)
        assert row["area_m2"] == pytest.approx(row["area_px"] * PIXEL**2)
        np.testing.assert_allclose(row["centroid_px"], c, atol=0.2)
        assert row["phase"] == 2 and not row["cracked"] and row["secondary_fraction"] == 0.0
        assert not row["touches_border"]


def test_touching_disks_are_two_particles():
    labels = np.zeros((80, 120), np.int8)
    labels[:] = 1  # carbon-binder everywhere else, must not matter
    _paint_ball(labels, (40, 30), 10)
    _paint_ball(labels, (40, 50), 10)  # touches the first (centre distance = r1 + r2)
    _paint_ball(labels, (40, 80), 12)
    _paint_ball(labels, (40, 105), 13)  # touches the third
    inst = particle_instances(labels)
    assert inst.max() == 4
    table = particle_table(labels, inst, PIXEL)
    for c, r in {(40, 30): 10, (40, 50): 10, (40, 80): 12, (40, 105): 13}.items():
        assert _row_at(table, inst, c)["equivalent_diameter_px"] == pytest.approx(2 * r, rel=0.05)
    # Without the watershed the touching pairs merge.
    assert particle_instances(labels, separate_touching=False).max() == 2


@pytest.mark.parametrize("width", [1, 2])
def test_cracked_disk_is_one_particle_and_flagged(width):
    labels = np.zeros((64, 64), np.int8)
    _paint_ball(labels, (32, 32), 14)
    _paint_ball(labels, (10, 10), 5)  # small uncracked neighbour
    yy, xx = np.indices(labels.shape)
    crack = (np.abs((yy - 32) - 0.4 * (xx - 32)) < 0.5 * width + 0.1) & (
        (yy - 32) ** 2 + (xx - 32) ** 2 <= 14**2
    )
    labels[crack] = 0
    assert crack.sum() > 20
    inst = particle_instances(labels)
    assert inst.max() == 2
    table = particle_table(labels, inst, PIXEL)
    row = _row_at(table, inst, (32, 32))
    assert row["cracked"]
    assert row["equivalent_diameter_px"] == pytest.approx(28, rel=0.03)  # crack filled
    assert row["pore_px"] >= 0.8 * crack.sum()
    assert not _row_at(table, inst, (10, 10))["cracked"]


def test_secondary_fraction_and_majority_phase():
    labels = np.zeros((64, 64), np.int8)
    disk = _paint_ball(labels, (32, 32), 15)
    blob = _paint_ball(np.zeros_like(labels), (36, 30), 6) & disk
    labels[blob] = 3
    full = _paint_ball(labels, (8, 8), 5, value=3)  # all secondary
    inst = particle_instances(labels)
    table = particle_table(labels, inst, PIXEL)
    row = _row_at(table, inst, (32, 32))
    assert row["secondary_fraction"] == pytest.approx(blob.sum() / disk.sum())
    assert row["phase"] == 2
    row = _row_at(table, inst, (8, 8))
    assert row["phase"] == 3 and row["secondary_fraction"] == 1.0
    assert row["area_px"] == full.sum()


def test_min_size_and_border():
    labels = np.zeros((40, 40), np.int8)
    labels[5:8, 5:8] = 2  # 9 px: dropped
    _paint_ball(labels, (20, 0), 8)  # cut by the left edge
    inst = particle_instances(labels, min_size=MIN_SIZE)
    assert inst.max() == 1
    table = particle_table(labels, inst, PIXEL)
    assert bool(table["touches_border"].iloc[0])
    assert particle_instances(labels, min_size=5).max() == 2
    assert particle_instances(np.zeros((10, 10), np.int8)).max() == 0


def test_footprint_fills_cracks_but_not_binder_gaps():
    labels = np.ones((30, 30), np.int8)
    labels[5:25, 5:12] = 2
    labels[5:25, 14:25] = 2  # 2-px binder gap between two blocks
    labels[10, 14:25] = 0  # 1-px crack in the second block
    fp = particle_footprint(labels)
    assert fp[10, 14:24].all()  # (the last pixel, open to the binder, may stay a notch)
    assert not fp[5:25, 12:14].any()


def _truth_stats(phantom):
    sizes = np.bincount(phantom.instances.ravel())[1:]
    present = sizes[sizes > MIN_SIZE]
    return present.size, float(np.median(2 * np.sqrt(present / math.pi)))


@pytest.mark.parametrize(("case", "seed"), [("P-sparse", 11), ("P-dense", 12)])
def test_phantom_count_and_median_diameter(case, seed):
    phantom = make_phantom(case, seed=seed)
    n_true, d_true = _truth_stats(phantom)
    assert n_true >= 0.95 * len(phantom.particles)
    inst = particle_instances(phantom.labels, min_size=MIN_SIZE)
    summary = sample_summary(phantom.labels, inst, phantom.pixel_size)
    assert abs(summary["count"] - n_true) <= 0.05 * n_true
    assert summary["median_diameter_m"] == pytest.approx(d_true * phantom.pixel_size, rel=0.10)
    # Crack flags agree with the ground truth for most particles.
    table = summary["table"]
    truth_cracked = np.array([False] + [p.cracked for p in phantom.particles])
    agree = []
    for _, row in table.iterrows():
        ids = phantom.instances[inst == row["label"]]
        ids = ids[ids > 0]
        if ids.size:
            agree.append(truth_cracked[np.bincount(ids).argmax()] == row["cracked"])
    assert np.mean(agree) > 0.9
    # Phase fractions and porosity are those of the label map.
    fractions = phantom.area_fractions()
    for name, value in fractions.items():
        assert summary["phase_fractions"][name] == pytest.approx(value)
    assert summary["porosity"] == pytest.approx(fractions["pore"])
    assert sum(summary["diameter_histogram"]["counts"]) == summary["count"]


def test_sample_summary_contents():
    labels = np.zeros((64, 64), np.int8)
    labels[:4] = 1
    _paint_ball(labels, (20, 20), 8)
    _paint_ball(labels, (40, 45), 12)
    inst = particle_instances(labels)
    summary = sample_summary(labels, inst, PIXEL, bins=[0, 20 * PIXEL, 40 * PIXEL])
    assert summary["count"] == 2
    assert summary["diameter_histogram"]["counts"] == [1, 1]
    assert summary["median_diameter_m"] == pytest.approx(20 * PIXEL, rel=0.03)
    assert summary["mean_diameter_m"] == pytest.approx(20 * PIXEL, rel=0.03)
    assert sum(summary["phase_fractions"].values()) == pytest.approx(1.0)
    assert summary["porosity"] + summary["solid_fraction"] == pytest.approx(1 - 4 / 64)
    assert summary["cracked_fraction"] == 0.0
    empty = sample_summary(np.zeros((8, 8), np.int8), np.zeros((8, 8), np.int32), PIXEL)
    assert empty["count"] == 0 and math.isnan(empty["median_diameter_m"])


def test_spheres_in_3d():
    labels = np.zeros((48, 48, 48), np.int8)
    spheres = {(14, 14, 14): 6.0, (32, 32, 14): 8.0, (24, 14, 34): 7.0, (24, 28, 34): 7.0}
    for c, r in spheres.items():
        _paint_ball(labels, c, r)  # the last two touch
    inst = particle_instances(labels)
    assert inst.max() == 4
    table = particle_table(labels, inst, 0.5e-6)
    assert "volume_m3" in table.columns
    for c, r in spheres.items():
        row = _row_at(table, inst, c)
        assert row["equivalent_diameter_px"] == pytest.approx(2 * r, rel=0.03)
        assert row["volume_m3"] == pytest.approx(row["volume_px"] * 0.5e-6**3)
        np.testing.assert_allclose(row["centroid_px"], c, atol=0.3)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="integer"):
        particle_instances(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="2D or 3D"):
        particle_instances(np.zeros(8, np.int8))
    with pytest.raises(ValueError, match="outside"):
        particle_instances(np.full((8, 8), 5, np.int8))
    labels = np.zeros((8, 8), np.int8)
    with pytest.raises(ValueError, match="does not match"):
        particle_table(labels, np.zeros((8, 9), np.int32), PIXEL)
    with pytest.raises(ValueError, match="pixel_size"):
        particle_table(labels, np.zeros((8, 8), np.int32), 0.0)
    with pytest.raises(ValueError, match="bins"):
        sample_summary(labels, np.zeros((8, 8), np.int32), PIXEL, bins=0)


def test_crop_to_measured_keeps_particles_out_of_unmeasured_pixels():
    labels = np.zeros((40, 40), np.int8)
    _paint_ball(labels, (20, 12), 6.0)
    _paint_ball(labels, (20, 30), 6.0)
    measured = np.zeros(labels.shape, bool)
    measured[5:36, 2:25] = True  # the second disk is half outside
    crop, inside, box = crop_to_measured(labels, measured)
    assert box == (slice(5, 36), slice(2, 25))
    assert crop.shape == inside.shape == (31, 23) and inside.all()
    np.testing.assert_array_equal(crop, labels[box])
    measured[20, 10] = False  # a hole in the first disk: pore in the crop
    crop, inside, _ = crop_to_measured(labels, measured)
    assert labels[20, 10] == 2 and not inside[15, 8] and crop[15, 8] == 0
    # 3D: the box of a ball
    volume = np.zeros((16, 16, 16), np.int8)
    _paint_ball(volume, (8, 8, 8), 3.0)
    crop, _, box = crop_to_measured(volume, volume > 0)
    assert box == (slice(5, 12),) * 3 and (crop > 0).sum() == (volume > 0).sum()
    with pytest.raises(ValueError, match="nothing was measured"):
        crop_to_measured(labels, np.zeros(labels.shape, bool))
    with pytest.raises(ValueError, match="measured shape"):
        crop_to_measured(labels, np.ones((40, 41), bool))
