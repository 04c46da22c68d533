"""The differentiable rasterizer: :func:`render` over the compiled kernels (:mod:`.kernels`), its
plain-PyTorch oracle with the same stages (:mod:`.reference`), the shared input checks and output
type (:mod:`.inputs`), which kernels are built (:func:`backend_info`), and the CPU kernels'
host block cache (:func:`cpu_cache_info`, :func:`clear_cpu_cache`)."""

from feature3dgs.rendering._backend import backend_info, clear_cpu_cache, cpu_cache_info
from feature3dgs.rendering.inputs import RenderOutput
from feature3dgs.rendering.kernels import render

__all__ = ["render", "RenderOutput", "backend_info", "cpu_cache_info", "clear_cpu_cache"]
