"""Tests of the streaming ptychography engine (synaps_agent.recon.ptycho)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from synaps_agent.recon.ptycho import PtychoConfig, PtychoEngine, intensity_centre, reconstruct
from synaps_agent.sim_devices.optics import gaussian_probe, poisson_counts, ptycho_pattern
from synaps_agent.sim_devices.phantoms import make_phantom

ENERGY = 8000.0  # eV
PIXEL = 20e-9  # m
N = 32  # frame edge
FWHM_PX = 8.0
PHOTONS = 1e6


def _scan(size: int, step: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    c = np.arange(N // 2 - 4, size - N // 2 + 4 + 1e-9, step)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1)
    return pos + rng.uniform(-jitter, jitter, pos.shape)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: the runtime is stable on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """96 x 96 P-dense object, 625 frames of 32 x 32, step 3 px (+-1 px jitter), 1e6 photons."""
    obj = make_phantom("P-dense", 0, size=96).transmission(ENERGY)
    probe = gaussian_probe(N, PIXEL, FWHM_PX * PIXEL, 5e-4, ENERGY, PHOTONS)
    rng = np.random.default_rng(0)
    pos = _scan(96, 3.0, 1.0, rng)
    frames = np.stack([poisson_counts(ptycho_pattern(obj, probe, p), rng) for p in pos])
    return obj, probe, pos, frames


def _phase_error(snap, obj: np.ndarray, frac: float = 0.1, edge: int = 4) -> float:
    """RMS phase error (rad) after removing a global complex scale, where illuminated."""
    oy, ox = (int(v) for v in snap.origin)
    h, w = obj.shape
    assert oy <= 0 and ox <= 0, "the grid must contain the whole true object"
    rec = snap.object[-oy : -oy + h, -ox : -ox + w]
    ill = snap.illumination[-oy : -oy + h, -ox : -ox + w]
    mask = ill > frac * ill.max()
    mask[:edge] = mask[-edge:] = False
    mask[:, :edge] = mask[:, -edge:] = False
    scale = np.sum(rec[mask] * np.conj(obj[mask])) / np.sum(np.abs(obj[mask]) ** 2)
    diff = np.angle(rec * np.conj(obj) * np.conj(scale))
    return float(np.sqrt(np.mean(diff[mask] ** 2)))


def _probe_overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- #
# forward model and bookkeeping
# --------------------------------------------------------------------------- #
def test_forward_model_matches_simulator(data):
    obj, probe, pos, _ = data
    eng = PtychoEngine(N, probe, object_shape=obj.shape, config=PtychoConfig(grid_margin=20))
    oy, ox = eng.origin
    assert (oy, ox) == (-20, -20)
    eng.object[-oy : -oy + 96, -ox : -ox + 96] = torch.from_numpy(obj)
    sel = pos[::37]
    model = eng.predict(sel)
    truth = np.stack([ptycho_pattern(obj, probe, p) for p in sel])
    np.testing.assert_allclose(model, truth, rtol=2e-4, atol=2e-3 * truth.max() * 1e-3)
    # the coverage map conserves the probe power (Fourier shifts are unitary)
    eng.add_frames(np.zeros((len(sel), N, N), np.uint32), sel)
    snap = eng.snapshot()
    expected = len(sel) * np.sum(np.abs(snap.probe) ** 2)
    assert snap.illumination.sum() == pytest.approx(expected, rel=1e-4)


def test_duplicates_replace(data):
    _, probe, pos, frames = data
    eng = PtychoEngine(N, probe, config=PtychoConfig(normalize_probe=False))
    eng.add_frames(frames[:10], pos[:10], ids=range(10))
    eng.add_frames(frames[10:20], pos[3:13], ids=range(3, 13))
    assert eng.num_frames == 13
    snap = eng.snapshot()
    assert snap.num_frames == 13
    np.testing.assert_allclose(snap.positions[3], pos[3])  # id 3 now has position pos[3]
    np.testing.assert_allclose(snap.positions[5], pos[5])
    slot = eng.ids.index(5)
    stored = torch.fft.fftshift(eng._amp[slot]).numpy() ** 2
    np.testing.assert_allclose(stored, frames[12], rtol=1e-5)  # replaced, not the old frame
    # the coverage map counts each id once
    expected = 13 * np.sum(np.abs(snap.probe) ** 2)
    assert snap.illumination.sum() == pytest.approx(expected, rel=1e-4)


def test_invalid_input_raises(data):
    _, probe, pos, frames = data
    eng = PtychoEngine(N, probe)
    bad = frames[:2].astype(np.float32)
    bad[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        eng.add_frames(bad, pos[:2])
    with pytest.raises(ValueError, match=r"frames must have shape \(k, 32, 32\)"):
        eng.add_frames(np.zeros((2, 30, 32)), pos[:2])
    with pytest.raises(ValueError, match="negative counts"):
        eng.add_frames(-np.ones((1, N, N)), pos[:1])
    with pytest.raises(ValueError, match=r"positions_px must have shape \(2, 2\)"):
        eng.add_frames(frames[:2], pos[:3])
    with pytest.raises(ValueError, match="positions_px contains NaN"):
        eng.add_frames(frames[:1], [[np.inf, 3.0]])
    with pytest.raises(ValueError, match="ids"):
        eng.add_frames(frames[:2], pos[:2], ids=[1])
    with pytest.raises(ValueError, match="probe_guess must have the frame shape"):
        PtychoEngine(N, probe[:-1])
    with pytest.raises(ValueError, match="algorithm"):
        PtychoConfig(algorithm="dm")
    assert eng.num_frames == 0  # nothing was half-added


def test_dlpack_input(data):
    _, probe, pos, frames = data

    class Wrapped:
        """A foreign array exposing only the DLPack protocol."""

        def __init__(self, t: torch.Tensor) -> None:
            self._t = t

        def __dlpack__(self, **kwargs):
            return self._t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._t.__dlpack_device__()

    ref = PtychoEngine(N, probe)
    ref.add_frames(frames[:8], pos[:8])
    eng = PtychoEngine(N, probe)
    eng.add_frames(torch.from_numpy(frames[:4].astype(np.float32)), torch.from_numpy(pos[:4]))
    eng.add_frames(Wrapped(torch.from_numpy(frames[4:8])), Wrapped(torch.from_numpy(pos[4:8])))
    assert eng.num_frames == 8
    torch.testing.assert_close(eng._amp[:8], ref._amp[:8])
    np.testing.assert_allclose(eng.positions, pos[:8])


# --------------------------------------------------------------------------- #
# the object grid
# --------------------------------------------------------------------------- #
def test_grid_grows_and_keeps_reconstruction(data):
    _, probe, pos, frames = data
    near = np.all(pos < 45, axis=1)  # a corner of the scan
    far = ~near
    eng = PtychoEngine(N, probe, config=PtychoConfig(batch_size=16))
    eng.add_frames(frames[near], pos[near])
    eng.run_epochs(3)
    before = eng.snapshot()
    assert before.object.shape[0] < 96  # the grid covers only the first positions
    lo = pos[near].min(axis=0)
    assert np.all(before.origin <= np.floor(lo + 0.5) - N // 2)

    eng.add_frames(frames[far], pos[far])  # windows leave the grid: it must grow
    after = eng.snapshot()
    assert after.object.shape[0] > before.object.shape[0]
    assert after.object.shape[1] > before.object.shape[1]
    off = before.origin - after.origin
    assert np.all(off >= 0)
    h, w = before.object.shape
    np.testing.assert_array_equal(
        after.object[off[0] : off[0] + h, off[1] : off[1] + w], before.object
    )
    # new area is free space
    assert np.all(after.object[:, off[1] + w :] == 1)
    # every window (in caller coordinates) lies inside the grown grid
    corner = np.floor(pos + 0.5).astype(int) - N // 2 - after.origin
    assert corner.min() >= 0
    assert np.all(corner + N <= np.array(after.object.shape))
    # the coverage map is where the probe went, in caller coordinates
    iy, ix = np.unravel_index(np.argmax(after.illumination), after.illumination.shape)
    peak = np.array([iy, ix]) + after.origin
    assert np.all(peak >= pos.min(axis=0) - 2) and np.all(peak <= pos.max(axis=0) + 2)
    err = eng.iterate(5)
    assert np.isfinite(err)


# --------------------------------------------------------------------------- #
# convergence
# --------------------------------------------------------------------------- #
def test_rpie_converges_known_probe(data):
    obj, probe, pos, frames = data
    # batch 32; alpha 0.05 (the old default; the new default 0.3 gives 0.035 rad here)
    cfg = PtychoConfig(algorithm="rpie", alpha=0.05, beta_probe=0.0)
    eng = PtychoEngine(N, probe, config=cfg)
    eng.add_frames(frames, pos)
    first = eng.run_epochs(1)
    last = eng.run_epochs(49)
    snap = eng.snapshot()
    err = _phase_error(snap, obj)  # measured 0.016 rad
    assert last < 0.05 * first
    assert last < 5e-4  # the Poisson floor is ~3.3e-4
    assert err < 0.03, err
    assert snap.num_iterations == 50 * 20


def test_rpie_converges_wrong_probe_with_refinement(data):
    obj, probe, pos, frames = data
    guess = gaussian_probe(N, PIXEL, 1.2 * FWHM_PX * PIXEL, np.inf, ENERGY, PHOTONS)
    assert _probe_overlap(guess, probe) < 0.9
    cfg = PtychoConfig(algorithm="rpie", batch_size=64, alpha=0.02, beta_probe=0.5)
    snap = reconstruct(frames, pos, guess, epochs=60, config=cfg)
    err = _phase_error(snap, obj)  # measured 0.036 rad
    assert err < 0.06, err
    assert _probe_overlap(snap.probe, probe) > 0.999
    # without probe refinement the wrong probe leaves a large error
    cfg0 = PtychoConfig(algorithm="rpie", batch_size=64, alpha=0.02, beta_probe=0.0)
    snap0 = reconstruct(frames, pos, guess, epochs=20, config=cfg0)
    assert _phase_error(snap0, obj) > 3 * err


def _shifted(probe: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``probe`` moved by ``(dy, dx)`` pixels (Fourier shift)."""
    ky = np.fft.fftfreq(probe.shape[0])[:, None]
    kx = np.fft.fftfreq(probe.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (ky * dy + kx * dx))
    return np.fft.ifft2(np.fft.fft2(probe) * ramp).astype(probe.dtype)


