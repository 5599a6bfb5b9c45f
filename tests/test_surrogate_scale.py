"""The surrogate at scale: the sparse model (selected automatically above ``exact_max``
observations) against the exact GP, calibration on held-out points, learning between
hyperparameter fits, and the periodic angle kernel.

Known functions with Gaussian noise of known sigma are the ground truth throughout.
"""

from __future__ import annotations

import numpy as np
import pytest

from synaps_agent.agent import Axis, ScanSpace, SurrogateConfig
from synaps_agent.agent.surrogate import GainSurrogate

NOISE = 0.05
XY = ScanSpace([Axis("x", 0, 100, "um"), Axis("y", 0, 100, "um")])


def smooth_xy(p: np.ndarray) -> np.ndarray:
    """A smooth test function of (x, y) in um, amplitude ~1, length scales ~15-20 um."""
    return np.sin(p[:, 0] / 12.0) * np.cos(p[:, 1] / 17.0) + 0.5 * np.exp(
        -((p[:, 0] - 70) ** 2 + (p[:, 1] - 30) ** 2) / 300
    )


def fitted(space, x, y, config=None, fits=1, seed=0) -> GainSurrogate:
    """A surrogate holding ``(x, y)`` (no prior map) after ``fits`` warm-started fits."""
    sur = GainSurrogate(space, config=config)
    sur.add(x, y, np.zeros((len(x), 2)))
    rng = np.random.default_rng(seed)
    for _ in range(fits):
        sur.fit(rng)
    return sur


def noisy(f, x, rng):
    return f(x) + NOISE * rng.standard_normal(len(x))


def coverage(post, y) -> float:
    """Fraction of ``y`` inside the 95 % predictive interval (latent variance + noise)."""
    return float(np.mean(np.abs(y - post.mean) <= 1.96 * np.sqrt(post.var + post.noise)))


def test_model_is_selected_by_the_number_of_observations():
    rng = np.random.default_rng(0)
    cfg = SurrogateConfig(exact_max=200)
    x = rng.uniform(0, 100, (200, 2))
    sur = fitted(XY, x, noisy(smooth_xy, x, rng), cfg)
    assert sur.kind == "exact" and sur.hyperparameters()["model"] == "exact"
    test = rng.uniform(0, 100, (50, 2))
    exact = sur.posterior(test)
    x1 = rng.uniform(0, 100, (1, 2))
    sur.add(x1, noisy(smooth_xy, x1, rng), np.zeros((1, 2)))
    assert sur.kind == "sparse"
    sparse = sur.posterior(test)  # same interface, same hyperparameters
    hyper = sur.hyperparameters()
    assert hyper["model"] == "sparse" and hyper["n_inducing"] == cfg.n_inducing
    assert sparse.mean.shape == sparse.var.shape == (50,)
    assert np.sqrt(np.mean((sparse.mean - exact.mean) ** 2)) < 0.05


