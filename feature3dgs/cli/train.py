"""``feature3dgs train``, ``render``, ``eval`` and ``info``.

    feature3dgs train  --data SCENE --out RUN [--iterations N] [--strategy mcmc] [--resume [CKPT]] ...
    feature3dgs render RUN [--data SCENE] [--split test] [--out DIR]
    feature3dgs eval   RUN [--data SCENE] [--split test] [--lpips alex|vgg|none] [--out FILE]
    feature3dgs info

RUN is a training output folder (its point_cloud.ply and config.json are used) or a Gaussian PLY
file (then ``--data`` is required). Every TrainConfig field is a ``train`` option.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from feature3dgs.cli.args import (
    add_config_args,
    config_from_args,
    given,
    require_requested_packages,
)
from feature3dgs.cli.errors import CLIError
from feature3dgs.rendering import backend_info
from feature3dgs.rendering.device import resolve_device
from feature3dgs.run import RunDir, load_run
from feature3dgs.training.config import RUN_OPTION_KEYS, SCENE_KEYS, TrainConfig
from feature3dgs.training.distributed import Distributed, init_from_env
from feature3dgs.training.evaluate import evaluate_model
from feature3dgs.training.trainer import Trainer, TrainResult, load_scene_for
from feature3dgs.utils.io import atomic_write_text, check_writable_dir

__all__ = ["register", "add_run_scene_args", "load_run_and_scene", "print_result"]


def add_run_scene_args(p: argparse.ArgumentParser) -> None:
    """RUN (first positional), the scene options that override the run's, and --device."""
    p.add_argument("run", metavar="RUN", help="a training or distillation output folder, or a Gaussian .ply")
    add_config_args(p, TrainConfig, only=SCENE_KEYS, title="scene (default: the one the run was trained on)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def register(sub) -> dict:
    t = sub.add_parser("train", help="fit Gaussians to a scene's posed images",
                       description="Fit a Gaussian scene (3DGS defaults). Step options left unset follow the 3DGS "
                                   "30k schedule scaled to --schedule-length (default: --iterations).")
    t.add_argument("--out", required=True, help="output folder (point_cloud.ply, checkpoints/, renders/, logs)")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from a checkpoint file, or (no value) the latest one in --out")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds checkpoints (they are deleted)")
    add_config_args(t, TrainConfig, title="training options")

    r = sub.add_parser("render", help="render a trained scene's views to PNG")
    add_run_scene_args(r)
    r.add_argument("--split", choices=["test", "train", "all"], default="test")
    r.add_argument("--out", default=None, help="output folder (default: RUN/renders/SPLIT)")

    e = sub.add_parser("eval", help="PSNR / SSIM / LPIPS of a trained scene")
    add_run_scene_args(e)
    e.add_argument("--split", choices=["test", "train", "all"], default="test")
    e.add_argument("--lpips", choices=["alex", "vgg", "none"], default=None,
                   help="LPIPS network (default: alex when the lpips package and its weights are there)")
    e.add_argument("--out", default=None, help="the metrics JSON file (default: RUN/eval_SPLIT.json)")

    sub.add_parser("info", help="print the compiled backend information")
    return {"train": cmd_train, "render": cmd_render, "eval": cmd_eval, "info": cmd_info}


def print_result(result: TrainResult, out: Path) -> None:
    m = result.eval
    lp = f", LPIPS {m.lpips:.4f}" if m.lpips is not None else ""
    print(f"done: {result.step} steps, {result.n_gaussians} Gaussians, {result.train_time_s:.1f} s; "
          f"{m.split} PSNR {m.psnr:.2f} dB, SSIM {m.ssim:.4f}{lp}")
    if m.lpips_note:
        print(m.lpips_note)
    print(f"wrote {out / RunDir.PLY}, {out / RunDir.METRICS}")


def cmd_train(args: argparse.Namespace) -> int:
    require_requested_packages(given(args, TrainConfig))
    check_writable_dir(args.out, "--out")
    group = init_from_env(getattr(args, "device", None))
    try:
        return _train(args, group)
    finally:
        if group is not None:
            group.shutdown()


