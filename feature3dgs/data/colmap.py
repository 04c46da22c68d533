"""Load a COLMAP reconstruction (sparse model + image folder) as a :class:`Scene`.

Layout::

    root/
      images/ (or images_2, images_4, images_8: the same views downscaled)
      sparse/0/{cameras,images,points3D}.{bin,txt}   (or sparse/, or root/ itself)
      masks/   optional: <image name>.png or <image stem>.png, 255 = valid

COLMAP poses are world-to-camera in OpenCV axes already, so ``viewmat = [R(q) | t]``.
Supported camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from feature3dgs.model.camera import Camera
from . import images as io
from .colmap_io import ColmapCamera, ColmapModel, find_sparse_dir, qvec_to_rotmat, read_model
from .scene import DEFAULT_CACHE_BYTES, Scene, View, final_scale, split_every
from .undistort import DEFAULT_DISTORTION_THRESHOLD, Distortion

SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
IMAGE_FOLDERS = ("images", "images_2", "images_4", "images_8")


def camera_intrinsics(cam: ColmapCamera) -> tuple[float, float, float, float, Distortion]:
    """(fx, fy, cx, cy) in pixels of the COLMAP camera's own size, and its distortion."""
    p = [float(v) for v in cam.params]
    if cam.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], Distortion()
    if cam.model == "PINHOLE":
        return p[0], p[1], p[2], p[3], Distortion()
    if cam.model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3])
    if cam.model == "RADIAL":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3], k2=p[4])
    if cam.model == "OPENCV":
        return p[0], p[1], p[2], p[3], Distortion(k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    raise ValueError(
        f"COLMAP camera {cam.id} uses model {cam.model}, which is not supported "
        f"(supported: {', '.join(SUPPORTED_MODELS)}); run `colmap image_undistorter` first"
    )


def viewmat_from_colmap(qvec: np.ndarray, tvec: np.ndarray) -> torch.Tensor:
    """(4, 4) float32 world-to-camera matrix from COLMAP's qvec (w, x, y, z) and tvec (3,)."""
    m = np.eye(4)
    m[:3, :3] = qvec_to_rotmat(qvec)
    m[:3, 3] = tvec
    return torch.from_numpy(m).to(torch.float32)


def _image_folder(root: Path, images: Union[str, int, None]) -> Path:
    if isinstance(images, int):
        images = "images" if images == 1 else f"images_{images}"
    if images is not None:
        folder = root / images
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        return folder
    for name in IMAGE_FOLDERS:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no image folder in {root}: expected one of {', '.join(IMAGE_FOLDERS)}")


def pair_image_files(names: Sequence[str], folder: Path) -> list[Path]:
    """The image file of each COLMAP image name (``names`` sorted).

    Exact names first, then the same stem with another extension (IMG_1.JPG -> IMG_1.png).
    Otherwise, when the folder holds exactly as many images as the model, files are paired in
    sorted order with a warning (LLFF's images_8/image000.png for IMG_4026.JPG).
    """
    files = io.list_images(folder)
    by_stem: dict[str, Path] = {}
    for f in files:
        by_stem.setdefault(f.stem, f)
    out: list[Optional[Path]] = []
    for n in names:
        direct = folder / n
        out.append(direct if direct.is_file() else by_stem.get(Path(n).stem))
    if all(p is not None for p in out):
        return out  # type: ignore[return-value]
    if len(files) == len(names):
        warnings.warn(
            f"image names in {folder} differ from the COLMAP model's (e.g. {files[0].name} vs "
            f"{names[0]}); pairing the {len(names)} files in sorted order",
            stacklevel=3,
        )
        return files
    missing = next(n for n, p in zip(names, out) if p is None)
    raise FileNotFoundError(
        f"image {missing!r} of the COLMAP model not found in {folder}, and the folder holds "
        f"{len(files)} images for {len(names)} model images, so they cannot be paired by order"
    )


def _mask_file(masks: Optional[Path], name: str, image: Path) -> Optional[Path]:
    if masks is None:
        return None
    for cand in (masks / (name + ".png"), masks / (Path(name).stem + ".png"), masks / (image.stem + ".png")):
        if cand.is_file():
            return cand
    return None


def load_colmap(
    root: Union[str, Path],
    images: Union[str, int, None] = None,
    resolution_scale: float = 1.0,
    target_width: Optional[int] = None,
    background: Union[Sequence[float], str] = (0.0, 0.0, 0.0),
    test_every: int = 8,
    undistort: str = "auto",
    distortion_threshold: float = DEFAULT_DISTORTION_THRESHOLD,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Scene:
    """Load a COLMAP scene.

    Args:
        root: scene folder (holding ``sparse/`` and the image folders).
        images: image folder name ('images', 'images_2', ...) or downscale factor (1, 2, 4, 8);
            None picks the first of images, images_2, images_4, images_8 that exists.
        resolution_scale: extra factor applied to the image size (1.0 = as stored).
        target_width: instead of ``resolution_scale``, the width in pixels to load at.
        background: compositing colour for RGBA images and undistortion borders.
        test_every: views sorted by name with index % test_every == 0 are test (0: none).
        undistort: 'auto' undistorts images when a distortion coefficient has magnitude >=
            ``distortion_threshold`` and otherwise ignores it with a warning; 'always'
            undistorts any non-zero distortion; 'never' ignores it with a warning.
        distortion_threshold: see ``undistort`` (default 0.05).
        cache_bytes: byte budget of the decoded-image cache.

    Intrinsics are scaled per axis by (image size / COLMAP camera size), so image folders at a
    lower resolution than the reconstruction are handled. Undistorted views keep their K.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"COLMAP scene folder not found: {root}")
    if undistort not in ("auto", "always", "never"):
        raise ValueError(f"undistort must be 'auto', 'always' or 'never', got {undistort!r}")
    model: ColmapModel = read_model(find_sparse_dir(root))
    if not model.images:
        raise ValueError(f"COLMAP model under {root} has no registered images")
    folder = _image_folder(root, images)
    masks = root / "masks" if (root / "masks").is_dir() else None

    ordered = sorted(model.images.values(), key=lambda im: im.name)
    files = pair_image_files([im.name for im in ordered], folder)

    views: list[View] = []
    ignored: dict[int, Distortion] = {}
    for im, path in zip(ordered, files):
        cc = model.cameras[im.camera_id]
        fx, fy, cx, cy, dist = camera_intrinsics(cc)
        w_img, h_img = io.image_size(path)
        sx, sy = w_img / cc.width, h_img / cc.height
        if abs(sx / sy - 1.0) > 0.02:
            raise ValueError(
                f"image {path} is {w_img}x{h_img} but its COLMAP camera {cc.id} is {cc.width}x{cc.height}: "
                "aspect ratios differ (wrong image paired with this pose?)"
            )
        K = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
        cam = Camera(viewmat_from_colmap(im.qvec, im.tvec), torch.from_numpy(K), w_img, h_img, name=im.name)
        factor = final_scale(w_img, resolution_scale, target_width)
        if factor != 1.0:
            cam = cam.scaled(factor)
        use_dist: Optional[Distortion] = None
        if not dist.is_zero():
            if undistort == "always" or (undistort == "auto" and dist.max_abs >= distortion_threshold):
                use_dist = dist
            else:
                ignored[cc.id] = dist
        views.append(View(cam, path, mask_path=_mask_file(masks, im.name, path), distortion=use_dist))

    for cam_id, d in ignored.items():
        why = f"below the threshold {distortion_threshold}" if undistort == "auto" else "undistort='never'"
        warnings.warn(
            f"COLMAP camera {cam_id} ({model.cameras[cam_id].model}) has distortion "
            f"k1={d.k1:g} k2={d.k2:g} p1={d.p1:g} p2={d.p2:g}; ignored ({why}), images used as pinhole",
            stacklevel=2,
        )

    train, test = split_every(views, test_every)
    points = model.xyz.astype(np.float32) if len(model.xyz) else None
    colors = model.rgb.astype(np.float32) / 255.0 if len(model.xyz) else None
    return Scene(
        train_views=train,
        test_views=test,
        background=background,
        points=points,
        colors=colors,
        source_path=root,
        format="colmap",
        cache_bytes=cache_bytes,
    )
