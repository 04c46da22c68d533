"""Conversion between viser's browser camera and :class:`feature3dgs.model.camera.Camera`.

viser's camera convention (checked in viser 1.1 ``_viser.py``, ``CameraHandle`` and the client's
``CameraControls.tsx``): the client converts the three.js camera to OpenCV axes before sending it,
so

* ``wxyz`` is the camera-to-world rotation ``R_wc`` (``P_world = R_wc p_camera + position``) of a
  camera whose axes are x right, y down, z forward (the look direction is ``R_wc[:, 2]``, the
  screen's up is ``-R_wc[:, 1]``);
* ``position`` is the camera centre in world units;
* ``fov`` is the **vertical** field of view in radians and ``aspect`` = canvas width / height;
* the background image is stretched over the whole canvas, so a frame must be rendered with the
  canvas aspect ratio, square pixels and a centred principal point.

That is the package's own convention (:mod:`feature3dgs.model.camera`), so the conversion is a rigid
inversion plus pinhole intrinsics. Everything here is numpy/torch only: no viser import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from feature3dgs.model.camera import Camera

__all__ = [
    "ViserPose",
    "wxyz_to_matrix",
    "matrix_to_wxyz",
    "frame_size",
    "camera_from_viser",
    "camera_from_client",
    "viser_pose_from_camera",
    "scene_up_direction",
    "same_pose",
]


@dataclass(frozen=True)
class ViserPose:
    """A camera as viser describes it.

    Attributes:
        wxyz: (4,) unit quaternion (w, x, y, z) of the camera-to-world rotation, OpenCV camera axes.
        position: (3,) camera centre in world units.
        fov_y: vertical field of view in radians.
        aspect: image width / height.
        look_at: (3,) orbit centre in world units (on the optical axis).
        up: (3,) unit world direction the orbit controls keep upwards.
    """

    wxyz: np.ndarray
    position: np.ndarray
    fov_y: float
    aspect: float
    look_at: np.ndarray
    up: np.ndarray


def wxyz_to_matrix(wxyz: Sequence[float]) -> np.ndarray:
    """(4,) quaternion (w, x, y, z), normalised here -> (3, 3) float64 rotation matrix."""
    q = np.asarray(wxyz, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion must be finite and non-zero, got {q.tolist()}")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_wxyz(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) float64 unit quaternion (w, x, y, z) with w >= 0."""
    m = np.asarray(R, dtype=np.float64).reshape(3, 3)
    # Shepperd's method: pivot on the largest of the four squared components (stable everywhere).
    t = np.trace(m)
    cands = np.array([t, m[0, 0], m[1, 1], m[2, 2]])
    i = int(np.argmax(cands))
    if i == 0:
        s = math.sqrt(max(1.0 + t, 1e-300)) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        s = math.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 1e-300)) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        s = math.sqrt(max(1.0 + m[1, 1] - m[0, 0] - m[2, 2], 1e-300)) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(max(1.0 + m[2, 2] - m[0, 0] - m[1, 1], 1e-300)) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def frame_size(aspect: float, long_side: int) -> tuple[int, int]:
    """(width, height) in pixels of a frame with ``aspect`` = width / height whose longer side is
    ``long_side`` pixels (each side at least 1)."""
    if not (math.isfinite(aspect) and aspect > 0):
        raise ValueError(f"aspect must be a positive number, got {aspect}")
    if long_side < 1:
        raise ValueError(f"long_side must be >= 1 pixel, got {long_side}")
    if aspect >= 1:
        return int(long_side), max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), int(long_side)