def _train(args: argparse.Namespace, group: Optional[Distributed]) -> int:
    main_rank = group is None or group.is_main
    folder = RunDir(args.out)
    run = folder if main_rank else None  # only rank 0 writes
    if args.resume is not None:
        path = folder.latest_checkpoint() if args.resume == "latest" else Path(args.resume)
        if path is None:
            raise CLIError(f"--resume: no checkpoint found in {folder.path / RunDir.CHECKPOINTS}")
        state = folder.load_checkpoint(path)
        saved = TrainConfig.from_dict(state["config"])
        changed = {k: v for k, v in given(args, TrainConfig).items() if getattr(saved, k) != v}
        frozen = sorted(set(changed) - set(RUN_OPTION_KEYS) - set(SCENE_KEYS))
        if frozen:
            raise CLIError(f"--resume keeps the run's model, learning rates and schedule; these options cannot "
                           f"change: {', '.join('--' + k.replace('_', '-') for k in frozen)}")
        trainer = Trainer.from_checkpoint(state, run=run, overrides=changed, dist=group)
        if main_rank:
            print(f"resuming from {path} at step {trainer.step}", file=sys.stderr)
    else:
        old = folder.checkpoints()
        if old and not args.overwrite:
            raise CLIError(f"{folder.path} already holds checkpoints of a run: pass --resume to continue it, "
                           "--overwrite to start afresh, or choose another --out")
        cfg = config_from_args(TrainConfig, args)
        if not cfg.data:
            raise CLIError("train: --data is required (or --resume)")
        scene = load_scene_for(cfg)
        trainer = Trainer(scene, cfg, run=run, dist=group)
        if old and run is not None:  # kept aside (not deleted) until the new run has saved its first checkpoint
            run.prepare(resume=False)
            run.set_aside()
        if main_rank:
            where = f", {group.world_size} processes ({group.backend})" if group is not None else ""
            print(f"{scene}\ninitial Gaussians: {trainer.model.num_gaussians}, device {trainer.device}{where}",
                  file=sys.stderr)
    result = trainer.train()
    if main_rank:
        print_result(result, folder.path)
    return 0


def load_run_and_scene(args: argparse.Namespace):
    """(Run, its scene with the command line's scene options applied, device) of ``args.run``."""
    path = Path(args.run)
    if not path.exists():
        raise CLIError(f"RUN not found: {path}")
    device = resolve_device(args.device)
    run = load_run(path, device=device)
    overrides = given(args, TrainConfig)
    if not (overrides.get("data") or (run.train_config is not None and run.train_config.data)):
        raise CLIError("--data is required when RUN is not a training output folder")
    return run, run.load_data(**overrides), device


def cmd_render(args: argparse.Namespace) -> int:
    run, scene, device = load_run_and_scene(args)
    base = run.run_dir or Path(args.run).parent
    out = Path(args.out) if args.out else RunDir(base).render_dir(args.split)
    m = evaluate_model(run.model, scene, args.split, save_dir=out, device=device)
    print(f"rendered {m.n_views} {args.split} views to {out} (PSNR {m.psnr:.2f} dB)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    require_requested_packages({"lpips": args.lpips})
    run, scene, device = load_run_and_scene(args)
    net = "alex" if args.lpips is None else (None if args.lpips == "none" else args.lpips)
    m = evaluate_model(run.model, scene, args.split, lpips=net, device=device)
    print(f"{'view':<32} {'PSNR':>8} {'SSIM':>8}" + (f" {'LPIPS':>8}" if m.lpips is not None else ""))
    for name, row in m.per_view.items():
        print(f"{name:<32} {row.psnr:8.3f} {row.ssim:8.4f}" + (f" {row.lpips:8.4f}" if row.lpips is not None else ""))
    print(f"{'mean (' + str(m.n_views) + ' views)':<32} {m.psnr:8.3f} {m.ssim:8.4f}"
          + (f" {m.lpips:8.4f}" if m.lpips is not None else ""))
    if m.lpips_note:
        print(m.lpips_note)
    base = run.run_dir or Path(args.run).parent
    dest = Path(args.out) if args.out else base / f"eval_{args.split}.json"
    atomic_write_text(dest, json.dumps({**dataclasses.asdict(m), "model": str(args.run),
                                        "n_gaussians": run.model.num_gaussians}, indent=2))
    print(f"wrote {dest}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    for k, v in backend_info().items():
        print(f"{k}: {v}")
    return 0
