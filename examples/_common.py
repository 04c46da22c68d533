"""Shared plumbing of the distillation examples: arguments, the training recipe, the teacher
fallback, the plan printed at the start (with a time estimate measured on this device), and the
report at the end."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from feature3dgs.data import builtin_scene, load_scene
from feature3dgs.distill.distill import DistillConfig, DistillResult, FeatureDistillation, distill
from feature3dgs.distill.teachers import build_teacher
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import GaussianModel, random_init_bounds
from feature3dgs.rendering.device import resolve_device
from feature3dgs.run import Run, RunDir, load_run
from feature3dgs.training.config import TrainConfig
from feature3dgs.training.mcmc import default_budget
from feature3dgs.training.trainer import Trainer

#: The recipe on a CPU: 3DGS-MCMC density control within a Gaussian budget derived from the
#: training pixel count (training.mcmc.default_budget: 24 576 for the built-in 24 views of 128x128),
#: features learnt at twice the default rate, and as many steps as the quality target needs
#: with a margin (held-out RGB PSNR >= 30 dB, feature cosine >= 0.92: 1300 steps gave 30.2 dB, 2000 give
#: 30.9 dB in about 2 minutes on 2 cores; benchmarks/results/*-distill_sam_main.json).
CPU_STEPS = 2000
LR_FEATURES = 5e-3
#: On a GPU the same command runs the full 3DGS schedule.
GPU_STEPS = 30_000
#: The tiny setting (tests and smoke runs): set FEATURE3DGS_EXAMPLE_TINY=1 or pass --quick.
TINY_ENV = "FEATURE3DGS_EXAMPLE_TINY"


def tiny_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quick", False)) or os.environ.get(TINY_ENV, "") not in ("", "0")


def add_common_args(parser: argparse.ArgumentParser, default_out: str, default_dim: int) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="scene folder (COLMAP, Blender or transforms.json); default: the built-in synthetic scene")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"training steps (default: {CPU_STEPS} on a CPU, {GPU_STEPS} on a GPU)")
    parser.add_argument("--render-dim", type=int, default=default_dim,
                        help="per-Gaussian feature size; the 1x1-conv decoder lifts it to the teacher's")
    parser.add_argument("--background", default="black")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help=f"a tiny run (CI smoke test; also {TINY_ENV}=1)")


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


def recipe(args: argparse.Namespace, data: Path, device: torch.device) -> TrainConfig:
    """The training config of the examples (see CPU_STEPS / GPU_STEPS / the tiny setting)."""
    tiny = tiny_requested(args)
    steps = args.iterations or (30 if tiny else GPU_STEPS if device.type == "cuda" else CPU_STEPS)
    return TrainConfig(data=str(data), background=args.background, iterations=steps, device=str(device),
                       strategy="mcmc", max_gaussians=3000 if tiny else None, lpips=None, tensorboard=False,
                       progress=not tiny, eval_every=0, checkpoint_every=0 if tiny else None,
                       init_random_points=2000 if tiny else 10_000, lr_features=LR_FEATURES)


class _ZeroTargets:
    """Stands in for the feature cache while timing: zero teacher maps of the right shape."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape

    def load(self, name: str, device=None) -> torch.Tensor:
        return torch.zeros(self.shape, device=device)


