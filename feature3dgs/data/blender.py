"""Load NeRF-synthetic ("Blender") and instant-ngp / nerfstudio ``transforms*.json`` scenes.

Both store OpenGL/Blender camera-to-world matrices (camera x right, y up, z backward) in
``frames[i].transform_matrix``; they are converted to OpenCV world-to-camera once, here.

Blender layout: ``transforms_train.json`` and ``transforms_test.json`` (``transforms_val.json`` is
not used), top-level ``camera_angle_x`` (radians), ``file_path`` relative to the json folder and
usually without extension (``./train/r_0`` -> ``train/r_0.png``). The given split is used.

transforms.json layout (instant-ngp, nerfstudio): intrinsics ``fl_x, fl_y, cx, cy, w, h`` (pixels)
at the top level or per frame (or ``camera_angle_x/y``), optional distortion ``k1 k2 k3 p1 p2``
(``camera_model`` OPENCV, the default) or ``k1 k2 k3 k4`` (``camera_model`` OPENCV_FISHEYE), at
the top level or per frame, ``file_path`` with extension. Distorted images are undistorted at load
(see :mod:`feature3dgs.data.undistort`). Listed images missing on disk are skipped with a
warning; frames sorted by path, every ``test_every``-th is test.

Image files may be a resized copy of the declared ``w`` x ``h``: the intrinsics are then scaled
per axis to the file's size, with a warning; a file whose aspect ratio differs from w/h is refused.
Every value read is checked (type, finiteness, range); a bad one raises a
:class:`~feature3dgs.data.errors.SceneFormatError` naming the file and the key
(``frames[3].fl_x`` for a per-frame value).

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
from .errors import SceneNotFoundError, format_error
from .ply import read_ply_points
from .scene import (
    DEFAULT_CACHE_BYTES,
    Scene,
    View,
    check_resolution,
    final_scale,
    split_every,
    view_camera,
)
from .undistort import Distortion
from .validate import check_bool, check_test_every, image_scale, number

DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
#: camera_model values read as pinhole (radial-tangential distortion) and as fisheye.
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
FISHEYE_MODELS = ("OPENCV_FISHEYE",)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a transforms json; errors name the file and what was expected."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneNotFoundError(f"camera file not found: {path}", path=path) from None
    except UnicodeDecodeError as e:
        raise format_error(path, "json", f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise format_error(path, "json", f"malformed JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise format_error(path, "frames", "expected a JSON object with a 'frames' list")
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


def _get(frame: dict, meta: dict, key: str, i: int) -> tuple[Any, str]:
    """The frame's value of ``key``, else the top level's (None if neither), and its key name."""
    if key in frame and frame[key] is not None:
        return frame[key], f"frames[{i}].{key}"
    return meta.get(key), key


class _Frame:
    """Typed access to one frame's values (falling back to the top level), checked on read."""

    def __init__(self, meta: dict, frame: dict, i: int, path: Path) -> None:
        self.meta, self.frame, self.i, self.path = meta, frame, i, path

    def raw(self, key: str) -> tuple[Any, str]:
        return _get(self.frame, self.meta, key, self.i)

    def num(self, key: str, expected: str, **bounds: Any) -> Optional[float]:
        value, name = self.raw(key)
        return None if value is None else number(value, self.path, name, expected, **bounds)

    def text(self, key: str) -> Optional[str]:
        value, name = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise format_error(self.path, name, f"expected a non-empty string, got {value!r}")
        return value


