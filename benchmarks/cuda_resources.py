"""Registers, shared memory, spills and theoretical occupancy of every CUDA kernel.

Compiles each csrc/cuda/*.cu file's device code with the build's nvcc flags
(feature3dgs/rendering/_build.py: fast math, or strict with FEATURE3DGS_CUDA_STRICT=1)
and `-Xptxas -v` for sm_80 and sm_90, reads ptxas's report per kernel, computes the
theoretical occupancy (resident blocks per SM from registers, shared memory, warps
and the block limit), prints a table and writes JSON. No GPU needed. The resource
gates (tests/test_cuda_resources.py) call `measure` and `gate_failures`:

  - no register spill and no local stack frame (except the kernels in ALLOWED_SPILLS,
    each with a byte cap);
  - static shared memory at most 46 KB per block (the limit is 48 KB).

    python benchmarks/cuda_resources.py                 # table + benchmarks/results JSON
    python benchmarks/cuda_resources.py --check         # exit 1 when a gate fails
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "feature3dgs" / "rendering"))

import _build as cfg  # noqa: E402  (plain module, no torch import)
from bench_utils import git_revision, write_result  # noqa: E402

ARCHS = (80, 90)
SHARED_LIMIT_BYTES = 46 * 1024
# Per-SM limits (CUDA programming guide, compute capabilities 8.0 and 9.0).
SM_LIMITS = {
    80: dict(registers=65536, max_warps=64, max_blocks=32, shared=164 * 1024, reserved_shared=1024),
    90: dict(registers=65536, max_warps=64, max_blocks=32, shared=228 * 1024, reserved_shared=1024),
}
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
THREADS_PER_BLOCK = 256  # every kernel's __launch_bounds__ (kBlockPixels = kThreads1D)
# Kernels allowed a stack frame, with the most bytes they may use: the
# __launch_bounds__(256, 3) backward is an experiment (ptxas caps it at 80
# registers and spills), kept compiled so that the GPU check can time it.
ALLOWED_SPILLS = {"render_backward_kernel<32, 3>": 64}

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def nvcc_path() -> str | None:
    cfg.configure_cuda_home()
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _torch_includes() -> list[str]:
    from torch.utils import cpp_extension

    return [f"-I{p}" for p in cpp_extension.include_paths()]


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short_name(demangled: str) -> str:
    """'void f3d::(anonymous namespace)::render_backward_kernel<32, 3>(f3d::...)' -> 'render_backward_kernel<32, 3>'."""
    head = demangled.split("(", 1)[0] if "(anonymous" not in demangled else demangled
    m = re.search(r"(\w+(?:<[^()]*>)?)\((?!anonymous)", demangled)
    return m.group(1) if m else head


def occupancy(registers: int, shared: int, arch: int, threads: int = THREADS_PER_BLOCK) -> dict:
    lim = SM_LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by_regs = (lim["registers"] // regs_per_warp) // warps if regs_per_warp else lim["max_blocks"]
    by_shared = lim["shared"] // (shared + lim["reserved_shared"]) if shared else lim["max_blocks"]
    by_warps = lim["max_warps"] // warps
    blocks = min(by_regs, by_shared, by_warps, lim["max_blocks"])
    limiter = min((by_regs, "registers"), (by_shared, "shared memory"), (by_warps, "warps"))[1]
    return dict(blocks_per_sm=blocks, occupancy=blocks * warps / lim["max_warps"], limited_by=limiter,
                blocks_by_registers=by_regs, blocks_by_shared=by_shared)


def parse_ptxas(text: str) -> list[dict]:
    rows, cur = [], None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            cur = dict(mangled=m.group(1), arch=int(m.group(2)), stack_frame=0, spill_stores=0, spill_loads=0)
        elif cur and (m := _FRAME.search(line)):
            cur.update(stack_frame=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif cur and (m := _USED.search(line)):
            cur.update(registers=int(m.group(1)), shared=int(m.group(2) or 0))
            rows.append(cur)
            cur = None
    return rows


def compile_file(nvcc: str, cu: Path, flags: list[str], archs=ARCHS) -> str:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "--fatbin", "-o", str(Path(tmp) / "out.fatbin"), "-Xptxas", "-v"] + gencode + flags + [str(cu)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {cu.name}:\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def measure(archs=ARCHS, jobs: int = 2) -> dict:
    """Compiles every kernel file and returns the JSON-ready result (rows per kernel and arch)."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    csrc = ROOT / "csrc"
    flags = ["-std=c++20", *cfg.NVCC_FLAGS, "-DF3D_WITH_CUDA", f"-I{csrc}", f"-I{csrc / 'include'}",
             *_torch_includes()]
    files = cfg.cuda_sources(csrc)
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        logs = dict(zip(files, pool.map(lambda f: compile_file(nvcc, f, flags, archs), files)))
    rows = []
    for cu, log in logs.items():
        for r in parse_ptxas(log):
            r["file"] = cu.name
            rows.append(r)
    names = demangle(sorted({r["mangled"] for r in rows}))
    for r in rows:
        full = names[r["mangled"]]
        r["library"] = "cub::" in full.split("(", 1)[0]
        if r["library"]:  # cub's own kernels: their block sizes are cub's, not ours
            m = re.search(r"(\w+)<", full.split("(", 1)[0])
            r["kernel"] = "cub::" + (m.group(1) if m else full[:60])
            r.update(blocks_per_sm=None, occupancy=None, limited_by="(cub's block size)")
        else:
            r["kernel"] = short_name(full)
            r.update(occupancy(r["registers"], r["shared"], r["arch"]))
    rows.sort(key=lambda r: (r["file"], r["kernel"], r["arch"]))
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return dict(benchmark="cuda_resources", device="none (ptxas -v; theoretical occupancy)",
                nvcc=version[-1] if version else "?", nvcc_flags=cfg.NVCC_FLAGS, archs=list(archs),
                threads_per_block=THREADS_PER_BLOCK, shared_limit_bytes=SHARED_LIMIT_BYTES,
                allowed_spills=ALLOWED_SPILLS, git=git_revision(), date=time.strftime("%Y-%m-%d"),
                compile_seconds=round(time.time() - t0, 1), rows=rows)


