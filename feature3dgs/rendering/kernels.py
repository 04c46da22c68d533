"""render() over the compiled kernels, as two stages with autograd.

:func:`project` (3D Gaussians to 2D means, conics, depths, radii and, from SH, colours) and
:func:`rasterize` (tile binning, depth sort and front-to-back blending) mirror the kernel stages;
:mod:`feature3dgs.rendering.reference` has the same two stages in plain PyTorch, so each stage has
its oracle. Keeping means2d as the tensor between them is what makes ``means2d.grad`` the
screen-space gradient used for densification.
"""

from __future__ import annotations

import torch
from torch import Tensor

from feature3dgs.rendering._backend import kernels
from feature3dgs.rendering.inputs import (
    Projection,
    RasterImages,
    RenderInputs,
    RenderOutput,
    composite,
    validate_render_inputs,
)

__all__ = ["render", "project", "rasterize", "ProjectFunction", "RasterizeFunction"]


def _empty_like(t: Tensor) -> Tensor:
    return torch.empty(0, dtype=t.dtype, device=t.device)


def _grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.contiguous()


DOUBLE_BACKWARD_MESSAGE = ("double backward is not supported: the gradients of the compiled kernels are not "
                           "differentiable (use feature3dgs.rendering.reference.render for higher-order "
                           "gradients)")


def _first_order_only() -> None:
    """The backward runs with grad mode on only for ``create_graph=True`` (a double backward)."""
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


class ProjectFunction(torch.autograd.Function):
    """The kernels' preprocess stage: (means, quats, scales, sh) -> (means2d, conics, depths,
    radii, colors). Arguments as in :func:`project`; ``sh`` is empty for plain RGB."""

    @staticmethod
    def forward(ctx, means, quats, scales, sh, sh_degree, viewmat, K, width, height, near):
        means2d, conics, depths, radii, colors, colors_raw = kernels().preprocess_forward(
            means, quats, scales, sh, sh_degree, viewmat, K, width, height, near)
        ctx.save_for_backward(means, quats, scales, sh, viewmat, K, radii, colors_raw)
        ctx.config = (sh_degree, width, height, near)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii, colors

    @staticmethod
    def backward(ctx, d_means2d, d_conics, d_depths, _d_radii, d_colors):
        _first_order_only()
        means, quats, scales, sh, viewmat, K, radii, colors_raw = ctx.saved_tensors
        sh_degree, width, height, near = ctx.config
        d_colors = _empty_like(means) if sh.dim() != 3 else _grad_or_zeros(d_colors, colors_raw)
        d_means, d_quats, d_scales, d_sh = kernels().preprocess_backward(
            means, quats, scales, sh, sh_degree, viewmat, K, width, height, near, radii, colors_raw,
            _grad_or_zeros(d_means2d, means[:, :2]), _grad_or_zeros(d_conics, means),
            _grad_or_zeros(d_depths, means[:, 0]), d_colors)
        return (d_means, d_quats, d_scales, d_sh if sh.dim() == 3 else None,
                None, None, None, None, None, None)


