"""Scene optimisation (3D Gaussian Splatting) through :func:`feature3dgs.render`.

:class:`TrainConfig` holds every option (3DGS defaults); :class:`Trainer` runs the loop;
:func:`fit` loads a scene and trains in one call.

Extending the trainer (e.g. feature distillation):

* override :meth:`Trainer.loss_terms` (call ``super()``), or pass ``loss_fns``: callables
  ``fn(trainer, batch, out) -> {name: weighted loss tensor}``; all terms are summed and logged;
* set ``trainer.render_features = True`` so renders carry ``out.features``;
* register extra modules (a decoder) with :meth:`Trainer.register_module`: they get their own
  Adam optimizer and are saved in checkpoints;
* extra per-Gaussian parameters: add them to ``model.params`` and give them a learning rate
  by overriding :meth:`Trainer.learning_rates` before the optimizer is built; densification
  carries every entry of ``model.params``;
* ``callbacks``: ``fn(trainer, step, logs)`` after every step.

Schedule: every step-valued option left at None is the 3DGS value for a 30 000-step run scaled
by ``schedule_length / 30000`` (``schedule_length`` defaults to ``iterations``), so a 200-step
test run densifies and raises the SH degree too. Two floors keep short runs sane:
densify_every >= 10 and opacity_reset_every >= 300 (a reset needs a few hundred steps to
recover); they do not bind at 30 000 steps. Explicit values are used as given.
:meth:`TrainConfig.resolved` fills them in (config.json shows the resolved values). For the
3DGS "7k" protocol (the 30k schedule stopped at 7000 steps) set ``schedule_length=30000``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from feature3dgs.utils.io import atomic_open, atomic_write_text
from feature3dgs.model.camera import Camera
from feature3dgs.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from feature3dgs.training.densify import DensifyStats, densify_and_prune, reset_opacity
from feature3dgs.model.gaussians import GaussianModel, random_init_bounds
from feature3dgs.training.losses import rgb_loss
from feature3dgs.utils.metrics import lpips_metric, lpips_unavailable_reason, psnr, ssim
from feature3dgs.model.ply import save_ply
from feature3dgs.rendering.inputs import RenderOutput

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainBatch",
    "NonFiniteLossError",
    "fit",
    "load_scene_for",
    "init_model",
    "expon_lr",
    "SCHEDULE_REFERENCE",
]

SCHEDULE_REFERENCE = 30_000
# 3DGS step values at the reference length (scaled unless given explicitly).
_SCHEDULE_DEFAULTS = {
    "sh_up_every": 1000,
    "densify_from": 500,
    "densify_until": 15_000,
    "densify_every": 100,
    "opacity_reset_every": 3000,
    "lr_means_steps": 30_000,
    "eval_every": 7000,
    "checkpoint_every": 7000,
}
# Floors of the scaled values: a densification needs some views of gradient statistics (else the
# count explodes in short runs), and an opacity reset needs a few hundred steps to recover at
# lr_opacity 0.025 (Adam moves a logit about lr per step). At 30 000 steps they do not bind.
_SCHEDULE_FLOORS = {"densify_from": 50, "densify_every": 10, "opacity_reset_every": 300}


@dataclass
class TrainConfig:
    """Every option of a training run (defaults: 3DGS).

    Data (used by :func:`fit` / the CLI to load the scene):
        data: scene folder; resolution_scale / width: load size; background: 'black', 'white'
        or 'r,g,b'; images: COLMAP image folder (None: auto); test_every: COLMAP/transforms
        hold-out (None: the loader default, 8).
    Model:
        sh_degree: max SH degree (0..3); feature_dim: per-Gaussian features D (0 = none);
        init: 'auto' (sparse points when the scene has them, else random), 'points', 'random';
        init_random_points: count for random init (3DGS: 100 000); init_random_box:
        (x0, y0, z0, x1, y1, z1), None = derived from the cameras
        (:func:`feature3dgs.model.gaussians.random_init_bounds`); init_opacity.
    Learning rates (Adam, eps 1e-15): lr_means_init/final are multiplied by the scene extent and
        decay exponentially over lr_means_steps. lr_opacity is 0.025, the current upstream 3DGS
        value (the original release used 0.05).
    Loss: lambda_dssim (3DGS: 0.2); random_background: composite RGBA targets and renders on a
        random colour each step.
    Densification (3DGS): densify_grad_threshold is in 3DGS's NDC units (2e-4); percent_dense;
        prune_min_opacity; prune_max_world_size (fraction of the extent, applied after the first
        opacity reset); prune_max_screen_size in pixels (None: off, which is what 3DGS
        effectively does, since its screen-size test reads radii it has just reset);
        max_gaussians caps growth (None: no cap).
    Schedule (None: 3DGS value scaled by schedule_length / 30000, see the module docstring):
        sh_up_every, densify_from, densify_until, densify_every, opacity_reset_every,
        lr_means_steps, eval_every, checkpoint_every (0 disables the last two).
    Run: iterations, seed, device ('auto', 'cpu', 'cuda'), log_every, tensorboard,
        keep_checkpoints, save_test_renders, lpips ('alex', 'vgg' or 'none'), progress.
    """

    # data
    data: str = ""
    resolution_scale: float = 1.0
    width: Optional[int] = None
    background: str = "black"
    images: Optional[str] = None
    test_every: Optional[int] = None
    # run
    iterations: int = 30_000
    seed: int = 0
    device: str = "auto"
    # model
    sh_degree: int = 3
    feature_dim: int = 0
    init: str = "auto"
    init_random_points: int = 100_000
    init_random_box: Optional[tuple] = None
    init_opacity: float = 0.1
    # learning rates
    lr_means_init: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_sh_dc: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20
    lr_opacity: float = 0.025
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_features: float = 2.5e-3
    # loss
    lambda_dssim: float = 0.2
    random_background: bool = False
    # densification
    densify_grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    prune_min_opacity: float = 0.005
    prune_max_world_size: Optional[float] = 0.1
    prune_max_screen_size: Optional[float] = None
    max_gaussians: Optional[int] = None
    # schedule
    schedule_length: Optional[int] = None
    sh_up_every: Optional[int] = None
    densify_from: Optional[int] = None
    densify_until: Optional[int] = None
    densify_every: Optional[int] = None
    opacity_reset_every: Optional[int] = None
    lr_means_steps: Optional[int] = None
    eval_every: Optional[int] = None
    checkpoint_every: Optional[int] = None
    # logging / output
    log_every: int = 10
    tensorboard: bool = True
    keep_checkpoints: int = 2
    save_test_renders: bool = True
    lpips: str = "alex"
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """A copy with every None schedule option replaced by its scaled 3DGS value."""
        self.validate()
        length = self.schedule_length or self.iterations
        s = length / SCHEDULE_REFERENCE
        vals = {}
        for key, ref in _SCHEDULE_DEFAULTS.items():
            if getattr(self, key) is None:
                vals[key] = max(1, _SCHEDULE_FLOORS.get(key, 1), round(ref * s))
        vals["schedule_length"] = length
        if self.init_random_box is not None:
            vals["init_random_box"] = tuple(float(v) for v in self.init_random_box)
        return dataclasses.replace(self, **vals)

    def validate(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if self.feature_dim < 0:
            raise ValueError(f"feature_dim must be >= 0, got {self.feature_dim}")
        if self.init not in ("auto", "points", "random"):
            raise ValueError(f"init must be 'auto', 'points' or 'random', got {self.init!r}")
        if not 0 <= self.lambda_dssim <= 1:
            raise ValueError(f"lambda_dssim must be in [0, 1], got {self.lambda_dssim}")
        if self.lpips not in ("alex", "vgg", "none"):
            raise ValueError(f"lpips must be 'alex', 'vgg' or 'none', got {self.lpips!r}")
        if self.init_random_box is not None and len(self.init_random_box) != 6:
            raise ValueError("init_random_box needs 6 numbers (x0, y0, z0, x1, y1, z1)")
        for key in _SCHEDULE_DEFAULTS:
            v = getattr(self, key)
            if v is not None and v < (0 if key in ("eval_every", "checkpoint_every", "densify_from") else 1):
                raise ValueError(f"{key} must be positive, got {v}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["init_random_box"] is not None:
            d["init_random_box"] = list(d["init_random_box"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            warnings.warn(f"TrainConfig: ignoring unknown options {unknown}")
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("init_random_box") is not None:
            kw["init_random_box"] = tuple(kw["init_random_box"])
        return cls(**kw)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss (raised before the optimizer step) or NaN/Inf parameters
    (raised right after it); training stops and nothing more is written."""

    def __init__(self, step: int, terms: Mapping[str, float], params: Sequence[str] = ()):
        self.step = step
        self.terms = dict(terms)
        self.params = list(params)
        if self.params:
            what = f"non-finite parameters ({', '.join(self.params)}) after the optimizer step at step {step}"
        else:
            parts = ", ".join(f"{k}={v:.4g}" for k, v in self.terms.items())
            what = f"non-finite loss at step {step} ({parts})"
        super().__init__(f"{what}; training stopped, the last saved checkpoint and files are intact. "
                         "Try a lower learning rate or check the input images and cameras.")