def gate_failures(result: dict) -> list[str]:
    """The resource gates: spills / stack frames and static shared memory."""
    failures = []
    for r in result["rows"]:
        if r.get("library"):
            continue
        where = f"{r['kernel']} ({r['file']}, sm_{r['arch']})"
        spill = r["stack_frame"] or r["spill_stores"] or r["spill_loads"]
        cap = ALLOWED_SPILLS.get(r["kernel"])
        if spill and (cap is None or max(r["stack_frame"], r["spill_stores"], r["spill_loads"]) > cap):
            failures.append(f"{where}: {r['stack_frame']} bytes stack frame, {r['spill_stores']} bytes spill "
                            f"stores, {r['spill_loads']} bytes spill loads"
                            + (f" (allowed at most {cap})" if cap else ""))
        if r["shared"] > SHARED_LIMIT_BYTES:
            failures.append(f"{where}: {r['shared']} bytes of static shared memory > {SHARED_LIMIT_BYTES}")
    if not result["rows"]:
        failures.append("ptxas reported no kernels")
    return failures


def print_table(result: dict) -> None:
    head = f"{'kernel':<44} {'arch':>5} {'regs':>5} {'smem B':>7} {'stack':>6} {'spill':>6} {'blk/SM':>7} {'occ':>6}  limited by"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        blocks = "-" if r["blocks_per_sm"] is None else r["blocks_per_sm"]
        occ = "-" if r["occupancy"] is None else f"{r['occupancy']:.1%}"
        print(f"{r['kernel']:<44} {'sm_' + str(r['arch']):>5} {r['registers']:>5} {r['shared']:>7} "
              f"{r['stack_frame']:>6} {r['spill_stores']:>6} {blocks:>7} {occ:>6}  {r['limited_by']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a resource gate fails")
    parser.add_argument("--jobs", type=int, default=2, help="files compiled at a time")
    args = parser.parse_args(argv)
    result = measure(jobs=args.jobs)
    print(f"nvcc {result['nvcc']}, flags {' '.join(result['nvcc_flags'])}, git {result['git']} "
          f"({result['compile_seconds']} s to compile)")
    print_table(result)
    failures = gate_failures(result)
    result["gate_failures"] = failures
    strict = "-strict" if os.environ.get("FEATURE3DGS_CUDA_STRICT") == "1" else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"{result['date']}-ptxas{strict}-cuda_resources.json"
    write_result(out, result)
    for f in failures:
        print("GATE FAILED:", f)
    return 1 if (failures and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
