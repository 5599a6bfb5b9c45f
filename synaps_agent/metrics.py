"""Quality metrics: reconstructions scored against the ground truth of simulated phantoms.

A ptychographic reconstruction is known only up to a global complex scale, a linear phase
ramp and a (sub-pixel) shift, so it is first brought into the truth's frame
(:func:`align_complex`) and then compared (:func:`complex_errors`). Real images (phase
maps, tomographic slices) are compared with :func:`psnr` and :func:`ssim`, and the
resolution of two independent reconstructions is measured by Fourier ring correlation
(:func:`fourier_ring_correlation`, :func:`frc_resolution`, half-bit threshold).

All functions are pure: numpy arrays in, numbers or arrays out.

>>> mask = illuminated_mask(illumination, fraction=0.1, erode=2)      # doctest: +SKIP
>>> errors = complex_errors(reconstruction, truth, mask=mask)         # doctest: +SKIP
>>> errors["phase_rmse"], errors["shift_yx"]                          # doctest: +SKIP

Conventions: shifts are ``(dy, dx)`` in pixels with the :func:`scipy.ndimage.shift`
sign (a positive shift moves the content towards larger indices); the shift reported
for a pair ``(reference, moving)`` is the one to apply to ``moving`` to register it on
``reference``. Phase ramps are in radians per pixel; spatial frequencies in cycles per
pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from scipy.signal import windows

__all__ = [
    "align_complex",
    "complex_errors",
    "fourier_ring_correlation",
    "frc_resolution",
    "half_bit_threshold",
    "illuminated_mask",
    "psnr",
    "register_translation",
    "remove_phase_ramp",
    "shift_image",
    "ssim",
]

# --------------------------------------------------------------------------- validation


def _as_image(name: str, array: ArrayLike, *, ndim: int | None = 2) -> NDArray:
    """``array`` as a float or complex ndarray, checked for dimensions and finiteness."""
    image = np.asarray(array)
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.number) and not np.issubdtype(image.dtype, np.timedelta64)
    ):
        raise ValueError(f"{name} must be a numeric array, got dtype {image.dtype}")
    if ndim is not None and image.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.iscomplexobj(image):
        return image.astype(np.complex128, copy=False)
    return image.astype(np.float64, copy=False)


def _check_same_shape(name1: str, a: NDArray, name2: str, b: NDArray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {name1} has shape {a.shape}, {name2} has {b.shape}")


def _as_mask(mask: ArrayLike | None, shape: tuple[int, ...], *, min_pixels: int = 1) -> NDArray:
    """``mask`` as a boolean array of ``shape`` (all True when None), not (nearly) empty."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"shape mismatch: mask has shape {mask.shape}, images have {shape}")
    if mask.dtype != bool:
        if not np.all(np.isfinite(mask)):
            raise ValueError("mask contains NaN or infinite values")
        mask = mask != 0
    if mask.sum() < min_pixels:
        raise ValueError(f"mask selects {int(mask.sum())} pixels, at least {min_pixels} needed")
    return mask


def _as_real(name: str, array: ArrayLike) -> NDArray:
    image = _as_image(name, array)
    if np.iscomplexobj(image):
        raise ValueError(
            f"{name} must be real (e.g. np.angle or np.abs of a complex object), got complex"
        )
    return image


def _window(shape: tuple[int, ...], kind: str | None) -> NDArray | None:
    """Separable apodisation window: ``"hann"``, ``"tukey"`` (alpha 0.25) or None."""
    if kind is None:
        return None
    if kind == "hann":
        factors = [windows.hann(n, sym=True) if n > 2 else np.ones(n) for n in shape]
    elif kind == "tukey":
        factors = [windows.tukey(n, alpha=0.25, sym=True) if n > 2 else np.ones(n) for n in shape]
    else:
        raise ValueError(f"unknown window {kind!r}; use 'hann', 'tukey' or None")
    result = factors[0]
    for factor in factors[1:]:
        result = np.multiply.outer(result, factor)
    return result


# --------------------------------------------------------------------- shift, registration


