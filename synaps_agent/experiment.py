"""The simulated adaptive experiment: the agent against a raster scan, same budget.

Both scans run in a real RunEngine on the simulated beamline, with live
reconstruction, segmentation and (for the adaptive scan) the agent in the loop; every
raw and derived run goes to the catalog. Quality is scored against the phantom's ground
truth after each segmentation snapshot, so the curves of IoU against exposures come from
the stored documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from bluesky import RunEngine

from .agent import AgentConfig, Axis, ScanSpace, StoppingRule, make_strategy
from .callbacks.agent_feed import AgentFeed
from .callbacks.analysis import DocumentSink
from .callbacks.ptycho import PtychoReconstruction
from .callbacks.segmentation import LiveSegmentation, normalize_reconstruction
from .plans.adaptive import adaptive_ptycho_scan
from .plans.patterns import raster_positions
from .plans.scans import ptycho_scan
from .recon.ptycho import PtychoConfig
from .segment.base import ProbabilisticSegmenter, Segmenter
from .segment.scoring import mean_iou
from .sim_devices.beamline import make_sim_beamline
from .sim_devices.phantoms import make_phantom

__all__ = [
    "STRATEGY_NAMES",
    "ScanOutcome",
    "default_segmenter",
    "run_adaptive_comparison",
    "run_strategies",
    "score_run",
]


@dataclass
class ScanOutcome:
    """What one strategy achieved."""

    strategy: str
    raw_uid: str
    exposures: int
    simulated_seconds: float
    positions: np.ndarray
    curve: list[tuple[int, float]] = field(default_factory=list)  # (frames, mean IoU)
    final_labels: np.ndarray | None = None
    final_uncertainty: np.ndarray | None = None
    final_origin: tuple[int, int] = (0, 0)
    final_phase: np.ndarray | None = None
    particles: dict | None = None
    event_seconds: np.ndarray | None = None  # simulated clock at each exposure's event

    @property
    def final_iou(self) -> float:
        return self.curve[-1][1] if self.curve else float("nan")

    def time_curve(self) -> list[tuple[float, float]]:
        """``[(simulated seconds, mean IoU), ...]``: the IoU curve against the time the
        exposures took (motor travel, settle and exposure) on the simulated clock."""
        if self.event_seconds is None or not len(self.event_seconds):
            return []
        t = self.event_seconds
        return [(float(t[min(max(n, 1), len(t)) - 1]), iou) for n, iou in self.curve]


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
        truth = _truth_in_frame(phantom.labels, (int(r0), int(c0)), lab.shape)
        mask = np.zeros(lab.shape, bool)
        rs, cs = roi_pixels
        mask[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0] = True
        curve.append((int(n), float(mean_iou(lab, truth, mask=mask))))
    return curve


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
) -> dict[str, ScanOutcome]:
    """Raster scan of a region, then the agent on the same region with a fraction of
    raster's exposures; both with live reconstruction and segmentation.

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
    log=print,
) -> dict[str, ScanOutcome]:
    """Scan one region of a phantom with each strategy, live reconstruction and
    segmentation in the loop, every run stored in ``catalog``.

    ``"raster"`` is a full snake raster at about 70 % probe overlap; the other strategies
    (``"agent"``, ``"random"``, ``"greedy"``, see
    :data:`~synaps_agent.agent.STRATEGIES`) run :func:`adaptive_ptycho_scan` from the
    same coarse seed lattice with ``budget_fraction`` of raster's exposures, on the same
    beamline (same detector noise seed, motors and clock).

    Returns
    -------
    dict
        :class:`ScanOutcome` per strategy, with the IoU curve against ground truth and
        the simulated time (motor travel, settle and exposure) of every exposure.
    """
    unknown = [s for s in strategies if s not in STRATEGY_NAMES]
    if unknown or not strategies:
        raise ValueError(f"strategies must be among {STRATEGY_NAMES}, got {list(strategies)}")
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
    clock_at_event: list[float] = []  # simulated seconds when each event was emitted
    RE.subscribe(lambda name, doc: clock_at_event.append(bl.clock.elapsed), "event")
    raster = raster_positions(-half, half, -half, half, step, jitter=0.2, seed=seed)
    budget = max(20, int(budget_fraction * len(raster)))
    seeds = raster_positions(-half, half, -half, half, 4 * step, seed=seed)
    space = ScanSpace([_stage_axis(name, motor, half) for name, motor in
                       (("x", bl.stage.x), ("y", bl.stage.y))])  # fmt: skip
    outcomes: dict[str, ScanOutcome] = {}

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
        )
        token = RE.subscribe(recon)
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
                    "exposure_time": bl.ptycho_det.exposure_time.get(),
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
            )
            log(
                f"{strategy}: budget {budget} exposures ({budget_fraction:.0%} of raster), "
                f"{len(seeds)} seeds ..."
            )
            plan = adaptive_ptycho_scan(
                [bl.ptycho_det], bl.stage.x, bl.stage.y, feed, seeds,
                batch_size=batch_size, max_exposures=budget, shutter=bl.shutter,
                md={"strategy": strategy},
            )  # fmt: skip
        (uid,) = RE(plan)
        RE.unsubscribe(token)
        _wait_for(recon, seg)
        run = catalog.raw[uid]
        positions = np.column_stack([np.asarray(run["primary"]["stage_x"].read()),
                                     np.asarray(run["primary"]["stage_y"].read())])  # fmt: skip
        outcome = _outcome(strategy, uid, positions, bl, recon, seg, catalog, phantom, roi_px)
        outcome.event_seconds = np.asarray(clock_at_event, dtype=float)
        outcomes[strategy] = outcome
    return outcomes


def _stage_axis(name: str, motor, half: float) -> Axis:
    """The agent's view of a stage motor over ``[-half, half]``, with its kinematics."""
    return Axis(
        name,
        -half,
        half,
        "um",
        velocity=motor.velocity.get(),
        acceleration_time=motor.acceleration.get(),
        settle_time=motor.settle_time.get(),
    )


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
        simulated_seconds=float(bl.clock.elapsed),
        positions=np.asarray(positions),
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
