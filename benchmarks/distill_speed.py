"""Distillation step time with and without the speed-up decoder, and the student's
feature quality on held-out views.

On the built-in synthetic scene (or --data) with the label teacher (multi-view
consistent 256-d or --teacher-dim maps from the class labels; no weights needed),
it trains the same number of steps with D_render = teacher dim (no decoder) and
with the decoder at --render-dim, and reports ms/step, feature PSNR and cosine
similarity to the teacher on the test views. Prints a table, writes JSON.

    python benchmarks/distill_speed.py [--steps 300] [--teacher-dim 256] [--render-dim 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature3dgs.data import builtin_scene, load_scene  # noqa: E402
from feature3dgs.distill.distill import DistillConfig, distill  # noqa: E402
from feature3dgs.distill.labels import label_feature_cache  # noqa: E402
from feature3dgs.training.config import TrainConfig  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_utils import git_revision, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--teacher-dim", type=int, default=256)
    parser.add_argument("--render-dim", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_speed.json")
    args = parser.parse_args(argv)

    scene = load_scene(args.data or builtin_scene())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = label_feature_cache(scene, Path(tmp), dim=args.teacher_dim)
        for render_dim in (args.teacher_dim, args.render_dim):
            tc = TrainConfig(iterations=args.steps, device=args.device, lpips=None, tensorboard=False,
                             progress=False, save_test_renders=False, eval_every=0)
            t0 = time.perf_counter()
            m = distill(scene, None, tc, DistillConfig(render_dim=render_dim), cache=cache)
            wall = time.perf_counter() - t0
            f, t = m.features, m.train
            rows.append(dict(render_dim=render_dim, decoder=render_dim != args.teacher_dim,
                             ms_per_step=1e3 * t.train_time_s / t.step, wall_s=wall,
                             n_gaussians=t.n_gaussians, feature_psnr=f.feature_psnr,
                             cosine=f.cosine, rgb_psnr=t.eval.psnr, device=t.device))
    base = rows[0]["ms_per_step"]
    print(f"distillation on {scene.source_path}, teacher dim {args.teacher_dim}, {args.steps} steps, "
          f"device {rows[0]['device']}, git {git_revision()}")
    print(f"{'D_render':>8} {'decoder':>7} | {'ms/step':>8} {'speed-up':>8} | {'feat PSNR':>9} {'cosine':>6} | {'RGB PSNR':>8}")
    for r in rows:
        print(f"{r['render_dim']:>8} {str(r['decoder']):>7} | {r['ms_per_step']:8.1f} {base / r['ms_per_step']:7.2f}x | "
              f"{r['feature_psnr']:9.2f} {r['cosine']:6.3f} | {r['rgb_psnr']:8.2f}")
    result = dict(benchmark="distill_speed", torch=torch.__version__, git=git_revision(),
                  date=time.strftime("%Y-%m-%d"), steps=args.steps, teacher_dim=args.teacher_dim, rows=rows)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
