"""Pinhole cameras in the package's single convention.

Convention (shared by every loader and the rasterizer):

* OpenCV camera axes: x right, y down, z forward (points in front have z > 0).
* ``viewmat`` is the 4x4 world-to-camera matrix, ``[[R, t], [0, 1]]``.
* ``K`` is the 3x3 intrinsic matrix in pixels; the centre of pixel (column i, row j) lies at
  continuous image coordinates (i + 0.5, j + 0.5), so a centred principal point of a W x H
  image is (W / 2, H / 2).

Loaders convert other conventions (Blender/OpenGL camera-to-world, COLMAP quaternions) into this
form once, with the helpers below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float], Sequence[Sequence[float]]]

__all__ = [
    "Camera",
    "look_at",
    "intrinsics_from_fov",
    "viewmat_from_opengl_c2w",
    "opengl_c2w_from_viewmat",
]


def _as_tensor(x: ArrayLike, shape: tuple[int, ...], what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.to(torch.float32)
    if tuple(t.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {tuple(t.shape)}")
    return t


@dataclass(eq=False)
class Camera:
    """A pinhole camera (no distortion) in the OpenCV convention.

    Attributes:
        viewmat: (4, 4) float32 world-to-camera matrix.
        K: (3, 3) float32 intrinsics in pixels ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
        width: image width in pixels.
        height: image height in pixels.
        name: identifier of the view (usually the image file name); unique within a scene.
    """

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    name: str = ""

    def __post_init__(self) -> None:
        self.viewmat = _as_tensor(self.viewmat, (4, 4), "viewmat")
        self.K = _as_tensor(self.K, (3, 3), "K").to(self.viewmat.device)
        self.width = int(self.width)
        self.height = int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")

    # ------------------------------------------------------------------ geometry
    @property
    def R(self) -> torch.Tensor:
        """(3, 3) world-to-camera rotation."""
        return self.viewmat[:3, :3]

    @property
    def t(self) -> torch.Tensor:
        """(3,) world-to-camera translation."""
        return self.viewmat[:3, 3]

    @property
    def center(self) -> torch.Tensor:
        """(3,) camera centre in world coordinates, ``-R^T t``."""
        return -(self.R.T @ self.t)

    @property
    def c2w(self) -> torch.Tensor:
        """(4, 4) camera-to-world matrix (OpenCV axes), the inverse of ``viewmat``."""
        out = torch.eye(4, dtype=self.viewmat.dtype, device=self.viewmat.device)
        out[:3, :3] = self.R.T
        out[:3, 3] = self.center
        return out

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def fov_x(self) -> float:
        """Horizontal field of view in radians (for a centred principal point)."""
        return 2.0 * math.atan(0.5 * self.width / self.fx)

    @property
    def fov_y(self) -> float:
        """Vertical field of view in radians (for a centred principal point)."""
        return 2.0 * math.atan(0.5 * self.height / self.fy)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points to continuous pixel coordinates.

        Args:
            points: (N, 3) world coordinates.
        Returns:
            uv: (N, 2) pixel coordinates (pixel (i, j) covers [i, i+1) x [j, j+1)).
            z: (N,) camera-space depth (positive in front of the camera).
        """
        pts = torch.as_tensor(points, dtype=self.viewmat.dtype, device=self.viewmat.device)
        cam = pts @ self.R.T + self.t
        z = cam[:, 2]
        uv = cam[:, :2] / z[:, None]
        uv = uv * torch.stack([self.K[0, 0], self.K[1, 1]]) + torch.stack([self.K[0, 2], self.K[1, 2]])
        return uv, z

    # ------------------------------------------------------------------ copies
    def scaled(self, factor: float) -> "Camera":
        """The camera for this view's image resized by ``factor``.

        fx, fy, cx and cy are multiplied by ``factor`` (exact under the pixel-centre convention);
        width and height are rounded to the nearest integer (at least 1).
        """
        if factor <= 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        K = self.K.clone()
        K[:2, :] *= factor
        return Camera(
            viewmat=self.viewmat.clone(),
            K=K,
            width=max(1, round(self.width * factor)),
            height=max(1, round(self.height * factor)),
            name=self.name,
        )

    def to(self, device: Union[str, torch.device]) -> "Camera":
        """A copy with ``viewmat`` and ``K`` on ``device``."""
        return Camera(self.viewmat.to(device), self.K.to(device), self.width, self.height, self.name)

    def __repr__(self) -> str:
        c = self.center.tolist()
        return (
            f"Camera(name={self.name!r}, {self.width}x{self.height}, fx={self.fx:.2f}, fy={self.fy:.2f}, "
            f"cx={self.cx:.2f}, cy={self.cy:.2f}, center=({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}))"
        )