def estimate_train_seconds(scene, tc: TrainConfig, render_dim: int, teacher, repeats: int = 3) -> tuple[float, int]:
    """A measured estimate of the training time here: a few real training steps (feature loss
    and decoder included) on a model of the full Gaussian budget, times the step count, times
    0.75 (the model grows to the budget during the first half of the run). Returns (seconds,
    budget)."""
    trial = Trainer(scene, dataclasses.replace(tc, iterations=repeats + 1, progress=False))
    budget = trial.gaussian_budget() or trial.model.num_gaussians
    lo, hi = random_init_bounds(scene.train_cameras)
    model = GaussianModel.random(budget, lo, hi, tc.sh_degree, render_dim, 0.1)
    cam = scene.train_views[0].camera
    h, w = teacher.feature_size(cam.height, cam.width)
    decoder = FeatureDecoder(render_dim, teacher.dim) if render_dim != teacher.dim else None
    loss = FeatureDistillation(_ZeroTargets((teacher.dim, h, w)), 1.0, decoder)
    trial = Trainer(scene, dataclasses.replace(tc, iterations=repeats + 1, progress=False, feature_dim=render_dim,
                                               densify_from=10**9), model=model, loss_fns=[loss])
    trial.render_features = True
    if decoder is not None:
        loss.decoder = trial.register_module("decoder", decoder, 1e-3)
    trial.train_step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        trial.train_step()
    per_step = (time.perf_counter() - t0) / repeats
    return 0.75 * per_step * tc.iterations, budget


def run(args: argparse.Namespace, teacher) -> DistillResult:
    """Distil ``teacher`` into the scene of ``args`` (the built-in one by default) and report."""
    device = resolve_device(args.device)
    data = args.data or builtin_scene()
    scene = load_scene(data, background=args.background)
    tc = recipe(args, data, device)
    dc = DistillConfig(render_dim=args.render_dim)
    t0 = time.perf_counter()
    estimate, budget = estimate_train_seconds(scene, tc, args.render_dim, teacher)
    extract = _extract_estimate(scene, teacher)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    random = " (RANDOM weights: the features mean nothing)" if teacher.is_random else ""
    print(f"plan: distil {teacher.name}{random} ({teacher.dim}-d) into Gaussians with {args.render_dim}-d features "
          f"(a 1x1-conv decoder lifts them back), fitted to {len(scene.train_views)} views of "
          f"{scene.train_views[0].camera.width}x{scene.train_views[0].camera.height} ({scene.source_path}); "
          f"{tc.iterations} steps of 3DGS-MCMC within {budget:,} Gaussians; then held-out RGB PSNR, feature "
          f"cosine, and a SAM mask from one click on a held-out view.", flush=True)
    print(f"estimated time on {device}{threads}: about {_minutes(estimate + extract)} "
          f"(teacher features {_minutes(extract)}, training {_minutes(estimate)}; measured here just now)", flush=True)
    result = distill(scene, RunDir(args.out), tc, dc, teacher=teacher)
    report(result, args.out, time.perf_counter() - t0)
    return result


def _extract_estimate(scene, teacher) -> float:
    image = scene.load_image(scene.train_views[0])
    t0 = time.perf_counter()
    teacher.extract(image)
    return (time.perf_counter() - t0) * len(scene.views)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def report(result: DistillResult, out: Path, wall: Optional[float] = None) -> None:
    curve = result.feature_loss_curve
    marks = sorted({0, len(curve) // 4, len(curve) // 2, 3 * len(curve) // 4, len(curve) - 1})
    print("feature loss (L1 to the teacher):")
    for i in marks:
        step, value = curve[i]
        print(f"  step {step:6d}: {value:.4f}  " + "#" * max(1, int(40 * value / max(curve[0][1], 1e-9))))
    f = result.features
    print(f"held-out views: RGB PSNR {result.train.eval.psnr:.2f} dB; features vs teacher: "
          f"PSNR {f.feature_psnr:.2f} dB, cosine {f.cosine:.3f}; {result.train.n_gaussians:,} Gaussians, "
          f"{result.train.step} steps" + (f", {_minutes(wall)} in all" if wall is not None else ""))
    if result.teacher.random_weights:
        print("(teacher with RANDOM weights: these figures say nothing about feature quality)")
    print(f"outputs in {out.resolve()}: point_cloud.ply (with features), decoder.pt, "
          "renders/features/*.png (render | student | teacher, one PCA), metrics")


def add_scene_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    """Arguments of the application examples: an existing run, or a quick one made here."""
    parser.add_argument("--run", type=Path, default=None,
                        help="a distillation output folder; default: distil one on the built-in scene first")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--iterations", type=int, default=None, help="steps of the distillation made here")
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