def _drifted_engine(data, tolerance: float, drift) -> tuple[PtychoEngine, np.ndarray]:
    """An engine holding the true object and probe, both then moved by ``drift`` pixels
    (a pair blind ptychography cannot tell from the true one)."""
    obj, probe, _, _ = data
    cfg = PtychoConfig(grid_margin=20, center_probe=True, center_probe_tolerance=tolerance)
    eng = PtychoEngine(N, probe, object_shape=obj.shape, config=cfg)
    oy, ox = eng.origin
    eng.object[-oy : -oy + 96, -ox : -ox + 96] = torch.from_numpy(obj)
    true_object = eng.object.numpy().copy()
    eng.probe = torch.from_numpy(_shifted(probe, *drift))
    eng.object = torch.from_numpy(_shifted(true_object, *drift))
    return eng, true_object


def test_center_probe_moves_a_drifted_pair_back(data):
    _, probe, pos, _ = data
    eng, true_object = _drifted_engine(data, 0.0, (0.3, -0.7))
    centre = eng._probe_centre
    assert np.allclose(centre, N // 2, atol=0.05)  # the guess (the true probe) is centred
    assert np.allclose(intensity_centre(eng.probe) - centre, [0.3, -0.7], atol=0.02)
    sel = pos[::29]
    before = eng.predict(sel)
    drifted_object = eng.object
    eng.object = torch.from_numpy(true_object)
    one_alone = eng.predict(sel)  # the object moved back alone
    eng.object = drifted_object
    eng._recentre_probe()
    assert np.allclose(intensity_centre(eng.probe), centre, atol=1e-3)
    scale = np.abs(probe).max()
    np.testing.assert_allclose(eng.probe.numpy(), probe, atol=1e-3 * scale)
    np.testing.assert_allclose(eng.object.numpy(), true_object, atol=1e-3)
    # moving both leaves the diffraction patterns they predict as they were (to 0.5 % of
    # the peak: the object's shift is not periodic within a window); moving one
    # alone changes them by 3.5 %
    peak = before.max()
    assert np.abs(eng.predict(sel) - before).max() < 0.01 * peak
    assert np.abs(one_alone - before).max() > 0.02 * peak


def test_center_probe_acts_only_past_its_tolerance(data):
    eng, _ = _drifted_engine(data, 0.3, (0.6, 0.45))  # 0.75 px off: back to 0.3 px
    centre = eng._probe_centre
    eng._recentre_probe()
    drift = intensity_centre(eng.probe) - centre
    assert np.hypot(*drift) == pytest.approx(0.3, abs=0.01)
    assert drift[1] / drift[0] == pytest.approx(0.45 / 0.6, rel=0.05)  # straight back
    eng, _ = _drifted_engine(data, 0.3, (0.2, 0.1))  # within the tolerance: untouched
    probe, obj = eng.probe.clone(), eng.object.clone()
    eng._recentre_probe()
    assert torch.equal(eng.probe, probe) and torch.equal(eng.object, obj)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="center_probe_tolerance"):
            PtychoConfig(center_probe_tolerance=bad)


