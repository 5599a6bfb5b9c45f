"""Gaussian-process surrogate of the information gain of a measurement.

Target
    The *gain* of a measurement at a point: the reduction of the segmentation's mean
    predictive entropy in the region the measurement illuminates, as told by the caller.

Prior
    The live per-pixel uncertainty map, integrated over the probe footprint (a Gaussian of the
    probe's FWHM), is the prior mean over ``(x, y)``; for a rotation axis the caller passes a 1D
    prior over angles (e.g. the forward projection of the uncertainty along the rays at each
    angle), interpolated periodically. :class:`GridPriorMean` holds these grids, interpolates
    them and adds ``constant + w_xy * p_xy + w_theta * p_theta`` (``w >= 0``, learned).

    Each observation keeps the prior value it was *decided under* (a frozen input column):
    once a region has been measured its uncertainty drops in the next map, and comparing an old
    gain with the new, depleted prior would wrongly read as "the map underestimates here".
    Candidates use the current map. The GP thus models the discrepancy between map and gain.

Kernel
    Matern-5/2 with ARD on the normalised spatial axes; Matern-5/2 on the ``(cos, sin)``
    embedding of a periodic axis; their product for ``(x, y, theta)``; times an output scale.

Scaling
    Exact GP up to ``exact_max`` observations; above, a sparse (SGPR / DTC predictive) model on
    ``n_inducing`` inducing points chosen by farthest-point sampling in lengthscale units. The
    hyperparameters are fitted online with a few Adam steps on the exact marginal likelihood of
    (a subset of at most ``fit_max_points``) data, warm-started from the previous fit, and only
    every ``max(refit_min_new, refit_fraction * n)`` new observations. Between two fits a new
    observation farther from every inducing point than the sampling's cover radius becomes an
    inducing point itself (up to ``n_inducing_max``), so the sparse model learns from
    measurements in newly explored regions at once instead of ignoring them until the next fit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import gpytorch
import numpy as np
import torch
from gpytorch.constraints import GreaterThan, Interval, Positive
from scipy.ndimage import gaussian_filter

from synaps_agent.agent.space import ScanSpace

__all__ = ["GainSurrogate", "GridPriorMean", "Posterior", "SurrogateConfig"]

DTYPE = torch.float64
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass
class SurrogateConfig:
    """Settings of :class:`GainSurrogate` (see the module docstring)."""

    exact_max: int = 512
    n_inducing: int = 128
    n_inducing_max: int = 256
    fit_max_points: int = 256
    fit_steps_initial: int = 60
    fit_steps: int = 8
    learning_rate: float = 0.05
    refit_min_new: int = 5
    refit_fraction: float = 0.1
    noise_floor: float = 1e-5
    torch_threads: int = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, restoring the previous setting afterwards.

    The agent's matrices are small: on a shared 2-core machine OpenMP spinning across threads
    costs far more than it gains (an element-wise op on a 60 x 60 matrix went from 7 us to
    12 ms with 2 threads under load), so one thread is the default.
    """
    previous = torch.get_num_threads()
    if n > 0 and n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class GridPriorMean(gpytorch.means.Mean):
    """Prior mean from a precomputed 2D grid over ``(x, y)`` and a periodic 1D grid over the
    angle.

    :meth:`interpolate` evaluates the grids at stage coordinates (bilinear; periodic linear for
    the angle). :meth:`forward` reads the interpolated (and normalised) prior values from the
    last two columns of the GP input and returns ``constant + weight @ prior``.
    """

    def __init__(self, spatial_cols: list[int], angle_col: int | None) -> None:
        super().__init__()
        self.spatial_cols = spatial_cols
        self.angle_col = angle_col
        self.register_parameter("constant", torch.nn.Parameter(torch.zeros((), dtype=DTYPE)))
        self.register_parameter("raw_weight", torch.nn.Parameter(torch.zeros(2, dtype=DTYPE)))
        self.register_constraint("raw_weight", Positive())
        self.weight = torch.ones(2, dtype=DTYPE)
        self.register_buffer("grid", torch.zeros(0, 0, dtype=DTYPE))
        self.register_buffer("extent", torch.zeros(4, dtype=DTYPE))
        self.register_buffer("angles", torch.zeros(0, dtype=DTYPE))
        self.register_buffer("angle_values", torch.zeros(0, dtype=DTYPE))
        self.register_buffer("period", torch.zeros((), dtype=DTYPE))

    @property
    def weight(self) -> torch.Tensor:
        return self.raw_weight_constraint.transform(self.raw_weight)

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=DTYPE)
        self.initialize(raw_weight=self.raw_weight_constraint.inverse_transform(value))

    def set_grid(self, grid: np.ndarray, extent: tuple[float, float, float, float]) -> None:
        self.grid = torch.as_tensor(np.asarray(grid, dtype=float), dtype=DTYPE)
        self.extent = torch.as_tensor(np.asarray(extent, dtype=float), dtype=DTYPE)

    def set_angles(self, values: np.ndarray, angles: np.ndarray, period: float) -> None:
        order = np.argsort(np.mod(angles, period))
        self.angles = torch.as_tensor(np.mod(angles, period)[order], dtype=DTYPE)
        self.angle_values = torch.as_tensor(np.asarray(values, dtype=float)[order], dtype=DTYPE)
        self.period = torch.as_tensor(float(period), dtype=DTYPE)

    @torch.no_grad()
    def interpolate(self, points: np.ndarray) -> np.ndarray:
        """Raw prior values ``(p_xy, p_theta)`` at stage-coordinate points (0 where unset).

        Outside the map's extent the edge value is used (border padding).
        """
        out = np.zeros((len(points), 2))
        if self.grid.numel() and len(self.spatial_cols) == 2:
            g = self.grid.numpy()
            ny, nx = g.shape
            x0, x1, y0, y1 = self.extent.numpy()
            # continuous pixel index, pixel centres at integers
            fx = (points[:, self.spatial_cols[0]] - x0) / (x1 - x0) * nx - 0.5
            fy = (points[:, self.spatial_cols[1]] - y0) / (y1 - y0) * ny - 0.5
            fx, fy = np.clip(fx, 0, nx - 1), np.clip(fy, 0, ny - 1)
            ix = np.minimum(np.floor(fx).astype(int), max(nx - 2, 0))
            iy = np.minimum(np.floor(fy).astype(int), max(ny - 2, 0))
            tx, ty = fx - ix, fy - iy
            ix1, iy1 = np.minimum(ix + 1, nx - 1), np.minimum(iy + 1, ny - 1)
            out[:, 0] = (
                g[iy, ix] * (1 - tx) * (1 - ty)
                + g[iy, ix1] * tx * (1 - ty)
                + g[iy1, ix] * (1 - tx) * ty
                + g[iy1, ix1] * tx * ty
            )
        if self.angle_values.numel() and self.angle_col is not None:
            p = float(self.period)
            out[:, 1] = np.interp(
                np.mod(points[:, self.angle_col], p),
                self.angles.numpy(),
                self.angle_values.numpy(),
                period=p,
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.constant + x[..., -2:] @ self.weight


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, mean_module, covar_module) -> None:
        super().__init__(x, y, likelihood)
        self.mean_module = mean_module
        self.covar_module = covar_module

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@dataclass
class Posterior:
    """Posterior of the gain at candidate points (caller's units).

    ``cov_column(j)`` is the posterior covariance between every candidate and candidate ``j``
    (used for fantasised batch selection).
    """

    mean: np.ndarray
    var: np.ndarray
    noise: float
    _features: torch.Tensor
    _kernel: Any
    _P: torch.Tensor
    _R: torch.Tensor | None
    _scale2: float

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.var, 0.0))

    @torch.no_grad()
    def cov_column(self, j: int) -> np.ndarray:
        with torch_threads(1):
            return self._cov_column(j)

    def _cov_column(self, j: int) -> np.ndarray:
        k = self._kernel(self._features, self._features[j : j + 1]).to_dense()[:, 0]
        c = k - self._P.T @ self._P[:, j]
        if self._R is not None:
            c = c + self._R.T @ self._R[:, j]
        return c.numpy() * self._scale2


