"""The application sub-commands of ``feature3dgs``, on a distillation output folder RUN.

    feature3dgs segment  RUN --view V --point X,Y [--negative X,Y] [--box X0,Y0,X1,Y1] --out DIR
    feature3dgs query    RUN --labels "chair,table,floor" [--query chair] --view V --out DIR
    feature3dgs edit     RUN --query "chair" (--threshold T | --top-k K) --action delete --out NEWRUN
    feature3dgs select   RUN --view V --click X,Y [--stroke "X,Y;X,Y;..."] --out DIR [--action ...]
    feature3dgs mask     RUN --view V --point X,Y [--views 8] [--method vote|optimize] [--refine] --out DIR
    feature3dgs semantic RUN --out NEWRUN [--steps 300]

Views (``--view``) are a view name or an index into ``--split`` (default: test, i.e. views the
Gaussians were not fitted to), counted from 0. Pixels are (x, y) = (column, row) at the scene's
resolution. Every command writes PNGs and a JSON summary into ``--out``; ``edit``,
``select --action`` and ``semantic`` write a new run folder that ``feature3dgs view`` and these
commands read, never overwriting RUN.

Before any work each command checks its options (one line and exit 2 for a bad one): ``--out``
must be a writable folder (not a file, not under a file, not RUN for the commands that write a
scene), prompts must lie on the view, counts must be in range, and ``--data`` must hold the
cameras the run was fitted to.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from feature3dgs.apps.edit import (
    delete,
    extract,
    gaussian_scores,
    recolor,
    select_gaussians,
    select_gaussians_by_clicks,
)
from feature3dgs.apps.mask_fusion import fuse_object, multiview_sam_masks
from feature3dgs.apps.query import LERF_NEGATIVES, relevancy_map, text_relevancy
from feature3dgs.apps.scene_check import check_scene_matches
from feature3dgs.apps.segment import (
    check_prompts,
    click_features,
    sam_masks_on_view,
    select_by_clicks,
    stroke_pixels,
)
from feature3dgs.apps.semantic import evaluate_semantics, fit_semantics
from feature3dgs.cli.args import numbers, split_list
from feature3dgs.cli.errors import CLIError
from feature3dgs.model.gaussians import SEMANTICS
from feature3dgs.rendering.device import resolve_device
from feature3dgs.run import load_run
from feature3dgs.utils.io import (
    atomic_open,
    atomic_write_text,
    check_writable_dir,
    safe_name,
    save_png,
)
from feature3dgs.utils.visualize import (
    class_palette,
    colorize_labels,
    heatmap,
    overlay_mask,
)

__all__ = ["register"]


# ---------------------------------------------------------------------- argument types
_point = numbers(2, "point X,Y")
_box = numbers(4, "box X0,Y0,X1,Y1")
_color = numbers(3, "colour R,G,B in [0,1]")


def _stroke(s: str) -> list[tuple[float, ...]]:
    return [_point(p) for p in s.split(";") if p.strip()]


def _common(p: argparse.ArgumentParser, view: bool = True) -> None:
    p.add_argument("run", metavar="RUN", help="a distillation output folder (point_cloud.ply, decoder.pt, distill_config.json)")
    if view:
        p.add_argument("--view", default="0", help="view name, or index into --split (default 0)")
        p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--data", default=None, help="the scene's images/cameras (default: the one the run recorded)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--weights-dir", default=None, help="folder holding the teacher's weights")


def register(sub) -> dict:
    s = sub.add_parser("segment", help="SAM masks from point/box prompts on a novel view (rendered features)")
    _common(s)
    s.add_argument("--point", type=_point, action="append", default=[], help="positive point X,Y (repeatable)")
    s.add_argument("--negative", type=_point, action="append", default=[], help="negative point X,Y (repeatable)")
    s.add_argument("--box", type=_box, default=None, help="box X0,Y0,X1,Y1 in pixels")
    s.add_argument("--multimask", action="store_true", help="SAM's three masks instead of one")
    s.add_argument("--out", required=True)

    q = sub.add_parser("query", help="text queries: per-pixel relevancy and semantic segmentation of a view")
    _common(q)
    q.add_argument("--labels", type=split_list, required=True, help="comma-separated label prompts")
    q.add_argument("--query", default=None, help="the label whose relevancy heat map is saved (default: first)")
    q.add_argument("--negatives", type=split_list, default=list(LERF_NEGATIVES),
                   help="canonical phrases of the relevancy score (LERF); 'none' for plain cosine")
    q.add_argument("--out", required=True)

    e = sub.add_parser("edit", help="select Gaussians by a text query; extract, delete or recolour them")
    _common(e, view=False)
    e.add_argument("--query", required=True, help="text naming what to select")
    e.add_argument("--threshold", type=float, default=None, help="select cosine similarity > this")
    e.add_argument("--top-k", type=int, default=None, help="select the k most similar Gaussians")
    e.add_argument("--action", choices=["extract", "delete", "recolor"], required=True)
    e.add_argument("--color", type=_color, default=(1.0, 0.0, 0.0), help="recolour: R,G,B in [0,1]")
    e.add_argument("--max-views", type=int, default=4, help="before/after renders of this many test views")
    e.add_argument("--out", required=True, help="new run folder for the edited scene")

    c = sub.add_parser("select", help="click/stroke selection: the clicked object in every view and in 3D")
    _common(c)
    c.add_argument("--click", type=_point, action="append", default=[], help="positive click X,Y (repeatable)")
    c.add_argument("--stroke", type=_stroke, action="append", default=[], help="positive stroke 'X,Y;X,Y;...'")
    c.add_argument("--negative", type=_point, action="append", default=[], help="negative click X,Y")
    c.add_argument("--threshold", type=float, default=0.9, help="cosine threshold without negative clicks")
    c.add_argument("--action", choices=["none", "extract", "delete", "recolor"], default="none",
                   help="edit the selected Gaussians and save the scene to OUT/scene")
    c.add_argument("--color", type=_color, default=(1.0, 0.0, 0.0))
    c.add_argument("--out", required=True)

    m = sub.add_parser("mask", help="multi-view consistent object mask (SANeRF-HQ): SAM in several views, fused")
    _common(m)
    m.add_argument("--point", type=_point, action="append", default=[], help="positive point X,Y on --view")
    m.add_argument("--negative", type=_point, action="append", default=[], help="negative point X,Y on --view")
    m.add_argument("--views", type=int, default=8, help="training views the prompt is carried into")
    m.add_argument("--method", choices=["vote", "optimize"], default="vote")
    m.add_argument("--refine", action="store_true", help="ray-pair refinement: similar-colour neighbours agree")
    m.add_argument("--out", required=True)

    t = sub.add_parser("semantic", help="closed-set semantics (GSNeRF): per-Gaussian class logits from label maps")
    _common(t, view=False)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--out", required=True, help="new run folder with the class logits")
    return {"segment": cmd_segment, "query": cmd_query, "edit": cmd_edit, "select": cmd_select,
            "mask": cmd_mask, "semantic": cmd_semantic}


# ---------------------------------------------------------------------- shared plumbing
def _check_out(args: argparse.Namespace, writes_scene: bool = False) -> Path:
    """--out is a folder this process can write (and, for a new scene, not RUN itself)."""
    out = check_writable_dir(args.out, "--out")
    if writes_scene:
        run = Path(args.run)
        run_dir = run.parent if run.is_file() else run
        if out.exists() and run_dir.exists() and out.resolve() == run_dir.resolve():
            raise CLIError(f"--out {out} is the run folder {args.run}: the new scene must go to another folder")
    return out


def _check_number(option: str, value, lo=None, hi=None) -> None:
    """A finite ``value`` in [lo, hi] (bounds optional), else a one-line error naming ``option``."""
    if value is None:
        return
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        span = (f"in [{lo:g}, {hi:g}]" if lo is not None and hi is not None
                else f">= {lo:g}" if lo is not None else f"<= {hi:g}" if hi is not None else "finite")
        raise CLIError(f"{option} must be {span}, got {value:g}")


def _load(args: argparse.Namespace):
    """The run, and its scene (``--data`` when given), checked to hold the run's cameras."""
    run = load_run(args.run, device=resolve_device(args.device))
    data = run.load_data(data=args.data)
    note = check_scene_matches(run.scene_info, data, "--data" if args.data else "the scene recorded in config.json,")
    if note:
        print(note, file=sys.stderr)
    return run, data


