"""``feature3dgs distill`` (train a feature scene) and ``feature3dgs extract`` (fill the teacher
feature cache). ``distill`` takes every ``train`` option plus the DistillConfig ones."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from feature3dgs.cli.args import (
    add_config_args,
    config_from_args,
    given,
    require_requested_packages,
)
from feature3dgs.cli.errors import EXIT_INTERRUPTED, CLIError
from feature3dgs.cli.train import print_result
from feature3dgs.distill.cache import (
    FeatureCache,
    default_cache_dir,
    fill_feature_cache,
)
from feature3dgs.distill.distill import DistillConfig, distill
from feature3dgs.distill.teachers import build_teacher
from feature3dgs.rendering.device import resolve_device
from feature3dgs.run import RunDir, load_model
from feature3dgs.training.config import SCENE_KEYS, TrainConfig
from feature3dgs.training.distributed import init_from_env
from feature3dgs.training.trainer import load_scene_for
from feature3dgs.utils.io import check_writable_dir

__all__ = ["register"]

#: the DistillConfig fields that pick and build the teacher (what ``extract`` takes)
TEACHER_KEYS = ("teacher", "checkpoint", "teacher_model", "weights_dir", "random_weights", "trust_checkpoint",
                "cache_dir")


def register(sub) -> dict:
    d = sub.add_parser("distill", help="train a feature scene: RGB + distillation from a 2D teacher",
                       description="Fit Gaussians with per-Gaussian features distilled from SAM, CLIP or LSeg "
                                   "(teacher features are extracted once into the on-disk cache).")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--init-model", default=None, metavar="RUN",
                   help="start from a trained RGB scene: a run folder, a Gaussian .ply or a checkpoint .pt")
    add_config_args(d, DistillConfig, title="distillation options")
    add_config_args(d, TrainConfig, skip=("feature_dim",), title="training options")

    x = sub.add_parser("extract", help="extract a teacher's features of a scene into the cache",
                       description="Extract teacher features for every image of a scene into the fp16 feature "
                                   "cache (resumable: images already cached are skipped).")
    add_config_args(x, TrainConfig, only=SCENE_KEYS, title="scene")
    add_config_args(x, DistillConfig, only=TEACHER_KEYS, title="teacher")
    x.add_argument("--resolution", type=int, default=None,
                   help="network input long side in pixels (clip: 448, lseg: 480; sam is fixed at 1024)")
    x.add_argument("--batch-size", type=int, default=1, help="images per teacher call")
    x.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    x.add_argument("--split", choices=["all", "train", "test"], default="all")
    x.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    x.add_argument("--overwrite", action="store_true", help="re-extract images already cached")
    x.add_argument("--no-progress", action="store_true")
    return {"distill": cmd_distill, "extract": cmd_extract}


def cmd_distill(args: argparse.Namespace) -> int:
    require_requested_packages(given(args, TrainConfig))
    tc = config_from_args(TrainConfig, args)
    dc = config_from_args(DistillConfig, args)
    if not tc.data:
        raise CLIError("distill: --data is required")
    tc.validate()
    dc.validate()
    check_writable_dir(args.out, "--out")
    check_writable_dir(dc.cache_dir or default_cache_dir(), "--cache-dir")
    scene = load_scene_for(tc)
    model = None
    if args.init_model:
        try:
            model = load_model(args.init_model)
        except (OSError, ValueError) as e:
            raise CLIError(f"--init-model: {e}") from None
    group = init_from_env(tc.device)
    try:
        main_rank = group is None or group.is_main
        result = distill(scene, RunDir(args.out) if main_rank else None, tc, dc, model=model, dist=group)
    finally:
        if group is not None:
            group.shutdown()
    if main_rank:
        print_result(result.train, Path(args.out))
        f = result.features
        print(f"features vs teacher on test views: PSNR {f.feature_psnr:.2f} dB, cosine {f.cosine:.3f}; "
              f"outputs in {args.out}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    tc = config_from_args(TrainConfig, args)
    dc = config_from_args(DistillConfig, args)
    if not tc.data:
        raise CLIError("extract: --data is required")
    check_writable_dir(dc.cache_dir or default_cache_dir(), "--cache-dir")
    scene = load_scene_for(tc)
    device = resolve_device(args.device)
    if dc.random_weights:
        print("=" * 78 + "\nWARNING: --random-weights-for-testing: a tiny teacher with RANDOM weights. The features "
              "are\nmeaningless; use this only to test the pipeline.\n" + "=" * 78, file=sys.stderr)
    teacher = build_teacher(dc.teacher, checkpoint=dc.checkpoint, model=dc.teacher_model, weights_dir=dc.weights_dir,
                            resolution=args.resolution, device=device, random_weights=dc.random_weights,
                            trust_checkpoint=dc.trust_checkpoint)
    teacher.amp = bool(args.amp)
    views = {"all": scene.views, "train": scene.train_views, "test": scene.test_views}[args.split]
    root = Path(dc.cache_dir) if dc.cache_dir else default_cache_dir()
    cache = FeatureCache.for_teacher(root, teacher)
    print(f"{teacher!r}\ncache: {cache.path}\nkey:   {cache.key}\nimages: {len(views)} ({args.split})", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning was printed above
            cache, res = fill_feature_cache(scene, teacher, root, args.batch_size, not args.no_progress, views=views,
                                            overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(cache)} images are cached in {cache.path}; run the same command again "
              "to extract the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    shape = cache.shape(views[0].name) if views and cache.has(views[0].name) else None
    print(f"extracted {len(res.extracted)}, already cached {len(res.skipped)}, in {res.seconds:.1f} s; "
          f"features {shape} float16 in {cache.path}", file=sys.stderr)
    return 0
