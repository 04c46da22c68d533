"""Feature distillation: every Gaussian learns a feature from a 2D teacher.

The teacher's feature maps are extracted once into the fp16 on-disk cache
(feature3dgs.distill.cache) and streamed from it, one view per step. Each
Gaussian carries a D_render-dim feature; the rendered (D_render,H,W) map is
resized (bilinearly) to the teacher's grid (h,w) and, with the speed-up, lifted
to the teacher's dimension by the 1x1-conv decoder (which commutes with the
resize, so decoding after it is cheaper and identical). The loss is
weight * L1(student, teacher), added to the 3DGS photometric loss.

By default the feature loss also moves geometry and opacity (the original
Feature 3DGS rasterizer drops that gradient); `feature_to_geometry=False` renders
the features from detached geometry instead (one extra render per step).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.utils.io import atomic_write_text
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.distill.cache import FeatureCache, extract_features, view_source
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.rendering.kernels import render
from feature3dgs.training.trainer import TrainBatch, Trainer, TrainConfig, save_png, _safe_name
from feature3dgs.utils.visualize import FeaturePCA

RANDOM_WEIGHTS_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! WARNING: the teacher has RANDOM weights. Its features mean nothing; this run\n"
    "!! only exercises the pipeline. Give a real checkpoint for a meaningful result.\n"
    + "!" * 78 + "\n")


@dataclass
class DistillConfig:
    """Distillation options.

    teacher: 'sam', 'clip' or 'lseg'; checkpoint/model/weights_dir: see
        feature3dgs.distill.teachers.build_teacher; random_weights: a tiny random teacher (tests).
    render_dim: D_render, the per-Gaussian feature size. None = the teacher's dimension
        (no decoder); smaller values use the 1x1-conv speed-up decoder (e.g. 64 for SAM).
    feature_weight: weight of the L1 feature loss; lr_decoder: the decoder's Adam rate
        (the per-Gaussian features use TrainConfig.lr_features).
    feature_to_geometry: let the feature loss move means, rotations, scales, opacities.
    cache_dir: root of the teacher-feature cache (default ~/.cache/feature3dgs/features).
    extract_batch_size: images per teacher call while filling the cache.
    """

    teacher: str = "sam"
    checkpoint: Optional[str] = None
    model: Optional[str] = None
    weights_dir: Optional[str] = None
    random_weights: bool = False
    render_dim: Optional[int] = None
    feature_weight: float = 1.0
    lr_decoder: float = 1e-3
    feature_to_geometry: bool = True
    cache_dir: Optional[str] = None
    extract_batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_cache_dir() -> Path:
    import os

    root = os.environ.get("FEATURE3DGS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "feature3dgs") / "features"


def fill_feature_cache(scene, teacher, cache_dir: Union[str, Path, None] = None,
                       batch_size: int = 1, progress: bool = True) -> FeatureCache:
    """Extracts (resumably) the teacher's features of every train and test view."""
    cache = FeatureCache.for_teacher(Path(cache_dir) if cache_dir else default_cache_dir(), teacher)
    views = list(scene.train_views) + list(scene.test_views)
    items = [(v.name, (lambda v=v: scene.load_image(v)), view_source(scene, v)) for v in views]
    extract_features(teacher, items, cache, batch_size=batch_size, progress=progress, total=len(items))
    return cache


def label_embeddings(n_classes: int, dim: int, seed: int = 0) -> Tensor:
    """(n_classes, dim) fixed random unit vectors: the label teacher's class features."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_classes, dim, generator=g), dim=1)


def label_class_count(scene) -> int:
    """Classes the label teacher embeds: the scene's named classes plus one spare id."""
    return max(len(scene.class_names or []), 1) + 1


def label_feature_cache(scene, root: Union[str, Path], dim: int = 16, size: Optional[tuple[int, int]] = None,
                        noise: float = 0.0, seed: int = 0) -> FeatureCache:
    """A synthetic, multi-view consistent teacher made from the scene's class labels.

    Each class gets a fixed random unit vector of `dim` channels; a view's teacher map is
    the embedding of its class-label image, area-averaged to `size` (h, w) (default: full
    resolution), plus Gaussian noise of std `noise` drawn per view. Used to measure
    distillation (and student-vs-teacher segmentation) where no real teacher can run.
    """
    if not scene.has_labels:
        raise ValueError(f"scene {scene.source_path} has no class labels for a label teacher")
    n_classes = label_class_count(scene)
    embed = label_embeddings(n_classes, dim, seed)
    g = torch.Generator().manual_seed(seed + 1)
    key = f"labels|dim={dim}|size={size}|noise={noise}|seed={seed}|classes={n_classes}"
    cache = FeatureCache(Path(root), key)
    for view in list(scene.train_views) + list(scene.test_views):
        if cache.has(view.name):
            continue
        labels = scene.load_labels(view, "class").clamp(0, n_classes - 1)
        fmap = embed[labels].permute(2, 0, 1)  # (dim,H,W)
        if size is not None:
            fmap = F.adaptive_avg_pool2d(fmap[None], size)[0]
        if noise > 0:
            fmap = fmap + noise * torch.randn(fmap.shape, generator=g)
        cache.save(view.name, fmap)
    return cache


