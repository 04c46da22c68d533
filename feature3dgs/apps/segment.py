"""2D applications of distilled feature fields: open-vocabulary segmentation, relevancy maps,
promptable segmentation with SAM's decoder on rendered features, and click-based selection.

All functions take channels-first maps ``(D, H, W)``; pixel coordinates are ``(x, y)`` =
(column, row), matching SAM's prompts.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.model.camera import Camera
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.distill.distill import student_features
from feature3dgs.model.gaussians import GaussianModel

__all__ = [
    "render_decoded_features",
    "text_relevancy",
    "semantic_segmentation",
    "relevancy_map",
    "sam_masks_on_view",
    "select_by_clicks",
    "stroke_pixels",
    "click_features",
]


def _check_map(features: Tensor, what: str = "features") -> Tensor:
    if features.dim() != 3:
        raise ValueError(f"{what} must be (D, H, W), got {tuple(features.shape)}")
    return features


def render_decoded_features(model: GaussianModel, camera: Camera,
                            decoder: Optional[FeatureDecoder] = None,
                            background: Optional[Tensor] = None) -> Tensor:
    """Render the feature map at ``camera`` and lift it with ``decoder`` when given.

    Returns (D_teacher, H, W) (or (D_render, H, W) without a decoder). Differentiable; wrap in
    ``torch.no_grad()`` for inference.
    """
    if model.features is None:
        raise ValueError("the model has no features to render")
    out = model.render(camera, background, with_features=True)
    feats = out.features
    return decoder(feats) if decoder is not None else feats


def text_relevancy(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """(n, H, W) cosine similarity of each pixel's feature with each of n text embeddings.

    Features are L2-normalised per pixel and the embeddings per row (zero vectors give 0).
    """
    _check_map(features)
    text = torch.as_tensor(text_embeddings).to(features)
    if text.dim() == 1:
        text = text[None]
    if text.dim() != 2 or text.shape[1] != features.shape[0]:
        raise ValueError(f"text_embeddings must be (n, {features.shape[0]}), got {tuple(text.shape)}")
    f = F.normalize(features, dim=0)
    t = F.normalize(text, dim=1)
    return torch.einsum("dhw,nd->nhw", f, t)


def semantic_segmentation(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """(H, W) int64: index of the most similar text embedding at each pixel."""
    return text_relevancy(features, text_embeddings).argmax(0)


def relevancy_map(features: Tensor, text_emb_query: Tensor, negatives: Optional[Tensor] = None,
                  temperature: float = 0.1) -> Tensor:
    """(H, W) relevancy of each pixel to one query, in [0, 1].

    With ``negatives`` (m, D) (e.g. the embeddings of the LERF canonical phrases "object",
    "things", "stuff", "texture"): LERF's score, the minimum over negatives j of the pairwise
    softmax ``exp(s_q / T) / (exp(s_q / T) + exp(s_j / T))`` with cosine similarities s and
    temperature T. Without negatives: the plain cosine similarity mapped to [0, 1] as
    ``(s_q + 1) / 2``.
    """
    q = torch.as_tensor(text_emb_query).to(features).reshape(1, -1)
    s_q = text_relevancy(features, q)[0]
    if negatives is None:
        return ((s_q + 1) * 0.5).clamp(0, 1)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    neg = torch.as_tensor(negatives).to(features)
    if neg.dim() == 1:
        neg = neg[None]
    if neg.shape[0] == 0:
        return ((s_q + 1) * 0.5).clamp(0, 1)
    s_n = text_relevancy(features, neg)  # (m, H, W)
    # softmax over the pair (q, j) for q's entry = sigmoid((s_q - s_j) / T)
    pair = torch.sigmoid((s_q[None] - s_n) / temperature)
    return pair.min(0).values


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sam_masks_on_view(model: GaussianModel, camera: Camera, decoder: Optional[FeatureDecoder], sam_teacher,
                      points=None, labels=None, boxes=None, *, multimask_output: bool = False,
                      pad: str = "zeros") -> dict:
    """SAM masks from prompts, using rendered (and decoded) features instead of SAM's encoder.

    The feature map is rendered at the camera, resized bilinearly to SAM's cropped grid
    ``sam_teacher.feature_size(H, W)`` (exactly what distillation compared against the teacher),
    lifted to 256 channels by ``decoder`` (None when the Gaussians already carry 256-d features),
    padded to SAM's (256, 64, 64) frame with ``embedding_from_cropped`` and decoded with SAM's
    prompt encoder and mask decoder. Prompts are in full-resolution pixel coordinates (x, y).

    Returns:
        {'masks': (k, H, W) bool, 'scores': (k,) SAM's predicted IoU,
         'timings': {'render_ms', 'decode_ms', 'mask_ms'}}.
    """
    H, W = camera.height, camera.width
    dev = model.device
    with torch.no_grad():
        _sync(dev)
        t0 = time.perf_counter()
        out = model.render(camera, with_features=True)
        if out.features is None:
            raise ValueError("the model has no features to render")
        _sync(dev)
        t1 = time.perf_counter()
        size = sam_teacher.feature_size(H, W)
        feats = student_features(out.features, size, decoder)
        if feats.shape[0] != sam_teacher.dim:
            raise ValueError(f"decoded features have {feats.shape[0]} channels, SAM needs {sam_teacher.dim}")
        emb = sam_teacher.embedding_from_cropped(feats, pad=pad)
        _sync(dev)
        t2 = time.perf_counter()
        masks, scores = sam_teacher.predict_masks(emb, points, labels, boxes, image_size=(H, W),
                                                  multimask_output=multimask_output, return_scores=True)
        _sync(masks.device)
        t3 = time.perf_counter()
    return {"masks": masks, "scores": scores,
            "timings": {"render_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1), "mask_ms": 1e3 * (t3 - t2)}}


def stroke_pixels(stroke: Sequence[Sequence[float]], spacing: float = 1.0) -> list[tuple[float, float]]:
    """The pixels (x, y) along a stroke: the polyline through ``stroke``'s points sampled every
    ``spacing`` pixels (a single point is a click). Feed the result to :func:`select_by_clicks`
    or :func:`click_features` as the clicks."""
    pts = [(float(p[0]), float(p[1])) for p in stroke]
    if not pts:
        raise ValueError("stroke must have at least one point")
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    out = [pts[0]]
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 / spacing))
        out += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return out


def click_features(features: Tensor, clicks: Sequence[Sequence[float]]) -> Tensor:
    """(k, D) L2-normalised features of a (D, H, W) map at the clicked pixels (x, y)."""
    _check_map(features)
    return _click_features(features, clicks)


def _click_features(features: Tensor, clicks: Sequence[Sequence[float]]) -> Tensor:
    """(k, D) normalised features at the clicked pixels (x, y)."""
    D, H, W = features.shape
    rows = []
    for c in clicks:
        x, y = int(c[0]), int(c[1])
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"click {tuple(c)} is outside the {W}x{H} image")
        rows.append(features[:, y, x])
    return F.normalize(torch.stack(rows), dim=1)


def select_by_clicks(features_src: Tensor, clicks: Sequence[Sequence[float]], features_other: Tensor,
                     threshold: float = 0.9, negative_clicks: Optional[Sequence[Sequence[float]]] = None) -> Tensor:
    """(H', W') bool: pixels of ``features_other`` that match the clicked pixels of ``features_src``.

    Nearest-neighbour feature matching (as in Gaussian-grouping / GSN-style selection): each
    pixel's feature is compared (cosine) with the features at the positive clicks (x, y) of the
    source map. Without ``negative_clicks`` a pixel is selected when its best similarity exceeds
    ``threshold``; with them, when its best similarity to a positive click exceeds its best
    similarity to a negative click (``threshold`` is then not used).
    """
    _check_map(features_src, "features_src")
    _check_map(features_other, "features_other")
    if features_src.shape[0] != features_other.shape[0]:
        raise ValueError(f"feature dimensions differ: {features_src.shape[0]} vs {features_other.shape[0]}")
    if len(clicks) == 0:
        raise ValueError("give at least one click")
    other = F.normalize(features_other, dim=0)
    pos = torch.einsum("kd,dhw->khw", _click_features(features_src, clicks).to(other), other).max(0).values
    if negative_clicks:
        neg = torch.einsum("kd,dhw->khw", _click_features(features_src, negative_clicks).to(other),
                           other).max(0).values
        return pos > neg
    return pos > threshold
