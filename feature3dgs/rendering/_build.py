"""Build settings shared by setup.py (ahead of time) and the just-in-time loader.

This module imports nothing from torch at import time, so setup.py can read it
in any build environment.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

INCLUDE_DIRS = ["csrc", "csrc/include"]
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
FAST_NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "-fmad=true"]
# FEATURE3DGS_CUDA_STRICT=1: IEEE float math in the CUDA kernels (no fast math, no
# FMA contraction), the CPU twin's and the SIMT emulator's semantics, for checking
# the kernels against the CPU at tight tolerances. Read when the build starts.
STRICT_NVCC_FLAGS = ["-O3", "-lineinfo", "-fmad=false", "-ftz=false", "-prec-div=true", "-prec-sqrt=true"]


def cuda_strict() -> bool:
    """Whether FEATURE3DGS_CUDA_STRICT asks for the strict (IEEE) CUDA build."""
    return os.environ.get("FEATURE3DGS_CUDA_STRICT", "") not in ("", "0")


NVCC_FLAGS = STRICT_NVCC_FLAGS if cuda_strict() else FAST_NVCC_FLAGS
LINK_FLAGS = ["-fopenmp"]
# Without a visible GPU: SASS for Ampere (runs on every 8.x card) and Hopper,
# plus PTX so that newer GPUs JIT it.
FALLBACK_CUDA_ARCHS = "8.0;9.0+PTX"


# The SIMD blend kernels for wider instruction sets than the build's baseline: one
# small extension module each (feature3dgs._cpu_<name>, source csrc/cpu/isa/<name>.cpp),
# compiled with its own -m flags so that its instructions cannot leak into code that
# the other paths run, and imported only on CPUs that support it (rendering/_backend.py).
ISA_MODULES = {
    "avx2": ["-mavx2", "-mfma"],
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma"],
}
# Each ISA module keeps its symbols to itself.
ISA_VISIBILITY_FLAGS = ["-fvisibility=hidden", "-fvisibility-inlines-hidden"]


def cpu_sources(csrc: Path) -> list[Path]:
    """The C++ sources of feature3dgs._C (the scalar and baseline SIMD kernels among them)."""
    return sorted(csrc.glob("cpu/*.cpp")) + [csrc / "bindings.cpp"]


def isa_modules(csrc: Path) -> list[tuple[str, Path, list[str]]]:
    """(name, source, C++ flags) of each ISA module to build here: x86-64 builds all of
    ISA_MODULES (the compiler needs no such CPU, only the flags); other architectures
    and FEATURE3DGS_NO_ISA_MODULES=1 build none (the baseline kernels serve)."""
    if os.environ.get("FEATURE3DGS_NO_ISA_MODULES"):
        return []
    if platform.machine().lower() not in ("x86_64", "amd64", "x64"):
        return []
    return [(name, csrc / "cpu" / "isa" / f"{name}.cpp", CXX_FLAGS + flags + ISA_VISIBILITY_FLAGS)
            for name, flags in ISA_MODULES.items()]


def cuda_sources(csrc: Path) -> list[Path]:
    return sorted(csrc.glob("cuda/*.cu"))


def configure_cuda_home() -> None:
    """Sets CUDA_HOME when unset, before torch.utils.cpp_extension reads it.

    torch guesses the toolkit from `which nvcc`; a wrapper script such as
    /usr/local/bin/nvcc makes it guess /usr/local, which has no CUDA headers. Take
    the first candidate holding both bin/nvcc and include/cuda_runtime.h."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            os.environ["CUDA_HOME"] = str(home)
            return


def cuda_available() -> tuple[bool, str]:
    """Whether the CUDA kernels can be built here, and why not if they cannot."""
    if os.environ.get("FEATURE3DGS_CPU_ONLY"):
        return False, "FEATURE3DGS_CPU_ONLY is set"
    configure_cuda_home()
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None:
        return False, "this torch build has no CUDA support"
    if CUDA_HOME is None or shutil.which("nvcc", path=str(Path(CUDA_HOME) / "bin")) is None:
        return False, "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    return True, ""


def default_cuda_archs() -> str:
    """The GPUs' own architectures when one is visible, else FALLBACK_CUDA_ARCHS."""
    import torch

    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return FALLBACK_CUDA_ARCHS


def define_macros(with_cuda: bool) -> list[tuple[str, str | None]]:
    """Macros for every source, C++ and CUDA."""
    return [("F3D_WITH_CUDA", None)] if with_cuda else []


def cxx_only_flags(with_cuda: bool) -> list[str]:
    """Flags for the C++ sources only: the CUDA architectures for backend_info().
    Commas, not semicolons, so the value travels unquoted through the shell (nvcc
    would split it at the commas, hence C++ only)."""
    if not with_cuda:
        return []
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", default_cuda_archs())
    return ["-DF3D_CUDA_ARCHS=" + archs.replace(";", ",").replace(" ", ",")]
