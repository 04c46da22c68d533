"""Data-parallel scaling: time per image seen and final quality for 1 and 2 processes.

    python benchmarks/distributed_scaling.py                    # CPU (gloo), built-in scene
    python benchmarks/distributed_scaling.py --device cuda      # GPUs (NCCL), one per process

Each configuration trains the same number of images seen: P processes with one view each per
step for STEPS / P steps (the learning rates follow the batch size, see docs/training.md), so the
final quality should match. Every process of a run gets ``--threads`` CPU threads (default: the
machine's cores divided by P), so on a CPU the processes share the same cores. Prints a table and
writes JSON (device, versions, git revision, every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_utils import git_revision, write_result  # noqa: E402

from feature3dgs.data import builtin_scene  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, args, out: Path) -> dict:
    steps = args.images // processes
    threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
    cmd = [sys.executable, "-m", "feature3dgs", "train", "--data", str(args.data), "--out", str(out),
           "--iterations", str(steps), "--strategy", "mcmc", "--max-gaussians", str(args.max_gaussians),
           "--no-progress", "--lpips", "none", "--no-tensorboard", "--eval-every", "0", "--checkpoint-every", "0",
           "--threads", str(threads), "--device", args.device]
    port = free_port()
    t0 = time.perf_counter()
    procs = []
    for rank in range(processes):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if processes > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes),
                       LOCAL_WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{processes} process(es) failed:\n{err[-3000:]}")
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    split = "test" if "test" in m else "train"
    return dict(processes=processes, threads_per_process=threads, steps=steps, images_seen=steps * processes,
                train_s=m["train_time_s"], wall_s=wall, ms_per_image=1e3 * m["train_time_s"] / (steps * processes),
                psnr=m[split]["psnr"], ssim=m[split]["ssim"], n_gaussians=m["n_gaussians"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="scene (default: the built-in one)")
    ap.add_argument("--images", type=int, default=600, help="images seen per configuration")
    ap.add_argument("--max-gaussians", type=int, default=20000)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores / P)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/<date>-<device>-...)")
    args = ap.parse_args(argv)
    args.data = args.data or builtin_scene()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.processes:
            rows.append(run(p, args, Path(tmp) / f"p{p}"))
    base = rows[0]["ms_per_image"]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    print(f"data-parallel scaling on {args.data}, {args.images} images seen each, {device}, git {git_revision()}")
    print(f"{'procs':>5} {'threads':>7} {'steps':>6} | {'ms/image':>9} {'speed-up':>8} | {'PSNR':>6} {'SSIM':>6} {'N':>7}")
    for r in rows:
        print(f"{r['processes']:>5} {r['threads_per_process']:>7} {r['steps']:>6} | {r['ms_per_image']:9.1f} "
              f"{base / r['ms_per_image']:7.2f}x | {r['psnr']:6.2f} {r['ssim']:6.3f} {r['n_gaussians']:>7}")
    result = dict(benchmark="distributed_scaling", device=device, torch=torch.__version__, git=git_revision(),
                  date=time.strftime("%Y-%m-%d"), images_seen=args.images, rows=rows,
                  speedup=[base / r["ms_per_image"] for r in rows])
    out = args.out or ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{args.device.split(':')[0]}-distributed_scaling.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
