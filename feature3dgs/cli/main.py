"""The ``feature3dgs`` command: ``train``, ``render``, ``eval`` and ``info`` sub-commands.

    feature3dgs train --data SCENE --out RUN [--iterations N] [--resolution-scale F | --width W]
                      [--background white] [--resume [CKPT]] [...schedule options...]
    feature3dgs render --model RUN [--data SCENE] [--split test] [--out DIR]
    feature3dgs eval   --model RUN [--data SCENE] [--split test] [--lpips alex|vgg|none]
    feature3dgs info

``--model`` is a training output folder (its point_cloud.ply and config.json are used) or a
Gaussian PLY file (then ``--data`` is required). Exit status: 0 success, 1 training failed
(e.g. a NaN loss), 2 bad arguments or inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser"]


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _background(s: str) -> str:
    from feature3dgs.data.images import parse_background

    try:
        parse_background([float(x) for x in s.split(",")] if "," in s else s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("scene")
    g.add_argument("--data", required=required, help="scene folder (COLMAP, Blender or transforms.json)")
    g.add_argument("--resolution-scale", type=float, default=None,
                   help="load images scaled by this factor (0.5 = half size)")
    g.add_argument("--width", type=int, default=None, help="load images at this width in pixels")
    g.add_argument("--background", type=_background, default=None,
                   help="'black' (default), 'white' or 'r,g,b' in [0,1]: RGBA compositing and render background")
    g.add_argument("--images", default=None, help="COLMAP image folder, e.g. images_8 (default: auto)")
    g.add_argument("--test-every", type=int, default=None, help="COLMAP/transforms: every k-th view is a test view")


def build_parser() -> argparse.ArgumentParser:
    from feature3dgs.training.trainer import TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="feature3dgs", description="3D Gaussian Splatting with distilled features")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # ---------------------------------------------------------------- train
    t = sub.add_parser("train", help="fit Gaussians to a scene's posed images",
                       description="Fit a Gaussian scene (3DGS defaults). Step options left unset follow the 3DGS "
                                   "30k schedule scaled to --schedule-length (default: --iterations).")
    _add_data_args(t, required=False)
    t.add_argument("--out", required=True, help="output folder (point_cloud.ply, checkpoints/, renders/, logs)")
    t.add_argument("--iterations", type=int, default=None,
                   help=f"total steps (default {d.iterations}; on --resume: the checkpoint's)")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from a checkpoint file, or (no value) the latest one in --out")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds checkpoints (they are deleted)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (torch and the CPU kernels)")
    m = t.add_argument_group("model")
    m.add_argument("--sh-degree", type=int, default=d.sh_degree)
    m.add_argument("--feature-dim", type=int, default=d.feature_dim, help="per-Gaussian feature size (0 = none)")
    m.add_argument("--init", choices=["auto", "points", "random"], default=d.init)
    m.add_argument("--init-random-points", type=int, default=d.init_random_points)
    m.add_argument("--init-random-box", type=float, nargs=6, default=None, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"))
    m.add_argument("--init-opacity", type=float, default=d.init_opacity)
    lr = t.add_argument_group("learning rates")
    for name in ("lr_means_init", "lr_means_final", "lr_sh_dc", "lr_sh_rest", "lr_opacity", "lr_scales",
                 "lr_quats", "lr_features", "lambda_dssim"):
        lr.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    lr.add_argument("--random-background", action="store_true")
    dn = t.add_argument_group("densification")
    dn.add_argument("--densify-grad-threshold", type=float, default=d.densify_grad_threshold,
                    help="NDC units, as 3DGS (default 2e-4)")
    dn.add_argument("--percent-dense", type=float, default=d.percent_dense)
    dn.add_argument("--prune-min-opacity", type=float, default=d.prune_min_opacity)
    dn.add_argument("--prune-max-world-size", type=float, default=d.prune_max_world_size)
    dn.add_argument("--prune-max-screen-size", type=float, default=d.prune_max_screen_size)
    dn.add_argument("--max-gaussians", type=int, default=d.max_gaussians)
    sc = t.add_argument_group("schedule (steps; unset = scaled 3DGS default)")
    for name in ("schedule_length", "sh_up_every", "densify_from", "densify_until", "densify_every",
                 "opacity_reset_every", "lr_means_steps", "eval_every", "checkpoint_every"):
        sc.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    lo = t.add_argument_group("logging")
    lo.add_argument("--log-every", type=int, default=None, help=f"default {d.log_every}")
    lo.add_argument("--tensorboard", type=_bool, default=None, metavar="BOOL",
                    help="also log to TensorBoard when installed (default true)")
    lo.add_argument("--keep-checkpoints", type=int, default=None, help=f"default {d.keep_checkpoints}")
    lo.add_argument("--save-test-renders", type=_bool, default=None, metavar="BOOL", help="default true")
    lo.add_argument("--lpips", choices=["alex", "vgg", "none"], default=None,
                    help="LPIPS network for the final evaluation (default alex; skipped when its weights are missing)")
    lo.add_argument("--no-progress", action="store_true", help="no progress bar")

    # ---------------------------------------------------------------- render / eval
    r = sub.add_parser("render", help="render a trained scene's views to PNG")
    r.add_argument("--model", required=True, help="training output folder or Gaussian .ply")
    _add_data_args(r, required=False)
    r.add_argument("--split", choices=["test", "train", "all"], default="test")
    r.add_argument("--out", default=None, help="output folder (default: MODEL/renders/SPLIT)")
    r.add_argument("--device", default="auto")

    e = sub.add_parser("eval", help="PSNR / SSIM / LPIPS of a trained scene")
    e.add_argument("--model", required=True, help="training output folder or Gaussian .ply")
    _add_data_args(e, required=False)
    e.add_argument("--split", choices=["test", "train", "all"], default="test")
    e.add_argument("--lpips", choices=["alex", "vgg", "none"], default="alex")
    e.add_argument("--json", default=None, help="write the metrics here (default: MODEL/eval_SPLIT.json)")
    e.add_argument("--device", default="auto")

    sub.add_parser("info", help="print the compiled backend information")
    from feature3dgs.cli import apps as cli_apps, distill as cli_distill, view as cli_view

    cli_distill.add_parsers(sub)
    cli_apps.add_parsers(sub)
    cli_view.add_parsers(sub)
    return parser


# ---------------------------------------------------------------------- helpers
class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from feature3dgs.training.trainer import SCENE_CONFIG_KEYS

    out: dict[str, Any] = {}
    for key in SCENE_CONFIG_KEYS:
        v = getattr(args, key, None)
        if v is not None:
            out[key] = str(v) if key == "data" else v
    return out


def _train_config(args: argparse.Namespace):
    from feature3dgs.training.trainer import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names and v is not None}
    kw.update(_data_overrides(args))
    if args.init_random_box is not None:
        kw["init_random_box"] = tuple(args.init_random_box)
    kw["progress"] = not args.no_progress
    return TrainConfig(**kw)


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from feature3dgs.training.checkpoint import latest_checkpoint
    from feature3dgs.training.trainer import NonFiniteLossError, Trainer, TrainConfig, load_scene_for

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.resume is not None:
        ckpt = latest_checkpoint(out) if args.resume == "latest" else Path(args.resume)
        if ckpt is None:
            raise CLIError(f"--resume: no checkpoint found in {out / 'checkpoints'}")
        run_opts: dict[str, Any] = {"progress": not args.no_progress}
        for key in ("iterations", "eval_every", "checkpoint_every", "log_every", "tensorboard", "lpips",
                    "keep_checkpoints", "save_test_renders", "device"):
            if getattr(args, key, None) is not None:
                run_opts[key] = getattr(args, key)
        run_opts.update(_data_overrides(args))
        trainer = Trainer.from_checkpoint(ckpt, out_dir=out, overrides=run_opts)
        print(f"resuming from {ckpt} at step {trainer.step}", file=sys.stderr)
    else:
        if not args.data:
            raise CLIError("train: --data is required (or --resume)")
        old = sorted((out / "checkpoints").glob("ckpt_*.pt"))
        if old and not args.overwrite:
            raise CLIError(f"{out} already holds checkpoints of a run: pass --resume to continue it, "
                           "--overwrite to start afresh, or choose another --out")
        cfg: TrainConfig = _train_config(args)
        scene = load_scene_for(cfg)
        print(f"{scene}", file=sys.stderr)
        trainer = Trainer(scene, cfg, out_dir=out)
        for p in old:
            p.unlink()
        print(f"initial Gaussians: {trainer.model.num_gaussians}, device {trainer.device}", file=sys.stderr)
    try:
        metrics = trainer.train()
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    split = "test" if "test" in metrics else "train"
    m = metrics[split]
    lp = f", LPIPS {m['lpips']:.4f}" if m.get("lpips") is not None else ""
    print(f"done: {metrics['step']} steps, {metrics['n_gaussians']} Gaussians, {metrics['train_time_s']:.1f} s; "
          f"{split} PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}{lp}")
    if m.get("lpips_note"):
        print(m["lpips_note"])
    print(f"wrote {out / 'point_cloud.ply'}, {out / 'metrics.json'}")
    return 0


def _load_model_and_scene(args: argparse.Namespace):
    """(model, scene, run folder or None, device) of --model (a run folder or a .ply) and the
    scene it was fitted to, with the --data/loader options overriding the run's."""
    from feature3dgs.run import load_feature_scene
    from feature3dgs.training.trainer import _resolve_device

    model_path = Path(args.model)
    if not model_path.exists():
        raise CLIError(f"--model not found: {model_path}")
    device = _resolve_device(args.device)
    fs = load_feature_scene(model_path, device=device)
    overrides = _data_overrides(args)
    if not (overrides.get("data") or fs.train_config.get("data")):
        raise CLIError("--data is required when --model is not a training output folder")
    return fs.model, fs.load_data(**overrides), fs.run_dir, device


