"""3D editing with distilled features: score Gaussians against a (text) query, select them, and
extract, delete or recolour the selection.

Every edit returns a new :class:`~feature3dgs.gaussians.GaussianModel` (all parameters copied,
``active_sh_degree`` kept) and never modifies its input.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.decoder import FeatureDecoder
from feature3dgs.gaussians import GaussianModel, rgb_to_sh

__all__ = ["gaussian_scores", "select_gaussians", "extract", "delete", "recolor"]


def gaussian_scores(model: GaussianModel, decoder: Optional[FeatureDecoder], text_embedding: Tensor) -> Tensor:
    """(N,) cosine similarity of each Gaussian's (decoded) feature with the query (D_teacher,).

    The per-Gaussian features go through ``decoder.decode_vectors`` when a decoder is given
    (the same linear map the 1x1 conv applies to rendered maps), else are used as they are.
    """
    feats = model.features
    if feats is None:
        raise ValueError("the model has no features to score")
    with torch.no_grad():
        feats = decoder.decode_vectors(feats) if decoder is not None else feats.detach()
        q = torch.as_tensor(text_embedding).to(feats).reshape(-1)
        if q.shape[0] != feats.shape[1]:
            raise ValueError(f"query has {q.shape[0]} channels, the (decoded) features {feats.shape[1]}")
        return F.normalize(feats, dim=1) @ F.normalize(q, dim=0)


def select_gaussians(scores: Tensor, threshold: Optional[float] = None, top_k: Optional[int] = None) -> Tensor:
    """(N,) bool selection from scores: ``scores > threshold`` and/or the ``top_k`` highest.

    With both, a Gaussian must satisfy both (the top_k among those above the threshold).
    """
    if threshold is None and top_k is None:
        raise ValueError("give threshold and/or top_k")
    scores = torch.as_tensor(scores).reshape(-1)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if threshold is not None:
        mask &= scores > threshold
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        k = min(int(top_k), int(mask.sum()))
        masked = torch.where(mask, scores, torch.full_like(scores, float("-inf")))
        keep = torch.zeros_like(mask)
        if k > 0:
            keep[masked.topk(k).indices] = True
        mask = keep
    return mask


def _check_mask(model: GaussianModel, mask: Tensor) -> Tensor:
    mask = torch.as_tensor(mask, device=model.device)
    if mask.dtype != torch.bool or mask.shape != (model.num_gaussians,):
        raise ValueError(f"mask must be a ({model.num_gaussians},) bool tensor, got "
                         f"{tuple(mask.shape)} {mask.dtype}")
    return mask


def _subset(model: GaussianModel, keep: Tensor) -> GaussianModel:
    if not bool(keep.any()):
        raise ValueError("the edit would leave no Gaussians")
    params = {k: v.detach()[keep] for k, v in model.params.items()}
    return GaussianModel.from_params(params, model.active_sh_degree)


def extract(model: GaussianModel, mask: Tensor) -> GaussianModel:
    """A new model with only the selected Gaussians."""
    return _subset(model, _check_mask(model, mask))


def delete(model: GaussianModel, mask: Tensor) -> GaussianModel:
    """A new model with every Gaussian except the selected ones."""
    return _subset(model, ~_check_mask(model, mask))


def recolor(model: GaussianModel, mask: Tensor, rgb) -> GaussianModel:
    """A new model whose selected Gaussians have the constant colour ``rgb`` (3,) in [0, 1]:
    their SH DC is set to that colour and their higher-order SH to zero."""
    mask = _check_mask(model, mask)
    color = torch.as_tensor(rgb, dtype=torch.float32, device=model.device).reshape(3)
    params = {k: v.detach().clone() for k, v in model.params.items()}
    params["sh_dc"][mask] = rgb_to_sh(color).reshape(1, 1, 3)
    params["sh_rest"][mask] = 0.0
    return GaussianModel.from_params(params, model.active_sh_degree)
