"""The render() inputs and outputs: argument checks (errors that name the argument) and the
RenderOutput type.

Both the kernels' render() and the reference share these checks, so they accept
and refuse the same inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_IMAGE_SIDE = 16384
MAX_SH_DEGREE = 3


@dataclass
class RenderInputs:
    """Validated render inputs. colors is set for plain RGB, sh/sh_degree for SH."""

    means: Tensor            # (N,3)
    quats: Tensor            # (N,4)
    scales: Tensor           # (N,3)
    opacities: Tensor        # (N,)
    colors: Tensor | None    # (N,3) plain RGB
    sh: Tensor | None        # (N,K,3)
    sh_degree: int
    features: Tensor | None  # (N,C)
    viewmat: Tensor          # (4,4)
    K: Tensor                # (3,3)
    width: int
    height: int
    near: float
    background: Tensor       # (3,)
    feature_background: Tensor | None  # (C,)


def _check_tensor(name: str, value: object, shape: tuple[int | str | None, ...], dtypes: tuple,
                  device: torch.device | None) -> Tensor:
    """shape entries: an int (exact), None (any), or a str placeholder shown in messages."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {_fmt(shape)}, got {type(value).__name__}")
    if value.dim() != len(shape) or any(isinstance(s, int) and value.shape[i] != s for i, s in enumerate(shape)):
        raise ValueError(f"{name} must have shape {_fmt(shape)}, got {tuple(value.shape)}")
    if value.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must be {names}, got {str(value.dtype).replace('torch.', '')}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} must be on {device} like means, got {value.device}")
    return value


