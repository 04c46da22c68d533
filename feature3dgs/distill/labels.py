"""A synthetic, multi-view consistent teacher made from a scene's class labels (for measuring
distillation, and student-vs-teacher segmentation, where no real teacher can run)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.distill.cache import FeatureCache

__all__ = ["label_embeddings", "label_class_count", "label_feature_cache"]


def label_embeddings(n_classes: int, dim: int, seed: int = 0) -> Tensor:
    """(n_classes, dim) fixed random unit vectors: the label teacher's class features."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_classes, dim, generator=g), dim=1)


def label_class_count(scene) -> int:
    """Classes the label teacher embeds: the scene's named classes plus one spare id."""
    return max(len(scene.class_names or []), 1) + 1


def label_feature_cache(scene, root: Union[str, Path], dim: int = 16, size: Optional[tuple[int, int]] = None,
                        noise: float = 0.0, seed: int = 0) -> FeatureCache:
    """A synthetic, multi-view consistent teacher made from the scene's class labels.

    Each class gets a fixed random unit vector of `dim` channels; a view's teacher map is
    the embedding of its class-label image, area-averaged to `size` (h, w) (default: full
    resolution), plus Gaussian noise of std `noise` drawn per view. Used to measure
    distillation (and student-vs-teacher segmentation) where no real teacher can run.
    """
    if not scene.has_labels:
        raise ValueError(f"scene {scene.source_path} has no class labels for a label teacher")
    n_classes = label_class_count(scene)
    embed = label_embeddings(n_classes, dim, seed)
    g = torch.Generator().manual_seed(seed + 1)
    key = f"labels|dim={dim}|size={size}|noise={noise}|seed={seed}|classes={n_classes}"
    cache = FeatureCache(Path(root), key)
    for view in list(scene.train_views) + list(scene.test_views):
        if cache.has(view.name):
            continue
        labels = scene.load_labels(view, "class").clamp(0, n_classes - 1)
        fmap = embed[labels].permute(2, 0, 1)  # (dim,H,W)
        if size is not None:
            fmap = F.adaptive_avg_pool2d(fmap[None], size)[0]
        if noise > 0:
            fmap = fmap + noise * torch.randn(fmap.shape, generator=g)
        cache.save(view.name, fmap)
    return cache
