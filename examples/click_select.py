"""Click selection across views and in 3D (GSN-style nearest-neighbour feature matching).

    python examples/click_select.py                       # built-in scene, label teacher
    python examples/click_select.py --run outputs/distill_sam --click 40,60

By default the Gaussians learn features from a multi-view consistent teacher made of the
built-in scene's true class labels (no weights needed), so the result can be checked: one click
on the box in a held-out view selects the box's pixels in every view (IoU against the true
labels is printed) and its Gaussians in 3D, which are extracted into OUT/box (a run folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from feature3dgs.data import builtin_scene, load_scene
from feature3dgs.distill.distill import DistillConfig, distill
from feature3dgs.distill.labels import label_feature_cache
from feature3dgs.run import RunDir
from feature3dgs.apps.edit import extract, select_gaussians_by_clicks
from feature3dgs.run import load_run
from feature3dgs.apps.segment import click_features, select_by_clicks
from feature3dgs.training.config import TrainConfig
from feature3dgs.utils.io import save_png
from feature3dgs.utils.visualize import overlay_mask
from feature3dgs.cli.errors import run_command

BOX = 2  # class id of the box in the built-in scene


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a distillation output folder (default: label teacher)")
    parser.add_argument("--out", type=Path, default=Path("outputs/click_select"))
    parser.add_argument("--view", type=int, default=0, help="test view that is clicked")
    parser.add_argument("--click", default=None, help="X,Y (default: the middle of the box)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    if args.run is None:
        data_path = builtin_scene()
        scene = load_scene(data_path)
        with tempfile.TemporaryDirectory() as tmp:
            cache = label_feature_cache(scene, Path(tmp), dim=16)
            tc = TrainConfig(data=str(data_path), iterations=60 if args.quick else args.iterations, lpips=None,
                             tensorboard=False, progress=not args.quick, max_gaussians=4000 if args.quick else None,
                             init_random_points=2000 if args.quick else 100_000, save_test_renders=False)
            distill(scene, RunDir(args.out / "run"), tc, DistillConfig(render_dim=16), cache=cache)
        args.run = args.out / "run"
    fs = load_run(args.run)
    data = fs.load_data()
    src = data.test_views[args.view]
    if args.click:
        click = tuple(float(v) for v in args.click.split(","))
    else:
        labels = data.load_labels(src, "class")
        ys, xs = torch.nonzero(labels == BOX, as_tuple=True)
        if len(xs) == 0:
            raise SystemExit(f"the box is not in {src.name}; pass --click X,Y")
        i = int(((xs - xs.float().mean()) ** 2 + (ys - ys.float().mean()) ** 2).argmin())
        click = (float(xs[i]), float(ys[i]))
    f_src = fs.render_features(src.camera, decoded=False)
    print(f"click {click} on {src.name}")
    for view in data.train_views + data.test_views:
        mask = select_by_clicks(f_src, [click], fs.render_features(view.camera, decoded=False), args.threshold)
        with torch.no_grad():
            rgb = fs.model.render(view.camera.to(fs.device)).rgb.cpu()
        save_png(overlay_mask(rgb, mask.cpu()), args.out / "views" / f"{view.name.replace('/', '_')}.png")
        truth = data.load_labels(view, "class")
        line = f"  {view.name:>20}: {int(mask.sum()):6d} px selected"
        if truth is not None and args.click is None:
            t = truth == BOX
            union = int((mask.cpu() | t).sum())
            line += f", IoU with the true box {int((mask.cpu() & t).sum()) / max(union, 1):.3f}"
        print(line)
    selected = select_gaussians_by_clicks(fs.model, click_features(f_src, [click]), threshold=args.threshold)
    print(f"{int(selected.sum())} of {fs.model.num_gaussians} Gaussians selected in 3D")
    if bool(selected.any()):
        ply = fs.with_model(extract(fs.model, selected)).save(args.out / "box")
        print(f"wrote {ply} and {args.out / 'views'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("click_select.py", main))
