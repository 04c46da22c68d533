"""Distil Segment Anything features into a Gaussian scene, then segment a held-out view with SAM
from one click on the rendered features.

    python examples/distill_sam.py                          # built-in scene
    python examples/distill_sam.py --data SCENE --sam-checkpoint sam_vit_h_4b8939.pth

Without a SAM checkpoint (here or in ~/.cache/feature3dgs/weights) it uses a tiny randomly
initialised SAM and says so loudly: the run then only exercises the pipeline. Each Gaussian
carries a 64-d feature; the 1x1-conv decoder lifts the rendered map to SAM's 256 channels.
It prints its plan and a time estimate measured on this device first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, build_teacher_or_tiny, run  # noqa: E402

from feature3dgs.apps.segment import sam_masks_on_view  # noqa: E402
from feature3dgs.cli.errors import run_command  # noqa: E402
from feature3dgs.rendering.device import resolve_device  # noqa: E402
from feature3dgs.run import load_run  # noqa: E402
from feature3dgs.utils.io import save_png  # noqa: E402
from feature3dgs.utils.visualize import overlay_mask  # noqa: E402


def click_point(scene, view) -> tuple[float, float]:
    """A pixel on the largest object of ``view`` (instance labels, when the scene has them;
    instance 0 is the ground), else the image centre."""
    labels = scene.load_labels(view, "instance") if scene.has_labels else None
    cam = view.camera
    if labels is not None:
        ids, counts = torch.unique(labels[labels > 0], return_counts=True)
        if ids.numel():
            ys, xs = torch.nonzero(labels == ids[counts.argmax()], as_tuple=True)
            k = len(xs) // 2
            return float(xs[k]) + 0.5, float(ys[k]) + 0.5
    return cam.width / 2, cam.height / 2


def segment_held_out_view(run_dir: Path, device, teacher) -> Path:
    """SAM's prompt encoder and mask decoder on the rendered (and decoded) features of the first
    held-out view, from one point prompt; saves the mask overlay as a PNG and returns its path."""
    fs = load_run(run_dir, device=device)
    fs.set_teacher(teacher.to(device))
    scene = fs.load_data()
    view = (scene.test_views or scene.train_views)[0]
    x, y = click_point(scene, view)
    res = sam_masks_on_view(fs.model, view.camera, fs.decoder, teacher, torch.tensor([[x, y]]), torch.tensor([1]))
    with torch.no_grad():
        rgb = fs.model.render(view.camera, scene.background).rgb.clamp(0, 1).cpu()
    mask = res.masks[0].cpu()
    path = run_dir / "sam_click" / "overlay.png"
    save_png(overlay_mask(rgb, mask), path)
    t = res.timings
    print(f"SAM on held-out view {view.name}: one click at ({x:.0f}, {y:.0f}) -> mask of {int(mask.sum())} px "
          f"(SAM score {float(res.scores[0]):.2f}; render {t.render_ms:.0f} + decode {t.decode_ms:.0f} + "
          f"mask {t.mask_ms:.0f} ms); overlay in {path}")
    if teacher.is_random:
        print("(SAM with RANDOM weights: this mask means nothing; give --sam-checkpoint for a real one)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "outputs/distill_sam", default_dim=64)
    parser.add_argument("--sam-checkpoint", default=None, help="SAM .pth file")
    parser.add_argument("--sam-model", default="vit_h", choices=["vit_h", "vit_l", "vit_b"])
    parser.add_argument("--weights-dir", default=None, help="folder holding SAM checkpoints")
    args = parser.parse_args(argv)
    teacher = build_teacher_or_tiny("sam", allow_random=args.sam_checkpoint is None,
                                    checkpoint=args.sam_checkpoint, model=args.sam_model,
                                    weights_dir=args.weights_dir)
    run(args, teacher)
    segment_held_out_view(args.out, resolve_device(args.device), teacher)
    return 0


if __name__ == "__main__":
    sys.exit(run_command("distill_sam.py", main))
