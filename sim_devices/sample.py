"""The sample on the stage: how a phantom looks to the beam at a rotation angle."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np

from .optics import project_volume, wavelength
from .phantoms import Phantom2D, Phantom3D

__all__ = ["SimSample"]

Radiation = Literal["xray", "neutron"]


class SimSample:
    """A phantom mounted on the stage, centred on the rotation axis.

    A 2D phantom is a thin section seen at normal incidence whatever the angle; a 3D
    phantom is projected along the beam after rotation about the vertical axis.
    Projections are cached per angle (a few of them), so repeated frames at one angle
    cost nothing.

    Parameters
    ----------
    phantom : Phantom2D or Phantom3D
        The ground truth.
    cache_size : int
        Number of angles whose projections are kept.
    """

    def __init__(self, phantom: Phantom2D | Phantom3D, cache_size: int = 8) -> None:
        self.phantom = phantom
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    @property
    def is_volume(self) -> bool:
        return isinstance(self.phantom, Phantom3D)

    @property
    def pixel_size(self) -> float:
        """Edge of one phantom pixel (voxel), metres."""
        return float(self.phantom.voxel_size if self.is_volume else self.phantom.pixel_size)

    @property
    def image_shape(self) -> tuple[int, int]:
        """Shape of the projected image: (rows, columns) = (z or y, x)."""
        shape = self.phantom.labels.shape
        return (shape[0], shape[2]) if self.is_volume else (shape[0], shape[1])

    def _cached(self, key: tuple, compute) -> np.ndarray:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = compute()
        self._cache[key] = value
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def transmission(self, theta_deg: float, energy_ev: float) -> np.ndarray:
        """Complex X-ray transmission of the sample at rotation ``theta_deg`` (complex64)."""
        if not self.is_volume:
            return self._cached(("t2d", energy_ev), lambda: self.phantom.transmission(energy_ev))

        def compute() -> np.ndarray:
            delta, beta = self.phantom.refractive_index(energy_ev)
            both = project_volume(np.stack([delta, beta]).reshape(-1, *delta.shape[1:]), theta_deg)
            nz = delta.shape[0]
            proj_delta, proj_beta = both[0, :nz], both[0, nz:]
            k = 2.0 * np.pi / wavelength(energy_ev)
            length = self.pixel_size
            return np.exp(-k * length * (proj_beta + 1j * proj_delta)).astype(np.complex64)

        return self._cached(("t3d", round(float(theta_deg), 6), energy_ev), compute)

    def neutron_attenuation(self, theta_deg: float) -> np.ndarray:
        """Line integral of the neutron attenuation coefficient (dimensionless mu*L)."""
        if not self.is_volume:
            raise ValueError(
                "neutron imaging needs a 3D phantom (a thin section barely attenuates)"
            )

        def compute() -> np.ndarray:
            mu = self.phantom.neutron_attenuation()
            return (project_volume(mu, theta_deg)[0] * self.pixel_size).astype(np.float32)

        return self._cached(("n", round(float(theta_deg), 6)), compute)

    def intensity_transmission(
        self, theta_deg: float, radiation: Radiation, energy_ev: float
    ) -> np.ndarray:
        """Fraction of the beam intensity transmitted (no propagation), float32."""
        if radiation == "neutron":
            return np.exp(-self.neutron_attenuation(theta_deg)).astype(np.float32)
        if radiation == "xray":
            return (np.abs(self.transmission(theta_deg, energy_ev)) ** 2).astype(np.float32)
        raise ValueError(f"radiation must be 'xray' or 'neutron', got {radiation!r}")
