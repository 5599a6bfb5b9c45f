"""The simulated adaptive experiment: the agent against a raster scan, same budget.

Both scans run in a real RunEngine on the simulated beamline, with live
reconstruction, segmentation and (for the adaptive scan) the agent in the loop; every
raw and derived run goes to the catalog. Quality is scored against the phantom's ground
truth in two ways:

* live (:func:`score_run`): every stored segmentation snapshot of the live
  reconstruction. How far the live reconstruction got depends on the machine's load, so
  this curve varies from run to run and is kept as a secondary figure;
* fair (:func:`offline_iou_curve`): the stored frames of the run, prefixes of its
  exposure sequence (the budgets), each reconstructed offline with one fixed engine
  configuration (seed, initial probe, epochs, one torch thread), segmented with the same
  segmenter and scored over the same region. The same frames give the same number, and
  strategies are compared at equal budgets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from bluesky import RunEngine

from .agent import (
    AgentConfig,
    ScanSpace,
    StoppingRule,
    axis_from_motor,
    make_strategy,
    timing_from_detector,
)
from .callbacks.agent_feed import AgentFeed
from .callbacks.analysis import DocumentSink
from .callbacks.ptycho import PtychoGeometry, PtychoReconstruction, place_in_frame
from .callbacks.segmentation import LiveSegmentation, normalize_reconstruction
from .plans.adaptive import adaptive_ptycho_scan
from .plans.patterns import raster_positions
from .plans.scans import ptycho_scan
from .recon.ptycho import PtychoConfig, PtychoEngine
from .segment.base import ProbabilisticSegmenter, Segmenter
from .segment.scoring import mean_iou
from .sim_devices.beamline import make_sim_beamline
from .sim_devices.phantoms import make_phantom

__all__ = [
    "STRATEGY_NAMES",
    "ScanOutcome",
    "OfflineScoring",
    "default_segmenter",
    "mean_curve",
    "offline_iou_curve",
    "offline_iou_scores",
    "particle_diameters_um",
    "run_adaptive_comparison",
    "run_strategies",
    "score_run",
    "segmentation_ceiling",
]


@dataclass
class ScanOutcome:
    """What one strategy achieved."""

    strategy: str
    raw_uid: str
    exposures: int
    positions: np.ndarray
    #: the beamline's simulated seconds by what they were spent on ("move", "exposure",
    #: "readout", ...); ``simulated_seconds`` is their sum
    seconds_by_kind: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (frames, mean IoU)
    #: (exposures, [IoU of each engine seed]) of the offline reconstructions of the
    #: stored frames (:func:`offline_iou_scores`); ``fair_curve`` is their mean
    fair_scores: list[tuple[int, list[float]]] = field(default_factory=list)
    final_labels: np.ndarray | None = None
    final_uncertainty: np.ndarray | None = None
    final_origin: tuple[int, int] = (0, 0)
    final_phase: np.ndarray | None = None
    particles: dict | None = None
    event_seconds: np.ndarray | None = None  # simulated clock at each exposure's event
    region_half: float = 0.0  # the region scanned: [-region_half, region_half]**2, stage units
    probe_radius: float = 0.0  # half the probe's FWHM, stage units
    #: decisions taken before the live map had caught up (the wait for it timed out)
    stale_maps: int = 0
    #: the segmenter's IoU on the phantom's true object (:func:`segmentation_ceiling`)
    ceiling_iou: float = float("nan")

    @property
    def simulated_seconds(self) -> float:
        """The beamline's simulated seconds the scan took (all of ``seconds_by_kind``)."""
        return float(sum(self.seconds_by_kind.values()))

    @property
    def fair_curve(self) -> list[tuple[int, float]]:
        """``[(exposures, mean IoU over the engine seeds), ...]`` of ``fair_scores``."""
        return mean_curve(self.fair_scores)

    @property
    def final_iou(self) -> float:
        """The fair IoU of all exposures (the live one if no fair curve was computed)."""
        curve = self.fair_curve or self.curve
        return curve[-1][1] if curve else float("nan")

    @property
    def live_final_iou(self) -> float:
        """IoU of the last live segmentation snapshot (after the live final epochs)."""
        return self.curve[-1][1] if self.curve else float("nan")

    def time_curve(self, curve: list[tuple[int, float]] | None = None) -> list[tuple[float, float]]:
        """``[(simulated seconds, mean IoU), ...]``: an IoU curve (default: the fair one, else
        the live one) against the time the exposures took (motor travel, settle and
        exposure) on the simulated clock."""
        if curve is None:
            curve = self.fair_curve or self.curve
        if self.event_seconds is None or not len(self.event_seconds):
            return []
        t = self.event_seconds
        return [(float(t[min(max(n, 1), len(t)) - 1]), iou) for n, iou in curve]


