"""Scene optimisation (3D Gaussian Splatting) through :meth:`GaussianModel.render`.

:class:`Trainer` runs the loop on a :class:`~feature3dgs.training.config.TrainConfig`; it writes
nothing itself but hands its outputs to a :class:`~feature3dgs.training.sink.RunSink` (a
:class:`feature3dgs.run.RunDir`), so ``Trainer(scene, config)`` trains in memory and
``Trainer(scene, config, run=RunDir(path))`` writes a run folder.

Extending the trainer (e.g. feature distillation):

* override :meth:`Trainer.loss_terms` (call ``super()``), or pass ``loss_fns``: callables
  ``fn(trainer, batch, out) -> {name: weighted loss tensor}``; all terms are summed and logged;
* set ``trainer.render_features = True`` so renders carry ``out.features``;
* register extra modules (a decoder) with :meth:`Trainer.register_module`: they get their own
  Adam optimizer and are saved in checkpoints;
* extra per-Gaussian parameters: add them to ``model.params`` and give them a learning rate
  by overriding :meth:`Trainer.learning_rates` before the optimizer is built; density control
  carries every entry of ``model.params``;
* density control is a strategy object (:meth:`Trainer.build_strategy`, or ``strategy=``);
* ``callbacks``: ``fn(trainer, step, logs)`` after every step.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm import tqdm

from feature3dgs.data import load_scene
from feature3dgs.data.images import composite
from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel, random_init_bounds
from feature3dgs.rendering import RenderOutput
from feature3dgs.rendering.device import resolve_device
from feature3dgs.training.checkpoint import (
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from feature3dgs.training.config import TrainConfig
from feature3dgs.training.densify import DefaultStrategy
from feature3dgs.training.distributed import Distributed
from feature3dgs.training.evaluate import EvalResult, evaluate_model
from feature3dgs.training.log import TrainLog
from feature3dgs.training.losses import rgb_loss
from feature3dgs.training.mcmc import MCMCStrategy, default_budget
from feature3dgs.training.schedule import expon_lr
from feature3dgs.training.sink import RunSink
from feature3dgs.training.strategy import Strategy
from feature3dgs.utils.metrics import psnr
from feature3dgs.utils.signals import DeferredInterrupt

__all__ = ["Trainer", "TrainBatch", "TrainResult", "NonFiniteLossError", "TrainingInterrupted", "load_scene_for",
           "init_model"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run between two steps; ``checkpoint`` is where its state was saved
    (None without a run folder)."""

    def __init__(self, step: int, checkpoint: Optional[Path]):
        self.step, self.checkpoint = step, checkpoint
        where = f"; checkpoint saved to {checkpoint} (continue with --resume)" if checkpoint else ""
        super().__init__(f"interrupted at step {step}{where}")


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


@dataclass
class TrainResult:
    """The end of a run: steps, final size, time (seconds), device and the final evaluation
    (None on the ranks other than 0 of a distributed run, which do not evaluate)."""

    step: int
    n_gaussians: int
    train_time_s: float
    s_per_step: float
    device: str
    threads: int
    eval: Optional[EvalResult]

    def to_dict(self) -> dict:
        """The metrics.json form: the evaluation under its split's name ('test' or 'train')."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "eval"}
        if self.eval is not None:
            d[self.eval.split] = self.eval.to_dict()
        return d


def load_scene_for(config: TrainConfig):
    """Load the scene ``config.data`` with the config's loader options."""
    if not config.data:
        raise ValueError("no scene given: set TrainConfig.data (the CLI's --data)")
    kw: dict[str, Any] = {}
    if config.images is not None:
        kw["images"] = config.images
    if config.test_every is not None:
        kw["test_every"] = config.test_every
    return load_scene(config.data, resolution_scale=config.resolution_scale if config.width is None else 1.0,
                      target_width=config.width, background=config.background, **kw)


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


#: steps between checks that the replicas of a distributed run still agree (also after each
#: density-control change)
REPLICA_CHECK_EVERY = 100

LossFn = Callable[["Trainer", TrainBatch, RenderOutput], Mapping[str, Tensor]]
Callback = Callable[["Trainer", int, dict], None]


