"""Format detection and the one entry point, :func:`load_scene`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .blender import load_blender, load_transforms
from .colmap import load_colmap
from .colmap_io import find_sparse_dir
from .scene import DEFAULT_CACHE_BYTES, Scene


def detect_format(path: Union[str, Path]) -> str:
    """'colmap', 'blender' or 'transforms' for a scene folder (or a transforms json file).

    Checked in this order: a ``transforms_train.json`` (Blender), a COLMAP model
    (``sparse/0``, ``sparse`` or the folder itself), a ``transforms.json``.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return "transforms"
    if not path.is_dir():
        raise FileNotFoundError(f"scene path not found: {path}")
    if (path / "transforms_train.json").is_file():
        return "blender"
    try:
        find_sparse_dir(path)
        return "colmap"
    except FileNotFoundError:
        pass
    if (path / "transforms.json").is_file():
        return "transforms"
    raise FileNotFoundError(
        f"cannot tell the scene format of {path}: expected transforms_train.json (Blender), "
        "sparse/0/cameras.bin|txt (COLMAP) or transforms.json (instant-ngp / nerfstudio)"
    )


def load_scene(
    path: Union[str, Path],
    resolution_scale: float = 1.0,
    target_width: Optional[int] = None,
    background: Union[Sequence[float], str] = (0.0, 0.0, 0.0),
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    **kwargs: Any,
) -> Scene:
    """Load a scene, detecting its format (see :func:`detect_format`).

    Args:
        path: scene folder, or a transforms json file.
        resolution_scale: factor applied to the stored image size (0.5 = half width and height).
        target_width: alternatively, the image width in pixels to load at (aspect kept).
        background: RGBA compositing colour: 3 floats in [0, 1], 'white' or 'black'.
        cache_bytes: byte budget of the decoded uint8 image cache (0 = decode on every access).
        **kwargs: format-specific options, e.g. ``images='images_8'``, ``test_every=8``,
            ``undistort='auto'`` for COLMAP; ``test_every`` for transforms.json.
    """
    fmt = detect_format(path)
    common = dict(resolution_scale=resolution_scale, target_width=target_width, background=background,
                  cache_bytes=cache_bytes)
    if fmt == "blender":
        return load_blender(path, **common, **kwargs)
    if fmt == "colmap":
        return load_colmap(path, **common, **kwargs)
    return load_transforms(path, **common, **kwargs)