def shift_image(image: ArrayLike, shift_yx: ArrayLike, *, mode: str = "wrap") -> NDArray:
    """Shift an image by a (sub-pixel) amount with the Fourier shift theorem.

    Parameters
    ----------
    image : ndarray
        Real or complex image (any number of dimensions).
    shift_yx : sequence of float
        Shift along each axis in pixels; positive moves the content towards larger
        indices (the :func:`scipy.ndimage.shift` convention).
    mode : {"wrap", "reflect"}
        ``"wrap"``: the image is taken as periodic (what leaves one side enters the other).
        ``"reflect"``: the image is first extended by mirroring (to twice its size), a
        periodic and continuous extension, so that a non-periodic image does not ring at
        its edges.

    Returns
    -------
    ndarray
        The shifted image, real if ``image`` is real, complex otherwise.
    """
    image = _as_image("image", image, ndim=None)
    shift = np.atleast_1d(np.asarray(shift_yx, dtype=float))
    if shift.shape != (image.ndim,):
        raise ValueError(f"shift_yx must have {image.ndim} components, got {shift.shape[0]}")
    if not np.all(np.isfinite(shift)):
        raise ValueError("shift_yx contains NaN or infinite values")
    if mode not in ("wrap", "reflect"):
        raise ValueError(f"unknown mode {mode!r}; use 'wrap' or 'reflect'")
    if mode == "reflect":
        # the even (mirror) extension is periodic and continuous: no edge ringing
        extended = np.pad(image, [(0, n) for n in image.shape], mode="symmetric")
        shifted = shift_image(extended, shift, mode="wrap")
        return shifted[tuple(slice(0, n) for n in image.shape)]
    spectrum = np.fft.fftn(image)
    for axis, (s, n) in enumerate(zip(shift, image.shape, strict=True)):
        if s == 0:
            continue
        phase = np.exp(-2j * np.pi * s * np.fft.fftfreq(n))
        spectrum *= phase.reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    shifted = np.fft.ifftn(spectrum)
    return shifted if np.iscomplexobj(image) else shifted.real


def register_translation(
    reference: ArrayLike,
    moving: ArrayLike,
    *,
    upsample_factor: int = 20,
    window: str | None = "tukey",
    normalization: str | None = None,
) -> tuple[NDArray, float]:
    """Sub-pixel translation that registers ``moving`` on ``reference``.

    A wrapper of :func:`skimage.registration.phase_cross_correlation` (upsampled
    cross-correlation, Guizar-Sicairos et al. 2008) on mean-subtracted, apodised images.

    Parameters
    ----------
    reference, moving : ndarray
        2D images of the same shape, real or complex.
    upsample_factor : int
        Precision of the shift: 1 / ``upsample_factor`` pixel.
    window : {"tukey", "hann", None}
        Apodisation applied to both images, so that their (non-periodic) edges do not
        dominate the correlation.
    normalization : {None, "phase"}
        None: plain cross-correlation (robust to noise); ``"phase"``: phase correlation.

    Returns
    -------
    shift_yx : ndarray, shape (2,)
        ``shift_image(moving, shift_yx)`` is aligned with ``reference``.
    error : float
        The translation-invariant normalised RMS error of skimage.
    """
    from skimage.registration import phase_cross_correlation

    reference = _as_image("reference", reference)
    moving = _as_image("moving", moving)
    _check_same_shape("reference", reference, "moving", moving)
    if upsample_factor < 1:
        raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}")
    win = _window(reference.shape, window)
    ref = reference - reference.mean()
    mov = moving - moving.mean()
    if win is not None:
        ref, mov = ref * win, mov * win
    if not np.any(ref) or not np.any(mov):
        raise ValueError("cannot register a constant image")
    shift, error, _ = phase_cross_correlation(
        ref, mov, upsample_factor=int(upsample_factor), normalization=normalization
    )
    return np.asarray(shift, dtype=float), float(error)


# ------------------------------------------------------------------------------ phase ramp


