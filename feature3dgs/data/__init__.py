"""Scene loading: COLMAP, Blender/NeRF-synthetic, instant-ngp/nerfstudio transforms, and a
procedural synthetic scene with ground-truth labels. Every loader returns a :class:`Scene` whose
cameras follow the package convention (see :mod:`feature3dgs.model.camera`); distorted images are
undistorted at load (:mod:`.undistort`); bad input raises :class:`SceneFormatError` naming the
file and key (see docs/data.md)."""

from .blender import load_blender, load_transforms
from .colmap import load_colmap
from .errors import SceneFormatError, SceneNotFoundError, SceneOptionError
from .load import detect_format, load_scene
from .scene import Scene, View
from .synthetic import builtin_scene, make_synthetic_scene

__all__ = [
    "Scene",
    "View",
    "SceneFormatError",
    "SceneNotFoundError",
    "SceneOptionError",
    "load_scene",
    "detect_format",
    "load_colmap",
    "load_blender",
    "load_transforms",
    "make_synthetic_scene",
    "builtin_scene",
]
