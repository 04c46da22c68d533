"""Argument checks shared by the mask-fusion modules: cameras, (H, W) masks and per-Gaussian weights."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel

__all__ = ["MaskLike", "CameraList", "as_cameras", "as_plane", "as_mask", "as_masks", "as_weights"]

MaskLike = Union[Tensor, np.ndarray]
CameraList = Union[Camera, Sequence[Camera]]


def as_cameras(cameras: CameraList, name: str = "cameras") -> list[Camera]:
    if isinstance(cameras, Camera):
        return [cameras]
    try:
        cams = list(cameras)
    except TypeError:
        raise ValueError(f"{name} must be a Camera or a sequence of Cameras, got {type(cameras).__name__}") from None
    if not cams:
        raise ValueError(f"{name} must hold at least one Camera")
    for i, c in enumerate(cams):
        if not isinstance(c, Camera):
            raise ValueError(f"{name}[{i}] must be a Camera, got {type(c).__name__}")
    return cams


def as_plane(x, camera: Camera, name: str) -> Tensor:
    """``x`` as an (H, W) tensor matching ``camera`` ((1, H, W) is accepted)."""
    t = torch.as_tensor(x)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2 or tuple(t.shape) != (camera.height, camera.width):
        raise ValueError(f"{name} must be (H, W) = ({camera.height}, {camera.width}) (or (1, H, W)) to match "
                         f"its camera, got {tuple(t.shape)}")
    return t


def as_mask(mask: MaskLike, camera: Camera, name: str, device: torch.device) -> Tensor:
    """(H, W) float32 in [0, 1] on ``device``, from a bool / 0-1 integer / float mask."""
    m = as_plane(mask, camera, name)
    if m.dtype == torch.bool:
        m = m.to(torch.float32)
    elif not m.is_floating_point():
        if m.numel() and (int(m.min()) < 0 or int(m.max()) > 1):
            raise ValueError(f"{name}: an integer mask must hold only 0 and 1, got values in "
                             f"[{int(m.min())}, {int(m.max())}]")
        m = m.to(torch.float32)
    else:
        m = m.to(torch.float32)
        if not bool(torch.isfinite(m).all()):
            raise ValueError(f"{name} holds NaN or Inf")
        if m.numel() and (float(m.min()) < -1e-6 or float(m.max()) > 1 + 1e-6):
            raise ValueError(f"{name}: a soft mask must lie in [0, 1], got values in "
                             f"[{float(m.min()):.4g}, {float(m.max()):.4g}]")
        m = m.clamp(0, 1)
    return m.to(device)


def as_masks(masks, cams: list[Camera], device: torch.device, name: str = "masks") -> list[Optional[Tensor]]:
    """One (H, W) float mask (or None: view not used) per camera."""
    if isinstance(masks, (Tensor, np.ndarray)):  # one (H, W) mask, or a (V, H, W) stack
        t = torch.as_tensor(masks)
        masks = [t] if t.dim() == 2 else list(t.unbind(0)) if t.dim() == 3 else [t]
    try:
        ms = list(masks)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of (H, W) masks, got {type(masks).__name__}") from None
    if len(ms) != len(cams):
        raise ValueError(f"{name} holds {len(ms)} masks for {len(cams)} cameras; give one per camera "
                         "(None skips a view)")
    out = [None if m is None else as_mask(m, c, f"{name}[{i}]", device) for i, (m, c) in enumerate(zip(ms, cams))]
    if all(m is None for m in out):
        raise ValueError(f"{name}: every mask is None; give at least one")
    return out


def as_weights(model: GaussianModel, weights, name: str = "weights") -> Tensor:
    w = torch.as_tensor(weights)
    if w.dim() == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.dim() != 1 or w.shape[0] != model.num_gaussians:
        raise ValueError(f"{name} must be ({model.num_gaussians},), one per Gaussian, got {tuple(w.shape)}")
    w = w.to(model.device, torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} holds NaN or Inf")
    return w