def _fit_phase_ramp(z: NDArray, mask: NDArray, *, iterations: int = 3) -> tuple[float, NDArray]:
    """Constant ``c`` and gradient ``(gy, gx)`` (rad/pixel) with ``angle(z) ~ c + g . (y, x)``.

    The gradient is first located as the peak of the (2x zero-padded) Fourier transform
    of ``z`` on the mask (the maximum-likelihood ramp, insensitive to phase wrapping),
    then refined by weighted least squares on the (small, unwrapped) residual phase.
    """
    ny, nx = z.shape
    weights = np.where(mask, np.abs(z), 0.0)
    if not np.any(weights > 0):
        raise ValueError("cannot fit a phase ramp: the image is zero on the mask")
    zm = np.where(mask, z, 0)
    spectrum = np.abs(np.fft.fft2(zm, s=(2 * ny, 2 * nx)))
    ky, kx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    gradient = 2 * np.pi * np.array([np.fft.fftfreq(2 * ny)[ky], np.fft.fftfreq(2 * nx)[kx]])
    yy, xx = np.nonzero(mask)
    w = np.sqrt(weights[yy, xx])
    zs = z[yy, xx]
    yc, xc = yy - yy.mean(), xx - xx.mean()
    design = np.stack([np.ones_like(yc), yc, xc], axis=1) * w[:, None]
    constant = 0.0
    for _ in range(iterations):
        residual = np.angle(zs * np.exp(-1j * (gradient[0] * yc + gradient[1] * xc)))
        coef, *_ = np.linalg.lstsq(design, residual * w, rcond=None)
        gradient = gradient + coef[1:]
        constant = coef[0]
    # back to coordinates relative to the pixel (0, 0)
    constant = constant - gradient[0] * yy.mean() - gradient[1] * xx.mean()
    return float(constant), gradient


def _ramp(shape: tuple[int, int], constant: float, gradient: ArrayLike) -> NDArray:
    yy, xx = np.indices(shape, dtype=float)
    return constant + gradient[0] * yy + gradient[1] * xx


def remove_phase_ramp(
    obj: ArrayLike, reference: ArrayLike | None = None, mask: ArrayLike | None = None
) -> NDArray:
    """Remove a linear phase ramp and a constant phase from a complex image.

    The ramp is fitted to the phase of ``obj * conj(reference)`` (or of ``obj`` alone) on
    ``mask``, weighted by its modulus, without unwrapping: the gradient is the peak of
    the Fourier transform, refined by least squares on the residual phase. This is
    robust for ramps of many radians and for object phases of a couple of radians.

    Parameters
    ----------
    obj : ndarray
        2D complex image.
    reference : ndarray, optional
        Image of the same shape whose phase ``obj`` should follow (e.g. the truth).
        Without it the phase of ``obj`` itself is flattened.
    mask : ndarray of bool, optional
        Pixels used for the fit (all by default).

    Returns
    -------
    ndarray
        ``obj * exp(-i (c + gy * y + gx * x))``, complex.
    """
    obj = _as_image("obj", obj).astype(np.complex128, copy=False)
    z = obj
    if reference is not None:
        reference = _as_image("reference", reference)
        _check_same_shape("obj", obj, "reference", reference)
        z = obj * np.conj(reference)
    mask = _as_mask(mask, obj.shape, min_pixels=3)
    constant, gradient = _fit_phase_ramp(z, mask)
    return obj * np.exp(-1j * _ramp(obj.shape, constant, gradient))


# ------------------------------------------------------------------------------ alignment


def _border_mask(shape: tuple[int, int], shift: NDArray) -> NDArray:
    """False within ``ceil(|shift|) + 1`` pixels of the edges (where a shift is invalid)."""
    valid = np.zeros(shape, dtype=bool)
    by, bx = (int(np.ceil(abs(s))) + 1 for s in shift)
    valid[by : shape[0] - by, bx : shape[1] - bx] = True
    return valid


