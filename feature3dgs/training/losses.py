"""Photometric losses (3DGS): L1 and D-SSIM, combined as (1 - lambda) * L1 + lambda * (1 - SSIM).

SSIM is :func:`feature3dgs.utils.metrics.ssim` (``pytorch_msssim``), differentiable.
"""

from __future__ import annotations

from torch import Tensor

from feature3dgs.utils.metrics import ssim

__all__ = ["l1_loss", "dssim_loss", "rgb_loss"]


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs().mean()


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
