"""Readers for COLMAP sparse models (cameras, images, points3D) in binary and text form.

Follows the file layouts documented by COLMAP (``colmap/src/colmap/scene/reconstruction_io``):
all binary values little endian; ``images`` poses are world-to-camera rotations as unit
quaternions (qw, qx, qy, qz) and translations, in OpenCV camera axes. 2D keypoints and point
tracks are skipped: only what a Gaussian-splatting loader needs is kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

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


# ---------------------------------------------------------------------- binary
class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.buf = path.read_bytes()
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"{self.path}: file truncated at byte {self.pos} (corrupt COLMAP binary model?)")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def skip(self, nbytes: int) -> None:
        if self.pos + nbytes > len(self.buf):
            raise ValueError(f"{self.path}: file truncated at byte {self.pos} (corrupt COLMAP binary model?)")
        self.pos += nbytes

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise ValueError(f"{self.path}: unterminated image name at byte {self.pos}")
        s = self.buf[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return s


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(Path(path))
    (n,) = r.take("<Q")
    cams = {}
    for _ in range(n):
        cam_id, model_id, w, h = r.take("<iiQQ")
        if model_id not in CAMERA_MODELS:
            raise ValueError(f"{path}: unknown COLMAP camera model id {model_id}")
        name, k = CAMERA_MODELS[model_id]
        cams[cam_id] = ColmapCamera(cam_id, name, int(w), int(h), np.array(r.take(f"<{k}d")))
    return cams


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    r = _Reader(Path(path))
    (n,) = r.take("<Q")
    images = {}
    for _ in range(n):
        vals = r.take("<i4d3di")
        name = r.cstring()
        (n2d,) = r.take("<Q")
        r.skip(24 * n2d)  # x, y (double), point3D_id (int64)
        images[vals[0]] = ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name)
    return images


def read_points3d_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    r = _Reader(Path(path))
    (n,) = r.take("<Q")
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    for i in range(n):
        vals = r.take("<Q3d3BdQ")
        xyz[i] = vals[1:4]
        rgb[i] = vals[4:7]
        r.skip(8 * vals[8])  # track: (image_id int32, point2D_idx int32) pairs
    return xyz, rgb


# ---------------------------------------------------------------------- text
def _data_lines(path: Path) -> list[str]:
    """Lines of a COLMAP text file without comments (empty lines kept: they can be data)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"COLMAP model file not found: {path}") from None
    return [ln.rstrip("\r\n") for ln in text.splitlines() if not ln.lstrip().startswith("#")]


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for ln in _data_lines(path):
        tok = ln.split()
        if not tok:
            continue
        try:
            cam_id, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(v) for v in tok[4:]])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: malformed camera line {ln!r}") from None
        if model not in NUM_PARAMS:
            raise ValueError(f"{path}: unknown COLMAP camera model {model!r}")
        if len(params) != NUM_PARAMS[model]:
            raise ValueError(f"{path}: {model} needs {NUM_PARAMS[model]} parameters, got {len(params)}")
        cams[cam_id] = ColmapCamera(cam_id, model, w, h, params)
    return cams


def read_images_text(path: Path) -> dict[int, ColmapImage]:
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
        if len(tok) < 10:
            raise ValueError(f"{path}: malformed image line {lines[i]!r} (expected ID QW QX QY QZ TX TY TZ CAMERA_ID NAME)")
        try:
            img_id = int(tok[0])
            q = np.array([float(v) for v in tok[1:5]])
            t = np.array([float(v) for v in tok[5:8]])
            cam_id = int(tok[8])
        except ValueError:
            raise ValueError(f"{path}: malformed image line {lines[i]!r}") from None
        images[img_id] = ColmapImage(img_id, q, t, cam_id, " ".join(tok[9:]))
        i += 2  # skip the POINTS2D line
    return images


def read_points3d_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, rgb = [], []
    for ln in _data_lines(path):
        tok = ln.split()
        if not tok:
            continue
        try:
            xyz.append([float(v) for v in tok[1:4]])
            rgb.append([int(v) for v in tok[4:7]])
        except ValueError:
            raise ValueError(f"{path}: malformed point line {ln[:80]!r}") from None
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
    raise FileNotFoundError(
        f"no COLMAP model under {root}: expected cameras.bin or cameras.txt in "
        f"{root / 'sparse' / '0'}, {root / 'sparse'} or {root}"
    )


def read_model(sparse_dir: Path) -> ColmapModel:
    """Read a sparse model folder, binary files preferred over text where both exist.

    cameras and images are required; points3D is optional (empty arrays when absent).
    """
    sparse_dir = Path(sparse_dir)
    cam_p, img_p, pts_p = (_pick(sparse_dir, s) for s in ("cameras", "images", "points3D"))
    if cam_p is None or img_p is None:
        missing = "cameras" if cam_p is None else "images"
        raise FileNotFoundError(f"COLMAP model {sparse_dir} lacks {missing}.bin / {missing}.txt")
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
            raise ValueError(f"{img_p}: image {im.name!r} refers to camera {im.camera_id}, not in {cam_p}")
    return ColmapModel(cams, imgs, xyz, rgb)
