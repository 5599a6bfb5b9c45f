"""Shared fixtures: a real embedded Tiled catalog, a real RunEngine, a simulated beamline."""

from __future__ import annotations

import pytest
import torch
from bluesky import RunEngine
from event_model import schema_validators

from synaps_agent.agent import AgentConfig, Axis, ScanSpace, StoppingRule, make_strategy
from synaps_agent.callbacks.agent_feed import AgentFeed
from synaps_agent.callbacks.analysis import DocumentSink
from synaps_agent.catalog import open_catalog
from synaps_agent.sim_devices.beamline import make_sim_beamline
from synaps_agent.sim_devices.phantoms import make_phantom

# One torch thread: the tests run a RunEngine, worker threads and sometimes a Tiled server
# on 2 cores, where two torch threads fight the other threads (and each other) badly.
torch.set_num_threads(1)


class DocumentLog:
    """Collects every document, validating each against its event-model schema."""

    def __init__(self) -> None:
        self.documents: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        from event_model import DocumentNames

        schema_validators[DocumentNames(name)].validate(doc)
        self.documents.append((name, doc))

    def of(self, name: str) -> list[dict]:
        return [doc for n, doc in self.documents if n == name]


@pytest.fixture(scope="session")
def catalog(tmp_path_factory):
    """The embedded catalog in a temporary folder, shared by the session (a server takes
    seconds to start); runs are told apart by uid. Its server stops at the end."""
    cat = open_catalog(tmp_path_factory.mktemp("catalog"))
    yield cat
    cat.close()


@pytest.fixture
def documents() -> DocumentLog:
    return DocumentLog()


@pytest.fixture
def RE(catalog, documents):
    """A RunEngine persisting to the catalog and validating every document."""
    engine = RunEngine({}, call_returns_result=False)
    engine.subscribe(documents)
    engine.subscribe(catalog.writer())
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture
def ptycho_beamline(catalog):
    """A small 2D electrode section (96 x 96 pixels of 20 nm) on the simulated beamline."""
    phantom = make_phantom("P-dense", seed=1, size=96)
    return make_sim_beamline(
        phantom,
        catalog.frames_directory,
        seed=3,
        photons_per_frame=1e5,
        frame_size=32,
        probe_fwhm_px=10,
    )


@pytest.fixture
def map_free_feed(catalog):
    """Make an :class:`AgentFeed` that chooses without a live map, over the
    ``ptycho_beamline``'s stage (x, y in +-0.5 um), its decisions stored in the catalog:
    ``map_free_feed(budget, strategy="random", **feed_options)``."""

    def make(budget: int, *, strategy: str = "random", **feed_options) -> AgentFeed:
        space = ScanSpace([Axis(name, -0.5, 0.5, "um") for name in ("x", "y")])
        agent = make_strategy(
            strategy, space, AgentConfig(probe_fwhm=0.2, max_step=0.1, exposure_time=0.005),
            stopping=StoppingRule(max_exposures=budget), seed=5,
        )  # fmt: skip
        sink = DocumentSink(catalog.writer("processed"))
        return AgentFeed(agent, lambda: None, footprint_radius=0.1, sink=sink, **feed_options)

    return make


@pytest.fixture
def tomo_beamline(catalog):
    """A small 3D electrode volume (32^3) for tomography."""
    phantom = make_phantom("T-electrode", seed=2, size=32)
    return make_sim_beamline(phantom, catalog.frames_directory, seed=4, photons_per_pixel=2e3)
