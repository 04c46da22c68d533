"""Segment Anything on a novel view of a feature scene: point and box prompts.

    python examples/segment_prompts.py                    # distils SAM on the built-in scene first
    python examples/segment_prompts.py --run outputs/distill_sam --view 0 --point 320,240

The view's 64-d features are rendered, decoded to SAM's 256 channels and fed to SAM's own
prompt encoder and mask decoder: SAM's image encoder never runs. The example prints the time of
each stage and writes the masks over the render (OUT/masks/*.png). Without SAM weights the
distillation uses a tiny random SAM and the masks mean nothing (it says so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_scene_args, load_or_distill  # noqa: E402

from feature3dgs.apps.segment import sam_masks_on_view  # noqa: E402
from feature3dgs.utils.io import save_png  # noqa: E402
from feature3dgs.utils.visualize import overlay_mask  # noqa: E402
from feature3dgs.cli.errors import run_command  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_args(parser, "outputs/segment_prompts")
    parser.add_argument("--view", type=int, default=0, help="index of a held-out (test) view")
    parser.add_argument("--point", default=None, help="positive point X,Y (default: the image centre)")
    args = parser.parse_args(argv)
    fs, data = load_or_distill(args, "sam", render_dim=64)
    view = data.test_views[args.view]
    cam = view.camera.to(fs.device)
    W, H = cam.width, cam.height
    x, y = (float(v) for v in args.point.split(",")) if args.point else (W / 2, H / 2)
    teacher = fs.teacher()
    prompts = {
        "point": dict(points=torch.tensor([[x, y]]), labels=torch.tensor([1])),
        "point+negative": dict(points=torch.tensor([[x, y], [W * 0.05, H * 0.05]]), labels=torch.tensor([1, 0])),
        "box": dict(boxes=torch.tensor([[W * 0.25, H * 0.25, W * 0.75, H * 0.75]])),
    }
    with torch.no_grad():
        rgb = fs.model.render(cam).rgb.clamp(0, 1).cpu()
    sam_masks_on_view(fs.model, cam, fs.decoder, teacher, **prompts["point"])  # warm-up
    print(f"{view.name} ({W}x{H}), {fs.model.num_gaussians} Gaussians on {fs.device}:")
    for name, p in prompts.items():
        res = sam_masks_on_view(fs.model, cam, fs.decoder, teacher, **p)
        t = res.timings
        mask = res.masks[0].cpu()
        save_png(overlay_mask(rgb, mask), args.out / "masks" / f"{name.replace('+', '_')}.png")
        print(f"  {name:>15}: mask {int(mask.sum()):6d} px, SAM score {float(res.scores[0]):.3f}; "
              f"render {t.render_ms:.1f} + decode {t.decode_ms:.1f} + mask {t.mask_ms:.1f} ms")
    if teacher.is_random:
        print("(SAM with RANDOM weights: the masks mean nothing)")
    print(f"wrote {args.out / 'masks'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("segment_prompts.py", main))
