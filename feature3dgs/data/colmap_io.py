"""Readers for COLMAP sparse models (cameras, images, points3D) in binary and text form.

Follows the file layouts documented by COLMAP (``colmap/src/colmap/scene/reconstruction_io``):
all binary values little endian; ``images`` poses are world-to-camera rotations as unit
quaternions (qw, qx, qy, qz) and translations, in OpenCV camera axes. 2D keypoints and point
tracks are skipped: only what a Gaussian-splatting loader needs is kept.

Every reader checks what it reads: counts against the bytes left in the file (before allocating
anything), camera sizes and parameters, quaternions, UTF-8 names. A corrupt file raises a
:class:`~.errors.SceneFormatError` naming the file, the record and the field.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import SceneNotFoundError, format_error

#: COLMAP camera model id -> (name, number of parameters).
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS: dict[str, int] = {name: i for i, (name, _) in CAMERA_MODELS.items()}
NUM_PARAMS: dict[str, int] = {name: n for name, n in CAMERA_MODELS.values()}


@dataclass
class ColmapCamera:
    """A COLMAP camera: model name, size in pixels and the model's parameters (pixels)."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    """A registered image: world-to-camera quaternion (w, x, y, z), translation, camera, name."""

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str


@dataclass
class ColmapModel:
    """A sparse model. ``xyz`` (N, 3) float64 and ``rgb`` (N, 3) uint8 are empty when absent."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    xyz: np.ndarray
    rgb: np.ndarray
    points_path: Optional[Path] = None


# ---------------------------------------------------------------------- rotations
def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """(4,) quaternion (w, x, y, z), normalised here -> (3, 3) rotation matrix (float64)."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q)
    if not n > 0:
        raise ValueError(f"zero quaternion {q}")
    w, x, y, z = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (4,) unit quaternion (w, x, y, z) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    # Pick the numerically largest of 4w^2, 4x^2, 4y^2, 4z^2 to divide by.
    cands = [tr, R[0, 0], R[1, 1], R[2, 2]]
    k = int(np.argmax(cands))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + tr, 0.0))
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 0.0))
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 0.0))
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


# ---------------------------------------------------------------------- checks
_ONE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")


def _check_camera(path: Path, cam: ColmapCamera) -> ColmapCamera:
    where = f"camera {cam.id}"
    if not (1 <= cam.width <= 1 << 20 and 1 <= cam.height <= 1 << 20):
        raise format_error(path, f"{where} width/height",
                           f"expected a positive image size in pixels, got {cam.width}x{cam.height}")
    if not np.isfinite(cam.params).all():
        raise format_error(path, f"{where} params", f"non-finite camera parameter in {cam.params.tolist()}")
    # Every model starts with its focal length(s), f or fx fy, then cx cy.
    n_focal = 1 if cam.model in _ONE_FOCAL else 2
    if not (cam.params[:n_focal] > 0).all():
        raise format_error(path, f"{where} focal length",
                           f"expected positive focal length(s) in pixels, got {cam.params[:n_focal].tolist()}")
    return cam


def _check_image(path: Path, img: ColmapImage) -> ColmapImage:
    where = f"image {img.id} ({img.name!r})"
    if not (np.isfinite(img.qvec).all() and np.isfinite(img.tvec).all()):
        raise format_error(path, f"{where} pose", "non-finite quaternion or translation")
    if not np.linalg.norm(img.qvec) > 1e-12:
        raise format_error(path, f"{where} quaternion", f"expected a non-zero quaternion, got {img.qvec.tolist()}")
    if not img.name:
        raise format_error(path, f"image {img.id} name", "empty image name")
    return img


