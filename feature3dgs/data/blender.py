"""Load NeRF-synthetic ("Blender") and instant-ngp / nerfstudio ``transforms*.json`` scenes.

Both store OpenGL/Blender camera-to-world matrices (camera x right, y up, z backward) in
``frames[i].transform_matrix``; they are converted to OpenCV world-to-camera once, here.

Blender layout: ``transforms_train.json`` and ``transforms_test.json`` (``transforms_val.json`` is
not used), top-level ``camera_angle_x`` (radians), ``file_path`` relative to the json folder and
usually without extension (``./train/r_0`` -> ``train/r_0.png``). The given split is used.

transforms.json layout (instant-ngp, nerfstudio): intrinsics ``fl_x, fl_y, cx, cy, w, h`` (pixels)
at the top level or per frame (or ``camera_angle_x/y``), optional distortion ``k1 k2 k3 k4 p1 p2``
(warned about when non-zero, then ignored), ``file_path`` with extension. Listed images missing on
disk are skipped with a warning; frames sorted by path, every ``test_every``-th is test.

Optional per-frame keys (both layouts): ``mask_path``, ``depth_path`` (or nerfstudio's
``depth_file_path``), ``instance_path``, ``class_path``; top-level ``classes`` (class names),
``depth_unit_scale_factor`` (metres per depth PNG unit, default 1e-3), ``ply_file_path``.
Sparse points are read from ``ply_file_path`` or, failing that, ``points3d.ply`` next to the json.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from feature3dgs.model.camera import Camera, viewmat_from_opengl_c2w
from . import images as io
from .ply import read_ply_points
from .scene import DEFAULT_CACHE_BYTES, Scene, View, final_scale, split_every

DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def read_json(path: Path) -> dict[str, Any]:
    """Parse a transforms json; errors name the file and what was expected."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"camera file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'frames' list")
    return meta


def _resolve_image(base: Path, file_path: str) -> Optional[Path]:
    p = base / file_path
    if p.is_file():
        return p
    for ext in io.IMAGE_EXTENSIONS:
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    return None


def _get(frame: dict, meta: dict, key: str, default: Any = None) -> Any:
    return frame.get(key, meta.get(key, default))


def _intrinsics(meta: dict, frame: dict, w_img: int, h_img: int, where: str) -> np.ndarray:
    """(3, 3) K in pixels of the image actually on disk (w_img x h_img)."""
    w = float(_get(frame, meta, "w", w_img))
    h = float(_get(frame, meta, "h", h_img))
    fx = _get(frame, meta, "fl_x")
    if fx is None:
        ax = _get(frame, meta, "camera_angle_x")
        if ax is None:
            raise ValueError(f"{where}: no intrinsics: expected 'fl_x' or 'camera_angle_x'")
        fx = 0.5 * w / math.tan(0.5 * float(ax))
    fy = _get(frame, meta, "fl_y")
    if fy is None:
        ay = _get(frame, meta, "camera_angle_y")
        fy = 0.5 * h / math.tan(0.5 * float(ay)) if ay is not None else fx
    cx = float(_get(frame, meta, "cx", 0.5 * w))
    cy = float(_get(frame, meta, "cy", 0.5 * h))
    sx, sy = w_img / w, h_img / h  # the files may be a downscaled copy of the declared size
    return np.array([[float(fx) * sx, 0.0, cx * sx], [0.0, float(fy) * sy, cy * sy], [0.0, 0.0, 1.0]])


def _side_path(base: Path, frame: dict, *keys: str) -> Optional[Path]:
    for k in keys:
        if frame.get(k):
            p = base / frame[k]
            if not p.is_file():
                raise FileNotFoundError(f"{k} file listed in {base} not found: {p}")
            return p
    return None