def test_center_probe_keeps_the_refined_probe_in_place(data):
    """Refining a wrong probe guess with ``center_probe``: the probe's intensity centre
    stays within the tolerance of the guess's and the reconstruction converges."""
    obj, probe, pos, frames = data
    guess = gaussian_probe(N, PIXEL, 1.2 * FWHM_PX * PIXEL, np.inf, ENERGY, PHOTONS)
    cfg = PtychoConfig(algorithm="rpie", batch_size=64, alpha=0.02, beta_probe=0.5,
                       center_probe=True)  # fmt: skip
    snap = reconstruct(frames, pos, guess, epochs=60, config=cfg)
    drift = intensity_centre(torch.from_numpy(snap.probe)) - intensity_centre(
        torch.from_numpy(guess)
    )
    assert np.hypot(*drift) <= cfg.center_probe_tolerance + 0.01
    assert _phase_error(snap, obj) < 0.06
    assert _probe_overlap(snap.probe, probe) > 0.999


def test_lsqml_converges(data):
    obj, probe, pos, frames = data
    cfg = PtychoConfig(algorithm="lsqml", batch_size=64, alpha=1.0, beta_probe=0.0)
    snap = reconstruct(frames, pos, probe, epochs=50, config=cfg)
    assert _phase_error(snap, obj) < 0.03  # measured 0.011 rad
    assert snap.error < 5e-4


