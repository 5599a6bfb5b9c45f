"""A ready simulated imaging beamline: stage, shutter, I0 monitor and two detectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .beam import Beam, BeamMonitor, Shutter
from .detectors import ProjectionDetector, PtychoDetector
from .motors import SampleStage, SimClock
from .phantoms import Phantom2D, Phantom3D
from .sample import SimSample

__all__ = ["SimBeamline", "make_sim_beamline"]


@dataclass
class SimBeamline:
    """The devices of one simulated beamline and the ground truth behind them.

    ``flat_field_x`` is a stage x (um) that takes the sample out of the beam.
    """

    phantom: Phantom2D | Phantom3D
    sample: SimSample
    clock: SimClock
    beam: Beam
    stage: SampleStage
    shutter: Shutter
    i0: BeamMonitor
    ptycho_det: PtychoDetector
    proj_det: ProjectionDetector
    flat_field_x: float

    @property
    def devices(self) -> dict[str, object]:
        """Devices by name, as a profile or the queueserver would register them."""
        return {
            d.name: d for d in (self.stage, self.shutter, self.i0, self.ptycho_det, self.proj_det)
        }


def make_sim_beamline(
    phantom: Phantom2D | Phantom3D,
    frames_directory: str | Path,
    *,
    seed: int = 0,
    time_scale: float = 0.0,
    photons_per_frame: float = 1e6,
    probe_fwhm_px: float = 20.0,
    frame_size: int = 64,
    ptycho_energy: float = 8000.0,
    radiation: str = "xray",
    tomo_energy: float = 25000.0,
    photons_per_pixel: float = 1e4,
    beam_fluctuation: float = 0.0,
) -> SimBeamline:
    """Build a simulated beamline around ``phantom``.

    The stage's x/y soft limits span the sample plus its width on each side (so it can be
    driven out of the beam for flat fields); theta spans -200..200 deg. Detector frames
    go to ``frames_directory`` (give the catalog's ``frames_directory``).

    Parameters
    ----------
    phantom : Phantom2D or Phantom3D
        Ground truth on the stage.
    frames_directory : path
        Folder for the detectors' HDF5 files.
    seed : int
        Seed of every random process (noise, jitter, beam drift).
    time_scale : float
        Wall seconds per simulated second (0: moves and exposures are instantaneous).
    """
    sample = SimSample(phantom)
    clock = SimClock(time_scale=time_scale)
    rows, cols = sample.image_shape
    width_um = cols * sample.pixel_size * 1e6
    height_um = rows * sample.pixel_size * 1e6
    stage = SampleStage(
        name="stage",
        x_limits=(-1.1 * width_um, 1.1 * width_um),
        y_limits=(-0.75 * height_um, 0.75 * height_um),
        xy_velocity=max(width_um, 1.0),  # crosses the sample in about a second
        clock=clock,
    )
    beam = Beam(fluctuation=beam_fluctuation, seed=seed + 1)
    shutter = Shutter(name="shutter")
    i0 = BeamMonitor(name="i0", beam=beam, shutter=shutter)
    common = dict(
        stage=stage,
        sample=sample,
        frames_directory=frames_directory,
        beam=beam,
        shutter=shutter,
        clock=clock,
    )
    ptycho_det = PtychoDetector(
        name="ptycho_det",
        energy=ptycho_energy,
        frame_size=frame_size,
        photons_per_frame=photons_per_frame,
        probe_fwhm_px=probe_fwhm_px,
        seed=seed + 2,
        **common,
    )
    proj_det = ProjectionDetector(
        name="proj_det",
        energy=tomo_energy,
        radiation=radiation,
        photons_per_pixel=photons_per_pixel,
        seed=seed + 3,
        **common,
    )
    return SimBeamline(
        phantom=phantom,
        sample=sample,
        clock=clock,
        beam=beam,
        stage=stage,
        shutter=shutter,
        i0=i0,
        ptycho_det=ptycho_det,
        proj_det=proj_det,
        flat_field_x=1.05 * width_um,
    )