def _frames_to_views(
    meta: dict,
    json_path: Path,
    frames: list[dict],
    resolution_scale: float,
    target_width: Optional[int],
    missing: str,
) -> list[View]:
    """Build views; ``missing`` is 'raise' or 'skip' for listed images absent on disk."""
    base = json_path.parent
    depth_scale = float(meta.get("depth_unit_scale_factor", 1e-3))
    if meta.get("camera_model", "OPENCV") in ("EQUIRECTANGULAR",):
        raise ValueError(f"{json_path}: camera_model {meta['camera_model']} is not a pinhole model")
    distorted = set()
    skipped = []
    views = []
    for i, fr in enumerate(frames):
        where = f"{json_path} frame {i}"
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise ValueError(f"{where}: expected an object with 'file_path' and 'transform_matrix'")
        img = _resolve_image(base, fr["file_path"])
        if img is None:
            if missing == "raise":
                raise FileNotFoundError(f"{where}: image {base / fr['file_path']}[.png|.jpg...] not found")
            skipped.append(fr["file_path"])
            continue
        for k in DISTORTION_KEYS:
            if float(_get(fr, meta, k, 0.0) or 0.0) != 0.0:
                distorted.add(k)
        try:
            c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
            viewmat = viewmat_from_opengl_c2w(c2w)
        except ValueError as e:
            raise ValueError(f"{where}: bad transform_matrix ({e})") from None
        w_img, h_img = io.image_size(img)
        K = _intrinsics(meta, fr, w_img, h_img, where)
        name = img.relative_to(base).as_posix() if img.is_relative_to(base) else str(img)
        cam = Camera(viewmat, torch.from_numpy(K), w_img, h_img, name=name)
        factor = final_scale(w_img, resolution_scale, target_width)
        if factor != 1.0:
            cam = cam.scaled(factor)
        views.append(
            View(
                cam,
                img,
                mask_path=_side_path(base, fr, "mask_path"),
                depth_path=_side_path(base, fr, "depth_path", "depth_file_path"),
                instance_path=_side_path(base, fr, "instance_path"),
                class_path=_side_path(base, fr, "class_path"),
                depth_scale=depth_scale,
            )
        )
    if skipped:
        warnings.warn(
            f"{json_path}: {len(skipped)} listed image(s) not found on disk, skipped (e.g. {skipped[0]})",
            stacklevel=3,
        )
    if distorted:
        warnings.warn(
            f"{json_path}: non-zero distortion ({', '.join(sorted(distorted))}) ignored; images used as pinhole",
            stacklevel=3,
        )
    return views


def _points(meta: dict, folder: Path) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    ply = folder / meta["ply_file_path"] if meta.get("ply_file_path") else folder / "points3d.ply"
    if not ply.is_file():
        if meta.get("ply_file_path"):
            raise FileNotFoundError(f"ply_file_path of {folder} not found: {ply}")
        return None, None
    return read_ply_points(ply)


def load_blender(
    root: Union[str, Path],
    resolution_scale: float = 1.0,
    target_width: Optional[int] = None,
    background: Union[Sequence[float], str] = (0.0, 0.0, 0.0),
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Scene:
    """Load a NeRF-synthetic scene folder with transforms_train.json and transforms_test.json.

    Args:
        root: the folder holding the json files.
        resolution_scale / target_width: load at this factor / width (images resized at load).
        background: colour the RGBA images are composited on (3 floats in [0, 1], 'white', 'black').
        cache_bytes: byte budget of the decoded-image cache.
    """
    root = Path(root)
    train_json = root / "transforms_train.json"
    if not train_json.is_file():
        raise FileNotFoundError(f"Blender scene: {train_json} not found")
    meta = read_json(train_json)
    train = _frames_to_views(meta, train_json, meta["frames"], resolution_scale, target_width, "raise")
    test: list[View] = []
    test_json = root / "transforms_test.json"
    if test_json.is_file():
        tmeta = read_json(test_json)
        test = _frames_to_views(tmeta, test_json, tmeta["frames"], resolution_scale, target_width, "raise")
    if not train:
        raise ValueError(f"{train_json}: no frames")
    xyz, rgb = _points(meta, root)
    return Scene(
        train_views=train,
        test_views=test,
        background=background,
        points=xyz,
        colors=rgb,
        class_names=meta.get("classes"),
        source_path=root,
        format="synthetic" if meta.get("generator", "").startswith("feature3dgs") else "blender",
        cache_bytes=cache_bytes,
    )


def load_transforms(
    path: Union[str, Path],
    resolution_scale: float = 1.0,
    target_width: Optional[int] = None,
    background: Union[Sequence[float], str] = (0.0, 0.0, 0.0),
    test_every: int = 8,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Scene:
    """Load an instant-ngp / nerfstudio ``transforms.json`` (a file, or the folder holding it).

    Frames are sorted by ``file_path``; index % ``test_every`` == 0 is test (0: no test views).
    """
    path = Path(path)
    json_path = path / "transforms.json" if path.is_dir() else path
    if not json_path.is_file():
        raise FileNotFoundError(f"transforms file not found: {json_path}")
    meta = read_json(json_path)
    frames = sorted(meta["frames"], key=lambda f: str(f.get("file_path", "")) if isinstance(f, dict) else "")
    views = _frames_to_views(meta, json_path, frames, resolution_scale, target_width, "skip")
    if not views:
        raise FileNotFoundError(f"{json_path}: none of the {len(frames)} listed images exist on disk")
    train, test = split_every(views, test_every)
    xyz, rgb = _points(meta, json_path.parent)
    return Scene(
        train_views=train,
        test_views=test,
        background=background,
        points=xyz,
        colors=rgb,
        class_names=meta.get("classes"),
        source_path=json_path,
        format="transforms",
        cache_bytes=cache_bytes,
    )
