"""Lens distortion (OpenCV radial-tangential model) and image undistortion by inverse mapping.

Undistortion keeps the camera's intrinsics and size: output pixel centre (u, v) is taken to
normalised coordinates x = (u - cx) / fx, y = (v - cy) / fy, pushed through the distortion
model, mapped back to pixels with the same K and sampled (bilinearly, or nearest for labels)
from the distorted image. Output pixels whose source falls outside the image are invalid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Distortion whose coefficients are all smaller than this in magnitude is ignored by default
#: (with a warning) instead of undistorting the images. For k1 = 0.05 the radial shift is 5% of
#: the radius at normalised radius 1 (about a 53 degree half field of view), i.e. sub-pixel to a
#: few pixels at the usual training resolutions.
DEFAULT_DISTORTION_THRESHOLD = 0.05


@dataclass(frozen=True)
class Distortion:
    """OpenCV-style distortion coefficients (COLMAP OPENCV; SIMPLE_RADIAL/RADIAL are special cases).

    With r^2 = x^2 + y^2 in normalised camera coordinates:
    x_d = x (1 + k1 r^2 + k2 r^4) + 2 p1 x y + p2 (r^2 + 2 x^2),
    y_d = y (1 + k1 r^2 + k2 r^4) + p1 (r^2 + 2 y^2) + 2 p2 x y.
    """

    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0

    @property
    def max_abs(self) -> float:
        return max(abs(self.k1), abs(self.k2), abs(self.p1), abs(self.p2))

    def is_zero(self) -> bool:
        return self.max_abs == 0.0

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the model to normalised undistorted coordinates (any equal shapes)."""
        r2 = x * x + y * y
        radial = 1.0 + r2 * (self.k1 + self.k2 * r2)
        xd = x * radial + 2.0 * self.p1 * x * y + self.p2 * (r2 + 2.0 * x * x)
        yd = y * radial + self.p1 * (r2 + 2.0 * y * y) + 2.0 * self.p2 * x * y
        return xd, yd


def undistort_coords(K: np.ndarray, width: int, height: int, dist: Distortion) -> np.ndarray:
    """Source pixel coordinates for every pixel of the undistorted image.

    Args:
        K: (3, 3) intrinsics in pixels (shared by the distorted and undistorted images).
        width, height: image size in pixels.
        dist: distortion of the source image.
    Returns:
        (H, W, 2) float64 continuous (u, v) coordinates in the distorted image.
    """
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u = np.arange(width, dtype=np.float64) + 0.5
    v = np.arange(height, dtype=np.float64) + 0.5
    x = np.broadcast_to(((u - cx) / fx)[None, :], (height, width))
    y = np.broadcast_to(((v - cy) / fy)[:, None], (height, width))
    xd, yd = dist.distort(x, y)
    return np.stack([xd * fx + cx, yd * fy + cy], axis=-1)


def remap(img: np.ndarray, coords: np.ndarray, nearest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``img`` at continuous pixel coordinates.

    Args:
        img: (H, W) or (H, W, C) array (any numeric dtype).
        coords: (h, w, 2) continuous (u, v) coordinates; pixel (i, j) covers [i, i+1) x [j, j+1).
        nearest: nearest-neighbour sampling (labels, depth) instead of bilinear.
    Returns:
        out: (h, w[, C]) array of img's dtype (bilinear results rounded for integer types).
        valid: (h, w) bool, True where the coordinate lies inside the image.
    """
    H, W = img.shape[:2]
    u, v = coords[..., 0], coords[..., 1]
    valid = (u >= 0) & (u <= W) & (v >= 0) & (v <= H)
    if nearest:
        i = np.clip(np.floor(u).astype(np.int64), 0, W - 1)
        j = np.clip(np.floor(v).astype(np.int64), 0, H - 1)
        return img[j, i], valid
    x, y = u - 0.5, v - 0.5  # to index space, where pixel centres are integers
    x0, y0 = np.floor(x), np.floor(y)
    wx, wy = x - x0, y - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xa, xb = np.clip(x0, 0, W - 1), np.clip(x0 + 1, 0, W - 1)
    ya, yb = np.clip(y0, 0, H - 1), np.clip(y0 + 1, 0, H - 1)
    f = img.astype(np.float32)
    if f.ndim == 3:
        wx, wy = wx[..., None], wy[..., None]
    wx = wx.astype(np.float32)
    wy = wy.astype(np.float32)
    out = (f[ya, xa] * (1 - wx) + f[ya, xb] * wx) * (1 - wy) + (f[yb, xa] * (1 - wx) + f[yb, xb] * wx) * wy
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(img.dtype), valid