class GainSurrogate:
    """GP model of the gain over the scan space with an uncertainty-map prior mean.

    Parameters
    ----------
    space : ScanSpace
    probe_fwhm : float or None
        FWHM of the probe footprint in spatial stage units, used to integrate the uncertainty
        map over the footprint (``None``: the map is used as is).
    config : SurrogateConfig
    """

    def __init__(
        self,
        space: ScanSpace,
        probe_fwhm: float | None = None,
        config: SurrogateConfig | None = None,
    ) -> None:
        self.space = space
        self.probe_fwhm = probe_fwhm
        self.config = config or SurrogateConfig()
        si, ai = space.spatial_index, space.angle_index
        self._si, self._ai = si, ai
        ns = len(si)
        kernels = []
        if ns:
            ls0 = 0.15
            if probe_fwhm is not None:
                ls0 = float(np.clip(probe_fwhm / np.min(space.high[si] - space.low[si]), 0.02, 1))
            ks = gpytorch.kernels.MaternKernel(
                nu=2.5,
                ard_num_dims=ns,
                active_dims=torch.arange(ns),
                lengthscale_constraint=Interval(1e-3, 10.0, initial_value=ls0),
            )
            ks.lengthscale = torch.full((1, ns), ls0)
            kernels.append(ks)
        if ai:
            ka = gpytorch.kernels.MaternKernel(
                nu=2.5,
                active_dims=torch.tensor([ns, ns + 1]),
                lengthscale_constraint=Interval(1e-3, 10.0, initial_value=0.5),
            )
            ka.lengthscale = torch.tensor(0.5)
            kernels.append(ka)
        base = kernels[0] if len(kernels) == 1 else gpytorch.kernels.ProductKernel(*kernels)
        self.kernel = gpytorch.kernels.ScaleKernel(base).to(DTYPE)
        self.kernel.outputscale = torch.tensor(0.25)
        self.likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=GreaterThan(self.config.noise_floor)
        ).to(DTYPE)
        self.likelihood.noise = torch.tensor(0.01)
        self.mean = GridPriorMean(si if ns == 2 else [], ai[0] if ai else None).to(DTYPE)
        self.X = np.zeros((0, space.ndim))
        self.y = np.zeros(0)
        self.P = np.zeros((0, 2))  # prior values each observation was decided under (raw)
        self.y_scale: float | None = None
        self.p_scale = np.ones(2)
        self.p_scale_set = np.zeros(2, dtype=bool)
        self.n_at_fit = 0
        self.n_fits = 0
        self._cache: dict[str, Any] | None = None
        self.z_idx = np.zeros(0, dtype=np.int64)  # inducing points (data indices), set at fit
        self.inducing_radius: float | None = None  # cover radius of the sampled inducing points
        for m in (self.kernel, self.likelihood, self.mean):
            m.eval()

    # -- prior -------------------------------------------------------------------------------
    def set_prior_map(self, uncertainty_map: np.ndarray, extent: tuple[float, ...]) -> None:
        """Prior over ``(x, y)`` from a per-pixel uncertainty map.

        Parameters
        ----------
        uncertainty_map : array of shape ``(ny, nx)``
            Row ``i`` at ``y``, column ``j`` at ``x``; origin at ``(xmin, ymin)``.
        extent : (xmin, xmax, ymin, ymax)
            Outer pixel edges in stage coordinates.
        """
        u = np.asarray(uncertainty_map, dtype=float)
        if u.ndim != 2 or min(u.shape) < 1 or not np.all(np.isfinite(u)):
            raise ValueError("uncertainty_map must be a finite 2D array")
        if len(self._si) != 2:
            raise ValueError("a 2D prior map needs exactly two spatial axes")
        x0, x1, y0, y1 = (float(v) for v in extent)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"bad extent {extent}")
        if self.probe_fwhm is not None:
            sx = self.probe_fwhm * FWHM_TO_SIGMA / ((x1 - x0) / u.shape[1])
            sy = self.probe_fwhm * FWHM_TO_SIGMA / ((y1 - y0) / u.shape[0])
            u = gaussian_filter(u, sigma=(sy, sx), mode="nearest")
        self.mean.set_grid(u, (x0, x1, y0, y1))
        if not self.p_scale_set[0]:
            self.p_scale[0] = max(float(np.max(np.abs(u))), 1e-12)
            self.p_scale_set[0] = True
        # the fitted cache uses the frozen prior snapshots: still valid

    def set_prior_angles(self, values: np.ndarray, angles: np.ndarray) -> None:
        """Prior over the rotation angle: ``values`` at ``angles`` (periodic interpolation)."""
        if not self._ai:
            raise ValueError("the scan space has no periodic (angle) axis")
        v, a = np.asarray(values, dtype=float).ravel(), np.asarray(angles, dtype=float).ravel()
        if v.shape != a.shape or len(v) < 2 or not np.all(np.isfinite(v) & np.isfinite(a)):
            raise ValueError("values and angles must be finite 1D arrays of equal length >= 2")
        self.mean.set_angles(v, a, self.space.axes[self._ai[0]].period)
        if not self.p_scale_set[1]:
            self.p_scale[1] = max(float(np.max(np.abs(v))), 1e-12)
            self.p_scale_set[1] = True
        # the fitted cache uses the frozen prior snapshots: still valid

    def prior_values(self, points: np.ndarray) -> np.ndarray:
        """Raw prior values ``(n, 2)`` at points under the current prior."""
        return self.mean.interpolate(self.space.to_array(points))

    # -- data --------------------------------------------------------------------------------
    def add(self, points: np.ndarray, gains: np.ndarray, prior: np.ndarray) -> None:
        """Append observations with the prior values they were decided under."""
        self.X = np.concatenate([self.X, points], axis=0)
        self.y = np.concatenate([self.y, np.asarray(gains, dtype=float).ravel()])
        self.P = np.concatenate([self.P, prior], axis=0)
        if self._cache is not None and self._cache["kind"] == "exact":
            self._cache = None
        elif self._cache is not None:
            self._cache["stale"] = True

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def kind(self) -> str:
        return "exact" if self.n <= self.config.exact_max else "sparse"

    def features(self, points: np.ndarray, prior: np.ndarray) -> torch.Tensor:
        sp = self.space
        cols = [(points[:, i] - sp.low[i]) / (sp.high[i] - sp.low[i]) for i in self._si]
        for i in self._ai:
            phase = 2 * math.pi * points[:, i] / sp.axes[i].period
            cols.extend([np.cos(phase), np.sin(phase)])
        pn = prior / self.p_scale
        cols.extend([pn[:, 0], pn[:, 1]])
        return torch.as_tensor(np.stack(cols, axis=1), dtype=DTYPE)

    # -- fitting -----------------------------------------------------------------------------
    def needs_fit(self) -> bool:
        c = self.config
        if self.n < 2:
            return False
        new = self.n - self.n_at_fit
        return self.n_fits == 0 or new >= max(c.refit_min_new, c.refit_fraction * self.n_at_fit)

    def fit(self, rng: np.random.Generator) -> None:
        """A few Adam steps on the exact marginal likelihood, warm-started."""
        with torch_threads(self.config.torch_threads):
            self._fit(rng)

    def _fit(self, rng: np.random.Generator) -> None:
        c = self.config
        if self.y_scale is None:
            self.y_scale = max(float(np.std(self.y)), float(np.mean(np.abs(self.y))), 1e-12)
        n = self.n
        if n > c.fit_max_points:
            n_recent = c.fit_max_points // 2
            old = rng.choice(n - n_recent, size=c.fit_max_points - n_recent, replace=False)
            idx = np.concatenate([np.sort(old), np.arange(n - n_recent, n)])
        else:
            idx = np.arange(n)
        x = self.features(self.X[idx], self.P[idx])
        y = torch.as_tensor(self.y[idx] / self.y_scale, dtype=DTYPE)
        if self.n_fits == 0:
            self._init_mean(x, y)
        model = _ExactGP(x, y, self.likelihood, self.mean, self.kernel)
        model.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(self.likelihood, model)
        opt = torch.optim.Adam(model.parameters(), lr=c.learning_rate)
        steps = c.fit_steps_initial if self.n_fits == 0 else c.fit_steps
        with gpytorch.settings.max_cholesky_size(10_000):
            for _ in range(steps):
                opt.zero_grad()
                loss = -mll(model(x), y)
                loss.backward()
                opt.step()
        model.eval()
        for m in (self.kernel, self.likelihood, self.mean):
            m.eval()
        self.n_at_fit, self.n_fits = n, self.n_fits + 1
        self.z_idx = np.zeros(0, dtype=np.int64)
        self.inducing_radius = None
        self._cache = None

    @torch.no_grad()
    def _init_mean(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Least-squares start for (constant, weights), weights kept >= 0."""
        p = x[:, -2:]
        used = [k for k in range(2) if torch.any(p[:, k] != 0)]
        w = torch.ones(2, dtype=DTYPE)
        const = float(y.mean())
        if used and len(y) >= len(used) + 2:
            a = torch.cat([torch.ones(len(y), 1, dtype=DTYPE), p[:, used]], dim=1)
            sol = torch.linalg.lstsq(a, y[:, None]).solution[:, 0]
            const = float(sol[0])
            for k, val in zip(used, sol[1:], strict=True):
                w[k] = max(float(val), 0.05)
        elif used:
            const = float((y - p @ w).mean())
        self.mean.weight = w
        self.mean.initialize(constant=torch.tensor(const, dtype=DTYPE))

    # -- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def _build_cache(self) -> dict[str, Any]:
        if self.kind == "exact":
            if self._cache is None:
                x = self.features(self.X, self.P)
                r = torch.as_tensor(self.y / self.y_scale, dtype=DTYPE) - self.mean(x)
                k = self.kernel(x, x).to_dense()
                k.diagonal().add_(float(self.likelihood.noise))
                chol = _cholesky(k)
                alpha = torch.cholesky_solve(r[:, None], chol)[:, 0]
                self._cache = {"kind": "exact", "x": x, "L": chol, "alpha": alpha}
            return self._cache
        return self._sparse_cache()

    SPARSE_BLOCK = 256

    def _sparse_cache(self) -> dict[str, Any]:
        """SGPR factors, accumulated over fixed blocks of observations.

        The inducing points change only at a hyperparameter fit or when :meth:`_grow_inducing`
        adds new observations far from all of them (then every block is recomputed); each
        block's contribution ``V_b V_b^T`` / ``V_b r_b`` is computed once and the blocks are
        summed in index order, so an incremental update and a rebuild from scratch (e.g. after
        ``load``) are bitwise identical.
        """
        cache = self._cache
        if cache is not None and cache["kind"] == "sparse" and not cache.get("stale"):
            return cache
        if cache is not None and cache["kind"] == "sparse" and self._grow_inducing(cache):
            cache = None
        noise = float(self.likelihood.noise)
        if cache is None or cache["kind"] != "sparse":
            if len(self.z_idx) == 0 or self.inducing_radius is None:
                self.z_idx, self.inducing_radius = self._inducing(self.features(self.X, self.P))
            z = self.features(self.X[self.z_idx], self.P[self.z_idx])
            kmm = self.kernel(z, z).to_dense()
            lm = _cholesky(kmm + 1e-6 * float(self.kernel.outputscale) * torch.eye(len(z)))
            cache = {"kind": "sparse", "z": z, "Lm": lm, "blocks": [], "n_seen": self.n,
                     "z_scaled": self._scaled(z)}  # fmt: skip
        bs, blocks = self.SPARSE_BLOCK, cache["blocks"]
        n_full = self.n // bs
        ys = self.y_scale

        def block(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.features(self.X[lo:hi], self.P[lo:hi])
            r = torch.as_tensor(self.y[lo:hi] / ys, dtype=DTYPE) - self.mean(x)
            kmn = self.kernel(cache["z"], x).to_dense()
            v = torch.linalg.solve_triangular(cache["Lm"], kmn, upper=False) / math.sqrt(noise)
            return v @ v.T, v @ r

        while len(blocks) < n_full:
            lo = len(blocks) * bs
            blocks.append(block(lo, lo + bs))
        m = len(cache["z"])
        b = torch.eye(m, dtype=DTYPE)
        vr = torch.zeros(m, dtype=DTYPE)
        for bb, vrb in blocks:
            b = b + bb
            vr = vr + vrb
        if self.n > n_full * bs:
            bb, vrb = block(n_full * bs, self.n)
            b, vr = b + bb, vr + vrb
        lb = _cholesky(b)
        c = torch.linalg.solve_triangular(lb, vr[:, None], upper=False)[:, 0] / math.sqrt(noise)
        cache.update(LB=lb, c=c, stale=False, n_seen=self.n)
        self._cache = cache
        return cache

    def _scaled(self, x: torch.Tensor) -> np.ndarray:
        """Kernel inputs (prior columns dropped) in lengthscale units."""
        return x[:, :-2].numpy() / self._lengthscale_vector()

    def _grow_inducing(self, cache: dict[str, Any]) -> bool:
        """Make observations added since the cache was built inducing points when they lie
        farther than the cover radius from every inducing point (greedily, in order, up to
        ``n_inducing_max``). Returns whether any was added."""
        lo, room = cache["n_seen"], self.config.n_inducing_max - len(self.z_idx)
        cache["n_seen"] = self.n
        if lo >= self.n or room <= 0:
            return False
        new = self._scaled(self.features(self.X[lo:], self.P[lo:]))
        z = cache["z_scaled"]
        d2 = np.min(np.sum((new[:, None, :] - z[None, :, :]) ** 2, axis=2), axis=1)
        r2 = max(self.inducing_radius or 0.0, 0.1) ** 2
        added: list[int] = []
        for k in range(len(new)):
            if d2[k] > r2 and len(added) < room:
                added.append(lo + k)
                d2 = np.minimum(d2, np.sum((new - new[k]) ** 2, axis=1))
        if added:
            self.z_idx = np.concatenate([self.z_idx, np.asarray(added, dtype=np.int64)])
        return bool(added)

    def _inducing(self, x: torch.Tensor) -> tuple[np.ndarray, float]:
        """Farthest-point sample of ``n_inducing`` rows in lengthscale units, starting from the
        most recent observation (deterministic), and its cover radius (the largest distance
        from an observation to its nearest inducing point)."""
        f = self._scaled(x)
        m = min(self.config.n_inducing, len(f))
        chosen = np.empty(m, dtype=int)
        chosen[0] = len(f) - 1
        d = np.sum((f - f[-1]) ** 2, axis=1)
        for k in range(1, m):
            j = int(np.argmax(d))
            chosen[k] = j
            d = np.minimum(d, np.sum((f - f[j]) ** 2, axis=1))
        return np.sort(chosen), float(np.sqrt(np.max(d)))

    def _lengthscale_vector(self) -> np.ndarray:
        base = self.kernel.base_kernel
        parts = base.kernels if isinstance(base, gpytorch.kernels.ProductKernel) else [base]
        out = []
        for kern in parts:
            ls = kern.lengthscale.detach().numpy().ravel()
            out.extend(ls if len(ls) > 1 or kern.active_dims.numel() == 1 else [ls[0]] * 2)
        return np.asarray(out)

    def posterior(self, points: np.ndarray) -> Posterior:
        """Posterior of the gain at ``points`` (evaluated under the *current* prior)."""
        with torch_threads(self.config.torch_threads):
            return self._posterior(points)

    @torch.no_grad()
    def _posterior(self, points: np.ndarray) -> Posterior:
        pts = self.space.to_array(points)
        feats = self.features(pts, self.prior_values(pts))
        ys = self.y_scale if self.y_scale is not None else 1.0
        mp = self.mean(feats)
        kdiag = torch.full((len(pts),), float(self.kernel.outputscale), dtype=DTYPE)
        noise = float(self.likelihood.noise)
        if self.n == 0 or self.y_scale is None:
            p = torch.zeros(1, len(pts), dtype=DTYPE)
            return Posterior(
                (mp * ys).numpy(), (kdiag * ys**2).numpy(), noise * ys**2, feats, self.kernel,
                p, None, ys**2,
            )  # fmt: skip
        cache = self._build_cache()
        if cache["kind"] == "exact":
            kxc = self.kernel(cache["x"], feats).to_dense()
            a = torch.linalg.solve_triangular(cache["L"], kxc, upper=False)
            mean = mp + kxc.T @ cache["alpha"]
            var = kdiag - (a * a).sum(0)
            p_fac, r_fac = a, None
        else:
            kmc = self.kernel(cache["z"], feats).to_dense()
            w = torch.linalg.solve_triangular(cache["Lm"], kmc, upper=False)
            u = torch.linalg.solve_triangular(cache["LB"], w, upper=False)
            mean = mp + u.T @ cache["c"]
            var = kdiag - (w * w).sum(0) + (u * u).sum(0)
            p_fac, r_fac = w, u
        return Posterior(
            (mean * ys).numpy(), (var.clamp_min(0) * ys**2).numpy(), noise * ys**2, feats,
            self.kernel, p_fac, r_fac, ys**2,
        )  # fmt: skip

    # -- reporting / state -------------------------------------------------------------------
    @torch.no_grad()
    def hyperparameters(self) -> dict[str, Any]:
        """Hyperparameters in the caller's units (lengthscales per axis)."""
        ys = self.y_scale if self.y_scale is not None else 1.0
        ls = self._lengthscale_vector()
        out: dict[str, Any] = {"lengthscale": {}}
        k = 0
        for i in self._si:
            out["lengthscale"][self.space.names[i]] = float(ls[k] * self.space.axes[i].span)
            k += 1
        for i in self._ai:
            # chord lengthscale on the unit circle -> angle units (small-angle)
            period = self.space.axes[i].period
            out["lengthscale"][self.space.names[i]] = float(ls[k] * period / (2 * math.pi))
            k += 2
        w = self.mean.weight.detach().numpy()
        out.update(
            outputscale=float(self.kernel.outputscale) * ys**2,
            noise=float(self.likelihood.noise) * ys**2,
            mean_constant=float(self.mean.constant) * ys,
            prior_weight_xy=float(w[0] * ys / self.p_scale[0]) if len(self._si) == 2 else None,
            prior_weight_theta=float(w[1] * ys / self.p_scale[1]) if self._ai else None,
            model=self.kind,
            n_inducing=int(len(self.z_idx)) if self.kind == "sparse" else None,
            n_fits=self.n_fits,
        )
        return out

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the surrogate, as float/int arrays."""
        out = {"X": self.X, "y": self.y, "P": self.P, "p_scale": self.p_scale,
               "p_scale_set": self.p_scale_set.astype(np.int64),
               "z_idx": self.z_idx.astype(np.int64)}  # fmt: skip
        for prefix, mod in (("kernel", self.kernel), ("lik", self.likelihood), ("mean", self.mean)):
            for name, t in mod.state_dict().items():
                out[f"{prefix}.{name}"] = t.detach().cpu().numpy()
        return out

    def state_meta(self) -> dict[str, Any]:
        return {"y_scale": self.y_scale, "n_at_fit": self.n_at_fit, "n_fits": self.n_fits,
                "config": asdict(self.config), "probe_fwhm": self.probe_fwhm,
                "inducing_radius": self.inducing_radius}  # fmt: skip

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        X, y, P = arrays["X"], arrays["y"], arrays["P"]
        if X.ndim != 2 or X.shape[1] != self.space.ndim or y.shape != (len(X),):
            raise ValueError("state: observation arrays have inconsistent shapes")
        if P.shape != (len(X), 2) or not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("state: prior snapshots have a bad shape or data are not finite")
        for prefix, mod in (("kernel", self.kernel), ("lik", self.likelihood), ("mean", self.mean)):
            sd = {}
            for name, _ in mod.named_buffers(recurse=False):  # grids: shapes vary
                if prefix == "mean" and f"{prefix}.{name}" in arrays:
                    setattr(mod, name, torch.as_tensor(arrays[f"{prefix}.{name}"], dtype=DTYPE))
            for name, current in mod.state_dict().items():
                key = f"{prefix}.{name}"
                if key not in arrays:
                    raise ValueError(f"state: missing model parameter {key!r}")
                sd[name] = torch.as_tensor(arrays[key], dtype=current.dtype)
            try:
                mod.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"state: incompatible model parameters ({exc})") from None
        self.X, self.y, self.P = X.astype(float), y.astype(float), P.astype(float)
        self.p_scale = np.asarray(arrays["p_scale"], dtype=float)
        self.p_scale_set = np.asarray(arrays["p_scale_set"]).astype(bool)
        z_idx = np.asarray(arrays["z_idx"]).astype(np.int64).ravel()
        if len(z_idx) and (z_idx.min() < 0 or z_idx.max() >= len(X)):
            raise ValueError("state: inducing point indices out of range")
        self.z_idx = z_idx
        radius = meta.get("inducing_radius")  # absent in older states: inducing points resampled
        self.inducing_radius = None if radius is None else float(radius)
        ys = meta["y_scale"]
        self.y_scale = None if ys is None else float(ys)
        self.n_at_fit, self.n_fits = int(meta["n_at_fit"]), int(meta["n_fits"])
        self._cache = None


def _cholesky(a: torch.Tensor) -> torch.Tensor:
    """Cholesky factor with escalating jitter."""
    chol, info = torch.linalg.cholesky_ex(a)
    jitter = 1e-8 * float(a.diagonal().mean())
    while int(info) != 0:
        if jitter > 1e-1 * float(a.diagonal().mean()):
            raise RuntimeError("covariance matrix is not positive definite")
        chol, info = torch.linalg.cholesky_ex(a + jitter * torch.eye(len(a), dtype=a.dtype))
        jitter *= 10
    return chol
