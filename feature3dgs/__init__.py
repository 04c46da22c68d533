"""feature3dgs: Gaussian Splatting with N-dimensional distilled features.

The kernels are compiled (prebuilt by `pip install --no-build-isolation .`, or
just-in-time on first use); see docs/architecture.md.
"""

from __future__ import annotations

from feature3dgs.rendering.kernels import render
from feature3dgs.rendering.inputs import RenderOutput

__version__ = "0.1.0"

__all__ = ["render", "RenderOutput", "backend_info", "__version__"]


def backend_info() -> dict:
    """Which kernels are compiled and how: {'cpu': True, 'cuda': bool, 'cuda_archs': str,
    'openmp_threads': int, 'tile_size': int, 'cuda_device': name or None, 'version': str}."""
    import torch

    from feature3dgs.rendering._backend import kernels

    info = {"version": __version__, "cpu": True}
    info.update(kernels().build_info())
    info["cuda_device"] = torch.cuda.get_device_name(0) if info["cuda"] and torch.cuda.is_available() else None
    return info
