"""Distillation step time with and without the speed-up decoder, and the student's
feature quality on held-out views.

On the built-in synthetic scene (or --data) with the label teacher (multi-view
consistent 256-d or --teacher-dim maps from the class labels; no weights needed),
it trains the same number of steps with D_render = teacher dim (no decoder) and
with the decoder at --render-dim, and reports ms/step, feature PSNR and cosine
similarity to the teacher on the test views. Prints a table, writes JSON.

On the CPU, --cpu-paths also runs every configuration with the CPU rasterizer of
before the SIMD work (FEATURE3DGS_CPU_ISA=scalar, culling off, atomic backward:
`legacy`) and reports the step-time ratio, with the share of the step spent in
the compiled kernels (the rest is Python, autograd, losses and the optimizer).

--baseline-checkout DIR runs this benchmark's counterpart in another checkout of the
project (an older revision, its extension built in place), in a subprocess before this
one's, and reports each configuration's step-time ratio against it: the "same settings,
old code" comparison in one run.

    python benchmarks/distill_speed.py [--steps 300] [--teacher-dim 256] [--render-dim 64] [--cpu-paths]
        [--baseline-checkout ../old]      # git worktree add ../old REV; python setup.py build_ext --inplace
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

KERNELS = ("preprocess_forward", "preprocess_backward", "rasterize_forward", "rasterize_backward")
CPU_PATHS = {"legacy": {"FEATURE3DGS_CPU_ISA": "scalar", "FEATURE3DGS_CPU_CULL": "0",
                        "FEATURE3DGS_CPU_DETERMINISTIC": "0"},
             "default": {}}


class KernelTimer:
    """Wall time spent in the compiled kernels' entry points while active."""

    def __init__(self):
        from feature3dgs.rendering._backend import kernels

        self.module, self.seconds, self.saved = kernels(), 0.0, {}

    def __enter__(self):
        for name in KERNELS:
            fn = self.saved[name] = getattr(self.module, name)

            def timed(*args, _fn=fn):
                t0 = time.perf_counter()
                try:
                    return _fn(*args)
                finally:
                    self.seconds += time.perf_counter() - t0

            setattr(self.module, name, timed)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(self.module, name, fn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--teacher-dim", type=int, default=256)
    parser.add_argument("--render-dim", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cpu-paths", action="store_true",
                        help="also run with the legacy CPU rasterizer and report the ratios")
    parser.add_argument("--baseline-checkout", type=Path, default=None,
                        help="another checkout of the project (built in place) to compare against, same settings")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_speed.json")
    args = parser.parse_args(argv)
    path_names = list(CPU_PATHS) if args.cpu_paths else ["default"]
    baseline = run_baseline(args) if args.baseline_checkout else None

    scene = load_scene(args.data or builtin_scene())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = label_feature_cache(scene, Path(tmp), dim=args.teacher_dim)
        for path in path_names:
            for render_dim in (args.teacher_dim, args.render_dim):
                tc = TrainConfig(iterations=args.steps, device=args.device, lpips=None, tensorboard=False,
                                 progress=False, save_test_renders=False, eval_every=0)
                saved_env = {k: os.environ.get(k) for k in CPU_PATHS["legacy"]}
                os.environ.update(CPU_PATHS[path])
                try:
                    with KernelTimer() as kt:
                        t0 = time.perf_counter()
                        m = distill(scene, None, tc, DistillConfig(render_dim=render_dim), cache=cache)
                        wall = time.perf_counter() - t0
                finally:
                    for k, v in saved_env.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                f, t = m.features, m.train
                rows.append(dict(cpu_path=path, render_dim=render_dim, decoder=render_dim != args.teacher_dim,
                                 ms_per_step=1e3 * t.train_time_s / t.step, wall_s=wall,
                                 kernel_share=kt.seconds / wall, kernel_s=kt.seconds,
                                 n_gaussians=t.n_gaussians, feature_psnr=f.feature_psnr,
                                 cosine=f.cosine, rgb_psnr=t.eval.psnr, device=t.device))
    base = rows[0]["ms_per_step"]
    legacy = {r["render_dim"]: r["ms_per_step"] for r in rows if r["cpu_path"] == "legacy"}
    if baseline is not None:
        print(f"baseline: {args.baseline_checkout} at git {baseline['git']}, same settings")
        print(f"{'baseline':>8} {'D_render':>8} {'decoder':>7} | {'ms/step':>8}")
        for b in baseline["rows"]:
            print(f"{'':>8} {b['render_dim']:>8} {str(b['decoder']):>7} | {b['ms_per_step']:8.1f}")
        old = {b["render_dim"]: b["ms_per_step"] for b in baseline["rows"]}
        for r in rows:
            if r["render_dim"] in old:
                r["speedup_vs_baseline"] = old[r["render_dim"]] / r["ms_per_step"]
    print(f"distillation on {scene.source_path}, teacher dim {args.teacher_dim}, {args.steps} steps, "
          f"device {rows[0]['device']}, git {git_revision()}")
    print(f"{'CPU path':>8} {'D_render':>8} {'decoder':>7} | {'ms/step':>8} {'speed-up':>8} {'vs legacy':>9} "
          f"{'kernels':>7} | {'feat PSNR':>9} {'cosine':>6} | {'RGB PSNR':>8}")
    for r in rows:
        if r["render_dim"] in legacy:
            r["speedup_vs_legacy_cpu_path"] = legacy[r["render_dim"]] / r["ms_per_step"]
        vs = f"{r['speedup_vs_legacy_cpu_path']:8.2f}x" if "speedup_vs_legacy_cpu_path" in r else f"{'-':>9}"
        vb = f" | {r['speedup_vs_baseline']:6.2f}x vs baseline" if "speedup_vs_baseline" in r else ""
        print(f"{r['cpu_path']:>8} {r['render_dim']:>8} {str(r['decoder']):>7} | {r['ms_per_step']:8.1f} "
              f"{base / r['ms_per_step']:7.2f}x {vs} {100 * r['kernel_share']:6.0f}% | "
              f"{r['feature_psnr']:9.2f} {r['cosine']:6.3f} | {r['rgb_psnr']:8.2f}{vb}")
    result = dict(benchmark="distill_speed", torch=torch.__version__, git=git_revision(),
                  date=time.strftime("%Y-%m-%d"), steps=args.steps, teacher_dim=args.teacher_dim, rows=rows,
                  baseline=baseline, threads=torch.get_num_threads())
    write_result(args.out, result)
    return 0


def run_baseline(args) -> dict:
    """Runs benchmarks/distill_speed.py of args.baseline_checkout with the same settings, in a
    subprocess (its own feature3dgs), and returns its JSON result with its output."""
    root = args.baseline_checkout.resolve()
    script = root / "benchmarks" / "distill_speed.py"
    if not script.is_file():
        raise SystemExit(f"--baseline-checkout {root}: no benchmarks/distill_speed.py there")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        cmd = [sys.executable, str(script), "--steps", str(args.steps), "--teacher-dim", str(args.teacher_dim),
               "--render-dim", str(args.render_dim), "--out", str(out)]
        if args.data:
            cmd += ["--data", str(args.data)]
        env = dict(os.environ, PYTHONPATH=str(root))
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if r.returncode != 0 or not out.is_file():
            raise SystemExit(f"the baseline run in {root} failed:\n{(r.stdout + r.stderr)[-3000:]}")
        result = json.loads(out.read_text())
    result["checkout"] = str(root)
    return result


if __name__ == "__main__":
    sys.exit(main())
