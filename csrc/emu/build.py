"""Builds the SIMT emulator (test-only) with g++ and ninja, just in time.

The emulator compiles every csrc/cuda/*.cu file, unmodified, as C++: each one
with ``-include csrc/emu/prelude.h`` (the CUDA builtins, and shims of cub and
c10's CUDA headers found first on the include path), strict IEEE float math
(``-ffp-contract=off``, no fast math: the FEATURE3DGS_CUDA_STRICT semantics)
and ``-fsanitize=thread`` instrumentation whose callbacks the runtime supplies,
so that race mode is a run-time switch. The objects are linked with the runtime
and the Python module into one extension per *variant*: ``main`` is csrc/cuda
itself; other variants are directories holding a copy of csrc/cuda with changes
(the mutation tests). An object depends only on its .cu file and the headers of
its directory, so a variant that changes one file recompiles one object, and
all variants build in one ninja run (parallel, incremental, cached in
``build_dir``; default ``<repo>/build/emu`` or $FEATURE3DGS_EMU_BUILD_DIR).

    from build import build, load      # csrc/emu on sys.path
    paths = build({"main": ROOT / "csrc" / "cuda"})
    emu = load(paths["main"])          # emu.rasterize_forward(...) on CPU tensors
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
EMU = CSRC / "emu"
MODULE_NAME = "f3d_emu"

# Kernel objects: the strict float semantics of the CPU twin and of
# FEATURE3DGS_CUDA_STRICT=1 (no fast math, no FMA contraction), line tables for
# the race reports' addresses, and ThreadSanitizer instrumentation without
# function entry/exit hooks.
KERNEL_FLAGS = ["-O2", "-g1", "-ffp-contract=off", "-fno-fast-math", "-fsanitize=thread",
                "--param=tsan-instrument-func-entry-exit=0"]


def _torch_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for code using the torch headers and libraries."""
    import torch
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    compile_flags = ["-std=c++20", "-fPIC", "-fvisibility=hidden", "-fopenmp",
                     f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DF3D_WITH_CUDA"] + includes
    libs = cpp_extension.library_paths()
    link = ["-shared", "-fopenmp"] + [f"-L{p}" for p in libs] + [f"-Wl,-rpath,{p}" for p in libs]
    link += ["-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python"]
    return compile_flags, link


def _pybind_flags() -> list[str]:
    from torch.utils import cpp_extension

    flags = [f"-I{sysconfig.get_paths()['include']}", "-DTORCH_API_INCLUDE_EXTENSION_H",
             f"-DTORCH_EXTENSION_NAME={MODULE_NAME}"]
    get_abi = getattr(cpp_extension, "_get_pybind11_abi_build_flags", None)
    if get_abi is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags += list(get_abi())
    return flags


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _dir_headers_digest(directory: Path) -> str:
    """Digest of the files of a kernel directory other than its .cu files (its headers)."""
    parts: list[bytes | str] = []
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix != ".cu":
            parts += [p.name, p.read_bytes()]
    return _digest(*parts)


def _q(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _ninja_path(p: Path) -> str:
    return str(p).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def default_build_dir() -> Path:
    return Path(os.environ.get("FEATURE3DGS_EMU_BUILD_DIR", ROOT / "build" / "emu"))


def build(variants: Mapping[str, Path] | None = None, *, build_dir: Path | None = None,
          jobs: int | None = None) -> dict[str, Path]:
    """Compiles the emulator for each variant and returns {name: path of its extension}.

    variants: name -> a directory of .cu files (default {"main": csrc/cuda}). Names
    are letters, digits and '_'. Raises RuntimeError with the compiler's output when
    the build fails, naming the variant's directory.
    """
    variants = dict(variants or {"main": CSRC / "cuda"})
    for name, directory in variants.items():
        if not name.replace("_", "").isalnum():
            raise ValueError(f"variant name {name!r}: use letters, digits and '_'")
        if not sorted(Path(directory).glob("*.cu")):
            raise ValueError(f"variant {name!r}: no .cu files in {directory}")
    out = Path(build_dir or default_build_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    compile_flags, link_flags = _torch_flags()
    shared_includes = [f"-I{EMU / 'shim'}", f"-I{EMU}", f"-I{CSRC}", f"-I{CSRC / 'include'}"]
    # The shims first: <c10/cuda/...> and <cub/cub.cuh> must resolve to csrc/emu/shim.
    kernel_cmd = ["g++"] + shared_includes + compile_flags + KERNEL_FLAGS + [
        "-include", str(EMU / "prelude.h"), "-x", "c++"]
    lines = [
        "ninja_required_version = 1.3",
        f"rule cxx\n  command = $cmd -MMD -MF $out.d -c $in -o $out\n  depfile = $out.d\n  deps = gcc\n"
        "  description = CXX $in",
        "rule link\n  command = g++ $in -o $out $ldflags\n  description = LINK $out",
        f"ldflags = {_q(link_flags)}",
    ]
    runtime_o = out / "runtime.o"
    module_o = out / "module.o"
    lines.append(f"build {_ninja_path(runtime_o)}: cxx {_ninja_path(EMU / 'runtime.cpp')}\n"
                 f"  cmd = {_q(['g++'] + compile_flags + [f'-I{EMU}', '-O2'])}")
    lines.append(f"build {_ninja_path(module_o)}: cxx {_ninja_path(EMU / 'module.cpp')}\n"
                 f"  cmd = {_q(['g++'] + shared_includes + compile_flags + _pybind_flags() + ['-O1'])}")
    selftest_o = out / "selftest.o"
    lines.append(f"build {_ninja_path(selftest_o)}: cxx {_ninja_path(EMU / 'selftest.cpp')}\n"
                 f"  cmd = {_q(kernel_cmd)}")
    flags_digest = _digest(*kernel_cmd)
    objects_seen: set[Path] = set()
    results: dict[str, Path] = {}
    for name, directory in variants.items():
        directory = Path(directory).resolve()
        headers = _dir_headers_digest(directory)
        objs = []
        for cu in sorted(directory.glob("*.cu")):
            obj = out / f"{cu.stem}-{_digest(flags_digest, headers, cu.read_bytes(), str(directory))}.o"
            objs.append(obj)
            if obj not in objects_seen:
                objects_seen.add(obj)
                lines.append(f"build {_ninja_path(obj)}: cxx {_ninja_path(cu)}\n  cmd = {_q(kernel_cmd)}")
        so = out / f"{MODULE_NAME}_{name}.so"
        lines.append(f"build {_ninja_path(so)}: link {_ninja_path(runtime_o)} {_ninja_path(module_o)} "
                     f"{_ninja_path(selftest_o)} "
                     + " ".join(_ninja_path(o) for o in objs))
        results[name] = so
    (out / "build.ninja").write_text("\n".join(lines) + "\n")
    ninja = shutil.which("ninja") or shutil.which("ninja", path=str(Path(sys.executable).parent))
    if ninja is None:
        raise RuntimeError("the emulator build needs ninja (pip install ninja)")
    cmd = [ninja, "-C", str(out)] + (["-j", str(jobs)] if jobs else []) + [str(p) for p in results.values()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"emulator build failed (variants {dict((k, str(v)) for k, v in variants.items())}):\n"
                           + (proc.stdout + proc.stderr)[-8000:])
    return results


_loaded: dict[Path, ModuleType] = {}


def load(path: Path) -> ModuleType:
    """Imports one built variant. CPython keeps one extension module per name, so a
    process can load only one variant (the mutation test runs each in a subprocess)."""
    path = Path(path).resolve()
    if _loaded and path not in _loaded:
        raise RuntimeError(f"the emulator variant {next(iter(_loaded))} is already loaded in this process; "
                           f"load {path} in another process")
    if path not in _loaded:
        import torch  # noqa: F401  (the torch libraries must be loaded first)

        spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the emulator module {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[path] = module
    return _loaded[path]


if __name__ == "__main__":
    for variant, so in build().items():
        print(variant, so)
