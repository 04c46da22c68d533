"""The README's main command, timed: ``python examples/distill_sam.py`` on the built-in scene.

    python benchmarks/main_command.py            # runs the example as a new user would, in a fresh cache

Runs the example in a subprocess (its own Python start, teacher build, feature extraction,
training, evaluation and the SAM click), with the feature cache in a temporary folder so the
teacher's features are extracted as on a first run. Prints a table and writes JSON: device,
threads, versions, git revision, wall time, steps, Gaussians, held-out RGB PSNR and feature
cosine (with the tiny random SAM unless real weights are installed, which the JSON records).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_utils import cpuinfo_values, git_revision, write_result  # noqa: E402


def cpu_name() -> str:
    names = cpuinfo_values("model name")
    return names[0] if names else (platform.processor() or "unknown")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/<date>-<device>-...)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the example's outputs here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "distill_sam"
        env = dict(os.environ, FEATURE3DGS_CACHE=str(Path(tmp) / "cache"))
        env.pop("FEATURE3DGS_EXAMPLE_TINY", None)
        # the built-in scene itself is generated once per machine: not part of the timed run
        subprocess.run([sys.executable, "-c", "from feature3dgs.data import builtin_scene; builtin_scene()"],
                       cwd=ROOT, env=env, check=True)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "examples/distill_sam.py", "--out", str(run_dir)], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"the example failed:\n{r.stderr[-3000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        features = json.loads((run_dir / "feature_metrics.json").read_text())
        plan = next((ln for ln in r.stdout.splitlines() if ln.startswith("estimated time")), "")
        run_dir_mb = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) / 2**20
    cuda = torch.cuda.is_available()
    row = dict(wall_s=wall, train_s=metrics["train_time_s"], steps=metrics["step"], n_gaussians=metrics["n_gaussians"],
               rgb_psnr=metrics["test"]["psnr"], rgb_ssim=metrics["test"]["ssim"],
               feature_cosine=features["features"]["cosine"], feature_psnr=features["features"]["feature_psnr"],
               teacher=features["teacher"]["name"], random_teacher=features["teacher"]["random_weights"],
               printed_estimate=plan, run_folder_mb=run_dir_mb)
    device = torch.cuda.get_device_name(0) if cuda else f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"python examples/distill_sam.py on {device}, torch {torch.__version__}, git {git_revision()}")
    print(f"{'wall':>8} {'train':>8} {'steps':>6} {'Gaussians':>9} | {'RGB PSNR':>8} {'cosine':>6} | teacher")
    print(f"{wall:7.1f}s {row['train_s']:7.1f}s {row['steps']:>6} {row['n_gaussians']:>9} | {row['rgb_psnr']:8.2f} "
          f"{row['feature_cosine']:6.3f} | {row['teacher']}{' (RANDOM weights)' if row['random_teacher'] else ''}")
    print(plan)
    print(f"run folder: {run_dir_mb:.1f} MB")
    result = dict(benchmark="main_command", command="python examples/distill_sam.py", device=device,
                  threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                  git=git_revision(), date=time.strftime("%Y-%m-%d"), targets=dict(wall_s=180, rgb_psnr=30.0,
                                                                                  feature_cosine=0.92),
                  met=dict(wall=wall <= 180, rgb_psnr=row["rgb_psnr"] >= 30.0, feature_cosine=row["feature_cosine"] >= 0.92),
                  **row)
    out = args.out or ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{'cuda' if cuda else 'cpu'}-distill_sam_main.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
