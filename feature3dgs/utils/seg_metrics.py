"""Semantic-segmentation metrics from a confusion matrix.

``conf[t, p]`` counts the pixels whose target class is ``t`` and predicted class is ``p``
(rows: ground truth, columns: prediction).

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

from typing import Optional

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "segmentation_metrics"]


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