def default_segmenter(seed: int = 0) -> Segmenter:
    """The shipped U-Net if its weights are present, else a forest trained right here.

    The forest is trained on noisy transmissions of other phantoms (seeds 500+), in the
    frame of :func:`~synaps_agent.callbacks.segmentation.normalize_reconstruction`.
    """
    try:
        from .segment.unet import load_default_segmenter

        return load_default_segmenter()
    except Exception as exc:  # noqa: BLE001 - no usable weights: the baseline
        import logging

        from .segment.forest import ForestSegmenter

        logging.getLogger(__name__).warning(
            "U-Net weights not usable (%r); training the random-forest baseline instead", exc
        )

        rng = np.random.default_rng(seed)
        images, labels = [], []
        for case, phantom_seed in (("P-sparse", 500), ("P-dense", 501), ("P-dense", 502)):
            phantom = make_phantom(case, phantom_seed, size=128)
            t = phantom.transmission(8000.0)
            noisy = t + rng.normal(0, 0.02, t.shape) + 1j * rng.normal(0, 0.02, t.shape)
            images.append(normalize_reconstruction(noisy))
            labels.append(phantom.labels)
        forest = ForestSegmenter(n_estimators=30, n_jobs=2).fit(images, labels, seed=seed)
        return ProbabilisticSegmenter(forest)


def _truth_in_frame(labels: np.ndarray, origin: tuple[int, int], shape) -> np.ndarray:
    truth = np.zeros(shape, np.int8)
    r0, c0 = origin
    rows = slice(max(0, r0), min(labels.shape[0], r0 + shape[0]))
    cols = slice(max(0, c0), min(labels.shape[1], c0 + shape[1]))
    truth[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0] = labels[rows, cols]
    return truth


def score_run(catalog, raw_uid: str, phantom, roi_pixels: tuple[slice, slice]) -> list:
    """Mean IoU against ground truth of every stored segmentation of ``raw_uid``.

    Returns ``[(frames received, mean IoU), ...]`` over the region of interest (pixels of
    the phantom frame); unmeasured pixels count as whatever the segmenter said there.
    """
    runs = [
        r
        for r in catalog.processed.values()
        if r.start.get("raw_uid") == raw_uid
        and r.start.get("processor", {}).get("name") == "segmentation"
    ]
    if not runs:
        return []
    stream = runs[-1]["segmentation"]
    labels = np.asarray(stream["labels"].read())
    rows = np.asarray(stream["origin_row"].read())
    cols = np.asarray(stream["origin_col"].read())
    frames = np.asarray(stream["num_frames"].read())
    curve = []
    for lab, r0, c0, n in zip(labels, rows, cols, frames, strict=True):
        curve.append((int(n), _roi_iou(lab, (r0, c0), phantom, roi_pixels)))
    return curve