# ---------------------------------------------------------------------- helpers
def look_at(eye: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """World-to-camera matrix of a camera at ``eye`` looking at ``target`` (OpenCV axes).

    The camera z axis points from ``eye`` to ``target``; the world ``up`` direction appears
    upwards in the image (camera -y). ``up`` must not be parallel to the viewing direction.

    Args:
        eye: (3,) camera centre in world units.
        target: (3,) point the optical axis passes through.
        up: (3,) world up direction.
    Returns:
        (4, 4) float32 viewmat.
    """
    eye_ = np.asarray(eye, dtype=np.float64).reshape(3)
    fwd = np.asarray(target, dtype=np.float64).reshape(3) - eye_
    up_ = np.asarray(up, dtype=np.float64).reshape(3)
    n = np.linalg.norm(fwd)
    if n == 0:
        raise ValueError("look_at: eye and target coincide")
    z = fwd / n
    x = np.cross(z, up_)
    nx = np.linalg.norm(x)
    if nx < 1e-9 * max(1.0, np.linalg.norm(up_)):
        raise ValueError("look_at: up is parallel to the viewing direction")
    x /= nx
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = -R @ eye_
    return torch.from_numpy(out).to(torch.float32)


def intrinsics_from_fov(fov_x_rad: float, width: int, height: int) -> torch.Tensor:
    """Intrinsics of a camera with horizontal field of view ``fov_x_rad`` (radians).

    Square pixels (fy = fx) and a centred principal point (W/2, H/2).

    Returns:
        (3, 3) float32 K in pixels.
    """
    if not 0.0 < fov_x_rad < math.pi:
        raise ValueError(f"fov_x must be in (0, pi) radians, got {fov_x_rad}")
    f = 0.5 * width / math.tan(0.5 * fov_x_rad)
    return torch.tensor([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]], dtype=torch.float32)


# Blender / OpenGL camera axes are x right, y up, z backward: negating the y and z axes of the
# camera maps them onto OpenCV's x right, y down, z forward.
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def viewmat_from_opengl_c2w(c2w: ArrayLike) -> torch.Tensor:
    """Convert a Blender/OpenGL camera-to-world matrix to an OpenCV world-to-camera viewmat.

    Args:
        c2w: (4, 4) (or (3, 4)) camera-to-world, camera axes x right, y up, z backward.
    Returns:
        (4, 4) float32 viewmat.
    """
    m = np.asarray(c2w.detach().cpu() if isinstance(c2w, torch.Tensor) else c2w, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ValueError(f"c2w must be 4x4 or 3x4, got shape {m.shape}")
    c2w_cv = m @ _GL_TO_CV  # flip the y and z columns
    R = c2w_cv[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-2:
        raise ValueError("c2w rotation block is not orthonormal (scaled or sheared camera matrix)")
    # Orthonormalise: json matrices are often stored with float32 precision or small scale drift.
    u, _, vt = np.linalg.svd(R)
    R = u @ vt
    view = np.eye(4)
    view[:3, :3] = R.T
    view[:3, 3] = -R.T @ c2w_cv[:3, 3]
    return torch.from_numpy(view).to(torch.float32)


def opengl_c2w_from_viewmat(viewmat: ArrayLike) -> np.ndarray:
    """Inverse of :func:`viewmat_from_opengl_c2w`: (4, 4) OpenGL camera-to-world as float64."""
    v = np.asarray(viewmat.detach().cpu() if isinstance(viewmat, torch.Tensor) else viewmat, dtype=np.float64)
    R, t = v[:3, :3], v[:3, 3]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return c2w @ _GL_TO_CV
