"""Build script: the compiled extension feature3dgs._C.

`pip install --no-build-isolation .` compiles the CPU kernels always and the CUDA
kernels too when a CUDA toolkit (nvcc) and a CUDA build of torch are present.
Without torch in the build environment (a plain, isolated `pip install .`), the
package installs without a prebuilt extension and compiles the same sources
just-in-time on first use (see feature3dgs/_backend.py). The build never
installs a second torch.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "feature3dgs" / "rendering"))
import _build as cfg  # noqa: E402  (plain module: importable without torch)

sys.path.pop(0)


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package so that the JIT fallback can compile it."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "feature3dgs" / "_csrc"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / "csrc", target)


def extension_modules() -> tuple[list, dict]:
    if os.environ.get("FEATURE3DGS_NO_BUILD_EXT"):
        return [], {}
    try:
        import torch  # noqa: F401

        cfg.configure_cuda_home()
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("feature3dgs: torch is not importable at build time; the kernels will be "
              "compiled just-in-time on first use (install with --no-build-isolation to "
              "compile them now)")
        return [], {}
    sources = [str(p.relative_to(ROOT)) for p in cfg.cpu_sources(ROOT / "csrc")]
    with_cuda, why = cfg.cuda_available()
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", cfg.default_cuda_archs())
        sources += [str(p.relative_to(ROOT)) for p in cfg.cuda_sources(ROOT / "csrc")]
        ext = CUDAExtension(
            "feature3dgs._C",
            sources,
            include_dirs=[str(ROOT / d) for d in cfg.INCLUDE_DIRS],
            define_macros=cfg.define_macros(with_cuda=True),
            extra_compile_args={"cxx": cfg.CXX_FLAGS + cfg.cxx_only_flags(True), "nvcc": cfg.NVCC_FLAGS},
            extra_link_args=cfg.LINK_FLAGS,
        )
    else:
        print(f"feature3dgs: building the CPU kernels only ({why})")
        ext = CppExtension(
            "feature3dgs._C",
            sources,
            include_dirs=[str(ROOT / d) for d in cfg.INCLUDE_DIRS],
            define_macros=cfg.define_macros(with_cuda=False),
            extra_compile_args={"cxx": cfg.CXX_FLAGS},
            extra_link_args=cfg.LINK_FLAGS,
        )
    isa_exts = [CppExtension(f"feature3dgs._cpu_{name}", [str(src.relative_to(ROOT))],
                             include_dirs=[str(ROOT / d) for d in cfg.INCLUDE_DIRS],
                             extra_compile_args={"cxx": flags}, extra_link_args=cfg.LINK_FLAGS)
                for name, src, flags in cfg.isa_modules(ROOT / "csrc")]
    return [ext] + isa_exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
