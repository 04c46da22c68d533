"""Bad scene data, built here, must give a SceneFormatError whose one-line message names the file
and the key (or the option) at fault: never a traceback from deep inside, never silent nonsense.

Each table row builds a small valid scene in tmp_path, breaks one thing, and loads it. Classes:
images (truncated, corrupt, wrong size), transforms.json values (zero, negative, non-numeric,
non-finite, out of range, wrong type, per frame and top level), distortion keys, COLMAP binary and
text models (random bytes, impossible counts, bad records), PLY point clouds, loader options, and
missing files or folders.
"""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from feature3dgs.data import load_colmap, load_scene, load_transforms
from feature3dgs.data.colmap_io import MODEL_IDS
from feature3dgs.data.errors import SceneFormatError, SceneNotFoundError, SceneOptionError
from feature3dgs.data.images import check_image, read_image_u8
from feature3dgs.data.ply import read_ply_points, write_ply_points

W, H = 32, 24


# ============================================================================ builders
def _c2w(k: int) -> list:
    m = np.eye(4)
    m[:3, 3] = [0.1 * k, 0.0, 3.0]
    return m.tolist()


def _png(path: Path, size=(W, H), k: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(k)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def transforms_scene(tmp: Path, meta: dict | None = None, frame0: dict | None = None, n: int = 3) -> Path:
    """A valid instant-ngp scene of n 32x24 PNGs; ``meta`` / ``frame0`` override keys (None
    values delete them) at the top level / in the first frame."""
    root = tmp / "ngp"
    frames = []
    for k in range(n):
        _png(root / "images" / f"f{k}.png", k=k)
        frames.append({"file_path": f"images/f{k}.png", "transform_matrix": _c2w(k)})
    m: dict[str, Any] = {"fl_x": 30.0, "fl_y": 30.0, "cx": 16.0, "cy": 12.0, "w": W, "h": H, "frames": frames}
    for d, target in ((meta or {}, m), (frame0 or {}, frames[0])):
        for key, value in d.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    (root / "transforms.json").write_text(json.dumps(m))
    return root


def blender_scene(tmp: Path, meta: dict | None = None) -> Path:
    root = tmp / "blender"
    for split in ("train", "test"):
        frames = []
        for k in range(2):
            _png(root / split / f"r_{k}.png", k=k)
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": _c2w(k)})
        m = {"camera_angle_x": 0.8, "frames": frames, **(meta or {})}
        (root / f"transforms_{split}.json").write_text(json.dumps(m))
    return root


def _cam_record(cam_id: int, model: str, w: int, h: int, params: list) -> bytes:
    return struct.pack("<iiQQ", cam_id, MODEL_IDS[model], w, h) + struct.pack(f"<{len(params)}d", *params)


def _img_record(img_id: int, q, t, cam_id: int, name: bytes, n2d: int = 0) -> bytes:
    return (struct.pack("<i4d3di", img_id, *q, *t, cam_id) + name + b"\x00" + struct.pack("<Q", n2d)
            + b"\x00" * (24 * n2d))


def _pt_record(pid: int, xyz, rgb=(10, 20, 30)) -> bytes:
    return struct.pack("<Q3d3BdQ", pid, *xyz, *rgb, 0.5, 1) + struct.pack("<ii", 1, 0)


def colmap_scene(tmp: Path, cameras: bytes | None = None, images: bytes | None = None,
                 points: bytes | None = None, image_size=(W, H)) -> Path:
    """A valid binary COLMAP scene (one PINHOLE camera, 3 images, 4 points); the byte strings,
    when given, replace cameras.bin / images.bin / points3D.bin."""
    root = tmp / "colmap"
    sp = root / "sparse" / "0"
    sp.mkdir(parents=True)
    if cameras is None:
        cameras = struct.pack("<Q", 1) + _cam_record(1, "PINHOLE", W, H, [30.0, 30.0, 16.0, 12.0])
    if images is None:
        images = struct.pack("<Q", 3) + b"".join(
            _img_record(k + 1, (1.0, 0, 0, 0), (0.1 * k, 0, 3.0), 1, f"im{k}.png".encode(), n2d=k) for k in range(3))
    if points is None:
        points = struct.pack("<Q", 4) + b"".join(_pt_record(i + 1, (0.1 * i, 0.2, 0.3)) for i in range(4))
    (sp / "cameras.bin").write_bytes(cameras)
    (sp / "images.bin").write_bytes(images)
    (sp / "points3D.bin").write_bytes(points)
    for k in range(3):
        _png(root / "images" / f"im{k}.png", size=image_size, k=k)
    return root


def colmap_text_scene(tmp: Path, cameras: str | None = None, images: str | None = None,
                      points: str | None = None) -> Path:
    root = tmp / "colmap_txt"
    sp = root / "sparse" / "0"
    sp.mkdir(parents=True)
    (sp / "cameras.txt").write_text(cameras if cameras is not None else f"1 PINHOLE {W} {H} 30 30 16 12\n")
    (sp / "images.txt").write_text(images if images is not None else "".join(
        f"{k + 1} 1 0 0 0 {0.1 * k} 0 3 1 im{k}.png\n\n" for k in range(3)))
    (sp / "points3D.txt").write_text(points if points is not None else "1 0.1 0.2 0.3 10 20 30 0.5 1 0\n")
    for k in range(3):
        _png(root / "images" / f"im{k}.png", k=k)
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _jpeg_scene_truncated(tmp: Path) -> Path:
    root = transforms_scene(tmp)
    big = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "images" / "f1.jpg", quality=90)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][1]["file_path"] = "images/f1.jpg"
    meta.pop("w"), meta.pop("h")
    meta["frames"][1].update(w=320, h=240)
    (root / "transforms.json").write_text(json.dumps(meta))
    _truncate(root / "images" / "f1.jpg", 0.6)
    return root


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x55
    path.write_bytes(bytes(data))


