"""Image quality of a trained model on a scene's views: PSNR, SSIM and (when available) LPIPS."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.utils.io import safe_name, save_png
from feature3dgs.utils.metrics import lpips_metric, lpips_unavailable_reason, psnr, ssim

__all__ = ["EvalResult", "ViewMetrics", "evaluate_model", "Split"]

Split = Literal["test", "train", "all"]


@dataclass
class ViewMetrics:
    """One view: PSNR in dB, SSIM, LPIPS (None when not computed)."""

    psnr: float
    ssim: float
    lpips: Optional[float] = None


@dataclass
class EvalResult:
    """Means over the views of a split, and every view's figures."""

    split: str
    n_views: int
    psnr: float
    ssim: float
    lpips: Optional[float]
    lpips_note: Optional[str]
    per_view: dict[str, ViewMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def split_views(scene, split: Split) -> list:
    """The views of ``split``; ValueError for an unknown split or one with no views."""
    views = {"test": scene.test_views, "train": scene.train_views, "all": scene.views}.get(split)
    if views is None:
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
    if not views:
        raise ValueError(f"scene {scene.source_path} has no {split} views")
    return list(views)


@torch.no_grad()
def evaluate_model(model: GaussianModel, scene, split: Split = "test", save_dir: Union[str, Path, None] = None,
                   lpips: Optional[Literal["alex", "vgg"]] = None, background: Optional[Tensor] = None,
                   device: Union[str, torch.device, None] = None) -> EvalResult:
    """PSNR / SSIM (/ LPIPS with network ``lpips``) of ``model`` on a scene split; with
    ``save_dir`` the renders are written there as PNGs (one per view, named after it)."""
    views = split_views(scene, split)
    device = torch.device(device) if device is not None else model.device
    bg = (scene.background if background is None else background).to(device)
    lp_fn, note = None, None
    if lpips is not None:
        note = lpips_unavailable_reason(lpips)
        lp_fn = lpips_metric(lpips, device) if note is None else None
    per_view: dict[str, ViewMetrics] = {}
    for view in views:
        out = model.render(view.camera, bg)
        gt = scene.load_image(view).to(device)
        rgb = out.rgb.clamp(0, 1)
        per_view[view.name] = ViewMetrics(psnr=psnr(rgb, gt), ssim=float(ssim(rgb, gt)),
                                          lpips=lp_fn(rgb, gt) if lp_fn is not None else None)
        if save_dir is not None:
            save_png(rgb, Path(save_dir) / f"{safe_name(view.name)}.png")
    n = len(per_view)
    return EvalResult(split=split, n_views=n, psnr=sum(v.psnr for v in per_view.values()) / n,
                      ssim=sum(v.ssim for v in per_view.values()) / n,
                      lpips=sum(v.lpips for v in per_view.values()) / n if lp_fn is not None else None,
                      lpips_note=note, per_view=per_view)
