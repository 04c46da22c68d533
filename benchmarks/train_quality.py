"""Scene-optimisation benchmark: test PSNR / SSIM and wall time after a fixed number of steps.

    python benchmarks/train_quality.py --scene lego_200 --steps 7000
    python benchmarks/train_quality.py --scene fern_llff --steps 3000

Scenes come from ../shared/data (see its README): lego_200 is trained on a white background
(the usual NeRF-synthetic protocol) from random points (it has no sparse points); fern_llff from
its COLMAP points at images_8 (504x378), every 8th view held out. The schedule is the 3DGS one
scaled to --steps (see feature3dgs.training.trainer); --max-gaussians caps growth to keep CPU runs bounded.

Prints a table and writes benchmarks/results/train_quality-<scene>-<device>.json (device, torch,
git revision, config, the final figures and a PSNR curve), rewritten after every evaluation so a
cut-short run still leaves its figures. For fair CPU timings on a shared machine, run with
OMP_WAIT_POLICY=PASSIVE (spinning OpenMP threads collapse when cores are oversubscribed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_utils import git_revision  # noqa: E402
from feature3dgs.utils.io import atomic_write_text  # noqa: E402
from feature3dgs.run import RunDir  # noqa: E402
from feature3dgs.training.config import TrainConfig  # noqa: E402
from feature3dgs.training.trainer import Trainer, load_scene_for  # noqa: E402

SCENES = {
    "lego_200": dict(background="white", init="random", init_random_points=20_000),
    "fern_llff": dict(background="black", init="points", images="images_8"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", required=True, choices=sorted(SCENES))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--max-gaussians", type=int, default=60_000)
    ap.add_argument("--schedule-length", type=int, default=None, help="default: --steps (scaled 3DGS schedule)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--work-dir", default=None, help="run outputs (PLY, renders); default: a temp folder")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra TrainConfig fields")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tfn" else v
    cfg = TrainConfig(data=str(Path(args.data_root) / args.scene), iterations=args.steps, seed=args.seed,
                      device=args.device, max_gaussians=args.max_gaussians, schedule_length=args.schedule_length,
                      eval_every=0, checkpoint_every=0, progress=False, tensorboard=False, lpips="alex",
                      **{**SCENES[args.scene], **extra})
    scene = load_scene_for(cfg)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix=f"f3dgs_{args.scene}_"))
    trainer = Trainer(scene, cfg, run=RunDir(work))
    device = str(trainer.device)
    out_json = Path(args.results) / f"train_quality-{args.scene}-{device}.json"
    record = {
        "benchmark": "train_quality",
        "scene": args.scene,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "git_revision": git_revision(),
        "scene_info": repr(scene),
        "config": trainer.config.to_dict(),
        "steps_target": args.steps,
        "init_gaussians": trainer.model.num_gaussians,
        "curve": [],
    }
    print(f"{scene}\n{trainer.model.num_gaussians} initial Gaussians, {torch.get_num_threads()} threads, "
          f"work dir {work}", flush=True)
    wall0 = time.time()
    while trainer.step < args.steps:
        t0 = time.perf_counter()
        logs = trainer.train_step()
        trainer.train_time += time.perf_counter() - t0
        if trainer.step % args.eval_every == 0 or trainer.step == args.steps:
            m = trainer.evaluate("test", lpips=False)
            row = {"step": trainer.step, "psnr": m.psnr, "ssim": m.ssim, "n_gaussians": len(trainer.model),
                   "train_time_s": trainer.train_time, "train_loss": logs["loss"]}
            record["curve"].append(row)
            record.update(steps_done=trainer.step, train_time_s=trainer.train_time,
                          s_per_step=trainer.train_time / trainer.step, wall_s=time.time() - wall0,
                          test_psnr=m.psnr, test_ssim=m.ssim, n_gaussians=len(trainer.model))
            atomic_write_text(out_json, json.dumps(record, indent=2))
            print(f"step {trainer.step:6d}  test PSNR {m.psnr:6.2f}  SSIM {m.ssim:.4f}  "
                  f"N {len(trainer.model):7d}  {trainer.train_time / trainer.step:.3f} s/step  "
                  f"train {trainer.train_time:7.0f} s", flush=True)
    final = trainer.evaluate("test", save_dir=work / "renders" / "test")
    from feature3dgs.model.ply import save_ply

    save_ply(trainer.model, work / "point_cloud.ply")
    record.update(test_psnr=final.psnr, test_ssim=final.ssim, test_lpips=final.lpips,
                  lpips_note=final.lpips_note, per_view=final.to_dict()["per_view"], wall_s=time.time() - wall0,
                  n_test_views=final.n_views)
    atomic_write_text(out_json, json.dumps(record, indent=2))
    print("\n| scene | steps | test PSNR | test SSIM | LPIPS | Gaussians | train time | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    lp = "n/a" if final.lpips is None else f"{final.lpips:.4f}"
    print(f"| {args.scene} | {trainer.step} | {final.psnr:.2f} | {final.ssim:.4f} | {lp} | "
          f"{len(trainer.model)} | {trainer.train_time:.0f} s | {trainer.train_time / trainer.step:.3f} |")
    if final.lpips_note:
        print(final.lpips_note)
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
