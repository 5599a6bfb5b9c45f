"""Train the U-Net segmenter on reconstructions made by our own ptychography engine.

Dataset (:func:`generate_dataset`)
----------------------------------
Each *scan* is a pure function of ``(family, seed)``: a phantom (``P-sparse`` or
``P-dense``), either built at ``size=crop`` (features scaled down with the image) or cut
as a random ``crop x crop`` window out of the full 384 x 384 phantom (the native feature
scale of the live demo); 32 x 32 frames of a Gaussian probe (FWHM 8-10 px, 0.5 mrad
curvature as in the tests), a raster with step 3 px and +-1 px uniform jitter, Poisson
noise at a fluence drawn from {1e4, 1e5, 1e6} photons/frame. About half of the scans are
partial (only the first 30-80 % of the raster rows, or a random rectangle of positions,
as during a live scan). The scan is reconstructed with :class:`PtychoEngine` (rPIE, the
true probe as the guess, probe refinement on or off) and snapshots are taken after 2, 6
and 20 epochs (partially converged and converged). Each snapshot is cropped to the
phantom frame with ``origin`` and stored as the complex object and the coverage
(``illumination``), so that :func:`synaps_agent.segment.unet.prepare_input` is applied
identically at training and inference.

Seeds: 100-199 training, 200-219 validation/temperature calibration, 300+ test.

Training (:func:`train`)
------------------------
Class-weighted cross-entropy (weights ~ 1/sqrt(class frequency), normalised), pixels
with coverage < 5 % of the maximum ignored, random 64 x 64 crops with flips/rot90 and a
small random residual phase offset (+-0.08 rad), Adam with a one-cycle schedule (10 %
warm-up, cosine decay), fixed seeds.
Then the temperature ``T`` is fitted on the validation set (bounded scalar minimisation
of the NLL of the MC-dropout mean probabilities over the measured pixels) and the
validation metrics (mean/per-class IoU, ECE before/after, uncertainty AUROC) are written
into the JSON next to the weights.

Usage::

    python -m synaps_agent.segment.train --data /tmp/synaps_seg_data.npz \
        --out synaps_agent/segment/weights/unet.pt
    python -m synaps_agent.segment.train --smoke --out /tmp/x/unet.pt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch.nn import functional as F  # noqa: N812

from synaps_agent.segment import scoring
from synaps_agent.segment.unet import (
    NUM_CLASSES,
    UNet,
    mc_logits,
    mc_probabilities,
    pad_to_multiple,
    prepare_input,
    save_weights,
)

__all__ = [
    "calibrate_temperature",
    "evaluate",
    "generate_dataset",
    "main",
    "simulate_scan",
    "train",
]

FAMILIES = ("P-sparse", "P-dense")
ENERGY_EV = 8000.0
PIXEL_M = 20e-9
FRAME = 32
STEP_PX = 3.0
JITTER_PX = 1.0
FLUENCES = (1e4, 1e5, 1e6)
DEFAULT_DATA = "/tmp/synaps_seg_data.npz"
TRAIN_SEEDS = range(100, 200)
VAL_SEEDS = range(200, 220)
IGNORE = -1
COVERAGE_IGNORE = 0.05
CALIBRATION_COVERAGE = 0.1


# --------------------------------------------------------------------------- data


def simulate_scan(
    family: str,
    seed: int,
    *,
    crop: int = 128,
    epochs: Sequence[int] = (2, 6, 20),
    fluence: float | None = None,
    partial: str | None = None,
    native_scale: bool | None = None,
    fwhm_px: float | None = None,
    beta_probe: float | None = None,
) -> list[dict[str, Any]]:
    """Simulate and reconstruct one scan; one record per snapshot epoch.

    Every unspecified setting is drawn from ``np.random.default_rng([seed, family])``, so
    the output is a pure function of the arguments. Records hold ``image`` (complex64,
    ``crop x crop``), ``coverage`` (float32), ``labels`` (int8) and the settings.
    """
    from synaps_agent.recon.ptycho import PtychoConfig, PtychoEngine
    from synaps_agent.sim_devices.optics import gaussian_probe, poisson_counts, ptycho_pattern
    from synaps_agent.sim_devices.phantoms import make_phantom

    fam = FAMILIES.index(family)
    rng = np.random.default_rng([int(seed), fam])
    if native_scale is None:
        native_scale = bool(rng.random() < 0.5)
    if native_scale:
        ph = make_phantom(family, seed)
        full = ph.labels.shape[0]
        oy, ox = rng.integers(0, full - crop + 1, 2)
        sl = (slice(oy, oy + crop), slice(ox, ox + crop))
        obj = ph.transmission(ENERGY_EV)[sl]
        labels = ph.labels[sl]
    else:
        rng.integers(0, 2, 2)  # keep the stream aligned with the other branch
        ph = make_phantom(family, seed, size=crop)
        obj = ph.transmission(ENERGY_EV)
        labels = ph.labels
    if fluence is None:
        fluence = float(rng.choice(FLUENCES))
    if fwhm_px is None:
        fwhm_px = float(rng.uniform(8.0, 10.0))
    if beta_probe is None:
        beta_probe = float(rng.choice([0.0, 0.5]))
    if partial is None:
        u = rng.random()
        partial = "rows" if u < 0.35 else ("rect" if u < 0.5 else "full")
    probe = gaussian_probe(FRAME, PIXEL_M, fwhm_px * PIXEL_M, 5e-4, ENERGY_EV, fluence)
    c = np.arange(FRAME // 2 - 4, crop - FRAME // 2 + 4 + 1e-9, STEP_PX)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1)
    pos = pos + rng.uniform(-JITTER_PX, JITTER_PX, pos.shape)
    if partial == "rows":
        keep = np.arange(len(pos)) < int(rng.uniform(0.3, 0.8) * len(pos))
    elif partial == "rect":
        lo = rng.uniform(0, 0.5 * crop, 2)
        hi = lo + rng.uniform(0.35 * crop, 0.6 * crop, 2)
        keep = np.all((pos >= lo) & (pos <= hi), axis=1)
    else:
        keep = np.ones(len(pos), bool)
    if keep.sum() < 4:
        keep[: max(4, len(pos) // 4)] = True
    pos = pos[keep]
    frames = np.stack([poisson_counts(ptycho_pattern(obj, probe, p), rng) for p in pos])
    cfg = PtychoConfig(beta_probe=beta_probe, seed=int(seed))
    eng = PtychoEngine(FRAME, probe, object_shape=obj.shape, config=cfg)
    eng.add_frames(frames, pos)
    records = []
    done = 0
    for ep in sorted(int(e) for e in epochs):
        eng.run_epochs(ep - done)
        done = ep
        snap = eng.snapshot()
        o0, o1 = (int(v) for v in snap.origin)
        image = np.ones((crop, crop), np.complex64)
        cov = np.zeros((crop, crop), np.float32)
        # the grid contains the phantom frame (object_shape) unless it grew; clip anyway
        # caller pixel p is object index p - origin
        ys, xs = max(0, o0), max(0, o1)
        ye = min(crop, o0 + snap.object.shape[0])
        xe = min(crop, o1 + snap.object.shape[1])
        image[ys:ye, xs:xe] = snap.object[ys - o0 : ye - o0, xs - o1 : xe - o1]
        cov[ys:ye, xs:xe] = snap.illumination[ys - o0 : ye - o0, xs - o1 : xe - o1]
        records.append(
            dict(
                image=image,
                coverage=cov,
                labels=labels.astype(np.int8),
                family=fam,
                seed=int(seed),
                fluence=float(fluence),
                epochs=ep,
                converged=ep == max(epochs),
                partial=partial,
                native=bool(native_scale),
                fwhm=fwhm_px,
                beta_probe=beta_probe,
                error=float(snap.error),
            )
        )
    return records


def _scan_job(args: tuple) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    family, seed, crop, epochs = args
    return simulate_scan(family, seed, crop=crop, epochs=epochs)


def generate_dataset(
    path: str | Path = DEFAULT_DATA,
    *,
    train_seeds: Sequence[int] = range(100, 160),
    val_seeds: Sequence[int] = VAL_SEEDS,
    crop: int = 128,
    epochs: Sequence[int] = (2, 6, 20),
    workers: int = 2,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Simulate the training/validation reconstructions and save them as ``.npz``.

    Deterministic: every scan depends only on ``(family, seed)`` and the records are
    stored in job order whatever the number of workers.
    """
    from tqdm import tqdm

    jobs = [
        (f, s, crop, tuple(epochs)) for s in list(train_seeds) + list(val_seeds) for f in FAMILIES
    ]
    t0 = time.time()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(
                tqdm(pool.map(_scan_job, jobs), total=len(jobs), desc="scans", disable=not progress)
            )
    else:
        results = [_scan_job(j) for j in tqdm(jobs, desc="scans", disable=not progress)]
    recs = [r for res in results for r in res]
    val = set(int(s) for s in val_seeds)
    data = {
        "image": np.stack([r["image"] for r in recs]),
        "coverage": np.stack([r["coverage"] for r in recs]),
        "labels": np.stack([r["labels"] for r in recs]),
        "split": np.array([1 if r["seed"] in val else 0 for r in recs], np.int8),
    }
    for key in (
        "family",
        "seed",
        "fluence",
        "epochs",
        "converged",
        "partial",
        "native",
        "fwhm",
        "beta_probe",
        "error",
    ):
        data[key] = np.array([r[key] for r in recs])
    data["generation_seconds"] = np.array(time.time() - t0)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **data)
    return data