def _pick_view(data, split: str, key: str):
    views = data.test_views if split == "test" else data.train_views
    if not views:
        raise ValueError(f"the scene has no {split} views")
    for v in views:
        if v.name == key:
            return v
    try:
        i = int(key)
    except ValueError:
        raise ValueError(f"--view {key!r}: no {split} view has that name "
                         f"(names: {', '.join(v.name for v in views[:6])}{', ...' if len(views) > 6 else ''})") from None
    if not 0 <= i < len(views):
        raise ValueError(f"--view {i}: the {split} split has {len(views)} views, numbered 0..{len(views) - 1}")
    return views[i]


def _check_points(points, camera, what: str) -> None:
    for x, y in points:
        if not (0 <= x < camera.width and 0 <= y < camera.height):
            raise ValueError(f"{what} ({x:g},{y:g}) is outside the {camera.width}x{camera.height} view")


def _render_rgb(fs, camera):
    with torch.no_grad():
        return fs.model.render(camera).rgb.clamp(0, 1).cpu()


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=float))


# ---------------------------------------------------------------------- segment
def cmd_segment(args: argparse.Namespace) -> int:

    if not args.point and args.box is None:
        raise ValueError("give at least one --point or a --box")
    out = _check_out(args)
    fs, data = _load(args)
    if fs.teacher_kind != "sam":
        raise ValueError(f"segment needs a scene distilled from SAM; {args.run} was distilled from {fs.teacher_kind}")
    view = _pick_view(data, args.split, args.view)
    cam = view.camera.to(fs.device)
    _check_points(args.point + args.negative, cam, "point")
    if args.box is not None:
        try:
            check_prompts(boxes=[args.box], width=cam.width, height=cam.height)
        except ValueError as e:
            raise CLIError(f"--box: {e}") from None
    points = labels = None
    if args.point or args.negative:
        points = torch.tensor(args.point + args.negative, dtype=torch.float32)
        labels = torch.tensor([1] * len(args.point) + [0] * len(args.negative))
    boxes = torch.tensor([args.box], dtype=torch.float32) if args.box is not None else None
    teacher = fs.teacher(args.weights_dir)
    sam_masks_on_view(fs.model, cam, fs.decoder, teacher, points, labels, boxes)  # warm-up (first call allocates)
    res = sam_masks_on_view(fs.model, cam, fs.decoder, teacher, points, labels, boxes,
                            multimask_output=args.multimask)
    rgb = _render_rgb(fs, cam)
    summary: dict[str, Any] = {"view": view.name, "points": args.point, "negatives": args.negative,
                               "box": args.box, "timings_ms": dataclasses.asdict(res.timings), "masks": []}
    for k, (mask, score) in enumerate(zip(res.masks.cpu(), res.scores.cpu())):
        save_png(mask[None].float().expand(3, -1, -1), out / f"mask_{k}.png")
        save_png(overlay_mask(rgb, mask), out / f"overlay_{k}.png")
        summary["masks"].append({"index": k, "score": float(score), "area_px": int(mask.sum())})
    _write_json(out / "segment.json", summary)
    t = res.timings
    print(f"{view.name}: {len(summary['masks'])} mask(s), areas {[m['area_px'] for m in summary['masks']]} px; "
          f"render {t.render_ms:.1f} ms + decode {t.decode_ms:.1f} ms + mask {t.mask_ms:.1f} ms "
          f"= {t.total_ms:.1f} ms on {fs.device}")
    if teacher.is_random:
        print("(the SAM teacher has RANDOM weights: the masks mean nothing)")
    print(f"wrote {out}/mask_*.png, overlay_*.png, segment.json")
    return 0


