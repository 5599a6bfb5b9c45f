"""Replay: feed a stored run's documents through the same callbacks as live.

``synaps replay UID`` reconstructs (and, for ptychography, segments) a run stored in
the catalog, exactly as the live callbacks would, and stores the products as new
analysis runs linked to it.
"""

from __future__ import annotations

from typing import Any

from .callbacks.analysis import DocumentSink

__all__ = ["replay_run"]


def replay_run(
    catalog: Any,
    uid: str,
    *,
    segment: bool = True,
    timeout: float = 600.0,
    log=print,
    reconstruction: dict | None = None,
) -> dict:
    """Reconstruct the raw run ``uid`` of ``catalog`` from its stored documents.

    Parameters
    ----------
    catalog : Catalog
        Holds the raw run; the products go to its ``processed`` container.
    uid : str
        The raw run.
    segment : bool
        Also segment ptychographic reconstructions.
    timeout : float
        Seconds to wait for each callback to finish.
    log : callable
        Progress messages.
    reconstruction : dict, optional
        Keyword arguments of the reconstruction callback
        (:class:`~synaps_agent.callbacks.ptycho.PtychoReconstruction` or
        :class:`~synaps_agent.callbacks.tomo.TomoReconstruction`), e.g. the ``config``,
        ``chunk_frames`` and ``chunk_iterations`` the live callback had: with a chunk
        schedule the replay's snapshots equal the live ones. ``snapshot_interval``
        defaults to 0 (only the final snapshot, or one per chunk).

    Returns
    -------
    dict
        ``modality``, the analysis callbacks' ``errors``, and the uids of the new
        analysis runs (``analysis_uids``).

    Raises
    ------
    KeyError
        If there is no raw run ``uid``.
    ValueError
        If the run is not an imaging run of ours (no ``modality`` in its metadata), or
        its metadata cannot rebuild the geometry (checked before anything is computed).
    """
    if uid not in catalog.raw:
        raise KeyError(f"no raw run {uid!r} in the catalog")
    run = catalog.raw[uid]
    modality = run.start.get("modality")
    if modality not in ("ptychography", "ptycho-tomography", "tomography"):
        raise ValueError(
            f"run {uid} has modality {modality!r}: it is not a SYNAPS imaging run "
            "(ptychography, ptycho-tomography or tomography)"
        )
    _check_geometry(uid, modality, run.start)
    options = {"snapshot_interval": 0, **(reconstruction or {})}
    started: list[str] = []

    def record(name: str, doc: dict) -> None:
        if name == "start":
            started.append(doc["uid"])

    sink = DocumentSink(catalog.writer("processed"), record)
    callbacks = []
    if modality == "tomography":
        from .callbacks.tomo import TomoReconstruction

        callbacks.append(TomoReconstruction(sink, **options))
    else:
        from .callbacks.ptycho import PtychoReconstruction

        recon_sink = sink
        if segment:
            from .callbacks.segmentation import LiveSegmentation
            from .experiment import default_segmenter

            seg = LiveSegmentation(sink, segmenter=default_segmenter())
            recon_sink = DocumentSink(catalog.writer("processed"), record, seg)
            callbacks.append(seg)
        callbacks.insert(0, PtychoReconstruction(recon_sink, **options))
    log(f"replaying {modality} run {uid} through {[type(c).__name__ for c in callbacks]} ...")
    for name, doc in run.documents():
        callbacks[0](name, doc)
    for callback in callbacks:
        if not callback.wait(timeout):
            raise TimeoutError(f"{type(callback).__name__} did not finish in {timeout} s")
    errors = [e for c in callbacks for e in c.errors]
    return {"modality": modality, "errors": errors, "analysis_uids": started}


def _check_geometry(uid: str, modality: str, start: dict) -> None:
    """Raise ``ValueError`` naming the run if its start document cannot rebuild the
    geometry the reconstruction needs (a foreign or damaged run)."""
    if modality == "tomography":
        from .callbacks.tomo import TomoGeometry as Geometry
    else:
        from .callbacks.ptycho import PtychoGeometry as Geometry
    try:
        Geometry.from_start(dict(start))
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(
            f"run {uid} cannot be replayed: its {modality} metadata is incomplete ({detail})"
        ) from None
