"""Text queries on a CLIP/LSeg feature scene, then a language-guided edit in 3D.

    python examples/text_query_edit.py                     # distils dense CLIP on the built-in scene
    python examples/text_query_edit.py --run outputs/distill_clip --labels "chair,table,floor" --query chair

1. Per-pixel relevancy of each label prompt on a held-out view and its argmax segmentation
   (OUT/query/semantic.png), and LERF's relevancy heat map of --query (OUT/query/relevancy.png).
2. Every Gaussian's decoded feature is scored against --query; the --top-k best (or those above
   --threshold) are deleted in one copy of the scene and recoloured in another. Both are saved
   as run folders (OUT/deleted, OUT/recolored) with before | after renders.
Without CLIP weights the teacher is a tiny random CLIP: everything runs, nothing means anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_scene_args, load_or_distill  # noqa: E402

from feature3dgs.apps.edit import delete, gaussian_scores, recolor, select_gaussians  # noqa: E402
from feature3dgs.apps.query import relevancy_map, semantic_segmentation  # noqa: E402
from feature3dgs.utils.visualize import class_palette, colorize_labels  # noqa: E402
from feature3dgs.utils.io import save_png  # noqa: E402
from feature3dgs.utils.visualize import heatmap  # noqa: E402
from feature3dgs.cli.errors import run_command  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scene_args(parser, "outputs/text_query_edit")
    parser.add_argument("--labels", default="sphere,box,cylinder,ground", help="comma-separated label prompts")
    parser.add_argument("--query", default="box")
    parser.add_argument("--top-k", type=int, default=None, help="default: 5%% of the Gaussians")
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args(argv)
    fs, data = load_or_distill(args, "clip", render_dim=128)
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    view = data.test_views[0]

    text = fs.encode_text([f"a photo of a {s}" for s in labels])
    query = fs.encode_text([f"a photo of a {args.query}"])[0]
    canonical = fs.encode_text(["object", "things", "stuff", "texture"])
    feats = fs.render_features(view.camera)
    seg = semantic_segmentation(feats, text).cpu()
    rel = relevancy_map(feats, query, canonical).cpu()
    save_png(colorize_labels(seg, class_palette(len(labels))), args.out / "query" / "semantic.png")
    save_png(heatmap(rel), args.out / "query" / "relevancy.png")
    print(f"{view.name}: share of pixels per label: "
          + ", ".join(f"{s} {100 * float((seg == i).float().mean()):.1f}%" for i, s in enumerate(labels)))
    print(f"relevancy of {args.query!r}: mean {float(rel.mean()):.3f}, max {float(rel.max()):.3f}")

    scores = gaussian_scores(fs.model, fs.decoder, query)
    top_k = args.top_k if args.top_k is not None or args.threshold is not None else max(1, fs.model.num_gaussians // 20)
    selected = select_gaussians(scores, args.threshold, top_k)
    print(f"{int(selected.sum())} of {fs.model.num_gaussians} Gaussians match {args.query!r} "
          f"(cosine {float(scores[selected].min()):.3f} .. {float(scores.max()):.3f})")
    for name, model in (("deleted", delete(fs.model, selected)), ("recolored", recolor(fs.model, selected, (1, 0, 0)))):
        edited = fs.with_model(model)
        ply = edited.save(args.out / name)
        with torch.no_grad():
            before = fs.model.render(view.camera.to(fs.device)).rgb
            after = model.render(view.camera.to(fs.device)).rgb
        save_png(torch.cat([before, after], dim=2), args.out / name / "before_after.png")
        print(f"  {name}: {model.num_gaussians} Gaussians -> {ply}")
    if fs.teacher().is_random:
        print("(CLIP with RANDOM weights: the scores mean nothing)")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("text_query_edit.py", main))