@dataclass
class TrainBatch:
    """What one training step sees: the view, its camera (on the training device), the target
    image (3,H,W) and the background the render used."""

    step: int
    view: Any
    camera: Camera
    image: Tensor
    background: Tensor


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """3DGS's log-linear decay from lr_init (step 0) to lr_final (step >= max_steps)."""
    if lr_init == 0.0 and lr_final == 0.0:
        return 0.0
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            from feature3dgs import backend_info

            try:
                if backend_info().get("cuda"):
                    return torch.device("cuda")
            except Exception:  # pragma: no cover - no kernels compiled for CUDA
                pass
        return torch.device("cpu")
    return torch.device(device)


#: the TrainConfig fields that say which scene a run was fitted to and how it was loaded
SCENE_CONFIG_KEYS = ("data", "resolution_scale", "width", "background", "images", "test_every")


def load_scene_for(config: TrainConfig):
    """Load the scene ``config.data`` with the config's loader options."""
    from feature3dgs.data import load_scene

    if not config.data:
        raise ValueError("no scene given: set TrainConfig.data (the CLI's --data)")
    path = Path(config.data)
    if not path.exists():
        raise FileNotFoundError(f"scene path not found: {path}")
    kw: dict[str, Any] = {}
    if config.images is not None:
        kw["images"] = config.images
    if config.test_every is not None:
        kw["test_every"] = config.test_every
    bg: Any = config.background
    if isinstance(bg, str) and "," in bg:
        bg = [float(x) for x in bg.split(",")]
    return load_scene(path, resolution_scale=config.resolution_scale if config.width is None else 1.0,
                      target_width=config.width, background=bg, **kw)


