"""3D editing with distilled features: score Gaussians against a (text) query, select them, and
extract, delete or recolour the selection.

Every edit returns a new :class:`~feature3dgs.model.gaussians.GaussianModel` (all parameters copied,
``active_sh_degree`` kept) and never modifies its input.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import GaussianModel, rgb_to_sh

__all__ = ["gaussian_scores", "gaussian_click_scores", "select_gaussians", "select_gaussians_by_clicks",
           "extract", "delete", "recolor"]


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


def gaussian_click_scores(model: GaussianModel, prototypes: Tensor) -> Tensor:
    """(N,) best cosine similarity of each Gaussian's own feature with k prototype features.

    ``prototypes`` (k, D_render) are rendered-feature vectors, e.g. the features at clicked
    pixels (:func:`feature3dgs.apps.segment.click_features` of the *undecoded* render): a pixel's
    feature is a blend of Gaussian features in the same space, so Gaussians of the clicked
    object score close to 1.
    """
    feats = model.features
    if feats is None:
        raise ValueError("the model has no features to score")
    protos = torch.as_tensor(prototypes).to(feats)
    if protos.dim() == 1:
        protos = protos[None]
    if protos.dim() != 2 or protos.shape[1] != feats.shape[1] or protos.shape[0] == 0:
        raise ValueError(f"prototypes must be (k >= 1, {feats.shape[1]}), got {tuple(protos.shape)}")
    with torch.no_grad():
        return (F.normalize(feats.detach(), dim=1) @ F.normalize(protos, dim=1).T).max(1).values


def select_gaussians_by_clicks(model: GaussianModel, positives: Tensor, negatives: Optional[Tensor] = None,
                               threshold: float = 0.9) -> Tensor:
    """(N,) bool: the Gaussians of the clicked object, by nearest-neighbour feature matching.

    With only ``positives`` (k, D_render) a Gaussian is selected when its best cosine similarity
    exceeds ``threshold``; with ``negatives`` (m, D_render) too, when it is closer to a positive
    than to every negative (the same rule as :func:`feature3dgs.apps.segment.select_by_clicks` in 2D).
    """
    pos = gaussian_click_scores(model, positives)
    if negatives is not None and len(negatives) > 0:
        return pos > gaussian_click_scores(model, negatives)
    return pos > threshold


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
    return GaussianModel(params, model.active_sh_degree)


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
    return GaussianModel(params, model.active_sh_degree)
