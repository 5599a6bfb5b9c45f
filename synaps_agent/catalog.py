"""Where runs live: a Tiled catalog, embedded by default, a Tiled server by URL otherwise.

>>> from synaps_agent.catalog import open_catalog
>>> with open_catalog("synaps-data") as catalog:      # doctest: +SKIP
...     RE.subscribe(catalog.writer())
...     run = catalog.raw[uid]

The embedded catalog is tiled's :class:`~tiled.server.SimpleTiledServer`: a SQLite
catalog and array files in ``directory``, served on loopback with its own API key. Two
containers hold the runs: ``raw`` (what the RunEngine emitted) and ``processed``
(analysis runs: reconstructions, segmentations, agent decisions), both with the spec
``CatalogOfBlueskyRuns`` so that the Bluesky client (and databroker) read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Catalog", "open_catalog", "RAW", "PROCESSED"]

RAW = "raw"
PROCESSED = "processed"
RUNS_SPEC = ("CatalogOfBlueskyRuns", "3.0")


@dataclass
class Catalog:
    """An open catalog: the Tiled client, its ``raw`` and ``processed`` containers.

    Attributes
    ----------
    client : tiled client
        The root container.
    raw, processed : CatalogOfBlueskyRuns
        The containers of raw and analysis runs.
    directory : Path or None
        The embedded catalog's folder (None for a remote server).
    frames_directory : Path or None
        Where simulated detectors should write their HDF5 files (readable by the server).
    """

    client: Any
    raw: Any
    processed: Any
    directory: Path | None = None
    frames_directory: Path | None = None
    server: Any = None
    _api_key: str | None = field(default=None, repr=False)
    _writers: list = field(default_factory=list, repr=False)
    _readable: list = field(default_factory=list, repr=False)
    _port: int | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        """URL of the server (with the API key for the embedded one)."""
        return self.server.uri if self.server is not None else self.client.uri

    def writer(self, container: str = RAW, *, buffered: bool = False, **kwargs: Any):
        """A ``TiledWriter`` into ``raw`` (default) or ``processed`` for ``RE.subscribe``.

        Raw runs that cannot be written are backed up as JSON lines in
        ``<directory>/backup`` (embedded catalog), so no raw document is lost.

        With ``buffered=True``: a :class:`~synaps_agent.reliability.BufferedWriter` that
        never blocks the RunEngine; it writes from a thread, waits out a server that is
        down or slow (retrying with backoff, rewriting the run), and logs raw documents
        ahead in ``<directory>/wal`` (or ``wal_directory=``), from which
        :meth:`recover` stores what a crash left out. ``flush()`` it to wait for the
        writes; :meth:`close` flushes it.
        """
        from bluesky_tiled_plugins import TiledWriter

        node = self._container(container)
        if buffered:
            from .reliability import BufferedWriter

            wal_directory = kwargs.pop("wal_directory", None)
            if wal_directory is None and self.directory is not None and container == RAW:
                wal_directory = self.directory / "wal"
            writer = BufferedWriter(
                lambda: TiledWriter(node, **kwargs),
                discard_run=lambda uid: _discard_run(node, uid),
                wal_directory=wal_directory,
            )
            self._writers.append(writer)
            return writer
        if self.directory is not None and container == RAW:
            # raw documents are backed up as JSON lines (derived products can be recomputed
            # from them; their arrays are not JSON)
            kwargs.setdefault("backup_directory", str(self.directory / "backup"))
            Path(kwargs["backup_directory"]).mkdir(parents=True, exist_ok=True)
        writer = TiledWriter(node, **kwargs)
        self._writers.append(writer)
        return writer

    def _container(self, container: str) -> Any:
        node = {RAW: self.raw, PROCESSED: self.processed}.get(container)
        if node is None:
            raise ValueError(f"container must be {RAW!r} or {PROCESSED!r}, got {container!r}")
        return node

    def recover(self, wal_directory: str | Path | None = None, container: str = RAW) -> list[dict]:
        """Store the runs a crashed process logged ahead but did not finish writing.

        Runs already complete in the catalog are left alone; a partially stored run is
        replaced by the logged one; a run that never closed gets a stop document with
        ``exit_status="fail"``. See :func:`synaps_agent.reliability.recover_runs`.
        """
        from bluesky_tiled_plugins import TiledWriter

        from .reliability import recover_runs

        node = self._container(container)
        if wal_directory is None:
            if self.directory is None:
                raise ValueError("a remote catalog has no default wal_directory: pass one")
            wal_directory = self.directory / "wal"
        if not Path(wal_directory).is_dir():
            return []

        def stored_complete(uid: str) -> bool:
            return uid in node and node[uid].metadata.get("stop") is not None

        return recover_runs(
            wal_directory,
            lambda: TiledWriter(node),
            stored_complete=stored_complete,
            discard_run=lambda uid: _discard_run(node, uid),
        )

    def restart_server(self) -> None:
        """Start the embedded server again, on the same port and folder (after a stop)."""
        if self.directory is None or self._port is None:
            raise ValueError("only an embedded catalog's server can be restarted")
        if self.server is not None:
            self.server.close()
        self.server = _start_server(self.directory, self._readable, port=self._port)

    def stop_server(self) -> None:
        """Stop the embedded server, keeping the catalog usable by :meth:`restart_server`
        (to test what happens while Tiled is down)."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def databroker(self):
        """A databroker v1 ``Broker`` over the raw runs, for facility code that still uses it.

        It reads through its own Tiled client with a private copy of the structure-client
        registry: databroker's v2 accessor rewrites the registry it is given, which would
        otherwise turn every later run of this process into a v2 run.
        """
        from databroker.v1 import Broker
        from tiled.client import from_uri
        from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH
        from tiled.utils import OneShotCachedMap

        default = DEFAULT_STRUCTURE_CLIENT_DISPATCH["numpy"]
        private = OneShotCachedMap()
        for key in default:
            private.set(key, lambda key=key: default[key])
        if self.server is not None:
            client = from_uri(self.server.uri, structure_clients=private)
        else:
            client = from_uri(self.client.uri, api_key=self._api_key, structure_clients=private)
        return Broker(client[RAW])

    def close(self, timeout: float = 30.0) -> None:
        """Flush buffered writers (up to ``timeout`` s each), stop the embedded server
        (a remote server is left alone)."""
        for writer in self._writers:
            if hasattr(writer, "flush"):
                writer.close(timeout=timeout)
        if self.server is not None:
            self.server.close()
            self.server = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _discard_run(node: Any, uid: str) -> None:
    """Delete a (partially written) run, if the container has it."""
    if uid in node:
        node[uid].delete(recursive=True, external_only=False)