def init_model(scene, config: TrainConfig, generator: Optional[torch.Generator] = None) -> GaussianModel:
    """The initial Gaussians for ``scene``: its sparse points, or random ones in a box."""
    mode = config.init
    has_points = scene.points is not None and scene.points.shape[0] > 0
    if mode == "auto":
        mode = "points" if has_points else "random"
    if mode == "points":
        if not has_points:
            raise ValueError(f"scene {scene.source_path} has no sparse points to initialise from; "
                             "use init='random' (--init random)")
        return GaussianModel.from_points(scene.points, scene.colors, config.sh_degree, config.feature_dim,
                                         config.init_opacity)
    if config.init_random_box is not None:
        lo, hi = torch.tensor(config.init_random_box[:3]), torch.tensor(config.init_random_box[3:])
    else:
        lo, hi = random_init_bounds(scene.train_cameras)
    return GaussianModel.random(config.init_random_points, lo, hi, config.sh_degree, config.feature_dim,
                                config.init_opacity, generator=generator)


def _safe_name(name: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in Path(name).name else name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem.replace("/", "_").replace("\\", "_"))


def save_png(img: Tensor, path: Union[str, Path]) -> None:
    """Save a (3,H,W) float image in [0, 1] as an 8-bit PNG, atomically."""
    from PIL import Image

    a = (img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype("uint8")
    with atomic_open(path, "wb") as f:
        Image.fromarray(a).save(f, format="PNG")


class _Logger:
    """log.csv (long format: step, elapsed_s, tag, value) and TensorBoard when importable."""

    def __init__(self, out_dir: Optional[Path], tensorboard: bool, append: bool):
        self.csv = None
        self.tb = None
        if out_dir is None:
            return
        path = out_dir / "log.csv"
        new = not (append and path.exists())
        self._f = open(path, "a" if not new else "w", newline="", encoding="utf-8")
        self.csv = csv.writer(self._f)
        if new:
            self.csv.writerow(["step", "elapsed_s", "tag", "value"])
        if tensorboard:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self.tb = None

    def log(self, step: int, elapsed: float, values: Mapping[str, float]) -> None:
        for tag, v in values.items():
            if v is None or isinstance(v, (dict, list, str)):
                continue
            if self.csv is not None:
                self.csv.writerow([step, f"{elapsed:.3f}", tag, f"{float(v):.8g}"])
            if self.tb is not None:
                self.tb.add_scalar(tag, float(v), step)
        if self.csv is not None:
            self._f.flush()

    def close(self) -> None:
        if self.csv is not None:
            self._f.close()
            self.csv = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


LossFn = Callable[["Trainer", TrainBatch, RenderOutput], Mapping[str, Tensor]]
Callback = Callable[["Trainer", int, dict], None]


class Trainer:
    """Optimises a :class:`GaussianModel` on a scene's training views (see the module docstring).

    Args:
        scene: a :class:`feature3dgs.data.Scene` with at least one training view.
        config: the options (defaults: 3DGS); resolved at construction.
        out_dir: where logs, checkpoints, renders and the final PLY go (None: nothing written).
        model: start from this model instead of initialising from the scene.
        loss_fns: extra loss terms, ``fn(trainer, batch, out) -> {name: tensor}``.
        callbacks: ``fn(trainer, step, logs)`` after every step.
    """

    def __init__(self, scene, config: Optional[TrainConfig] = None, out_dir: Union[str, Path, None] = None,
                 model: Optional[GaussianModel] = None, loss_fns: Sequence[LossFn] = (),
                 callbacks: Sequence[Callback] = ()):
        self.config = (config or TrainConfig()).resolved()
        if not scene.train_views:
            raise ValueError(f"scene {scene.source_path} has no training views")
        self.scene = scene
        self.device = _resolve_device(self.config.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extent = float(scene.extent)
        self.background = scene.background.to(self.device)
        self.generator = torch.Generator().manual_seed(int(self.config.seed))
        if model is None:
            model = init_model(scene, self.config, self.generator)
        self.model = model.to(self.device)
        self.render_features = False
        self.loss_fns: list[LossFn] = list(loss_fns)
        self.callbacks: list[Callback] = list(callbacks)
        self.aux_modules: dict[str, nn.Module] = {}
        self._aux_lrs: dict[str, float] = {}
        self.aux_optimizer: Optional[torch.optim.Optimizer] = None
        self.optimizer = self.build_optimizer()
        self.stats = DensifyStats.zeros(self.model.num_gaussians, self.device)
        self.step = 0
        self.train_time = 0.0
        self.last_densify: dict = {}
        self.metrics: Optional[dict] = None  # the final metrics after train()
        self._order: list[int] = []
        self._cameras: dict[str, Camera] = {}
        self._logger: Optional[_Logger] = None

    # ------------------------------------------------------------------ optimisation setup
    def learning_rates(self) -> dict[str, float]:
        """Initial learning rate per model parameter (override to add parameters)."""
        c = self.config
        return {
            "means": c.lr_means_init * self.extent,
            "sh_dc": c.lr_sh_dc,
            "sh_rest": c.lr_sh_rest,
            "opacities": c.lr_opacity,
            "scales": c.lr_scales,
            "quats": c.lr_quats,
            "features": c.lr_features,
        }

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.param_groups(self.learning_rates()), lr=0.0, eps=1e-15)

    def register_module(self, name: str, module: nn.Module, lr: float) -> nn.Module:
        """Train ``module`` (e.g. a feature decoder) alongside the Gaussians with its own Adam;
        it is moved to the training device and saved in checkpoints under ``name``."""
        if name in self.aux_modules:
            raise ValueError(f"module {name!r} already registered")
        self.aux_modules[name] = module.to(self.device)
        self._aux_lrs[name] = float(lr)
        groups = [{"params": list(m.parameters()), "lr": self._aux_lrs[n], "name": n}
                  for n, m in self.aux_modules.items()]
        self.aux_optimizer = torch.optim.Adam(groups, lr=0.0)
        return self.aux_modules[name]

    def update_learning_rate(self, step: int) -> float:
        c = self.config
        lr = expon_lr(step, c.lr_means_init * self.extent, c.lr_means_final * self.extent, c.lr_means_steps)
        for g in self.optimizer.param_groups:
            if g.get("name") == "means":
                g["lr"] = lr
        return lr

    # ------------------------------------------------------------------ data
    def camera(self, view) -> Camera:
        """The view's camera on the training device (cached)."""
        cam = self._cameras.get(view.name)
        if cam is None:
            cam = self._cameras[view.name] = view.camera.to(self.device)
        return cam

    def next_view(self):
        """The next training view: a fresh random permutation each epoch (3DGS)."""
        if not self._order:
            self._order = torch.randperm(len(self.scene.train_views), generator=self.generator).tolist()
        return self.scene.train_views[self._order.pop()]

    def target_image(self, view, background: Tensor) -> Tensor:
        """(3,H,W) ground truth on the device; RGBA composited on ``background``."""
        if self.config.random_background:
            from feature3dgs.data.images import composite

            img = composite(self.scene.load_image_u8(view), background.cpu())
        else:
            img = self.scene.load_image(view)
        return img.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ rendering and loss
    def render(self, camera: Camera, background: Optional[Tensor] = None,
               with_features: Optional[bool] = None) -> RenderOutput:
        feats = self.render_features if with_features is None else with_features
        return self.model.render(camera, self.background if background is None else background,
                                 with_features=feats and self.model.feature_dim > 0)

    def loss_terms(self, batch: TrainBatch, out: RenderOutput) -> dict[str, Tensor]:
        """Weighted loss terms, summed into the training loss and logged one by one.

        The default is the 3DGS photometric loss as 'l1' = (1 - lambda) * L1 and
        'dssim' = lambda * (1 - SSIM), followed by every ``loss_fns`` term.
        """
        lam = self.config.lambda_dssim
        _, parts = rgb_loss(out.rgb, batch.image, lam)
        terms = {"l1": (1.0 - lam) * parts["l1"]}
        if "dssim" in parts:
            terms["dssim"] = lam * parts["dssim"]
        for fn in self.loss_fns:
            extra = fn(self, batch, out)
            clash = set(extra) & set(terms)
            if clash:
                raise ValueError(f"loss term names {sorted(clash)} used twice")
            terms.update(extra)
        return terms

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """Run one optimisation step; returns the logged values."""
        c = self.config
        self.step += 1
        step = self.step
        lr = self.update_learning_rate(step)
        if step % c.sh_up_every == 0:
            self.model.one_up_sh_degree()
        view = self.next_view()
        cam = self.camera(view)
        if c.random_background:
            bg = torch.rand(3, generator=self.generator).to(self.device)
        else:
            bg = self.background
        batch = TrainBatch(step, view, cam, self.target_image(view, bg), bg)
        out = self.render(cam, background=bg)
        terms = self.loss_terms(batch, out)
        loss = torch.stack([t.reshape(()) for t in terms.values()]).sum()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            self.step -= 1
            raise NonFiniteLossError(step, {k: float(v.detach()) for k, v in terms.items()})
        loss.backward()
        with torch.no_grad():
            if step < c.densify_until:
                grad = out.means2d.grad if out.means2d.requires_grad else None
                self.stats.update(grad, out.radii, cam.width, cam.height)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            finite = torch.stack([torch.isfinite(p).all() for p in self.model.params.values()])
            if not bool(finite.all()):
                bad = [n for n, ok in zip(self.model.params.keys(), finite.tolist()) if not ok]
                raise NonFiniteLossError(step, {k: float(v.detach()) for k, v in terms.items()}, bad)
            if self.aux_optimizer is not None:
                self.aux_optimizer.step()
                self.aux_optimizer.zero_grad(set_to_none=True)
            self._density_control(step)
        logs = {"loss": loss_value, **{f"loss/{k}": float(v.detach()) for k, v in terms.items()},
                "psnr": psnr(out.rgb.detach(), batch.image), "n_gaussians": self.model.num_gaussians,
                "lr_means": lr, "sh_degree": self.model.active_sh_degree}
        for cb in self.callbacks:
            cb(self, step, logs)
        return logs

    def _density_control(self, step: int) -> None:
        c = self.config
        if step >= c.densify_until:
            return
        if step > c.densify_from and step % c.densify_every == 0:
            after_reset = step > c.opacity_reset_every
            self.stats, counts = densify_and_prune(
                self.model, self.optimizer, self.stats, c.densify_grad_threshold, self.extent,
                percent_dense=c.percent_dense, min_opacity=c.prune_min_opacity,
                max_screen_size=c.prune_max_screen_size if after_reset else None,
                max_world_size=c.prune_max_world_size if after_reset else None,
                max_gaussians=c.max_gaussians, generator=self.generator)
            self.last_densify = {"step": step, **counts}
        # 3DGS also resets at densify_from on white backgrounds; here only when periodic resets
        # happen at all (the first one falls inside the densification window).
        resets = c.opacity_reset_every < c.densify_until
        white = bool((self.background == 1).all())
        if step % c.opacity_reset_every == 0 or (resets and white and step == c.densify_from):
            reset_opacity(self.model, self.optimizer)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "test", save_dir: Union[str, Path, None] = None,
                 lpips: Optional[str] = None) -> dict[str, Any]:
        """Render the split's views and compare with their images.

        Returns {'split', 'n_views', 'psnr', 'ssim', 'lpips' (or None), 'lpips_note',
        'per_view': {name: {...}}}; with ``save_dir`` the renders are written as PNGs there.
        """
        return evaluate_model(self.model, self.scene, split, save_dir=save_dir,
                              lpips=self.config.lpips if lpips is None else lpips,
                              background=self.background, device=self.device)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (see :mod:`feature3dgs.training.checkpoint`)."""
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.model.raw_state(),
            "optimizer": self.optimizer.state_dict(),
            "aux_modules": {n: m.state_dict() for n, m in self.aux_modules.items()},
            "aux_optimizer": None if self.aux_optimizer is None else self.aux_optimizer.state_dict(),
            "densify": self.stats.state_dict(),
            "rng": {"generator": self.generator.get_state(), "view_order": list(self._order)},
            "train_time": self.train_time,
            "extent": self.extent,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (modules registered with :meth:`register_module` must be
        registered again, under the same names, before calling this)."""
        self.model = GaussianModel.from_raw_state(state["model"]).to(self.device)
        self.optimizer = self.build_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        missing = set(state.get("aux_modules", {})) - set(self.aux_modules)
        if missing:
            raise ValueError(f"checkpoint has modules {sorted(missing)} that are not registered")
        for name, sd in state.get("aux_modules", {}).items():
            self.aux_modules[name].load_state_dict(sd)
        if self.aux_optimizer is not None and state.get("aux_optimizer") is not None:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.stats = DensifyStats.from_state_dict(state["densify"])
        self.stats = DensifyStats(*(t.to(self.device) for t in
                                    (self.stats.grad_accum, self.stats.denom, self.stats.max_radii)))
        self.step = int(state["step"])
        self.generator.set_state(state["rng"]["generator"])
        self._order = [int(i) for i in state["rng"]["view_order"]]
        self.train_time = float(state.get("train_time", 0.0))
        self.extent = float(state.get("extent", self.extent))

    def save_checkpoint(self, path: Union[str, Path, None] = None) -> Path:
        """Write a checkpoint (default: out_dir/checkpoints/ckpt_<step>.pt), keeping the newest
        ``keep_checkpoints`` in that folder."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("save_checkpoint needs a path when the trainer has no out_dir")
            path = checkpoint_path(self.out_dir / "checkpoints", self.step)
            p = save_checkpoint(self.state_dict(), path)
            self._prune_checkpoints(p.parent)
            return p
        return save_checkpoint(self.state_dict(), path)

    def _prune_checkpoints(self, folder: Path) -> None:
        """Delete all but the newest ``keep_checkpoints`` of this run's checkpoints (those at or
        before the current step; files of later steps, e.g. from another run, are left alone)."""
        keep = max(int(self.config.keep_checkpoints), 1)
        ckpts = sorted(p for p in folder.glob("ckpt_*.pt") if p.stem[5:].isdigit() and int(p.stem[5:]) <= self.step)
        for p in ckpts[:-keep]:
            p.unlink(missing_ok=True)

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], scene=None, out_dir: Union[str, Path, None] = None,
                        overrides: Optional[Mapping[str, Any]] = None, **kwargs) -> "Trainer":
        """Rebuild a trainer from a checkpoint file (or a folder holding checkpoints).

        ``overrides`` may change run options (iterations, eval/checkpoint cadence, logging,
        progress, device); the resolved schedule stored in the checkpoint is kept.
        """
        state = load_checkpoint(path)
        cfg = TrainConfig.from_dict(state["config"])
        if overrides:
            cfg = dataclasses.replace(cfg, **dict(overrides))
        if scene is None:
            scene = load_scene_for(cfg)
        model = GaussianModel.from_raw_state(state["model"])
        trainer = cls(scene, cfg, out_dir=out_dir, model=model, **kwargs)
        trainer.load_state_dict(state)
        return trainer

    # ------------------------------------------------------------------ the loop
    def _write_config(self) -> None:
        assert self.out_dir is not None
        info = {
            "feature3dgs_version": _version(),
            "config": self.config.to_dict(),
            "scene": {"source_path": str(self.scene.source_path), "format": self.scene.format,
                      "n_train": len(self.scene.train_views), "n_test": len(self.scene.test_views),
                      "extent": self.extent, "background": self.scene.background.tolist()},
            "device": str(self.device),
        }
        atomic_write_text(self.out_dir / "config.json", json.dumps(info, indent=2))

    def train(self, iterations: Optional[int] = None) -> dict[str, Any]:
        """Train up to ``iterations`` (default: config.iterations) total steps, evaluating and
        checkpointing on the schedule; at the end writes point_cloud.ply, the test renders,
        metrics.json and a final checkpoint (when there is an out_dir). Returns the metrics."""
        c = self.config
        total = int(iterations or c.iterations)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self._logger = _Logger(self.out_dir, c.tensorboard, append=self.step > 0)
        pbar = None
        if c.progress:
            from tqdm import tqdm

            pbar = tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True, file=sys.stderr)
        ema_loss = ema_psnr = None
        wall0 = time.time()
        try:
            while self.step < total:
                t0 = time.perf_counter()
                logs = self.train_step()
                self.train_time += time.perf_counter() - t0
                step = self.step
                ema_loss = logs["loss"] if ema_loss is None else 0.6 * ema_loss + 0.4 * logs["loss"]
                ema_psnr = logs["psnr"] if ema_psnr is None else 0.6 * ema_psnr + 0.4 * logs["psnr"]
                if pbar is not None:
                    pbar.update(1)
                    if step % c.log_every == 0 or step == total:
                        pbar.set_postfix(loss=f"{ema_loss:.4f}", psnr=f"{ema_psnr:.2f}",
                                         N=self.model.num_gaussians, refresh=False)
                if self._logger is not None and (step % c.log_every == 0 or step == total):
                    self._logger.log(step, self.train_time, {f"train/{k}": v for k, v in logs.items()}
                                     | {"train/s_per_step": self.train_time / max(step, 1)})
                if c.eval_every and step % c.eval_every == 0 and step != total:
                    self._periodic_eval(pbar)
                if self.out_dir is not None and c.checkpoint_every and step % c.checkpoint_every == 0 \
                        and step != total:
                    self.save_checkpoint()
            return self._finish(time.time() - wall0)
        finally:
            if pbar is not None:
                pbar.close()
            if self._logger is not None:
                self._logger.close()
                self._logger = None

    def _periodic_eval(self, pbar) -> None:
        split = "test" if self.scene.test_views else "train"
        m = self.evaluate(split, lpips="none")
        msg = f"[step {self.step}] {split}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, N {self.model.num_gaussians}"
        (pbar.write if pbar is not None else print)(msg)
        if self._logger is not None:
            self._logger.log(self.step, self.train_time, {f"{split}/psnr": m["psnr"], f"{split}/ssim": m["ssim"]})

    def _finish(self, wall: float) -> dict[str, Any]:
        split = "test" if self.scene.test_views else "train"
        save_dir = None
        if self.out_dir is not None and self.config.save_test_renders:
            save_dir = self.out_dir / "renders" / split
        m = self.evaluate(split, save_dir=save_dir)
        metrics = {
            "step": self.step,
            "n_gaussians": self.model.num_gaussians,
            "train_time_s": self.train_time,
            "s_per_step": self.train_time / max(self.step, 1),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            split: m,
        }
        if self._logger is not None:
            vals = {f"{split}/psnr": m["psnr"], f"{split}/ssim": m["ssim"]}
            if m.get("lpips") is not None:
                vals[f"{split}/lpips"] = m["lpips"]
            self._logger.log(self.step, self.train_time, vals)
        if self.out_dir is not None:
            save_ply(self.model, self.out_dir / "point_cloud.ply")
            self.save_checkpoint()
            atomic_write_text(self.out_dir / "metrics.json", json.dumps(metrics, indent=2))
        self.metrics = metrics
        return metrics


@torch.no_grad()
def evaluate_model(model: GaussianModel, scene, split: str = "test", save_dir: Union[str, Path, None] = None,
                   lpips: str = "none", background: Optional[Tensor] = None,
                   device: Union[str, torch.device, None] = None) -> dict[str, Any]:
    """PSNR / SSIM (/ LPIPS) of ``model`` on a scene split ('test', 'train' or 'all')."""
    views = {"test": scene.test_views, "train": scene.train_views, "all": scene.views}.get(split)
    if views is None:
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
    if not views:
        raise ValueError(f"scene {scene.source_path} has no {split} views")
    device = torch.device(device) if device is not None else model.device
    bg = (scene.background if background is None else background).to(device)
    lp_fn, note = None, None
    if lpips != "none":
        note = lpips_unavailable_reason(lpips)
        lp_fn = lpips_metric(lpips, device) if note is None else None
    per_view: dict[str, dict[str, float]] = {}
    for view in views:
        cam = view.camera.to(device)
        out = model.render(cam, bg)
        gt = scene.load_image(view).to(device)
        rgb = out.rgb.clamp(0, 1)
        row = {"psnr": psnr(rgb, gt), "ssim": ssim(rgb, gt)}
        if lp_fn is not None:
            row["lpips"] = lp_fn(rgb, gt)
        per_view[view.name] = row
        if save_dir is not None:
            save_png(rgb, Path(save_dir) / f"{_safe_name(view.name)}.png")
    mean = lambda k: sum(r[k] for r in per_view.values()) / len(per_view)  # noqa: E731
    return {"split": split, "n_views": len(per_view), "psnr": mean("psnr"), "ssim": mean("ssim"),
            "lpips": mean("lpips") if lp_fn is not None else None, "lpips_note": note,
            "per_view": per_view}


def _version() -> str:
    from feature3dgs import __version__

    return __version__


def fit(data: Union[str, Path, Any], out_dir: Union[str, Path, None] = None,
        config: Optional[TrainConfig] = None, **overrides) -> Trainer:
    """Load a scene (a path, or a Scene object) and train on it; returns the trained Trainer
    (its ``model``; metrics in ``trainer.metrics``). ``overrides`` set TrainConfig fields."""
    cfg = config or TrainConfig()
    if isinstance(data, (str, Path)):
        cfg = dataclasses.replace(cfg, data=str(data), **overrides)
        scene = load_scene_for(cfg)
    else:
        cfg = dataclasses.replace(cfg, **overrides)
        scene = data
    trainer = Trainer(scene, cfg, out_dir=out_dir)
    trainer.train()
    return trainer
