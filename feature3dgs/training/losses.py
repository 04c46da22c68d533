"""Photometric losses (3DGS): L1 and D-SSIM, combined as (1 - lambda) * L1 + lambda * (1 - SSIM).

SSIM comes from ``pytorch_msssim`` (11x11 Gaussian window, sigma 1.5, valid convolution),
differentiable and fused enough for training on the CPU and GPU.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["l1_loss", "ssim", "dssim_loss", "rgb_loss"]


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs().mean()


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM of two (C,H,W) or (B,C,H,W) images with values in [0, data_range].

    Images smaller than the 11-pixel window use the largest odd window that fits.
    """
    from pytorch_msssim import ssim as _ssim

    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    x, y = (pred[None], target[None]) if pred.dim() == 3 else (pred, target)
    win = min(11, min(x.shape[-2:]))
    win -= 1 - win % 2
    if win < 1:
        raise ValueError(f"ssim: image too small {tuple(x.shape[-2:])}")
    return _ssim(x, y, data_range=data_range, size_average=True, win_size=win)


def dssim_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - SSIM."""
    return 1.0 - ssim(pred, target)


def rgb_loss(pred: Tensor, target: Tensor, lambda_dssim: float = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """The 3DGS photometric loss and its parts: (total, {'l1': ..., 'dssim': ...})."""
    l1 = l1_loss(pred, target)
    if lambda_dssim == 0:
        return l1, {"l1": l1}
    d = dssim_loss(pred, target)
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * d, {"l1": l1, "dssim": d}