# ---------------------------------------------------------------------- binary
class _Reader:
    """Bounds-checked little-endian reads from a whole binary file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.buf = path.read_bytes()
        except FileNotFoundError:
            raise SceneNotFoundError(f"COLMAP model file not found: {path}", path=path) from None
        self.pos = 0

    def _truncated(self, what: str) -> Exception:
        return format_error(self.path, what, f"file truncated at byte {self.pos} of {len(self.buf)} "
                                             "(corrupt COLMAP binary model?)")

    def take(self, fmt: str, what: str = "record"):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self._truncated(what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def skip(self, nbytes: int, what: str = "record") -> None:
        if nbytes < 0 or self.pos + nbytes > len(self.buf):
            raise self._truncated(what)
        self.pos += nbytes

    def count(self, min_record: int, what: str) -> int:
        """A uint64 record count, refused when that many records cannot fit in the bytes left."""
        (n,) = self.take("<Q", f"number of {what}")
        left = len(self.buf) - self.pos
        if n * min_record > left:
            raise format_error(self.path, f"number of {what}",
                               f"the file declares {n} {what} of at least {min_record} bytes each, but only "
                               f"{left} bytes follow (corrupt COLMAP binary model?)")
        return n

    def cstring(self, what: str) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise format_error(self.path, what, f"unterminated string at byte {self.pos}")
        raw = self.buf[self.pos:end]
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise format_error(self.path, what, f"the string at byte {self.pos} is not UTF-8 text "
                                                f"({raw[:20]!r}...; corrupt COLMAP binary model?)") from None
        self.pos = end + 1
        return s

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise format_error(self.path, "end of file", f"{len(self.buf) - self.pos} unexpected bytes after the "
                                                         f"last record (corrupt COLMAP binary model?)")


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    """cameras.bin: id -> camera (checked sizes, finite positive focal lengths)."""
    path = Path(path)
    r = _Reader(path)
    n = r.count(24, "cameras")
    cams = {}
    for i in range(n):
        cam_id, model_id, w, h = r.take("<iiQQ", f"camera record {i}")
        if model_id not in CAMERA_MODELS:
            raise format_error(path, f"camera {cam_id} model", f"unknown COLMAP camera model id {model_id} "
                                                                f"(known: 0 .. {len(CAMERA_MODELS) - 1})")
        name, k = CAMERA_MODELS[model_id]
        params = np.array(r.take(f"<{k}d", f"camera {cam_id} params"))
        cams[cam_id] = _check_camera(path, ColmapCamera(cam_id, name, int(w), int(h), params))
    r.finish()
    return cams


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    """images.bin: id -> registered image (pose, camera id, name); 2D keypoints skipped."""
    path = Path(path)
    r = _Reader(path)
    n = r.count(64 + 1 + 8, "images")
    images = {}
    for i in range(n):
        vals = r.take("<i4d3di", f"image record {i}")
        name = r.cstring(f"image {vals[0]} name")
        n2d = r.count(24, f"2D points of image {vals[0]}")  # x, y (double), point3D_id (int64)
        r.skip(24 * n2d, f"2D points of image {vals[0]}")
        images[vals[0]] = _check_image(path, ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name))
    r.finish()
    return images


def read_points3d_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """points3D.bin: (N, 3) float64 positions and (N, 3) uint8 colours; tracks skipped."""
    path = Path(path)
    r = _Reader(path)
    rec = struct.calcsize("<Q3d3BdQ")
    n = r.count(rec, "points")
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        vals = r.take("<Q3d3BdQ", f"point record {i}")
        xyz[i] = vals[1:4]
        rgb[i] = vals[4:7]
        r.skip(8 * vals[8], f"track of point {vals[0]}")  # (image_id int32, point2D_idx int32) pairs
    r.finish()
    return xyz, rgb


# ---------------------------------------------------------------------- text
def _data_lines(path: Path) -> list[str]:
    """Lines of a COLMAP text file without comments (empty lines kept: they can be data)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SceneNotFoundError(f"COLMAP model file not found: {path}", path=path) from None
    except UnicodeDecodeError as e:
        raise format_error(path, "text", f"not UTF-8 text (byte {e.start}; a binary or corrupt file?)") from None
    return [ln.rstrip("\r\n") for ln in text.splitlines() if not ln.lstrip().startswith("#")]


