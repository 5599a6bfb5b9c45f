"""A compact U-Net segmenter with MC-dropout and temperature-scaled probabilities.

Input
-----
A complex ptychographic reconstruction (already cropped to the field of interest) and,
optionally, its coverage map (the engine's ``illumination``, any scale). Both go through
:func:`prepare_input`, which is used identically for training and inference:

* **global phase / amplitude reference.** A reconstruction is only defined up to a
  global complex factor (probe refinement can rotate and rescale the object). The image
  is first rotated by the phase of its (coverage-weighted) circular mean so that no phase
  wraps, then the reference phase is the *mode* of the phase histogram (0.01 rad bins,
  smoothed) of the well-measured pixels (coverage >= 0.5 of its maximum) whose phase lies
  in the upper half (all phases above the median). All electrode phases delay the wave,
  so the least-delayed common material, pore (vacuum, phase 0), is that mode; the
  median alone would land on the particles in a dense electrode. The reference
  amplitude is the median amplitude of the pixels within 0.05 rad of the reference
  phase. Channel 0 is ``(phase - ref) / 0.5``, channel 1 ``(amplitude / ref_amp - 1) /
  0.05`` (clipped to +-10).
* **coverage.** Channel 2 is ``coverage / coverage.max()`` (all ones without a coverage
  map), so the network knows where the data are thin.

Why a U-Net (and not a mixed-scale dense network)
-------------------------------------------------
Mixed-scale dense networks (MS-D, Pelt & Sethian 2018) reach U-Net accuracy with very
few parameters by dilated convolutions at full resolution, which is attractive for
tiny training sets. Here the training set is simulated and cheap, and the runtime budget
(384 x 384 with 8 MC samples in about a second on two CPU cores) matters more: an MS-D
net does all its work at full resolution with dense concatenations (memory and FLOPs grow
with depth x width at every pixel, and dilated convs are slow on CPU), whereas a U-Net
gets its large receptive field (needed to tell a secondary-phase inclusion from a
particle, and the particle interior from binder, ~40 px context) cheaply at 1/2-1/8
resolution.

MC-dropout is done in the head so that the samples are cheap: the backbone runs once and
only a 1x1 head (channel dropout p=0.2 -> 1x1 conv to 32 -> ReLU -> channel dropout ->
1x1 conv to 4 logits) is evaluated per sample, batched. Channel (not element-wise)
dropout keeps the random masks tiny: element-wise masks over 8 x 384 x 384 x 48 values
cost more than the convolutions. Running the full decoder per sample (the
decoder's channel dropout, p=0.1, also sampling; ``mc_scope="all"``) costs ~3x more per
sample and is available but not the default: 384 x 384 x 8 samples would take
seconds on two CPU cores.

Architecture: 3 poolings (so inputs are reflect-padded to a multiple of 8), widths
16-32-48-64, two 3x3 conv + BatchNorm + ReLU per block, bilinear upsampling + 1x1 conv,
skip concatenation, channel dropout (``Dropout2d``, p=0.1, a regulariser in training)
before every decoder block, the dropout head above. About 0.22 M parameters (< 1 MB of
float32 weights).

Probabilities are ``mean_s softmax(logits_s / T)`` over ``mc_samples`` dropout samples;
the temperature ``T`` is fitted on a validation set (minimum NLL) by
:mod:`synaps_agent.segment.train`.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F  # noqa: N812

from synaps_agent.compute import resolve_device
from synaps_agent.segment.base import (
    SegmentationResult,
    check_reconstruction,
    predictive_entropy,
    uncertainty_map,
)

__all__ = [
    "UNet",
    "UNetSegmenter",
    "load_default_segmenter",
    "load_segmenter",
    "prepare_input",
]

NUM_CLASSES = 4
IN_CHANNELS = 3
PAD_MULTIPLE = 8
WEIGHTS_NAME = "unet.pt"
META_NAME = "unet.json"

_PHASE_SCALE = 0.5
_AMP_SCALE = 0.05
_WELL_MEASURED = 0.5


# --------------------------------------------------------------------------- input


def phase_reference(image: np.ndarray, coverage: np.ndarray | None = None) -> complex:
    """Complex reference factor ``a * exp(i phi)`` of the pore (vacuum) level.

    See the module docstring; dividing the image by it puts pore at phase 0, amplitude 1.
    """
    z = np.asarray(image).astype(np.complex128)
    if coverage is None:
        cov = np.ones(z.shape)
    else:
        cov = np.asarray(coverage, dtype=np.float64)
        peak = cov.max()
        cov = cov / peak if peak > 0 else np.ones(z.shape)
    good = cov >= _WELL_MEASURED
    if good.sum() < 16:
        good = cov > 0 if (cov > 0).sum() >= 16 else np.ones(z.shape, bool)
    zg = z[good]
    mean = np.sum(zg)
    rot = mean / abs(mean) if abs(mean) > 0 else 1.0 + 0j
    phase = np.angle(zg / rot)
    upper = phase[phase >= np.median(phase)]
    lo, hi = float(upper.min()), float(upper.max())
    nbins = max(int(math.ceil((hi - lo) / 0.01)), 1)
    hist, edges = np.histogram(upper, bins=nbins, range=(lo, hi + 1e-9))
    hist = ndi.gaussian_filter1d(hist.astype(np.float64), 2.0, mode="constant")
    k = int(np.argmax(hist))
    ref_phase = 0.5 * (edges[k] + edges[k + 1])
    near = np.abs(phase - ref_phase) <= 0.05
    amp = np.abs(zg)
    ref_amp = float(np.median(amp[near])) if near.any() else float(np.median(amp))
    if not ref_amp > 0:
        ref_amp = 1.0
    return complex(ref_amp * rot * np.exp(1j * ref_phase))


def prepare_input(image: np.ndarray, coverage: np.ndarray | None = None) -> np.ndarray:
    """The (3, H, W) float32 network input of a complex reconstruction (module docstring)."""
    check_reconstruction(image, coverage)
    z = np.asarray(image)
    if not np.iscomplexobj(z):
        z = z.astype(np.complex64)
    ref = phase_reference(z, coverage)
    zn = z.astype(np.complex128) / ref
    phase = np.angle(zn) / _PHASE_SCALE
    amp = np.clip((np.abs(zn) - 1.0) / _AMP_SCALE, -10.0, 10.0)
    if coverage is None:
        cov = np.ones(z.shape)
    else:
        cov = np.clip(np.asarray(coverage, dtype=np.float64), 0.0, None)
        peak = cov.max()
        cov = cov / peak if peak > 0 else np.zeros(z.shape)
    return np.stack([phase, amp, cov]).astype(np.float32)


# --------------------------------------------------------------------------- network


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Compact U-Net with a small MC-dropout head (see the module docstring).

    ``forward(x, samples=1)`` returns logits of shape ``(samples * B, C, H, W)`` (sample
    index outermost); ``H`` and ``W`` must be multiples of ``2 ** (len(widths) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = IN_CHANNELS,
        num_classes: int = NUM_CLASSES,
        widths: tuple[int, ...] = (16, 32, 48, 64),
        dropout: float = 0.1,
        head_dropout: float = 0.2,
        head_width: int = 32,
    ) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.dropout = float(dropout)
        self.head_dropout = float(head_dropout)
        self.head_width = int(head_width)
        self.enc = nn.ModuleList()
        cin = in_channels
        for w in self.widths:
            self.enc.append(_Block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_skip in reversed(self.widths[:-1]):
            self.up.append(nn.Conv2d(cin, w_skip, 1))
            self.dec.append(_Block(2 * w_skip, w_skip))
            cin = w_skip
        self.drop = nn.Dropout2d(self.dropout)
        self.head = nn.Sequential(
            nn.Dropout2d(self.head_dropout),
            nn.Conv2d(cin, self.head_width, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(self.head_dropout),
            nn.Conv2d(self.head_width, num_classes, 1),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder + decoder: the full-resolution feature map fed to the head."""
        skips = []
        for i, block in enumerate(self.enc):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = self.drop(skips[-1])
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([up(x), skip], dim=1)
            x = dec(self.drop(x))
        return x

    def forward(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        f = self.features(x)
        if samples > 1:
            f = f.repeat(samples, 1, 1, 1)
        return self.head(f)


def set_mc_dropout(model: nn.Module, scope: str = "head") -> None:
    """Eval mode (BatchNorm frozen) with the chosen dropout layers sampling.

    ``scope="head"``: only the head's dropout samples (the backbone runs once);
    ``"all"``: the decoder's channel dropout samples too (the backbone runs per sample).
    """
    model.eval()
    head = getattr(model, "head", None)
    for m in model.modules():
        if isinstance(m, nn.Dropout | nn.Dropout2d):
            in_head = head is not None and any(m is h for h in head.modules())
            if scope == "all" or in_head:
                m.train()


def mc_logits(
    model: UNet,
    x: torch.Tensor,
    samples: int,
    *,
    seed: int = 0,
    scope: str = "head",
    chunk: int = 8,
) -> torch.Tensor:
    """Logits ``(samples, B, C, H, W)`` with MC-dropout (deterministic for a given seed).

    ``x`` must already be padded to a multiple of 8. ``samples <= 1`` means one
    deterministic pass (dropout off). See :func:`set_mc_dropout` for ``scope``.
    """
    if scope not in ("head", "all"):
        raise ValueError(f"scope must be 'head' or 'all', got {scope!r}")
    b = x.shape[0]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if samples <= 1:
            model.eval()
            return model(x).unsqueeze(0)
        set_mc_dropout(model, scope)
        try:
            feats = model.features(x) if scope == "head" else None
            out = []
            for s0 in range(0, samples, chunk):
                k = min(chunk, samples - s0)
                if feats is not None:
                    lg = _head_samples(model.head, feats, k)
                else:
                    lg = torch.cat([model(x) for _ in range(k)], dim=0)
                out.append(lg.reshape(k, b, -1, *lg.shape[-2:]))
            return torch.cat(out, dim=0)
        finally:
            model.eval()


def _head_samples(head: nn.Sequential, feats: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` MC-dropout samples of the head, logits ``(k * B, C, H, W)``.

    The same as ``head(feats.repeat(k, 1, 1, 1))`` in train-mode dropout, but each
    sample's channel-dropout masks are folded into the weights of the 1x1 convolutions
    that follow them (dropping input channel ``c`` of a 1x1 conv = zeroing column ``c``
    of its weight), so the features are never copied or masked: 3-4x faster on a CPU.
    """
    kinds = [type(m) for m in head]
    if kinds != [nn.Dropout2d, nn.Conv2d, nn.ReLU, nn.Dropout2d, nn.Conv2d]:
        return head(feats.repeat(k, 1, 1, 1))
    drop1, conv1, _, drop2, conv2 = head
    b, cin, h, w = feats.shape

    def masks(p: float, n: int) -> torch.Tensor:
        if p <= 0:
            return torch.ones(k, n, dtype=feats.dtype, device=feats.device)
        keep = torch.rand(k, n, device=feats.device) >= p
        return keep.to(feats.dtype) / (1.0 - p)

    w1 = conv1.weight[:, :, 0, 0][None] * masks(drop1.p, cin)[:, None, :]  # (k, hw, cin)
    w2 = conv2.weight[:, :, 0, 0][None] * masks(drop2.p, w1.shape[1])[:, None, :]  # (k, C, hw)
    f = feats.reshape(b, 1, cin, h * w)
    hidden = torch.matmul(w1[None], f)  # (b, k, hw, P)
    hidden.add_(conv1.bias.reshape(1, 1, -1, 1)).clamp_(min=0.0)
    out = torch.matmul(w2[None], hidden).add_(conv2.bias.reshape(1, 1, -1, 1))  # (b, k, C, P)
    return out.transpose(0, 1).reshape(k * b, -1, h, w)


def mc_probabilities(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over samples of ``softmax(logits / T)`` and the mean per-sample entropy."""
    log_p = torch.log_softmax(logits / float(temperature), dim=2)
    p = log_p.exp()
    mean = p.mean(dim=0)
    ent = -(p * log_p).sum(dim=2).mean(dim=0)
    return mean, ent


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> tuple[torch.Tensor, tuple]:
    """Reflect-pad the last two dims up to a multiple; returns the crop slices too."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    pads = (left, pw - left, top, ph - top)
    if ph or pw:
        # reflect needs pad < size; fall back to replicate for tiny images
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, pads, mode=mode)
    return x, (slice(top, top + h), slice(left, left + w))


# --------------------------------------------------------------------------- segmenter


class UNetSegmenter:
    """:class:`~synaps_agent.segment.base.Segmenter` of a trained :class:`UNet`.

    Parameters
    ----------
    model : UNet
        Trained network.
    temperature : float
        Temperature of the softmax (fitted on validation data).
    mc_samples : int
        Number of MC-dropout samples (1 = deterministic).
    device : str, optional
        ``"cpu"`` or ``"cuda"`` (or any torch device); None:
        :func:`~synaps_agent.compute.resolve_device` (the ``SYNAPS_DEVICE`` setting).
    seed : int
        Seed of the dropout masks (results are reproducible).
    metadata : dict, optional
        Training/architecture record (from the JSON next to the weights).
    """

    num_classes = NUM_CLASSES

    def __init__(
        self,
        model: UNet,
        temperature: float = 1.0,
        *,
        mc_samples: int = 8,
        device: str | None = None,
        seed: int = 0,
        mc_scope: str = "head",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ValueError(f"temperature must be positive, got {temperature}")
        if int(mc_samples) < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.temperature = float(temperature)
        self.mc_samples = int(mc_samples)
        self.seed = int(seed)
        if mc_scope not in ("head", "all"):
            raise ValueError(f"mc_scope must be 'head' or 'all', got {mc_scope!r}")
        self.mc_scope = mc_scope
        self.metadata = dict(metadata or {})

    def logits(self, image: np.ndarray, coverage: np.ndarray | None = None) -> np.ndarray:
        """Raw MC logits ``(samples, C, H, W)`` (before temperature)."""
        x = torch.from_numpy(prepare_input(image, coverage))[None].to(self.device)
        x, (sy, sx) = pad_to_multiple(x)
        lg = mc_logits(self.model, x, self.mc_samples, seed=self.seed, scope=self.mc_scope)
        return lg[:, 0, :, sy, sx].float().cpu().numpy()

    def segment(self, image: np.ndarray, coverage: np.ndarray | None = None) -> SegmentationResult:
        """Segment a complex reconstruction; see :class:`SegmentationResult`."""
        check_reconstruction(image, coverage)
        x = torch.from_numpy(prepare_input(image, coverage))[None].to(self.device)
        x, (sy, sx) = pad_to_multiple(x)
        lg = mc_logits(self.model, x, self.mc_samples, seed=self.seed, scope=self.mc_scope)[
            :, :, :, sy, sx
        ]
        mean, sample_ent = mc_probabilities(lg, self.temperature)
        probs = mean[0].float().cpu().numpy()
        probs /= probs.sum(axis=0, keepdims=True)
        entropy = predictive_entropy(probs)
        mi = np.clip(entropy - sample_ent[0].float().cpu().numpy(), 0.0, None)
        return SegmentationResult(
            probabilities=probs.astype(np.float32),
            labels=probs.argmax(axis=0).astype(np.int8),
            entropy=entropy,
            mutual_information=mi.astype(np.float32),
            uncertainty=uncertainty_map(entropy, self.num_classes, coverage),
        )


# --------------------------------------------------------------------------- loading


def save_weights(model: UNet, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write ``state_dict`` (tensors only) to ``path`` and ``metadata`` to ``.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, path)
    meta = dict(metadata)
    meta.setdefault("architecture", {})
    meta["architecture"].update(
        {
            "widths": list(model.widths),
            "dropout": model.dropout,
            "head_dropout": model.head_dropout,
            "head_width": model.head_width,
            "in_channels": IN_CHANNELS,
            "num_classes": NUM_CLASSES,
        }
    )
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def _build(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> UNet:
    arch = meta.get("architecture", {})
    model = UNet(
        in_channels=int(arch.get("in_channels", IN_CHANNELS)),
        num_classes=int(arch.get("num_classes", NUM_CLASSES)),
        widths=tuple(arch.get("widths", (16, 32, 48, 64))),
        dropout=float(arch.get("dropout", 0.1)),
        head_dropout=float(arch.get("head_dropout", 0.2)),
        head_width=int(arch.get("head_width", 32)),
    )
    model.load_state_dict(state)
    return model.eval()


def load_segmenter(
    path: str | Path, device: str | None = None, mc_samples: int | None = None
) -> UNetSegmenter:
    """Load weights (``torch.load(weights_only=True)``) and the JSON next to them."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    state = torch.load(path, map_location="cpu", weights_only=True)
    return UNetSegmenter(
        _build(meta, state),
        temperature=float(meta.get("temperature", 1.0)),
        mc_samples=int(mc_samples or meta.get("mc_samples", 8)),
        device=device,
        metadata=meta,
    )


def load_default_segmenter(
    device: str | None = None, mc_samples: int | None = None
) -> UNetSegmenter:
    """The shipped segmenter (``synaps_agent/segment/weights/unet.pt`` + ``unet.json``)."""
    root = resources.files("synaps_agent.segment").joinpath("weights")
    weights = root.joinpath(WEIGHTS_NAME)
    meta_file = root.joinpath(META_NAME)
    if not weights.is_file() or not meta_file.is_file():
        raise FileNotFoundError(
            f"no shipped U-Net weights at {weights}; run `python -m synaps_agent.segment.train`"
        )
    with resources.as_file(weights) as wpath, resources.as_file(meta_file) as mpath:
        meta = json.loads(Path(mpath).read_text())
        state = torch.load(wpath, map_location="cpu", weights_only=True)
    return UNetSegmenter(
        _build(meta, state),
        temperature=float(meta.get("temperature", 1.0)),
        mc_samples=int(mc_samples or meta.get("mc_samples", 8)),
        device=device,
        metadata=meta,
    )
