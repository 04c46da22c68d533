"""Prompt propagation (SANeRF-HQ): prompt points of one view carried into others through the
rendered depth (with an occlusion test), and SAM masks there from the rendered features.

Pixel coordinates are (x, y) = (column, row) with the centre of pixel (i, j) at (i + 0.5, j + 0.5)
(see :mod:`feature3dgs.model.camera`); depths are camera-space z in world units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from feature3dgs.apps.mask_fusion.checks import CameraList, as_cameras, as_plane
from feature3dgs.apps.mask_fusion.votes import EPS, render_frozen
from feature3dgs.apps.segment import sam_masks_on_view
from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel

__all__ = ["CarriedPoints", "MultiviewMasks", "lift_points", "carry_prompt_points", "multiview_sam_masks"]


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
    return as_plane(depth, camera, name).detach().to("cpu", torch.float64)


@dataclass
class MultiviewMasks:
    """SAM masks in several views from prompts carried out of one; one entry per destination.

    masks: (H, W) bool, or None where no positive prompt point is visible; scores: SAM's
    predicted IoU (or None); points: (m, 2) float32 prompts used there (or None); labels: (m,)
    int64 (or None); carried: every prompt point carried there, with its visibility.
    """

    masks: list[Optional[Tensor]]
    scores: list[Optional[float]]
    points: list[Optional[Tensor]]
    labels: list[Optional[Tensor]]
    carried: list[CarriedPoints]


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
    dsts = as_cameras(dst_cameras, "dst_cameras")
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
        out = render_frozen(model, camera)
    a = out.alpha[0]
    return torch.where(a > alpha_min, out.depth[0] / a.clamp_min(EPS), torch.zeros_like(a)).cpu()


def multiview_sam_masks(model: GaussianModel, decoder, sam_teacher, src_camera: Camera, points, labels,
                        dst_cameras: CameraList, *, rel_tol: float = 0.05, alpha_min: float = 0.5,
                        multimask_output: bool = False, pad: str = "zeros") -> "MultiviewMasks":
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
        a :class:`MultiviewMasks`, one entry per destination in each list.
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
    dsts = as_cameras(dst_cameras, "dst_cameras")
    src_depth = _surface_depth(model, src_camera, alpha_min)
    dst_depths = [_surface_depth(model, c, alpha_min) for c in dsts]
    carried = carry_prompt_points(pts, src_depth, src_camera, dsts, dst_depths, rel_tol=rel_tol)
    result = MultiviewMasks(masks=[], scores=[], points=[], labels=[], carried=carried)
    for cam, cp in zip(dsts, carried):
        keep = cp.visible
        if not bool((keep & (lab == 1)).any()):
            for key in ("masks", "scores", "points", "labels"):
                getattr(result, key).append(None)
            continue
        p_k, l_k = cp.points[keep], lab[keep]
        out = sam_masks_on_view(model, cam, decoder, sam_teacher, points=p_k, labels=l_k,
                                multimask_output=multimask_output, pad=pad)
        best = int(out.scores.argmax()) if multimask_output else 0
        result.masks.append(out.masks[best].cpu())
        result.scores.append(float(out.scores[best]))
        result.points.append(p_k)
        result.labels.append(l_k)
    return result