def _finite_floats(tokens: list[str]) -> list[float]:
    vals = [float(v) for v in tokens]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError("non-finite value")
    return vals


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    """cameras.txt: id -> camera (checked like the binary reader)."""
    path = Path(path)
    cams = {}
    for ln in _data_lines(path):
        tok = ln.split()
        if not tok:
            continue
        try:
            cam_id, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array(_finite_floats(tok[4:]))
        except (ValueError, IndexError):
            raise format_error(path, "camera line", f"malformed line {ln[:80]!r} "
                                                    "(expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[])") from None
        if model not in NUM_PARAMS:
            raise format_error(path, f"camera {cam_id} model", f"unknown COLMAP camera model {model!r}")
        if len(params) != NUM_PARAMS[model]:
            raise format_error(path, f"camera {cam_id} params",
                               f"{model} needs {NUM_PARAMS[model]} parameters, got {len(params)}")
        cams[cam_id] = _check_camera(path, ColmapCamera(cam_id, model, w, h, params))
    return cams


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    """images.txt: id -> registered image; every image takes two lines (pose, 2D points)."""
    path = Path(path)
    lines = _data_lines(path)
    # Drop blank lines at the very start; after that, every image takes two lines (the pose line
    # and the 2D points line, which may be empty).
    while lines and not lines[0].strip():
        lines.pop(0)
    images = {}
    i = 0
    while i < len(lines):
        tok = lines[i].split()
        if not tok:  # trailing blank lines
            i += 1
            continue
        try:
            if len(tok) < 10:
                raise ValueError
            img_id = int(tok[0])
            q = np.array(_finite_floats(tok[1:5]))
            t = np.array(_finite_floats(tok[5:8]))
            cam_id = int(tok[8])
        except ValueError:
            raise format_error(path, "image line", f"malformed line {lines[i][:80]!r} "
                                                   "(expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME)") from None
        images[img_id] = _check_image(path, ColmapImage(img_id, q, t, cam_id, " ".join(tok[9:])))
        i += 2  # skip the POINTS2D line
    return images


def read_points3d_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """points3D.txt: (N, 3) float64 positions and (N, 3) uint8 colours."""
    path = Path(path)
    xyz, rgb = [], []
    for ln in _data_lines(path):
        tok = ln.split()
        if not tok:
            continue
        try:
            if len(tok) < 7:
                raise ValueError
            xyz.append([float(v) for v in tok[1:4]])
            c = [int(v) for v in tok[4:7]]
            if not all(0 <= v <= 255 for v in c):
                raise ValueError
            rgb.append(c)
        except ValueError:
            raise format_error(path, "point line", f"malformed line {ln[:80]!r} "
                                                   "(expected POINT3D_ID X Y Z R G B ERROR TRACK[])") from None
    return np.array(xyz, dtype=np.float64).reshape(-1, 3), np.array(rgb, dtype=np.uint8).reshape(-1, 3)


# ---------------------------------------------------------------------- model
def _pick(sparse_dir: Path, stem: str) -> Optional[Path]:
    for ext in (".bin", ".txt"):
        p = sparse_dir / (stem + ext)
        if p.is_file():
            return p
    return None


def find_sparse_dir(root: Path) -> Path:
    """The folder holding cameras.{bin,txt}: ``root/sparse/0``, ``root/sparse`` or ``root``."""
    root = Path(root)
    for d in (root / "sparse" / "0", root / "sparse", root):
        if _pick(d, "cameras") is not None:
            return d
    raise SceneNotFoundError(
        f"no COLMAP model under {root}: expected cameras.bin or cameras.txt in "
        f"{root / 'sparse' / '0'}, {root / 'sparse'} or {root}",
        path=root,
    )


def read_model(sparse_dir: Path) -> ColmapModel:
    """Read a sparse model folder, binary files preferred over text where both exist.

    cameras and images are required; points3D is optional (empty arrays when absent).
    """
    sparse_dir = Path(sparse_dir)
    cam_p, img_p, pts_p = (_pick(sparse_dir, s) for s in ("cameras", "images", "points3D"))
    if cam_p is None or img_p is None:
        missing = "cameras" if cam_p is None else "images"
        raise SceneNotFoundError(f"COLMAP model {sparse_dir} lacks {missing}.bin / {missing}.txt",
                                 path=sparse_dir / f"{missing}.bin")
    cams = read_cameras_binary(cam_p) if cam_p.suffix == ".bin" else read_cameras_text(cam_p)
    imgs = read_images_binary(img_p) if img_p.suffix == ".bin" else read_images_text(img_p)
    if pts_p is None:
        xyz, rgb = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
    elif pts_p.suffix == ".bin":
        xyz, rgb = read_points3d_binary(pts_p)
    else:
        xyz, rgb = read_points3d_text(pts_p)
    for im in imgs.values():
        if im.camera_id not in cams:
            raise format_error(img_p, f"image {im.id} ({im.name!r}) camera",
                               f"refers to camera {im.camera_id}, which is not in {cam_p}")
    return ColmapModel(cams, imgs, xyz, rgb, points_path=pts_p)
