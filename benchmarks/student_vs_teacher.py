"""Is the student cleaner than its teacher? Segmentation of held-out views.

On the built-in synthetic scene, a synthetic teacher is made from the ground-truth
class labels (feature3dgs.distill.label_feature_cache): each class a fixed random
unit vector, per view area-averaged to a low resolution (default 64x64) and
corrupted with Gaussian noise. Both are segmented the same way, by the nearest
class vector (feature3dgs.apps.segment.semantic_segmentation):
  teacher: its own noisy low-res map of each test view, upsampled (nearest) to full size;
  student: features rendered at full size from the distilled Gaussians (trained on
           the train views only) at the same test views.
Reports mIoU, pixel accuracy and mean class accuracy against the true labels.

    python benchmarks/student_vs_teacher.py [--steps 500] [--noise 0.3] [--teacher-size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from feature3dgs.data import builtin_scene, load_scene  # noqa: E402
from feature3dgs.distill.distill import DistillConfig, distill  # noqa: E402
from feature3dgs.distill.labels import label_class_count, label_embeddings, label_feature_cache  # noqa: E402
from feature3dgs.utils.metrics import confusion_matrix, segmentation_metrics  # noqa: E402
from feature3dgs.apps.query import semantic_segmentation  # noqa: E402
from feature3dgs.training.config import TrainConfig  # noqa: E402
from bench_utils import git_revision, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="a scene with class labels (default: built-in)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--teacher-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "student_vs_teacher.json")
    args = parser.parse_args(argv)

    scene = load_scene(args.data or builtin_scene())
    n_classes = label_class_count(scene)
    embed = label_embeddings(n_classes, args.dim)
    size = (args.teacher_size, args.teacher_size)
    with tempfile.TemporaryDirectory() as tmp:
        cache = label_feature_cache(scene, Path(tmp), dim=args.dim, size=size, noise=args.noise)
        tc = TrainConfig(iterations=args.steps, device=args.device, lpips=None, tensorboard=False,
                         progress=False, save_test_renders=False, eval_every=0)
        t0 = time.perf_counter()
        m = distill(scene, None, tc, DistillConfig(render_dim=args.dim), cache=cache)
        wall = time.perf_counter() - t0
        model = m.model
        conf_t = torch.zeros(n_classes, n_classes, dtype=torch.int64)
        conf_s = torch.zeros_like(conf_t)
        with torch.no_grad():
            for view in scene.test_views:
                labels = scene.load_labels(view, "class").clamp(0, n_classes - 1)
                H, W = labels.shape
                teacher = cache.load(view.name)
                seg_t = semantic_segmentation(teacher, embed)
                seg_t = F.interpolate(seg_t[None, None].float(), size=(H, W), mode="nearest")[0, 0].long()
                out = model.render(view.camera, features=model.features)
                seg_s = semantic_segmentation(out.features.cpu(), embed)
                conf_t += confusion_matrix(seg_t, labels, n_classes)
                conf_s += confusion_matrix(seg_s, labels, n_classes)
    rows = {"teacher": segmentation_metrics(conf_t), "student": segmentation_metrics(conf_s)}
    print(f"held-out views of {scene.source_path}: teacher = labels at {size[0]}x{size[1]} + noise "
          f"{args.noise}; student = {args.steps} steps of distillation ({wall:.0f} s); git {git_revision()}")
    print(f"{'':>8} | {'mIoU':>6} {'pixel acc':>9} {'class acc':>9}")
    for name, r in rows.items():
        print(f"{name:>8} | {r['miou']:6.3f} {r['pixel_accuracy']:9.3f} {r['mean_class_accuracy']:9.3f}")
    verdict = rows["student"]["miou"] > rows["teacher"]["miou"]
    print("student beats teacher" if verdict else "student does NOT beat teacher")
    result = dict(benchmark="student_vs_teacher", torch=torch.__version__, git=git_revision(),
                  date=time.strftime("%Y-%m-%d"), steps=args.steps, noise=args.noise, teacher_size=size,
                  dim=args.dim, wall_s=wall, rgb_test_psnr=m.train.eval.psnr,
                  teacher={k: v for k, v in rows["teacher"].items() if k != "iou_per_class"},
                  student={k: v for k, v in rows["student"].items() if k != "iou_per_class"},
                  student_beats_teacher=verdict)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