class Trainer:
    """Optimises a :class:`GaussianModel` on a scene's training views (see the module docstring).

    Args:
        scene: a :class:`feature3dgs.data.Scene` with at least one training view.
        config: the options (defaults: 3DGS); resolved at construction.
        run: where checkpoints, logs, renders and the final PLY go (None: nothing is written).
        model: start from this model instead of initialising from the scene.
        loss_fns: extra loss terms, ``fn(trainer, batch, out) -> {name: tensor}``.
        callbacks: ``fn(trainer, step, logs)`` after every step.
        strategy: density control (default: :meth:`build_strategy` from the config).
        dist: the process group when launched by torchrun (:mod:`feature3dgs.training.distributed`);
            give ``run`` on rank 0 only.
    """

    def __init__(self, scene, config: Optional[TrainConfig] = None, run: Optional[RunSink] = None,
                 model: Optional[GaussianModel] = None, loss_fns: Sequence[LossFn] = (),
                 callbacks: Sequence[Callback] = (), strategy: Optional[Strategy] = None,
                 dist: Optional[Distributed] = None):
        config = config or TrainConfig()
        self.dist = dist
        world = dist.world_size if dist is not None else 1
        self.batch_size = int(config.batch_size or world)
        # The effective batch is part of the run (its learning rates and schedule follow it): a
        # checkpoint resumed under another number of processes keeps it.
        self.config = dataclasses.replace(config.resolved(batch_size=self.batch_size), batch_size=self.batch_size)
        if self.batch_size % world:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of the number of processes ({world})")
        if self.config.threads is not None:  # before the initialisation, which computes too
            torch.set_num_threads(self.config.threads)
        if not scene.train_views:
            raise ValueError(f"scene {scene.source_path} has no training views")
        self.scene = scene
        self.device = dist.device if dist is not None else resolve_device(self.config.device)
        self.run = run
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
        self.strategy = strategy if strategy is not None else self.build_strategy()
        self.strategy.dist = dist
        self.step = 0
        self.train_time = 0.0
        self.result: Optional[TrainResult] = None  # set by train()
        #: ``fn(trainer, result)`` run when training ends, inside the run folder's final transaction
        #: (distillation adds its decoder, feature metrics and panels there)
        self.finish_hooks: list[Callable[["Trainer", "TrainResult"], None]] = []
        self._order: list[int] = []
        self._cameras: dict[str, Camera] = {}
        self._log: Optional[TrainLog] = None

    @property
    def is_main(self) -> bool:
        """True unless this is a rank other than 0 of a distributed run (which evaluates and
        writes nothing)."""
        return self.dist is None or self.dist.is_main

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
        """Adam over the Gaussians' parameters. With ``batch_size`` B > 1 the learning rates are
        multiplied by sqrt(B) and the betas become 1 - B (1 - beta), as gsplat does, so that B
        views per step for 1/B of the steps follow the same schedule in images seen."""
        scale = math.sqrt(self.batch_size)
        lrs = {k: v * scale for k, v in self.learning_rates().items()}
        return torch.optim.Adam(self.model.param_groups(lrs), lr=0.0, eps=1e-15, betas=self.adam_betas(),
                                fused=True)

    def adam_betas(self) -> tuple[float, float]:
        b = self.batch_size
        return (max(0.0, 1.0 - b * (1.0 - 0.9)), max(0.0, 1.0 - b * (1.0 - 0.999)))

    def gaussian_budget(self) -> Optional[int]:
        """The cap on the number of Gaussians: ``max_gaussians``, or for MCMC (which needs one)
        :func:`~feature3dgs.training.mcmc.default_budget` of the training pixel count."""
        if self.config.max_gaussians is not None or self.config.strategy != "mcmc":
            return self.config.max_gaussians
        pixels = sum(v.camera.width * v.camera.height for v in self.scene.train_views)
        return default_budget(pixels)

    def build_strategy(self) -> Strategy:
        """The density-control strategy the config names, on its resolved schedule."""
        c = self.config
        if c.strategy == "mcmc":
            return MCMCStrategy(cap=self.gaussian_budget(), noise_lr=c.mcmc_noise_lr,
                                min_opacity=c.prune_min_opacity, growth=c.mcmc_growth,
                                opacity_reg=c.mcmc_opacity_reg, scale_reg=c.mcmc_scale_reg,
                                refine_from=c.densify_from, refine_until=c.densify_until,
                                refine_every=c.densify_every, generator=self.generator)
        return DefaultStrategy(extent=self.extent, grad_threshold=c.densify_grad_threshold,
                               percent_dense=c.percent_dense, min_opacity=c.prune_min_opacity,
                               max_world_size=c.prune_max_world_size, max_screen_size=c.prune_max_screen_size,
                               max_gaussians=c.max_gaussians, refine_from=c.densify_from,
                               refine_until=c.densify_until, refine_every=c.densify_every,
                               reset_every=c.opacity_reset_every, reset_at_start=bool((self.background == 1).all()),
                               generator=self.generator, n=self.model.num_gaussians, device=self.device)

    def register_module(self, name: str, module: nn.Module, lr: float) -> nn.Module:
        """Train ``module`` (e.g. a feature decoder) alongside the Gaussians with its own Adam;
        it is moved to the training device and saved in checkpoints under ``name``."""
        if name in self.aux_modules:
            raise ValueError(f"module {name!r} already registered")
        self.aux_modules[name] = module.to(self.device)
        self._aux_lrs[name] = float(lr)
        groups = [{"params": list(m.parameters()), "lr": self._aux_lrs[n] * math.sqrt(self.batch_size), "name": n}
                  for n, m in self.aux_modules.items()]
        self.aux_optimizer = torch.optim.Adam(groups, lr=0.0, betas=self.adam_betas(), fused=True)
        return self.aux_modules[name]

    def means_lr(self, step: int) -> float:
        """The means' learning rate at ``step`` (log-linear decay, times sqrt(batch_size))."""
        c = self.config
        scale = self.extent * math.sqrt(self.batch_size)
        return expon_lr(step, c.lr_means_init * scale, c.lr_means_final * scale, c.lr_means_steps)

    def update_learning_rate(self, step: int) -> float:
        lr = self.means_lr(step)
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

    def next_views(self) -> list:
        """This step's views: ``batch_size`` drawn from a fresh random permutation each epoch
        (3DGS), the same draw on every rank; this rank's consecutive share of them."""
        chosen = []
        for _ in range(self.batch_size):
            if not self._order:
                self._order = torch.randperm(len(self.scene.train_views), generator=self.generator).tolist()
            chosen.append(self.scene.train_views[self._order.pop()])
        if self.dist is None:
            return chosen
        share = self.batch_size // self.dist.world_size
        return chosen[self.dist.rank * share:(self.dist.rank + 1) * share]

    def target_image(self, view, background: Tensor) -> Tensor:
        """(3,H,W) ground truth on the device; RGBA composited on ``background``."""
        if self.config.random_background:
            img = composite(self.scene.load_image_u8(view), background.cpu())
        else:
            img = self.scene.load_image(view)
        return img.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ rendering and loss
    def render(self, camera: Camera, background: Optional[Tensor] = None) -> RenderOutput:
        """The training render (with the model's features when ``render_features``)."""
        feats = self.model.features if self.render_features else None
        return self.model.render(camera, self.background if background is None else background, features=feats)

    def loss_terms(self, batch: TrainBatch, out: RenderOutput) -> dict[str, Tensor]:
        """Weighted loss terms, summed into the training loss and logged one by one.

        The default is the 3DGS photometric loss as 'l1' = (1 - lambda) * L1 and
        'dssim' = lambda * (1 - SSIM), the strategy's regularisers, then every ``loss_fns`` term.
        """
        lam = self.config.lambda_dssim
        _, parts = rgb_loss(out.rgb, batch.image, lam)
        terms = {"l1": (1.0 - lam) * parts["l1"]}
        if "dssim" in parts:
            terms["dssim"] = lam * parts["dssim"]
        extras = [self.strategy.regularization(self.model, batch.step)]
        extras += [fn(self, batch, out) for fn in self.loss_fns]
        for extra in extras:
            clash = set(extra) & set(terms)
            if clash:
                raise ValueError(f"loss term names {sorted(clash)} used twice")
            terms.update(extra)
        return terms

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """Run one optimisation step on ``batch_size`` views (this rank's share of them when
        distributed); returns the logged values (means over this rank's views)."""
        c = self.config
        self.step += 1
        step = self.step
        lr = self.update_learning_rate(step)
        if step % c.sh_up_every == 0:
            self.model.one_up_sh_degree()
        views = self.next_views()
        bg = torch.rand(3, generator=self.generator).to(self.device) if c.random_background else self.background
        totals: dict[str, float] = {}
        psnrs = []
        for view in views:
            cam = self.camera(view)
            batch = TrainBatch(step, view, cam, self.target_image(view, bg), bg)
            out = self.render(cam, background=bg)
            terms = self.loss_terms(batch, out)
            loss = torch.stack([t.reshape(()) for t in terms.values()]).sum()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                self.step -= 1
                raise NonFiniteLossError(step, {k: float(v.detach()) for k, v in terms.items()})
            (loss / self.batch_size).backward()  # the step's loss is the mean over its views
            with torch.no_grad():
                self.strategy.after_backward(self.model, out, cam, step, grad_scale=float(self.batch_size))
            for k, v in (("loss", loss_value), *((f"loss/{k}", float(v.detach())) for k, v in terms.items())):
                totals[k] = totals.get(k, 0.0) + v / len(views)
            psnrs.append(psnr(out.rgb.detach(), batch.image))
        with torch.no_grad():
            if self.dist is not None:
                self.dist.all_reduce_sum([p.grad for p in self.model.params.values()]
                                          + [p.grad for m in self.aux_modules.values() for p in m.parameters()])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            # one sum per parameter is non-finite when any value is (then name the culprits exactly)
            if not bool(torch.isfinite(torch.stack([p.detach().sum() for p in self.model.params.values()])).all()):
                bad = [n for n, p in self.model.params.items() if not bool(torch.isfinite(p).all())]
                if bad:
                    raise NonFiniteLossError(step, {k: v for k, v in totals.items() if k.startswith("loss/")}, bad)
            if self.aux_optimizer is not None:
                self.aux_optimizer.step()
                self.aux_optimizer.zero_grad(set_to_none=True)
            n_before = self.model.num_gaussians
            self.strategy.after_optimizer_step(self.model, self.optimizer, step, lr)
            if self.dist is not None and (self.model.num_gaussians != n_before or step % REPLICA_CHECK_EVERY == 0):
                self.dist.check_replicas(self.replica_fingerprint(), step)
        logs = {**totals, "psnr": sum(psnrs) / len(psnrs), "n_gaussians": self.model.num_gaussians,
                "lr_means": lr, "sh_degree": self.model.active_sh_degree}
        for cb in self.callbacks:
            cb(self, step, logs)
        return logs

    def replica_fingerprint(self) -> Tensor:
        """(3,) float64: the number of Gaussians, the sum of the means and of the opacity logits;
        equal on every rank while the replicas agree."""
        m = self.model.params
        return torch.stack([torch.tensor(float(self.model.num_gaussians), dtype=torch.float64),
                            m["means"].detach().double().sum().cpu(), m["opacities"].detach().double().sum().cpu()])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "test", save_dir=None, lpips: bool = True) -> EvalResult:
        """The model's PSNR / SSIM (and, with ``lpips``, LPIPS with the config's network) on the
        split's views; with ``save_dir`` the renders are saved there."""
        return evaluate_model(self.model, self.scene, split, save_dir=save_dir,
                              lpips=self.config.lpips if lpips else None, background=self.background,
                              device=self.device)

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
            "strategy": self.strategy.state_dict(),
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
        self.strategy = self.build_strategy()
        self.strategy.dist = self.dist
        self.strategy.load_state_dict(state["strategy"], self.device)
        self.step = int(state["step"])
        self.generator.set_state(state["rng"]["generator"])
        self._order = [int(i) for i in state["rng"]["view_order"]]
        self.train_time = float(state.get("train_time", 0.0))
        self.extent = float(state.get("extent", self.extent))

    def save_checkpoint(self, path: Union[str, Path, None] = None) -> Path:
        """Write a checkpoint of the current step to ``path``, or (default) into the run folder
        (keeping its newest ``keep_checkpoints``); returns the file."""
        if path is not None:
            return save_checkpoint(self.state_dict(), path)
        if self.run is None:
            raise ValueError("save_checkpoint needs a path or a run folder (Trainer(..., run=RunDir(...)))")
        return self.run.save_checkpoint(self.state_dict(), self.step, self.config.keep_checkpoints)

    @classmethod
    def from_checkpoint(cls, state: Union[Mapping[str, Any], str, Path], scene=None, run: Optional[RunSink] = None,
                        overrides: Optional[Mapping[str, Any]] = None, **kwargs) -> "Trainer":
        """Rebuild a trainer from a checkpoint: a file, or one already loaded
        (:func:`feature3dgs.training.checkpoint.load_checkpoint`, ``RunDir.load_checkpoint``).

        ``overrides`` may change the run options (:data:`~feature3dgs.training.config.
        RUN_OPTION_KEYS` and the scene options); the resolved schedule stored in the checkpoint is kept.
        """
        if isinstance(state, (str, Path)):
            state = load_checkpoint(state)
        check_resumable(state)
        cfg = TrainConfig.from_dict(state["config"])
        if overrides:
            cfg = dataclasses.replace(cfg, **dict(overrides))
        if scene is None:
            scene = load_scene_for(cfg)
        model = GaussianModel.from_raw_state(state["model"])
        trainer = cls(scene, cfg, run=run, model=model, **kwargs)
        trainer.load_state_dict(state)
        return trainer

    # ------------------------------------------------------------------ the loop
    def scene_info(self) -> dict[str, Any]:
        return {"source_path": str(self.scene.source_path), "format": self.scene.format,
                "n_train": len(self.scene.train_views), "n_test": len(self.scene.test_views),
                "extent": self.extent, "background": self.scene.background.tolist(),
                "image_size": [self.scene.train_views[0].camera.width, self.scene.train_views[0].camera.height]}

    def train(self, iterations: Optional[int] = None) -> TrainResult:
        """Train up to ``iterations`` (default: config.iterations) total steps, evaluating and
        checkpointing on the schedule; at the end (with a run sink) writes point_cloud.ply, the
        test renders, metrics.json and a final checkpoint. Returns the :class:`TrainResult`."""
        c = self.config
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        total = int(iterations or c.iterations)
        if self.run is not None:
            for note in self.run.prepare(resume=self.step > 0):
                print(f"{self.run}: {note}", file=sys.stderr)
            self.run.write_config(c, self.scene_info(), str(self.device))
            self._log = self.run.open_log(c.tensorboard, append=self.step > 0)
        pbar = tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True, file=sys.stderr,
                    disable=not (c.progress and self.is_main))
        ema_loss = ema_psnr = None
        try:
            with DeferredInterrupt() as interrupt:
                while self.step < total:
                    if interrupt.requested:
                        saved = self.save_checkpoint() if self.run is not None else None
                        raise TrainingInterrupted(self.step, saved)
                    t0 = time.perf_counter()
                    logs = self.train_step()
                    self.train_time += time.perf_counter() - t0
                    step = self.step
                    ema_loss = logs["loss"] if ema_loss is None else 0.6 * ema_loss + 0.4 * logs["loss"]
                    ema_psnr = logs["psnr"] if ema_psnr is None else 0.6 * ema_psnr + 0.4 * logs["psnr"]
                    pbar.update(1)
                    if step % c.log_every == 0 or step == total:
                        pbar.set_postfix(loss=f"{ema_loss:.4f}", psnr=f"{ema_psnr:.2f}", N=self.model.num_gaussians,
                                         refresh=False)
                        if self._log is not None:
                            self._log.log(step, self.train_time, {f"train/{k}": v for k, v in logs.items()}
                                          | {"train/s_per_step": self.train_time / max(step, 1)})
                    if c.eval_every and step % c.eval_every == 0 and step != total and self.is_main:
                        self._periodic_eval(pbar)
                    if self.run is not None and c.checkpoint_every and step % c.checkpoint_every == 0 \
                            and step != total:
                        self.save_checkpoint()
                return self._finish()
        finally:
            pbar.close()
            if self._log is not None:
                self._log.close()
                self._log = None

    def _periodic_eval(self, pbar) -> None:
        split = "test" if self.scene.test_views else "train"
        m = self.evaluate(split, lpips=False)
        pbar.write(f"[step {self.step}] {split}: PSNR {m.psnr:.2f} dB, SSIM {m.ssim:.4f}, N {self.model.num_gaussians}")
        if self._log is not None:
            self._log.log(self.step, self.train_time, {f"{split}/psnr": m.psnr, f"{split}/ssim": m.ssim})

    def _finish(self) -> TrainResult:
        """The final evaluation and (with a run folder) the final outputs, in one transaction:
        test renders, point_cloud.ply, the last checkpoint, metrics.json, and the finish hooks'.
        In a distributed run only rank 0 evaluates and writes; the others wait for it."""
        split = "test" if self.scene.test_views else "train"
        if not self.is_main:
            result = self._final_result(split, None, evaluate=False)
            for hook in self.finish_hooks:
                hook(self, result)
            self.dist.barrier()
            return result
        if self.run is None:
            result = self._final_result(split, None)
            for hook in self.finish_hooks:
                hook(self, result)
        else:
            with self.run.transaction():
                result = self._final_result(split, self.run.render_dir(split) if self.config.save_test_renders else None)
                self.run.write_model(self.model)
                self.save_checkpoint()
                self.run.write_metrics(result.to_dict())
                for hook in self.finish_hooks:
                    hook(self, result)
        if self.dist is not None:
            self.dist.barrier()
        return result

    def _final_result(self, split: str, save_dir, evaluate: bool = True) -> TrainResult:
        m = self.evaluate(split, save_dir=save_dir) if evaluate else None
        result = TrainResult(step=self.step, n_gaussians=self.model.num_gaussians, train_time_s=self.train_time,
                             s_per_step=self.train_time / max(self.step, 1), device=str(self.device),
                             threads=torch.get_num_threads(), eval=m)
        if self._log is not None and m is not None:
            vals = {f"{split}/psnr": m.psnr, f"{split}/ssim": m.ssim, f"{split}/lpips": m.lpips}
            self._log.log(self.step, self.train_time, vals)
        self.result = result
        return result
