"""Rasterizer speed: forward and forward+backward time of feature3dgs.render.

CPU (default when no GPU): the compiled CPU kernels against the PyTorch
reference, 10k Gaussians at 256x256 and 100k at 512x512, C in {3, 16, 64, 256}.
CUDA (--device cuda): 1M Gaussians at 1920x1080 and 100k at 800x800, C in
{3, 16, 32, 64, 128, 256, 512}, timed with CUDA events (warm-up, median), peak
memory, and gsplat's `rasterization` on the same inputs when gsplat imports;
--backward-variants ct32 ct16 lb3 times the forward+backward with each compiled
backward (FEATURE3DGS_CUDA_BACKWARD) and reports the ratios to the first.

Prints a table and writes JSON (device, torch, git revision, every figure):

    python benchmarks/raster_speed.py                   # CPU table
    python benchmarks/raster_speed.py --device cuda     # GPU table (+ gsplat)
    python benchmarks/raster_speed.py --quick           # tiny smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import feature3dgs  # noqa: E402
from bench_utils import git_revision, write_result  # noqa: E402
from feature3dgs.rendering import reference  # noqa: E402

CPU_CONFIGS = [(10_000, 256, 256), (100_000, 512, 512)]
CPU_CHANNELS = [3, 16, 64, 256]
CUDA_CONFIGS = [(1_000_000, 1920, 1080), (100_000, 800, 800)]
CUDA_CHANNELS = [3, 16, 32, 64, 128, 256, 512]
QUICK_CONFIGS = [(2_000, 64, 48)]
BACKWARD_VARIANTS = ["ct32", "ct16", "lb3"]  # FEATURE3DGS_CUDA_BACKWARD (csrc/cuda/render_backward.cu)
QUICK_CHANNELS = [3, 16]


def make_scene(n: int, width: int, height: int, channels: int, device: str, seed: int = 0) -> dict:
    """n Gaussians filling the view of a camera 3 units from a unit cube; the
    Gaussian size shrinks with n so that each covers a few tiles, as in trained scenes."""
    # Drawn on the device itself (a CUDA generator for CUDA: 1M x 512 features in
    # milliseconds rather than seconds of CPU time and a copy).
    g = torch.Generator(device=device).manual_seed(seed)
    kw = dict(generator=g, device=device)
    means = (torch.rand(n, 3, **kw) * 2 - 1)
    quats = torch.randn(n, 4, **kw)
    size = 0.05 * (10_000 / n) ** (1 / 3)
    scales = size * torch.exp(torch.randn(n, 3, **kw) * 0.5)
    opacities = torch.rand(n, **kw) * 0.9 + 0.05
    colors = torch.rand(n, 3, **kw)
    features = torch.randn(n, channels, **kw)
    fx = 0.5 * width / math.tan(math.radians(50) / 2)
    K = torch.tensor([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1.0]])
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    tensors = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                   features=features, viewmat=viewmat, K=K)
    return {k: v.to(device) for k, v in tensors.items()} | {"width": width, "height": height}


def _leaves(scene: dict) -> dict:
    return {k: (v.clone().requires_grad_(True) if k in ("means", "quats", "scales", "opacities",
                                                        "colors", "features") else v)
            for k, v in scene.items()}


def _loss(out) -> torch.Tensor:
    return out.rgb.sum() + out.features.sum() + out.depth.sum() * 1e-3


def run_ours(render, scene: dict):
    """Closures for one forward and one forward+backward."""
    def forward():
        with torch.no_grad():
            render(**scene)

    def forward_backward():
        _loss(render(**_leaves(scene))).backward()

    return forward, forward_backward


def run_gsplat(scene: dict):
    """gsplat's rasterization with the features as extra colour channels (rgb + C + depth)."""
    from gsplat import rasterization

    def call(s):
        colors = torch.cat([s["colors"], s["features"]], dim=1)
        q = s["quats"]
        rgbd, alpha, _ = rasterization(
            s["means"], q / q.norm(dim=-1, keepdim=True), s["scales"], s["opacities"], colors,
            s["viewmat"][None], s["K"][None], s["width"], s["height"], render_mode="RGB+ED",
            packed=False)
        return rgbd

    def forward():
        with torch.no_grad():
            call(scene)

    def forward_backward():
        call(_leaves(scene)).sum().backward()

    return forward, forward_backward


