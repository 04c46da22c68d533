"""Distil Segment Anything features into a Gaussian scene.

    python examples/distill_sam.py                          # built-in scene
    python examples/distill_sam.py --data SCENE --sam-checkpoint sam_vit_h_4b8939.pth

Without a SAM checkpoint (here or in ~/.cache/feature3dgs/weights) it uses a tiny
randomly initialised SAM and says so loudly: the run then only exercises the
pipeline. Each Gaussian carries a 64-d feature; the 1x1-conv decoder lifts the
rendered map to SAM's 256 channels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, build_teacher_or_tiny, run  # noqa: E402
from feature3dgs.cli.errors import run_command  # noqa: E402


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
    return 0


if __name__ == "__main__":
    sys.exit(run_command("distill_sam.py", main))
