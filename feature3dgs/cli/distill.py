"""The `feature3dgs distill` and `feature3dgs extract` sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub) -> None:
    d = sub.add_parser("distill", help="train a feature scene: RGB + distillation from a 2D teacher",
                       description="Fit Gaussians with per-Gaussian features distilled from SAM, CLIP or LSeg "
                                   "(teacher features are extracted once into the on-disk cache).")
    d.add_argument("--data", required=True, help="scene folder (COLMAP, Blender, transforms.json)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--teacher", choices=["sam", "clip", "lseg"], default="sam")
    d.add_argument("--checkpoint", default=None, help="teacher weights (SAM .pth, open_clip tag/file, LSeg .ckpt)")
    d.add_argument("--teacher-model", default=None, help="SAM: vit_h|vit_l|vit_b; CLIP: open_clip model name")
    d.add_argument("--weights-dir", default=None, help="folder holding teacher checkpoints")
    d.add_argument("--random-weights-for-testing", action="store_true",
                   help="a tiny random teacher: exercises the pipeline, means nothing")
    d.add_argument("--render-dim", type=int, default=None,
                   help="per-Gaussian feature size (default: the teacher's; smaller uses the 1x1-conv decoder)")
    d.add_argument("--feature-weight", type=float, default=1.0)
    d.add_argument("--lr-decoder", type=float, default=1e-3)
    d.add_argument("--no-feature-to-geometry", action="store_true",
                   help="keep the feature loss from moving means, rotations, scales and opacities")
    d.add_argument("--init-model", default=None,
                   help="start from a trained RGB scene: a Gaussian .ply, a checkpoint .pt, "
                        "or a training output folder")
    d.add_argument("--cache-dir", default=None, help="teacher feature cache (default ~/.cache/feature3dgs/features)")
    d.add_argument("--iterations", type=int, default=30_000)
    d.add_argument("--background", default="black")
    d.add_argument("--resolution-scale", type=float, default=1.0)
    d.add_argument("--device", default="auto")
    d.add_argument("--no-progress", action="store_true")
    sub.add_parser("extract", help="extract a teacher's features of a scene into the cache "
                                   "(see `feature3dgs extract --help`)", add_help=False)


def load_init_model(path: Path):
    """A trained scene from a .ply, a checkpoint .pt, or a training folder (its point_cloud.ply)."""
    from feature3dgs.training.checkpoint import load_checkpoint
    from feature3dgs.model.gaussians import GaussianModel
    from feature3dgs.model.ply import load_ply

    if path.is_dir():
        path = path / "point_cloud.ply"
    if not path.exists():
        raise FileNotFoundError(f"--init-model: {path} not found (give a .ply, a checkpoint .pt "
                                "or a training output folder)")
    if path.suffix == ".pt":
        return GaussianModel.from_raw_state(load_checkpoint(path)["model"])
    return load_ply(path)


def cmd_distill(args: argparse.Namespace) -> int:
    from feature3dgs.data import load_scene
    from feature3dgs.distill.distill import DistillConfig, distill
    from feature3dgs.training.trainer import TrainConfig

    scene = load_scene(args.data, resolution_scale=args.resolution_scale, background=args.background)
    model = None
    if args.init_model:
        model = load_init_model(Path(args.init_model))
    tc = TrainConfig(data=str(args.data), iterations=args.iterations, device=args.device,
                     background=args.background, progress=not args.no_progress)
    dc = DistillConfig(teacher=args.teacher, checkpoint=args.checkpoint, model=args.teacher_model,
                       weights_dir=args.weights_dir, random_weights=args.random_weights_for_testing,
                       render_dim=args.render_dim, feature_weight=args.feature_weight,
                       lr_decoder=args.lr_decoder, feature_to_geometry=not args.no_feature_to_geometry,
                       cache_dir=args.cache_dir)
    metrics = distill(scene, args.out, tc, dc, model=model)
    f = metrics["features"]
    print(f"done: test RGB PSNR {metrics['test']['psnr']:.2f} dB; features vs teacher on test views: "
          f"PSNR {f['feature_psnr']:.2f} dB, cosine {f['cosine']:.3f}; outputs in {args.out}")
    return 0
