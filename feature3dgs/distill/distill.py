"""Feature distillation: every Gaussian learns a feature from a 2D teacher.

The teacher's feature maps are extracted once into the fp16 on-disk cache
(:mod:`feature3dgs.distill.cache`) and streamed from it, one view per step. Each Gaussian carries
a D_render-dim feature; the rendered (D_render,H,W) map is resized (bilinearly) to the teacher's
grid (h,w) and, with the speed-up, lifted to the teacher's dimension by the 1x1-conv decoder
(which commutes with the resize, so decoding after it is cheaper and identical). The loss is
weight * L1(student, teacher), added to the 3DGS photometric loss.

By default the feature loss also moves geometry and opacity (the original Feature 3DGS
rasterizer drops that gradient); ``feature_to_geometry=False`` renders the features from detached
geometry instead (one extra render per step).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from feature3dgs.distill.cache import FeatureCache, fill_feature_cache
from feature3dgs.distill.teachers import build_teacher
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import FEATURES, GaussianModel
from feature3dgs.training.config import TrainConfig
from feature3dgs.training.distributed import Distributed
from feature3dgs.training.sink import RunSink
from feature3dgs.training.trainer import TrainBatch, Trainer, TrainResult
from feature3dgs.utils.io import safe_name, save_png
from feature3dgs.utils.visualize import FeaturePCA

__all__ = ["DistillConfig", "DistillResult", "DistillSink", "FeatureMetrics", "TeacherInfo", "FeatureDistillation",
           "distill", "student_features", "add_features", "feature_metrics", "evaluate_features",
           "RANDOM_WEIGHTS_WARNING", "TeacherKind"]

TeacherKind = Literal["sam", "clip", "lseg"]

RANDOM_WEIGHTS_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! WARNING: the teacher has RANDOM weights. Its features mean nothing; this run\n"
    "!! only exercises the pipeline. Give a real checkpoint for a meaningful result.\n"
    + "!" * 78 + "\n")


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class DistillConfig:
    """Distillation options (the ``feature3dgs distill`` flags beyond the training ones)."""

    teacher: TeacherKind = _help("the 2D teacher whose features the Gaussians learn", default="sam")
    checkpoint: Optional[str] = _help("teacher weights: SAM .pth, open_clip tag or file, LSeg .ckpt", default=None)
    teacher_model: Optional[str] = _help("SAM: vit_h | vit_l | vit_b; CLIP: an open_clip model name", default=None)
    weights_dir: Optional[str] = _help("folder holding teacher checkpoints", default=None)
    random_weights: bool = field(default=False, metadata={
        "help": "a tiny teacher with RANDOM weights: exercises the pipeline, means nothing",
        "flag": "--random-weights-for-testing"})
    render_dim: Optional[int] = _help(
        "per-Gaussian feature size (default: the teacher's; smaller uses the 1x1-conv decoder)", default=None)
    feature_weight: float = _help("weight of the L1 feature loss", default=1.0)
    lr_decoder: float = _help("Adam learning rate of the decoder", default=1e-3)
    feature_to_geometry: bool = _help("let the feature loss move means, rotations, scales and opacities",
                                      default=True)
    trust_checkpoint: bool = _help(
        "LSeg: unpickle a --checkpoint that references objects beyond tensors; this can run code from the "
        "file, so only for a file from a source you trust (default: weights-only loading, such a file is "
        "refused)", default=False)
    cache_dir: Optional[str] = _help("teacher feature cache (default ~/.cache/feature3dgs/features)", default=None)
    extract_batch_size: int = _help("images per teacher call while filling the cache", default=1)

    def validate(self) -> None:
        if self.teacher not in ("sam", "clip", "lseg"):
            raise ValueError(f"teacher must be 'sam', 'clip' or 'lseg', got {self.teacher!r}")
        if self.render_dim is not None and self.render_dim < 1:
            raise ValueError(f"render_dim must be >= 1, got {self.render_dim}")
        if not (math.isfinite(self.feature_weight) and self.feature_weight >= 0):
            raise ValueError(f"feature_weight must be a finite number >= 0, got {self.feature_weight}")
        if not (math.isfinite(self.lr_decoder) and self.lr_decoder >= 0):
            raise ValueError(f"lr_decoder must be a finite number >= 0, got {self.lr_decoder}")
        if self.extract_batch_size < 1:
            raise ValueError(f"extract_batch_size must be >= 1, got {self.extract_batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TeacherInfo:
    """The teacher a run was distilled from. ``kind`` is None when the features came from a
    prepared cache (e.g. the label teacher) rather than a teacher network."""

    kind: Optional[TeacherKind]
    name: str
    dim: int
    random_weights: bool
    cache_key: str


@dataclass
class FeatureMetrics:
    """Student vs teacher on held-out views: feature PSNR (dB; peak = the teacher map's range),
    mean per-pixel cosine similarity, mean L1; and every view's figures."""

    feature_psnr: float
    cosine: float
    l1: float
    per_view: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class DistillResult:
    """What :func:`distill` returns."""

    train: TrainResult
    features: Optional[FeatureMetrics]
    feature_loss_curve: list[tuple[int, float]]
    teacher: TeacherInfo
    render_dim: int
    model: GaussianModel
    decoder: Optional[FeatureDecoder]

    def to_dict(self) -> dict[str, Any]:
        """The feature_metrics.json form."""
        return {**self.train.to_dict(), "features": dataclasses.asdict(self.features) if self.features else None,
                "teacher": dataclasses.asdict(self.teacher), "render_dim": self.render_dim}


class DistillSink(RunSink, Protocol):
    """What a distillation writes beyond a training run (implemented by feature3dgs.run.RunDir)."""

    def write_distillation(self, config: DistillConfig, teacher: TeacherInfo, render_dim: int,
                           decoder: Optional[FeatureDecoder]) -> None:
        """The teacher record and the decoder."""

    def feature_render_dir(self) -> Path:
        """The folder of the render | student | teacher panels of the test views."""

    def write_feature_pca(self, pca: FeaturePCA) -> None:
        """The PCA that coloured the feature panels (the viewer reuses it)."""

    def write_feature_metrics(self, metrics: dict) -> None:
        """Student-vs-teacher metrics (feature_metrics.json)."""


def student_features(rendered: Tensor, size: tuple[int, int], decoder: Optional[FeatureDecoder]) -> Tensor:
    """(D_render,H,W) rendered features -> (D_teacher,h,w) on the teacher's grid."""
    if tuple(rendered.shape[-2:]) != tuple(size):
        rendered = F.interpolate(rendered[None], size=size, mode="bilinear", align_corners=False)[0]
    return decoder(rendered) if decoder is not None else rendered


class FeatureDistillation:
    """The feature loss term of the Trainer (a ``loss_fns`` entry)."""

    def __init__(self, cache: FeatureCache, weight: float, decoder: Optional[FeatureDecoder],
                 feature_to_geometry: bool = True):
        self.cache = cache
        self.weight = float(weight)
        self.decoder = decoder
        self.feature_to_geometry = feature_to_geometry

    def rendered_features(self, trainer: Trainer, batch: TrainBatch, out) -> Tensor:
        if self.feature_to_geometry:
            return out.features
        m = trainer.model
        return m.render(batch.camera, features=m.features, detach_geometry=True).features

    def __call__(self, trainer: Trainer, batch: TrainBatch, out) -> dict[str, Tensor]:
        target = self.cache.load(batch.view.name, device=trainer.device)
        pred = student_features(self.rendered_features(trainer, batch, out), target.shape[-2:], self.decoder)
        return {"feature": self.weight * (pred - target).abs().mean()}


def add_features(model: GaussianModel, dim: int, seed: int = 0) -> GaussianModel:
    """A copy of ``model`` with fresh (N,dim) features (small random values), replacing any."""
    params = {k: v.detach() for k, v in model.params.items() if k != FEATURES}
    g = torch.Generator().manual_seed(seed)
    params[FEATURES] = torch.randn(model.num_gaussians, dim, generator=g).to(model.device) * 1e-2
    return GaussianModel(params, model.active_sh_degree)


def feature_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Feature PSNR (peak = the teacher map's value range) and mean per-pixel cosine similarity."""
    mse = float(((pred - target) ** 2).mean())
    peak = float(target.max() - target.min())
    cos = float(F.cosine_similarity(pred, target, dim=0, eps=1e-8).mean())
    return {"feature_psnr": 10 * math.log10(peak ** 2 / max(mse, 1e-20)), "cosine": cos,
            "l1": float((pred - target).abs().mean())}


@torch.no_grad()
def evaluate_features(model: GaussianModel, scene, cache: FeatureCache, decoder: Optional[FeatureDecoder],
                      split: str = "test", save_dir: Optional[Path] = None,
                      pca: Optional[FeaturePCA] = None) -> tuple[FeatureMetrics, Optional[FeaturePCA]]:
    """Student vs teacher on the views of ``split``; with ``save_dir`` a PNG per view:
    render | student features | teacher features, coloured by one PCA (fitted on the teacher's
    maps unless given). Returns the metrics and the PCA used (None without ``save_dir``)."""
    views = scene.test_views if split == "test" else scene.train_views
    per_view, panels = {}, []
    for view in views:
        out = model.render(view.camera, scene.background.to(model.device), features=model.features)
        target = cache.load(view.name, device=model.device)
        pred = student_features(out.features, target.shape[-2:], decoder)
        per_view[view.name] = feature_metrics(pred, target)
        panels.append((view, out.rgb, pred, target))
    mean = {k: sum(v[k] for v in per_view.values()) / max(1, len(per_view)) for k in ("feature_psnr", "cosine", "l1")}
    result = FeatureMetrics(**mean, per_view=per_view)
    if save_dir is None or not panels:
        return result, None
    if pca is None:  # fitted once, on the teacher's maps, so colours agree across views
        pca = FeaturePCA.fit([t for *_, t in panels])
    for view, rgb, pred, target in panels:
        h, w = rgb.shape[-2:]
        up = lambda x: F.interpolate(pca(x)[None], size=(h, w), mode="nearest")[0]  # noqa: E731
        panel = torch.cat([rgb.clamp(0, 1).cpu(), up(pred), up(target)], dim=2)
        save_png(panel, Path(save_dir) / f"{safe_name(view.name)}.png")
    return result, pca


def _teacher_and_cache(scene, dc: DistillConfig, train_config: TrainConfig, teacher,
                       cache: Optional[FeatureCache], dist: Optional[Distributed] = None
                       ) -> tuple[FeatureCache, TeacherInfo]:
    """The teacher's feature cache of every view (extracted now where missing; sharded over the
    ranks of a distributed run, which then wait for each other) and what the teacher was."""
    if cache is not None:
        return cache, TeacherInfo(kind=None, name=cache.key.split("|")[0], dim=cache.shape(scene.train_views[0].name)[0],
                                  random_weights=False, cache_key=cache.key)
    if teacher is None:
        teacher = build_teacher(dc.teacher, checkpoint=dc.checkpoint, model=dc.teacher_model,
                                weights_dir=dc.weights_dir, random_weights=dc.random_weights,
                                trust_checkpoint=dc.trust_checkpoint)
    if teacher.is_random:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
    views = list(scene.train_views) + list(scene.test_views)
    if dist is not None:
        views = views[dist.rank::dist.world_size]
    cache, res = fill_feature_cache(scene, teacher, dc.cache_dir, dc.extract_batch_size, train_config.progress,
                                    views=views)
    where = f" (rank {dist.rank} of {dist.world_size})" if dist is not None else ""
    print(f"teacher features: extracted {len(res.extracted)}, already cached {len(res.skipped)}{where}",
          file=sys.stderr, flush=True)
    if dist is not None:
        dist.barrier()
    return cache, TeacherInfo(kind=teacher.kind, name=teacher.name, dim=teacher.dim,
                              random_weights=bool(teacher.is_random), cache_key=teacher.cache_key())


def distill(scene, run: Optional[DistillSink] = None, train_config: Optional[TrainConfig] = None,
            distill_config: Optional[DistillConfig] = None, model: Optional[GaussianModel] = None,
            teacher=None, cache: Optional[FeatureCache] = None, dist: Optional[Distributed] = None) -> DistillResult:
    """Trains a feature scene: RGB reconstruction plus feature distillation.

    Args:
        scene: the posed images (:class:`feature3dgs.data.Scene`).
        run: where to write (a :class:`feature3dgs.run.RunDir`): what the trainer writes plus the
            decoder, the teacher record, feature metrics and panels. None: nothing is written.
        model: start from a trained RGB scene; features are added when it has none of size
            D_render. Without it, Gaussians are initialised from the scene.
        teacher: a built teacher (default: from ``distill_config``); ``cache``: teacher features
            already cached for every view (e.g. :func:`~feature3dgs.distill.labels.label_feature_cache`),
            used instead of a teacher.
        dist: the process group of a distributed run (give ``run`` on rank 0 only): the teacher
            extraction is sharded over the ranks, training is data-parallel.
    """
    dc = distill_config or DistillConfig()
    dc.validate()
    tc = train_config or TrainConfig()
    cache, info = _teacher_and_cache(scene, dc, tc, teacher, cache, dist)
    render_dim = dc.render_dim or info.dim
    tc = dataclasses.replace(tc, feature_dim=render_dim)
    if model is not None and model.feature_dim != render_dim:
        model = add_features(model, render_dim, seed=tc.seed)
    decoder = None
    if render_dim != info.dim:
        with torch.random.fork_rng(devices=[]):  # the run's seed decides the decoder's initial weights
            torch.manual_seed(tc.seed)
            decoder = FeatureDecoder(render_dim, info.dim)
    loss = FeatureDistillation(cache, dc.feature_weight, decoder, dc.feature_to_geometry)
    curve: list[tuple[int, float]] = []
    trainer = Trainer(scene, tc, run=run, model=model, loss_fns=[loss], dist=dist,
                      callbacks=[lambda tr, step, logs: curve.append((step, logs["loss/feature"]))])
    trainer.render_features = dc.feature_to_geometry
    if decoder is not None:
        loss.decoder = trainer.register_module("decoder", decoder, dc.lr_decoder)
    outputs: dict[str, Any] = {}

    def finish(tr: Trainer, train_result: TrainResult) -> None:
        """Feature metrics, panels and the distillation files, in the run's final transaction
        (not on the ranks other than 0 of a distributed run: they neither evaluate nor write)."""
        fm, pca = None, None
        if train_result.eval is not None:
            fm, pca = evaluate_features(tr.model, scene, cache, loss.decoder, "test",
                                        save_dir=run.feature_render_dir() if run is not None else None)
        outputs["result"] = result = DistillResult(train=train_result, features=fm, feature_loss_curve=curve,
                                                   teacher=info, render_dim=render_dim, model=tr.model,
                                                   decoder=loss.decoder)
        if run is not None:
            run.write_distillation(dc, info, render_dim, loss.decoder)
            if pca is not None:
                run.write_feature_pca(pca)
            run.write_feature_metrics(result.to_dict())

    trainer.finish_hooks.append(finish)
    trainer.train()
    return outputs["result"]
