"""A procedural test scene with exact ground truth, rendered by analytic ray casting (NumPy).

Nothing here uses a Gaussian renderer, so the scene can check the whole pipeline independently:
cameras (the ray caster uses :class:`~feature3dgs.model.camera.Camera` conventions and the files are
written in Blender format, so loading them exercises the OpenGL -> OpenCV conversion), images,
depth and per-pixel instance / class labels.

World units are metres, z is up. The scene: a checkered ground square (|x|, |y| <= 3, z = 0),
two textured spheres, a box and a cylinder standing on it. Class ids: 0 background (ground and
sky), 1 sphere, 2 box, 3 cylinder; instance ids 1..4 (0 = background). The sky is transparent
(alpha 0), so the colour images are RGBA and a loader composites them on its background.

Files written (Blender / NeRF-synthetic layout, see :func:`make_synthetic_scene`)::

    transforms_train.json, transforms_test.json   camera_angle_x, frames with file_path,
        transform_matrix (OpenGL c2w), depth_path, instance_path, class_path; top-level
        classes, objects (instance, class, name, center, size), depth_unit_scale_factor
    train/r_000.png ...       RGBA uint8, 2x2 supersampled colour, alpha = coverage
    train/depth_000.png ...   uint16 camera-space z in millimetres (0 = sky)
    train/instance_000.png, train/class_000.png   uint8 ids of the surface seen through the pixel centre
    test/...                  the same for the test views
    points3d.ply              surface samples (positions, normals, shaded colours) for initialisation
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from feature3dgs.model.camera import (
    Camera,
    intrinsics_from_fov,
    look_at,
    opengl_c2w_from_viewmat,
)

from .ply import write_ply_points

CLASSES = ["background", "sphere", "box", "cylinder"]
VERSION = "synthetic_v1"
_LIGHT = np.array([0.4, 0.3, 1.0]) / np.linalg.norm([0.4, 0.3, 1.0])
_TARGET = np.array([0.0, 0.0, 0.35])
_FOV_X = math.radians(50.0)
_GROUND_HALF = 3.0


def _shade(albedo: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Lambertian shading with ambient term; (N, 3) albedo and unit normals -> (N, 3) colour."""
    return albedo * (0.35 + 0.65 * np.clip(normal @ _LIGHT, 0.0, None))[:, None]


def _two_tone(parity: np.ndarray, a, b) -> np.ndarray:
    return np.where((parity % 2 == 0)[:, None], np.asarray(a, float), np.asarray(b, float))


@dataclass
class _Hit:
    t: np.ndarray       # (N,) ray parameter, inf where missed
    normal: np.ndarray  # (N, 3) unit outward normal


