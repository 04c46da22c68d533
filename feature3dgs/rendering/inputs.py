"""The render() inputs and outputs: argument checks (errors that name the argument) and the
RenderOutput type.

Both the kernels' render() and the reference share these checks, so they accept
and refuse the same inputs.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

MAX_IMAGE_SIDE = 16384
MAX_SH_DEGREE = 3
_CAMERA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    viewmat = _check_tensor("viewmat", viewmat, (4, 4), _CAMERA_DTYPES, None)
    K = _check_tensor("K", K, (3, 3), _CAMERA_DTYPES, None)
    for name, m in (("viewmat", viewmat), ("K", K)):
        if m.requires_grad:
            raise ValueError(f"{name} requires grad, but camera gradients are not supported: "
                             f"pass {name}.detach()")
    viewmat = viewmat.to(device=device, dtype=dtype).contiguous()
    K = K.to(device=device, dtype=dtype).contiguous()
    bg = _as_vector("background", 0.0 if background is None else background, 3, dtype, device)
    fbg = None
    if feature_background is not None:
        if features is None:
            raise ValueError("feature_background is given but features is None")
        fbg = _as_vector("feature_background", feature_background, features.shape[1], dtype, device)
    inp = RenderInputs(means=means.contiguous(), quats=quats.contiguous(), scales=scales.contiguous(),
                       opacities=opacities.contiguous(), colors=rgb, sh=sh, sh_degree=int(sh_degree),
                       features=features, viewmat=viewmat, K=K, width=width, height=height,
                       near=float(near), background=bg, feature_background=fbg)
    check_memory(inp)
    check_values(inp)
    return inp




def _count(name: str, bad: Tensor, what: str, hint: str = "") -> None:
    """Raise ValueError naming ``name`` when the boolean tensor ``bad`` has any True."""
    k = int(bad.sum())
    if k:
        raise ValueError(f"{name}: {k} of {bad.numel()} values {what}{hint}")


#: how far the constant entries of viewmat and K may be from their values (rounding of an inverse)
CAMERA_ATOL = 1e-5


def _near(values: Sequence[float], expected: Sequence[float], atol: float = CAMERA_ATOL) -> bool:
    return all(abs(v - e) <= atol for v, e in zip(values, expected))


def check_values(inp: RenderInputs) -> None:
    """Refuses values that no render can mean, with a ValueError naming the argument and how
    many of its values are wrong:

    - viewmat, K: NaN/Inf anywhere; a viewmat whose last row is not [0, 0, 0, 1]; a K that is
      not pinhole intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0 (no skew);
      the constant entries may differ by rounding (:data:`CAMERA_ATOL`, times max(fx, fy) for
      the skew);
    - scales < 0; opacities outside [0, 1] or NaN/Inf;
    - NaN/Inf colours, SH coefficients, features or backgrounds.

    NaN/Inf means, quaternions and scales are accepted: those Gaussians are culled. The values
    are summarised on their device (min, max, sum) and copied to the host once, so a CUDA render
    pays one small synchronisation; exact counts are computed only when a summary is off.
    """
    rows = [inp.viewmat.reshape(-1), inp.K.reshape(-1), inp.background.reshape(-1).sum()[None]]
    if inp.feature_background is not None:
        rows.append(inp.feature_background.sum()[None])
    colours = inp.colors if inp.colors is not None else inp.sh
    if inp.means.shape[0]:
        rows.append(torch.stack([*torch.aminmax(inp.opacities), inp.scales.amin(), colours.sum()]))
        if inp.features is not None:
            rows.append(inp.features.sum()[None])
    values = torch.cat([r.detach().to(torch.float64) for r in rows]).cpu().tolist()
    viewmat, K, summary = values[:16], values[16:25], iter(values[25:])
    finite = math.isfinite
    if not all(map(finite, viewmat)):
        _count("viewmat", ~torch.isfinite(inp.viewmat), "are NaN or Inf")
    if not _near(viewmat[12:], (0.0, 0.0, 0.0, 1.0)):
        raise ValueError(f"viewmat must be a world-to-camera matrix [[R, t], [0, 0, 0, 1]]; its last row is "
                         f"{[float(x) for x in viewmat[12:]]}")
    if not all(map(finite, K)):
        _count("K", ~torch.isfinite(inp.K), "are NaN or Inf")
    fx, skew, _, k10, fy, _, *last = K
    if not (fx > 0 and fy > 0) or not _near(last, (0.0, 0.0, 1.0)) or not _near((skew, k10), (0.0, 0.0),
                                                                                 CAMERA_ATOL * max(fx, fy, 1.0)):
        raise ValueError("K must be pinhole intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels with "
                         f"fx, fy > 0, got {[K[r:r + 3] for r in (0, 3, 6)]}")
    if not finite(next(summary)):
        _count("background", ~torch.isfinite(inp.background), "are NaN or Inf")
    if inp.feature_background is not None and not finite(next(summary)):
        _count("feature_background", ~torch.isfinite(inp.feature_background), "are NaN or Inf")
    if not inp.means.shape[0]:
        return
    op_min, op_max, scale_min, colour_sum = (next(summary) for _ in range(4))
    if not (0.0 <= op_min and op_max <= 1.0):
        _count("opacities", ~torch.isfinite(inp.opacities), "are NaN or Inf")
        _count("opacities", (inp.opacities < 0) | (inp.opacities > 1),
               f"lie outside [0, 1] (min {op_min:g}, max {op_max:g})",
               "; pass activated opacities (the sigmoid of the logits)")
    if not scale_min >= 0.0:  # NaN scales are culled, only negative ones are refused
        _count("scales", inp.scales < 0, f"are negative (min {float(inp.scales.nan_to_num(0.0).amin()):g})",
               "; pass activated scales (the exp of the log-scales)")
    if not finite(colour_sum):  # a sum can overflow without a NaN/Inf value: then nothing is refused
        _count("colors" if inp.colors is not None else "colors (SH coefficients)", ~torch.isfinite(colours),
               "are NaN or Inf")
    if inp.features is not None and not finite(next(summary)):
        _count("features", ~torch.isfinite(inp.features), "are NaN or Inf")

def render_bytes(width: int, height: int, channels: int, element_size: int = 4) -> int:
    """Estimated bytes a render of ``width`` x ``height`` pixels with ``channels`` feature
    channels allocates per pixel: the rgb, features, depth and alpha outputs (3 + C + 1 + 1), their
    composited copies over the background (as many again), and the per-pixel final
    transmittance and last-contributor buffers the backward keeps (2). Per-Gaussian buffers
    (tile lists) come on top."""
    return int(width) * int(height) * (2 * (int(channels) + 5) + 2) * int(element_size)


@functools.lru_cache(maxsize=None)
def memory_limit(device: torch.device) -> Optional[int]:
    """Bytes of memory of ``device``: the CUDA device's total memory, or the host's physical RAM
    for the CPU; None when unknown (then renders are not size-checked)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):  # not POSIX
            return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def check_memory(inp: RenderInputs) -> None:
    """Refuses (ValueError, with the estimate) a render whose output images and per-pixel
    buffers (:func:`render_bytes`) would not fit in the memory of its device
    (:func:`memory_limit`), before anything is allocated."""
    channels = inp.features.shape[1] if inp.features is not None else 0
    need = render_bytes(inp.width, inp.height, channels, inp.means.element_size())
    limit = memory_limit(inp.means.device)
    if limit is not None and need > limit:
        where = "the host's RAM" if inp.means.device.type == "cpu" else f"{inp.means.device}"
        raise ValueError(f"a {inp.width}x{inp.height} render with {channels} feature channels needs about "
                         f"{_gib(need)} for its images and per-pixel buffers, more than the {_gib(limit)} of "
                         f"{where}; render fewer pixels or channels")


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