def test_sparse_posterior_agrees_with_exact_gp():
    """Same data (1500 points) and hyperparameters: the sparse mean is within 3 % (RMS) and
    10 % (max) of the signal's std of the exact mean; its std within [0.75, 3] x the exact
    std (the DTC variance is conservative, never overconfident by more than 25 %)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 100, (1500, 2))
    y = noisy(smooth_xy, x, rng)
    exact = fitted(XY, x, y, SurrogateConfig(exact_max=10**9))
    sparse = GainSurrogate(XY, config=SurrogateConfig())
    sparse.load_state(exact.state_arrays(), exact.state_meta())
    assert exact.kind == "exact" and sparse.kind == "sparse"
    test = rng.uniform(0, 100, (500, 2))
    pe, ps = exact.posterior(test), sparse.posterior(test)
    diff = ps.mean - pe.mean
    assert np.sqrt(np.mean(diff**2)) < 0.03 * np.std(y)
    assert np.max(np.abs(diff)) < 0.10 * np.std(y)
    ratio = ps.std / pe.std
    assert ratio.min() > 0.75 and ratio.max() < 3.0, (ratio.min(), ratio.max())
    truth = smooth_xy(test)
    assert np.sqrt(np.mean((ps.mean - truth) ** 2)) < 2 * NOISE


@pytest.mark.parametrize("n", [300, 1500])
def test_predictions_are_calibrated_on_held_out_points(n):
    """95 % predictive intervals cover 88-99 % of 600 held-out noisy values, for the exact
    (300 observations) and the sparse (1500) model, and the std tracks the actual error."""
    rng = np.random.default_rng(n)
    x = rng.uniform(0, 100, (n, 2))
    sur = fitted(XY, x, noisy(smooth_xy, x, rng), fits=3)
    assert sur.kind == ("exact" if n <= sur.config.exact_max else "sparse")
    test = rng.uniform(0, 100, (600, 2))
    post = sur.posterior(test)
    cov = coverage(post, noisy(smooth_xy, test, rng))
    assert 0.88 <= cov <= 0.99, cov
    z = (post.mean - smooth_xy(test)) / post.std
    assert 0.5 < np.std(z) < 1.5  # latent error in units of the latent std


def test_sparse_model_learns_observations_made_between_fits():
    """1500 observations on the left half, a fit, then 120 on the unexplored right (fewer
    than a refit period): the new region is learned at once (inducing points grow), and the
    grown model survives a save/load round trip bit for bit."""
    rng = np.random.default_rng(2)
    x = rng.uniform((0, 0), (50, 100), (1500, 2))
    sur = fitted(XY, x, noisy(smooth_xy, x, rng))
    sur.posterior(x[:3])  # builds the sparse cache and its inducing points
    n_inducing = len(sur.z_idx)
    x2 = rng.uniform((60, 0), (100, 100), (120, 2))
    sur.add(x2, noisy(smooth_xy, x2, rng), np.zeros((120, 2)))
    assert not sur.needs_fit() and sur.kind == "sparse"
    post = sur.posterior(x2)
    assert n_inducing < len(sur.z_idx) <= sur.config.n_inducing_max
    prior_std = np.sqrt(sur.hyperparameters()["outputscale"])
    assert np.sqrt(np.mean((post.mean - smooth_xy(x2)) ** 2)) < 2 * NOISE
    assert np.mean(post.std) < 0.2 * prior_std
    restored = GainSurrogate(XY, config=SurrogateConfig())
    restored.load_state(sur.state_arrays(), sur.state_meta())
    again = restored.posterior(x2)
    np.testing.assert_array_equal(again.mean, post.mean)
    np.testing.assert_array_equal(again.var, post.var)


def angular(theta: np.ndarray) -> np.ndarray:
    """A periodic function of the angle (period 180 deg), amplitude ~1."""
    phase = 2 * np.pi * theta / 180.0
    return np.sin(phase) + 0.5 * np.cos(2 * phase)


THETA = Axis("theta", 0, 180, "deg", period=180.0)


def test_periodic_angle_kernel_predicts_across_the_wrap():
    """Tomography: angles measured in [0, 150] deg only. The periodic kernel knows that
    175 deg is 5 deg from 0 deg, so the gap [165, 180) is predicted from the data near 0; 0 and
    180 deg are the same view."""
    space = ScanSpace([THETA])
    rng = np.random.default_rng(3)
    theta = np.sort(rng.uniform(0, 150, 60))[:, None]
    sur = fitted(space, theta, noisy(lambda t: angular(t[:, 0]), theta, rng), fits=3)
    gap = np.linspace(165, 179.9, 30)[:, None]
    post = sur.posterior(gap)
    assert np.max(np.abs(post.mean - angular(gap[:, 0]))) < 4 * NOISE
    assert np.all(post.std < 0.5 * np.sqrt(sur.hyperparameters()["outputscale"]))
    ends = sur.posterior(np.array([[0.0], [180.0]]))
    assert ends.mean[0] == pytest.approx(ends.mean[1], abs=1e-9)
    assert ends.var[0] == pytest.approx(ends.var[1], abs=1e-12)
    # the 95 % intervals hold in the gap
    assert coverage(post, noisy(lambda t: angular(t[:, 0]), gap, rng)) >= 0.85


def test_sparse_model_over_x_y_theta_is_accurate_and_periodic():
    """Ptycho-tomography: 1500 observations of f(x, y) * (1 + 0.5 theta-term), angles in
    [0, 150] deg only; the sparse model predicts held-out points (angles anywhere, the gap
    included) within twice the noise (RMS), with calibrated 95 % intervals."""
    space = ScanSpace([Axis("x", 0, 100, "um"), Axis("y", 0, 100, "um"), THETA])

    def f(p):
        return smooth_xy(p[:, :2]) * (1 + 0.5 * angular(p[:, 2]))

    rng = np.random.default_rng(4)
    x = np.column_stack([rng.uniform(0, 100, (1500, 2)), rng.uniform(0, 150, 1500)])
    sur = fitted(space, x, noisy(f, x, rng), fits=3)
    test = np.column_stack([rng.uniform(0, 100, (600, 2)), rng.uniform(0, 180, 600)])
    post = sur.posterior(test)
    assert sur.kind == "sparse"
    assert np.sqrt(np.mean((post.mean - f(test)) ** 2)) < 2 * NOISE
    assert 0.85 <= coverage(post, noisy(f, test, rng)) <= 0.995  # DTC: a bit conservative
    gap = test[:, 2] > 165
    assert np.sqrt(np.mean((post.mean[gap] - f(test[gap])) ** 2)) < 3 * NOISE
    wrapped = sur.posterior(np.column_stack([test[:20, :2], np.zeros(20)]))
    same = sur.posterior(np.column_stack([test[:20, :2], np.full(20, 180.0)]))
    np.testing.assert_allclose(wrapped.mean, same.mean, atol=1e-9)
    assert 0 < sur.hyperparameters()["lengthscale"]["theta"] < 180