# ---------------------------------------------------------------------- query
def cmd_query(args: argparse.Namespace) -> int:

    out = _check_out(args)
    fs, data = _load(args)
    view = _pick_view(data, args.split, args.view)
    query = args.query or args.labels[0]
    text = fs.encode_text(args.labels + ([] if query in args.labels else [query]))
    feats = fs.render_features(view.camera)
    rel = text_relevancy(feats, text[:len(args.labels)])
    seg = rel.argmax(0).cpu()
    q_emb = text[args.labels.index(query)] if query in args.labels else text[-1]
    negatives = None if args.negatives == ["none"] else fs.encode_text(args.negatives)
    heat = relevancy_map(feats, q_emb, negatives).cpu()
    rgb = _render_rgb(fs, view.camera)
    save_png(colorize_labels(seg, class_palette(len(args.labels))), out / "semantic.png")
    save_png(heatmap(heat), out / f"relevancy_{safe_name(query)}.png")
    save_png(0.5 * rgb + 0.5 * heatmap(heat), out / f"relevancy_{safe_name(query)}_overlay.png")
    fractions = {lab: float((seg == i).float().mean()) for i, lab in enumerate(args.labels)}
    _write_json(out / "query.json", {"view": view.name, "labels": args.labels, "query": query,
                                     "negatives": args.negatives, "pixel_fraction": fractions,
                                     "relevancy_mean": float(heat.mean()), "relevancy_max": float(heat.max())})
    print(f"{view.name}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in fractions.items())
          + f"; relevancy of {query!r}: max {float(heat.max()):.3f}")
    print(f"wrote {out}/semantic.png, relevancy_{safe_name(query)}.png, query.json")
    return 0


