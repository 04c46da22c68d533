"""Load a COLMAP reconstruction (sparse model + image folder) as a :class:`Scene`.

Layout::

    root/
      images/ (or images_2, images_4, images_8: the same views downscaled)
      sparse/0/{cameras,images,points3D}.{bin,txt}   (or sparse/, or root/ itself)
      masks/   optional: <image name>.png or <image stem>.png, 255 = valid

COLMAP poses are world-to-camera in OpenCV axes already, so ``viewmat = [R(q) | t]``.
Supported camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV
(radial-tangential), OPENCV_FISHEYE, SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE (fisheye). Distorted
images are undistorted at load by default (see :mod:`feature3dgs.data.undistort`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from feature3dgs.model.camera import Camera

from . import images as io
from .colmap_io import (
    ColmapCamera,
    ColmapModel,
    find_sparse_dir,
    qvec_to_rotmat,
    read_model,
)
from .errors import SceneNotFoundError, format_error
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
from .validate import check_bool, check_test_every, finite_points, image_scale

SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
                    "OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")
IMAGE_FOLDERS = ("images", "images_2", "images_4", "images_8")


def camera_intrinsics(cam: ColmapCamera, source: Optional[Path] = None) -> tuple[float, float, float, float, Distortion]:
    """(fx, fy, cx, cy) in pixels of the COLMAP camera's own size, and its distortion.

    COLMAP's parameter order per model: SIMPLE_PINHOLE f cx cy; PINHOLE fx fy cx cy;
    SIMPLE_RADIAL f cx cy k; RADIAL f cx cy k1 k2; OPENCV fx fy cx cy k1 k2 p1 p2;
    FULL_OPENCV fx fy cx cy k1 k2 p1 p2 k3 k4 k5 k6; OPENCV_FISHEYE fx fy cx cy k1 k2 k3 k4;
    SIMPLE_RADIAL_FISHEYE f cx cy k; RADIAL_FISHEYE f cx cy k1 k2 (COLMAP's fisheye models are
    OpenCV's equidistant model with the remaining coefficients 0).
    """
    p = [float(v) for v in cam.params]
    m = cam.model
    if m == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], Distortion()
    if m == "PINHOLE":
        return p[0], p[1], p[2], p[3], Distortion()
    if m == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3])
    if m == "RADIAL":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3], k2=p[4])
    if m == "OPENCV":
        return p[0], p[1], p[2], p[3], Distortion(k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    if m == "FULL_OPENCV":
        return p[0], p[1], p[2], p[3], Distortion(k1=p[4], k2=p[5], p1=p[6], p2=p[7], k3=p[8], k4=p[9],
                                                  k5=p[10], k6=p[11])
    if m == "OPENCV_FISHEYE":
        return p[0], p[1], p[2], p[3], Distortion(k1=p[4], k2=p[5], k3=p[6], k4=p[7], fisheye=True)
    if m == "SIMPLE_RADIAL_FISHEYE":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3], fisheye=True)
    if m == "RADIAL_FISHEYE":
        return p[0], p[0], p[1], p[2], Distortion(k1=p[3], k2=p[4], fisheye=True)
    raise format_error(
        source or "COLMAP model", f"camera {cam.id} model",
        f"{m} is not supported (supported: {', '.join(SUPPORTED_MODELS)}); run `colmap image_undistorter` first",
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
            raise SceneNotFoundError(f"image folder not found: {folder} (the images option)", path=folder,
                                     key="images")
        return folder
    for name in IMAGE_FOLDERS:
        if (root / name).is_dir():
            return root / name
    raise SceneNotFoundError(f"no image folder in {root}: expected one of {', '.join(IMAGE_FOLDERS)}", path=root)


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
    raise SceneNotFoundError(
        f"image {missing!r} of the COLMAP model not found in {folder}, and the folder holds "
        f"{len(files)} images for {len(names)} model images, so they cannot be paired by order",
        path=folder / missing,
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
    test_every: Optional[int] = 8,
    undistort: bool = True,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Scene:
    """Load a COLMAP scene.

    Args:
        root: scene folder (holding ``sparse/`` and the image folders).
        images: image folder name ('images', 'images_2', ...) or downscale factor (1, 2, 4, 8);
            None picks the first of images, images_2, images_4, images_8 that exists.
        resolution_scale: extra factor applied to the image size (1.0 = as stored).
        target_width: instead of ``resolution_scale``, the width in pixels to load at.
        background: compositing colour for RGBA images.
        test_every: views sorted by name with index % test_every == 0 are test (an integer >= 2),
            or None for no test views.
        undistort: undistort the images of every camera with a non-zero distortion coefficient
            (default), to the pinhole camera of :mod:`~feature3dgs.data.undistort`'s new-K policy;
            False uses them as pinhole images (with a warning when a coefficient is non-zero).
        cache_bytes: byte budget of the decoded-image cache.

    Intrinsics are scaled per axis by (image size / COLMAP camera size), so image folders at a
    lower resolution than the reconstruction are handled; an image whose aspect ratio differs
    from its camera's is refused. Every image is checked for completeness here (images.check_image).

    Raises:
        SceneFormatError: (or its subclasses SceneNotFoundError, SceneOptionError) naming the
            file and key for anything missing or invalid.
    """
    root = Path(root)
    if not root.is_dir():
        raise SceneNotFoundError(f"COLMAP scene folder not found: {root}", path=root)
    undistort = check_bool(undistort, root, "undistort")
    check_test_every(test_every, root)
    check_resolution(resolution_scale, target_width)
    sparse = find_sparse_dir(root)
    model: ColmapModel = read_model(sparse)
    if not model.images:
        raise format_error(sparse, "images", "the COLMAP model has no registered images")
    cam_file = next(p for p in (sparse / "cameras.bin", sparse / "cameras.txt") if p.is_file())
    folder = _image_folder(root, images)
    masks = root / "masks" if (root / "masks").is_dir() else None

    ordered = sorted(model.images.values(), key=lambda im: im.name)
    files = pair_image_files([im.name for im in ordered], folder)

    views: list[View] = []
    ignored: dict[int, Distortion] = {}
    for im, path in zip(ordered, files):
        cc = model.cameras[im.camera_id]
        fx, fy, cx, cy, dist = camera_intrinsics(cc, cam_file)
        w_img, h_img = io.check_image(path)
        sx, sy = image_scale((cc.width, cc.height), (w_img, h_img), path,
                             f"COLMAP camera {cc.id} in {cam_file.name}")
        K = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
        cam = Camera(viewmat_from_colmap(im.qvec, im.tvec), torch.from_numpy(K), w_img, h_img, name=im.name)
        cam, und = view_camera(cam, dist, final_scale(w_img, resolution_scale, target_width), undistort,
                               cam_file, f"camera {cc.id}")
        if not dist.is_zero() and not undistort:
            ignored[cc.id] = dist
        mask = _mask_file(masks, im.name, path)
        if mask is not None:
            io.check_image(mask)
        views.append(View(cam, path, mask_path=mask, undistortion=und))

    for cam_id, d in ignored.items():
        warnings.warn(
            f"{cam_file}: camera {cam_id} ({model.cameras[cam_id].model}) has distortion {d.describe()}; "
            "ignored (undistort=False), images used as pinhole",
            stacklevel=2,
        )

    train, test = split_every(views, test_every, root)
    points = colors = None
    if len(model.xyz):
        xyz, rgb = finite_points(model.xyz, model.rgb, model.points_path)
        points, colors = xyz.astype(np.float32), rgb.astype(np.float32) / 255.0
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
