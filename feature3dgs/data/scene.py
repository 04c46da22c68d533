"""The one scene type every loader returns, and lazy per-view image access.

Images are decoded from disk when asked for and kept, if at all, as uint8 tensors in a
byte-bounded LRU cache (:class:`~feature3dgs.data.images.ByteLRU`); float copies exist only for
the views being used. A 300-view 1600x1200 RGBA scene is 2.3 GB as uint8 and 9.2 GB as float,
so the default budget (1 GiB) holds part of it and the rest is decoded again when needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from feature3dgs.model.camera import Camera

from . import images as io
from .errors import SceneFormatError, SceneOptionError
from .undistort import Distortion, Undistortion, undistort_camera
from .validate import check_test_every

DEFAULT_CACHE_BYTES = 1 << 30


@dataclass(eq=False)
class View:
    """One posed image and its optional side data.

    Attributes:
        camera: the camera at the resolution the scene was loaded at (pinhole, undistorted).
        image_path: colour image (RGB or RGBA; any size with the camera's aspect ratio).
        mask_path: optional mask image (255 = valid / foreground).
        depth_path: optional depth (16-bit PNG scaled by ``depth_scale``, or float .npy in metres).
        instance_path, class_path: optional integer label PNGs (0 = background).
        undistortion: when set, the files are distorted and are resampled to ``camera`` at load
            (see :mod:`feature3dgs.data.undistort`); None: the files are pinhole images.
        depth_scale: metres per integer unit of a depth PNG (1e-3: millimetres).
    """

    camera: Camera
    image_path: Path
    mask_path: Optional[Path] = None
    depth_path: Optional[Path] = None
    instance_path: Optional[Path] = None
    class_path: Optional[Path] = None
    undistortion: Optional[Undistortion] = None
    depth_scale: float = 1e-3

    @property
    def name(self) -> str:
        return self.camera.name

    @property
    def distortion(self) -> Optional[Distortion]:
        """The lens distortion the image files are corrected for at load, or None."""
        return None if self.undistortion is None else self.undistortion.distortion


ViewRef = Union[View, Camera, str]


@dataclass(eq=False)
class Scene:
    """Posed views split into train and test, optional sparse points and labels.

    Attributes:
        train_views, test_views: the views (cameras plus file paths).
        background: (3,) float32 in [0, 1], the colour RGBA images are composited on.
        points: optional (N, 3) float32 sparse points (world units) for initialisation.
        colors: optional (N, 3) float32 colours of ``points`` in [0, 1].
        class_names: names of the class ids in the class label images, if any.
        source_path: the folder (or file) the scene was loaded from.
        format: 'colmap', 'blender', 'transforms' or 'synthetic'.
        cache_bytes: byte budget of the decoded-image cache (0 disables caching).
    """

    train_views: list[View]
    test_views: list[View]
    background: torch.Tensor = field(default_factory=lambda: torch.zeros(3))
    points: Optional[torch.Tensor] = None
    colors: Optional[torch.Tensor] = None
    class_names: Optional[list[str]] = None
    source_path: Optional[Path] = None
    format: str = ""
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        self.background = io.parse_background(self.background)
        self._by_name: dict[str, View] = {}
        for v in self.views:
            if v.name in self._by_name:
                raise SceneFormatError(f"{self.source_path}: duplicate view name {v.name!r}",
                                       path=self.source_path, key=v.name)
            self._by_name[v.name] = v
        if self.points is not None:
            self.points = torch.as_tensor(np.asarray(self.points, dtype=np.float32)).reshape(-1, 3)
            if self.colors is None:
                self.colors = torch.full_like(self.points, 0.5)
            self.colors = torch.as_tensor(np.asarray(self.colors, dtype=np.float32)).reshape(-1, 3)
            if self.colors.shape != self.points.shape:
                raise ValueError(f"points {tuple(self.points.shape)} and colors {tuple(self.colors.shape)} differ")
        self._cache = io.ByteLRU(self.cache_bytes)

    # ------------------------------------------------------------------ views
    @property
    def views(self) -> list[View]:
        """Train views then test views."""
        return self.train_views + self.test_views

    @property
    def train_cameras(self) -> list[Camera]:
        return [v.camera for v in self.train_views]

    @property
    def test_cameras(self) -> list[Camera]:
        return [v.camera for v in self.test_views]

    @property
    def has_labels(self) -> bool:
        return any(v.instance_path is not None or v.class_path is not None for v in self.views)

    def view(self, ref: ViewRef) -> View:
        """The view for a View, a Camera (matched by name) or a view name."""
        if isinstance(ref, View):
            return ref
        name = ref.name if isinstance(ref, Camera) else ref
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no view named {name!r} in scene {self.source_path}") from None

    # ------------------------------------------------------------------ geometry
    @property
    def center(self) -> torch.Tensor:
        """(3,) mean of the training camera centres (all cameras if there are no train views)."""
        cams = self.train_cameras or self.test_cameras
        return torch.stack([c.center for c in cams]).mean(0)

    @property
    def extent(self) -> float:
        """Scene radius in world units: 1.1 x the largest distance of a training camera centre
        from their mean (3DGS's ``nerf_normalization`` radius); 1.0 when all centres coincide."""
        cams = self.train_cameras or self.test_cameras
        centers = torch.stack([c.center for c in cams])
        radius = float((centers - centers.mean(0)).norm(dim=1).max()) * 1.1
        return radius if radius > 1e-8 else 1.0

    # ------------------------------------------------------------------ pixels
    @staticmethod
    def _undistort(a: np.ndarray, view: View, nearest: bool) -> np.ndarray:
        return a if view.undistortion is None else view.undistortion.apply(a, nearest=nearest)

    def _image_u8(self, view: View) -> torch.Tensor:
        cam = view.camera

        def load() -> torch.Tensor:
            a = io.resize_u8(io.read_image_u8(view.image_path), cam.width, cam.height)
            return io.to_tensor_u8(self._undistort(a, view, nearest=False))

        return self._cache.get(("image", str(view.image_path), cam.width, cam.height), load)

    def load_image(self, ref: ViewRef) -> torch.Tensor:
        """The view's image at its camera's size.

        RGBA images are composited over ``self.background``.

        Returns:
            (3, H, W) float32 in [0, 1] on the CPU.
        """
        view = self.view(ref)
        return io.composite(self._image_u8(view), self.background)

    def load_image_u8(self, ref: ViewRef) -> torch.Tensor:
        """The decoded, resized (and undistorted) image before compositing, (H, W, 3|4) uint8."""
        return self._image_u8(self.view(ref))

    def load_mask(self, ref: ViewRef) -> Optional[torch.Tensor]:
        """(1, H, W) float32 in [0, 1]: the mask file if the view has one, else the image's alpha
        channel, else None."""
        view = self.view(ref)
        cam = view.camera
        if view.mask_path is not None:
            def load() -> torch.Tensor:
                m = io.resize_u8(io.read_gray(view.mask_path), cam.width, cam.height)
                return io.to_tensor_u8(self._undistort(m, view, nearest=False))

            m = self._cache.get(("mask", str(view.mask_path), cam.width, cam.height), load)
            return (m.to(torch.float32) / 255.0)[None]
        img = self._image_u8(view)
        if img.shape[2] == 4:
            return (img[..., 3].to(torch.float32) / 255.0)[None]
        return None

    def _load_nearest(self, kind: str, path: Path, view: View, read) -> torch.Tensor:
        cam = view.camera

        def load() -> torch.Tensor:
            a = io.resize_nearest(read(path), cam.width, cam.height)
            return io.to_tensor_u8(self._undistort(a, view, nearest=True))

        return self._cache.get((kind, str(path), cam.width, cam.height), load)

    def load_labels(self, ref: ViewRef, kind: str = "instance") -> Optional[torch.Tensor]:
        """Integer labels of the view, ``kind`` 'instance' or 'class'.

        Returns:
            (H, W) int64 ids (0 = background), or None when the view has no such labels.
        """
        if kind not in ("instance", "class"):
            raise ValueError(f"label kind must be 'instance' or 'class', got {kind!r}")
        view = self.view(ref)
        path = view.instance_path if kind == "instance" else view.class_path
        if path is None:
            return None
        return self._load_nearest(kind, path, view, io.read_label).to(torch.int64)

    def load_depth(self, ref: ViewRef) -> Optional[torch.Tensor]:
        """(1, H, W) float32 camera-space depth z in metres (0 = unknown), or None."""
        view = self.view(ref)
        if view.depth_path is None:
            return None
        return self._load_nearest(
            "depth", view.depth_path, view, lambda p: io.read_depth(p, view.depth_scale)
        )[None].clone()

    # ------------------------------------------------------------------ misc
    def __repr__(self) -> str:
        cam = (self.train_cameras or self.test_cameras or [None])[0]
        size = f"{cam.width}x{cam.height}" if cam is not None else "-"
        pts = 0 if self.points is None else self.points.shape[0]
        return (
            f"Scene(format={self.format!r}, source={str(self.source_path)!r}, train={len(self.train_views)}, "
            f"test={len(self.test_views)}, size={size}, points={pts}, extent={self.extent:.3f})"
        )


def split_every(items: Sequence, every: Optional[int], source: Optional[Path] = None) -> tuple[list, list]:
    """Split a sorted sequence into (train, test): index % every == 0 is test; None: no test.

    ``every`` must be an integer >= 2 (see :func:`~.validate.check_test_every`).
    """
    every = check_test_every(every, source if source is not None else "scene")
    if every is None:
        return list(items), []
    train = [x for i, x in enumerate(items) if i % every != 0]
    test = [x for i, x in enumerate(items) if i % every == 0]
    return train, test


def final_scale(width: int, resolution_scale: float, target_width: Optional[int]) -> float:
    """The factor that takes a camera of ``width`` pixels to the requested resolution."""
    check_resolution(resolution_scale, target_width)
    if target_width is not None:
        return target_width / width
    return float(resolution_scale)


def check_resolution(resolution_scale: float, target_width: Optional[int]) -> None:
    """Refuse a non-positive or non-finite ``resolution_scale``, a ``target_width`` that is not a
    positive integer, and both given at once (SceneOptionError naming the argument)."""
    bad = isinstance(resolution_scale, bool) or not isinstance(resolution_scale, (int, float, np.number))
    if bad or not (math.isfinite(resolution_scale) and resolution_scale > 0):
        raise SceneOptionError(f"resolution_scale must be a positive finite number, got {resolution_scale!r}",
                               key="resolution_scale")
    if target_width is not None:
        if isinstance(target_width, bool) or not isinstance(target_width, (int, np.integer)) or target_width <= 0:
            raise SceneOptionError(f"target_width must be a positive integer (pixels), got {target_width!r}",
                                   key="target_width")
        if resolution_scale != 1.0:
            raise SceneOptionError("give either resolution_scale or target_width, not both", key="target_width")


def view_camera(
    camera: Camera,
    distortion: Optional[Distortion],
    factor: float,
    undistort: bool,
    source: Path,
    key: str,
) -> tuple[Camera, Optional[Undistortion]]:
    """A view's pinhole camera at the loaded size, and its undistortion (every loader's last step).

    Args:
        camera: the camera of the image file at its stored size (distorted when ``distortion``).
        distortion: the lens distortion of the file (None or all zero: a pinhole image).
        factor: resize factor from the stored to the loaded size (see :func:`final_scale`).
        undistort: resample distorted images to a pinhole camera (the new-K policy of
            :mod:`~feature3dgs.data.undistort`); False uses them as pinhole images.
        source, key: the file and the key the intrinsics came from, for error messages.
    Returns:
        (camera, undistortion or None).
    """
    if factor != 1.0:
        camera = camera.scaled(factor)
    if distortion is None or distortion.is_zero() or not undistort:
        return camera, None
    try:
        return undistort_camera(camera, distortion)
    except ValueError as e:
        raise SceneFormatError(f"{source}: {key}: {e}", path=source, key=key) from None
