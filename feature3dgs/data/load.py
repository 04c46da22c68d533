"""Format detection and the one entry point, :func:`load_scene`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .blender import load_blender, load_transforms
from .colmap import load_colmap
from .colmap_io import find_sparse_dir
from .errors import SceneNotFoundError, SceneOptionError
from .scene import DEFAULT_CACHE_BYTES, Scene

#: The options each format takes beyond load_scene's own.
FORMAT_OPTIONS = {"colmap": ("images", "test_every"), "transforms": ("test_every",), "blender": ()}


def detect_format(path: Union[str, Path]) -> str:
    """'colmap', 'blender' or 'transforms' for a scene folder (or a transforms json file).

    Checked in this order: a ``transforms_train.json`` (Blender), a COLMAP model
    (``sparse/0``, ``sparse`` or the folder itself), a ``transforms.json``.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return "transforms"
    if not path.is_dir():
        raise SceneNotFoundError(f"scene path not found: {path} (expected a scene folder or a transforms json file)",
                                 path=path)
    if (path / "transforms_train.json").is_file():
        return "blender"
    try:
        find_sparse_dir(path)
        return "colmap"
    except FileNotFoundError:
        pass
    if (path / "transforms.json").is_file():
        return "transforms"
    raise SceneNotFoundError(
        f"cannot tell the scene format of {path}: expected transforms_train.json (Blender), "
        "sparse/0/cameras.bin|txt (COLMAP) or transforms.json (instant-ngp / nerfstudio)",
        path=path,
    )


def load_scene(
    path: Union[str, Path],
    resolution_scale: float = 1.0,
    target_width: Optional[int] = None,
    background: Union[Sequence[float], str] = (0.0, 0.0, 0.0),
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    undistort: bool = True,
    **kwargs: Any,
) -> Scene:
    """Load a scene, detecting its format (see :func:`detect_format`).

    Args:
        path: scene folder, or a transforms json file.
        resolution_scale: factor applied to the stored image size (0.5 = half width and height).
        target_width: alternatively, the image width in pixels to load at (aspect kept).
        background: RGBA compositing colour: 3 floats in [0, 1], 'white' or 'black'.
        cache_bytes: byte budget of the decoded uint8 image cache (0 = decode on every access).
        undistort: undistort images whose camera has a non-zero distortion coefficient, in every
            format (see :mod:`feature3dgs.data.undistort`); False uses them as pinhole images.
        **kwargs: format-specific options: ``images='images_8'`` and ``test_every=8`` for COLMAP,
            ``test_every`` for transforms.json (an integer >= 2, or None for no test views).
            Blender scenes carry their own train/test split and take none.
    Raises:
        SceneFormatError: (and its subclasses SceneNotFoundError, SceneOptionError) with a
            one-line message naming the file and key, or the option, at fault.
    """
    fmt = detect_format(path)
    unknown = sorted(set(kwargs) - set(FORMAT_OPTIONS[fmt]))
    if unknown:
        takes = ", ".join(FORMAT_OPTIONS[fmt]) or "none"
        why = " (it has its own train/test split in transforms_train.json / transforms_test.json)" \
            if fmt == "blender" and "test_every" in unknown else ""
        raise SceneOptionError(
            f"{path}: {unknown[0]}: option {', '.join(unknown)} does not apply to a {fmt} scene{why}; "
            f"{fmt} options: {takes}",
            path=path, key=unknown[0],
        )
    common = dict(resolution_scale=resolution_scale, target_width=target_width, background=background,
                  cache_bytes=cache_bytes, undistort=undistort)
    if fmt == "blender":
        return load_blender(path, **common, **kwargs)
    if fmt == "colmap":
        return load_colmap(path, **common, **kwargs)
    return load_transforms(path, **common, **kwargs)
