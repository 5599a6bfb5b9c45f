"""Wave-optics physics of a simulated X-ray / neutron imaging beamline.

Pure functions in the scikit-image style (arrays in, arrays out) for

* photon wavelength and the object-plane pixel of far-field ptychography,
* a focused Gaussian probe seen away from its waist,
* sub-pixel Fourier shifts and patch extraction,
* the far-field (Fraunhofer) ptychography forward model and Poisson detection,
* near-field (Fresnel) propagation,
* parallel-beam projection of a volume rotated about the vertical axis (torch).

Conventions
-----------
* Arrays are indexed ``[..., y, x]`` (volumes ``[z, y, x]``). The centre of an
  array of length ``n`` used for probes and patches is index ``n // 2``.
* Waves use the ``exp(+i (k z - w t))`` convention: free-space propagation by a
  positive distance multiplies the angular spectrum by
  ``exp(-i pi lambda z (fx**2 + fy**2))``. A quadratic phase
  ``+pi r**2 / (lambda R)`` with ``R > 0`` is therefore a *diverging* wave
  (downstream of its focus) and ``R < 0`` a *converging* one.
* Lengths are in metres, photon energies in eV, intensities in photons
  (counts) per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as tnf

__all__ = [
    "HC_EV_M",
    "extract_patch",
    "farfield_intensity",
    "farfield_pixel_size",
    "fourier_shift",
    "fresnel_propagate",
    "gaussian_probe",
    "poisson_counts",
    "project_volume",
    "ptycho_pattern",
    "wavelength",
]

#: Planck constant times speed of light in eV * m (CODATA 2018, exact).
HC_EV_M: float = 1.2398419843320026e-6

_FWHM_TO_SIGMA: float = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a positive real number, got {value!r}") from exc
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a finite real number, got {value!r}") from exc
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _shape2(shape: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    try:
        ny, nx = (int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"shape must be a pair of positive integers, got {shape!r}") from exc
    if ny <= 0 or nx <= 0:
        raise ValueError(f"shape must be a pair of positive integers, got {shape!r}")
    return ny, nx


def _require_2d(name: str, array: np.ndarray) -> None:
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D array, got shape {array.shape}")


def _complex_dtype(dtype: np.dtype) -> np.dtype:
    """Single precision in, single precision out; everything else in double."""
    if dtype in (np.float32, np.complex64, np.float16):
        return np.dtype(np.complex64)
    return np.dtype(np.complex128)


# --------------------------------------------------------------------------- #
# geometry
# --------------------------------------------------------------------------- #
def wavelength(energy_ev: float) -> float:
    """Photon wavelength for a given photon energy.

    Parameters
    ----------
    energy_ev : float
        Photon energy in eV (must be positive).

    Returns
    -------
    float
        Wavelength in metres, ``hc / E``.

    Raises
    ------
    ValueError
        If ``energy_ev`` is not positive and finite.

    Examples
    --------
    >>> round(wavelength(12398.419843320026) * 1e10, 12)
    1.0
    """
    return HC_EV_M / _positive("energy_ev", energy_ev)


def farfield_pixel_size(
    energy_ev: float, distance: float, detector_pixel_size: float, n_pixels: int
) -> float:
    """Object-plane pixel size of far-field (Fraunhofer) ptychography.

    Parameters
    ----------
    energy_ev : float
        Photon energy in eV.
    distance : float
        Sample-to-detector distance in metres.
    detector_pixel_size : float
        Detector pixel pitch in metres.
    n_pixels : int
        Number of detector pixels along the axis (size of the diffraction
        pattern used for reconstruction).

    Returns
    -------
    float
        ``wavelength * distance / (n_pixels * detector_pixel_size)`` in metres.

    Raises
    ------
    ValueError
        If any input is not positive.
    """
    lam = wavelength(energy_ev)
    z = _positive("distance", distance)
    dp = _positive("detector_pixel_size", detector_pixel_size)
    n = _positive("n_pixels", n_pixels)
    return lam * z / (n * dp)


# --------------------------------------------------------------------------- #
# probe
# --------------------------------------------------------------------------- #
def gaussian_probe(
    shape: int | Sequence[int],
    pixel_size: float,
    fwhm: float,
    curvature_radius: float,
    energy_ev: float,
    photons: float,
) -> np.ndarray:
    """Focused Gaussian beam seen away from its waist.

    ``P(r) = A exp(-r**2 / (4 sigma**2)) exp(i pi r**2 / (lambda R))`` with
    ``sigma = fwhm / (2 sqrt(2 ln 2))`` so that ``|P|**2`` has the requested
    full width at half maximum.

    Parameters
    ----------
    shape : int or (int, int)
        Array shape ``(ny, nx)``; the beam axis is at index ``(ny // 2, nx // 2)``.
    pixel_size : float
        Sampling pitch in metres (same along y and x).
    fwhm : float
        Full width at half maximum of the *intensity* ``|P|**2`` in metres.
    curvature_radius : float
        Wavefront radius of curvature ``R`` in metres. ``R > 0``: diverging
        (downstream of the focus), ``R < 0``: converging (upstream of the focus),
        ``inf``: flat phase (at the waist). The quadratic phase is only sampled
        without aliasing where ``r < lambda |R| / (2 pixel_size)``.
    energy_ev : float
        Photon energy in eV.
    photons : float
        Total number of photons: ``sum(|P|**2) == photons``.

    Returns
    -------
    ndarray of complex64, shape (ny, nx)
        The probe wavefield in sqrt(photons) per pixel.

    Raises
    ------
    ValueError
        For non-positive sizes, energy or photon number, or ``curvature_radius == 0``.
    """
    ny, nx = _shape2(shape)
    px = _positive("pixel_size", pixel_size)
    width = _positive("fwhm", fwhm)
    lam = wavelength(energy_ev)
    n_ph = _positive("photons", photons)
    try:
        radius = float(curvature_radius)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"curvature_radius must be a real number or inf, got {curvature_radius!r}"
        ) from exc
    if radius == 0.0 or math.isnan(radius):
        raise ValueError(
            "curvature_radius must be non-zero (use inf for a flat phase), "
            f"got {curvature_radius!r}"
        )

    y = (np.arange(ny) - ny // 2) * px
    x = (np.arange(nx) - nx // 2) * px
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    sigma = width * _FWHM_TO_SIGMA
    amplitude = np.exp(-r2 / (4.0 * sigma**2))
    if math.isinf(radius):
        probe = amplitude.astype(np.complex128)
    else:
        probe = amplitude * np.exp(1j * np.pi * r2 / (lam * radius))
    norm = np.sum(np.abs(probe) ** 2)
    probe *= math.sqrt(n_ph / norm)
    return probe.astype(np.complex64)


# --------------------------------------------------------------------------- #
# shifts and patches
# --------------------------------------------------------------------------- #
def _shift_ramp(shape: tuple[int, int], shift_yx: tuple[float, float], dtype: np.dtype):
    ny, nx = shape
    ey = np.exp(-2j * np.pi * np.fft.fftfreq(ny) * shift_yx[0])
    ex = np.exp(-2j * np.pi * np.fft.fftfreq(nx) * shift_yx[1])
    return np.multiply.outer(ey, ex).astype(dtype, copy=False)


def fourier_shift(array: np.ndarray, shift_yx: Sequence[float]) -> np.ndarray:
    """Sub-pixel (periodic) shift of the last two axes by the Fourier shift theorem.

    Parameters
    ----------
    array : ndarray, shape (..., ny, nx)
        Real or complex input; leading axes are shifted identically.
    shift_yx : (float, float)
        Shift in pixels along y and x. A positive shift moves the content toward
        higher indices (``fourier_shift(a, (0, 1))`` equals ``np.roll(a, 1, axis=-1)``).

    Returns
    -------
    ndarray
        Shifted array, same shape. Complex input gives complex output; real input
        gives the real part of the shifted field. Single-precision input stays
        single precision.

    Raises
    ------
    ValueError
        If ``array`` has fewer than 2 dimensions or the shift is not two finite numbers.
    """
    a = np.asarray(array)
    if a.ndim < 2:
        raise ValueError(f"array must have at least 2 dimensions, got shape {a.shape}")
    if len(shift_yx) != 2:
        raise ValueError(f"shift_yx must have two elements (dy, dx), got {shift_yx!r}")
    sy = _finite("shift_yx[0]", shift_yx[0])
    sx = _finite("shift_yx[1]", shift_yx[1])
    cdtype = _complex_dtype(a.dtype)
    if sy == 0.0 and sx == 0.0:
        out = a.copy()
    else:
        ramp = _shift_ramp(a.shape[-2:], (sy, sx), cdtype)
        spec = np.fft.fft2(a.astype(cdtype, copy=False))
        spec *= ramp
        out = np.fft.ifft2(spec)
    if np.iscomplexobj(a):
        return out.astype(cdtype, copy=False)
    return np.ascontiguousarray(out.real)


def extract_patch(
    obj: np.ndarray,
    center_yx_px: Sequence[float],
    shape: int | Sequence[int],
    fill: complex = 1 + 0j,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Integer-aligned patch of an object around a float pixel coordinate.

    The patch's centre pixel (index ``shape // 2``) is the object pixel nearest to
    ``center_yx_px`` (halves round up). Parts of the patch outside the object are
    filled with ``fill`` (free space: transmission 1).

    Parameters
    ----------
    obj : ndarray, shape (Ny, Nx)
        Object (e.g. complex transmission function).
    center_yx_px : (float, float)
        Desired patch centre in object pixel coordinates (row, column).
    shape : int or (int, int)
        Patch shape ``(ny, nx)``.
    fill : complex, optional
        Value outside the object. If ``obj`` is real and ``fill`` has no imaginary
        part, the patch stays real.

    Returns
    -------
    patch : ndarray, shape (ny, nx)
        A copy of the object region (never a view).
    residual_yx : (float, float)
        ``center_yx_px - integer_centre`` in pixels, each in ``[-0.5, 0.5)``.

    Raises
    ------
    ValueError
        If ``obj`` is not 2D, the shape is invalid or the centre is not finite.
    """
    o = np.asarray(obj)
    _require_2d("obj", o)
    ny, nx = _shape2(shape)
    if len(center_yx_px) != 2:
        raise ValueError(f"center_yx_px must have two elements (y, x), got {center_yx_px!r}")
    cy = _finite("center_yx_px[0]", center_yx_px[0])
    cx = _finite("center_yx_px[1]", center_yx_px[1])
    iy = math.floor(cy + 0.5)
    ix = math.floor(cx + 0.5)
    y0 = iy - ny // 2
    x0 = ix - nx // 2
    big_y, big_x = o.shape
    if y0 >= 0 and x0 >= 0 and y0 + ny <= big_y and x0 + nx <= big_x:
        patch = o[y0 : y0 + ny, x0 : x0 + nx].copy()
    else:
        if np.iscomplexobj(o) or complex(fill).imag == 0.0:
            dtype = o.dtype
            value = fill if np.iscomplexobj(o) else complex(fill).real
        else:
            dtype = np.result_type(o.dtype, np.complex64)
            value = fill
        patch = np.full((ny, nx), value, dtype=dtype)
        sy0, sy1 = max(y0, 0), min(y0 + ny, big_y)
        sx0, sx1 = max(x0, 0), min(x0 + nx, big_x)
        if sy0 < sy1 and sx0 < sx1:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = o[sy0:sy1, sx0:sx1]
    return patch, (cy - iy, cx - ix)


# --------------------------------------------------------------------------- #
# far-field ptychography
# --------------------------------------------------------------------------- #
def farfield_intensity(exit_wave: np.ndarray) -> np.ndarray:
    """Far-field (Fraunhofer) intensity of an exit wave.

    ``|fftshift(fft2(exit_wave, norm="ortho"))|**2``: the zero frequency is at index
    ``n // 2`` and, by Parseval, ``sum(I) == sum(|exit_wave|**2)``.

    Parameters
    ----------
    exit_wave : ndarray, shape (..., ny, nx)
        Complex exit wave in sqrt(photons) per pixel.

    Returns
    -------
    ndarray of float32, shape (..., ny, nx)
        Expected photons per detector pixel.
    """
    w = np.asarray(exit_wave)
    if w.ndim < 2:
        raise ValueError(f"exit_wave must have at least 2 dimensions, got shape {w.shape}")
    spec = np.fft.fft2(w.astype(_complex_dtype(w.dtype), copy=False), norm="ortho")
    spec = np.fft.fftshift(spec, axes=(-2, -1))
    out = spec.real * spec.real
    out += spec.imag * spec.imag
    return out.astype(np.float32, copy=False)


def ptycho_pattern(obj: np.ndarray, probe: np.ndarray, center_yx_px: Sequence[float]) -> np.ndarray:
    """Noise-free far-field diffraction pattern for one probe position.

    The object patch nearest to ``center_yx_px`` is extracted (outside the object
    the transmission is 1), the probe is shifted by the sub-pixel residual so
    that its centre lands exactly on ``center_yx_px``, and the far-field intensity
    of ``probe * patch`` is returned.

    Parameters
    ----------
    obj : ndarray, shape (Ny, Nx)
        Complex transmission function of the object.
    probe : ndarray, shape (ny, nx)
        Complex probe, centred at index ``(ny // 2, nx // 2)``.
    center_yx_px : (float, float)
        Probe centre in object pixel coordinates.

    Returns
    -------
    ndarray of float32, shape (ny, nx)
        Expected photons per detector pixel (zero frequency at ``n // 2``).
    """
    p = np.asarray(probe)
    _require_2d("probe", p)
    patch, (ry, rx) = extract_patch(obj, center_yx_px, p.shape)
    cdtype = _complex_dtype(np.result_type(p.dtype, patch.dtype))
    if ry != 0.0 or rx != 0.0:
        spec = np.fft.fft2(p.astype(cdtype, copy=False))
        spec *= _shift_ramp(p.shape, (ry, rx), cdtype)
        p = np.fft.ifft2(spec)
    return farfield_intensity(p * patch)


def poisson_counts(
    intensity: np.ndarray, rng: np.random.Generator, saturation: float | None = None
) -> np.ndarray:
    """Photon-counting detection: Poisson noise, then optional saturation.

    Parameters
    ----------
    intensity : ndarray
        Expected counts per pixel (non-negative, finite).
    rng : numpy.random.Generator
        Random generator (pass a seeded one for reproducibility).
    saturation : float, optional
        Maximum recordable count per pixel; counts above it are clipped.

    Returns
    -------
    ndarray of uint32
        Detected counts, same shape as ``intensity``.

    Raises
    ------
    ValueError
        If the intensity is negative or not finite, or ``saturation`` is not positive.
    """
    lam = np.asarray(intensity, dtype=np.float64)
    if not np.all(np.isfinite(lam)):
        raise ValueError("intensity must be finite (no NaN or inf)")
    if lam.size and lam.min() < 0:
        raise ValueError(f"intensity must be non-negative, minimum is {lam.min()!r}")
    counts = rng.poisson(lam)
    if saturation is not None:
        sat = _positive("saturation", saturation)
        np.minimum(counts, math.floor(sat), out=counts)
    return counts.astype(np.uint32)


# --------------------------------------------------------------------------- #
# near field
# --------------------------------------------------------------------------- #
def fresnel_propagate(
    wave: np.ndarray, distance: float, pixel_size: float, energy_ev: float
) -> np.ndarray:
    """Free-space near-field propagation with the paraxial (Fresnel) transfer function.

    ``U(z) = ifft2(fft2(U(0)) * exp(-i pi lambda z (fx**2 + fy**2)))``; the constant
    phase ``exp(i k z)`` is dropped. The transfer function has unit modulus, so the
    total intensity is conserved; the field is treated as periodic.

    Parameters
    ----------
    wave : ndarray, shape (..., ny, nx)
        Complex field.
    distance : float
        Propagation distance in metres (negative: back-propagation; 0: input returned).
    pixel_size : float
        Sampling pitch in metres.
    energy_ev : float
        Photon energy in eV.

    Returns
    -------
    ndarray of complex64, shape (..., ny, nx)
    """
    w = np.asarray(wave)
    if w.ndim < 2:
        raise ValueError(f"wave must have at least 2 dimensions, got shape {w.shape}")
    z = _finite("distance", distance)
    px = _positive("pixel_size", pixel_size)
    lam = wavelength(energy_ev)
    if z == 0.0:
        return w.astype(np.complex64)
    ny, nx = w.shape[-2:]
    fy = np.fft.fftfreq(ny, d=px)
    fx = np.fft.fftfreq(nx, d=px)
    hy = np.exp(-1j * np.pi * lam * z * fy**2)
    hx = np.exp(-1j * np.pi * lam * z * fx**2)
    spec = np.fft.fft2(w.astype(np.complex128))
    spec *= np.multiply.outer(hy, hx)
    return np.fft.ifft2(spec).astype(np.complex64)


# --------------------------------------------------------------------------- #
# tomography
# --------------------------------------------------------------------------- #
def project_volume(
    volume: np.ndarray | torch.Tensor,
    angles_deg: float | Sequence[float] | np.ndarray,
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Parallel-beam projections of a volume rotated about the vertical (z) axis.

    Geometry (index axes: ``x`` = column, axis 2; ``y`` = row, axis 1; ``z`` =
    slice, axis 0; ``(x, y, z)`` right-handed):

    * The rotation axis is z, through the volume centre ``((ny-1)/2, (nx-1)/2)``.
    * The beam travels along ``+y``; the detector is the ``(z, x)`` plane.
    * A positive angle rotates the *object* counter-clockwise in the ``(x, y)``
      plane seen from ``+z`` (``+x`` turns toward ``+y``).
    * Detector column ``u`` (index ``j``, centre ``(nx-1)/2``) runs along ``+x``
      at angle 0. A voxel at offset ``(x, y)`` from the centre is imaged at
      ``u = x cos(theta) - y sin(theta)``; e.g. at 90 degrees a feature at
      ``+y`` appears at negative ``u`` (lower column index).
    * Detector rows are the z slices (unchanged by the rotation).

    Each z slice is an independent 2D image that is resampled with
    ``torch.nn.functional.affine_grid`` / ``grid_sample`` (bilinear, zero padding);
    all slices share one sampling grid per angle. Samples are one voxel apart
    along a path of ``ceil(hypot(ny, nx))`` voxels, so nothing inside the volume is
    lost along the beam; across the beam the field of view is the ``nx`` columns
    (the cylinder of diameter ``nx`` is seen at every angle). Bilinear resampling
    conserves the total (sum of line integrals == sum of voxels) to ~1e-3 for
    features larger than a few voxels; sharp features of 2-4 voxels can be off by a
    few percent at oblique angles.

    Parameters
    ----------
    volume : ndarray or torch.Tensor, shape (nz, ny, nx)
        Real volume (e.g. linear attenuation coefficient per voxel).
    angles_deg : float or sequence of float
        Rotation angle(s) in degrees.
    device : str or torch.device, optional
        Torch device for the computation (default ``"cpu"``).

    Returns
    -------
    ndarray of float32, shape (n_angles, nz, nx)
        Line integrals in voxel units (multiply by the voxel size for physical
        units). A scalar angle still gives ``n_angles == 1``.

    Raises
    ------
    ValueError
        If ``volume`` is not 3D or real, or an angle is not finite.
    """
    if isinstance(volume, torch.Tensor):
        if volume.is_complex():
            raise ValueError("volume must be real-valued")
        vol = volume.detach().to(device=device, dtype=torch.float32)
    else:
        arr = np.asarray(volume)
        if np.iscomplexobj(arr):
            raise ValueError("volume must be real-valued")
        vol = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32), device=device)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (nz, ny, nx), got shape {tuple(vol.shape)}")
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    if angles.ndim != 1:
        raise ValueError(f"angles_deg must be a scalar or 1D sequence, got shape {angles.shape}")
    if not np.all(np.isfinite(angles)):
        raise ValueError("angles_deg must be finite")
    nz, ny, nx = vol.shape
    nb = math.ceil(math.hypot(ny, nx))  # samples along the beam
    n_ang = angles.size
    out = torch.empty((n_ang, nz, nx), dtype=torch.float32, device=device)
    if n_ang == 0 or vol.numel() == 0:
        return out.cpu().numpy()

    # Normalised coordinates (align_corners=False): offset_px = n_norm * n / 2.
    # Output grid (nb rows along the beam, nx columns along the detector).
    # Source (unrotated) pixel offset = R(-theta) @ output offset, where
    # R(theta) = [[c, -s], [s, c]] acts on (x, y).
    theta = np.deg2rad(angles)
    c, s = np.cos(theta), np.sin(theta)
    mats = np.zeros((n_ang, 2, 3), dtype=np.float64)
    # rows: source (x_norm, y_norm); columns: output (x_norm, y_norm, 1)
    mats[:, 0, 0] = c * (nx / 2) / (nx / 2)
    mats[:, 0, 1] = s * (nb / 2) / (nx / 2)
    mats[:, 1, 0] = -s * (nx / 2) / (ny / 2)
    mats[:, 1, 1] = c * (nb / 2) / (ny / 2)
    mats_t = torch.as_tensor(mats, dtype=torch.float32, device=device)

    image = vol.unsqueeze(0)  # (1, nz, ny, nx): slices share each grid
    # keep each chunk's sampled stack below ~64 MiB
    per_angle = nz * nb * nx
    chunk = max(1, (1 << 24) // max(per_angle, 1))
    with torch.no_grad():
        for a0 in range(0, n_ang, chunk):
            a1 = min(a0 + chunk, n_ang)
            grid = tnf.affine_grid(mats_t[a0:a1], [a1 - a0, nz, nb, nx], align_corners=False)
            sampled = tnf.grid_sample(
                image.expand(a1 - a0, -1, -1, -1),
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            out[a0:a1] = sampled.sum(dim=2)
    return out.cpu().numpy()
