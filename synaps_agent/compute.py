"""Where the numerical work runs: one setting for every engine.

The reconstruction engines (ptychography, tomography), the U-Net segmenter and the
agent's surrogate run on a torch device. Each takes a ``device`` argument; left at
``None`` it is :func:`resolve_device`'s answer, which reads the ``SYNAPS_DEVICE``
environment variable:

``cpu`` (default)
    The CPU build of torch (what CI runs).
``cuda``, ``cuda:N``
    An NVIDIA GPU; refused with a clear error when torch has no CUDA or the device does not
    exist, rather than silently falling back to the CPU.
``auto``
    ``cuda`` when torch sees a GPU, else ``cpu``.

Arrays on a GPU (CuPy, JAX, torch) are taken without a copy through DLPack
(:func:`as_tensor`).

>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

__all__ = ["DEVICE_VARIABLE", "as_tensor", "resolve_device"]

#: environment variable naming the default torch device
DEVICE_VARIABLE = "SYNAPS_DEVICE"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to compute on.

    Parameters
    ----------
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a torch device. None: the
        ``SYNAPS_DEVICE`` environment variable, else ``"cpu"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        The name is not a torch device.
    RuntimeError
        A CUDA device was asked for and torch cannot use it.
    """
    source = "device"
    if device is None:
        device = os.environ.get(DEVICE_VARIABLE, "").strip() or "cpu"
        source = DEVICE_VARIABLE
    if isinstance(device, str) and device.lower() == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{source}={device!r} is not a torch device (use cpu, cuda, cuda:N or auto)"
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"{source}={device!r} asks for a GPU but torch {torch.__version__} has no "
                "usable CUDA; install a CUDA build of torch or use cpu"
            )
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"{source}={device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return resolved


def as_tensor(array: Any, name: str = "array") -> torch.Tensor:
    """A torch tensor viewing ``array`` without a copy where possible.

    Parameters
    ----------
    array : numpy array, torch tensor, or any object with ``__dlpack__`` (CuPy, JAX)
        The data; a GPU array stays on its GPU.
    name : str
        What the array is, for error messages.

    Returns
    -------
    torch.Tensor
        Detached from any autograd graph; native byte order.

    Raises
    ------
    ValueError
        The object is not numeric or DLPack refuses it.
    """
    if isinstance(array, torch.Tensor):
        return array.detach()
    if not isinstance(array, np.ndarray) and hasattr(array, "__dlpack__"):
        try:
            return torch.from_dlpack(array)
        except (TypeError, RuntimeError, BufferError, AttributeError) as exc:
            raise ValueError(f"{name}: could not import the array through DLPack: {exc}") from exc
    arr = np.asarray(array)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr)