def _start_server(directory: Path, readable: list[Path], port: int = 0) -> Any:
    """The embedded Tiled server (loopback only) on ``directory``."""
    from tiled.server import SimpleTiledServer

    return SimpleTiledServer(
        directory=directory, readable_storage=readable, api_key=_process_api_key(), port=port
    )


def _ensure_runs_container(client: Any, key: str) -> Any:
    from tiled.structures.core import Spec

    if key not in client:
        client.create_container(key, specs=[Spec(*RUNS_SPEC)])
    return client[key]


_PROCESS_API_KEY: str | None = None


def _process_api_key() -> str:
    """One API key for every embedded server of this process.

    tiled 0.2 keeps the single-user API key of ``SimpleTiledServer`` in process-wide
    settings: a second embedded server started in the same process replaces the key of
    the first, which then refuses its own clients. Sharing one (random, per-process) key
    keeps every embedded catalog of the process usable.
    """
    global _PROCESS_API_KEY
    if _PROCESS_API_KEY is None:
        import secrets

        _PROCESS_API_KEY = secrets.token_hex(16)
    return _PROCESS_API_KEY


def _register_document_export() -> None:
    """Let the embedded server export a run as its documents (``run.documents()``).

    A configured ``tiled serve`` does this in its config file (media type
    ``application/json-seq`` of spec ``BlueskyRun``); the embedded server takes tiled's
    default registry, so the exporter is registered there, once per process.
    """
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry

    default_serialization_registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)


def open_catalog(
    directory: str | Path | None = None,
    *,
    uri: str | None = None,
    api_key: str | None = None,
    readable_storage: list[str | Path] | None = None,
) -> Catalog:
    """Open the runs catalog.

    Parameters
    ----------
    directory : path, optional
        Folder of the embedded catalog (created if missing; reused if it holds one).
        Ignored when ``uri`` is given. ``None`` with no ``uri``: a temporary folder.
    uri : str, optional
        URL of a running Tiled server (``http://host:8000``) instead of the embedded one.
    api_key : str, optional
        API key for ``uri``.
    readable_storage : list of paths, optional
        Extra folders the embedded server may read external files (HDF5 frames) from;
        ``<directory>/frames`` is always readable.

    Returns
    -------
    Catalog
        Close it (or use it as a context manager) to stop the embedded server.
    """
    from tiled.client import from_uri

    if uri is not None:
        client = from_uri(uri, api_key=api_key)
        return Catalog(
            client=client,
            raw=_ensure_runs_container(client, RAW),
            processed=_ensure_runs_container(client, PROCESSED),
            _api_key=api_key,
        )

    _register_document_export()
    if directory is None:
        import tempfile

        directory = tempfile.mkdtemp(prefix="synaps-catalog-")
    directory = Path(directory).resolve()
    frames = directory / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    readable = [frames, *(Path(p).resolve() for p in (readable_storage or []))]
    server = _start_server(directory, readable)
    try:
        client = from_uri(server.uri)
        catalog = Catalog(
            client=client,
            raw=_ensure_runs_container(client, RAW),
            processed=_ensure_runs_container(client, PROCESSED),
            directory=directory,
            frames_directory=frames,
            server=server,
            _readable=readable,
            _port=urlsplit(server.uri).port,
        )
    except BaseException:
        server.close()
        raise
    _close_at_exit(catalog)
    return catalog


def _close_at_exit(catalog: Catalog) -> None:
    """Stop the embedded server when the interpreter exits, even if nobody closed it.

    The server runs on a non-daemon thread, which Python waits for *before* running
    ``atexit`` hooks, so a script that forgot ``catalog.close()`` would never exit.
    ``threading._register_atexit`` runs before that wait (CPython 3.9+).
    """
    import threading

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(catalog.close)
        except RuntimeError:  # interpreter already shutting down
            pass
