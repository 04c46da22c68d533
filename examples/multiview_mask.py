"""Multi-view consistent object masks (SANeRF-HQ-style) on the built-in scene.

    python examples/multiview_mask.py                    # distils SAM on the built-in scene first
    python examples/multiview_mask.py --run outputs/distill_sam --point 60,70

1. SAM path: a click on a held-out view is lifted to 3D with the rendered depth, carried into
   --views training views, and SAM's mask decoder runs on each view's rendered features; the
   masks are fused into one weight per Gaussian (votes, then optimised through the renderer),
   which renders the object's mask from any view (OUT/sam_fused/*.png).
2. Fusion check with known answers: the same fusion fed with degraded 2D masks of the clicked
   object (its true instance mask, cut to --mask-size pixels and with --flip of its pixels
   flipped, as a weak 2D segmenter would give) - the fused 3D object, rendered at the held-out
   views, is compared with their true masks, and with the degraded 2D masks themselves.
Without SAM weights the SAM path uses a tiny random SAM: it runs, its masks mean nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_scene_args, load_or_distill  # noqa: E402

from feature3dgs.apps.mask_fusion import fuse_object, multiview_sam_masks  # noqa: E402
from feature3dgs.utils.io import save_png  # noqa: E402
from feature3dgs.utils.visualize import overlay_mask  # noqa: E402
from feature3dgs.cli.errors import run_command  # noqa: E402


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def degrade(mask: torch.Tensor, size: int, flip: float, g: torch.Generator) -> torch.Tensor:
    """A weak 2D segmenter's mask: low resolution and random flips."""
    h, w = mask.shape
    low = F.adaptive_avg_pool2d(mask[None, None].float(), (size, size))
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5
    return up ^ (torch.rand(h, w, generator=g) < flip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_args(parser, "outputs/multiview_mask")
    parser.add_argument("--point", default=None, help="X,Y on test view 0 (default: the middle of an object)")
    parser.add_argument("--views", type=int, default=8, help="training views the prompt is carried into")
    parser.add_argument("--mask-size", type=int, default=16)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--fusion-steps", type=int, default=150, help="optimisation steps (each renders every view)")
    args = parser.parse_args(argv)
    steps = 15 if args.quick else args.fusion_steps
    fs, data = load_or_distill(args, "sam", render_dim=64)
    src = data.test_views[0]
    inst = data.load_labels(src, "instance")
    if args.point:
        x, y = (int(float(v)) for v in args.point.split(","))
    else:  # the pixel of the largest object closest to its centroid
        ids, counts = torch.unique(inst[inst > 0], return_counts=True)
        ys, xs = torch.nonzero(inst == ids[counts.argmax()], as_tuple=True)
        i = int(((xs - xs.float().mean()) ** 2 + (ys - ys.float().mean()) ** 2).argmin())
        x, y = int(xs[i]), int(ys[i])
    obj = int(inst[y, x]) if inst is not None else 0
    step = max(1, len(data.train_views) // args.views)
    targets = [src] + data.train_views[::step][: args.views]
    cams = [v.camera.to(fs.device) for v in targets]

    # 1. SAM in every view, prompt carried through the rendered depth, fused per Gaussian.
    mv = multiview_sam_masks(fs.model, fs.decoder, fs.teacher(), cams[0], torch.tensor([[x, y]], dtype=torch.float32),
                             torch.tensor([1]), cams)
    used = [(c, m) for c, m in zip(cams, mv.masks) if m is not None]
    print(f"click ({x}, {y}) on {src.name}: carried into {len(used) - 1} of {len(cams) - 1} views")
    if used:
        fused = fuse_object(fs.model, [c for c, _ in used], [m for _, m in used], "optimize", steps=steps)
        for view in data.test_views:
            cam = view.camera.to(fs.device)
            with torch.no_grad():
                rgb = fs.model.render(cam).rgb.cpu()
            save_png(overlay_mask(rgb, fused.binary_mask(cam).cpu()),
                     args.out / "sam_fused" / f"{view.name.replace('/', '_')}.png")
        print(f"  SAM masks fused: {int(fused.selection.sum())} of {fs.model.num_gaussians} Gaussians")
    if fs.teacher().is_random:
        print("  (SAM with RANDOM weights: these masks mean nothing)")

    # 2. The fusion with known answers: degraded true masks in the training views.
    if obj == 0:
        print("the click is on the background; no fusion check")
        return 0
    g = torch.Generator().manual_seed(0)
    train = data.train_views[::step]  # the views SAM was asked in, now with known answers
    masks = [degrade(data.load_labels(v, "instance") == obj, args.mask_size, args.flip, g) for v in train]
    for method in ("vote", "optimize"):
        fused = fuse_object(fs.model, [v.camera.to(fs.device) for v in train], [m.to(fs.device) for m in masks], method,
                            steps=steps)
        scores_2d, scores_3d = [], []
        for view in data.test_views:
            truth = data.load_labels(view, "instance") == obj
            if truth.sum() == 0:
                continue
            scores_2d.append(iou(degrade(truth, args.mask_size, args.flip, g), truth))
            scores_3d.append(iou(fused.binary_mask(view.camera.to(fs.device)).cpu(), truth))
        print(f"  held-out IoU with the true mask, {method:>8}: degraded 2D masks "
              f"{sum(scores_2d) / len(scores_2d):.3f} -> fused 3D object {sum(scores_3d) / len(scores_3d):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("multiview_mask.py", main))
