"""The value render() returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


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
