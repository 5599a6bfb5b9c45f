"""Surviving what real beamlines do: beam dumps, a Tiled server that is down, crashes.

- :func:`beam_suspender`: a ``bluesky.suspenders.SuspendFloor`` on the beam monitor
  that pauses the scan while the beam is down and resumes when it is back.
- :class:`BufferedWriter`: a document writer that never blocks the RunEngine; a
  thread writes the documents in order, retries with backoff while the server is
  down, and keeps a write-ahead log so a crash loses nothing
  (:func:`recover_runs` writes what the log holds and the catalog lacks).
"""

from __future__ import annotations

from typing import Any

__all__ = ["beam_suspender", "prepare_run_engine"]


def beam_suspender(
    monitor: Any,
    *,
    suspend_below: float = 0.1,
    resume_above: float = 0.5,
    sleep: float = 0.0,
    nominal: float | None = None,
    **kwargs: Any,
):
    """A suspender that holds the scan while the beam is down.

    Parameters
    ----------
    monitor : BeamMonitor or ophyd Signal
        A :class:`~synaps_agent.sim_devices.beam.BeamMonitor` (its live ``source``
        signal is watched) or any signal giving the incident intensity.
    suspend_below, resume_above : float
        Fractions of the nominal intensity: the scan is suspended when the signal drops
        below ``suspend_below * nominal`` and resumes once it is back above
        ``resume_above * nominal``.
    sleep : float
        Seconds to wait after the beam is back before resuming (beam settles).
    nominal : float, optional
        Nominal intensity; default the monitor's ``nominal_flux``.
    **kwargs
        Passed to :class:`bluesky.suspenders.SuspendFloor` (``pre_plan``, ``post_plan``...).

    Returns
    -------
    bluesky.suspenders.SuspendFloor
        Install it with ``RE.install_suspender(...)``.
    """
    from bluesky.suspenders import SuspendFloor

    signal = getattr(monitor, "source", monitor)
    if nominal is None:
        flux = getattr(monitor, "nominal_flux", None)
        if flux is None:
            raise ValueError(
                f"{getattr(monitor, 'name', monitor)!r} has no nominal_flux: pass nominal="
            )
        nominal = float(flux.get())
    if not nominal > 0:
        raise ValueError(f"nominal intensity must be positive, got {nominal}")
    if not 0 <= suspend_below <= resume_above:
        raise ValueError(
            f"need 0 <= suspend_below <= resume_above, got {suspend_below}, {resume_above}"
        )
    kwargs.setdefault("tripped_message", "beam intensity below threshold (beam dump?)")
    return SuspendFloor(
        signal,
        suspend_below * nominal,
        resume_thresh=resume_above * nominal,
        sleep=sleep,
        **kwargs,
    )


def prepare_run_engine(RE: Any, monitor: Any | None = None, **suspender_kwargs: Any) -> Any:
    """Make a RunEngine ride out beam dumps, pauses and suspensions without duplicates.

    - ``RE.rewindable = False``: our detectors append each frame to their file when
      triggered, so replaying the messages since the last checkpoint after a pause or
      suspension would take (and store) exposures twice; the scan instead resumes
      exactly where it stopped. An exposure taken while the beam was going down stays
      in the run, flagged by its zero I0 reading.
    - ``RE.record_interruptions = True``: every pause, suspension and resume is an
      event of the run's ``interruptions`` stream, stored with the run.
    - with ``monitor``: installs :func:`beam_suspender` on it and returns the suspender.

    Returns
    -------
    SuspendFloor or None
        The installed suspender, if a monitor was given.
    """
    RE.rewindable = False
    RE.record_interruptions = True
    if monitor is None:
        return None
    suspender = beam_suspender(monitor, **suspender_kwargs)
    RE.install_suspender(suspender)
    return suspender
