"""Drawing on viewer frames: colour maps, mask overlays and prompt markers.

Every function takes and returns (H, W, 3) uint8 numpy images (a new array; inputs are not
modified) or maps floats in [0, 1] to such images. Pixel coordinates are (x, y) = (column, row),
continuous, pixel (i, j) covering [i, i+1) x [j, j+1).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# The colour map and mask drawing are shared with the saved images (feature3dgs.utils.visualize).
from feature3dgs.utils.visualize import apply_colormap, draw_mask, mask_outline, tint

__all__ = [
    "MASK_COLOR",
    "SELECTION_COLOR",
    "POSITIVE_COLOR",
    "NEGATIVE_COLOR",
    "BOX_COLOR",
    "apply_colormap",
    "resize_nearest",
    "tint",
    "mask_outline",
    "draw_mask",
    "draw_points",
    "draw_box",
]

#: fill colour of a 2D SAM mask (RGB uint8; draw_mask's default)
MASK_COLOR = (0, 150, 255)
#: fill colour of the selected Gaussians seen from another view
SELECTION_COLOR = (255, 140, 0)
#: positive / negative prompt markers and the box prompt
POSITIVE_COLOR = (40, 220, 60)
NEGATIVE_COLOR = (235, 40, 40)
BOX_COLOR = (255, 220, 0)


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) array -> (height, width) by nearest neighbour (pixel centres, as the camera scaling)."""
    h, w = mask.shape[:2]
    if (h, w) == (height, width):
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def draw_points(image: np.ndarray, points: Sequence[Sequence[float]], labels: Sequence[int],
                radius: Optional[float] = None) -> np.ndarray:
    """Filled discs at ``points`` (x, y) in pixels, green for label 1 and red for 0, with a white ring."""
    out = image.copy()
    H, W = out.shape[:2]
    r = max(3.0, max(H, W) / 90) if radius is None else float(radius)
    yy, xx = np.mgrid[0:H, 0:W]
    for (x, y), lab in zip(points, labels):
        d2 = (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2
        out[d2 <= (r + 1.5) ** 2] = (255, 255, 255)
        out[d2 <= r ** 2] = POSITIVE_COLOR if lab else NEGATIVE_COLOR
    return out


def draw_box(image: np.ndarray, box: Sequence[float], color: Sequence[int] = BOX_COLOR,
             thickness: Optional[int] = None) -> np.ndarray:
    """The outline of ``box`` (x0, y0, x1, y1) in pixels."""
    out = image.copy()
    H, W = out.shape[:2]
    t = max(1, round(max(H, W) / 250)) if thickness is None else int(thickness)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = sorted((min(max(x0, 0), W - 1), min(max(x1, 0), W - 1)))
    y0, y1 = sorted((min(max(y0, 0), H - 1), min(max(y1, 0), H - 1)))
    c = np.asarray(color, dtype=np.uint8)
    out[y0:min(y0 + t, H), x0:x1 + 1] = c
    out[max(y1 - t + 1, 0):y1 + 1, x0:x1 + 1] = c
    out[y0:y1 + 1, x0:min(x0 + t, W)] = c
    out[y0:y1 + 1, max(x1 - t + 1, 0):x1 + 1] = c
    return out