class RasterizeFunction(torch.autograd.Function):
    """The kernels' binning + blending stage: per-Gaussian screen quantities -> (rgb, features,
    depth, alpha) images without the background. ``features`` is empty when there are none."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, features, radii, width, height):
        rgb, feats, depth, alpha, final_T, last, offsets, ids = kernels().rasterize_forward(
            means2d, conics, colors, opacities, depths, features, radii, width, height)
        ctx.save_for_backward(means2d, conics, colors, opacities, depths, features, final_T, last,
                              offsets, ids)
        ctx.size = (width, height)
        return rgb, feats, depth, alpha

    @staticmethod
    def backward(ctx, d_rgb, d_feats, d_depth, d_alpha):
        _first_order_only()
        means2d, conics, colors, opacities, depths, features, final_T, last, offsets, ids = ctx.saved_tensors
        width, height = ctx.size
        C = features.shape[1] if features.dim() == 2 else 0
        like = torch.empty((height, width), dtype=means2d.dtype, device=means2d.device)
        d_feats = (_grad_or_zeros(d_feats, like.expand(C, height, width)) if features.dim() == 2
                   else _empty_like(means2d))
        grads = kernels().rasterize_backward(
            means2d, conics, colors, opacities, depths, features, width, height, final_T, last,
            offsets, ids, _grad_or_zeros(d_rgb, like.expand(3, height, width)), d_feats,
            _grad_or_zeros(d_depth, like[None]), _grad_or_zeros(d_alpha, like[None]))
        d_means2d, d_conics, d_colors, d_opacities, d_depths, d_features = grads
        return (d_means2d, d_conics, d_colors, d_opacities, d_depths,
                d_features if features.dim() == 2 else None, None, None, None)


def project(inp: RenderInputs) -> Projection:
    """Stage 1: project the N Gaussians of ``inp`` into its camera (see :class:`Projection`)."""
    sh = inp.sh if inp.sh is not None else _empty_like(inp.means)
    means2d, conics, depths, radii, sh_colors = ProjectFunction.apply(
        inp.means, inp.quats, inp.scales, sh, inp.sh_degree, inp.viewmat, inp.K, inp.width,
        inp.height, inp.near)
    return Projection(means2d=means2d, conics=conics, depths=depths, radii=radii,
                      colors=inp.colors if inp.sh is None else sh_colors)


def rasterize(inp: RenderInputs, proj: Projection) -> RasterImages:
    """Stage 2: blend the projected Gaussians front to back in 16x16 tiles (no background)."""
    features = inp.features if inp.features is not None else _empty_like(inp.means)
    rgb, feats, depth, alpha = RasterizeFunction.apply(proj.means2d, proj.conics, proj.colors, inp.opacities,
                                                       proj.depths, features, proj.radii, inp.width, inp.height)
    return RasterImages(rgb=rgb, features=feats if inp.features is not None else None, depth=depth, alpha=alpha)


def render(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
           viewmat: Tensor, K: Tensor, width: int, height: int, *, features: Tensor | None = None,
           sh_degree: int | None = None, near: float = 0.01, background: Tensor | None = None,
           feature_background: Tensor | None = None) -> RenderOutput:
    """Renders N 3D Gaussians with colour and optional C-channel features.

    Args (activated values; N Gaussians, all float32 on one device, CPU or CUDA):
        means: (N,3) centres, world space.
        quats: (N,4) rotations (w,x,y,z), normalised here.
        scales: (N,3) standard deviations along the rotated axes, > 0.
        opacities: (N,) or (N,1) in [0,1].
        colors: (N,3) plain RGB, or (N,K,3) SH coefficients, K = (degree+1)^2 <= 16.
        viewmat: (4,4) world-to-camera, OpenCV axes (x right, y down, z forward).
        K: (3,3) intrinsics in pixels; pixel (i, j) has its centre at (i+0.5, j+0.5).
        width, height: image size in pixels (1..16384).
        features: (N,C) per-Gaussian features, any C >= 1, or None.
        sh_degree: SH degree to evaluate (default: the one K implies).
        near: Gaussians with camera-space z < near are culled.
        background: (3,) colour behind the Gaussians (default black).
        feature_background: (C,) feature behind the Gaussians (default 0).

    Returns a RenderOutput: rgb (3,H,W), features (C,H,W) or None, depth (1,H,W),
    alpha (1,H,W), radii (N,) int32, means2d (N,2) whose .grad after backward is
    the screen-space gradient. Differentiable with respect to means, quats,
    scales, opacities, colors and features (and the backgrounds).

    Refused with ValueError naming the argument (and how many values): shapes, dtypes and
    devices that do not match; negative scales; opacities outside [0, 1]; NaN/Inf opacities,
    colours, SH coefficients, features or backgrounds; a viewmat or K holding NaN/Inf, a viewmat
    whose last row is not [0, 0, 0, 1], a K that is not [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    with fx, fy > 0; a viewmat or K that requires grad (camera gradients are not supported:
    pass ``.detach()``); a render whose images and per-pixel buffers would exceed the device's
    memory (the estimate is in the message). These checks cost one small device-to-host copy
    per call.

    Culled, not refused: a Gaussian whose mean, quaternion or scale holds NaN/Inf, whose
    quaternion is zero, that lies closer than ``near`` or that touches no tile gets radius 0
    and no pixel; with ``requires_grad`` inputs, its gradients are zero. A render where every
    Gaussian is culled (or N = 0) gives the background, and backward gives zero gradients.

    Double backward (``create_graph=True``) raises RuntimeError("double backward is not
    supported ..."); the reference renderer is differentiable twice.
    """
    inp = validate_render_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height,
                                 features=features, sh_degree=sh_degree, near=near,
                                 background=background, feature_background=feature_background)
    proj = project(inp)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    return composite(inp, proj, rasterize(inp, proj))
