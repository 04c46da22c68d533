"""Image and segmentation metrics.

Image quality: PSNR, SSIM (``pytorch_msssim``: 11x11 Gaussian window, sigma 1.5, valid
convolution; differentiable, the training loss uses it too) and, when its backbone weights are
on disk, LPIPS. LPIPS needs the ImageNet weights of its backbone (AlexNet or VGG16) in the torch
hub cache (``<torch.hub.get_dir()>/checkpoints/``); nothing is downloaded here. When they are
missing, :func:`lpips_metric` returns None and :func:`lpips_unavailable_reason` says which file to
put where, so evaluation reports SSIM/PSNR and a clear skip message instead of failing.

Segmentation, from a confusion matrix ``conf[t, p]`` counting the pixels whose target class is
``t`` and predicted class is ``p`` (rows: ground truth, columns: prediction):


Conventions:

* IoU of class c = TP / (TP + FP + FN). A class absent from both the prediction and the target
  (TP + FP + FN = 0) has an undefined IoU: it is reported as NaN in ``iou_per_class`` and left
  out of ``miou``.
* Class accuracy of class c = TP / (number of target pixels of class c). A class with no target
  pixels has an undefined accuracy (NaN) and is left out of ``mean_class_accuracy`` (this
  includes classes that appear only in the prediction; their false positives still lower the
  IoU of that class and the pixel accuracy).
* Pixel accuracy = trace / total. With no counted pixels at all every metric is NaN.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from pytorch_msssim import ssim as msssim_ssim
from torch import Tensor

__all__ = ["psnr", "ssim", "lpips_metric", "lpips_unavailable_reason", "LPIPS_BACKBONE_FILES",
           "confusion_matrix", "segmentation_metrics", "label_map"]


@torch.no_grad()
def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (pred clamped to range)."""
    mse = float(((pred.clamp(0, data_range) - target) ** 2).mean())
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(data_range ** 2 / mse)


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM of two (C,H,W) or (B,C,H,W) images with values in [0, data_range].

    Images smaller than the 11-pixel window use the largest odd window that fits.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    x, y = (pred[None], target[None]) if pred.dim() == 3 else (pred, target)
    win = min(11, min(x.shape[-2:]))
    win -= 1 - win % 2
    if win < 1:
        raise ValueError(f"ssim: image too small {tuple(x.shape[-2:])}")
    return msssim_ssim(x, y, data_range=data_range, size_average=True, win_size=win)


LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}


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


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int,
                     ignore_index: Optional[int] = None) -> Tensor:
    """(K, K) int64 confusion matrix, rows = target class, columns = predicted class.

    Args:
        pred, target: integer label maps of the same shape (e.g. (H, W)).
        num_classes: K; labels must lie in [0, K).
        ignore_index: target label whose pixels are not counted (e.g. 255 for "void").

    Raises:
        ValueError: shapes differ, or a counted pixel has a label outside [0, K).
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p = pred.reshape(-1).to(torch.int64).cpu()
    t = target.reshape(-1).to(torch.int64).cpu()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    k = int(num_classes)
    for name, x in (("pred", p), ("target", t)):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= k):
            raise ValueError(f"{name} has labels outside [0, {k}): min {int(x.min())}, max {int(x.max())}")
    return torch.bincount(t * k + p, minlength=k * k).reshape(k, k)


def segmentation_metrics(conf: Tensor) -> dict:
    """Metrics of a (K, K) confusion matrix (see the module docstring for the conventions).

    Returns:
        {'miou': float, 'pixel_accuracy': float, 'mean_class_accuracy': float,
         'iou_per_class': (K,) float64 tensor with NaN for classes absent from both}.
    """
    conf = torch.as_tensor(conf).to(torch.float64)
    if conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be (K, K), got {tuple(conf.shape)}")
    tp = conf.diagonal()
    gt = conf.sum(1)
    pr = conf.sum(0)
    union = gt + pr - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = conf.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")

    def nanmean(x: Tensor) -> float:
        valid = ~torch.isnan(x)
        return float(x[valid].mean()) if bool(valid.any()) else float("nan")

    return {"miou": nanmean(iou), "pixel_accuracy": pixel_acc,
            "mean_class_accuracy": nanmean(acc), "iou_per_class": iou}


def label_map(labels, k: Optional[int], h: int, w: int, ignore_index: Optional[int] = None,
              name: str = "labels") -> Tensor:
    """``labels`` as an (H, W) int64 map of class ids in [0, k) (``ignore_index`` exempt), or
    ValueError naming ``name``: wrong shape, a non-integer dtype, or ids out of range."""
    t = torch.as_tensor(labels)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2 or tuple(t.shape) != (h, w):
        raise ValueError(f"{name} must be (H, W) = ({h}, {w}), got {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if k is not None and t.numel():
        counted = t if ignore_index is None else t[t != ignore_index]
        if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= k):
            raise ValueError(f"{name} holds class ids outside [0, {k}): min {int(counted.min())}, "
                             f"max {int(counted.max())}" + ("" if ignore_index is None else
                                                           f" (ignore_index {ignore_index} excluded)"))
    return t
