"""Distil language-aligned CLIP features (MaskCLIP-style dense CLIP) into a Gaussian scene.

    python examples/distill_clip.py                         # built-in scene
    python examples/distill_clip.py --data SCENE --clip-pretrained openai

Without CLIP weights it uses a tiny randomly initialised CLIP and says so loudly.
Each Gaussian carries a 128-d feature, decoded to CLIP's 512; after training the
example scores the scene's class names against a held-out view's features.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, build_teacher_or_tiny, run  # noqa: E402

from feature3dgs.data import builtin_scene, load_scene  # noqa: E402
from feature3dgs.distill.distill import student_features  # noqa: E402
from feature3dgs.cli.errors import run_command  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "outputs/distill_clip", default_dim=128)
    parser.add_argument("--clip-model", default="ViT-B-16")
    parser.add_argument("--clip-pretrained", default=None, help="open_clip tag or weights file")
    args = parser.parse_args(argv)
    teacher = build_teacher_or_tiny("clip", allow_random=args.clip_pretrained is None,
                                    checkpoint=args.clip_pretrained, model=args.clip_model)
    result = run(args, teacher)
    scene = load_scene(args.data or builtin_scene(), background=args.background)
    names = scene.class_names or ["object", "ground"]
    view = scene.test_views[0]
    with torch.no_grad():
        out = result.model.render(view.camera, features=result.model.features)
        feats = student_features(out.features, out.features.shape[-2:], result.decoder)
        feats = torch.nn.functional.normalize(feats, dim=0)
        text = teacher.encode_text([f"a photo of a {n}" for n in names]).to(feats)
        scores = torch.einsum("nd,dhw->nhw", text, feats)
        share = torch.bincount(scores.argmax(0).flatten(), minlength=len(names)).float()
    share = share / share.sum()
    print(f"text queries on {view.name}: share of pixels whose best match is each label:")
    for name, s in zip(names, share.tolist()):
        print(f"  {name:>12}: {100 * s:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("distill_clip.py", main))