def _fmt(shape: tuple) -> str:
    inner = ", ".join("?" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= int(value) <= MAX_IMAGE_SIDE:
        raise ValueError(f"{name} must be between 1 and {MAX_IMAGE_SIDE} pixels, got {value}")
    return int(value)


def _as_vector(name: str, value: object, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        t = value
    elif isinstance(value, Sequence) or isinstance(value, numbers.Real):
        t = torch.as_tensor(value, dtype=dtype)
    else:
        raise ValueError(f"{name} must be a tensor or a sequence of {length} numbers")
    if t.dim() == 0:
        t = t.expand(length)
    if t.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def validate_render_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height, *,
                           features=None, sh_degree=None, near=0.01, background=None,
                           feature_background=None, allow_float64: bool = False,
                           check_device: bool = True) -> RenderInputs:
    """Checks and normalises render() arguments; raises ValueError naming the culprit.

    Non-contiguous tensors are accepted (made contiguous). opacities may be (N,)
    or (N,1). viewmat and K may have any floating dtype and device; they are
    converted to the Gaussians' dtype and device."""
    float_types = (torch.float32, torch.float64) if allow_float64 else (torch.float32,)
    _check_tensor("means", means, ("N", 3), float_types, None)
    N, dtype, device = means.shape[0], means.dtype, means.device
    dev = device if check_device else None
    quats = _check_tensor("quats", quats, (N, 4), (dtype,), dev)
    scales = _check_tensor("scales", scales, (N, 3), (dtype,), dev)
    if isinstance(opacities, Tensor) and opacities.dim() == 2 and opacities.shape[1] == 1:
        opacities = opacities[:, 0]
    opacities = _check_tensor("opacities", opacities, (N,), (dtype,), dev)
    if not isinstance(colors, Tensor) or colors.dim() not in (2, 3):
        raise ValueError(f"colors must be a tensor of shape (N, 3) (RGB) or (N, K, 3) (SH coefficients), "
                         f"got {tuple(colors.shape) if isinstance(colors, Tensor) else type(colors).__name__}")
    sh = rgb = None
    if colors.dim() == 2:
        rgb = _check_tensor("colors", colors, (N, 3), (dtype,), dev).contiguous()
        if sh_degree is not None:
            raise ValueError("sh_degree is given but colors is (N, 3) plain RGB; pass SH coefficients "
                             "of shape (N, K, 3) to use spherical harmonics")
        sh_degree = 0
    else:
        sh = _check_tensor("colors", colors, (N, None, 3), (dtype,), dev).contiguous()
        k = sh.shape[1]
        max_degree = math.isqrt(k) - 1
        if k < 1 or (max_degree + 1) ** 2 != k or max_degree > MAX_SH_DEGREE:
            raise ValueError(f"colors as SH must have K = (degree+1)^2 coefficients with degree <= "
                             f"{MAX_SH_DEGREE} (K in 1, 4, 9, 16), got K = {k}")
        if sh_degree is None:
            sh_degree = max_degree
        if isinstance(sh_degree, bool) or not isinstance(sh_degree, numbers.Integral) \
                or not 0 <= sh_degree <= max_degree:
            raise ValueError(f"sh_degree must be an int in [0, {max_degree}] for K = {k} coefficients, "
                             f"got {sh_degree}")
    if features is not None:
        features = _check_tensor("features", features, (N, None), (dtype,), dev)
        if features.shape[1] < 1:
            raise ValueError("features must have at least one channel: shape (N, C) with C >= 1, "
                             f"got {tuple(features.shape)}")
        features = features.contiguous()
    width = _check_size("width", width)
    height = _check_size("height", height)
    if isinstance(near, bool) or not isinstance(near, numbers.Real) or not (math.isfinite(near) and near > 0):
        raise ValueError(f"near must be a positive finite number, got {near}")
    viewmat = _check_tensor("viewmat", viewmat, (4, 4), (torch.float16, torch.bfloat16, torch.float32, torch.float64), None)
    K = _check_tensor("K", K, (3, 3), (torch.float16, torch.bfloat16, torch.float32, torch.float64), None)
    for name, m in (("viewmat", viewmat), ("K", K)):
        if m.device.type == "cpu" and not bool(torch.isfinite(m).all()):
            raise ValueError(f"{name} contains NaN or Inf")
    viewmat = viewmat.detach().to(device=device, dtype=dtype).contiguous()
    K = K.detach().to(device=device, dtype=dtype).contiguous()
    bg = _as_vector("background", 0.0 if background is None else background, 3, dtype, device)
    fbg = None
    if feature_background is not None:
        if features is None:
            raise ValueError("feature_background is given but features is None")
        fbg = _as_vector("feature_background", feature_background, features.shape[1], dtype, device)
    return RenderInputs(means=means.contiguous(), quats=quats.contiguous(), scales=scales.contiguous(),
                        opacities=opacities.contiguous(), colors=rgb, sh=sh, sh_degree=int(sh_degree),
                        features=features, viewmat=viewmat, K=K, width=width, height=height,
                        near=float(near), background=bg, feature_background=fbg)


@dataclass
class RenderOutput:
    """What one render produces (channels first, H x W pixels).

    rgb: (3,H,W) colour, composited on the background.
    features: (C,H,W) feature map (plus T * feature_background when given), or None.
    depth: (1,H,W) alpha-weighted camera-space depth sum_i w_i z_i (not normalised by alpha).
    alpha: (1,H,W) accumulated opacity 1 - T.
    radii: (N,) int32 screen radius in pixels; 0 for culled Gaussians.
    means2d: (N,2) projected means in pixels (0 for culled Gaussians). After
        backward, means2d.grad is dL/d(mean2d) in pixel units, the screen-space
        positional gradient used for densification.
    """

    rgb: Tensor
    features: Tensor | None
    depth: Tensor
    alpha: Tensor
    radii: Tensor
    means2d: Tensor


@dataclass
class Projection:
    """Stage 1 of a render: the N Gaussians in screen space (culled ones: radius 0).

    means2d: (N,2) projected centres in pixels (0 for culled Gaussians).
    conics: (N,3) (A, B, C) of the inverse 2D covariance, A dx^2 + 2 B dx dy + C dy^2.
    depths: (N,) camera-space z.
    radii: (N,) int32 screen radius in pixels, ceil(3 sqrt(largest eigenvalue)); 0 = culled.
    colors: (N,3) RGB, evaluated from SH at the view direction (or the given plain colours).
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    colors: Tensor


@dataclass
class RasterImages:
    """Stage 2 of a render: the blended images, without the background (channels first).

    rgb: (3,H,W) sum_i w_i c_i; features: (C,H,W) sum_i w_i f_i or None; depth: (1,H,W)
    sum_i w_i z_i; alpha: (1,H,W) 1 - T.
    """

    rgb: Tensor
    features: Tensor | None
    depth: Tensor
    alpha: Tensor


def composite(inp: RenderInputs, proj: Projection, images: RasterImages) -> RenderOutput:
    """The render's output: the blended images over the background (rgb + T * background, and
    features + T * feature_background when one is given), with the projection's radii and
    means2d."""
    transmittance = 1 - images.alpha
    rgb = images.rgb + transmittance * inp.background[:, None, None]
    feats = images.features
    if feats is not None and inp.feature_background is not None:
        feats = feats + transmittance * inp.feature_background[:, None, None]
    return RenderOutput(rgb=rgb, features=feats, depth=images.depth, alpha=images.alpha, radii=proj.radii,
                        means2d=proj.means2d)
