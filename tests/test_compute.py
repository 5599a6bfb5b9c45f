"""One device setting for every engine: ``SYNAPS_DEVICE`` and DLPack input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synaps_agent.compute import DEVICE_VARIABLE, as_tensor, resolve_device
from synaps_agent.recon.tomo import StreamingFBP, sirt


def test_default_is_cpu_and_the_variable_selects(monkeypatch):
    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, "auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit argument wins


def test_bad_names_are_refused_with_the_setting_named(monkeypatch):
    monkeypatch.setenv(DEVICE_VARIABLE, "gpu0")
    with pytest.raises(ValueError, match="SYNAPS_DEVICE='gpu0' is not a torch device"):
        resolve_device()
    with pytest.raises(ValueError, match="device='tpu:x'"):
        resolve_device("tpu:x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_is_refused_rather_than_silently_replaced(monkeypatch):
    monkeypatch.setenv(DEVICE_VARIABLE, "cuda")
    with pytest.raises(RuntimeError, match="asks for a GPU"):
        resolve_device()
    # the engines follow the setting: they refuse too instead of computing on the CPU
    with pytest.raises(RuntimeError, match="asks for a GPU"):
        StreamingFBP((4, 8))


class _DLPackOnly:
    """A foreign array (as CuPy or JAX present themselves) exposing only DLPack."""

    def __init__(self, array: np.ndarray) -> None:
        self._t = torch.from_numpy(array)

    def __dlpack__(self, **kwargs):
        return self._t.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


def test_dlpack_arrays_are_viewed_without_a_copy():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = as_tensor(_DLPackOnly(base), "frames")
    base[0, 0] = 42.0  # the tensor shares the memory
    assert t[0, 0].item() == 42.0
    with pytest.raises(ValueError, match="frames must be a numeric array"):
        as_tensor(np.array([object()]), "frames")


def test_tomography_takes_dlpack_projections():
    rng = np.random.default_rng(0)
    sino = rng.random((6, 2, 16)).astype(np.float32)  # (angles, rows, columns)
    angles = np.linspace(0, 180, 6, endpoint=False)
    expected = sirt(sino, angles, num_iterations=3)
    got = sirt(_DLPackOnly(sino), angles, num_iterations=3)
    np.testing.assert_array_equal(got, expected)
    assert np.abs(expected).max() > 0
