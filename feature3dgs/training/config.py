"""Every option of a training run, as one typed dataclass (defaults: 3DGS).

The ``feature3dgs train`` and ``feature3dgs distill`` options are derived from these fields
(:mod:`feature3dgs.cli.args`): the ``help`` metadata of a field is its ``--flag``'s help.

Schedule: every step-valued option left at None is the 3DGS value for a 30 000-step run scaled
by ``schedule_length / 30000`` (``schedule_length`` defaults to ``iterations``), so a 200-step
test run densifies and raises the SH degree too (:mod:`feature3dgs.training.schedule`).
:meth:`TrainConfig.resolved` fills them in (config.json shows the resolved values). For the
3DGS "7k" protocol (the 30k schedule stopped at 7000 steps) set ``schedule_length=30000``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Union

from feature3dgs.data.images import parse_background
from feature3dgs.training.schedule import (
    MCMC_SCHEDULE_DEFAULTS,
    SCHEDULE_DEFAULTS,
    SCHEDULE_FLOORS,
    SCHEDULE_FLOORS_IN_VIEWS,
    SCHEDULE_REFERENCE,
)

__all__ = ["TrainConfig", "SCENE_KEYS", "RUN_OPTION_KEYS", "Strategy", "LpipsNet", "background_arg"]

Strategy = Literal["default", "mcmc"]
LpipsNet = Literal["alex", "vgg"]
RGB = tuple[float, float, float]

#: the fields that say which scene a run was fitted to and how it was loaded
SCENE_KEYS = ("data", "resolution_scale", "width", "background", "images", "test_every")
#: the fields a resumed run may change (the model, learning rates and schedule stay)
RUN_OPTION_KEYS = ("iterations", "eval_every", "checkpoint_every", "log_every", "tensorboard", "lpips",
                   "keep_checkpoints", "save_test_renders", "device", "threads", "progress")


def _help(text: str, parse: Any = None, **kw: Any) -> Any:
    """A dataclass field with CLI help (and, optionally, the function that parses its flag)."""
    meta = {"help": text} if parse is None else {"help": text, "parse": parse}
    return field(metadata=meta, **kw)


def background_arg(value: Union[str, tuple, list]) -> RGB:
    """Parse a background given as 'black', 'white' or 'r,g,b' (the CLI form) into an RGB tuple."""
    if isinstance(value, str) and "," in value:
        value = tuple(float(x) for x in value.split(","))
    return tuple(float(x) for x in parse_background(value).tolist())  # type: ignore[return-value]


@dataclass
class TrainConfig:
    """The options of one training run; see the ``help`` of each field."""

    # ---------------------------------------------------------------- scene
    data: Optional[str] = _help("scene folder (COLMAP, Blender or transforms.json)", default=None)
    resolution_scale: float = _help("load images scaled by this factor (0.5 = half size)", default=1.0)
    width: Optional[int] = _help("load images at this width in pixels (instead of --resolution-scale)",
                                 default=None)
    background: RGB = _help("'black', 'white' or 'r,g,b' in [0,1]: RGBA compositing and render background",
                            parse=background_arg, default=(0.0, 0.0, 0.0))
    images: Optional[str] = _help("COLMAP image folder, e.g. images_8 (default: auto)", default=None)
    test_every: Optional[int] = _help("COLMAP/transforms: every k-th view is a test view (default 8)",
                                      default=None)
    # ---------------------------------------------------------------- run
    iterations: int = _help("total optimisation steps", default=30_000)
    seed: int = _help("random seed (view order, initialisation, densification)", default=0)
    device: Optional[str] = _help("'cpu', 'cuda' or 'cuda:N' (default: cuda when available)", default=None)
    threads: Optional[int] = _help("CPU threads for torch and the CPU kernels (default: torch's)", default=None)
    batch_size: Optional[int] = _help(
        "views per optimisation step, over all processes (default: one per process); learning rates are "
        "scaled by sqrt(batch size), so give 1/B of the iterations for the same schedule in images seen",
        default=None)
    # ---------------------------------------------------------------- model
    sh_degree: int = _help("largest SH degree of the colours (0..3)", default=3)
    feature_dim: int = _help("per-Gaussian feature size (0 = none; distill sets it)", default=0)
    init: Literal["auto", "points", "random"] = _help(
        "initial Gaussians: the scene's sparse points, random ones in a box, or auto (points when there are)",
        default="auto")
    init_random_points: int = _help("number of random initial Gaussians (3DGS: 100000)", default=100_000)
    init_random_box: Optional[tuple[float, float, float, float, float, float]] = _help(
        "box X0 Y0 Z0 X1 Y1 Z1 of the random initialisation (default: derived from the cameras)", default=None)
    init_opacity: float = _help("opacity of the initial Gaussians", default=0.1)
    # ---------------------------------------------------------------- learning rates (Adam)
    lr_means_init: float = _help("learning rate of the means at step 0, times the scene extent", default=1.6e-4)
    lr_means_final: float = _help("learning rate of the means at lr_means_steps, times the extent", default=1.6e-6)
    lr_sh_dc: float = _help("learning rate of the DC colour", default=2.5e-3)
    lr_sh_rest: float = _help("learning rate of the higher SH coefficients", default=2.5e-3 / 20)
    lr_opacity: float = _help("learning rate of the opacity logits (3DGS: 0.025)", default=0.025)
    lr_scales: float = _help("learning rate of the log scales", default=5e-3)
    lr_quats: float = _help("learning rate of the rotations", default=1e-3)
    lr_features: float = _help("learning rate of the per-Gaussian features", default=2.5e-3)
    # ---------------------------------------------------------------- loss
    lambda_dssim: float = _help("weight of D-SSIM in the photometric loss (3DGS: 0.2)", default=0.2)
    random_background: bool = _help("composite RGBA targets and renders on a random colour each step",
                                    default=False)
    # ---------------------------------------------------------------- density control
    strategy: Strategy = _help(
        "density control: 'default' (3DGS clone/split/prune) or 'mcmc' (3DGS-MCMC relocation within "
        "--max-gaussians)", default="default")
    max_gaussians: Optional[int] = _help(
        "cap on the number of Gaussians (default strategy: no cap when unset; mcmc: the budget, default "
        "derived from the training pixel count)", default=None)
    densify_grad_threshold: float = _help("default strategy: NDC screen-gradient threshold (3DGS 2e-4)",
                                          default=2e-4)
    percent_dense: float = _help("default strategy: clone below, split above this fraction of the extent",
                                 default=0.01)
    prune_min_opacity: float = _help("prune (default) or relocate (mcmc) Gaussians below this opacity",
                                     default=0.005)
    prune_max_world_size: Optional[float] = _help(
        "default strategy: prune Gaussians larger than this fraction of the extent (after the first reset)",
        default=0.1)
    prune_max_screen_size: Optional[float] = _help(
        "default strategy: prune Gaussians with a screen radius above this many pixels (default off)",
        default=None)
    mcmc_noise_lr: float = _help("mcmc: position noise, times the means' learning rate (3DGS-MCMC: 5e5)",
                                 default=5e5)
    mcmc_opacity_reg: float = _help("mcmc: weight of the mean opacity regulariser", default=0.01)
    mcmc_scale_reg: float = _help("mcmc: weight of the mean scale regulariser", default=0.01)
    mcmc_growth: float = _help("mcmc: fraction of Gaussians added at each refinement, up to the cap",
                               default=0.05)
    # ---------------------------------------------------------------- schedule (None: scaled 3DGS value)
    schedule_length: Optional[int] = _help("length the 3DGS schedule is scaled to (default: --iterations)",
                                           default=None)
    sh_up_every: Optional[int] = _help("raise the active SH degree every this many steps", default=None)
    densify_from: Optional[int] = _help("first step of density control", default=None)
    densify_until: Optional[int] = _help("last step of density control", default=None)
    densify_every: Optional[int] = _help("steps between density-control passes", default=None)
    opacity_reset_every: Optional[int] = _help("default strategy: steps between opacity resets", default=None)
    lr_means_steps: Optional[int] = _help("steps over which the means' learning rate decays", default=None)
    eval_every: Optional[int] = _help("steps between test evaluations (0: only at the end)", default=None)
    checkpoint_every: Optional[int] = _help("steps between checkpoints (0: only at the end)", default=None)
    # ---------------------------------------------------------------- logging and output
    log_every: int = _help("steps between log lines", default=10)
    tensorboard: bool = _help("also log to TensorBoard when it is installed", default=True)
    keep_checkpoints: int = _help("checkpoints kept in the run folder (the newest)", default=1)
    save_test_renders: bool = _help("write the final test renders as PNGs", default=True)
    lpips: Optional[LpipsNet] = _help(
        "LPIPS network of the final evaluation ('none': off; skipped when its weights are missing)",
        default="alex")
    progress: bool = _help("show a progress bar", default=True)

    def __post_init__(self) -> None:
        self.background = background_arg(self.background)
        if self.init_random_box is not None:
            self.init_random_box = tuple(float(v) for v in self.init_random_box)  # type: ignore[assignment]

    # ------------------------------------------------------------------ schedule
    def resolved(self, batch_size: Optional[int] = None) -> "TrainConfig":
        """A copy with every None schedule option replaced by its scaled 3DGS value.

        batch_size: views per step (default: the ``batch_size`` field, else 1). The floors of
        the densification steps count views of gradient statistics, so they are divided by it:
        B views per step for 1/B of the steps then follows the same schedule in images seen."""
        self.validate()
        views_per_step = batch_size or self.batch_size or 1
        length = self.schedule_length or self.iterations
        s = length / SCHEDULE_REFERENCE
        vals: dict[str, Any] = {}
        defaults = {**SCHEDULE_DEFAULTS, **(MCMC_SCHEDULE_DEFAULTS if self.strategy == "mcmc" else {})}
        for key, ref in defaults.items():
            if getattr(self, key) is None:
                floor = SCHEDULE_FLOORS.get(key, 1)
                if key in SCHEDULE_FLOORS_IN_VIEWS:
                    floor = math.ceil(floor / views_per_step)
                vals[key] = max(1, floor, round(ref * s))
        vals["schedule_length"] = length
        return dataclasses.replace(self, **vals)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first option outside its range."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

        def positive(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
            need(ok, name, "a finite number " + (">= 0" if allow_zero else "> 0"))

        need(self.iterations >= 1, "iterations", ">= 1")
        need(self.threads is None or self.threads >= 1, "threads", ">= 1")
        need(self.batch_size is None or self.batch_size >= 1, "batch_size", ">= 1")
        need(0 <= self.sh_degree <= 3, "sh_degree", "in 0..3")
        need(self.feature_dim >= 0, "feature_dim", ">= 0")
        need(self.init in ("auto", "points", "random"), "init", "'auto', 'points' or 'random'")
        need(self.strategy in ("default", "mcmc"), "strategy", "'default' or 'mcmc'")
        need(self.lpips in (None, "alex", "vgg"), "lpips", "'alex', 'vgg' or None")
        positive("resolution_scale")
        need(self.width is None or self.width >= 1, "width", ">= 1 pixel")
        need(self.test_every is None or self.test_every >= 1, "test_every", ">= 1")
        need(self.init_random_points >= 1, "init_random_points", ">= 1")
        need(0.0 < self.init_opacity < 1.0, "init_opacity", "in (0, 1)")
        need(self.init_random_box is None or len(self.init_random_box) == 6, "init_random_box",
             "6 numbers (x0, y0, z0, x1, y1, z1)")
        for name in ("lr_means_init", "lr_means_final", "lr_sh_dc", "lr_sh_rest", "lr_opacity", "lr_scales",
                     "lr_quats", "lr_features", "mcmc_noise_lr", "mcmc_opacity_reg", "mcmc_scale_reg"):
            positive(name, allow_zero=True)
        need(0 <= self.lambda_dssim <= 1, "lambda_dssim", "in [0, 1]")
        need(self.max_gaussians is None or self.max_gaussians >= 1, "max_gaussians", ">= 1")
        positive("densify_grad_threshold")
        positive("percent_dense")
        need(0 <= self.prune_min_opacity < 1, "prune_min_opacity", "in [0, 1)")
        for name in ("prune_max_world_size", "prune_max_screen_size"):
            if getattr(self, name) is not None:
                positive(name)
        need(0 < self.mcmc_growth <= 1, "mcmc_growth", "in (0, 1]")
        need(self.log_every >= 1, "log_every", ">= 1")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
        for key in SCHEDULE_DEFAULTS:
            v = getattr(self, key)
            low = 0 if key in ("eval_every", "checkpoint_every", "densify_from") else 1
            need(v is None or v >= low, key, f">= {low}")
        need(self.schedule_length is None or self.schedule_length >= 1, "schedule_length", ">= 1")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """The config of :meth:`to_dict` (unknown keys are ignored with a warning)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a training config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            warnings.warn(f"TrainConfig: ignoring unknown options {unknown}")
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in names}
        if kw.get("lpips") == "none":  # files written before lpips became Optional
            kw["lpips"] = None
        if kw.get("device") == "auto":
            kw["device"] = None
        return cls(**kw)

    def scene_options(self) -> dict[str, Any]:
        """The :data:`SCENE_KEYS` fields as a dict."""
        return {k: getattr(self, k) for k in SCENE_KEYS}
