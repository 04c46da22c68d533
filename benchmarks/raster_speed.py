"""Rasterizer speed: forward and forward+backward time of feature3dgs.render.

CPU (default when no GPU): the compiled CPU kernels against the PyTorch
reference, 10k Gaussians at 256x256 and 100k at 512x512, C in {3, 16, 64, 256}.
CUDA (--device cuda): 1M Gaussians at 1920x1080 and 100k at 800x800, C in
{3, 16, 32, 64, 128, 256, 512}, timed with CUDA events (warm-up, median), peak
memory, and gsplat's `rasterization` on the same inputs when gsplat imports.

Prints a table and writes JSON (device, torch, git revision, every figure):

    python benchmarks/raster_speed.py                   # CPU table
    python benchmarks/raster_speed.py --device cuda     # GPU table (+ gsplat)
    python benchmarks/raster_speed.py --quick           # tiny smoke run
"""

from __future__ import annotations

import argparse
import math
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
QUICK_CHANNELS = [3, 16]


def make_scene(n: int, width: int, height: int, channels: int, device: str, seed: int = 0) -> dict:
    """n Gaussians filling the view of a camera 3 units from a unit cube; the
    Gaussian size shrinks with n so that each covers a few tiles, as in trained scenes."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1)
    quats = torch.randn(n, 4, generator=g)
    size = 0.05 * (10_000 / n) ** (1 / 3)
    scales = size * torch.exp(torch.randn(n, 3, generator=g) * 0.5)
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g)
    features = torch.randn(n, channels, generator=g)
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
    header = f"{'N':>9} {'W x H':>11} {'C':>4} | {'fwd ms':>9} {'fwd+bwd ms':>11}"
    header += " | ref fwd+bwd ms  speed-up" if device == "cpu" else " | peak MiB | gsplat fwd / fwd+bwd ms  ratio (gsplat/ours fwd+bwd)  gsplat MiB"
    print(f"feature3dgs {info['version']} on {device} ({device_name}), torch {torch.__version__}, "
          f"{info['openmp_threads']} OpenMP threads, git {git_revision()}")
    print(header)
    print("-" * len(header))
    for n, width, height in configs:
        for c in channels:
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
                row["fwd_bwd_ms"], row["peak_mib"] = time_cuda(fwdbwd, repeats)
                line = (f"{n:>9} {f'{width}x{height}':>11} {c:>4} | {row['fwd_ms']:9.2f} "
                        f"{row['fwd_bwd_ms']:11.2f} | {row['peak_mib']:8.0f}")
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

    result = dict(benchmark="raster_speed", device=device, device_name=device_name,
                  torch=torch.__version__, feature3dgs=info, git=git_revision(),
                  date=time.strftime("%Y-%m-%d"), repeats=repeats, rows=rows)
    out = args.out or ROOT / "benchmarks" / "results" / f"raster_speed-{device}{'-quick' if args.quick else ''}.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