def _intrinsics(f: _Frame, w_img: int, h_img: int, image: Path) -> tuple[np.ndarray, bool]:
    """(3, 3) K in pixels of the image actually on disk (w_img x h_img), and whether the file's
    size differs from the declared w/h (then K is scaled per axis)."""
    w = f.num("w", "a positive integer image width in pixels", lo=0, integer=True)
    h = f.num("h", "a positive integer image height in pixels", lo=0, integer=True)
    declared = w is not None or h is not None
    w = float(w_img) if w is None else w
    h = float(h_img) if h is None else h
    fx = f.num("fl_x", "a positive focal length in pixels", lo=0)
    if fx is None:
        ax = f.num("camera_angle_x", "a horizontal field of view in radians, 0 < camera_angle_x < pi", lo=0, hi=math.pi)
        if ax is None:
            raise format_error(f.path, f"frames[{f.i}]", "no intrinsics: expected 'fl_x' or 'camera_angle_x' "
                                                         "(at the top level or in the frame)")
        fx = 0.5 * w / math.tan(0.5 * ax)
    fy = f.num("fl_y", "a positive focal length in pixels", lo=0)
    if fy is None:
        ay = f.num("camera_angle_y", "a vertical field of view in radians, 0 < camera_angle_y < pi", lo=0, hi=math.pi)
        fy = 0.5 * h / math.tan(0.5 * ay) if ay is not None else fx
    cx = f.num("cx", "a principal point x in pixels")
    cy = f.num("cy", "a principal point y in pixels")
    cx = 0.5 * w if cx is None else cx
    cy = 0.5 * h if cy is None else cy
    # The file may be a resized copy of the declared size: same aspect ratio, or refused.
    sx, sy = image_scale((w, h), (w_img, h_img), image, f"the declared w/h of {f.path.name}")
    K = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
    return K, declared and (w_img, h_img) != (round(w), round(h))


def _distortion(f: _Frame) -> Distortion:
    """The frame's lens model from ``camera_model`` and the k1 k2 k3 k4 p1 p2 keys."""
    model, model_key = f.raw("camera_model")
    model = "OPENCV" if model is None else model
    if model not in PINHOLE_MODELS + FISHEYE_MODELS:
        raise format_error(f.path, model_key, f"camera_model {model!r} is not supported (supported: "
                                              f"{', '.join(PINHOLE_MODELS + FISHEYE_MODELS)}; pinhole images only)")
    c = {k: f.num(k, "a finite distortion coefficient") or 0.0 for k in DISTORTION_KEYS}
    if model in FISHEYE_MODELS:
        for k in ("p1", "p2"):
            if c[k]:
                raise format_error(f.path, f.raw(k)[1], f"{model} has no tangential coefficients (k1 k2 k3 k4 "
                                                        f"only), got {k}={c[k]:g}")
        return Distortion(k1=c["k1"], k2=c["k2"], k3=c["k3"], k4=c["k4"], fisheye=True)
    if c["k4"]:
        raise format_error(f.path, f.raw("k4")[1], f"k4 is a coefficient of the OPENCV_FISHEYE model; camera_model "
                                                   f"{model} takes k1 k2 k3 p1 p2 (set camera_model to OPENCV_FISHEYE?)")
    return Distortion(k1=c["k1"], k2=c["k2"], p1=c["p1"], p2=c["p2"], k3=c["k3"])


def _side_path(base: Path, f: _Frame, *keys: str) -> Optional[Path]:
    for k in keys:
        value = f.frame.get(k)
        if value:
            if not isinstance(value, str):
                raise format_error(f.path, f"frames[{f.i}].{k}", f"expected a file path string, got {value!r}")
            p = base / value
            if not p.is_file():
                raise SceneNotFoundError(f"{f.path}: frames[{f.i}].{k}: file not found: {p}", path=p, key=k)
            if p.suffix.lower() != ".npy":
                io.check_image(p)
            return p
    return None