@dataclass(frozen=True)
class OfflineScoring:
    """The fixed reconstruction that scores a run's stored frames (see
    :func:`offline_iou_curve`).

    Attributes
    ----------
    epochs : int
        Passes over the frames of each budget. A pass over fewer frames makes fewer
        mini-batch updates: 100 converge a full raster of the 96 px cases, a scan of half
        as many exposures needs about 300 (P-sparse 410: random at half budget 0.874 at
        100 epochs, 0.910 at 300; the full raster 0.912 and 0.913), which the
        ``autonomy`` benchmark uses (measured with the refined-probe rPIE scorer).
    seed : int
        Seed of the engine's mini-batch order.
    config : PtychoConfig
        Engine settings (its seed is replaced by ``seed``). Default: LSQ-ML with the
        probe held at the run's initial probe (``beta_probe=0``), batches of 16. On the
        simulated beamline that probe is the one the detector used (the metadata's probe
        model), so the score says what the frames tell about the object, without blind
        ptychography's probe / object translation drift. With the probe refined (rPIE,
        the default until 2026-12-06) one engine seed's score of P-sparse 410's random
        scan was 0.865 at 156 exposures against 0.902 and 0.884 for the others; with the
        held probe the three seeds of that scan, of the agent's scan of it and of an
        adaptive P-dense 413 scan are within 0.012 of each other from 156 exposures on
        (at 78, 12.5 % of raster's, they still differ by up to 0.1: few frames leave the
        object underdetermined; docs/benchmarks.md, autonomy). A real beamline's scan,
        whose probe is not known, is scored with the probe refined, e.g. the earlier
        ``PtychoConfig(batch_size=16)``.
    repeats : int
        Reconstructions per budget, with engine seeds ``seed``, ``seed + 1``, ...; the
        score is their mean IoU. One engine seed's score of the same frames moved by up
        to 0.07 at 12.5 % of raster's exposures on the 96 px cases with the earlier
        refined-probe scorer; with the held probe up to 0.1 there, within 0.012 from 25 %
        on (docs/benchmarks.md, autonomy): at 12.5 % more than most margins between
        strategies.
    """

    epochs: int = 100
    seed: int = 0
    config: PtychoConfig = field(
        default_factory=lambda: PtychoConfig(batch_size=16, algorithm="lsqml", beta_probe=0.0)
    )
    repeats: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "repeats"):
            value = getattr(self, name)
            whole = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, bool
            )
            if not (whole and math.isfinite(value) and int(value) == value and value >= 1):
                raise ValueError(f"OfflineScoring.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # frozen: 300.0 is kept as 300


@contextmanager
def _torch_threads(n: int):
    """Run torch with ``n`` intra-op threads (results then do not depend on the machine's
    thread count), restoring the previous setting afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def offline_iou_curve(
    catalog,
    raw_uid: str,
    phantom,
    roi_pixels: tuple[slice, slice],
    segmenter: Segmenter,
    budgets: Sequence[int],
    scoring: OfflineScoring | None = None,
) -> list[tuple[int, float]]:
    """Mean IoU against ground truth of offline reconstructions of a run's stored frames:
    the mean over engine seeds of :func:`offline_iou_scores` (same parameters).

    Returns
    -------
    list of (int, float)
        ``[(exposures, mean IoU), ...]`` in increasing exposures, ending at all of them.
    """
    scores = offline_iou_scores(catalog, raw_uid, phantom, roi_pixels, segmenter, budgets, scoring)
    return mean_curve(scores)


def mean_curve(scores: Sequence[tuple[int, Sequence[float]]]) -> list[tuple[int, float]]:
    """``[(exposures, mean of the seeds' IoUs), ...]`` of :func:`offline_iou_scores`'s
    ``[(exposures, [IoU, ...]), ...]``."""
    return [(int(n), float(np.mean(ious))) for n, ious in scores]


def offline_iou_scores(
    catalog,
    raw_uid: str,
    phantom,
    roi_pixels: tuple[slice, slice],
    segmenter: Segmenter,
    budgets: Sequence[int],
    scoring: OfflineScoring | None = None,
) -> list[tuple[int, list[float]]]:
    """IoU against ground truth of offline reconstructions of a run's stored frames, one
    per engine seed of ``scoring``.

    For each budget ``n`` (and for all of the run's exposures) the first ``n`` stored
    frames, at their read-back positions, are reconstructed from scratch with the fixed
    engine of ``scoring`` (same initial probe from the run's metadata, same epochs, one
    torch thread; once with each of the ``scoring.repeats`` engine seeds), in the pixel
    frame of the region the run planned; segmented like the live snapshots
    (:func:`normalize_reconstruction`, coverage saturated at one probe's peak); and
    scored over ``roi_pixels`` of the phantom frame.
    The result depends only on the stored frames, not on the machine's load; the spread
    of one budget's IoUs over engine seeds is the score's own uncertainty.

    Parameters
    ----------
    catalog
        Catalog holding the raw run.
    raw_uid : str
        The ptychography run.
    phantom
        Ground truth (``labels`` in object pixels).
    roi_pixels : (slice, slice)
        Rows and columns of the phantom frame that are scored.
    segmenter : Segmenter
        The segmenter of the live pipeline.
    budgets : sequence of int
        Exposure counts; those beyond the run's exposures are left out.
    scoring : OfflineScoring, optional
        The fixed reconstruction.

    Returns
    -------
    list of (int, list of float)
        ``[(exposures, [IoU of engine seed scoring.seed, scoring.seed + 1, ...]), ...]``
        in increasing exposures, ending at all of them.
    """
    scoring = scoring or OfflineScoring()
    if any(int(b) < 1 for b in budgets):
        raise ValueError(f"budgets must be positive exposure counts, got {list(budgets)}")
    run = catalog.raw[raw_uid]
    geometry = PtychoGeometry.from_start(dict(run.start))
    if geometry is None:
        raise ValueError(f"run {raw_uid} is not a ptychography run")
    primary = run["primary"]
    frames = np.asarray(primary[geometry.image_key].read(), dtype=np.float32)
    xs = np.asarray(primary[geometry.x_key].read(), dtype=float)
    ys = np.asarray(primary[geometry.y_key].read(), dtype=float)
    positions = np.array([geometry.to_pixels(x, y) for x, y in zip(xs, ys, strict=True)])
    usable = np.array([np.isfinite(f).all() and f.max(initial=0) > 0 for f in frames], bool)
    window = geometry.planned_window(dict(run.start))
    total = len(frames)
    counts = sorted({int(b) for b in budgets if int(b) < total} | {total})
    configs = [
        PtychoConfig(**{**vars(scoring.config), "seed": int(scoring.seed) + k})
        for k in range(int(scoring.repeats))
    ]
    scores = []
    with _torch_threads(1):
        for n in counts:
            keep = usable[:n]
            if not keep.any():
                continue
            ious = [
                _offline_iou(geometry, config, window, frames[:n][keep], positions[:n][keep],
                             int(scoring.epochs), segmenter, phantom, roi_pixels)
                for config in configs
            ]  # fmt: skip
            scores.append((n, [float(v) for v in ious]))
    return scores


def _offline_iou(
    geometry: PtychoGeometry,
    config: PtychoConfig,
    window: tuple[tuple[int, int], tuple[int, int]] | None,
    frames: np.ndarray,
    positions: np.ndarray,
    epochs: int,
    segmenter: Segmenter,
    phantom,
    roi_pixels: tuple[slice, slice],
) -> float:
    """Mean IoU of one offline reconstruction of ``frames`` (see :func:`offline_iou_curve`)."""
    engine = PtychoEngine(geometry.frame_shape, geometry.probe, config=config)
    if window is not None:
        (r0, c0), (h, w) = window
        hr, hc = geometry.frame_shape[0] // 2, geometry.frame_shape[1] // 2
        engine.cover([[r0 + hr, c0 + hc], [r0 + h - hr - 1, c0 + w - hc - 1]])
    engine.add_frames(frames, positions)
    engine.run_epochs(epochs)
    snap = engine.snapshot()
    origin, shape = window or (tuple(int(v) for v in snap.origin), snap.object.shape)
    obj = place_in_frame(snap.object, snap.origin, origin, shape, fill=1.0)
    illumination = np.minimum(
        place_in_frame(snap.illumination, snap.origin, origin, shape, fill=0.0),
        float(np.max(np.abs(snap.probe) ** 2)),
    )
    image = normalize_reconstruction(obj, illumination)
    labels = segmenter.segment(image, coverage=illumination).labels
    return _roi_iou(labels, origin, phantom, roi_pixels)


def segmentation_ceiling(
    phantom, segmenter: Segmenter, roi_pixels: tuple[slice, slice], energy_ev: float = 8000.0
) -> float:
    """Mean IoU of ``segmenter`` on the phantom's true transmission over ``roi_pixels``.

    What a perfect reconstruction would score: scans that reach it are limited by the
    segmenter, not by where they measured. A reconstruction's slight blur can score up
    to about 0.01 above it (greedy's dense scans of the uncertain spots of P-sparse 2 and
    3 did). On the 96 px ``autonomy`` phantoms with the shipped U-Net: P-sparse 410
    0.917, P-dense 411 0.792, where raster's final fair IoU is 0.929 and 0.789.

    Parameters
    ----------
    phantom : Phantom
        With ``transmission(energy_ev)`` and ``labels`` on the same pixel grid.
    segmenter : Segmenter
    roi_pixels : (slice, slice)
        The region scored, in the phantom's pixels.
    energy_ev : float
        Photon energy of the transmission (the ptychography detector's).

    Returns
    -------
    float
    """
    image = normalize_reconstruction(phantom.transmission(float(energy_ev)))
    return _roi_iou(segmenter.segment(image).labels, (0, 0), phantom, roi_pixels)


def _roi_iou(labels: np.ndarray, origin, phantom, roi_pixels: tuple[slice, slice]) -> float:
    """Mean IoU of ``labels`` (an image whose pixel (0, 0) is the phantom's ``origin``)
    against the phantom's labels over ``roi_pixels`` of the phantom frame."""
    r0, c0 = (int(v) for v in origin)
    truth = _truth_in_frame(phantom.labels, (r0, c0), labels.shape)
    mask = np.zeros(labels.shape, bool)
    rs, cs = roi_pixels
    mask[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0] = True
    return float(mean_iou(labels, truth, mask=mask))


STRATEGY_NAMES = ("raster", "random", "greedy", "agent")


def run_adaptive_comparison(
    catalog,
    *,
    case: str = "P-sparse",
    size: int = 128,
    seed: int = 300,
    budget_fraction: float = 0.5,
    segmenter: Segmenter | None = None,
    log=print,
    progress: bool = False,
) -> dict[str, ScanOutcome]:
    """Raster scan of a region, then the agent on the same region with a fraction of
    raster's exposures; both with live reconstruction and segmentation (``progress``: a
    bar over each scan's exposures).

    Returns the outcome per strategy (``"raster"``, ``"agent"``).
    """
    return run_strategies(
        catalog,
        ("raster", "agent"),
        case=case,
        size=size,
        seed=seed,
        budget_fraction=budget_fraction,
        segmenter=segmenter,
        log=log,
        progress=progress,
    )


def run_strategies(
    catalog,
    strategies=STRATEGY_NAMES,
    *,
    case: str = "P-sparse",
    size: int = 128,
    seed: int = 300,
    budget_fraction: float = 0.5,
    segmenter: Segmenter | None = None,
    final_epochs: int = 60,
    batch_size: int = 8,
    agent_options: dict | None = None,
    scoring: OfflineScoring | None = OfflineScoring(),
    score_fractions: Sequence[float] = (0.125, 0.25, 0.375, 0.5, 1.0),
    map_timeout: float = 60.0,
    iterations_per_frame: int = 8,
    log=print,
    progress: bool = False,
) -> dict[str, ScanOutcome]:
    """Scan one region of a phantom with each strategy, live reconstruction and
    segmentation in the loop, every run stored in ``catalog``.

    ``"raster"`` is a full snake raster at about 70 % probe overlap; the other strategies
    (``"agent"``, ``"random"``, ``"greedy"``, see
    :data:`~synaps_agent.agent.STRATEGIES`) run :func:`adaptive_ptycho_scan` from the
    same coarse seed lattice with ``budget_fraction`` of raster's exposures, on the same
    beamline (same detector noise seed, motors and clock).

    The live reconstruction follows a deterministic schedule (chunks of frames that end
    where the decisions are taken, ``iterations_per_frame`` mini-batch updates per frame),
    and before each decision an adaptive strategy waits (at most ``map_timeout`` s) for
    the live uncertainty map to reflect every exposure taken so far
    (:func:`~synaps_agent.plans.adaptive.wait_for_map`): which points it measures does not
    depend on the machine's load, and the same seed gives the same scan.

    Each run is scored twice against ground truth: live (every stored segmentation
    snapshot, :func:`score_run`) and, unless ``scoring`` is None, fairly
    (:func:`offline_iou_curve` with ``scoring``) at the budgets of the seed lattice,
    ``score_fractions`` of raster's exposures (by default every eighth up to a half, and
    all) and the adaptive budget. ``progress``
    draws a bar over each scan's exposures (:class:`~synaps_agent.callbacks.progress.ScanProgress`).
    Every outcome also carries the segmenter's IoU on the phantom's true object over the
    same region (``ceiling_iou``, :func:`segmentation_ceiling`).

    Returns
    -------
    dict
        :class:`ScanOutcome` per strategy, with the IoU curves against ground truth and
        the simulated time (motor travel, settle and exposure) of every exposure.
    """
    unknown = [s for s in strategies if s not in STRATEGY_NAMES]
    if unknown or not strategies:
        raise ValueError(f"strategies must be among {STRATEGY_NAMES}, got {list(strategies)}")
    if not all(0 < f <= 1 for f in score_fractions):
        raise ValueError(f"score_fractions must lie in (0, 1], got {list(score_fractions)}")
    phantom = make_phantom(case, seed, size=size)
    bl = make_sim_beamline(
        phantom,
        catalog.frames_directory,
        seed=seed,
        frame_size=32,
        probe_fwhm_px=10,
        photons_per_frame=1e6,
    )
    pixel_um = bl.ptycho_det.object_pixel_size.get() * 1e6
    half = (size / 2 - 12) * pixel_um  # region of interest: the phantom less a margin
    step = 3 * pixel_um  # 70 % overlap for a 10 px probe
    segmenter = segmenter or default_segmenter()
    roi_px = (slice(int(size / 2 - half / pixel_um), int(size / 2 + half / pixel_um)),) * 2
    RE = RunEngine({}, call_returns_result=False)
    RE.subscribe(catalog.writer())
    if progress:
        from synaps_agent.callbacks.progress import ScanProgress

        RE.subscribe(ScanProgress())
    clock_at_event: list[float] = []  # simulated seconds when each event was emitted
    RE.subscribe(lambda name, doc: clock_at_event.append(bl.clock.elapsed), "event")
    raster = raster_positions(-half, half, -half, half, step, jitter=0.2, seed=seed)
    budget = max(20, int(budget_fraction * len(raster)))
    seeds = raster_positions(-half, half, -half, half, 4 * step, seed=seed)
    fair_budgets = (len(seeds), budget, *(max(1, int(f * len(raster))) for f in score_fractions))
    # the live reconstruction's deterministic schedule: chunks that end where a decision is
    # taken (after the seeds and after every batch), a fixed number of updates per frame
    chunk = math.gcd(len(seeds), batch_size)
    space = ScanSpace([axis_from_motor(name, motor, -half, half) for name, motor in
                       (("x", bl.stage.x), ("y", bl.stage.y))])  # fmt: skip
    outcomes: dict[str, ScanOutcome] = {}
    ceiling = segmentation_ceiling(phantom, segmenter, roi_px, bl.ptycho_det.energy.get())

    for strategy in strategies:
        seg = LiveSegmentation(
            DocumentSink(catalog.writer("processed")),
            segmenter=segmenter,
            min_interval=0.5,
            preprocess=normalize_reconstruction,
        )
        recon = PtychoReconstruction(
            DocumentSink(catalog.writer("processed"), seg),
            config=PtychoConfig(batch_size=32, seed=seed),
            snapshot_interval=1.0,
            final_epochs=final_epochs,
            chunk_frames=chunk,
            chunk_iterations=iterations_per_frame * chunk,
        )
        token = RE.subscribe(recon)
        bl.ptycho_det.reseed()  # the same detector noise stream for every strategy
        bl.clock.reset()
        clock_at_event.clear()
        if strategy == "raster":
            log(f"raster: {len(raster)} exposures over +-{half:.2f} um ...")
            plan = ptycho_scan(
                [bl.ptycho_det], bl.stage.x, bl.stage.y, raster,
                shutter=bl.shutter, md={"strategy": "raster"},
            )  # fmt: skip
        else:
            agent = make_strategy(
                strategy,
                space,
                AgentConfig(**{
                    "probe_fwhm": 10 * pixel_um,
                    "max_step": 1.3 * step,
                    **timing_from_detector(bl.ptycho_det),
                    **(agent_options or {}),
                }),  # fmt: skip
                stopping=StoppingRule(max_exposures=budget),
                seed=seed,
            )
            feed = AgentFeed(
                agent,
                seg.uncertainty_for_agent,
                footprint_radius=5 * pixel_um,
                sink=DocumentSink(catalog.writer("processed")),
                map_frames=seg.frames_in_map,
            )
            log(
                f"{strategy}: budget {budget} exposures ({budget_fraction:.0%} of raster), "
                f"{len(seeds)} seeds ..."
            )
            plan = adaptive_ptycho_scan(
                [bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds,
                batch_size=batch_size, max_exposures=budget, shutter=bl.shutter,
                md={"strategy": strategy}, map_timeout=map_timeout,
            )  # fmt: skip
        (uid,) = RE(plan)
        RE.unsubscribe(token)
        _wait_for(recon, seg)
        run = catalog.raw[uid]
        positions = np.column_stack([np.asarray(run["primary"]["stage_x"].read()),
                                     np.asarray(run["primary"]["stage_y"].read())])  # fmt: skip
        outcome = _outcome(strategy, uid, positions, bl, recon, seg, catalog, phantom, roi_px)
        outcome.event_seconds = np.asarray(clock_at_event, dtype=float)
        outcome.region_half, outcome.probe_radius = half, 5 * pixel_um
        outcome.ceiling_iou = ceiling
        if strategy != "raster":
            outcome.stale_maps = len(feed.stale_decisions)
        if scoring is not None:
            outcome.fair_scores = offline_iou_scores(
                catalog, uid, phantom, roi_px, segmenter, fair_budgets, scoring
            )
            log(f"{strategy}: fair IoU {[(n, round(v, 3)) for n, v in outcome.fair_curve]}")
        outcomes[strategy] = outcome
    return outcomes


def _wait_for(*callbacks, timeout: float = 600.0) -> None:
    for callback in callbacks:
        if not callback.wait(timeout):
            raise TimeoutError(f"{type(callback).__name__} did not finish in {timeout} s")


def _outcome(strategy, uid, positions, bl, recon, seg, catalog, phantom, roi_px) -> ScanOutcome:
    latest = seg.latest
    snap = recon.snapshot()
    outcome = ScanOutcome(
        strategy=strategy,
        raw_uid=uid,
        exposures=len(positions),
        positions=np.asarray(positions),
        seconds_by_kind=dict(bl.clock.by_kind),
        curve=score_run(catalog, uid, phantom, roi_px),
    )
    if latest is not None:
        outcome.final_labels = latest.result.labels
        outcome.final_uncertainty = latest.result.uncertainty
        outcome.final_origin = tuple(int(v) for v in latest.origin)
        outcome.particles = latest.summary if hasattr(latest, "summary") else None
    if snap is not None:
        outcome.final_phase = np.angle(snap.object)
    return outcome


def particle_diameters_um(outcomes: dict[str, ScanOutcome], phantom) -> dict[str, np.ndarray]:
    """Equivalent diameters (um) of the particles: ``"ground truth"``, the phantom's within
    the scanned region (the largest ``region_half`` of ``outcomes``, about the phantom's
    centre), then per strategy those of its final segmentation (its ``particles`` table,
    over the measured area; strategies without one are left out)."""
    from synaps_agent.segment.characterize import particle_instances, particle_table

    labels = np.asarray(phantom.labels)
    half_px = max(float(o.region_half) for o in outcomes.values()) / (phantom.pixel_size * 1e6)
    (r0, r1), (c0, c1) = (
        (max(int(round(n / 2 - half_px)), 0), min(int(round(n / 2 + half_px)), n))
        for n in labels.shape[:2]
    )
    truth = labels[r0:r1, c0:c1]
    table = particle_table(truth, particle_instances(truth), phantom.pixel_size)
    diameters = {"ground truth": table["equivalent_diameter_m"].to_numpy(float) * 1e6}
    for name, outcome in outcomes.items():
        if outcome.particles is not None and "table" in outcome.particles:
            found = outcome.particles["table"]["equivalent_diameter_m"].to_numpy(float)
            diameters[name] = found * 1e6
    return diameters