def test_epie_reduces_error(data):
    obj, probe, pos, frames = data
    cfg = PtychoConfig(algorithm="epie", batch_size=16, alpha=1.0, beta_probe=0.0)
    eng = PtychoEngine(N, probe, config=cfg)
    eng.add_frames(frames, pos)
    first = eng.run_epochs(1)
    last = eng.run_epochs(9)
    assert last < 0.3 * first
    assert _phase_error(eng.snapshot(), obj) < 0.45  # measured 0.35 rad


def test_streaming_matches_batch(data):
    obj, probe, pos, frames = data
    cfg = PtychoConfig(algorithm="rpie", beta_probe=0.0, seed=1)
    rng = np.random.default_rng(5)
    order = rng.permutation(len(pos))
    eng = PtychoEngine(N, probe, config=cfg)
    # frames arrive shuffled in chunks, some twice, while the engine iterates
    for start in range(0, len(order), 60):
        chunk = order[start : start + 60]
        eng.add_frames(frames[chunk], pos[chunk], ids=chunk)
        eng.add_frames(frames[chunk[:5]], pos[chunk[:5]], ids=chunk[:5])  # duplicates
        eng.iterate(4)
    assert eng.num_frames == len(pos)
    assert sorted(eng.ids) == list(range(len(pos)))
    # compared where both have converged: at 45 / 50 epochs both still fall steeply
    # (0.05 / 0.03 rad on one CPU, 0.02 / 0.02 on another), at 90 / 100 they level off
    # (measured 0.0064 / 0.0071 rad)
    eng.run_epochs(90)
    stream_err = _phase_error(eng.snapshot(), obj)
    batch = reconstruct(frames, pos, probe, epochs=100, config=cfg)
    batch_err = _phase_error(batch, obj)
    assert stream_err < 0.015
    assert stream_err < 1.5 * batch_err + 0.005, (stream_err, batch_err)


