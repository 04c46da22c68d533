"""The differentiable rasterizer: :func:`render` over the compiled kernels (:mod:`.kernels`), its
plain-PyTorch oracle with the same stages (:mod:`.reference`), the shared input checks and output
type (:mod:`.inputs`), and which kernels are built (:func:`backend_info`)."""

from feature3dgs.rendering._backend import backend_info
from feature3dgs.rendering.inputs import RenderOutput
from feature3dgs.rendering.kernels import render

__all__ = ["render", "RenderOutput", "backend_info"]
