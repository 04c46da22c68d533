"""Choosing the device to render (and train) on: the CPU, or CUDA where the kernels were built for it."""

from __future__ import annotations

from typing import Union

import torch

from feature3dgs.rendering._backend import backend_info

__all__ = ["resolve_device"]


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """The device to compute on: ``device`` itself, or (None) CUDA when a GPU is visible and the
    kernels were compiled for it, else the CPU.

    Raises:
        ValueError: ``device`` is not a torch device string (e.g. 'tpu'), or names a CUDA device
            that this machine does not have.
    """
    if device is None:
        if torch.cuda.is_available() and backend_info().get("cuda"):
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (or None for automatic), got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
