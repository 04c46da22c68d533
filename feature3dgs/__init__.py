"""feature3dgs: Gaussian Splatting with N-dimensional distilled features.

The public API: :func:`render` (the differentiable rasterizer), :class:`RenderOutput`,
:class:`GaussianModel`, :class:`Camera`, :func:`load_scene` (posed images), :func:`load_run` (a
trained scene) and :func:`backend_info`. The kernels are compiled (prebuilt by
``pip install --no-build-isolation .``, or just-in-time on first use); see docs/architecture.md.
"""

from __future__ import annotations

from feature3dgs.data import load_scene
from feature3dgs.model import Camera, GaussianModel
from feature3dgs.rendering import RenderOutput, backend_info, render
from feature3dgs.run import load_run
from feature3dgs.version import __version__

__all__ = ["render", "RenderOutput", "GaussianModel", "Camera", "load_scene", "load_run", "backend_info",
           "__version__"]