def camera_from_viser(wxyz: Sequence[float], position: Sequence[float], fov_y: float, aspect: float,
                      height: Optional[int] = None, *, long_side: Optional[int] = None,
                      name: str = "viewer") -> Camera:
    """The package camera seeing what viser's camera sees.

    Args:
        wxyz: (4,) camera-to-world rotation (OpenCV camera axes), as ``client.camera.wxyz``.
        position: (3,) camera centre in world units, as ``client.camera.position``.
        fov_y: vertical field of view in radians, as ``client.camera.fov``.
        aspect: width / height, as ``client.camera.aspect``.
        height: image height in pixels (width = round(height * aspect)); or give ``long_side``.
        long_side: the longer image side in pixels (see :func:`frame_size`).
    Returns:
        A :class:`Camera` with ``viewmat`` = [[R_wc^T, -R_wc^T position], [0, 1]] and square-pixel
        intrinsics fy = fx = (H / 2) / tan(fov_y / 2), principal point (W / 2, H / 2).
    """
    if (height is None) == (long_side is None):
        raise ValueError("give exactly one of height and long_side")
    if not (0.0 < float(fov_y) < math.pi):
        raise ValueError(f"fov_y must be in (0, pi) radians, got {fov_y}")
    if height is not None:
        if height < 1:
            raise ValueError(f"height must be >= 1 pixel, got {height}")
        if not (math.isfinite(aspect) and aspect > 0):
            raise ValueError(f"aspect must be a positive number, got {aspect}")
        W, H = max(1, round(height * aspect)), int(height)
    else:
        W, H = frame_size(aspect, int(long_side))
    R_wc = wxyz_to_matrix(wxyz)
    c = np.asarray(position, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"camera position must be finite, got {c.tolist()}")
    view = np.eye(4)
    view[:3, :3] = R_wc.T
    view[:3, 3] = -R_wc.T @ c
    f = 0.5 * H / math.tan(0.5 * float(fov_y))
    K = np.array([[f, 0.0, 0.5 * W], [0.0, f, 0.5 * H], [0.0, 0.0, 1.0]])
    return Camera(torch.from_numpy(view).float(), torch.from_numpy(K).float(), W, H, name)


def camera_from_client(client_camera, long_side: int, name: str = "viewer") -> Camera:
    """:func:`camera_from_viser` for a viser ``CameraHandle`` (duck-typed: ``wxyz``, ``position``,
    ``fov``, ``aspect``), with its longer side ``long_side`` pixels."""
    return camera_from_viser(client_camera.wxyz, client_camera.position, client_camera.fov,
                             client_camera.aspect, long_side=long_side, name=name)


def viser_pose_from_camera(camera: Camera, look_distance: Optional[float] = None,
                           up: Optional[Sequence[float]] = None) -> ViserPose:
    """The viser pose of a package camera (the inverse of :func:`camera_from_viser`).

    Exact for square pixels and a centred principal point (every camera the viewer makes, and the
    usual training camera); otherwise the vertical field of view is kept and the rest ignored.

    Args:
        camera: the camera (e.g. a training view's).
        look_distance: distance of the orbit centre along the optical axis (default 1 world unit).
        up: world up direction for the orbit controls (default: the camera's own up, -y axis).
    """
    v = camera.viewmat.detach().double().cpu().numpy()
    R_cw, t = v[:3, :3], v[:3, 3]
    R_wc = R_cw.T
    centre = -R_wc @ t
    fwd = R_wc[:, 2]
    d = 1.0 if look_distance is None else float(look_distance)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"look_distance must be positive, got {look_distance}")
    up_v = -R_wc[:, 1] if up is None else np.asarray(up, dtype=np.float64).reshape(3)
    up_v = up_v / max(np.linalg.norm(up_v), 1e-12)
    return ViserPose(wxyz=matrix_to_wxyz(R_wc), position=centre, fov_y=camera.fov_y,
                     aspect=camera.width / camera.height, look_at=centre + d * fwd, up=up_v)


def scene_up_direction(cameras: Sequence[Camera]) -> np.ndarray:
    """(3,) unit world up direction of a capture: the mean of the cameras' up axes (-y).

    Falls back to +z when there is no camera or the up axes cancel out.
    """
    ups = [-(c.viewmat.detach().double().cpu().numpy()[1, :3]) for c in cameras]
    if ups:
        m = np.mean(ups, axis=0)
        n = np.linalg.norm(m)
        if n > 1e-6:
            return m / n
    return np.array([0.0, 0.0, 1.0])


def same_pose(a: Camera, b: Camera, atol: float = 1e-5) -> bool:
    """True when two cameras share pose, vertical field of view and (nearly) aspect ratio, so that
    pixel (x, y) of one maps to (x * b.W / a.W, y * b.H / a.H) of the other."""
    if not torch.allclose(a.viewmat.cpu(), b.viewmat.cpu(), atol=atol):
        return False
    return (abs(a.fov_y - b.fov_y) < 1e-4
            and abs(a.width / a.height - b.width / b.height) < 0.02 * (a.width / a.height))