def student_features(rendered: Tensor, size: tuple[int, int], decoder: Optional[FeatureDecoder]) -> Tensor:
    """(D_render,H,W) rendered features -> (D_teacher,h,w) on the teacher's grid."""
    if tuple(rendered.shape[-2:]) != tuple(size):
        rendered = F.interpolate(rendered[None], size=size, mode="bilinear", align_corners=False)[0]
    return decoder(rendered) if decoder is not None else rendered


class FeatureDistillation:
    """The feature loss term of the Trainer (a `loss_fns` entry)."""

    def __init__(self, cache: FeatureCache, weight: float, decoder: Optional[FeatureDecoder],
                 feature_to_geometry: bool = True):
        self.cache = cache
        self.weight = float(weight)
        self.decoder = decoder
        self.feature_to_geometry = feature_to_geometry

    def rendered_features(self, trainer: Trainer, batch: TrainBatch, out) -> Tensor:
        if self.feature_to_geometry:
            return out.features
        m, cam = trainer.model, batch.camera
        detached = render(m.means.detach(), m.params["quats"].detach(), m.scales.detach(),
                          m.opacities.detach(), m.colors_dc.detach(), cam.viewmat, cam.K, cam.width,
                          cam.height, features=m.features)
        return detached.features

    def __call__(self, trainer: Trainer, batch: TrainBatch, out) -> dict[str, Tensor]:
        target = self.cache.load(batch.view.name, device=trainer.device)
        pred = student_features(self.rendered_features(trainer, batch, out), target.shape[-2:], self.decoder)
        return {"feature": self.weight * (pred - target).abs().mean()}


def add_features(model: GaussianModel, dim: int, seed: int = 0) -> GaussianModel:
    """A copy of `model` with fresh (N,dim) features (small random values), replacing any."""
    params = {k: v.detach() for k, v in model.params.items() if k != "features"}
    g = torch.Generator().manual_seed(seed)
    params["features"] = torch.randn(model.num_gaussians, dim, generator=g).to(model.device) * 1e-2
    return GaussianModel.from_params(params, model.active_sh_degree)


