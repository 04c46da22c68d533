"""Per-Gaussian object weights from 2D masks: votes (one backward pass per view), weights
optimised through the frozen renderer, and the object's mask rendered at any camera.

Votes. Gaussian i's blending weight at pixel p is w_i(p) = alpha_i(p) T_i(p). Summed over the
pixels of the given views, its vote is::

    pos_i = sum_p w_i(p) m(p)            neg_i = sum_p w_i(p) (1 - m(p))
    vote_i = pos_i / (pos_i + background_weight * neg_i)

(background_weight = 1: the plain ratio sum_p w_i m / sum_p w_i). Both sums come out of one
backward pass of the differentiable renderer: rendering a 2-channel feature f (zeros) and
back-propagating L = sum_p F_0(p) m(p) + sum_p F_1(p) gives dL/df_i0 = pos_i and
dL/df_i1 = sum_p w_i(p), exactly. A Gaussian no pixel of any view blends (outside every view,
culled, or hidden behind opaque ones: the blending stops at T < 1e-4) gets weight 0.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.apps.mask_fusion.checks import (
    CameraList,
    as_cameras,
    as_masks,
    as_weights,
)
from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.rendering import RenderOutput

__all__ = ["gaussian_mask_votes", "optimize_object_weights", "object_mask_bce", "render_object_mask",
           "threshold_mask", "render_frozen", "EPS"]

#: the smallest alpha divided by
EPS = 1e-6


def render_frozen(model: GaussianModel, camera: Camera, features: Optional[Tensor] = None) -> RenderOutput:
    """Render with detached geometry: only ``features`` can carry gradients."""
    return model.render(camera, features=features, detach_geometry=True)


def _evidence(model: GaussianModel, cams: list[Camera], masks: list[Optional[Tensor]]):
    """Per-Gaussian sums over all masked views: pos = sum w m, total = sum w (float64), and
    the per-view alpha maps (None for skipped views)."""
    n = model.num_gaussians
    pos = torch.zeros(n, dtype=torch.float64, device=model.device)
    tot = torch.zeros_like(pos)
    alphas: list[Optional[Tensor]] = []
    for cam, m in zip(cams, masks):
        if m is None:
            alphas.append(None)
            continue
        f = torch.zeros(n, 2, device=model.device, requires_grad=True)
        with torch.enable_grad():  # works inside a caller's no_grad block too
            out = render_frozen(model, cam, f)
            (out.features[0] * m).sum().add(out.features[1].sum()).backward()
        g = f.grad
        pos += g[:, 0].double()
        tot += g[:, 1].double()
        alphas.append(out.alpha[0].detach())
    return pos.clamp_min(0), tot.clamp_min(0), alphas


def gaussian_mask_votes(model: GaussianModel, cameras: CameraList, masks, background_weight: float = 1.0,
                        min_weight: float = 1e-6, return_evidence: bool = False):
    """Per-Gaussian object weight by voting with 2D masks, (N,) float32 in [0, 1].

    Args:
        model: the Gaussians (N); not modified.
        cameras: the views, a Camera or a sequence of them (one view works: a 2D mask of one
            view becomes a 3D selection).
        masks: one (H, W) mask per camera at that camera's resolution: bool, 0/1 integers, or a
            soft float mask in [0, 1]; None skips a view (e.g. one SAM could not prompt).
        background_weight: weight of the evidence from outside the mask (>= 0). 1 gives the
            plain ratio sum_p w_i(p) m(p) / sum_p w_i(p); below 1 a Gaussian seen partly inside
            the mask keeps more weight (a generous selection), above 1 less.
        min_weight: a Gaussian whose total blending weight over all views (in pixels) is at most
            this counts as never seen and gets 0.
        return_evidence: also return (pos, total): (N,) float64 sums over the views of
            w_i(p) m(p) and of w_i(p).

    Returns:
        votes (N,) in [0, 1] (and the evidence when asked); see the module docstring.
    """
    if not (math.isfinite(background_weight) and background_weight >= 0):
        raise ValueError(f"background_weight must be a finite number >= 0, got {background_weight}")
    if not min_weight >= 0:
        raise ValueError(f"min_weight must be >= 0, got {min_weight}")
    cams = as_cameras(cameras)
    ms = as_masks(masks, cams, model.device)
    pos, tot, _ = _evidence(model, cams, ms)
    neg = (tot - pos).clamp_min(0)
    den = pos + float(background_weight) * neg
    seen = tot > min_weight
    votes = torch.where(seen & (den > 0), pos / den.clamp_min(1e-300), torch.zeros_like(pos))
    votes = votes.clamp(0, 1).to(torch.float32)
    return (votes, (pos, tot)) if return_evidence else votes


# ---------------------------------------------------------------------------------- optimisation
def _object_prob(model: GaussianModel, cam: Camera, w: Tensor, alpha: Optional[Tensor] = None):
    """(H, W) rendered object probability F / alpha and the alpha map."""
    out = render_frozen(model, cam, w[:, None])
    a = out.alpha[0].detach() if alpha is None else alpha
    p = out.features[0] / a.clamp_min(EPS)
    return p.clamp(EPS, 1 - EPS), a


def _bce_terms(model, cams, masks, w, alpha_threshold, alphas=None):
    losses = []
    for k, (cam, m) in enumerate(zip(cams, masks)):
        if m is None:
            continue
        p, a = _object_prob(model, cam, w, None if alphas is None else alphas[k])
        valid = a > alpha_threshold
        if bool(valid.any()):
            losses.append(F.binary_cross_entropy(p[valid], m[valid]))
    return losses


def object_mask_bce(model: GaussianModel, weights: Tensor, cameras: CameraList, masks,
                    alpha_threshold: float = 0.5) -> float:
    """Mean over views of the binary cross-entropy between the rendered object probability and
    the masks, over the pixels whose rendered alpha exceeds ``alpha_threshold`` (the objective
    of :func:`optimize_object_weights`; lower is better). The rendered probability of a pixel
    is sum_i w_i(p) weights_i / alpha(p), the object's share of what the pixel sees."""
    cams = as_cameras(cameras)
    ms = as_masks(masks, cams, model.device)
    w = as_weights(model, weights)
    if w.min() < 0 or w.max() > 1:
        raise ValueError("weights must lie in [0, 1]")
    with torch.no_grad():
        losses = _bce_terms(model, cams, ms, w, alpha_threshold)
    if not losses:
        raise ValueError(f"no pixel of any view has alpha above alpha_threshold={alpha_threshold}")
    return float(torch.stack(losses).mean())