@contextlib.contextmanager
def backward_variant(name: str):
    """FEATURE3DGS_CUDA_BACKWARD = name for the block (read by the kernels at every call)."""
    old = os.environ.get("FEATURE3DGS_CUDA_BACKWARD")
    os.environ["FEATURE3DGS_CUDA_BACKWARD"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["FEATURE3DGS_CUDA_BACKWARD"]
        else:
            os.environ["FEATURE3DGS_CUDA_BACKWARD"] = old


def time_cpu(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_cuda(fn, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median ms over repeats (CUDA events) and peak memory in MiB above the baseline."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--quick", action="store_true", help="one tiny configuration (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (median)")
    parser.add_argument("--reference-max-gaussians", type=int, default=20_000,
                        help="time the (slow) PyTorch reference only up to this many Gaussians")
    parser.add_argument("--no-gsplat", action="store_true", help="skip the gsplat comparison")
    parser.add_argument("--channels", type=int, nargs="*", default=None, help="override C values")
    parser.add_argument("--backward-variants", nargs="+", default=["ct32"], choices=BACKWARD_VARIANTS,
                        help="CUDA: time the forward+backward with each FEATURE3DGS_CUDA_BACKWARD variant "
                             "(the first is the reference of the ratios)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop starting new configurations after this many seconds (the JSON says so)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.quick:
        configs, channels = QUICK_CONFIGS, QUICK_CHANNELS
    elif device == "cuda":
        configs, channels = CUDA_CONFIGS, CUDA_CHANNELS
    else:
        configs, channels = CPU_CONFIGS, CPU_CHANNELS
    channels = args.channels or channels
    repeats = args.repeats or (3 if device == "cpu" else 10)

    gsplat_ok = False
    if device == "cuda" and not args.no_gsplat:
        try:
            import gsplat  # noqa: F401
            gsplat_ok = True
        except ImportError as exc:
            print(f"gsplat not importable ({exc}); no comparison", file=sys.stderr)

    info = feature3dgs.backend_info()
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    rows = []
    started = time.perf_counter()
    truncated = False
    header = f"{'N':>9} {'W x H':>11} {'C':>4} | {'fwd ms':>9} {'fwd+bwd ms':>11}"
    variants = args.backward_variants
    extra = "".join(f" {v + '/' + variants[0]:>11}" for v in variants[1:])
    header += (" | ref fwd+bwd ms  speed-up" if device == "cpu" else
               f"{extra} | peak MiB | gsplat fwd / fwd+bwd ms  ratio (gsplat/ours fwd+bwd)  gsplat MiB")
    print(f"feature3dgs {info['version']} on {device} ({device_name}), torch {torch.__version__}, "
          f"{info['openmp_threads']} OpenMP threads, git {git_revision()}")
    print(header)
    print("-" * len(header))
    for n, width, height in configs:
        for c in channels:
            if args.max_seconds is not None and time.perf_counter() - started > args.max_seconds:
                truncated = True
                print(f"--max-seconds {args.max_seconds:g} reached: the remaining configurations are not timed")
                break
            scene = make_scene(n, width, height, c, device)
            fwd, fwdbwd = run_ours(feature3dgs.render, scene)
            row = dict(n=n, width=width, height=height, channels=c)
            if device == "cpu":
                fwd()  # warm-up (first-call allocations)
                row["fwd_ms"] = time_cpu(fwd, repeats)
                row["fwd_bwd_ms"] = time_cpu(fwdbwd, repeats)
                if n <= args.reference_max_gaussians:
                    _, ref_fb = run_ours(reference.render, scene)
                    row["reference_fwd_bwd_ms"] = time_cpu(ref_fb, 1)
                    row["speedup_vs_reference"] = row["reference_fwd_bwd_ms"] / row["fwd_bwd_ms"]
                line = (f"{n:>9} {f'{width}x{height}':>11} {c:>4} | {row['fwd_ms']:9.1f} {row['fwd_bwd_ms']:11.1f}")
                if "reference_fwd_bwd_ms" in row:
                    line += f" | {row['reference_fwd_bwd_ms']:14.0f}  {row['speedup_vs_reference']:7.1f}x"
                else:
                    line += " |              -        -"
            else:
                row["fwd_ms"], row["fwd_peak_mib"] = time_cuda(fwd, repeats)
                for v in variants:
                    with backward_variant(v):
                        row[f"fwd_bwd_ms_{v}"], row[f"peak_mib_{v}"] = time_cuda(fwdbwd, repeats)
                row["fwd_bwd_ms"], row["peak_mib"] = row[f"fwd_bwd_ms_{variants[0]}"], row[f"peak_mib_{variants[0]}"]
                for v in variants[1:]:
                    row[f"{v}_over_{variants[0]}_fwd_bwd"] = row[f"fwd_bwd_ms_{v}"] / row["fwd_bwd_ms"]
                line = (f"{n:>9} {f'{width}x{height}':>11} {c:>4} | {row['fwd_ms']:9.2f} "
                        f"{row['fwd_bwd_ms']:11.2f}"
                        + "".join(f" {row[f'{v}_over_{variants[0]}_fwd_bwd']:10.3f}x" for v in variants[1:])
                        + f" | {row['peak_mib']:8.0f}")
                if gsplat_ok:
                    try:
                        g_fwd, g_fb = run_gsplat(scene)
                        row["gsplat_fwd_ms"], _ = time_cuda(g_fwd, repeats)
                        row["gsplat_fwd_bwd_ms"], row["gsplat_peak_mib"] = time_cuda(g_fb, repeats)
                        row["gsplat_over_ours_fwd_bwd"] = row["gsplat_fwd_bwd_ms"] / row["fwd_bwd_ms"]
                        line += (f" | {row['gsplat_fwd_ms']:8.2f} / {row['gsplat_fwd_bwd_ms']:8.2f}  "
                                 f"{row['gsplat_over_ours_fwd_bwd']:6.2f}x  {row['gsplat_peak_mib']:8.0f}")
                    except Exception as exc:  # report, keep the table going
                        row["gsplat_error"] = repr(exc)
                        line += f" | gsplat failed: {exc!r}"[:80]
                del scene
                torch.cuda.empty_cache()
            rows.append(row)
            print(line, flush=True)
        if truncated:
            break

    result = dict(benchmark="raster_speed", device=device, device_name=device_name,
                  torch=torch.__version__, feature3dgs=info, git=git_revision(),
                  date=time.strftime("%Y-%m-%d"), repeats=repeats, rows=rows,
                  backward_variants=variants if device == "cuda" else None, truncated=truncated)
    out = args.out or ROOT / "benchmarks" / "results" / f"raster_speed-{device}{'-quick' if args.quick else ''}.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