def test_concurrent_add_and_iterate(data):
    _, probe, pos, frames = data
    eng = PtychoEngine(N, probe, config=PtychoConfig(batch_size=16))
    eng.add_frames(frames[:20], pos[:20], ids=range(20))
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                eng.iterate(1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for start in range(20, len(pos), 50):
            sl = slice(start, start + 50)
            eng.add_frames(frames[sl], pos[sl], ids=range(start, min(start + 50, len(pos))))
            snap = eng.snapshot()
            assert snap.object.shape == snap.illumination.shape
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert eng.num_iterations > 0
    snap = eng.snapshot()
    assert snap.num_frames == len(pos)
    assert np.all(np.isfinite(snap.object))


def test_position_correction_reduces_position_error(data):
    obj, probe, pos, frames = data
    rng = np.random.default_rng(7)
    wrong = pos + rng.normal(0, 0.7, pos.shape)
    cfg = PtychoConfig(beta_probe=0.0, position_correction=True)
    eng = PtychoEngine(N, probe, config=cfg)
    eng.add_frames(frames, wrong)
    eng.run_epochs(40)
    corrected = eng.positions
    before = np.sqrt(np.mean((wrong - pos) ** 2))
    after = np.sqrt(np.mean((corrected - pos - np.mean(corrected - pos, axis=0)) ** 2))
    assert after < 0.75 * before, (before, after)  # measured 0.67 -> 0.32 px


# --------------------------------------------------------------------------- #
# regression: moderate size, wrong probe, small batches
# --------------------------------------------------------------------------- #
def test_lsqml_wrong_probe_small_batches_does_not_diverge():
    """160 x 160 P-dense, 48 x 48 frames, perfect raster, wrong probe refined, batch 8.

    With the old 1e-2 preconditioner regularisation LSQ-ML diverged here (1.6 rad after
    5 epochs, probe overlap 0.28) and the probe power drifted; now it converges and
    the probe keeps the total intensity of the data (the gauge of the probe / object
    scale ambiguity).
    """
    size, n, fwhm = 160, 48, 15.0
    phantom = make_phantom("P-dense", 0, size=size)
    pixel = phantom.pixel_size
    obj = phantom.transmission(ENERGY)
    probe = gaussian_probe(n, pixel, fwhm * pixel, 5e-4, ENERGY, PHOTONS)
    guess = gaussian_probe(n, pixel, 1.2 * fwhm * pixel, np.inf, ENERGY, PHOTONS)
    assert _probe_overlap(guess, probe) < 0.9
    rng = np.random.default_rng(0)
    c = np.arange(n // 2, size - n // 2 + 1e-9, 4.5)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1)
    frames = np.stack([poisson_counts(ptycho_pattern(obj, probe, p), rng) for p in pos])
    cfg = PtychoConfig(algorithm="lsqml", batch_size=8)  # its defaults: optimal steps, momentum
    assert (cfg.alpha, cfg.beta_probe, cfg.momentum) == (1.0, 1.0, 0.5)
    eng = PtychoEngine(n, guess, object_shape=obj.shape, config=cfg)
    eng.add_frames(frames, pos)
    eng.run_epochs(10)
    snap = eng.snapshot()
    err = _phase_error(snap, obj)  # measured 0.19 rad (old engine: 1.6 rad)
    assert err < 0.3, err
    assert _probe_overlap(snap.probe, probe) > 0.99
    assert np.all(np.isfinite(snap.object))
    power = float(np.sum(np.abs(snap.probe) ** 2))
    assert power == pytest.approx(float(np.median(frames.sum(axis=(1, 2)))), rel=1e-3)


def test_momentum_speeds_up_a_sparse_object():
    """P-sparse (large uniform particles in air): the phase of a particle relative to the
    air around it is a low spatial frequency that local updates correct slowly; the
    object's heavy-ball momentum halves the error after 15 epochs (known probe)."""
    size = 128
    obj = make_phantom("P-sparse", 0, size=size).transmission(ENERGY)
    probe = gaussian_probe(N, PIXEL, FWHM_PX * PIXEL, 5e-4, ENERGY, PHOTONS)
    rng = np.random.default_rng(0)
    pos = _scan(size, 3.0, 1.0, rng)
    frames = np.stack([poisson_counts(ptycho_pattern(obj, probe, p), rng) for p in pos])
    errors = {}
    for momentum in (0.0, 0.5):
        cfg = PtychoConfig(beta_probe=0.0, momentum=momentum)
        errors[momentum] = _phase_error(reconstruct(frames, pos, probe, epochs=15, config=cfg), obj)
    # measured 0.078 rad without, 0.041 with momentum 0.5
    assert errors[0.5] < 0.06 and errors[0.5] < 0.7 * errors[0.0], errors
    with pytest.raises(ValueError, match="momentum"):
        PtychoConfig(momentum=1.0)


def test_snapshot_sums_the_coverage_map_without_the_lock(data):
    """A snapshot holds the engine's lock only to copy the state: while it sums the
    coverage map (a pass over every frame) another thread can take the lock (iterate),
    and the map is the one of the copied probe and positions, equal to a direct sum."""
    obj, probe, pos, frames = data
    engine = PtychoEngine(N, probe, config=PtychoConfig(batch_size=16, seed=0))
    engine.add_frames(frames[:200], pos[:200])
    engine.iterate(3)
    expected_probe = engine.probe.clone()
    summed = _direct_coverage(engine, expected_probe, engine.positions)
    free_while_summing = []
    original = engine._illumination_of

    def try_lock():
        got = engine._lock.acquire(timeout=5)
        free_while_summing.append(got)
        if got:
            engine._lock.release()

    def summing(*args):
        other = threading.Thread(target=try_lock)
        other.start()
        other.join(10)
        return original(*args)

    engine._illumination_of = summing
    snap = engine.snapshot()
    assert free_while_summing == [True]
    np.testing.assert_allclose(snap.illumination, summed, rtol=1e-4, atol=1e-6 * summed.max())
    np.testing.assert_array_equal(snap.probe, expected_probe.numpy())
    assert snap.num_frames == 200 and snap.num_iterations == 3
    light = engine.snapshot(coverage=False)  # the copies only
    assert light.illumination.size == 0 and free_while_summing == [True]
    np.testing.assert_array_equal(light.object, snap.object)


def _direct_coverage(engine, probe, positions):
    """sum over frames of |probe shifted to the frame's position|^2 on the engine's grid."""
    out = np.zeros(engine.object.shape, np.float32)
    ny, nx = engine.frame_shape
    probe_f = torch.fft.fft2(probe)
    for p in positions:
        centre = np.floor(p + 0.5)
        r, c = (centre - [ny // 2, nx // 2] - engine.origin).astype(int)
        ramp = torch.as_tensor(
            np.exp(-2j * np.pi * ((p - centre)[0] * np.fft.fftfreq(ny)[:, None]
                                  + (p - centre)[1] * np.fft.fftfreq(nx)[None, :]))
        ).to(probe.dtype)  # fmt: skip
        shifted = torch.fft.ifft2(probe_f * ramp)
        out[r : r + ny, c : c + nx] += (shifted.abs() ** 2).numpy()
    return out