def optimize_object_weights(model: GaussianModel, cameras: CameraList, masks, steps: int = 150, lr: float = 0.1,
                            init: Optional[Tensor] = None, *, alpha_threshold: float = 0.5,
                            min_weight: float = 1e-6, return_history: bool = False):
    """Per-Gaussian object weight fitted to the masks through the frozen renderer, (N,) in [0, 1].

    Each Gaussian gets a logit s_i; the object probability rendered at pixel p is
    sum_i w_i(p) sigmoid(s_i) / alpha(p) and Adam (``lr``, ``steps`` full passes over the views)
    minimises its binary cross-entropy against the masks over the pixels whose rendered alpha
    exceeds ``alpha_threshold`` (the empty background says nothing about any Gaussian).
    Geometry stays frozen. Unlike voting, the fit accounts for the blending: a Gaussian that
    only shows through a translucent one in front is not blamed for what the front one covers.

    Args:
        model, cameras, masks: as in :func:`gaussian_mask_votes`.
        steps: optimisation steps (each renders every view once, forward and backward).
        lr: Adam learning rate of the logits.
        init: (N,) starting weights in [0, 1] (e.g. the votes); None starts at 0.5.
        alpha_threshold: pixels whose rendered alpha is at most this are not fitted.
        min_weight: Gaussians never seen (total blending weight <= this) get 0.
        return_history: also return the loss (mean BCE over views) before each step.

    Returns:
        weights (N,) float32 in [0, 1] (and the list of losses when asked).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0 <= alpha_threshold < 1:
        raise ValueError(f"alpha_threshold must be in [0, 1), got {alpha_threshold}")
    cams = as_cameras(cameras)
    ms = as_masks(masks, cams, model.device)
    if init is None:
        logits0 = torch.zeros(model.num_gaussians, device=model.device)
    else:
        w0 = as_weights(model, init, "init")
        if w0.min() < 0 or w0.max() > 1:
            raise ValueError("init must lie in [0, 1]")
        w0 = w0.clamp(1e-3, 1 - 1e-3)
        logits0 = torch.log(w0 / (1 - w0))
    _, tot, alphas = _evidence(model, cams, ms)
    seen = tot > min_weight
    logits = logits0.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=float(lr))
    history: list[float] = []
    with torch.enable_grad():
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            losses = _bce_terms(model, cams, ms, torch.sigmoid(logits), alpha_threshold, alphas)
            if not losses:
                raise ValueError(f"no pixel of any view has alpha above alpha_threshold={alpha_threshold}")
            loss = torch.stack(losses).mean()
            history.append(float(loss.detach()))
            loss.backward()
            opt.step()
    w = torch.sigmoid(logits.detach())
    w = torch.where(seen, w, torch.zeros_like(w))
    return (w, history) if return_history else w


# ---------------------------------------------------------------------------------- rendering
def render_object_mask(model: GaussianModel, weights: Tensor, camera: Camera, normalize: bool = False) -> Tensor:
    """(H, W) float in [0, 1]: the object's mask at ``camera``, sum_i w_i(p) weights_i.

    Empty pixels are 0 and a pixel half covered by the object is 0.5, so ``mask > 0.5`` (see
    :func:`threshold_mask`) is the binary mask of the pixels the object mostly covers. With
    ``normalize`` the sum is divided by the pixel's alpha: the object's share of what the
    pixel sees (0 where nothing is). Differentiable with respect to ``weights``.
    """
    w = torch.as_tensor(weights)
    if w.dim() == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.dim() != 1 or w.shape[0] != model.num_gaussians:
        raise ValueError(f"weights must be ({model.num_gaussians},), one per Gaussian, got {tuple(w.shape)}")
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a Camera, got {type(camera).__name__}")
    out = render_frozen(model, camera, w.to(model.device, torch.float32)[:, None].contiguous())
    m = out.features[0]
    if normalize:
        a = out.alpha[0]
        m = torch.where(a > EPS, m / a.clamp_min(EPS), torch.zeros_like(m))
    return m.clamp(0, 1)


def threshold_mask(mask: Tensor, threshold: float = 0.5) -> Tensor:
    """(H, W) bool: ``mask > threshold`` (0.5: the pixels the object mostly covers)."""
    return torch.as_tensor(mask) > threshold

