"""Shared plumbing of the distillation examples: arguments, teacher fallback, reporting."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from feature3dgs.data import builtin_scene, load_scene
from feature3dgs.distill.distill import DistillConfig, DistillResult, distill
from feature3dgs.distill.teachers import build_teacher
from feature3dgs.rendering.device import resolve_device
from feature3dgs.run import Run, RunDir, load_run
from feature3dgs.training.config import TrainConfig


def add_common_args(parser: argparse.ArgumentParser, default_out: str, default_dim: int) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="scene folder (COLMAP, Blender or transforms.json); default: the built-in synthetic scene")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--render-dim", type=int, default=default_dim,
                        help="per-Gaussian feature size; the 1x1-conv decoder lifts it to the teacher's")
    parser.add_argument("--background", default="black")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (CI smoke test)")


def build_teacher_or_tiny(kind: str, allow_random: bool, **kwargs):
    """The real teacher when its weights are found, else (when allowed) a tiny random one."""
    try:
        return build_teacher(kind, allow_download=False, **kwargs)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        if not allow_random:
            raise
        print(f"{kind} weights not available ({exc}).\nFalling back to a tiny randomly initialised "
              f"{kind} model: the run only exercises the pipeline.", file=sys.stderr)
        return build_teacher(kind, random_weights=True)


def run(args: argparse.Namespace, teacher) -> DistillResult:
    data = args.data or builtin_scene()
    scene = load_scene(data, background=args.background)
    iterations = 30 if args.quick else args.iterations
    tc = TrainConfig(data=str(data), background=args.background, iterations=iterations, device=args.device, lpips=None, tensorboard=False,
                     progress=not args.quick, max_gaussians=4000 if args.quick else None,
                     init_random_points=2000 if args.quick else 100_000)
    dc = DistillConfig(render_dim=args.render_dim)
    print(f"scene: {scene.source_path} ({len(scene.train_views)} train / {len(scene.test_views)} test views); "
          f"teacher {teacher.name} ({teacher.dim}-d); {args.render_dim}-d features per Gaussian; "
          f"{iterations} steps")
    result = distill(scene, RunDir(args.out), tc, dc, teacher=teacher)
    report(result, args.out)
    return result


def report(result: DistillResult, out: Path) -> None:
    curve = result.feature_loss_curve
    marks = sorted({0, len(curve) // 4, len(curve) // 2, 3 * len(curve) // 4, len(curve) - 1})
    print("feature loss (L1 to the teacher):")
    for i in marks:
        step, value = curve[i]
        print(f"  step {step:6d}: {value:.4f}  " + "#" * max(1, int(40 * value / max(curve[0][1], 1e-9))))
    f = result.features
    print(f"held-out views: RGB PSNR {result.train.eval.psnr:.2f} dB; features vs teacher: "
          f"PSNR {f.feature_psnr:.2f} dB, cosine {f.cosine:.3f}")
    if result.teacher.random_weights:
        print("(teacher with RANDOM weights: these figures say nothing about feature quality)")
    print(f"outputs in {out.resolve()}: point_cloud.ply (with features), decoder.pt, "
          "renders/features/*.png (render | student | teacher, one PCA), metrics")


def add_scene_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Arguments of the application examples: an existing run, or a quick one made here."""
    parser.add_argument("--run", type=Path, default=None,
                        help="a distillation output folder; default: distil one on the built-in scene first")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--iterations", type=int, default=1000, help="steps of the distillation made here")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (CI smoke test)")


def load_or_distill(args: argparse.Namespace, kind: str, render_dim: int) -> tuple[Run, object]:
    """The Run of ``args.run``, or of a distillation (teacher ``kind``, tiny random
    weights when the real ones are missing) of the built-in scene written to ``args.out/run``;
    and its scene."""
    run_dir = args.run
    if run_dir is None:
        teacher = build_teacher_or_tiny(kind, allow_random=True)
        ns = argparse.Namespace(data=None, out=args.out / "run", iterations=args.iterations, render_dim=render_dim,
                                background="black", device=args.device, quick=args.quick)
        run(ns, teacher)
        run_dir = ns.out
    fs = load_run(run_dir, device=resolve_device(args.device))
    return fs, fs.load_data()