def _frames_to_views(
    meta: dict,
    json_path: Path,
    frames: list[tuple[int, Any]],
    resolution_scale: float,
    target_width: Optional[int],
    missing: str,
    undistort: bool,
) -> list[View]:
    """Build views from (index in the file, frame) pairs; ``missing`` is 'raise' or 'skip' for
    listed images absent on disk."""
    base = json_path.parent
    top = _Frame(meta, {}, -1, json_path)
    depth_scale = top.num("depth_unit_scale_factor", "a positive number of metres per depth unit", lo=0) or 1e-3
    ignored: set[str] = set()
    resized: list[str] = []
    skipped = []
    views = []
    for i, fr in frames:
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise format_error(json_path, f"frames[{i}]", "expected an object with 'file_path' and 'transform_matrix'")
        f = _Frame(meta, fr, i, json_path)
        file_path = fr["file_path"]
        if not isinstance(file_path, str) or not file_path:
            raise format_error(json_path, f"frames[{i}].file_path", f"expected a file path string, got {file_path!r}")
        img = _resolve_image(base, file_path)
        if img is None:
            if missing == "raise":
                raise SceneNotFoundError(f"{json_path}: frames[{i}].file_path: image {base / file_path}"
                                         "[.png|.jpg...] not found", path=base / file_path, key="file_path")
            skipped.append(file_path)
            continue
        try:
            c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
            if not np.isfinite(c2w).all():
                raise ValueError("non-finite values")
            viewmat = viewmat_from_opengl_c2w(c2w)
        except (ValueError, TypeError) as e:
            raise format_error(json_path, f"frames[{i}].transform_matrix",
                               f"expected a 4x4 camera-to-world matrix of numbers ({e})") from None
        dist = _distortion(f)
        w_img, h_img = io.check_image(img)
        K, was_resized = _intrinsics(f, w_img, h_img, img)
        if was_resized:
            resized.append(f"{file_path} is {w_img}x{h_img}")
        name = img.relative_to(base).as_posix() if img.is_relative_to(base) else str(img)
        cam = Camera(viewmat, torch.from_numpy(K), w_img, h_img, name=name)
        cam, und = view_camera(cam, dist, final_scale(w_img, resolution_scale, target_width), undistort,
                               json_path, f"frames[{i}]")
        if not dist.is_zero() and not undistort:
            ignored.add(dist.describe())
        views.append(
            View(
                cam,
                img,
                mask_path=_side_path(base, f, "mask_path"),
                depth_path=_side_path(base, f, "depth_path", "depth_file_path"),
                instance_path=_side_path(base, f, "instance_path"),
                class_path=_side_path(base, f, "class_path"),
                undistortion=und,
                depth_scale=depth_scale,
            )
        )
    if skipped:
        warnings.warn(
            f"{json_path}: {len(skipped)} listed image(s) not found on disk, skipped (e.g. {skipped[0]})",
            stacklevel=3,
        )
    if resized:
        warnings.warn(
            f"{json_path}: {len(resized)} image(s) differ in size from the declared w/h (e.g. {resized[0]}); "
            "their intrinsics are scaled to the file size",
            stacklevel=3,
        )
    if ignored:
        warnings.warn(
            f"{json_path}: non-zero distortion ({'; '.join(sorted(ignored))}) ignored (undistort=False); "
            "images used as pinhole",
            stacklevel=3,
        )
    return views


def _points(meta: dict, folder: Path, json_path: Path) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    rel = _Frame(meta, {}, -1, json_path).text("ply_file_path")
    ply = folder / rel if rel else folder / "points3d.ply"
    if not ply.is_file():
        if rel:
            raise SceneNotFoundError(f"{json_path}: ply_file_path: file not found: {ply}", path=ply, key="ply_file_path")
        return None, None
    return read_ply_points(ply)


def _class_names(meta: dict, json_path: Path) -> Optional[list[str]]:
    names = meta.get("classes")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise format_error(json_path, "classes", f"expected a list of class name strings, got {names!r:.80}")
    return names


