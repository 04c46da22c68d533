"""Lens distortion models and image undistortion through OpenCV.

Two models, in OpenCV's definitions (normalised camera coordinates x, y; r^2 = x^2 + y^2):

* ``fisheye=False``, radial-tangential (OpenCV's ``distCoeffs`` k1 k2 p1 p2 k3 k4 k5 k6; COLMAP
  SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV; nerfstudio / instant-ngp ``OPENCV``):
  ``x_d = x c + 2 p1 x y + p2 (r^2 + 2 x^2)``, ``y_d = y c + p1 (r^2 + 2 y^2) + 2 p2 x y`` with
  ``c = (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)``.
* ``fisheye=True``, equidistant fisheye (``cv2.fisheye``; COLMAP OPENCV_FISHEYE,
  SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE; nerfstudio ``OPENCV_FISHEYE``): with theta = atan(r),
  ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)`` and
  ``(x_d, y_d) = theta_d / r (x, y)``.

Pixels follow the package convention (pixel (i, j) centred at (i + 0.5, j + 0.5)); K is shifted
by half a pixel on its way to OpenCV, whose pixel centres are integers.

The undistorted camera (the "new K" policy): an undistorted view keeps the image size, the
principal point and the ratio fx / fy of its distorted camera. Its focal lengths are the
distorted camera's (K unchanged) whenever every pixel of the undistorted image then has a
source inside the photo, which is the case for barrel distortion (k1 < 0) and for fisheye
lenses; the photo's periphery is cut off. Otherwise (pincushion, k1 > 0) fx and fy are scaled
up by the smallest factor that leaves no pixel without a source. So an undistorted image has no
blank border to mask, never shows more field of view than the photo supports, and keeps the
photo's resolution at its centre.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from feature3dgs.model.camera import Camera
from feature3dgs.utils.optional import require

#: Largest focal-length factor the new-K policy may apply before giving up: a pincushion so
#: strong that the undistorted image must zoom in more than this is not a usable calibration.
MAX_ZOOM = 16.0


def _cv2():
    """OpenCV (opencv-python-headless, a dependency), imported on first undistortion."""
    return require("cv2", "opencv-python-headless", "undistorting images")


@dataclass(frozen=True)
class Distortion:
    """Lens distortion coefficients (dimensionless) of OpenCV's radial-tangential or fisheye model.

    Attributes:
        k1 .. k6: radial coefficients (k5, k6 and the rational k4 .. k6 only for radial-tangential;
            k1 .. k4 for fisheye).
        p1, p2: tangential coefficients (radial-tangential only).
        fisheye: True for the equidistant fisheye model.
    """

    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    k5: float = 0.0
    k6: float = 0.0
    fisheye: bool = False

    def __post_init__(self) -> None:
        if self.fisheye and (self.p1 or self.p2 or self.k5 or self.k6):
            raise ValueError("the fisheye model has k1 .. k4 only (p1, p2, k5, k6 must be 0)")

    @property
    def max_abs(self) -> float:
        """Largest coefficient magnitude."""
        return max(abs(v) for v in (self.k1, self.k2, self.p1, self.p2, self.k3, self.k4, self.k5, self.k6))

    def is_zero(self) -> bool:
        """True when every coefficient is 0 (a pinhole camera)."""
        return self.max_abs == 0.0

    def coeffs(self) -> np.ndarray:
        """OpenCV's coefficient vector: (4,) k1..k4 for fisheye, else (5,) k1 k2 p1 p2 k3 or (8,)
        k1 k2 p1 p2 k3 k4 k5 k6 when the rational terms are used (float64)."""
        if self.fisheye:
            return np.array([self.k1, self.k2, self.k3, self.k4], dtype=np.float64)
        c = [self.k1, self.k2, self.p1, self.p2, self.k3]
        if self.k4 or self.k5 or self.k6:
            c += [self.k4, self.k5, self.k6]
        return np.array(c, dtype=np.float64)

    def describe(self) -> str:
        """'k1=... k2=...' listing the non-zero coefficients, and the model."""
        names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
        vals = " ".join(f"{n}={getattr(self, n):g}" for n in names if getattr(self, n))
        return f"{'fisheye' if self.fisheye else 'radial-tangential'} {vals or '(none)'}"

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """Apply the model (OpenCV's implementation) to normalised undistorted coordinates.

        Args:
            xy: (N, 2) normalised camera coordinates x / z, y / z.
        Returns:
            (N, 2) float64 normalised distorted coordinates.
        """
        cv2 = _cv2()
        xy = np.ascontiguousarray(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
        if len(xy) == 0:
            return xy.copy()
        if self.fisheye:
            out = cv2.fisheye.distortPoints(xy[:, None, :], np.eye(3), self.coeffs())
        else:
            pts = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)[:, None, :]
            out, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), np.eye(3), self.coeffs())
        return out.reshape(-1, 2).astype(np.float64)


def _opencv_K(K: np.ndarray) -> np.ndarray:
    """Package K (pixel centres at i + 0.5) -> OpenCV K (pixel centres at i)."""
    Kc = np.array(K, dtype=np.float64).reshape(3, 3).copy()
    Kc[0, 2] -= 0.5
    Kc[1, 2] -= 0.5
    return Kc


def _all_sampled(K: np.ndarray, width: int, height: int, dist: Distortion, zoom: float) -> bool:
    """Whether every pixel of a (width x height) pinhole image with focal lengths ``zoom`` x K's
    (same principal point) takes its colour from inside the distorted photo of camera K.

    Checked on every border pixel centre, plus monotonicity along rays from the principal point
    (so that a model folding back at large radii is not mistaken for one that stays inside).
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u = np.arange(width) + 0.5
    v = np.arange(height) + 0.5
    border = np.concatenate([
        np.stack([u, np.full_like(u, 0.5)], 1), np.stack([u, np.full_like(u, height - 0.5)], 1),
        np.stack([np.full_like(v, 0.5), v], 1), np.stack([np.full_like(v, width - 0.5), v], 1),
    ])
    xy = (border - [cx, cy]) / [zoom * fx, zoom * fy]
    # Rays: 64 border samples per side, 16 steps from the centre out to the border.
    idx = np.unique(np.concatenate([np.linspace(0, n - 1, 64).round().astype(int) + off for n, off in
                                    ((width, 0), (width, width), (height, 2 * width), (height, 2 * width + height))]))
    t = np.linspace(1.0 / 16, 1.0, 16)
    rays = xy[idx][:, None, :] * t[None, :, None]
    d_border = dist.distort(xy) * [fx, fy] + [cx, cy]
    d_rays = dist.distort(rays.reshape(-1, 2)).reshape(rays.shape)
    if not (np.isfinite(d_border).all() and np.isfinite(d_rays).all()):
        return False
    eps = 1e-6
    inside = ((d_border[:, 0] >= -eps) & (d_border[:, 0] <= width + eps)
              & (d_border[:, 1] >= -eps) & (d_border[:, 1] <= height + eps))
    direction = xy[idx] / np.maximum(np.linalg.norm(xy[idx], axis=1, keepdims=True), 1e-12)
    along = (d_rays * direction[:, None, :]).sum(-1)
    return bool(inside.all() and (np.diff(along, axis=1) > 0).all())


def undistorted_K(K: np.ndarray, width: int, height: int, dist: Distortion) -> np.ndarray:
    """The intrinsics of the undistorted image, by the module's new-K policy.

    Args:
        K: (3, 3) intrinsics of the distorted camera, pixels, package convention.
        width, height: image size in pixels (kept by the undistorted image).
        dist: the camera's distortion.
    Returns:
        (3, 3) float64 K: K itself, or K with fx and fy scaled up by the smallest factor that
        leaves no pixel without a source.
    Raises:
        ValueError: when no zoom up to ``MAX_ZOOM`` achieves that.
    """
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    zoom = _zoom(tuple(K.ravel().tolist()), int(width), int(height), dist)
    out = K.copy()
    out[0, 0] *= zoom
    out[1, 1] *= zoom
    out[0, 1] *= zoom
    return out


@functools.lru_cache(maxsize=64)
def _zoom(K_flat: tuple, width: int, height: int, dist: Distortion) -> float:
    """The focal-length factor of the new-K policy (1.0 unless pincushion), to 1e-5 relative;
    cached, since the views of one camera share it."""
    K = np.array(K_flat).reshape(3, 3)
    zoom = 1.0
    if not dist.is_zero() and not _all_sampled(K, width, height, dist, 1.0):
        lo, hi = 1.0, 1.25
        while not _all_sampled(K, width, height, dist, hi):
            lo, hi = hi, hi * 2.0
            if hi > MAX_ZOOM:
                raise ValueError(
                    f"distortion {dist.describe()} is too strong to undistort: even {MAX_ZOOM:g}x the "
                    "focal length leaves pixels without a source in the photo"
                )
        while hi - lo > 1e-5 * hi:
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if _all_sampled(K, width, height, dist, mid) else (mid, hi)
        zoom = hi
    return zoom


@functools.lru_cache(maxsize=8)
def _maps(dist: Distortion, K_src: tuple, K_new: tuple, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    cv2 = _cv2()
    Ks, Kn = _opencv_K(np.array(K_src)), _opencv_K(np.array(K_new))
    if dist.fisheye:
        mx, my = cv2.fisheye.initUndistortRectifyMap(Ks, dist.coeffs(), np.eye(3), Kn, (width, height), cv2.CV_32FC1)
    else:
        mx, my = cv2.initUndistortRectifyMap(Ks, dist.coeffs(), None, Kn, (width, height), cv2.CV_32FC1)
    mx.setflags(write=False)
    my.setflags(write=False)
    return mx, my


@dataclass(frozen=True)
class Undistortion:
    """How one view's image, resized to the camera size, is resampled to its pinhole camera.

    Attributes:
        distortion: the lens model of the image file.
        K_distorted: (3, 3) intrinsics of the image as stored (at the loaded size), row-major tuple.
        K_undistorted: (3, 3) intrinsics of the undistorted image (the view's camera), tuple.
        width, height: image size in pixels (the same before and after).
    """

    distortion: Distortion
    K_distorted: tuple
    K_undistorted: tuple
    width: int
    height: int

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV remap tables: two (H, W) float32 arrays of source x and y (OpenCV pixel
        coordinates, pixel centres at integers); cached per camera."""
        return _maps(self.distortion, self.K_distorted, self.K_undistorted, self.width, self.height)

    def apply(self, img: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Undistort an image of the view.

        Args:
            img: (H, W) or (H, W, C) array at the camera size (C <= 4 for bilinear).
            nearest: nearest-neighbour sampling (labels, depth) instead of bilinear (colours, masks).
        Returns:
            The undistorted array, same shape and dtype.
        """
        if img.shape[:2] != (self.height, self.width):
            raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, expected {self.width}x{self.height}")
        mx, my = self.maps()
        if nearest:
            i = np.clip(np.rint(mx).astype(np.int64), 0, self.width - 1)
            j = np.clip(np.rint(my).astype(np.int64), 0, self.height - 1)
            return img[j, i]
        cv2 = _cv2()
        out = cv2.remap(np.ascontiguousarray(img), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(img.shape)


def undistort_camera(camera: "Camera", dist: Distortion) -> tuple["Camera", Undistortion]:
    """The pinhole camera of ``camera``'s undistorted image, and how to resample the image.

    Args:
        camera: the distorted camera at the size the view is loaded at.
        dist: its distortion.
    Returns:
        (pinhole camera with the same pose, name and size and the policy's K, the resampling).
    """
    K = camera.K.detach().cpu().double().numpy()
    K_new = undistorted_K(K, camera.width, camera.height, dist)
    cam = Camera(camera.viewmat.clone(), K_new, camera.width, camera.height, name=camera.name)
    und = Undistortion(dist, tuple(K.ravel().tolist()), tuple(cam.K.double().numpy().ravel().tolist()),
                       camera.width, camera.height)
    return cam, und
