"""Simulated area detectors: ptychography (far field) and tomography (projections).

Both behave like an area detector with an HDF5 file plugin: ``stage()`` opens a file,
``trigger()`` exposes and appends the frame, ``describe()`` marks the image as external
(``"STREAM:"``) and ``collect_asset_docs()`` yields the StreamResource/StreamDatum
documents.  Their configuration says everything a reconstruction needs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from ophyd import Component as Cpt
from ophyd import Signal
from ophyd.status import DeviceStatus

from .beam import Beam, Shutter
from .device import SimDevice
from .frame_files import HDF5FrameWriter
from .motors import SampleStage, SimClock
from .optics import (
    farfield_pixel_size,
    fresnel_propagate,
    gaussian_probe,
    poisson_counts,
    ptycho_pattern,
)
from .sample import SimSample

__all__ = ["ProjectionDetector", "PtychoDetector", "SimAreaDetector"]


class SimAreaDetector(SimDevice):
    """Common part of the simulated area detectors (exposure, files, asset documents).

    Subclasses implement :meth:`expected_frame` (the noise-free frame) and
    :meth:`frame_shape`.

    Each trigger charges the beamline's clock ``exposure_time`` (kind ``"exposure"``)
    and then ``readout_time`` (kind ``"readout"``): the dead time a step scan spends per
    point besides exposing and moving (readout, triggering, writing). The agent's cost
    model reads both (:func:`synaps_agent.agent.timing_from_detector`), so its clock and
    the simulated one agree.
    """

    exposure_time = Cpt(Signal, value=0.01, kind="config")
    readout_time = Cpt(Signal, value=0.15, kind="config")
    total_counts = Cpt(Signal, value=0, kind="normal")

    def __init__(
        self,
        *,
        name: str,
        stage: SampleStage,
        sample: SimSample,
        frames_directory: str | Path,
        beam: Beam | None = None,
        shutter: Shutter | None = None,
        clock: SimClock | None = None,
        seed: int = 0,
        readout_time: float = 0.15,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if not np.isfinite(readout_time) or readout_time < 0:
            raise ValueError(
                f"{name}: readout_time must be a finite number >= 0 s, got {readout_time}"
            )
        self.readout_time.put(float(readout_time))
        self.stage_device = stage
        self.sample = sample
        self.beam = beam if beam is not None else Beam(fluctuation=0.0)
        self.shutter = shutter
        self.clock = clock if clock is not None else stage.clock
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.frames_directory = Path(frames_directory)
        self._writer: HDF5FrameWriter | None = None
        self._lock = threading.Lock()

    def reseed(self, seed: int | None = None) -> None:
        """Restart the detector's noise stream: from ``seed``, or from the seed it was
        built with (scans of the same points then see the same noise)."""
        self.rng = np.random.default_rng(self.seed if seed is None else int(seed))

    # -- subclass hooks -------------------------------------------------------------
    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def frame_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def expected_frame(self) -> np.ndarray:
        """Noise-free expected counts for the current stage position (float32)."""
        raise NotImplementedError

    def noisy_frame(self, expected: np.ndarray) -> np.ndarray:
        """Counting statistics on top of the expectation; subclasses add saturation etc."""
        return poisson_counts(expected, self.rng)

    # -- bluesky protocols ------------------------------------------------------------
    def stage(self) -> list[object]:
        self._writer = HDF5FrameWriter(self.frames_directory, self.image_key, self.frame_shape())
        self._writer.open()
        return super().stage()

    def unstage(self) -> list[object]:
        if self._writer is not None:
            self._writer.close()
        return super().unstage()

    def describe(self) -> dict:
        description = super().describe()
        description[self.image_key] = {
            "source": f"SIM:{self.name}:image",
            "dtype": "array",
            "dtype_numpy": np.dtype(np.uint32).str,
            "shape": list(self.frame_shape()),
            "external": "STREAM:",
        }
        return description

    @property
    def shutter_open(self) -> bool:
        return self.shutter is None or self.shutter.is_open

    def acquire(self) -> np.ndarray:
        """Expose once at the current position and return the frame (without saving it)."""
        factor = self.beam.next_exposure()
        if self.shutter_open:
            expected = self.expected_frame() * np.float32(factor)
        else:
            expected = np.zeros(self.frame_shape(), np.float32)
        return self.noisy_frame(expected)

    def trigger(self) -> DeviceStatus:
        """Expose, append the frame to the file; finishes after the (scaled) exposure and
        readout time."""
        if self._writer is None or not self._writer.is_open:
            raise RuntimeError(f"{self.name}: trigger() before stage(); use it inside a plan")
        status = DeviceStatus(self)
        with self._lock:
            frame = self.acquire()
            self._writer.append(frame)
            self.total_counts.put(int(frame.sum(dtype=np.int64)))
        wall = self.clock.charge(float(self.exposure_time.get()), "exposure")
        wall += self.clock.charge(float(self.readout_time.get()), "readout")
        if wall <= 0:
            status.set_finished()
        else:
            threading.Timer(wall, status.set_finished).start()
        return status

    def collect_asset_docs(self):
        """Yield the StreamResource (once per file) and one StreamDatum per new frame."""
        if self._writer is not None:
            yield from self._writer.collect_asset_docs()

    def _stage_position(self) -> tuple[float, float, float]:
        stage = self.stage_device
        return stage.x.position, stage.y.position, stage.theta.position


class PtychoDetector(SimAreaDetector):
    """Far-field ptychography detector behind a sample scanned through a focused probe.

    The frame is ``Poisson(|F(probe * object patch)|^2)`` at the stage's (x, y) in um,
    the object being the sample's transmission at the stage's theta; the object pixel
    is ``wavelength * distance / (frame_size * detector_pixel_size)``.  The stage origin
    sits at the phantom's centre; x runs along columns, y along rows.
    """

    energy = Cpt(Signal, value=8000.0, kind="config")
    detector_distance = Cpt(Signal, value=1.0, kind="config")
    detector_pixel_size = Cpt(Signal, value=75e-6, kind="config")
    frame_size = Cpt(Signal, value=64, kind="config")
    object_pixel_size = Cpt(Signal, value=0.0, kind="config")
    photons_per_frame = Cpt(Signal, value=1e6, kind="config")
    probe_fwhm = Cpt(Signal, value=400e-9, kind="config")
    probe_curvature_radius = Cpt(Signal, value=np.inf, kind="config")
    saturation = Cpt(Signal, value=0, kind="config")
    position_jitter = Cpt(Signal, value=0.0, kind="config")

    def __init__(
        self,
        *,
        name: str = "ptycho_det",
        energy: float = 8000.0,
        detector_distance: float | None = None,
        detector_pixel_size: float = 75e-6,
        frame_size: int = 64,
        photons_per_frame: float = 1e6,
        probe_fwhm_px: float = 20.0,
        probe_curvature_radius: float = 5e-4,
        saturation: int = 0,
        position_jitter: float = 0.0,
        exposure_time: float = 0.005,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if frame_size < 8:
            raise ValueError(f"{name}: frame_size must be >= 8, got {frame_size}")
        if photons_per_frame <= 0:
            raise ValueError(f"{name}: photons_per_frame must be positive, got {photons_per_frame}")
        pixel = self.sample.pixel_size
        if detector_distance is None:
            # choose the distance that makes the object pixel equal the phantom pixel
            from .optics import wavelength

            detector_distance = pixel * frame_size * detector_pixel_size / wavelength(energy)
        object_pixel = farfield_pixel_size(
            energy, detector_distance, detector_pixel_size, frame_size
        )
        if abs(object_pixel - pixel) > 1e-3 * pixel:
            raise ValueError(
                f"{name}: object pixel {object_pixel:.4g} m (from energy, distance and detector) "
                f"does not match the sample's pixel {pixel:.4g} m"
            )
        for signal, value in (
            (self.energy, float(energy)),
            (self.detector_distance, float(detector_distance)),
            (self.detector_pixel_size, float(detector_pixel_size)),
            (self.frame_size, int(frame_size)),
            (self.object_pixel_size, float(object_pixel)),
            (self.photons_per_frame, float(photons_per_frame)),
            (self.probe_fwhm, float(probe_fwhm_px * object_pixel)),
            (self.probe_curvature_radius, float(probe_curvature_radius)),
            (self.saturation, int(saturation)),
            (self.position_jitter, float(position_jitter)),
            (self.exposure_time, float(exposure_time)),
        ):
            signal.put(value)
        self.true_positions: list[tuple[float, float]] = []

    def frame_shape(self) -> tuple[int, int]:
        n = int(self.frame_size.get())
        return (n, n)

    def probe(self) -> np.ndarray:
        """The illumination (complex64, frame_shape), normalised to photons_per_frame."""
        return gaussian_probe(
            self.frame_shape(),
            float(self.object_pixel_size.get()),
            float(self.probe_fwhm.get()),
            float(self.probe_curvature_radius.get()),
            float(self.energy.get()),
            float(self.photons_per_frame.get()),
        )

    def position_to_pixels(self, x_um: float, y_um: float) -> tuple[float, float]:
        """Stage (x, y) in um -> object pixel coordinates (row, column) of the probe centre."""
        pixel_um = float(self.object_pixel_size.get()) * 1e6
        rows, cols = self.sample.image_shape
        return rows / 2 + y_um / pixel_um, cols / 2 + x_um / pixel_um

    def expected_frame(self) -> np.ndarray:
        x, y, theta = self._stage_position()
        jitter = float(self.position_jitter.get()) * 1e6
        if jitter > 0:
            x, y = x + self.rng.normal(0, jitter), y + self.rng.normal(0, jitter)
        self.true_positions.append((x, y))
        obj = self.sample.transmission(theta, float(self.energy.get()))
        return ptycho_pattern(obj, self._probe_cached(), self.position_to_pixels(x, y))

    def _probe_cached(self) -> np.ndarray:
        key = tuple(
            s.get()
            for s in (
                self.object_pixel_size,
                self.probe_fwhm,
                self.probe_curvature_radius,
                self.energy,
                self.photons_per_frame,
                self.frame_size,
            )
        )
        if getattr(self, "_probe_key", None) != key:
            self._probe_value = self.probe()
            self._probe_key = key
        return self._probe_value

    def noisy_frame(self, expected: np.ndarray) -> np.ndarray:
        saturation = int(self.saturation.get())
        return poisson_counts(expected, self.rng, saturation=saturation or None)

    def geometry(self) -> dict:
        """Everything a reconstruction needs, JSON-friendly (SI units)."""
        return {
            "energy_ev": float(self.energy.get()),
            "detector_distance_m": float(self.detector_distance.get()),
            "detector_pixel_size_m": float(self.detector_pixel_size.get()),
            "frame_shape": list(self.frame_shape()),
            "object_pixel_size_m": float(self.object_pixel_size.get()),
            "object_shape": list(self.sample.image_shape),
            "stage_origin_pixel": [self.sample.image_shape[0] / 2, self.sample.image_shape[1] / 2],
            "photons_per_frame": float(self.photons_per_frame.get()),
            "probe": {
                "model": "gaussian",
                "fwhm_m": float(self.probe_fwhm.get()),
                "curvature_radius_m": float(self.probe_curvature_radius.get()),
            },
            "image_key": self.image_key,
        }


class ProjectionDetector(SimAreaDetector):
    """Parallel-beam projection camera for X-ray or neutron tomography.

    The frame is ``dark + Poisson(flat * T)`` where ``T`` is the sample's intensity
    transmission at the stage's theta, shifted by the stage's x (a sample moved out of
    the field of view gives a flat field) and, for X-rays with a non-zero
    ``propagation_distance``, Fresnel-propagated (phase contrast).  With the shutter
    closed the frame is the dark field.
    """

    energy = Cpt(Signal, value=25000.0, kind="config")
    radiation = Cpt(Signal, value="xray", kind="config")
    pixel_size = Cpt(Signal, value=1e-6, kind="config")
    photons_per_pixel = Cpt(Signal, value=1e4, kind="config")
    dark_level = Cpt(Signal, value=100.0, kind="config")
    propagation_distance = Cpt(Signal, value=0.0, kind="config")

    def __init__(
        self,
        *,
        name: str = "proj_det",
        energy: float = 25000.0,
        radiation: str = "xray",
        photons_per_pixel: float = 1e4,
        dark_level: float = 100.0,
        flat_nonuniformity: float = 0.05,
        propagation_distance: float = 0.0,
        exposure_time: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if radiation not in ("xray", "neutron"):
            raise ValueError(f"{name}: radiation must be 'xray' or 'neutron', got {radiation!r}")
        if photons_per_pixel <= 0:
            raise ValueError(f"{name}: photons_per_pixel must be positive, got {photons_per_pixel}")
        for signal, value in (
            (self.energy, float(energy)),
            (self.radiation, radiation),
            (self.pixel_size, float(self.sample.pixel_size)),
            (self.photons_per_pixel, float(photons_per_pixel)),
            (self.dark_level, float(dark_level)),
            (self.propagation_distance, float(propagation_distance)),
            (self.exposure_time, float(exposure_time)),
        ):
            signal.put(value)
        rows, cols = self.sample.image_shape
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        profile = 1.0 + flat_nonuniformity * (
            np.sin(2 * np.pi * xx / cols * 1.5) * np.cos(2 * np.pi * yy / rows * 0.7)
        )
        self.flat_profile = profile.astype(np.float32)  # ground truth beam profile

    def frame_shape(self) -> tuple[int, int]:
        return self.sample.image_shape

    def expected_frame(self) -> np.ndarray:
        x, _, theta = self._stage_position()
        radiation = str(self.radiation.get())
        energy = float(self.energy.get())
        shift = x * 1e-6 / float(self.pixel_size.get())
        distance = float(self.propagation_distance.get())
        if radiation == "xray" and distance > 0:
            wave = _shift_columns(self.sample.transmission(theta, energy), shift, fill=1.0)
            wave = fresnel_propagate(wave, distance, float(self.pixel_size.get()), energy)
            transmitted = np.abs(wave) ** 2
        else:
            transmitted = _shift_columns(
                self.sample.intensity_transmission(theta, radiation, energy), shift, fill=1.0
            )
        return (float(self.photons_per_pixel.get()) * self.flat_profile * transmitted).astype(
            np.float32
        )

    def noisy_frame(self, expected: np.ndarray) -> np.ndarray:
        counts = poisson_counts(expected, self.rng)
        dark = self.rng.poisson(float(self.dark_level.get()), size=expected.shape)
        return (counts + dark).astype(np.uint32)

    def geometry(self) -> dict:
        """Everything a tomographic reconstruction needs, JSON-friendly (SI units)."""
        return {
            "energy_ev": float(self.energy.get()),
            "radiation": str(self.radiation.get()),
            "pixel_size_m": float(self.pixel_size.get()),
            "frame_shape": list(self.frame_shape()),
            "rotation_axis": "vertical, through the stage origin (column frame_shape[1] / 2)",
            "propagation_distance_m": float(self.propagation_distance.get()),
            "dark_level": float(self.dark_level.get()),
            "image_key": self.image_key,
        }


def _shift_columns(image: np.ndarray, shift: float, fill: float) -> np.ndarray:
    """Shift an image along its columns by ``shift`` pixels, filling with ``fill``."""
    if shift == 0:
        return image
    from scipy.ndimage import shift as nd_shift

    if np.iscomplexobj(image):
        real = nd_shift(image.real, (0, shift), order=1, cval=fill)
        imag = nd_shift(image.imag, (0, shift), order=1, cval=0.0)
        return (real + 1j * imag).astype(image.dtype)
    return nd_shift(image, (0, shift), order=1, cval=fill).astype(image.dtype)