def _shifted_with_gradient(image: NDArray, shift: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """``shift_image(image, shift, mode="reflect")`` and its derivatives along y and x."""
    padded = np.pad(image, [(0, n) for n in image.shape], mode="symmetric")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.fftfreq(padded.shape[1])[None, :]
    spectrum = np.fft.fft2(padded) * np.exp(-2j * np.pi * (shift[0] * fy + shift[1] * fx))
    crop = (slice(0, image.shape[0]), slice(0, image.shape[1]))
    moved = np.fft.ifft2(spectrum)[crop]
    d_y = np.fft.ifft2(spectrum * (2j * np.pi * fy))[crop]
    d_x = np.fft.ifft2(spectrum * (2j * np.pi * fx))[crop]
    return moved, d_y, d_x


def _align(
    reconstruction: ArrayLike,
    truth: ArrayLike,
    mask: ArrayLike | None,
    upsample_factor: int,
    max_iterations: int = 20,
) -> dict[str, Any]:
    """Shift, ramp and scale bringing ``reconstruction`` into the truth's frame.

    Initial shift: upsampled cross-correlation; initial ramp: :func:`_fit_phase_ramp`.
    Both are then refined jointly by Gauss-Newton on ``||a * moved(s, g) - truth||^2``
    on the mask, where ``moved(s, g)`` is the reconstruction deramped by ``g`` (in its
    own frame) and shifted by ``s``; the complex scale ``a`` enters linearly.
    """
    rec = _as_image("reconstruction", reconstruction).astype(np.complex128, copy=False)
    tru = _as_image("truth", truth).astype(np.complex128, copy=False)
    _check_same_shape("reconstruction", rec, "truth", tru)
    if min(rec.shape) < 8:
        raise ValueError(f"images must be at least 8 x 8 pixels, got {rec.shape}")
    user_mask = _as_mask(mask, tru.shape, min_pixels=16)
    if not np.any(tru[user_mask]):
        raise ValueError("truth is zero on the mask")
    if not np.any(rec[user_mask]):
        raise ValueError("reconstruction is zero on the mask")
    shape = tru.shape
    yy, xx = np.indices(shape, dtype=float)

    def fit_mask(s: NDArray) -> NDArray:
        m = user_mask & _border_mask(shape, s)
        if m.sum() < 16:
            raise ValueError("the shift leaves too few pixels of the mask to compare")
        return m

    def deramp(g: NDArray) -> NDArray:
        return rec * np.exp(-1j * (g[0] * yy + g[1] * xx))

    shift, _ = register_translation(tru, rec, upsample_factor=upsample_factor)
    m = fit_mask(shift)
    _, gradient = _fit_phase_ramp(shift_image(rec, shift, mode="reflect") * np.conj(tru), m)

    # Gauss-Newton: t ~ a M + b . grad(M) + c . (x - x0) M, with b = -a ds, c = -i a dg
    m = fit_mask(np.abs(shift) + 1)
    t = tru[m]
    yc = yy[m] - yy[m].mean()
    xc = xx[m] - xx[m].mean()
    for _ in range(max_iterations):
        moved, d_y, d_x = _shifted_with_gradient(deramp(gradient), shift)
        mv = moved[m]
        design = np.stack([mv, d_y[m], d_x[m], yc * mv, xc * mv], axis=1)
        norms = np.linalg.norm(design, axis=0)
        norms[norms == 0] = 1.0
        coef, *_ = np.linalg.lstsq(design / norms, t, rcond=None)
        coef = coef / norms
        a = coef[0]
        if a == 0:
            raise ValueError("reconstruction and truth are uncorrelated on the mask")
        step_shift = np.real(-coef[1:3] / a)
        step_ramp = np.real(1j * coef[3:5] / a)
        # damp steps far outside the linear regime
        step_shift = np.clip(step_shift, -0.5, 0.5)
        shift = shift + step_shift
        gradient = gradient + step_ramp
        if np.max(np.abs(step_shift)) < 1e-5 and np.max(np.abs(step_ramp)) * max(shape) < 1e-5:
            break

    m = fit_mask(shift)
    moved = shift_image(deramp(gradient), shift, mode="reflect")
    _, extra = _fit_phase_ramp(moved * np.conj(tru), m, iterations=1)
    gradient = gradient + extra
    moved = moved * np.exp(-1j * (extra[0] * yy + extra[1] * xx))
    scale = np.vdot(moved[m], tru[m]) / np.vdot(moved[m], moved[m]).real
    return {
        "aligned": scale * moved,
        "shift_yx": shift,
        "scale": complex(scale),
        "phase_ramp": gradient,
        "mask": m,
    }


def align_complex(
    reconstruction: ArrayLike,
    truth: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    upsample_factor: int = 20,
) -> NDArray:
    """Bring a reconstruction into the truth's frame: shift, linear phase ramp, complex scale.

    The shift is found by upsampled cross-correlation, then refined (with the phase
    ramp, alternately) by minimising ``min_a ||a * shift(rec) - truth||`` on the mask.
    The ramp is fitted to the phase of ``shift(rec) * conj(truth)`` (see
    :func:`remove_phase_ramp`), and the global complex scale is the least-squares
    ``a = sum(truth * conj(rec)) / sum(|rec|^2)`` on the mask.

    Parameters
    ----------
    reconstruction, truth : ndarray
        2D complex (or real) images of the same shape.
    mask : ndarray of bool, optional
        Pixels of the truth's frame used for the fits (e.g. :func:`illuminated_mask`).
        Pixels within the shift (+1) of the edges are always left out.
    upsample_factor : int
        Precision of the initial cross-correlation (the refinement goes further).

    Returns
    -------
    ndarray
        The aligned reconstruction (complex), comparable pixel by pixel with ``truth``.
    """
    return _align(reconstruction, truth, mask, upsample_factor)["aligned"]


def complex_errors(
    reconstruction: ArrayLike,
    truth: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    upsample_factor: int = 20,
) -> dict[str, Any]:
    """Errors of a complex reconstruction after :func:`align_complex`.

    Parameters
    ----------
    reconstruction, truth : ndarray
        2D complex images of the same shape.
    mask : ndarray of bool, optional
        Pixels where the errors are computed (and the alignment fitted); pixels within
        the shift (+1) of the edges are always left out.
    upsample_factor : int
        Precision of the initial cross-correlation.

    Returns
    -------
    dict
        ``phase_rmse`` (rad, RMS of ``angle(aligned * conj(truth))``), ``amplitude_rmse``
        (RMS of ``|aligned| - |truth|``), ``complex_nrmse`` (``||a rec - truth|| /
        ||truth||``), ``shift_yx`` (the shift registering the reconstruction on the truth,
        pixels), ``scale`` (the complex ``a``), ``phase_ramp`` (``(gy, gx)`` rad/pixel of
        the reconstruction relative to the truth) and ``n_pixels`` (pixels compared).
    """
    result = _align(reconstruction, truth, mask, upsample_factor)
    tru = _as_image("truth", truth).astype(np.complex128, copy=False)
    m = result["mask"]
    aligned, t = result["aligned"][m], tru[m]
    phase_difference = np.angle(aligned * np.conj(t))
    return {
        "phase_rmse": float(np.sqrt(np.mean(phase_difference**2))),
        "amplitude_rmse": float(np.sqrt(np.mean((np.abs(aligned) - np.abs(t)) ** 2))),
        "complex_nrmse": float(np.linalg.norm(aligned - t) / np.linalg.norm(t)),
        "shift_yx": tuple(float(s) for s in result["shift_yx"]),
        "scale": result["scale"],
        "phase_ramp": tuple(float(g) for g in result["phase_ramp"]),
        "n_pixels": int(m.sum()),
    }


# ------------------------------------------------------------------------------ real images


def _data_range(truth: NDArray, data_range: float | None) -> float:
    if data_range is None:
        data_range = float(truth.max() - truth.min())
        if data_range == 0:
            raise ValueError("truth is constant: give data_range explicitly")
    elif not np.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a positive number, got {data_range}")
    return float(data_range)


def psnr(
    image: ArrayLike,
    truth: ArrayLike,
    *,
    data_range: float | None = None,
    mask: ArrayLike | None = None,
) -> float:
    """Peak signal-to-noise ratio (dB) of a real image against the truth.

    Parameters
    ----------
    image, truth : ndarray
        Real 2D images of the same shape (e.g. phase maps after :func:`align_complex`).
    data_range : float, optional
        Peak-to-peak range of the signal; by default ``truth.max() - truth.min()`` (on
        the mask), not the dtype range that skimage would assume.
    mask : ndarray of bool, optional
        Pixels compared (all by default).

    Returns
    -------
    float
        ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images.
    """
    image = _as_real("image", image)
    truth = _as_real("truth", truth)
    _check_same_shape("image", image, "truth", truth)
    m = _as_mask(mask, truth.shape)
    data_range = _data_range(truth[m], data_range)
    mse = float(np.mean((image[m] - truth[m]) ** 2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / mse))


def ssim(image: ArrayLike, truth: ArrayLike, *, data_range: float | None = None) -> float:
    """Mean structural similarity of a real image to the truth (wraps skimage).

    Parameters
    ----------
    image, truth : ndarray
        Real 2D images of the same shape, at least 7 x 7.
    data_range : float, optional
        Peak-to-peak range of the signal; by default ``truth.max() - truth.min()``.

    Returns
    -------
    float
        :func:`skimage.metrics.structural_similarity`, 1 for identical images.
    """
    from skimage.metrics import structural_similarity

    image = _as_real("image", image)
    truth = _as_real("truth", truth)
    _check_same_shape("image", image, "truth", truth)
    if min(truth.shape) < 7:
        raise ValueError(f"ssim needs images of at least 7 x 7 pixels, got {truth.shape}")
    return float(structural_similarity(truth, image, data_range=_data_range(truth, data_range)))


# ------------------------------------------------------------------ Fourier ring correlation


def half_bit_threshold(n_pixels_per_ring: ArrayLike) -> NDArray:
    """Half-bit information threshold for FRC (van Heel & Schatz 2005).

    ``T(n) = (0.2071 + 1.9102 / sqrt(n)) / (1.2071 + 0.9102 / sqrt(n))``, where ``n`` is
    the number of Fourier pixels in the ring: 1 for ``n = 1``, tending to 0.1716 for
    large ``n``. Rings with fewer than one pixel get the threshold 1.

    Parameters
    ----------
    n_pixels_per_ring : array_like
        Number of pixels in each ring.

    Returns
    -------
    ndarray
        Threshold for each ring.
    """
    n = np.asarray(n_pixels_per_ring, dtype=float)
    if np.any(np.isnan(n)) or np.any(n < 0):
        raise ValueError("n_pixels_per_ring must be non-negative numbers")
    root = np.sqrt(np.maximum(n, 1.0))
    return (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)


def _frc(
    image1: ArrayLike, image2: ArrayLike, num_bins: int | None, window: str | None
) -> tuple[NDArray, NDArray, NDArray]:
    a = _as_image("image1", image1)
    b = _as_image("image2", image2)
    _check_same_shape("image1", a, "image2", b)
    if min(a.shape) < 8:
        raise ValueError(f"FRC needs images of at least 8 x 8 pixels, got {a.shape}")
    if num_bins is None:
        num_bins = min(a.shape) // 2
    if int(num_bins) < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    num_bins = int(num_bins)
    win = _window(a.shape, window)
    if win is not None:  # without the mean, the window leaks no DC into the low rings
        a, b = (a - a.mean()) * win, (b - b.mean()) * win
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.fftfreq(a.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    step = 0.5 / num_bins
    ring = np.floor(radius / step + 0.5).astype(int).ravel()
    keep = ring <= num_bins
    ring = ring[keep]
    length = num_bins + 1

    def ring_sum(values: NDArray) -> NDArray:
        return np.bincount(ring, weights=values.ravel()[keep], minlength=length)

    cross = ring_sum((fa * np.conj(fb)).real)
    power = ring_sum(np.abs(fa) ** 2) * ring_sum(np.abs(fb) ** 2)
    counts = np.bincount(ring, minlength=length)
    frc = np.full(length, np.nan)
    np.divide(cross, np.sqrt(power), out=frc, where=power > 0)
    return np.arange(length) * step, frc, counts


def fourier_ring_correlation(
    image1: ArrayLike,
    image2: ArrayLike,
    *,
    num_bins: int | None = None,
    window: str | None = None,
) -> tuple[NDArray, NDArray]:
    """Fourier ring correlation of two 2D images (real or complex).

    ``FRC(r) = Re sum_r F1 F2* / sqrt(sum_r |F1|^2 sum_r |F2|^2)`` over rings of spatial
    frequency. Complex images must share their global phase (align them first): only
    the real part of the cross-correlation counts.

    Parameters
    ----------
    image1, image2 : ndarray
        2D images of the same shape (e.g. two reconstructions from independent halves
        of the data), at least 8 x 8.
    num_bins : int, optional
        Number of rings between 0 and Nyquist (0.5 cycles/pixel); ``min(shape) // 2``
        by default (rings one Fourier pixel wide).
    window : {None, "hann", "tukey"}
        Apodisation applied to both images, after subtracting their means
        (:func:`frc_resolution` uses Hann).

    Returns
    -------
    spatial_frequency : ndarray
        Ring centres, cycles/pixel, from 0 to 0.5 (``num_bins + 1`` values).
    frc : ndarray
        The correlation in each ring (NaN where a ring has no power).
    """
    frequency, frc, _ = _frc(image1, image2, num_bins, window)
    return frequency, frc


def frc_resolution(
    image1: ArrayLike,
    image2: ArrayLike,
    pixel_size: float,
    *,
    num_bins: int | None = None,
    window: str | None = "hann",
    min_ring: int = 2,
) -> dict[str, Any]:
    """Resolution where the FRC first falls below the half-bit threshold.

    Parameters
    ----------
    image1, image2 : ndarray
        2D images of the same shape from independent data (noise realisations).
    pixel_size : float
        Pixel size in metres.
    num_bins : int, optional
        Number of rings (see :func:`fourier_ring_correlation`).
    window : {"hann", "tukey", None}
        Apodisation against edge artefacts.
    min_ring : int
        First ring searched for the crossing (default 2). The lowest rings hold a
        handful of Fourier pixels next to the (removed) mean and the window's own
        spectrum, so a dip there (e.g. a slightly different background level of two
        reconstructions) says nothing about resolution.

    Returns
    -------
    dict
        ``resolution_m`` (``pixel_size / f`` at the first crossing, linearly
        interpolated between rings; ``2 * pixel_size``, Nyquist, if the FRC never
        crosses), ``crossing_frequency`` (cycles/pixel), ``crossed`` (bool),
        ``frequencies`` (cycles/pixel), ``frc``, ``threshold`` and ``n_pixels``.
    """
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"pixel_size must be a positive number of metres, got {pixel_size}")
    if int(min_ring) < 1:
        raise ValueError(f"min_ring must be at least 1, got {min_ring}")
    frequency, frc, counts = _frc(image1, image2, num_bins, window)
    threshold = half_bit_threshold(counts)
    margin = np.where(np.isnan(frc), -1.0, frc - threshold)
    first = min(int(min_ring), len(margin) - 1)
    below = np.nonzero(margin[first:] < 0)[0]
    crossed = below.size > 0
    if crossed:
        k = int(below[0]) + first
        d0, d1 = margin[k - 1], margin[k]
        if d0 > 0:
            fraction = d0 / (d0 - d1)
        else:  # ring 0 (no power) or a low ring below the one searched first that dipped
            fraction = 1.0 if k > 1 else 0.0
        crossing = frequency[k - 1] + fraction * (frequency[k] - frequency[k - 1])
        crossing = max(float(crossing), float(frequency[1]) / 2)
    else:
        crossing = 0.5
    return {
        "resolution_m": float(pixel_size / crossing),
        "crossing_frequency": float(crossing),
        "crossed": bool(crossed),
        "frequencies": frequency,
        "frc": frc,
        "threshold": threshold,
        "n_pixels": counts,
    }


# -------------------------------------------------------------------------------- masks


def illuminated_mask(illumination: ArrayLike, fraction: float = 0.1, erode: int = 0) -> NDArray:
    """Pixels whose illumination exceeds ``fraction`` of its maximum.

    Parameters
    ----------
    illumination : ndarray
        Illumination map (e.g. the sum of ``|probe|^2`` over scan positions); a complex
        array is taken as a wave and its intensity ``|.|^2`` used.
    fraction : float
        Threshold relative to the maximum, in [0, 1).
    erode : int
        Pixels removed from the edge of the mask (binary erosion, 3 x 3 structure).

    Returns
    -------
    ndarray of bool
        The illuminated pixels.
    """
    intensity = _as_image("illumination", illumination, ndim=None)
    if np.iscomplexobj(intensity):
        intensity = np.abs(intensity) ** 2
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if erode < 0 or int(erode) != erode:
        raise ValueError(f"erode must be a non-negative integer, got {erode}")
    peak = intensity.max()
    if peak <= 0:
        raise ValueError("illumination has no positive value")
    mask = intensity > fraction * peak
    if erode:
        structure = ndi.generate_binary_structure(mask.ndim, mask.ndim)
        mask = ndi.binary_erosion(mask, structure=structure, iterations=int(erode))
    return mask