def feature_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Feature PSNR (peak = the teacher map's value range) and mean per-pixel cosine similarity."""
    mse = float(((pred - target) ** 2).mean())
    peak = float(target.max() - target.min())
    cos = float(F.cosine_similarity(pred, target, dim=0, eps=1e-8).mean())
    return {"feature_psnr": 10 * math.log10(peak ** 2 / max(mse, 1e-20)), "cosine": cos,
            "l1": float((pred - target).abs().mean())}


@torch.no_grad()
def evaluate_features(model: GaussianModel, scene, cache: FeatureCache, decoder: Optional[FeatureDecoder],
                      split: str = "test", save_dir: Union[str, Path, None] = None,
                      pca: Optional[FeaturePCA] = None) -> dict[str, Any]:
    """Student vs teacher on the views of `split`: mean feature PSNR / cosine / L1, and with
    save_dir a PNG per view: render | student features | teacher features (one shared PCA)."""
    views = scene.test_views if split == "test" else scene.train_views
    device = model.device
    per_view, panels = {}, []
    for view in views:
        cam = view.camera.to(device)
        out = model.render(cam, scene.background.to(device), with_features=True)
        target = cache.load(view.name, device=device)
        pred = student_features(out.features, target.shape[-2:], decoder)
        per_view[view.name] = feature_metrics(pred, target)
        panels.append((view, out.rgb, pred, target))
    result = {k: sum(v[k] for v in per_view.values()) / max(1, len(per_view))
              for k in ("feature_psnr", "cosine", "l1")}
    result["per_view"] = per_view
    if save_dir is not None and panels:
        if pca is None:  # fitted once, on the teacher's maps, so colours agree across views
            pca = FeaturePCA.fit([t for *_, t in panels])
        for view, rgb, pred, target in panels:
            h, w = rgb.shape[-2:]
            up = lambda x: F.interpolate(pca(x)[None], size=(h, w), mode="nearest")[0]  # noqa: E731
            panel = torch.cat([rgb.clamp(0, 1).cpu(), up(pred), up(target)], dim=2)
            save_png(panel, Path(save_dir) / f"{_safe_name(view.name)}.png")
        torch.save(pca.to_dict(), Path(save_dir) / "pca.pt")
    return result


def _teacher_record(teacher, dc: DistillConfig) -> dict[str, Any]:
    """What rebuilds the teacher later (feature3dgs.run): its kind and whether it had
    random weights, taken from the teacher actually used (None when features came from a cache)."""
    if teacher is None:
        return {"teacher": None, "random_weights": False}
    kind = teacher.name.split("-", 1)[0]
    return {"teacher": kind if kind in ("sam", "clip", "lseg") else dc.teacher,
            "random_weights": bool(teacher.is_random)}


def distill(scene, out_dir: Union[str, Path, None], train_config: Optional[TrainConfig] = None,
            distill_config: Optional[DistillConfig] = None, model: Optional[GaussianModel] = None,
            teacher=None, cache: Optional[FeatureCache] = None) -> dict[str, Any]:
    """Trains a feature scene: RGB reconstruction plus feature distillation.

    model: start from a trained RGB scene (e.g. load_ply(...)); features are added when it
    has none of size D_render. Without it, Gaussians are initialised from the scene.
    teacher: a built teacher (default: from distill_config); cache: teacher features already
    cached for every view (e.g. label_feature_cache), used instead of a teacher. Writes to out_dir what the
    Trainer writes (point_cloud.ply with features, checkpoints, logs) plus decoder.pt,
    distill_config.json, feature_metrics.json and renders/features/*.png. Returns the
    metrics, including 'feature_loss_curve' [(step, value)].
    """
    from feature3dgs.distill.teachers import build_teacher

    dc = distill_config or DistillConfig()
    tc = train_config or TrainConfig()
    if cache is None:
        if teacher is None:
            teacher = build_teacher(dc.teacher, checkpoint=dc.checkpoint, model=dc.model,
                                    weights_dir=dc.weights_dir, random_weights=dc.random_weights)
        if teacher.is_random:
            print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
        cache = fill_feature_cache(scene, teacher, dc.cache_dir, dc.extract_batch_size, tc.progress)
        teacher_info = {"name": teacher.name, "dim": teacher.dim, "random_weights": teacher.is_random,
                        "cache_key": teacher.cache_key()}
    else:
        teacher_info = {"name": "cached", "dim": cache.shape(scene.train_views[0].name)[0],
                        "random_weights": False, "cache_key": cache.key}
    teacher_dim = teacher_info["dim"]
    render_dim = dc.render_dim or teacher_dim
    if render_dim < 1:
        raise ValueError(f"render_dim must be >= 1, got {render_dim}")

    tc = dataclasses.replace(tc, feature_dim=render_dim)
    if model is not None and model.feature_dim != render_dim:
        model = add_features(model, render_dim, seed=tc.seed)
    decoder = FeatureDecoder(render_dim, teacher_dim) if render_dim != teacher_dim else None
    loss = FeatureDistillation(cache, dc.feature_weight, decoder, dc.feature_to_geometry)
    curve: list[tuple[int, float]] = []
    trainer = Trainer(scene, tc, out_dir=out_dir, model=model, loss_fns=[loss],
                      callbacks=[lambda tr, step, logs: curve.append((step, logs["loss/feature"]))])
    trainer.render_features = dc.feature_to_geometry
    if decoder is not None:
        loss.decoder = trainer.register_module("decoder", decoder, dc.lr_decoder)
    metrics = trainer.train()
    fm = evaluate_features(trainer.model, scene, cache, loss.decoder, "test",
                           save_dir=Path(out_dir) / "renders" / "features" if out_dir else None)
    metrics = dict(metrics or {})
    metrics["features"] = {k: v for k, v in fm.items() if k != "per_view"}
    metrics["feature_loss_curve"] = curve
    metrics["teacher"] = teacher_info
    metrics["render_dim"] = render_dim
    if out_dir is not None:
        out = Path(out_dir)
        if loss.decoder is not None:
            from feature3dgs.utils.io import atomic_open

            with atomic_open(out / "decoder.pt", "wb") as f:
                torch.save(loss.decoder.to_dict(), f)
        atomic_write_text(out / "distill_config.json", json.dumps(
            {**dc.to_dict(), **_teacher_record(teacher, dc), "render_dim": render_dim, "teacher_dim": teacher_dim},
            indent=2))
        atomic_write_text(out / "feature_metrics.json", json.dumps(
            {k: v for k, v in metrics.items() if k != "feature_loss_curve"} | {"per_view": fm["per_view"]},
            indent=2, default=str))
    metrics["trainer"] = trainer
    return metrics
