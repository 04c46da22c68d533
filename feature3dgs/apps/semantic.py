"""Closed-set semantic rendering (as in GSNeRF / Semantic-NeRF) with per-Gaussian class logits.

Every Gaussian carries K class logits in ``model.params["semantics"]`` (N, K) (the name is
:data:`feature3dgs.run.SEMANTICS`; densification, the edit functions, the PLY
file (``sem_*`` properties) and checkpoints carry it like any other parameter). The logits are
alpha blended by the rasterizer as a K-channel feature map and trained with per-pixel
cross-entropy against label maps: jointly with the RGB loss (:class:`SemanticLoss` on the
Trainer, or :class:`SemanticTrainer`) or afterwards on frozen geometry (:func:`fit_semantics`).

Empty space. The rendered logits of pixel p are::

    L(p) = sum_i w_i(p) l_i + T(p) b,        w_i = alpha_i T_i,  T(p) = 1 - alpha(p)

with the background logits b (the rasterizer's feature background). By default b is
:func:`empty_logits`: ``EMPTY_LOGIT`` (5) for class 0 and 0 for the other classes, so a pixel
that sees nothing is predicted as class 0 ("background", the label id 0 of the package's
label maps) with probability ~0.98 whatever K, partly covered pixels lean towards class 0 in
proportion to their transparency, and the sky of a scene needs no Gaussians to be labelled
background. Pass ``background=torch.zeros(K)`` for the plain alpha-weighted sum (empty pixels
then have uniform class probabilities; argmax breaks the tie towards class 0), or any (K,)
vector; pixels can also be left out of the loss with ``ignore_index``.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import SEMANTICS, GaussianModel
from feature3dgs.training.trainer import NonFiniteLossError, Trainer
from feature3dgs.utils.io import safe_name, save_png
from feature3dgs.utils.metrics import confusion_matrix, label_map, segmentation_metrics
from feature3dgs.utils.visualize import class_palette, colorize_labels

__all__ = [
    "EMPTY_LOGIT",
    "DIVERGENCE_FACTOR",
    "SemanticFitDiverged",
    "add_semantic_logits",
    "semantic_logits",
    "empty_logits",
    "render_semantic_logits",
    "semantic_loss",
    "SemanticLoss",
    "SemanticTrainer",
    "fit_semantics",
    "predict_semantic_map",
    "evaluate_semantics",
]

#: background logit of class 0 in the default :func:`empty_logits` (softmax ~0.98 for K <= 20)
EMPTY_LOGIT = 5.0


# ---------------------------------------------------------------------------------- the parameter
def add_semantic_logits(model: GaussianModel, num_classes: int, init: Union[float, Tensor] = 0.0) -> GaussianModel:
    """A copy of ``model`` with (N, num_classes) class logits (replacing any it has).

    Args:
        num_classes: K >= 1.
        init: a number (every logit), a (K,) vector (every Gaussian) or an (N, K) tensor.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    n, k = model.num_gaussians, int(num_classes)
    t = torch.as_tensor(init, dtype=torch.float32)
    if t.dim() == 0:
        logits = torch.full((n, k), float(t))
    elif t.dim() == 1 and t.shape[0] == k:
        logits = t[None].repeat(n, 1)
    elif t.dim() == 2 and tuple(t.shape) == (n, k):
        logits = t.detach().clone()
    else:
        raise ValueError(f"init must be a number, a ({k},) vector or an ({n}, {k}) tensor, got {tuple(t.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("init holds NaN or Inf")
    params = {name: v.detach() for name, v in model.params.items() if name != SEMANTICS}
    params[SEMANTICS] = logits
    return GaussianModel(params, model.active_sh_degree).to(model.device)


def semantic_logits(model: GaussianModel) -> Tensor:
    """The model's (N, K) class-logit parameter; ValueError naming ``model`` when it has none."""
    if not isinstance(model, GaussianModel):
        raise ValueError(f"model must be a GaussianModel, got {type(model).__name__}")
    if SEMANTICS not in model.params:
        raise ValueError(f"model has no class logits (no {SEMANTICS!r} parameter); add them with "
                         "add_semantic_logits or fit_semantics")
    t = model.params[SEMANTICS]
    if t.dim() != 2 or t.shape[1] < 1:
        raise ValueError(f"model's {SEMANTICS!r} parameter must be (N, K), got {tuple(t.shape)}")
    return t


def empty_logits(num_classes: int, empty_class: int = 0, value: float = EMPTY_LOGIT,
                 device: Union[str, torch.device, None] = None) -> Tensor:
    """(K,) logits of empty space: ``value`` for ``empty_class``, 0 for the others."""
    if not 0 <= empty_class < num_classes:
        raise ValueError(f"empty_class must be in [0, {num_classes}), got {empty_class}")
    b = torch.zeros(int(num_classes), device=device)
    b[empty_class] = float(value)
    return b


def _background(background: Optional[Tensor], k: int, device: torch.device) -> Tensor:
    if background is None:
        return empty_logits(k, device=device)
    b = torch.as_tensor(background)
    if b.dim() != 1 or b.shape[0] != k:
        raise ValueError(f"background must be ({k},) logits, one per class, got {tuple(b.shape)}")
    return b.to(device, torch.float32)


def render_semantic_logits(model: GaussianModel, camera: Camera, background: Optional[Tensor] = None, *,
                           detach_geometry: bool = False) -> Tensor:
    """(K, H, W) rendered class logits sum_i w_i l_i + T b (see the module docstring).

    Differentiable with respect to the logits, the background and (unless
    ``detach_geometry``) the geometry: means, rotations, scales, opacities.

    Args:
        model: Gaussians with class logits.
        camera: the view.
        background: (K,) logits of empty space (default :func:`empty_logits`: class 0).
        detach_geometry: only the logits (and background) get gradients.
    """
    logits = semantic_logits(model)
    if not isinstance(camera, Camera):
        raise ValueError(f"camera must be a Camera, got {type(camera).__name__}")
    bg = _background(background, logits.shape[1], model.device)
    return model.render(camera, features=logits, feature_background=bg, detach_geometry=detach_geometry).features


def semantic_loss(logits: Tensor, labels: Tensor, ignore_index: Optional[int] = None) -> Tensor:
    """Mean per-pixel cross-entropy between (K, H, W) logits and (H, W) integer labels.

    Pixels labelled ``ignore_index`` are left out (0 when every pixel is). Raises ValueError
    naming the argument for a wrong shape, a non-integer label map or class ids outside [0, K).
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a (K, H, W) float tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    k, h, w = logits.shape
    lab = label_map(labels, k, h, w, ignore_index).to(logits.device)
    if ignore_index is not None and not bool((lab != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[None], lab[None], ignore_index=-100 if ignore_index is None else int(ignore_index))


# ---------------------------------------------------------------------------------- training
class SemanticLoss:
    """The semantic term of the Trainer (a ``loss_fns`` entry), GSNeRF-style joint training.

    Reads the view's label map with ``trainer.scene.load_labels(batch.view, kind)``, renders the
    class logits at ``batch.camera`` and returns ``{name: weight * cross-entropy}``. With
    ``to_geometry`` the loss also moves the Gaussians (means, rotations, scales, opacities).
    The model needs the ``semantics`` parameter and the trainer a learning rate for it (see
    :class:`SemanticTrainer`, which does both).
    """

    def __init__(self, weight: float = 1.0, kind: str = "class", ignore_index: Optional[int] = None,
                 background: Optional[Tensor] = None, to_geometry: bool = True, name: str = "semantic"):
        if kind not in ("class", "instance"):
            raise ValueError(f"kind must be 'class' or 'instance', got {kind!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight}")
        self.weight = float(weight)
        self.kind = kind
        self.ignore_index = ignore_index
        self.background = background
        self.to_geometry = bool(to_geometry)
        self.name = name

    def __call__(self, trainer, batch, out) -> dict[str, Tensor]:
        labels = trainer.scene.load_labels(batch.view, self.kind)
        if labels is None:
            raise ValueError(f"view {batch.view.name!r} has no {self.kind} labels for the semantic loss")
        logits = render_semantic_logits(trainer.model, batch.camera, self.background,
                                        detach_geometry=not self.to_geometry)
        return {self.name: self.weight * semantic_loss(logits, labels.to(logits.device), self.ignore_index)}


def _num_classes_of_scene(scene) -> Optional[int]:
    names = getattr(scene, "class_names", None)
    return len(names) if names else None


class SemanticTrainer(Trainer):
    """A :class:`~feature3dgs.training.trainer.Trainer` that also trains class logits with :class:`SemanticLoss`.

    The model gets zero logits for ``num_classes`` classes when it has none (default K: the
    scene's ``class_names``); they are optimised with Adam at ``lr_semantics`` and carried by
    densification, checkpoints (``Trainer.from_checkpoint`` works on this class) and the PLY.

    Extra keyword arguments (after the Trainer's): num_classes, lr_semantics, semantic_weight,
    ignore_index, semantic_to_geometry, kind.
    """

    def __init__(self, scene, config=None, run=None, model: Optional[GaussianModel] = None, loss_fns=(),
                 callbacks=(), *, num_classes: Optional[int] = None, lr_semantics: float = 0.05,
                 semantic_weight: float = 0.1, ignore_index: Optional[int] = None,
                 semantic_to_geometry: bool = True, kind: str = "class"):
        k = num_classes
        if k is None and model is not None and SEMANTICS in model.params:
            k = int(model.params[SEMANTICS].shape[1])
        if k is None:
            k = _num_classes_of_scene(scene)
        if k is None:
            raise ValueError("num_classes: the scene names no classes and the model has no logits; give num_classes")
        self.num_classes = int(k)
        self.lr_semantics = float(lr_semantics)
        if model is not None and (SEMANTICS not in model.params
                                  or model.params[SEMANTICS].shape[1] != self.num_classes):
            model = add_semantic_logits(model, self.num_classes)
        super().__init__(scene, config, run=run, model=model, loss_fns=loss_fns, callbacks=callbacks)
        self.semantic_loss = SemanticLoss(semantic_weight, kind, ignore_index, to_geometry=semantic_to_geometry)
        self.loss_fns.append(self.semantic_loss)

    def learning_rates(self) -> dict[str, float]:
        return {**super().learning_rates(), SEMANTICS: self.lr_semantics}

    def state_dict(self) -> dict:
        """The Trainer's state plus the semantic options (restored by :meth:`load_state_dict`,
        so ``SemanticTrainer.from_checkpoint`` resumes with the same loss)."""
        sl = self.semantic_loss
        return {**super().state_dict(),
                "semantic": {"num_classes": self.num_classes, "lr_semantics": self.lr_semantics,
                             "weight": sl.weight, "kind": sl.kind, "ignore_index": sl.ignore_index,
                             "to_geometry": sl.to_geometry}}

    def load_state_dict(self, state) -> None:
        sem = state.get("semantic")
        if sem:
            self.num_classes = int(sem["num_classes"])
            self.lr_semantics = float(sem["lr_semantics"])
            sl = self.semantic_loss
            sl.weight, sl.kind, sl.ignore_index = float(sem["weight"]), sem["kind"], sem["ignore_index"]
            sl.to_geometry = bool(sem["to_geometry"])
        super().load_state_dict(state)

    def build_optimizer(self) -> torch.optim.Optimizer:
        if SEMANTICS not in self.model.params:  # a model initialised by the Trainer
            self.model.params[SEMANTICS] = nn.Parameter(
                torch.zeros(self.model.num_gaussians, self.num_classes, device=self.model.device))
        return super().build_optimizer()


def _label_views(scene, kind: str, views) -> list[tuple[Camera, Tensor]]:
    """(camera, labels) pairs from a Scene's train views (or ``views`` of it), or as given."""
    if hasattr(scene, "train_views") and hasattr(scene, "load_labels"):
        chosen = scene.train_views if views is None else [scene.view(v) for v in views]
        pairs = []
        for v in chosen:
            lab = scene.load_labels(v, kind)
            if lab is None:
                raise ValueError(f"scene: view {v.name!r} has no {kind} labels")
            pairs.append((v.camera, lab))
    else:
        try:
            pairs = [(c, l) for c, l in scene]
        except (TypeError, ValueError):
            raise ValueError("scene must be a Scene with labels or a sequence of (Camera, labels) pairs") from None
    if not pairs:
        raise ValueError("scene: no views with labels to fit")
    for i, (c, _) in enumerate(pairs):
        if not isinstance(c, Camera):
            raise ValueError(f"scene: item {i} must be a (Camera, labels) pair, got {type(c).__name__}")
    return pairs


def fit_semantics(model: GaussianModel, scene, steps: int = 300, lr: float = 0.1, *,
                  num_classes: Optional[int] = None, kind: str = "class", views: Optional[Sequence] = None,
                  background: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                  init: Union[float, Tensor] = 0.0, seed: int = 0) -> tuple[GaussianModel, list[float]]:
    """Fit class logits on frozen geometry (post-hoc semantics; only the logits get gradients).

    Each step renders one training view (a fresh random order each epoch), takes the
    cross-entropy against its labels and updates the logits with Adam (``lr``).

    Args:
        model: trained Gaussians; not modified. Its logits are the starting point when it has
            K of them, else ``init`` (see :func:`add_semantic_logits`).
        scene: a :class:`feature3dgs.data.Scene` (its train views, or ``views`` of it, with
            ``scene.load_labels(view, kind)``) or a sequence of (Camera, (H, W) labels) pairs.
        steps: optimisation steps (one view each).
        num_classes: K (default: the model's logits, the scene's class names, or the largest
            label + 1).
        background, ignore_index: as in :func:`render_semantic_logits` / :func:`semantic_loss`.

    Returns:
        (a copy of the model with the fitted logits, the loss of every step).

    Raises:
        SemanticFitDiverged: the loss became NaN/Inf or exploded (see :data:`DIVERGENCE_FACTOR`).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    pairs = _label_views(scene, kind, views)
    k = num_classes
    if k is None and SEMANTICS in model.params:
        k = int(model.params[SEMANTICS].shape[1])
    if k is None:
        k = _num_classes_of_scene(scene) if hasattr(scene, "train_views") else None
    if k is None:
        valid = [l[l != ignore_index] if ignore_index is not None else l for _, l in pairs]
        k = max(int(torch.as_tensor(l).max()) for l in valid if torch.as_tensor(l).numel()) + 1
    dev = model.device
    data = []
    for i, (cam, lab) in enumerate(pairs):
        data.append((cam.to(dev), label_map(lab, k, cam.height, cam.width, ignore_index, f"labels of view {i}").to(dev)))
    if SEMANTICS in model.params and model.params[SEMANTICS].shape[1] == k:
        fitted = add_semantic_logits(model, k, model.params[SEMANTICS].detach())
    else:
        fitted = add_semantic_logits(model, k, init)
    logits = fitted.params[SEMANTICS]
    bg = _background(background, k, dev)
    opt = torch.optim.Adam([logits], lr=float(lr))
    gen = torch.Generator().manual_seed(int(seed))
    order: list[int] = []
    curve: list[float] = []
    with torch.enable_grad():
        for _ in range(int(steps)):
            if not order:
                order = torch.randperm(len(data), generator=gen).tolist()
            cam, lab = data[order.pop()]
            out = fitted.render(cam, features=logits, feature_background=bg, detach_geometry=True)
            loss = semantic_loss(out.features, lab, ignore_index)
            value = float(loss.detach())
            limit = DIVERGENCE_FACTOR * max(curve[0] if curve else value, math.log(max(k, 2)))
            if not math.isfinite(value) or value > limit:
                raise SemanticFitDiverged(len(curve), value, curve[0] if curve else value, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(value)
    if not bool(torch.isfinite(logits).all()):
        raise SemanticFitDiverged(len(curve), float("nan"), curve[0] if curve else float("nan"), lr)
    return fitted, curve


#: fit_semantics stops when the loss exceeds this many times max(its first value, log K)
DIVERGENCE_FACTOR = 10.0


class SemanticFitDiverged(NonFiniteLossError):
    """:func:`fit_semantics` stopped: the cross-entropy became NaN/Inf, or grew above
    ``DIVERGENCE_FACTOR`` x max(first loss, log K) (a learning rate far too high). Like a
    non-finite training loss it is a failed run (the CLI exits 1), not a bad argument: nothing
    is returned or written."""

    def __init__(self, step: int, loss: float, first: float, lr: float):
        self.step, self.terms, self.params = step, {"cross_entropy": loss}, []
        kind = "a non-finite" if not math.isfinite(loss) else "an exploding"
        RuntimeError.__init__(self, f"semantic fit stopped at step {step}: {kind} cross-entropy {loss:.4g} "
                                    f"(it started at {first:.4g}); lower the learning rate (lr = {lr:g})")


# ---------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict_semantic_map(model: GaussianModel, camera: Camera, background: Optional[Tensor] = None) -> Tensor:
    """(H, W) int64 predicted class per pixel (argmax of the rendered logits; empty pixels get
    class 0 with the default background)."""
    return render_semantic_logits(model, camera, background, detach_geometry=True).argmax(0)


@torch.no_grad()
def evaluate_semantics(model: GaussianModel, scene, views: Optional[Sequence] = None,
                       save_dir: Union[str, Path, None] = None) -> Optional[dict]:
    """Semantic maps of ``views`` (default: the scene's test views) against their class labels.

    Returns :func:`feature3dgs.utils.metrics.segmentation_metrics` of the confusion matrix summed
    over the views that have labels (labels clamped to [0, K)), or None when none has. With
    ``save_dir``, writes ``render | classes`` PNGs, one per view.
    """
    k = int(semantic_logits(model).shape[1])
    palette = class_palette(k)
    conf = torch.zeros(k, k, dtype=torch.int64)
    for view in scene.test_views if views is None else views:
        cam = view.camera.to(model.device)
        pred = predict_semantic_map(model, cam).cpu()
        if save_dir is not None:
            rgb = model.render(cam).rgb.clamp(0, 1).cpu()
            save_png(torch.cat([rgb, colorize_labels(pred, palette)], dim=2),
                     Path(save_dir) / f"{safe_name(view.name)}.png")
        truth = scene.load_labels(view, "class")
        if truth is not None:
            conf += confusion_matrix(pred, truth.clamp(0, k - 1), k)
    return segmentation_metrics(conf) if conf.sum() > 0 else None