def _cmd_render(args: argparse.Namespace) -> int:
    from feature3dgs.training.trainer import evaluate_model

    model, scene, run_dir, device = _load_model_and_scene(args)
    out = Path(args.out) if args.out else (run_dir or Path(args.model).parent) / "renders" / args.split
    m = evaluate_model(model, scene, args.split, save_dir=out, device=device)
    print(f"rendered {m['n_views']} {args.split} views to {out} (PSNR {m['psnr']:.2f} dB)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from feature3dgs.utils.io import atomic_write_text
    from feature3dgs.training.trainer import evaluate_model

    model, scene, run_dir, device = _load_model_and_scene(args)
    m = evaluate_model(model, scene, args.split, lpips=args.lpips, device=device)
    m["model"] = str(args.model)
    m["n_gaussians"] = model.num_gaussians
    print(f"{'view':<32} {'PSNR':>8} {'SSIM':>8}" + (f" {'LPIPS':>8}" if m["lpips"] is not None else ""))
    for name, row in m["per_view"].items():
        print(f"{name:<32} {row['psnr']:8.3f} {row['ssim']:8.4f}" + (f" {row['lpips']:8.4f}" if "lpips" in row else ""))
    print(f"{'mean (' + str(m['n_views']) + ' views)':<32} {m['psnr']:8.3f} {m['ssim']:8.4f}"
          + (f" {m['lpips']:8.4f}" if m["lpips"] is not None else ""))
    if m["lpips_note"]:
        print(m["lpips_note"])
    dest = Path(args.json) if args.json else (run_dir or Path(args.model).parent) / f"eval_{args.split}.json"
    atomic_write_text(dest, json.dumps(m, indent=2))
    print(f"wrote {dest}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import feature3dgs

    for k, v in feature3dgs.backend_info().items():
        print(f"{k}: {v}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``feature3dgs`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["extract"]:  # its own parser (feature3dgs.distill.cache)
        from feature3dgs.distill.cache import extract_main

        return extract_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from feature3dgs.cli import apps as cli_apps
    from feature3dgs.cli.distill import cmd_distill
    from feature3dgs.cli.view import cmd_view

    handler = {"train": _cmd_train, "render": _cmd_render, "eval": _cmd_eval, "info": _cmd_info,
               "distill": cmd_distill, "view": cmd_view, **cli_apps.HANDLERS}[args.command]
    try:
        return handler(args)
    except CLIError as e:
        print(f"feature3dgs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"feature3dgs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
