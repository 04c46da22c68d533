"""Multi-view consistent object masks on the Gaussians (as in SANeRF-HQ).

2D object masks (from SAM, a user's brush, a label map) of a few views become a per-Gaussian
object weight in [0, 1]; rendering that weight gives the object's mask from any view.

Pipeline (:func:`fuse_object` ties it together)::

    prompts in one view --carry_prompt_points--> prompts in other views   (rendered depth)
                         --multiview_sam_masks--> SAM masks in those views (rendered features)
    masks of views      --gaussian_mask_votes / optimize_object_weights--> (N,) weights
    weights             --render_object_mask--> (H, W) mask at any camera
    mask + image        --refine_mask_ray_pairs--> mask whose edges follow colour edges

Conventions: masks are (H, W) bool or float in [0, 1] at the camera's resolution; pixel
coordinates are (x, y) = (column, row) with the centre of pixel (i, j) at (i + 0.5, j + 0.5)
(see :mod:`feature3dgs.model.camera`); depths are camera-space z in world units. Geometry is never
changed: every render here uses detached means, rotations, scales and opacities.

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
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.rendering.kernels import render
from feature3dgs.rendering.inputs import RenderOutput

__all__ = [
    "gaussian_mask_votes",
    "optimize_object_weights",
    "object_mask_bce",
    "render_object_mask",
    "threshold_mask",
    "lift_points",
    "carry_prompt_points",
    "CarriedPoints",
    "multiview_sam_masks",
    "refine_mask_ray_pairs",
    "fuse_object",
    "FusedObject",
]

MaskLike = Union[Tensor, np.ndarray]
CameraList = Union[Camera, Sequence[Camera]]
_EPS = 1e-6


# ---------------------------------------------------------------------------------- checks
def _cameras(cameras: CameraList, name: str = "cameras") -> list[Camera]:
    if isinstance(cameras, Camera):
        return [cameras]
    try:
        cams = list(cameras)
    except TypeError:
        raise ValueError(f"{name} must be a Camera or a sequence of Cameras, got {type(cameras).__name__}") from None
    if not cams:
        raise ValueError(f"{name} must hold at least one Camera")
    for i, c in enumerate(cams):
        if not isinstance(c, Camera):
            raise ValueError(f"{name}[{i}] must be a Camera, got {type(c).__name__}")
    return cams


def _plane(x, camera: Camera, name: str) -> Tensor:
    """``x`` as an (H, W) tensor matching ``camera`` ((1, H, W) is accepted)."""
    t = torch.as_tensor(x)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2 or tuple(t.shape) != (camera.height, camera.width):
        raise ValueError(f"{name} must be (H, W) = ({camera.height}, {camera.width}) (or (1, H, W)) to match "
                         f"its camera, got {tuple(t.shape)}")
    return t


def _mask(mask: MaskLike, camera: Camera, name: str, device: torch.device) -> Tensor:
    """(H, W) float32 in [0, 1] on ``device``, from a bool / 0-1 integer / float mask."""
    m = _plane(mask, camera, name)
    if m.dtype == torch.bool:
        m = m.to(torch.float32)
    elif not m.is_floating_point():
        if m.numel() and (int(m.min()) < 0 or int(m.max()) > 1):
            raise ValueError(f"{name}: an integer mask must hold only 0 and 1, got values in "
                             f"[{int(m.min())}, {int(m.max())}]")
        m = m.to(torch.float32)
    else:
        m = m.to(torch.float32)
        if not bool(torch.isfinite(m).all()):
            raise ValueError(f"{name} holds NaN or Inf")
        if m.numel() and (float(m.min()) < -1e-6 or float(m.max()) > 1 + 1e-6):
            raise ValueError(f"{name}: a soft mask must lie in [0, 1], got values in "
                             f"[{float(m.min()):.4g}, {float(m.max()):.4g}]")
        m = m.clamp(0, 1)
    return m.to(device)


def _masks(masks, cams: list[Camera], device: torch.device, name: str = "masks") -> list[Optional[Tensor]]:
    """One (H, W) float mask (or None: view not used) per camera."""
    if isinstance(masks, (Tensor, np.ndarray)):  # one (H, W) mask, or a (V, H, W) stack
        t = torch.as_tensor(masks)
        masks = [t] if t.dim() == 2 else list(t.unbind(0)) if t.dim() == 3 else [t]
    try:
        ms = list(masks)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of (H, W) masks, got {type(masks).__name__}") from None
    if len(ms) != len(cams):
        raise ValueError(f"{name} holds {len(ms)} masks for {len(cams)} cameras; give one per camera "
                         "(None skips a view)")
    out = [None if m is None else _mask(m, c, f"{name}[{i}]", device) for i, (m, c) in enumerate(zip(ms, cams))]
    if all(m is None for m in out):
        raise ValueError(f"{name}: every mask is None; give at least one")
    return out


def _weights(model: GaussianModel, weights, name: str = "weights") -> Tensor:
    w = torch.as_tensor(weights)
    if w.dim() == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.dim() != 1 or w.shape[0] != model.num_gaussians:
        raise ValueError(f"{name} must be ({model.num_gaussians},), one per Gaussian, got {tuple(w.shape)}")
    w = w.to(model.device, torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} holds NaN or Inf")
    return w


def _on(camera: Camera, device: torch.device) -> Camera:
    return camera if camera.viewmat.device == device else camera.to(device)


def _render_frozen(model: GaussianModel, camera: Camera, features: Optional[Tensor] = None) -> RenderOutput:
    """Render with detached geometry (and DC colour): only ``features`` can carry gradients."""
    cam = _on(camera, model.device)
    return render(model.means.detach(), model.params["quats"].detach(), model.scales.detach(),
                  model.opacities.detach(), model.colors_dc.detach(), cam.viewmat, cam.K, cam.width,
                  cam.height, features=features)


# ---------------------------------------------------------------------------------- votes
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
            out = _render_frozen(model, cam, f)
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
    cams = _cameras(cameras)
    ms = _masks(masks, cams, model.device)
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
    out = _render_frozen(model, cam, w[:, None])
    a = out.alpha[0].detach() if alpha is None else alpha
    p = out.features[0] / a.clamp_min(_EPS)
    return p.clamp(_EPS, 1 - _EPS), a


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
    cams = _cameras(cameras)
    ms = _masks(masks, cams, model.device)
    w = _weights(model, weights)
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
    cams = _cameras(cameras)
    ms = _masks(masks, cams, model.device)
    if init is None:
        logits0 = torch.zeros(model.num_gaussians, device=model.device)
    else:
        w0 = _weights(model, init, "init")
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
    out = _render_frozen(model, camera, w.to(model.device, torch.float32)[:, None].contiguous())
    m = out.features[0]
    if normalize:
        a = out.alpha[0]
        m = torch.where(a > _EPS, m / a.clamp_min(_EPS), torch.zeros_like(m))
    return m.clamp(0, 1)


def threshold_mask(mask: Tensor, threshold: float = 0.5) -> Tensor:
    """(H, W) bool: ``mask > threshold`` (0.5: the pixels the object mostly covers)."""
    return torch.as_tensor(mask) > threshold


# ---------------------------------------------------------------------------------- prompts
class CarriedPoints(NamedTuple):
    """Prompt points carried into one destination view.

    points: (k, 2) float32 pixel coordinates (x, y) in the destination image (NaN where the
        source depth was missing).
    visible: (k,) bool: in front of the camera, inside the image and not occluded.
    z: (k,) float32 camera-space depth of the lifted points in the destination camera.
    """

    points: Tensor
    visible: Tensor
    z: Tensor


def _points_xy(points_xy, name: str = "points_xy") -> Tensor:
    p = torch.as_tensor(np.asarray(points_xy.detach().cpu() if isinstance(points_xy, Tensor) else points_xy,
                                   dtype=np.float64))
    if p.dim() == 1 and p.shape[0] == 2:
        p = p[None]
    if p.dim() != 2 or p.shape[1] != 2:
        raise ValueError(f"{name} must be (k, 2) pixel coordinates (x, y), got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} holds NaN or Inf")
    return p


def _depth_map(depth, camera: Camera, name: str) -> Tensor:
    return _plane(depth, camera, name).detach().to("cpu", torch.float64)


def lift_points(points_xy, depth, camera: Camera, near: float = 0.01) -> tuple[Tensor, Tensor]:
    """Lift pixel points to world space with a depth map.

    Args:
        points_xy: (k, 2) pixel coordinates (x, y) = (column, row), continuous (pixel (i, j)
            covers [i, i+1) x [j, j+1)); each must lie inside the image.
        depth: (H, W) (or (1, H, W)) camera-space z per pixel, e.g. rendered depth / alpha; the
            value of the pixel containing a point is used; values <= ``near`` or non-finite
            mean "no surface".
        camera: the view the points and the depth belong to.

    Returns:
        world (k, 3) float64 points (NaN where there is no surface) and valid (k,) bool.
    """
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a Camera, got {type(camera).__name__}")
    p = _points_xy(points_xy)
    d = _depth_map(depth, camera, "depth")
    W, H = camera.width, camera.height
    inside = (p[:, 0] >= 0) & (p[:, 0] < W) & (p[:, 1] >= 0) & (p[:, 1] < H)
    if not bool(inside.all()):
        bad = p[~inside][0].tolist()
        raise ValueError(f"points_xy: point {tuple(bad)} lies outside the {W}x{H} source image")
    col = p[:, 0].floor().long().clamp(0, W - 1)
    row = p[:, 1].floor().long().clamp(0, H - 1)
    z = d[row, col]
    valid = torch.isfinite(z) & (z > near)
    K = camera.K.detach().cpu().double()
    x = (p[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (p[:, 1] - K[1, 2]) / K[1, 1] * z
    cam_pts = torch.stack([x, y, z], 1)
    c2w = camera.c2w.detach().cpu().double()
    world = cam_pts @ c2w[:3, :3].T + c2w[:3, 3]
    world[~valid] = float("nan")
    return world, valid


def _project(world: Tensor, camera: Camera) -> tuple[Tensor, Tensor]:
    uv, z = camera.to("cpu").project(world.to(torch.float32))
    return uv.double(), z.double()


def carry_prompt_points(points_xy, depth, src_camera: Camera, dst_cameras: CameraList,
                        dst_depths: Optional[Sequence[Optional[Tensor]]] = None, *, rel_tol: float = 0.05,
                        near: float = 0.01) -> list[CarriedPoints]:
    """Carry pixel prompts of a source view into other views through the rendered depth.

    Each point is lifted to 3D with the source depth map (:func:`lift_points`) and projected
    into each destination camera (OpenCV axes, ``viewmat`` world-to-camera, ``K`` in pixels).

    Args:
        points_xy: (k, 2) source pixel coordinates (x, y) = (column, row), inside the image.
        depth: (H, W) source camera-space z, e.g. ``out.depth / out.alpha`` of a render (the
            renderer's depth is alpha-weighted); <= near or non-finite: no surface, the point
            is visible nowhere.
        src_camera: the source view.
        dst_cameras: a Camera or a sequence of them.
        dst_depths: optional, one (H, W) depth map (or None) per destination camera for the
            occlusion test: a point is occluded when its z differs from the map's value at its
            pixel by more than ``rel_tol`` times that value. Pixels whose map value is <= 0 or
            non-finite (nothing rendered there) occlude nothing.
        rel_tol: relative depth tolerance of the occlusion test.
        near: points with camera z <= near are behind the destination camera.

    Returns:
        one :class:`CarriedPoints` (points (k, 2), visible (k,), z (k,)) per destination camera.
    """
    if not (math.isfinite(rel_tol) and rel_tol > 0):
        raise ValueError(f"rel_tol must be a positive number, got {rel_tol}")
    if not isinstance(src_camera, Camera):
        raise ValueError(f"src_camera must be a Camera, got {type(src_camera).__name__}")
    dsts = _cameras(dst_cameras, "dst_cameras")
    if dst_depths is not None:
        dst_depths = list(dst_depths)
        if len(dst_depths) != len(dsts):
            raise ValueError(f"dst_depths holds {len(dst_depths)} maps for {len(dsts)} dst_cameras")
    world, valid = lift_points(points_xy, depth, src_camera, near)
    result = []
    for k, cam in enumerate(dsts):
        uv, z = _project(world, cam)
        vis = valid & torch.isfinite(z) & (z > near)
        vis &= torch.isfinite(uv).all(1)
        uvc = torch.nan_to_num(uv, nan=-1.0, posinf=-1.0, neginf=-1.0)
        vis &= (uvc[:, 0] >= 0) & (uvc[:, 0] < cam.width) & (uvc[:, 1] >= 0) & (uvc[:, 1] < cam.height)
        if dst_depths is not None and dst_depths[k] is not None:
            d = _depth_map(dst_depths[k], cam, f"dst_depths[{k}]")
            col = uvc[:, 0].floor().long().clamp(0, cam.width - 1)
            row = uvc[:, 1].floor().long().clamp(0, cam.height - 1)
            ref = d[row, col]
            surface = torch.isfinite(ref) & (ref > 0)
            agree = (z - ref).abs() <= rel_tol * ref
            vis &= ~surface | agree
        uv = torch.where(valid[:, None], uv, torch.full_like(uv, float("nan")))
        result.append(CarriedPoints(uv.to(torch.float32), vis, z.to(torch.float32)))
    return result


def _surface_depth(model: GaussianModel, camera: Camera, alpha_min: float) -> Tensor:
    """(H, W) depth of the rendered surface (depth / alpha), 0 where alpha <= alpha_min."""
    with torch.no_grad():
        out = _render_frozen(model, camera)
    a = out.alpha[0]
    return torch.where(a > alpha_min, out.depth[0] / a.clamp_min(_EPS), torch.zeros_like(a)).cpu()


def multiview_sam_masks(model: GaussianModel, decoder, sam_teacher, src_camera: Camera, points, labels,
                        dst_cameras: CameraList, *, rel_tol: float = 0.05, alpha_min: float = 0.5,
                        multimask_output: bool = False, pad: str = "zeros") -> dict:
    """SANeRF-HQ's prompt propagation: SAM masks in other views from prompts in one view.

    The depth of the source view is rendered (depth / alpha where alpha > ``alpha_min``); the
    prompt points are carried into each destination view (:func:`carry_prompt_points`, with
    the destination's rendered depth for occlusion); points that are not visible there are
    dropped, and a view where no positive point (label 1) survives is skipped. In every other
    view SAM's prompt encoder and mask decoder run on the rendered (and decoded) features
    (:func:`feature3dgs.apps.segment.sam_masks_on_view`); with ``multimask_output`` the mask with
    the best predicted IoU is kept.

    Args:
        model: Gaussians with distilled features (``model.features``).
        decoder: lifts the rendered features to SAM's 256 channels (None when they have 256).
        sam_teacher: the SAM teacher (its prompt encoder and mask decoder are used).
        src_camera: the view the prompts were given in.
        points: (k, 2) pixel coordinates (x, y) in the source view.
        labels: (k,) 1 = foreground, 0 = background (None: all 1).
        dst_cameras: the views to segment (a Camera or a sequence).
        rel_tol: relative depth tolerance of the occlusion test.
        alpha_min: pixels whose rendered alpha is at most this have no depth (no surface).
        multimask_output, pad: passed to SAM (see sam_masks_on_view).

    Returns:
        {'masks': [(H, W) bool or None per destination], 'scores': [float or None],
         'points': [(m, 2) float32 prompts used, or None], 'labels': [(m,) int64 or None],
         'carried': [CarriedPoints per destination (all k points, with visibility)]}.
    """
    if not isinstance(src_camera, Camera):
        raise ValueError(f"src_camera must be a Camera, got {type(src_camera).__name__}")
    pts = _points_xy(points, "points")
    if labels is None:
        lab = torch.ones(pts.shape[0], dtype=torch.int64)
    else:
        lab = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)).reshape(-1)
        if lab.shape[0] != pts.shape[0]:
            raise ValueError(f"labels must hold one label per point ({pts.shape[0]}), got {lab.shape[0]}")
        lab = lab.to(torch.int64)
        if bool(((lab != 0) & (lab != 1)).any()):
            raise ValueError("labels must be 0 (background) or 1 (foreground)")
    if not bool((lab == 1).any()):
        raise ValueError("labels: give at least one foreground point (label 1)")
    if model.features is None:
        raise ValueError("model has no features to render for SAM's decoder")
    dsts = _cameras(dst_cameras, "dst_cameras")
    from feature3dgs.apps.segment import sam_masks_on_view

    src_depth = _surface_depth(model, src_camera, alpha_min)
    dst_depths = [_surface_depth(model, c, alpha_min) for c in dsts]
    carried = carry_prompt_points(pts, src_depth, src_camera, dsts, dst_depths, rel_tol=rel_tol)
    result: dict = {"masks": [], "scores": [], "points": [], "labels": [], "carried": carried}
    for cam, cp in zip(dsts, carried):
        keep = cp.visible
        if not bool((keep & (lab == 1)).any()):
            for key in ("masks", "scores", "points", "labels"):
                result[key].append(None)
            continue
        p_k, l_k = cp.points[keep], lab[keep]
        out = sam_masks_on_view(model, _on(cam, model.device), decoder, sam_teacher, points=p_k, labels=l_k,
                                multimask_output=multimask_output, pad=pad)
        best = int(out["scores"].argmax()) if multimask_output else 0
        result["masks"].append(out["masks"][best].cpu())
        result["scores"].append(float(out["scores"][best]))
        result["points"].append(p_k)
        result["labels"].append(l_k)
    return result


# ---------------------------------------------------------------------------------- refinement
def _pairs(neighbours: int):
    """(dy, dx, distance) of the undirected neighbour offsets."""
    offs = [(0, 1, 1.0), (1, 0, 1.0)]
    if neighbours == 8:
        offs += [(1, 1, math.sqrt(2)), (1, -1, math.sqrt(2))]
    return offs


def _slices(h: int, w: int, dy: int, dx: int):
    """Slices of the pixels p and their neighbours q = p + (dy, dx) that lie inside the image."""
    p = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    q = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
    return p, q


def refine_mask_ray_pairs(mask_prob: Tensor, image: Tensor, *, sigma: float = 0.1, smoothness: float = 20.0,
                          neighbours: int = 8, iterations: int = 200, confidence_weighting: bool = True,
                          tol: float = 1e-6) -> Tensor:
    """Make neighbouring rays of similar colour agree (SANeRF-HQ's ray-pair RGB similarity).

    Minimises over q (the refined mask)::

        E(q) = sum_p u_p (q_p - m_p)^2 + smoothness * sum_{p~r} a_pr (q_p - q_r)^2,
        a_pr = exp(-|I_p - I_r|^2 / (2 sigma^2)) / |p - r|

    over 4- or 8-neighbour pairs p~r. The unary weight u_p keeps q close to the input m; with
    ``confidence_weighting`` it is 0.01 + (2 m_p - 1)^2, so confident pixels (m near 0 or 1)
    hold their value and uncertain ones (m near 0.5) take it from neighbours of their own
    colour: a mask blurred across a colour edge snaps to the edge. E is quadratic; its
    minimiser solves a sparse symmetric positive definite system, done here with conjugate
    gradients (``iterations`` at most, stopping at relative residual ``tol``), vectorised over
    the pixels. The result is a convex combination of input values, so it stays in [0, 1].

    Args:
        mask_prob: (H, W) probabilities in [0, 1] (or bool).
        image: (C, H, W) channels-first colours (C = 3 for RGB, any C works), e.g. in [0, 1];
            ``sigma`` is in the image's units.
        sigma: colour scale of the pair weights.
        smoothness: weight of the pairwise term (a larger value spreads values further).
        neighbours: 4 or 8.

    Returns:
        (H, W) float32 refined probabilities in [0, 1] on the mask's device.
    """
    m = torch.as_tensor(mask_prob)
    if m.dim() != 2:
        raise ValueError(f"mask_prob must be (H, W), got {tuple(m.shape)}")
    m = m.to(torch.float64)
    if not bool(torch.isfinite(m).all()) or float(m.min()) < -1e-6 or float(m.max()) > 1 + 1e-6:
        raise ValueError("mask_prob must hold finite probabilities in [0, 1]")
    m = m.clamp(0, 1)
    img = torch.as_tensor(image)
    if img.dim() == 2:
        img = img[None]
    H, W = m.shape
    if img.dim() != 3 or tuple(img.shape[1:]) != (H, W):
        raise ValueError(f"image must be (C, H, W) with (H, W) = ({H}, {W}) like mask_prob, got {tuple(img.shape)}")
    if neighbours not in (4, 8):
        raise ValueError(f"neighbours must be 4 or 8, got {neighbours}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if not smoothness >= 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    img = img.to(m.device, torch.float64)

    edges = []
    deg = torch.zeros_like(m)
    for dy, dx, dist in _pairs(neighbours):
        ps, qs = _slices(H, W, dy, dx)
        diff2 = ((img[(slice(None),) + ps] - img[(slice(None),) + qs]) ** 2).sum(0)
        a = smoothness * torch.exp(-diff2 / (2 * sigma ** 2)) / dist
        edges.append((ps, qs, a))
        deg[ps] += a
        deg[qs] += a
    u = 0.01 + (2 * m - 1) ** 2 if confidence_weighting else torch.ones_like(m)

    def apply(x: Tensor) -> Tensor:
        y = (u + deg) * x
        for ps, qs, a in edges:
            y[ps] -= a * x[qs]
            y[qs] -= a * x[ps]
        return y

    b = u * m
    x = m.clone()
    r = b - apply(x)
    p = r.clone()
    rs = (r * r).sum()
    bnorm = float((b * b).sum().sqrt()) or 1.0
    for _ in range(int(iterations)):
        if float(rs.sqrt()) <= tol * bnorm:
            break
        Ap = apply(p)
        alpha = rs / (p * Ap).sum().clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum()
        p = r + (rs_new / rs.clamp_min(1e-300)) * p
        rs = rs_new
    return x.clamp(0, 1).to(torch.float32)


# ---------------------------------------------------------------------------------- all together
@dataclass
class FusedObject:
    """A 3D object selection: per-Gaussian weights in [0, 1], renderable from any view.

    Attributes:
        model: the Gaussians the weights belong to.
        weights: (N,) float32 object weight per Gaussian.
        method: 'vote' or 'optimize'.
        threshold: the weight above which a Gaussian belongs to the object (:attr:`selection`)
            and the rendered mask value above which a pixel does (:meth:`binary_mask`).
    """

    model: GaussianModel
    weights: Tensor
    method: str
    threshold: float = 0.5

    @property
    def selection(self) -> Tensor:
        """(N,) bool: the object's Gaussians (for feature3dgs.apps.edit.extract / delete / recolor)."""
        return self.weights > self.threshold

    def render_mask(self, camera: Camera, normalize: bool = False) -> Tensor:
        """(H, W) float mask in [0, 1] at ``camera`` (see :func:`render_object_mask`)."""
        with torch.no_grad():
            return render_object_mask(self.model, self.weights, camera, normalize)

    def binary_mask(self, camera: Camera) -> Tensor:
        """(H, W) bool: rendered mask > threshold."""
        return threshold_mask(self.render_mask(camera), self.threshold)


def fuse_object(model: GaussianModel, cameras: CameraList, masks, method: str = "vote", *, threshold: float = 0.5,
                background_weight: float = 1.0, steps: int = 150, lr: float = 0.1,
                alpha_threshold: float = 0.5, refine_images: Optional[Sequence[Optional[Tensor]]] = None,
                refine_kwargs: Optional[dict] = None) -> FusedObject:
    """2D masks of several views -> per-Gaussian object weights -> a :class:`FusedObject`.

    Args:
        model, cameras, masks: as in :func:`gaussian_mask_votes` (None masks skip views).
        method: 'vote' (:func:`gaussian_mask_votes`, one render per view) or 'optimize'
            (:func:`optimize_object_weights`, started from the votes).
        threshold: see :class:`FusedObject`.
        refine_images: optional (C, H, W) image per view (None: no refinement of that view):
            the masks are first refined with :func:`refine_mask_ray_pairs` (``refine_kwargs``).

    Returns:
        the :class:`FusedObject` (``.render_mask(camera)``, ``.binary_mask(camera)``,
        ``.selection``).
    """
    if method not in ("vote", "optimize"):
        raise ValueError(f"method must be 'vote' or 'optimize', got {method!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    cams = _cameras(cameras)
    ms = _masks(masks, cams, model.device)
    if refine_images is not None:
        imgs = list(refine_images)
        if len(imgs) != len(cams):
            raise ValueError(f"refine_images holds {len(imgs)} images for {len(cams)} cameras")
        ms = [m if (m is None or img is None) else
              refine_mask_ray_pairs(m, torch.as_tensor(img).to(m.device), **(refine_kwargs or {}))
              for m, img in zip(ms, imgs)]
    votes = gaussian_mask_votes(model, cams, ms, background_weight=background_weight)
    if method == "vote":
        w = votes
    else:
        w = optimize_object_weights(model, cams, ms, steps=steps, lr=lr, init=votes,
                                    alpha_threshold=alpha_threshold)
    return FusedObject(model=model, weights=w, method=method, threshold=float(threshold))