# ---------------------------------------------------------------------- primitives
@dataclass
class _Sphere:
    center: np.ndarray
    radius: float
    colors: tuple

    def bound(self) -> tuple[np.ndarray, float]:
        return self.center, self.radius

    def intersect(self, o: np.ndarray, d: np.ndarray) -> _Hit:
        oc = o - self.center
        b = d @ oc
        disc = b * b - (oc @ oc - self.radius ** 2)
        with np.errstate(invalid="ignore"):
            t = -b - np.sqrt(disc)
        t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
        p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
        return _Hit(t, (p - self.center) / self.radius)

    def albedo(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        lon = np.arctan2(n[:, 1], n[:, 0])
        lat = np.arcsin(np.clip(n[:, 2], -1, 1))
        return _two_tone(np.floor(lon / (np.pi / 4)) + np.floor(lat / (np.pi / 6)), *self.colors)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return self.center + self.radius * v, v


@dataclass
class _Box:
    center: np.ndarray
    half: np.ndarray
    angle: float  # rotation about z, radians
    colors: tuple

    def _rot(self) -> np.ndarray:  # local -> world
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def bound(self) -> tuple[np.ndarray, float]:
        return self.center, float(np.linalg.norm(self.half))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> _Hit:
        R = self._rot()
        ol = (o - self.center) @ R  # world -> local (R^T x as row vectors)
        dl = d @ R
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-self.half - ol) / dl
            t2 = (self.half - ol) / dl
        tnear = np.minimum(t1, t2)
        tfar = np.maximum(t1, t2)
        axis = np.argmax(tnear, axis=1)
        t0 = tnear.max(axis=1)
        t = np.where((t0 <= tfar.min(axis=1)) & (t0 > 1e-6), t0, np.inf)
        nl = np.zeros_like(d)
        rows = np.arange(len(d))
        nl[rows, axis] = -np.sign(dl[rows, axis])
        return _Hit(t, nl @ R.T)

    def albedo(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        pl = (p - self.center) @ self._rot() / self.half  # in [-1, 1] on the surface
        cells = np.floor(pl * 2.0 + 1e-9)
        return _two_tone(cells.sum(axis=1), *self.colors)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        area = np.array([self.half[1] * self.half[2], self.half[0] * self.half[2], self.half[0] * self.half[1]])
        axis = rng.choice(3, size=n, p=area / area.sum())
        side = rng.choice([-1.0, 1.0], size=n)
        pl = rng.uniform(-1, 1, size=(n, 3)) * self.half
        pl[np.arange(n), axis] = side * self.half[axis]
        nl = np.zeros((n, 3))
        nl[np.arange(n), axis] = side
        keep = pl[:, 2] > -self.half[2] + 1e-9 if self.center[2] - self.half[2] <= 1e-6 else np.ones(n, bool)
        R = self._rot()
        return (pl @ R.T + self.center)[keep], (nl @ R.T)[keep]


@dataclass
class _Cylinder:
    base: np.ndarray  # centre of the bottom cap (on the ground)
    radius: float
    height: float
    colors: tuple
    cap: tuple

    def bound(self) -> tuple[np.ndarray, float]:
        return self.base + np.array([0.0, 0.0, 0.5 * self.height]), math.hypot(self.radius, 0.5 * self.height)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> _Hit:
        ox, oy = o[0] - self.base[0], o[1] - self.base[1]
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = d[:, 0] * ox + d[:, 1] * oy
        c = ox * ox + oy * oy - self.radius ** 2
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            ts = (-b - np.sqrt(disc)) / a
            zs = o[2] + ts * d[:, 2]
            ts = np.where((disc >= 0) & (ts > 1e-6) & (zs >= self.base[2]) & (zs <= self.base[2] + self.height), ts, np.inf)
            top = self.base[2] + self.height
            tc = (top - o[2]) / d[:, 2]
            xc = ox + tc * d[:, 0]
            yc = oy + tc * d[:, 1]
            tc = np.where((tc > 1e-6) & (xc * xc + yc * yc <= self.radius ** 2), tc, np.inf)
        side = ts <= tc
        t = np.where(side, ts, tc)
        p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
        ns = np.stack([(p[:, 0] - self.base[0]) / self.radius, (p[:, 1] - self.base[1]) / self.radius, np.zeros(len(d))], 1)
        n = np.where(side[:, None], ns, np.array([0.0, 0.0, 1.0]))
        return _Hit(t, n)

    def albedo(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        ang = np.arctan2(p[:, 1] - self.base[1], p[:, 0] - self.base[0])
        side = _two_tone(np.floor(ang / (np.pi / 6)), *self.colors)
        return np.where((n[:, 2] > 0.5)[:, None], np.asarray(self.cap, float), side)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        side_area = 2 * np.pi * self.radius * self.height
        top_area = np.pi * self.radius ** 2
        on_top = rng.uniform(size=n) < top_area / (side_area + top_area)
        ang = rng.uniform(-np.pi, np.pi, size=n)
        rad = np.where(on_top, self.radius * np.sqrt(rng.uniform(size=n)), self.radius)
        z = np.where(on_top, self.height, rng.uniform(0, self.height, size=n))
        p = np.stack([rad * np.cos(ang), rad * np.sin(ang), z], 1) + self.base
        nrm = np.where(on_top[:, None], [0.0, 0.0, 1.0], np.stack([np.cos(ang), np.sin(ang), np.zeros(n)], 1))
        return p, nrm


@dataclass
class _Ground:
    half: float
    colors: tuple

    def bound(self) -> None:
        return None

    def intersect(self, o: np.ndarray, d: np.ndarray) -> _Hit:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -o[2] / d[:, 2]
        x, y = o[0] + t * d[:, 0], o[1] + t * d[:, 1]
        t = np.where((t > 1e-6) & (np.abs(x) <= self.half) & (np.abs(y) <= self.half), t, np.inf)
        return _Hit(t, np.broadcast_to(np.array([0.0, 0.0, 1.0]), d.shape))

    def albedo(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        return _two_tone(np.floor(p[:, 0] / 0.5) + np.floor(p[:, 1] / 0.5), *self.colors)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = np.concatenate([rng.uniform(-self.half, self.half, size=(n, 2)), np.zeros((n, 1))], 1)
        return p, np.broadcast_to(np.array([0.0, 0.0, 1.0]), (n, 3)).copy()


@dataclass
class _Object:
    instance: int
    cls: int
    name: str
    shape: Union[_Sphere, _Box, _Cylinder, _Ground]
    center: np.ndarray


def _build_objects(rng: np.random.Generator) -> list[_Object]:
    j = lambda: np.append(rng.uniform(-0.1, 0.1, size=2), 0.0)  # noqa: E731 (horizontal jitter)
    s1 = _Sphere(np.array([-0.9, -0.5, 0.55]) + j(), 0.55, ((0.85, 0.15, 0.10), (0.95, 0.80, 0.20)))
    bx = _Box(np.array([0.8, -0.6, 0.4]) + j(), np.array([0.4, 0.4, 0.4]), math.radians(30.0) + rng.uniform(-0.1, 0.1),
              ((0.10, 0.30, 0.90), (0.60, 0.90, 1.00)))
    cy = _Cylinder(np.array([0.0, 0.9, 0.0]) + j(), 0.35, 1.0, ((0.10, 0.70, 0.20), (0.05, 0.35, 0.10)), (0.6, 0.9, 0.5))
    s2 = _Sphere(np.array([1.2, 0.9, 0.3]) + j(), 0.3, ((0.85, 0.20, 0.85), (0.95, 0.95, 0.95)))
    return [
        _Object(1, 1, "sphere_red_yellow", s1, s1.center),
        _Object(2, 2, "box_blue", bx, bx.center),
        _Object(3, 3, "cylinder_green", cy, cy.base + np.array([0.0, 0.0, 0.5 * cy.height])),
        _Object(4, 1, "sphere_magenta", s2, s2.center),
    ]


def _cast(objects: list[_Object], ground: _Ground, o: np.ndarray, d: np.ndarray):
    """Closest hit along rays o + t d (d unit, (N, 3)): t (N,), instance (N,), colour (N, 3)."""
    n = len(d)
    best = np.full(n, np.inf)
    inst = np.zeros(n, dtype=np.int64)
    col = np.zeros((n, 3))
    for inst_id, shape in [(0, ground)] + [(ob.instance, ob.shape) for ob in objects]:
        cand = np.arange(n)
        bound = shape.bound()
        if bound is not None:  # only rays that pass through the bounding sphere can hit
            c, r = bound
            oc = o - c
            b = d @ oc
            cand = np.nonzero(b * b - (oc @ oc - r * r) >= 0)[0]
            if len(cand) == 0:
                continue
        hit = shape.intersect(o, d[cand])
        closer = hit.t < best[cand]
        if not closer.any():
            continue
        idx = cand[closer]
        p = o + hit.t[closer, None] * d[idx]
        nrm = hit.normal[closer]
        col[idx] = _shade(shape.albedo(p, nrm), nrm)
        best[idx] = hit.t[closer]
        inst[idx] = inst_id
    return best, inst, col


def _rays(cam: Camera, offsets: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Ray origin (3,) and unit directions (S, H, W, 3) through pixel (i + a, j + b) per offset."""
    K = cam.K.double().numpy()
    V = cam.viewmat.double().numpy()
    R, t = V[:3, :3], V[:3, 3]
    origin = -R.T @ t
    dirs = []
    for a, b in offsets:
        u = (np.arange(cam.width) + a - K[0, 2]) / K[0, 0]
        v = (np.arange(cam.height) + b - K[1, 2]) / K[1, 1]
        dc = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1))), -1)
        dw = dc @ R  # camera -> world: R^T d for row vectors
        dirs.append(dw / np.linalg.norm(dw, axis=-1, keepdims=True))
    return origin, np.stack(dirs)


def render_view(objects: list[_Object], ground: _Ground, cam: Camera, supersample: int = 2) -> dict[str, np.ndarray]:
    """Ray cast one view.

    Returns:
        rgba: (H, W, 4) uint8 (straight alpha = coverage of the supersamples).
        depth_mm: (H, W) uint16 camera-space z of the centre ray in millimetres, 0 = sky.
        instance, cls: (H, W) uint8 ids seen through each pixel centre.
    """
    H, W = cam.height, cam.width
    offs = [((i + 0.5) / supersample, (j + 0.5) / supersample) for j in range(supersample) for i in range(supersample)]
    origin, dirs = _rays(cam, offs + [(0.5, 0.5)])
    t, inst, col = _cast(objects, ground, origin, dirs.reshape(-1, 3))
    S = len(offs)
    hit = np.isfinite(t).reshape(S + 1, H, W)
    col = col.reshape(S + 1, H, W, 3)
    cover = hit[:S].mean(0)
    premul = (col[:S] * hit[:S, ..., None]).mean(0)
    rgb = np.where(cover[..., None] > 0, premul / np.maximum(cover, 1e-12)[..., None], 0.0)
    rgba = np.concatenate([rgb, cover[..., None]], -1)
    rgba = np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)

    fwd = cam.viewmat.double().numpy()[2, :3]  # camera z axis in world
    tc = t.reshape(S + 1, H, W)[S]
    z = np.where(np.isfinite(tc), tc * (dirs[S] @ fwd), 0.0)
    depth_mm = np.clip(np.rint(z * 1000.0), 0, 65535).astype(np.uint16)
    inst_c = inst.reshape(S + 1, H, W)[S]
    cls_of = np.zeros(len(objects) + 1, dtype=np.uint8)
    for ob in objects:
        cls_of[ob.instance] = ob.cls
    return {"rgba": rgba, "depth_mm": depth_mm, "instance": inst_c.astype(np.uint8), "cls": cls_of[inst_c]}


def _cameras(rng: np.random.Generator, n_views: int, n_test: int, width: int, height: int) -> tuple[list[Camera], list[Camera]]:
    K = intrinsics_from_fov(_FOV_X, width, height)
    elevations = np.radians([20.0, 35.0, 50.0])

    def cam(az: float, el: float, radius: float, name: str) -> Camera:
        eye = _TARGET + radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        return Camera(look_at(eye, _TARGET, (0.0, 0.0, 1.0)), K.clone(), width, height, name=name)

    train = [
        cam(2 * np.pi * k / n_views + rng.uniform(-0.05, 0.05), elevations[k % 3] + rng.uniform(-0.03, 0.03),
            4.5 + rng.uniform(-0.2, 0.2), f"train/r_{k:03d}.png")
        for k in range(n_views)
    ]
    # Test views sit between training azimuths, at an elevation no training view has.
    test = [
        cam(2 * np.pi * (k + 0.5) / max(n_test, 1) + np.pi / max(n_views, 1), math.radians(28.0), 4.5, f"test/r_{k:03d}.png")
        for k in range(n_test)
    ]
    return train, test


def _save(path: Path, a: np.ndarray) -> None:
    Image.fromarray(a).save(path, compress_level=1)


def make_synthetic_scene(
    out_dir: Union[str, Path],
    n_views: int = 24,
    n_test: int = 4,
    width: int = 128,
    height: int = 128,
    seed: int = 0,
    n_points: int = 4000,
    supersample: int = 2,
) -> Path:
    """Render the procedural scene into ``out_dir`` in Blender format (see module docstring).

    Args:
        out_dir: output folder (created; existing files are overwritten).
        n_views: number of training views, on a ring around the scene (radius ~4.5 m, elevations
            cycling 20/35/50 degrees), all looking at (0, 0, 0.35).
        n_test: number of extra test views, at azimuths between training views and 28 degrees
            elevation.
        width, height: image size in pixels (50 degree horizontal field of view, square pixels).
        seed: jitters object positions and training cameras; same seed, same files.
        n_points: about how many surface samples go to points3d.ply (ground gets 40%).
        supersample: colour rays per pixel along each axis (labels and depth use the centre ray).
    Returns:
        ``out_dir`` as a Path.
    """
    if n_views < 1 or n_test < 0 or width < 1 or height < 1:
        raise ValueError("need n_views >= 1, n_test >= 0 and a positive image size")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    objects = _build_objects(rng)
    ground = _Ground(_GROUND_HALF, ((0.55, 0.52, 0.48), (0.80, 0.77, 0.70)))
    train, test = _cameras(rng, n_views, n_test, width, height)

    meta_common = {
        "generator": f"feature3dgs.synthetic {VERSION}",
        "camera_angle_x": _FOV_X,
        "classes": CLASSES,
        "depth_unit_scale_factor": 1e-3,
        "objects": [
            {"instance": ob.instance, "class": ob.cls, "name": ob.name, "center": ob.center.tolist(),
             "radius": float(getattr(ob.shape, "radius", 0.0))}
            for ob in objects
        ],
    }
    for split, cams in (("train", train), ("test", test)):
        (out / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for k, cam in enumerate(cams):
            r = render_view(objects, ground, cam, supersample)
            stem = f"{split}/%s_{k:03d}.png"
            _save(out / (stem % "r"), r["rgba"])
            _save(out / (stem % "depth"), r["depth_mm"])
            _save(out / (stem % "instance"), r["instance"])
            _save(out / (stem % "class"), r["cls"])
            frames.append({
                "file_path": f"./{split}/r_{k:03d}",
                "transform_matrix": opengl_c2w_from_viewmat(cam.viewmat).tolist(),
                "depth_path": stem % "depth",
                "instance_path": stem % "instance",
                "class_path": stem % "class",
            })
        with open(out / f"transforms_{split}.json", "w") as f:
            json.dump({**meta_common, "frames": frames}, f, indent=1)

    # Surface samples for initialisation, with the same shading as the images.
    pts, nrm, col = [], [], []
    counts = [int(0.4 * n_points)] + [int(0.15 * n_points)] * len(objects)
    for shape, cnt in zip([ground] + [ob.shape for ob in objects], counts):
        p, n = shape.sample(rng, cnt)
        pts.append(p)
        nrm.append(n)
        col.append(_shade(shape.albedo(p, n), n))
    write_ply_points(out / "points3d.ply", np.concatenate(pts), np.concatenate(col), np.concatenate(nrm))
    return out


def _cache_root(cache_dir: Optional[Union[str, Path]]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FEATURE3DGS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "feature3dgs"


def builtin_scene(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """The default synthetic scene (24 + 4 views, 128x128, seed 0), generated once and reused.

    It lives in ``<cache root>/synthetic_v1`` where the cache root is ``cache_dir``, else the
    environment variable ``FEATURE3DGS_CACHE``, else ``~/.cache/feature3dgs``. Generation goes to
    a temporary folder beside it that is renamed into place, so concurrent callers and
    interrupted runs never see a half-written scene.
    """
    root = _cache_root(cache_dir)
    target = root / VERSION
    if (target / "transforms_test.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}.", dir=root))
    try:
        make_synthetic_scene(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "transforms_test.json").is_file():  # not a concurrent winner
                raise OSError(f"cannot move the generated scene into {target}; remove that folder and retry") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