def load_dataset(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _inputs(data: dict[str, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([prepare_input(data["image"][i], data["coverage"][i]) for i in idx])
    y = data["labels"][idx].astype(np.int64)
    y = np.where(x[:, 2] < COVERAGE_IGNORE, IGNORE, y)
    return x, y


# --------------------------------------------------------------------------- training


def _augment(x: torch.Tensor, y: torch.Tensor, crop: int, g: torch.Generator):
    b, _, h, w = x.shape
    xs, ys = [], []
    for i in range(b):
        oy = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        ox = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        xi = x[i, :, oy : oy + crop, ox : ox + crop]
        yi = y[i, oy : oy + crop, ox : ox + crop]
        k = int(torch.randint(0, 4, (1,), generator=g))
        xi, yi = torch.rot90(xi, k, (1, 2)), torch.rot90(yi, k, (0, 1))
        if bool(torch.randint(0, 2, (1,), generator=g)):
            xi, yi = xi.flip(2), yi.flip(1)
        xi = xi.clone()
        # residual error of the phase reference: +-0.08 rad (channel is phase / 0.5)
        xi[0] += (torch.rand((), generator=g) - 0.5) * 0.32
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def class_weights(y: np.ndarray) -> np.ndarray:
    """Weights ~ 1 / sqrt(frequency), mean 1 over the classes."""
    counts = np.bincount(y[y >= 0].ravel(), minlength=NUM_CLASSES).astype(np.float64)
    w = 1.0 / np.sqrt(np.maximum(counts / counts.sum(), 1e-4))
    return (w / w.mean()).astype(np.float32)


def predict_logits(model: UNet, x: np.ndarray, samples: int, seed: int = 0) -> np.ndarray:
    """MC logits ``(samples, N, C, H, W)`` of prepared inputs (one image at a time)."""
    out = []
    for i in range(len(x)):
        xt, (sy, sx) = pad_to_multiple(torch.from_numpy(x[i : i + 1]))
        out.append(mc_logits(model, xt, samples, seed=seed + i)[:, :, :, sy, sx].numpy())
    return np.concatenate(out, axis=1)


def _nll(logits: np.ndarray, y: np.ndarray, mask: np.ndarray, t: float) -> float:
    p, _ = mc_probabilities(torch.from_numpy(logits), t)
    p = p.numpy()  # (N, C, H, W)
    idx = np.clip(y, 0, NUM_CLASSES - 1)
    pt = np.take_along_axis(p, idx[:, None], axis=1)[:, 0]
    return float(-np.log(np.clip(pt[mask], 1e-12, None)).mean())


def calibrate_temperature(logits: np.ndarray, y: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Fit ``T`` minimising the NLL of the MC-mean probabilities (bounded, log scale)."""
    res = minimize_scalar(
        lambda lt: _nll(logits, y, mask, math.exp(lt)),
        bounds=(math.log(0.25), math.log(8.0)),
        method="bounded",
        options={"xatol": 1e-3},
    )
    t = float(math.exp(res.x))
    return {
        "temperature": t,
        "nll_before": _nll(logits, y, mask, 1.0),
        "nll_after": _nll(logits, y, mask, t),
    }


def evaluate(
    logits: np.ndarray, labels: np.ndarray, coverage: np.ndarray, temperature: float
) -> dict[str, Any]:
    """Metrics over the measured pixels (coverage >= 10 % of each image's maximum)."""
    p, _ = mc_probabilities(torch.from_numpy(logits), temperature)
    p = p.numpy()
    pred = p.argmax(axis=1)
    peak = coverage.reshape(len(coverage), -1).max(axis=1)[:, None, None]
    mask = coverage >= CALIBRATION_COVERAGE * np.maximum(peak, 1e-30)
    probs = np.moveaxis(p, 1, 0)  # (C, N, H, W)
    ent = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=0)
    truth = labels.astype(np.int64)
    iou = scoring.per_class_iou(pred, truth, NUM_CLASSES, mask)
    return {
        "mean_iou": float(np.nanmean(iou)),
        "per_class_iou": [float(v) for v in iou],
        "pixel_accuracy": float((pred == truth)[mask].mean()),
        "ece": float(scoring.expected_calibration_error(probs, truth, mask=mask)),
        "uncertainty_auroc": float(scoring.uncertainty_auroc(ent, pred, truth, mask)),
        "num_images": int(len(labels)),
    }


def train(
    data: dict[str, np.ndarray],
    out: str | Path,
    *,
    steps: int = 2000,
    batch_size: int = 8,
    crop: int = 64,
    lr: float = 3e-3,
    widths: tuple[int, ...] = (16, 32, 48, 64),
    dropout: float = 0.1,
    mc_samples: int = 8,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, calibrate the temperature on the validation split, write weights + JSON."""
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    tr = np.flatnonzero(data["split"] == 0)
    va = np.flatnonzero(data["split"] == 1)
    xtr, ytr = _inputs(data, tr)
    weights = class_weights(ytr)
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    model = UNet(widths=widths, dropout=dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    wt = torch.from_numpy(weights)
    crop = min(crop, xtr.shape[-1], xtr.shape[-2])
    model.train()
    bar = tqdm(range(steps), desc="train", disable=not progress)
    losses = []
    for _ in bar:
        idx = torch.randint(0, len(tr), (batch_size,), generator=g)
        xb, yb = _augment(xtr_t[idx], ytr_t[idx], crop, g)
        loss = F.cross_entropy(model(xb), yb, weight=wt, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.3f}")
    train_seconds = time.time() - t0
    model.eval()

    # temperature on the validation split, measured pixels only
    xva, yva = _inputs(data, va)
    lva = predict_logits(model, xva, mc_samples, seed=seed)
    cov = xva[:, 2]
    mask = (cov >= CALIBRATION_COVERAGE) & (yva >= 0)
    cal = calibrate_temperature(lva, yva, mask)
    labels = data["labels"][va]
    conv = data["converged"][va].astype(bool)
    metrics: dict[str, Any] = {
        "validation_all": {
            "before": evaluate(lva, labels, cov, 1.0),
            "after": evaluate(lva, labels, cov, cal["temperature"]),
        },
    }
    if conv.any():
        metrics["validation_converged"] = evaluate(
            lva[:, conv], labels[conv], cov[conv], cal["temperature"]
        )
        for fl in np.unique(data["fluence"][va][conv]):
            sel = conv & (data["fluence"][va] == fl)
            metrics[f"validation_converged_fluence_{fl:.0e}"] = evaluate(
                lva[:, sel], labels[sel], cov[sel], cal["temperature"]
            )
    meta = {
        "temperature": cal["temperature"],
        "calibration": cal,
        "mc_samples": int(mc_samples),
        "class_weights": [float(w) for w in weights],
        "input": "prepare_input: (phase - pore-mode ref)/0.5, (amp/ref - 1)/0.05, cov/max",
        "phases": ["pore", "carbon_binder", "active", "secondary"],
        "training": {
            "steps": int(steps),
            "batch_size": int(batch_size),
            "crop": int(crop),
            "lr": float(lr),
            "seed": int(seed),
            "optimizer": "Adam + OneCycle",
            "loss": "class-weighted cross-entropy, coverage < 5% ignored",
            "train_images": int(len(tr)),
            "val_images": int(len(va)),
            "train_seconds": round(train_seconds, 1),
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
            "num_parameters": int(sum(p.numel() for p in model.parameters())),
            "torch": torch.__version__,
        },
        "metrics": metrics,
    }
    if extra_meta:
        meta["training"].update(extra_meta)
    save_weights(model, out, meta)
    return meta


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="synaps train-segmenter", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out",
        default=str(Path(__file__).parent / "weights" / "unet.pt"),
        help="weights file (a .json with the same stem is written next to it)",
    )
    ap.add_argument(
        "--data", default=DEFAULT_DATA, help="dataset .npz (generated there if missing)"
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training length in passes over the training images (default: 2000 steps of 8 crops)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (overrides --epochs; default 2000, as for the shipped weights)",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="64 x 64 crops per step")
    ap.add_argument(
        "--train-seeds",
        type=int,
        default=60,
        help="number of training seeds from 100 (per phantom family)",
    )
    ap.add_argument("--workers", type=int, default=2, help="processes for data generation")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny end-to-end run (2+1 small scans, 20 steps) for CI",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    progress = not args.no_progress
    if args.smoke:
        data = generate_dataset(
            None,
            train_seeds=[100],
            val_seeds=[200],
            crop=64,
            epochs=(2,),
            workers=1,
            progress=progress,
        )
        meta = train(
            data,
            args.out,
            steps=args.steps or 20,
            batch_size=4,
            crop=32,
            mc_samples=2,
            seed=args.seed,
            threads=1,
            progress=progress,
            extra_meta={"smoke": True},
        )
    else:
        if os.path.exists(args.data):
            data = load_dataset(args.data)
        else:
            data = generate_dataset(
                args.data,
                train_seeds=range(100, 100 + args.train_seeds),
                workers=args.workers,
                progress=progress,
            )
        bs = args.batch_size
        n_train = int((data["split"] == 0).sum())
        if args.steps is not None:
            steps = args.steps
        elif args.epochs is not None:
            # one "epoch" = as many 64 x 64 crops as fit in the training images
            per_epoch = n_train * (data["image"].shape[-1] // 64) ** 2
            steps = max(1, math.ceil(args.epochs * per_epoch / bs))
        else:
            steps = 2000
        meta = train(
            data,
            args.out,
            steps=steps,
            batch_size=bs,
            seed=args.seed,
            threads=args.threads,
            progress=progress,
            extra_meta={
                "data": str(args.data),
                "generation_seconds": float(data.get("generation_seconds", np.nan)),
            },
        )
    print(
        json.dumps(
            {"out": str(args.out), "temperature": meta["temperature"], "metrics": meta["metrics"]},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
