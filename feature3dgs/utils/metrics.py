"""Image quality metrics: PSNR, SSIM and (when its backbone weights are on disk) LPIPS; and,
re-exported from :mod:`feature3dgs.utils.seg_metrics`, the segmentation metrics (confusion matrix,
mIoU, pixel accuracy, mean class accuracy).

LPIPS needs the ImageNet weights of its backbone (AlexNet or VGG16) in the torch hub cache
(``<torch.hub.get_dir()>/checkpoints/``); nothing is downloaded here. When they are missing,
:func:`lpips_metric` returns None and :func:`lpips_unavailable_reason` says which file to put
where, so evaluation reports SSIM/PSNR and a clear skip message instead of failing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from feature3dgs.training.losses import ssim as _ssim
from feature3dgs.utils.seg_metrics import confusion_matrix, segmentation_metrics

__all__ = ["psnr", "ssim", "lpips_metric", "lpips_unavailable_reason", "LPIPS_BACKBONE_FILES",
           "confusion_matrix", "segmentation_metrics"]

LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}


@torch.no_grad()
def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (pred clamped to range)."""
    mse = float(((pred.clamp(0, data_range) - target) ** 2).mean())
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(data_range ** 2 / mse)


@torch.no_grad()
def ssim(pred: Tensor, target: Tensor) -> float:
    """SSIM (pytorch_msssim, 11x11 Gaussian window) of images in [0, 1]."""
    return float(_ssim(pred.clamp(0, 1), target))


def _backbone_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]


def lpips_unavailable_reason(net: str = "alex") -> Optional[str]:
    """None when LPIPS(net) can be built offline, else a message saying what is missing."""
    if net not in LPIPS_BACKBONE_FILES:
        return f"unknown LPIPS network {net!r} (use 'alex' or 'vgg')"
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "LPIPS skipped: the 'lpips' package is not installed (pip install lpips)"
    path = _backbone_path(net)
    if not path.is_file():
        return (f"LPIPS skipped: the {net} backbone weights are not on disk; put "
                f"{LPIPS_BACKBONE_FILES[net]} (from download.pytorch.org/models) at {path}")
    return None


_CACHE: dict = {}


def lpips_metric(net: str = "alex", device: str | torch.device = "cpu",
                 random_backbone: bool = False) -> Optional[Callable[[Tensor, Tensor], float]]:
    """A function (pred, target) -> LPIPS distance for (3,H,W) images in [0, 1], or None when
    the backbone weights are missing (see :func:`lpips_unavailable_reason`).

    ``random_backbone`` builds the network with random backbone weights: for tests only, its
    numbers mean nothing.
    """
    if not random_backbone and lpips_unavailable_reason(net) is not None:
        return None
    key = (net, str(device), random_backbone)
    if key not in _CACHE:
        import warnings

        import lpips

        with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation, from lpips
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False).to(device).eval()
        _CACHE[key] = model
    model = _CACHE[key]

    @torch.no_grad()
    def fn(pred: Tensor, target: Tensor) -> float:
        x = pred.clamp(0, 1).to(device)[None] * 2 - 1
        y = target.to(device)[None] * 2 - 1
        return float(model(x, y).mean())

    return fn