# ---------------------------------------------------------------------- edits
def _apply_edit(model, mask, action: str, color):
    if action == "extract":
        return extract(model, mask)
    if action == "delete":
        return delete(model, mask)
    return recolor(model, mask, color)


def _before_after(fs_before, fs_after, views, out: Path) -> list[str]:
    names = []
    for view in views:
        cam = view.camera
        panel = torch.cat([_render_rgb(fs_before, cam), _render_rgb(fs_after, cam)], dim=2)
        save_png(panel, out / f"{safe_name(view.name)}.png")
        names.append(view.name)
    return names


def cmd_edit(args: argparse.Namespace) -> int:

    if args.threshold is None and args.top_k is None:
        raise ValueError("give --threshold and/or --top-k")
    _check_number("--threshold", args.threshold)
    _check_number("--top-k", args.top_k, lo=1)
    _check_number("--max-views", args.max_views, lo=0)
    for c in args.color:
        _check_number("--color", c, lo=0, hi=1)
    out = _check_out(args, writes_scene=True)
    fs, data = _load(args)
    text = fs.encode_text([args.query])[0]
    scores = gaussian_scores(fs.model, fs.decoder, text)
    mask = select_gaussians(scores, args.threshold, args.top_k)
    n_sel = int(mask.sum())
    if n_sel == 0:
        raise ValueError(f"no Gaussian matches {args.query!r} (scores range {float(scores.min()):.3f} .. "
                         f"{float(scores.max()):.3f}); lower --threshold or use --top-k")
    edited = fs.with_model(_apply_edit(fs.model, mask, args.action, args.color))
    ply = edited.save(out)
    views = data.test_views[: args.max_views] or data.train_views[: args.max_views]
    names = _before_after(fs, edited, views, out / "before_after")
    _write_json(out / "edit.json", {"source": str(args.run), "query": args.query, "threshold": args.threshold,
                                    "top_k": args.top_k, "action": args.action, "color": args.color,
                                    "n_selected": n_sel, "n_before": fs.model.num_gaussians,
                                    "n_after": edited.model.num_gaussians, "views": names})
    print(f"{args.action}: {n_sel} of {fs.model.num_gaussians} Gaussians match {args.query!r}; "
          f"the edited scene has {edited.model.num_gaussians}")
    print(f"wrote {ply}, {out / 'before_after'}/*.png (left before, right after), {out / 'edit.json'}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:

    clicks = list(args.click) + [p for s in args.stroke for p in stroke_pixels(s)]
    if not clicks:
        raise ValueError("give at least one --click or --stroke")
    _check_number("--threshold", args.threshold, lo=-1, hi=1)
    for c in args.color:
        _check_number("--color", c, lo=0, hi=1)
    out = _check_out(args, writes_scene=args.action != "none")
    fs, data = _load(args)
    src = _pick_view(data, args.split, args.view)
    _check_points(clicks + args.negative, src.camera, "click")
    src_feats = fs.render_features(src.camera, decoded=False)
    pos = click_features(src_feats, clicks)
    neg = click_features(src_feats, args.negative) if args.negative else None
    gsel = select_gaussians_by_clicks(fs.model, pos, neg, args.threshold)
    if args.action != "none" and not bool(gsel.any()):
        raise ValueError("no Gaussian is selected; lower --threshold or add clicks")
    per_view = {}
    for view in data.train_views + data.test_views:
        with torch.no_grad():  # one render gives the view's features and its picture
            rendered = fs.model.render(view.camera, features=fs.model.features)
        mask = select_by_clicks(src_feats, clicks, rendered.features, args.threshold, args.negative or None)
        save_png(overlay_mask(rendered.rgb.clamp(0, 1).cpu(), mask.cpu()), out / "views" / f"{safe_name(view.name)}.png")
        per_view[view.name] = int(mask.sum())
    with atomic_open(out / "selection.pt", "wb") as f:
        torch.save({"mask": gsel.cpu(), "clicks": clicks, "negatives": args.negative, "view": src.name}, f)
    summary = {"view": src.name, "n_clicks": len(clicks), "n_negatives": len(args.negative),
               "threshold": None if neg is not None else args.threshold, "pixels_per_view": per_view,
               "n_selected_gaussians": int(gsel.sum()), "n_gaussians": fs.model.num_gaussians}
    if args.action != "none":
        edited = fs.with_model(_apply_edit(fs.model, gsel, args.action, args.color))
        summary["scene"] = str(edited.save(out / "scene"))
        summary["n_after"] = edited.model.num_gaussians
        _before_after(fs, edited, data.test_views[:4], out / "before_after")
    _write_json(out / "select.json", summary)
    print(f"selected {int(gsel.sum())} of {fs.model.num_gaussians} Gaussians; pixels per view: "
          + ", ".join(f"{k} {v}" for k, v in list(per_view.items())[:6]) + (" ..." if len(per_view) > 6 else ""))
    print(f"wrote {out}/views/*.png, selection.pt, select.json" + (f", {summary['scene']}" if "scene" in summary else ""))
    return 0


# ---------------------------------------------------------------------- multi-view mask, semantics
def _spread(views, k: int):
    """k views spread evenly over the list (all of them when k >= len)."""
    if k >= len(views):
        return list(views)
    step = len(views) / max(k, 1)
    return [views[int(i * step)] for i in range(k)]


def cmd_mask(args: argparse.Namespace) -> int:

    if not args.point:
        raise ValueError("give at least one --point on --view")
    if args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    out = _check_out(args)
    fs, data = _load(args)
    if fs.teacher_kind != "sam":
        raise ValueError(f"mask needs a scene distilled from SAM; {args.run} was distilled from {fs.teacher_kind}")
    src = _pick_view(data, args.split, args.view)
    _check_points(args.point + args.negative, src.camera, "point")
    targets = [src] + [v for v in _spread(data.train_views, args.views) if v.name != src.name]
    cams = [v.camera.to(fs.device) for v in targets]
    points = torch.tensor(args.point + args.negative, dtype=torch.float32)
    labels = torch.tensor([1] * len(args.point) + [0] * len(args.negative))
    mv = multiview_sam_masks(fs.model, fs.decoder, fs.teacher(args.weights_dir), cams[0], points, labels, cams)
    used = [(v, c, m) for v, c, m in zip(targets, cams, mv.masks) if m is not None]
    if not used:
        raise ValueError("the prompt is visible in no view (does it lie on the rendered scene?)")
    refine = [_render_rgb(fs, c).to(fs.device) for _, c, _ in used] if args.refine else None
    fused = fuse_object(fs.model, [c for _, c, _ in used], [m for *_, m in used], args.method, refine_images=refine)
    for (view, cam, m) in used:
        save_png(overlay_mask(_render_rgb(fs, cam), m.cpu(), color=(0.2, 0.6, 1.0)), out / "sam" / f"{safe_name(view.name)}.png")
    rendered = {}
    for view in data.test_views + [src]:
        mask = fused.binary_mask(view.camera.to(fs.device)).cpu()
        save_png(overlay_mask(_render_rgb(fs, view.camera), mask), out / "fused" / f"{safe_name(view.name)}.png")
        rendered[view.name] = int(mask.sum())
    with atomic_open(out / "object_weights.pt", "wb") as f:
        torch.save({"weights": fused.weights.detach().cpu(), "method": args.method, "view": src.name,
                    "points": args.point, "negatives": args.negative}, f)
    summary = {"view": src.name, "method": args.method, "refine": args.refine,
               "sam_views": {v.name: int(m.sum()) for v, _, m in used},
               "skipped_views": [v.name for v, m in zip(targets, mv.masks) if m is None],
               "n_selected_gaussians": int(fused.selection.sum()), "n_gaussians": fs.model.num_gaussians,
               "fused_mask_px": rendered}
    _write_json(out / "mask.json", summary)
    print(f"SAM in {len(used)} views ({len(summary['skipped_views'])} skipped: prompt not visible); "
          f"{args.method}: {summary['n_selected_gaussians']} of {fs.model.num_gaussians} Gaussians in the object")
    if fs.teacher().is_random:
        print("(the SAM teacher has RANDOM weights: the masks mean nothing)")
    print(f"wrote {out}/sam/*.png (per-view SAM masks), fused/*.png (the fused object rendered), "
          "object_weights.pt, mask.json")
    return 0


def cmd_semantic(args: argparse.Namespace) -> int:

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError(f"--lr must be a positive finite number, got {args.lr:g}")
    out = _check_out(args, writes_scene=True)
    fs, data = _load(args)
    if not data.has_labels:
        raise ValueError(f"the scene {data.source_path} has no class label maps to learn from")
    t0 = time.perf_counter()
    model, curve = fit_semantics(fs.model, data, steps=args.steps, lr=args.lr)
    wall = time.perf_counter() - t0
    k = int(model.params[SEMANTICS].shape[1])
    names = list(data.class_names) if data.class_names and len(data.class_names) == k else [f"class_{i}" for i in range(k)]
    fitted = fs.with_model(model)
    fitted.class_names = names
    ply = fitted.save(out)
    m = evaluate_semantics(model, data, save_dir=out / "semantic")
    summary = {"steps": args.steps, "lr": args.lr, "fit_s": wall, "class_names": names,
               "loss_first": curve[0], "loss_last": sum(curve[-10:]) / len(curve[-10:]),
               "test": None if m is None else {key: v for key, v in m.items() if key != "iou_per_class"}
               | {"iou_per_class": dict(zip(names, m["iou_per_class"].tolist()))}}
    _write_json(out / "semantic_metrics.json", summary)
    print(f"fitted {k} class logits per Gaussian in {args.steps} steps ({wall:.1f} s): cross-entropy "
          f"{summary['loss_first']:.3f} -> {summary['loss_last']:.3f}")
    if m is not None:
        print(f"test views: mIoU {m['miou']:.3f}, pixel accuracy {m['pixel_accuracy']:.3f}, "
              f"mean class accuracy {m['mean_class_accuracy']:.3f}")
    print(f"wrote {ply}, {out / 'semantic'}/*.png (render | classes), {out / 'semantic_metrics.json'}")
    return 0