def _with(root: Path, fn: Callable[[Path], Any]) -> Path:
    fn(root)
    return root


def _nan_ply(path: Path, n: int = 5) -> None:
    write_ply_points(path, np.full((n, 3), np.nan), np.zeros((n, 3)))


def _ply_text(path: Path, text: str) -> None:
    path.write_text(text)


# ============================================================================ the table
# (id, build(tmp) -> scene path, load(path), exception class, substrings the message must hold)
TS = "transforms.json"
_LOAD = load_scene

CASES: list[tuple[str, Callable[[Path], Path], Callable[[Path], Any], type, tuple[str, ...]]] = [
    # ---------------------------------------------------------------- images
    ("image truncated png", lambda t: _with(transforms_scene(t), lambda r: _truncate(r / "images" / "f1.png")),
     _LOAD, SceneFormatError, ("f1.png", "cannot decode image")),
    ("image truncated jpeg", _jpeg_scene_truncated, _LOAD, SceneFormatError, ("f1.jpg", "truncated")),
    ("image corrupt png byte (crc)", lambda t: _with(transforms_scene(t), lambda r: _flip_byte(r / "images" / "f2.png", 60)),
     _LOAD, SceneFormatError, ("f2.png", "cannot decode image")),
    ("image random bytes", lambda t: _with(transforms_scene(t), lambda r: (r / "images" / "f0.png").write_bytes(
        np.random.default_rng(1).bytes(500))), _LOAD, SceneFormatError, ("f0.png", "cannot decode image")),
    ("image empty file", lambda t: _with(transforms_scene(t), lambda r: (r / "images" / "f0.png").write_bytes(b"")),
     _LOAD, SceneFormatError, ("f0.png",)),
    ("image truncated colmap", lambda t: _with(colmap_scene(t), lambda r: _truncate(r / "images" / "im2.png", 0.7)),
     _LOAD, SceneFormatError, ("im2.png", "cannot decode image")),
    ("image truncated blender", lambda t: _with(blender_scene(t), lambda r: _truncate(r / "test" / "r_1.png")),
     _LOAD, SceneFormatError, ("r_1.png",)),
    ("mask truncated", lambda t: _with(transforms_scene(t, frame0={"mask_path": "m.png"}),
                                       lambda r: (_png(r / "m.png"), _truncate(r / "m.png"))),
     _LOAD, SceneFormatError, ("m.png",)),
    ("image aspect differs from w/h", lambda t: _with(transforms_scene(t), lambda r: _png(r / "images" / "f1.png", (40, 24))),
     _LOAD, SceneFormatError, ("f1.png", "size", "40x24", "32x24", "aspect")),
    ("image aspect differs from colmap camera", lambda t: colmap_scene(t, image_size=(32, 32)),
     _LOAD, SceneFormatError, ("im0.png", "COLMAP camera 1", "aspect")),
    # ---------------------------------------------------------------- transforms.json values
    ("camera_angle_x 0", lambda t: transforms_scene(t, {"fl_x": None, "camera_angle_x": 0}),
     _LOAD, SceneFormatError, (TS, "camera_angle_x", "got 0")),
    ("camera_angle_x negative", lambda t: transforms_scene(t, {"fl_x": None, "camera_angle_x": -0.5}),
     _LOAD, SceneFormatError, (TS, "camera_angle_x")),
    ("camera_angle_x pi", lambda t: transforms_scene(t, {"fl_x": None, "camera_angle_x": math.pi}),
     _LOAD, SceneFormatError, (TS, "camera_angle_x")),
    ("camera_angle_x 'wide'", lambda t: transforms_scene(t, {"fl_x": None, "camera_angle_x": "wide"}),
     _LOAD, SceneFormatError, (TS, "camera_angle_x", "'wide'")),
    ("camera_angle_x true", lambda t: transforms_scene(t, {"fl_x": None, "camera_angle_x": True}),
     _LOAD, SceneFormatError, (TS, "camera_angle_x", "True")),
    ("camera_angle_x NaN", lambda t: transforms_scene(t, {"fl_x": None, "camera_angle_x": float("nan")}),
     _LOAD, SceneFormatError, (TS, "camera_angle_x", "nan")),
    ("camera_angle_y 0", lambda t: transforms_scene(t, {"fl_y": None, "camera_angle_y": 0.0}),
     _LOAD, SceneFormatError, (TS, "camera_angle_y")),
    ("no intrinsics", lambda t: transforms_scene(t, {"fl_x": None, "fl_y": None}),
     _LOAD, SceneFormatError, (TS, "frames[0]", "fl_x", "camera_angle_x")),
    ("w 0", lambda t: transforms_scene(t, {"w": 0}), _LOAD, SceneFormatError, (TS, "w:", "got 0")),
    ("w negative", lambda t: transforms_scene(t, {"w": -32}), _LOAD, SceneFormatError, (TS, "w:")),
    ("w fractional", lambda t: transforms_scene(t, {"w": 31.5}), _LOAD, SceneFormatError, (TS, "w:", "integer")),
    ("w string", lambda t: transforms_scene(t, {"w": "32"}), _LOAD, SceneFormatError, (TS, "w:", "'32'")),
    ("h 0", lambda t: transforms_scene(t, {"h": 0}), _LOAD, SceneFormatError, (TS, "h:")),
    ("fl_x negative", lambda t: transforms_scene(t, {"fl_x": -30.0}), _LOAD, SceneFormatError, (TS, "fl_x", "-30")),
    ("fl_x 0", lambda t: transforms_scene(t, {"fl_x": 0}), _LOAD, SceneFormatError, (TS, "fl_x")),
    ("fl_x infinite", lambda t: transforms_scene(t, {"fl_x": float("inf")}), _LOAD, SceneFormatError, (TS, "fl_x")),
    ("fl_y string", lambda t: transforms_scene(t, {"fl_y": "30"}), _LOAD, SceneFormatError, (TS, "fl_y")),
    ("fl_x negative in a frame", lambda t: transforms_scene(t, frame0={"fl_x": -1.0}),
     _LOAD, SceneFormatError, (TS, "frames[0].fl_x")),
    ("cx string", lambda t: transforms_scene(t, {"cx": "mid"}), _LOAD, SceneFormatError, (TS, "cx", "'mid'")),
    ("cy NaN", lambda t: transforms_scene(t, {"cy": float("nan")}), _LOAD, SceneFormatError, (TS, "cy")),
    ("k1 string", lambda t: transforms_scene(t, {"k1": "0.1"}), _LOAD, SceneFormatError, (TS, "k1")),
    ("p2 infinite in a frame", lambda t: transforms_scene(t, frame0={"p2": float("-inf")}),
     _LOAD, SceneFormatError, (TS, "frames[0].p2")),
    ("k4 on a pinhole model", lambda t: transforms_scene(t, {"k4": 0.01}),
     _LOAD, SceneFormatError, (TS, "k4", "OPENCV_FISHEYE")),
    ("p1 on a fisheye model", lambda t: transforms_scene(t, {"camera_model": "OPENCV_FISHEYE", "p1": 0.01}),
     _LOAD, SceneFormatError, (TS, "p1", "tangential")),
    ("camera_model equirectangular", lambda t: transforms_scene(t, {"camera_model": "EQUIRECTANGULAR"}),
     _LOAD, SceneFormatError, (TS, "camera_model", "EQUIRECTANGULAR")),
    ("camera_model number", lambda t: transforms_scene(t, {"camera_model": 3}),
     _LOAD, SceneFormatError, (TS, "camera_model")),
    ("distortion too strong", lambda t: transforms_scene(t, {"k1": 1e6}),
     _LOAD, SceneFormatError, (TS, "frames[0]", "too strong")),
    ("depth_unit_scale_factor negative", lambda t: transforms_scene(t, {"depth_unit_scale_factor": -1}),
     _LOAD, SceneFormatError, (TS, "depth_unit_scale_factor")),
    ("transform_matrix 3x3", lambda t: transforms_scene(t, frame0={"transform_matrix": np.eye(3).tolist()}),
     _LOAD, SceneFormatError, (TS, "frames[0].transform_matrix")),
    ("transform_matrix strings", lambda t: transforms_scene(t, frame0={"transform_matrix": [["a"] * 4] * 4}),
     _LOAD, SceneFormatError, (TS, "frames[0].transform_matrix")),
    ("transform_matrix NaN", lambda t: transforms_scene(t, frame0={"transform_matrix": np.full((4, 4), np.nan).tolist()}),
     _LOAD, SceneFormatError, (TS, "frames[0].transform_matrix", "non-finite")),
    ("transform_matrix scaled", lambda t: transforms_scene(t, frame0={"transform_matrix": (2 * np.eye(4)).tolist()}),
     _LOAD, SceneFormatError, (TS, "frames[0].transform_matrix", "orthonormal")),
    ("transform_matrix ragged", lambda t: transforms_scene(t, frame0={"transform_matrix": [[1, 0], [0]]}),
     _LOAD, SceneFormatError, (TS, "frames[0].transform_matrix")),
    ("file_path number", lambda t: transforms_scene(t, frame0={"file_path": 5}),
     _LOAD, SceneFormatError, (TS, "frames[0].file_path")),
    ("frame not an object", lambda t: _with(transforms_scene(t), lambda r: (r / TS).write_text(
        json.dumps({"fl_x": 30, "frames": [3]}))), _LOAD, SceneFormatError, (TS, "frames[0]")),
    ("frames not a list", lambda t: _with(transforms_scene(t), lambda r: (r / TS).write_text('{"frames": 3}')),
     _LOAD, SceneFormatError, (TS, "frames")),
    ("json malformed", lambda t: _with(transforms_scene(t), lambda r: (r / TS).write_text('{"frames": [')),
     _LOAD, SceneFormatError, (TS, "malformed JSON")),
    ("json not utf-8", lambda t: _with(transforms_scene(t), lambda r: (r / TS).write_bytes(b"\xff\xfe{\x00")),
     _LOAD, SceneFormatError, (TS, "UTF-8")),
    ("mask_path number", lambda t: transforms_scene(t, frame0={"mask_path": 7}),
     _LOAD, SceneFormatError, (TS, "frames[0].mask_path")),
    ("classes not a list", lambda t: transforms_scene(t, {"classes": "sky"}), _LOAD, SceneFormatError, (TS, "classes")),
    ("ply_file_path number", lambda t: transforms_scene(t, {"ply_file_path": 7}),
     _LOAD, SceneFormatError, (TS, "ply_file_path")),
    ("blender camera_angle_x 'wide'", lambda t: blender_scene(t, {"camera_angle_x": "wide"}),
     _LOAD, SceneFormatError, ("transforms_train.json", "camera_angle_x")),
    # ---------------------------------------------------------------- COLMAP binary
    ("images.bin random bytes", lambda t: colmap_scene(t, images=np.random.default_rng(2).bytes(300)),
     _LOAD, SceneFormatError, ("images.bin",)),
    ("images.bin random bytes after a valid count", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + np.random.default_rng(3).bytes(300)), _LOAD, SceneFormatError, ("images.bin",)),
    ("images.bin name not utf-8", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + _img_record(1, (1.0, 0, 0, 0), (0, 0, 3), 1, b"\xff\xfe\xfa.png")),
     _LOAD, SceneFormatError, ("images.bin", "image 1 name", "not UTF-8")),
    ("images.bin unterminated name", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + struct.pack("<i4d3di", 1, 1, 0, 0, 0, 0, 0, 3, 1) + b"abc" * 10),
     _LOAD, SceneFormatError, ("images.bin", "unterminated")),
    ("images.bin 2D point count 2^40", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + _img_record(1, (1.0, 0, 0, 0), (0, 0, 3), 1, b"im0.png")[:-8]
        + struct.pack("<Q", 1 << 40)), _LOAD, SceneFormatError, ("images.bin", "2D points of image 1")),
    ("images.bin zero quaternion", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + _img_record(1, (0.0, 0, 0, 0), (0, 0, 3), 1, b"im0.png")),
     _LOAD, SceneFormatError, ("images.bin", "image 1", "quaternion")),
    ("images.bin NaN translation", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + _img_record(1, (1.0, 0, 0, 0), (np.nan, 0, 3), 1, b"im0.png")),
     _LOAD, SceneFormatError, ("images.bin", "image 1", "non-finite")),
    ("images.bin unknown camera", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + _img_record(1, (1.0, 0, 0, 0), (0, 0, 3), 9, b"im0.png")),
     _LOAD, SceneFormatError, ("images.bin", "camera 9")),
    ("images.bin trailing bytes", lambda t: colmap_scene(
        t, images=struct.pack("<Q", 1) + _img_record(1, (1.0, 0, 0, 0), (0, 0, 3), 1, b"im0.png") + b"xyz"),
     _LOAD, SceneFormatError, ("images.bin", "unexpected bytes")),
    ("images.bin no images", lambda t: colmap_scene(t, images=struct.pack("<Q", 0)),
     _LOAD, SceneFormatError, ("no registered images",)),
    ("cameras.bin random bytes", lambda t: colmap_scene(t, cameras=np.random.default_rng(4).bytes(100)),
     _LOAD, SceneFormatError, ("cameras.bin",)),
    ("cameras.bin count 2^40", lambda t: colmap_scene(t, cameras=struct.pack("<Q", 1 << 40)),
     _LOAD, SceneFormatError, ("cameras.bin", "number of cameras", "1099511627776")),
    ("cameras.bin unknown model id", lambda t: colmap_scene(
        t, cameras=struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, 99, W, H)),
     _LOAD, SceneFormatError, ("cameras.bin", "camera 1 model", "99")),
    ("cameras.bin width 0", lambda t: colmap_scene(
        t, cameras=struct.pack("<Q", 1) + _cam_record(1, "PINHOLE", 0, H, [30.0, 30.0, 16.0, 12.0])),
     _LOAD, SceneFormatError, ("cameras.bin", "camera 1 width/height")),
    ("cameras.bin negative focal", lambda t: colmap_scene(
        t, cameras=struct.pack("<Q", 1) + _cam_record(1, "PINHOLE", W, H, [-30.0, 30.0, 16.0, 12.0])),
     _LOAD, SceneFormatError, ("cameras.bin", "camera 1 focal length")),
    ("cameras.bin NaN parameter", lambda t: colmap_scene(
        t, cameras=struct.pack("<Q", 1) + _cam_record(1, "OPENCV", W, H, [30.0, 30.0, 16.0, 12.0, np.nan, 0, 0, 0])),
     _LOAD, SceneFormatError, ("cameras.bin", "camera 1 params")),
    ("cameras.bin unsupported model", lambda t: colmap_scene(
        t, cameras=struct.pack("<Q", 1) + _cam_record(1, "FOV", W, H, [30.0, 30.0, 16.0, 12.0, 0.5])),
     _LOAD, SceneFormatError, ("cameras.bin", "camera 1 model", "FOV")),
    ("cameras.bin truncated", lambda t: colmap_scene(
        t, cameras=(struct.pack("<Q", 1) + _cam_record(1, "PINHOLE", W, H, [30.0, 30.0, 16.0, 12.0]))[:-5]),
     _LOAD, SceneFormatError, ("cameras.bin", "camera 1 params", "truncated")),
    ("points3D.bin count 2^40", lambda t: colmap_scene(t, points=struct.pack("<Q", 1 << 40) + b"\x00" * 64),
     _LOAD, SceneFormatError, ("points3D.bin", "number of points", "1099511627776")),
    ("points3D.bin track length 2^40", lambda t: colmap_scene(
        t, points=struct.pack("<Q", 1) + struct.pack("<Q3d3BdQ", 1, 0, 0, 0, 1, 2, 3, 0.5, 1 << 40)),
     _LOAD, SceneFormatError, ("points3D.bin", "track of point 1")),
    ("points3D.bin all NaN", lambda t: colmap_scene(
        t, points=struct.pack("<Q", 2) + _pt_record(1, (np.nan,) * 3) + _pt_record(2, (np.inf, 0, 0))),
     _LOAD, SceneFormatError, ("points3D.bin", "points", "finite")),
    # ---------------------------------------------------------------- COLMAP text
    ("cameras.txt random bytes", lambda t: _with(colmap_text_scene(t), lambda r: (
        r / "sparse" / "0" / "cameras.txt").write_bytes(np.random.default_rng(5).bytes(200) + b"\xff")),
     _LOAD, SceneFormatError, ("cameras.txt",)),
    ("cameras.txt width 0", lambda t: colmap_text_scene(t, cameras="1 PINHOLE 0 24 30 30 16 12\n"),
     _LOAD, SceneFormatError, ("cameras.txt", "camera 1 width/height")),
    ("cameras.txt focal nan", lambda t: colmap_text_scene(t, cameras="1 PINHOLE 32 24 nan 30 16 12\n"),
     _LOAD, SceneFormatError, ("cameras.txt", "camera line")),
    ("cameras.txt unknown model", lambda t: colmap_text_scene(t, cameras="1 MAGIC 32 24 30 30 16 12\n"),
     _LOAD, SceneFormatError, ("cameras.txt", "camera 1 model", "MAGIC")),
    ("images.txt word for a number", lambda t: colmap_text_scene(t, images="1 one 0 0 0 0 0 3 1 im0.png\n\n"),
     _LOAD, SceneFormatError, ("images.txt", "image line")),
    ("images.txt zero quaternion", lambda t: colmap_text_scene(t, images="1 0 0 0 0 0 0 3 1 im0.png\n\n"),
     _LOAD, SceneFormatError, ("images.txt", "quaternion")),
    ("points3D.txt colour 300", lambda t: colmap_text_scene(t, points="1 0 0 0 300 0 0 0.5\n"),
     _LOAD, SceneFormatError, ("points3D.txt", "point line")),
    # ---------------------------------------------------------------- PLY
    ("ply all NaN (transforms)", lambda t: _with(transforms_scene(t), lambda r: _nan_ply(r / "points3d.ply")),
     _LOAD, SceneFormatError, ("points3d.ply", "finite")),
    ("ply all NaN (read_ply_points)", lambda t: _with(t, lambda r: _nan_ply(r / "p.ply")) / "p.ply",
     read_ply_points, SceneFormatError, ("p.ply", "finite")),
    ("ply not a ply", lambda t: _with(t, lambda r: _ply_text(r / "p.ply", "hello\n")) / "p.ply",
     read_ply_points, SceneFormatError, ("p.ply", "not a valid PLY")),
    ("ply vertex count beyond the data", lambda t: _with(t, lambda r: _ply_text(
        r / "p.ply", "ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
                     "property float z\nend_header\n1 2 3\n")) / "p.ply",
     read_ply_points, SceneFormatError, ("p.ply",)),
    ("ply binary count 2^40", lambda t: _with(t, lambda r: (r / "p.ply").write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 1099511627776\nproperty float x\n"
        b"property float y\nproperty float z\nend_header\n" + b"\x00" * 24)) / "p.ply",
     read_ply_points, SceneFormatError, ("p.ply",)),
    ("ply without z", lambda t: _with(t, lambda r: _ply_text(
        r / "p.ply", "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                     "end_header\n1 2\n")) / "p.ply",
     read_ply_points, SceneFormatError, ("p.ply", "vertex.z")),
    ("ply without vertices", lambda t: _with(t, lambda r: _ply_text(
        r / "p.ply", "ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\n"
                     "end_header\n")) / "p.ply",
     read_ply_points, SceneFormatError, ("p.ply", "vertex")),
    # ---------------------------------------------------------------- options
    ("test_every on blender", blender_scene, lambda p: load_scene(p, test_every=8),
     SceneOptionError, ("test_every", "blender", "own train/test split")),
    ("images on transforms", transforms_scene, lambda p: load_scene(p, images="images_2"),
     SceneOptionError, ("images", "transforms")),
    ("test_every -2 colmap", colmap_scene, lambda p: load_scene(p, test_every=-2),
     SceneOptionError, ("test_every", "-2")),
    ("test_every 0 colmap", colmap_scene, lambda p: load_scene(p, test_every=0),
     SceneOptionError, ("test_every", "got 0")),
    ("test_every 1 colmap", colmap_scene, lambda p: load_colmap(p, test_every=1),
     SceneOptionError, ("test_every", "got 1")),
    ("test_every 2.5 transforms", transforms_scene, lambda p: load_transforms(p, test_every=2.5),
     SceneOptionError, ("test_every", "2.5")),
    ("test_every '8' transforms", transforms_scene, lambda p: load_scene(p, test_every="8"),
     SceneOptionError, ("test_every", "'8'")),
    ("test_every True", transforms_scene, lambda p: load_scene(p, test_every=True),
     SceneOptionError, ("test_every", "True")),
    ("undistort 'never'", colmap_scene, lambda p: load_scene(p, undistort="never"),
     SceneOptionError, ("undistort", "'never'")),
    ("resolution_scale nan", colmap_scene, lambda p: load_scene(p, resolution_scale=float("nan")),
     SceneOptionError, ("resolution_scale", "nan")),
    ("resolution_scale 0", transforms_scene, lambda p: load_scene(p, resolution_scale=0),
     SceneOptionError, ("resolution_scale",)),
    ("resolution_scale string", blender_scene, lambda p: load_scene(p, resolution_scale="half"),
     SceneOptionError, ("resolution_scale", "'half'")),
    ("target_width 0", transforms_scene, lambda p: load_scene(p, target_width=0),
     SceneOptionError, ("target_width",)),
    ("target_width fractional", colmap_scene, lambda p: load_scene(p, target_width=12.5),
     SceneOptionError, ("target_width", "12.5")),
    ("background name", transforms_scene, lambda p: load_scene(p, background="blue"),
     SceneOptionError, ("background", "'blue'")),
    ("background NaN", transforms_scene, lambda p: load_scene(p, background=[float("nan"), 0, 0]),
     SceneOptionError, ("background",)),
    ("background 2 values", transforms_scene, lambda p: load_scene(p, background=[0, 0]),
     SceneOptionError, ("background", "3 values")),
    # ---------------------------------------------------------------- missing files and folders
    ("scene path missing", lambda t: t / "nope", _LOAD, SceneNotFoundError, ("nope", "not found")),
    ("folder of no format", lambda t: _with(t / "empty", lambda r: r.mkdir()), _LOAD, SceneNotFoundError,
     ("empty", "transforms_train.json", "cameras.bin", "transforms.json")),
    ("colmap images folder missing", lambda t: _with(colmap_scene(t), lambda r: [
        p.unlink() for p in (r / "images").iterdir()] and (r / "images").rmdir()),
     _LOAD, SceneNotFoundError, ("images_8", "no image folder")),
    ("colmap images folder option", colmap_scene, lambda p: load_scene(p, images="images_4"),
     SceneNotFoundError, ("images_4", "images option")),
    ("colmap image missing", lambda t: _with(colmap_scene(t), lambda r: (r / "images" / "im1.png").unlink()),
     _LOAD, SceneNotFoundError, ("im1.png", "not found")),
    ("colmap images.bin missing", lambda t: _with(colmap_scene(t), lambda r: (r / "sparse" / "0" / "images.bin").unlink()),
     _LOAD, SceneNotFoundError, ("images.bin",)),
    ("transforms all images missing", lambda t: _with(transforms_scene(t), lambda r: [
        p.unlink() for p in (r / "images").iterdir()]), _LOAD, SceneNotFoundError, (TS, "none of the 3")),
    ("transforms json file missing", lambda t: t / "x" / "transforms.json", load_transforms, SceneNotFoundError,
     ("transforms.json", "not found")),
    ("blender frame image missing", lambda t: _with(blender_scene(t), lambda r: (r / "train" / "r_1.png").unlink()),
     _LOAD, SceneNotFoundError, ("transforms_train.json", "frames[1].file_path", "r_1")),
    ("mask_path missing", lambda t: transforms_scene(t, frame0={"mask_path": "masks/m0.png"}),
     _LOAD, SceneNotFoundError, (TS, "frames[0].mask_path", "m0.png")),
    ("depth npy missing", lambda t: transforms_scene(t, frame0={"depth_file_path": "d0.npy"}),
     _LOAD, SceneNotFoundError, (TS, "frames[0].depth_file_path", "d0.npy")),
    ("ply_file_path missing", lambda t: transforms_scene(t, {"ply_file_path": "sparse.ply"}),
     _LOAD, SceneNotFoundError, (TS, "ply_file_path", "sparse.ply")),
    ("ply file missing", lambda t: t / "none.ply", read_ply_points, SceneNotFoundError, ("none.ply",)),
]


@pytest.mark.parametrize("name,build,load,exc,parts", CASES, ids=[c[0] for c in CASES])
def test_bad_scene_input(tmp_path, name, build, load, exc, parts):
    path = build(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only the error matters here
        with pytest.raises(SceneFormatError) as info:
            load(path)
    err = info.value
    assert isinstance(err, exc), f"{type(err).__name__}: {err}"
    assert isinstance(err, ValueError)
    msg = str(err)
    assert "\n" not in msg and len(msg) < 600, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    if exc is SceneNotFoundError:
        assert isinstance(err, FileNotFoundError)
    # The error survives pickling (raised in a DataLoader worker), path and key included.
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == msg and again.path == err.path and again.key == err.key


# ============================================================================ accepted with a warning
def test_uniformly_resized_images_warn_and_scale(tmp_path):
    """Files that are a uniformly downscaled copy of the declared w/h are used, intrinsics
    scaled per axis, and the user is told (no more silent rescaling)."""
    root = transforms_scene(tmp_path, {"w": 64, "h": 48, "fl_x": 60.0, "fl_y": 60.0, "cx": 32.0, "cy": 24.0})
    with pytest.warns(UserWarning, match=r"3 image\(s\) differ in size from the declared w/h.*32x24"):
        scene = load_scene(root)
    cam = scene.train_views[0].camera
    assert (cam.width, cam.height, cam.fx, cam.cx, cam.cy) == (32, 24, 30.0, 16.0, 12.0)
    # One pixel of rounding in a downscale (e.g. 65x49 -> 32x24) is still a resized copy.
    root2 = transforms_scene(tmp_path / "b", {"w": 65, "h": 49})
    with pytest.warns(UserWarning, match="differ in size"):
        load_scene(root2)


def test_partly_nan_points_are_dropped_with_a_warning(tmp_path):
    xyz = np.array([[0, 0, 0], [np.nan, 1, 2], [1, 2, 3], [np.inf, 0, 0]], dtype=np.float32)
    write_ply_points(tmp_path / "p.ply", xyz, np.full((4, 3), 0.5))
    with pytest.warns(UserWarning, match=r"p\.ply: 2 of 4 points have non-finite values"):
        got, rgb = read_ply_points(tmp_path / "p.ply")
    assert got.tolist() == [[0, 0, 0], [1, 2, 3]] and rgb.shape == (2, 3)
    root = transforms_scene(tmp_path / "s")
    write_ply_points(root / "points3d.ply", xyz, np.full((4, 3), 0.5))
    with pytest.warns(UserWarning, match="non-finite"):
        scene = load_scene(root)
    assert scene.points.shape == (2, 3) and bool(np.isfinite(scene.points.numpy()).all())


def test_test_every_none_means_no_test_views(tmp_path):
    for root in (transforms_scene(tmp_path), colmap_scene(tmp_path)):
        scene = load_scene(root, test_every=None)
        assert len(scene.train_views) == 3 and scene.test_views == []
        assert [len(load_scene(root, test_every=k).test_views) for k in (2, 3)] == [2, 1]


# ============================================================================ images, directly
def test_image_check_and_decode_name_the_file(tmp_path):
    """check_image (run at load for every image) and the decoders name a bad file. A JPEG cut
    anywhere is found (no end marker after its last scan), baseline or progressive, also when an
    EXIF thumbnail with its own end marker sits in front."""
    big = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    jpg = tmp_path / "a.jpg"
    buf = io.BytesIO()
    Image.fromarray(big[::8, ::8]).save(buf, format="JPEG")
    thumb = buf.getvalue()  # a complete JPEG (with its own scan and end marker) inside APP1
    for variant in ("baseline", "progressive", "exif thumbnail"):
        Image.fromarray(big).save(jpg, quality=90, progressive=variant == "progressive")
        full = jpg.read_bytes()
        if variant == "exif thumbnail":
            app1 = b"Exif\x00\x00" + thumb
            full = full[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + full[2:]
            jpg.write_bytes(full)
        assert check_image(jpg) == (160, 120) and read_image_u8(jpg).shape == (120, 160, 3)
        for keep in np.linspace(0.05, 0.995, 15):
            jpg.write_bytes(full[: int(len(full) * keep)])
            with pytest.raises(SceneFormatError, match=r"a\.jpg: cannot decode image"):
                check_image(jpg)
    jpg.write_bytes(full[: len(full) // 2])
    with pytest.raises(SceneFormatError, match=r"a\.jpg: cannot decode image.*truncated"):
        read_image_u8(jpg)  # met at decode time: named too
    png = _png(tmp_path / "b.png", (64, 48))
    assert check_image(png) == (64, 48)
    _truncate(png, 0.9)
    with pytest.raises(SceneFormatError, match=r"b\.png"):
        check_image(png)
    with pytest.raises(SceneFormatError, match=r"b\.png"):
        read_image_u8(png)
    with pytest.raises(SceneNotFoundError, match=r"c\.png"):
        check_image(tmp_path / "c.png")
