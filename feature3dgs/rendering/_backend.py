"""Loads the compiled kernels feature3dgs._C.

A build with `pip install --no-build-isolation .` ships the extension prebuilt.
Otherwise (an isolated `pip install .`, or a source checkout without a build)
the same sources are compiled just-in-time on first use and cached by torch in
TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions); one line says so.

The AVX2 and AVX-512 blend kernels are separate modules (feature3dgs._cpu_avx2,
_cpu_avx512; see _build_config.ISA_MODULES). Each is imported, or compiled when
the main module was, only when this CPU supports its instruction set, and is
registered with feature3dgs._C, which picks the kernels at every call
(FEATURE3DGS_CPU_ISA=auto|scalar|baseline|avx2|avx512, default auto: the widest).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

from feature3dgs.rendering import _build as cfg
from feature3dgs.version import __version__

_module: ModuleType | None = None
_isa_modules: dict[str, str] = {}  # registered ISA modules: name -> how they were loaded


def _source_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # the feature3dgs package folder
    for candidate in (here / "_csrc", here.parent / "csrc"):
        if (candidate / "bindings.cpp").exists():
            return candidate
    raise ImportError("feature3dgs: the compiled extension is missing and no kernel sources were "
                      f"found to compile it (looked in {here / '_csrc'} and {here.parent / 'csrc'}); "
                      "reinstall with `pip install --no-build-isolation .`")


def _jit_compile() -> ModuleType:
    cfg.configure_cuda_home()
    from torch.utils.cpp_extension import load

    csrc = _source_dir()
    with_cuda, why = cfg.cuda_available()
    sources = [str(p) for p in cfg.cpu_sources(csrc)]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", cfg.default_cuda_archs())
        sources += [str(p) for p in cfg.cuda_sources(csrc)]
    macros = cfg.define_macros(with_cuda)
    defines = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in macros]
    print(f"feature3dgs: compiling the {'CPU+CUDA' if with_cuda else 'CPU'} kernels just-in-time "
          "(once; cached in TORCH_EXTENSIONS_DIR)" + ("" if with_cuda else f" [{why}]"),
          file=sys.stderr, flush=True)
    return load(
        name="feature3dgs_C",
        sources=sources,
        extra_include_paths=[str(csrc), str(csrc / "include")],
        extra_cflags=cfg.CXX_FLAGS + defines + cfg.cxx_only_flags(with_cuda),
        extra_cuda_cflags=cfg.NVCC_FLAGS + defines,
        extra_ldflags=cfg.LINK_FLAGS,
        with_cuda=with_cuda,
        verbose=False,
    )


def _jit_compile_isa(name: str, source: Path, flags: list[str]) -> ModuleType:
    from torch.utils.cpp_extension import load

    csrc = _source_dir()
    print(f"feature3dgs: compiling the {name} CPU kernels just-in-time (once; cached in "
          "TORCH_EXTENSIONS_DIR)", file=sys.stderr, flush=True)
    return load(name=f"feature3dgs_cpu_{name}", sources=[str(source)],
                extra_include_paths=[str(csrc), str(csrc / "include")], extra_cflags=flags,
                extra_ldflags=cfg.LINK_FLAGS, with_cuda=False, verbose=False)


def _register_isa_modules(module: ModuleType, jit: bool) -> None:
    """Imports (or, after a JIT build of the main module, compiles) each ISA module this
    CPU supports and registers its kernels. A missing or broken module only narrows the
    choice (backend_info() lists what is available); it is never fatal."""
    csrc = None
    for name, source, flags in cfg.isa_modules(Path("csrc")):
        if not module.cpu_isa_supported(name):
            continue  # never load code this CPU cannot run
        try:
            if jit:
                csrc = csrc or _source_dir()
                isa = _jit_compile_isa(name, csrc / source.relative_to("csrc"), flags)
                how = "jit"
            else:
                isa = importlib.import_module(f"feature3dgs._cpu_{name}")
                how = "prebuilt"
            module.register_cpu_kernels(isa.kernels)
            _isa_modules[name] = how
        except Exception as exc:  # noqa: BLE001 (report and fall back to narrower kernels)
            print(f"feature3dgs: the {name} CPU kernels are unavailable ({exc}); using narrower ones",
                  file=sys.stderr, flush=True)


def kernels() -> ModuleType:
    """The compiled module (imported, or compiled on first call), with the ISA modules
    that this CPU supports registered."""
    global _module
    if _module is None:
        try:
            module = importlib.import_module("feature3dgs._C")
            jit = False
        except ImportError:
            module = _jit_compile()
            jit = True
        _register_isa_modules(module, jit)
        _module = module
    return _module


def backend_info() -> dict:
    """Which kernels are compiled and how: {'version', 'cpu': True, 'cuda': bool, 'cuda_archs',
    'openmp_threads', 'tile_size', 'cuda_device': name or None, ...} (the extension's build_info)."""
    info = {"version": __version__, "cpu": True}
    info.update(kernels().build_info())
    info["cuda_device"] = torch.cuda.get_device_name(0) if info["cuda"] and torch.cuda.is_available() else None
    return info


def cpu_cache_info() -> dict:
    """The CPU kernels' host block cache: {'cap_bytes', 'cached_bytes', 'cached_blocks',
    'hits', 'misses'}. The CPU renderer's large outputs and scratch (the (C, H, W)
    features, the (N, C) feature gradients, the backward's pair buffers) come from it, so
    that repeated renders reuse mapped pages instead of paying first-touch page faults;
    FEATURE3DGS_CPU_CACHE_MB caps what it keeps (default 1024, 0 disables it)."""
    return dict(kernels().cpu_cache_info())


def clear_cpu_cache() -> None:
    """Frees the blocks that the CPU kernels' host block cache holds (tensors still in use
    keep theirs, which are freed or cached when released) and resets its counters."""
    kernels().cpu_cache_clear()


def isa_modules() -> dict[str, str]:
    """The registered ISA modules: {name: 'prebuilt' | 'jit'}."""
    kernels()
    return dict(_isa_modules)
