"""Closed-set semantic rendering (GSNeRF-style): per-Gaussian class logits from label maps.

    python examples/semantic_scene.py                  # built-in scene, joint RGB + semantics
    python examples/semantic_scene.py --run outputs/distill_sam --post-hoc

Default: a SemanticTrainer fits the built-in scene's colours and its class labels together
(cross-entropy on the rendered K-channel logit map). With --run, class logits are fitted
afterwards on the frozen Gaussians of that run (feature3dgs.apps.semantic.fit_semantics). Either way
the semantic maps of the held-out views are rendered (OUT/semantic/*.png: render | classes), the
mIoU against their true labels printed, and the scene saved as a run folder (OUT/scene).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from feature3dgs.data import builtin_scene, load_scene
from feature3dgs.model.gaussians import SEMANTICS
from feature3dgs.run import Run, load_run
from feature3dgs.apps.semantic import SemanticTrainer, evaluate_semantics, fit_semantics
from feature3dgs.training.config import TrainConfig
from feature3dgs.cli.errors import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a training/distillation output folder")
    parser.add_argument("--out", type=Path, default=Path("outputs/semantic_scene"))
    parser.add_argument("--iterations", type=int, default=2000, help="joint training steps (without --run)")
    parser.add_argument("--steps", type=int, default=300, help="post-hoc fitting steps (with --run)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    if args.run is not None:
        fs = load_run(args.run)
        data = fs.load_data()
        model, curve = fit_semantics(fs.model, data, steps=30 if args.quick else args.steps)
        print(f"post-hoc: cross-entropy {curve[0]:.3f} -> {curve[-1]:.3f} in {len(curve)} steps")
    else:
        data_path = builtin_scene()
        data = load_scene(data_path)
        tc = TrainConfig(data=str(data_path), iterations=100 if args.quick else args.iterations, lpips=None,
                         tensorboard=False, progress=not args.quick, save_test_renders=False,
                         max_gaussians=4000 if args.quick else None,
                         init_random_points=2000 if args.quick else 100_000)
        trainer = SemanticTrainer(data, tc)
        trainer.train()
        model = trainer.model
        fs = Run(model=model, train_config=tc)
    k = int(model.params[SEMANTICS].shape[1])
    names = data.class_names or [f"class_{i}" for i in range(k)]
    m = evaluate_semantics(model, data, save_dir=args.out / "semantic")
    print(f"held-out views: mIoU {m['miou']:.3f}, pixel accuracy {m['pixel_accuracy']:.3f}, "
          f"mean class accuracy {m['mean_class_accuracy']:.3f}")
    print("  IoU per class: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, m["iou_per_class"].tolist())))
    scene = fs.with_model(model)
    scene.class_names = list(names)
    print(f"wrote {scene.save(args.out / 'scene')} and {args.out / 'semantic'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("semantic_scene.py", main))