def load_blender(
    root: Union[str, Path],
    resolution_scale: float = 1.0,
    target_width: Optional[int] = None,
    background: Union[Sequence[float], str] = (0.0, 0.0, 0.0),
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    undistort: bool = True,
) -> Scene:
    """Load a NeRF-synthetic scene folder with transforms_train.json and transforms_test.json.

    The files' own split is used (there is no ``test_every``).

    Args:
        root: the folder holding the json files.
        resolution_scale / target_width: load at this factor / width (images resized at load).
        background: colour the RGBA images are composited on (3 floats in [0, 1], 'white', 'black').
        cache_bytes: byte budget of the decoded-image cache.
        undistort: undistort frames with non-zero distortion keys (rare in this layout).
    """
    root = Path(root)
    undistort = check_bool(undistort, root, "undistort")
    check_resolution(resolution_scale, target_width)
    train_json = root / "transforms_train.json"
    if not train_json.is_file():
        raise SceneNotFoundError(f"Blender scene: {train_json} not found", path=train_json)
    meta = read_json(train_json)
    train = _frames_to_views(meta, train_json, list(enumerate(meta["frames"])), resolution_scale, target_width,
                             "raise", undistort)
    test: list[View] = []
    test_json = root / "transforms_test.json"
    if test_json.is_file():
        tmeta = read_json(test_json)
        test = _frames_to_views(tmeta, test_json, list(enumerate(tmeta["frames"])), resolution_scale,
                                target_width, "raise", undistort)
    if not train:
        raise format_error(train_json, "frames", "no frames")
    generator = meta.get("generator")
    fmt = "synthetic" if isinstance(generator, str) and generator.startswith("feature3dgs") else "blender"
    return _scene(meta, train_json, root, root, train, test, background, cache_bytes, fmt)


def _scene(meta: dict, json_path: Path, points_root: Path, source: Path, train: list, test: list, background,
           cache_bytes: int, fmt: str) -> Scene:
    """The Scene of a transforms-style file: its views, sparse points and class names."""
    xyz, rgb = _points(meta, points_root, json_path)
    return Scene(train_views=train, test_views=test, background=background, points=xyz, colors=rgb,
                 class_names=_class_names(meta, json_path), source_path=source, format=fmt, cache_bytes=cache_bytes)


def load_transforms(
    path: Union[str, Path],
    resolution_scale: float = 1.0,
    target_width: Optional[int] = None,
    background: Union[Sequence[float], str] = (0.0, 0.0, 0.0),
    test_every: Optional[int] = 8,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    undistort: bool = True,
) -> Scene:
    """Load an instant-ngp / nerfstudio ``transforms.json`` (a file, or the folder holding it).

    Args:
        path: the json file or its folder.
        resolution_scale / target_width: load at this factor / width (images resized at load).
        background: RGBA compositing colour.
        test_every: frames sorted by ``file_path`` with index % test_every == 0 are test (an
            integer >= 2), or None for no test views.
        cache_bytes: byte budget of the decoded-image cache.
        undistort: undistort frames with a non-zero distortion coefficient (default); False uses
            them as pinhole images, with a warning.
    """
    path = Path(path)
    json_path = path / "transforms.json" if path.is_dir() else path
    undistort = check_bool(undistort, json_path, "undistort")
    check_test_every(test_every, json_path)
    check_resolution(resolution_scale, target_width)
    if not json_path.is_file():
        raise SceneNotFoundError(f"transforms file not found: {json_path}", path=json_path)
    meta = read_json(json_path)
    frames = sorted(enumerate(meta["frames"]),
                    key=lambda t: str(t[1].get("file_path", "")) if isinstance(t[1], dict) else "")
    views = _frames_to_views(meta, json_path, frames, resolution_scale, target_width, "skip", undistort)
    if not views:
        raise SceneNotFoundError(f"{json_path}: frames: none of the {len(frames)} listed images exist on disk",
                                 path=json_path, key="frames")
    train, test = split_every(views, test_every, json_path)
    return _scene(meta, json_path, json_path.parent, json_path, train, test, background, cache_bytes, "transforms")
