"""2D segmentation on novel views: promptable segmentation with SAM's decoder on rendered
features, and click / stroke selection by feature matching (text queries: :mod:`.query`).

All functions take channels-first maps ``(D, H, W)``; pixel coordinates are ``(x, y)`` =
(column, row), matching SAM's prompts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.distill.distill import student_features
from feature3dgs.model.camera import Camera
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import GaussianModel

__all__ = [
    "render_decoded_features",
    "SamMasks",
    "StageTimings",
    "sam_masks_on_view",
    "select_by_clicks",
    "stroke_pixels",
    "click_features",
    "check_prompts",
]


def _check_map(features: Tensor, what: str = "features") -> Tensor:
    if features.dim() != 3:
        raise ValueError(f"{what} must be (D, H, W), got {tuple(features.shape)}")
    return features


def check_prompts(points=None, boxes=None, *, width: int, height: int) -> None:
    """Refuse prompts that do not lie on a ``width`` x ``height`` view (ValueError naming them).

    points: (n, 2) pixel coordinates (x, y), each finite with 0 <= x < width, 0 <= y < height.
    boxes: (m, 4) or (4,) boxes (x0, y0, x1, y1) in pixels, each finite with
    0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height (not inverted, not of zero area, inside the
    view).
    """
    if points is not None:
        pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
        for x, y in pts.tolist():
            if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < width and 0 <= y < height):
                raise ValueError(f"point ({x:g},{y:g}) is outside the {width}x{height} view "
                                 f"(0 <= x < {width}, 0 <= y < {height})")
    if boxes is not None:
        bx = torch.as_tensor(boxes, dtype=torch.float64)
        if bx.numel() % 4 or bx.numel() == 0:
            raise ValueError(f"boxes must be (x0, y0, x1, y1) quadruples, got shape {tuple(bx.shape)}")
        for x0, y0, x1, y1 in bx.reshape(-1, 4).tolist():
            box = f"box ({x0:g},{y0:g},{x1:g},{y1:g})"
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                raise ValueError(f"{box} has a NaN or Inf corner")
            if x1 <= x0 or y1 <= y0:
                what = "is inverted" if (x1 < x0 or y1 < y0) else "has zero area"
                raise ValueError(f"{box} {what}: give X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1 (top-left, then "
                                 "bottom-right corner)")
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise ValueError(f"{box} is not inside the {width}x{height} view "
                                 f"(0 <= X0 < X1 <= {width}, 0 <= Y0 < Y1 <= {height})")


def render_decoded_features(model: GaussianModel, camera: Camera, decoder: Optional[FeatureDecoder] = None,
                            background: Optional[Tensor] = None) -> Tensor:
    """The feature map at ``camera``, lifted by ``decoder`` when given: (D_teacher, H, W) (or
    (D_render, H, W) without a decoder). Differentiable; wrap in ``torch.no_grad()`` for inference."""
    if model.features is None:
        raise ValueError("the model has no features to render")
    feats = model.render(camera, background, features=model.features).features
    return decoder(feats) if decoder is not None else feats


@dataclass
class StageTimings:
    """Wall time of the stages of one prompt, in milliseconds."""

    render_ms: float
    decode_ms: float
    mask_ms: float

    @property
    def total_ms(self) -> float:
        return self.render_ms + self.decode_ms + self.mask_ms


@dataclass
class SamMasks:
    """SAM's answer to one prompt: masks (k, H, W) bool, scores (k,) (SAM's predicted IoU), and
    the stage timings."""

    masks: Tensor
    scores: Tensor
    timings: StageTimings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sam_masks_on_view(model: GaussianModel, camera: Camera, decoder: Optional[FeatureDecoder], sam_teacher,
                      points=None, labels=None, boxes=None, *, multimask_output: bool = False,
                      pad: str = "zeros") -> SamMasks:
    """SAM masks from prompts, using rendered (and decoded) features instead of SAM's encoder.

    The feature map is rendered at the camera, resized bilinearly to SAM's cropped grid
    ``sam_teacher.feature_size(H, W)`` (exactly what distillation compared against the teacher),
    lifted to 256 channels by ``decoder`` (None when the Gaussians already carry 256-d features),
    padded to SAM's (256, 64, 64) frame with ``embedding_from_cropped`` and decoded with SAM's
    prompt encoder and mask decoder. Prompts are in full-resolution pixel coordinates (x, y).

    Returns:
        a :class:`SamMasks` (masks (k, H, W) bool, scores (k,), stage timings).

    Raises:
        ValueError: a prompt is not on the view (see :func:`check_prompts`).
    """
    H, W = camera.height, camera.width
    check_prompts(points, boxes, width=W, height=H)
    dev = model.device
    with torch.no_grad():
        _sync(dev)
        t0 = time.perf_counter()
        out = model.render(camera, features=model.features)
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
    return SamMasks(masks=masks, scores=scores,
                    timings=StageTimings(render_ms=1e3 * (t1 - t0), decode_ms=1e3 * (t2 - t1), mask_ms=1e3 * (t3 - t2)))


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
