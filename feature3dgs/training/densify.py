"""Adaptive density control (3DGS): screen-space gradient statistics, clone / split / prune,
opacity reset, the optimizer-state surgery that keeps Adam consistent with the model, and
:class:`DefaultStrategy`, which runs them on the 3DGS schedule.

Every function works on *all* per-Gaussian parameters of the model (``model.params``), so
features and any parameter a later stage adds are carried along. Adam moments follow their
Gaussian: pruned rows are dropped, new rows start at zero, the step count is kept.

Gradient units: our ``means2d.grad`` is dL/d(pixel). 3DGS thresholds the gradient with respect
to normalised device coordinates, in which the image spans 2 units, so
``grad_ndc = (grad_px_x * W / 2, grad_px_y * H / 2)``. :func:`ndc_grad_norm` converts, which
makes ``grad_threshold = 2e-4`` mean exactly what it means in 3DGS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel, inverse_sigmoid, quat_to_rotmat
from feature3dgs.rendering import RenderOutput
from feature3dgs.training.strategy import Strategy

__all__ = [
    "DensifyStats",
    "ndc_grad_norm",
    "param_group",
    "swap_param",
    "append_gaussians",
    "keep_gaussians",
    "clone_gaussians",
    "split_gaussians",
    "reset_opacity",
    "densify_and_prune",
    "DefaultStrategy",
]


def ndc_grad_norm(grad_px: Tensor, width: int, height: int) -> Tensor:
    """(N,) norm of the screen-space gradient in 3DGS's NDC units from one in pixels."""
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=grad_px.dtype, device=grad_px.device)
    return (grad_px[:, :2] * scale).norm(dim=-1)


@dataclass
class DensifyStats:
    """Per-Gaussian accumulators between densification steps.

    grad_accum: sum over views of the NDC screen-space gradient norm (where visible).
    denom: number of views in which the Gaussian was visible (radius > 0).
    max_radii: largest screen radius in pixels seen.
    """

    grad_accum: Tensor
    denom: Tensor
    max_radii: Tensor

    @classmethod
    def zeros(cls, n: int, device: torch.device | str = "cpu") -> "DensifyStats":
        z = lambda dt: torch.zeros(n, dtype=dt, device=device)  # noqa: E731
        return cls(z(torch.float32), z(torch.float32), z(torch.float32))

    def __len__(self) -> int:
        return int(self.grad_accum.shape[0])

    @torch.no_grad()
    def update(self, means2d_grad: Optional[Tensor], radii: Tensor, width: int, height: int,
               grad_scale: float = 1.0) -> None:
        """Accumulate one rendered view (call after backward; ``grad_scale`` multiplies the
        gradient, e.g. by the batch size when the loss is a batch mean)."""
        vis = radii > 0
        self.max_radii[vis] = torch.maximum(self.max_radii[vis], radii[vis].to(self.max_radii.dtype))
        if means2d_grad is None:
            return
        g = ndc_grad_norm(means2d_grad, width, height) * grad_scale
        self.grad_accum[vis] += g[vis]
        self.denom[vis] += 1

    def mean_grad(self) -> Tensor:
        g = self.grad_accum / self.denom
        return torch.nan_to_num(g, nan=0.0)

    def reset(self) -> None:
        self.grad_accum.zero_()
        self.denom.zero_()
        self.max_radii.zero_()

    def select(self, mask_or_index: Tensor) -> "DensifyStats":
        return DensifyStats(self.grad_accum[mask_or_index], self.denom[mask_or_index],
                            self.max_radii[mask_or_index])

    def state_dict(self) -> dict:
        return {"grad_accum": self.grad_accum, "denom": self.denom, "max_radii": self.max_radii}

    @classmethod
    def from_state_dict(cls, s: Mapping[str, Tensor]) -> "DensifyStats":
        return cls(s["grad_accum"].clone(), s["denom"].clone(), s["max_radii"].clone())


# ---------------------------------------------------------------------- optimizer surgery
def param_group(optimizer: torch.optim.Optimizer, name: str) -> Optional[dict]:
    """The optimizer's parameter group tagged ``name`` (see GaussianModel.param_groups), or None."""
    for g in optimizer.param_groups:
        if g.get("name") == name:
            return g
    return None


def swap_param(optimizer: Optional[torch.optim.Optimizer], name: str, old: nn.Parameter, new: nn.Parameter,
               transform) -> None:
    """Point the optimizer group ``name`` at ``new`` and map each per-row state tensor of ``old``
    through ``transform`` (other state entries, e.g. Adam's step, are kept)."""
    if optimizer is None:
        return
    group = param_group(optimizer, name)
    if group is None:
        return
    if len(group["params"]) != 1 or group["params"][0] is not old:
        raise RuntimeError(f"optimizer group {name!r} does not hold the model's parameter")
    state = optimizer.state.pop(old, None)
    group["params"][0] = new
    if state:
        for k, v in list(state.items()):
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape == old.shape:
                state[k] = transform(v)
        optimizer.state[new] = state


def keep_gaussians(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], keep: Tensor) -> None:
    """Keep the Gaussians selected by ``keep`` (bool mask or index), dropping the rest."""
    for name, old in list(model.params.items()):
        new = nn.Parameter(old.detach()[keep].contiguous())
        swap_param(optimizer, name, old, new, lambda v: v[keep].contiguous())
        model.params[name] = new


def append_gaussians(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer],
                     new_rows: Mapping[str, Tensor]) -> None:
    """Append Gaussians; ``new_rows`` must hold a tensor for every parameter of the model.
    Their Adam moments start at zero."""
    names = set(model.params.keys())
    if set(new_rows.keys()) != names:
        raise ValueError(f"append_gaussians: got rows for {sorted(new_rows)}, model has {sorted(names)}")
    counts = {t.shape[0] for t in new_rows.values()}
    if len(counts) != 1:
        raise ValueError("append_gaussians: new rows disagree on the number of Gaussians")
    for name, old in list(model.params.items()):
        rows = new_rows[name].detach().to(old.dtype)
        new = nn.Parameter(torch.cat([old.detach(), rows]).contiguous())
        swap_param(optimizer, name, old, new, lambda v, r=rows: torch.cat([v, torch.zeros_like(r)]).contiguous())
        model.params[name] = new


def clone_gaussians(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], mask: Tensor) -> int:
    """Duplicate the selected Gaussians (3DGS clone: an identical copy, which the optimizer then
    moves along the gradient). Returns the number added."""
    rows = {k: v.detach()[mask] for k, v in model.params.items()}
    n = int(rows["means"].shape[0])
    if n:
        append_gaussians(model, optimizer, rows)
    return n


def split_gaussians(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], mask: Tensor,
                    n_split: int = 2, scale_div: float = 1.6,
                    generator: Optional[torch.Generator] = None) -> int:
    """Replace each selected Gaussian by ``n_split`` children (3DGS split): centres drawn from the
    parent's Gaussian, scales divided by ``scale_div`` (3DGS: 0.8 * n_split = 1.6), every other
    parameter copied. The parents are removed. Returns the number of parents split."""
    idx = torch.nonzero(mask, as_tuple=False).squeeze(1)
    n = int(idx.numel())
    if n == 0:
        return 0
    p = {k: v.detach()[idx] for k, v in model.params.items()}
    std = torch.exp(p["scales"]).repeat(n_split, 1)
    noise = torch.randn(std.shape, generator=generator, dtype=std.dtype, device="cpu").to(std.device)
    samples = noise * std
    rots = quat_to_rotmat(p["quats"]).repeat(n_split, 1, 1)
    rows = {k: v.repeat((n_split,) + (1,) * (v.dim() - 1)) for k, v in p.items()}
    rows["means"] = torch.bmm(rots, samples[..., None]).squeeze(-1) + p["means"].repeat(n_split, 1)
    rows["scales"] = torch.log(std / scale_div)
    append_gaussians(model, optimizer, rows)
    keep = torch.ones(model.num_gaussians, dtype=torch.bool, device=model.device)
    keep[idx] = False
    keep_gaussians(model, optimizer, keep)
    return n


@torch.no_grad()
def reset_opacity(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], max_opacity: float = 0.01) -> None:
    """Clamp every opacity to at most ``max_opacity`` and zero its Adam moments (3DGS reset)."""
    old = model.params["opacities"]
    clamped = torch.minimum(torch.sigmoid(old.detach()), torch.full_like(old, max_opacity))
    new = nn.Parameter(inverse_sigmoid(clamped).contiguous())
    swap_param(optimizer, "opacities", old, new, torch.zeros_like)
    model.params["opacities"] = new


@torch.no_grad()
def densify_and_prune(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], stats: DensifyStats,
                      grad_threshold: float, extent: float, percent_dense: float = 0.01,
                      min_opacity: float = 0.005, max_screen_size: Optional[float] = None,
                      max_world_size: Optional[float] = None, max_gaussians: Optional[int] = None,
                      generator: Optional[torch.Generator] = None) -> tuple[DensifyStats, dict]:
    """One 3DGS densification step.

    1. Gaussians whose mean NDC gradient is >= ``grad_threshold``: clone those whose largest
       scale is <= ``percent_dense * extent``, split the others into two.
       With ``max_gaussians`` the candidates with the largest gradients are taken first so that
       the count stays within the cap.
    2. Prune Gaussians with opacity < ``min_opacity``, and, when given, a screen radius above
       ``max_screen_size`` pixels or a largest scale above ``max_world_size * extent``.

    Returns the fresh (zeroed) stats for the new set and counts
    {'cloned', 'split', 'pruned', 'n'}.
    """
    if len(stats) != model.num_gaussians:
        raise ValueError(f"densify stats hold {len(stats)} Gaussians, the model {model.num_gaussians}")
    grads = stats.mean_grad()
    big = model.scales.max(dim=1).values > percent_dense * extent
    cand = grads >= grad_threshold
    clone_mask = cand & ~big
    split_mask = cand & big
    if max_gaussians is not None:
        budget = max(int(max_gaussians) - model.num_gaussians, 0)  # both add one net Gaussian each
        if int(cand.sum()) > budget:
            order = torch.argsort(torch.where(cand, grads, torch.full_like(grads, -1.0)), descending=True)
            chosen = torch.zeros_like(cand)
            chosen[order[:budget]] = True
            clone_mask &= chosen
            split_mask &= chosen
    n0 = model.num_gaussians
    n_clone = clone_gaussians(model, optimizer, clone_mask)
    # Radii carried for the screen-size test: clones inherit their parent's, split children 0.
    radii = torch.cat([stats.max_radii, stats.max_radii[clone_mask]])
    split_mask = torch.cat([split_mask, torch.zeros(n_clone, dtype=torch.bool, device=split_mask.device)])
    n_split = split_gaussians(model, optimizer, split_mask, generator=generator)
    radii = torch.cat([radii[~split_mask], torch.zeros(2 * n_split, device=radii.device)])

    prune = model.opacities < min_opacity
    if max_screen_size is not None:
        prune |= radii > max_screen_size
    if max_world_size is not None:
        prune |= model.scales.max(dim=1).values > max_world_size * extent
    n_pruned = int(prune.sum())
    if n_pruned == model.num_gaussians:
        # Never prune everything: keep the most opaque Gaussian so training can go on.
        prune[torch.argmax(model.opacities)] = False
        n_pruned -= 1
    if n_pruned:
        keep_gaussians(model, optimizer, ~prune)
    counts = {"cloned": n_clone, "split": n_split, "pruned": n_pruned, "n": model.num_gaussians, "n_before": n0}
    return DensifyStats.zeros(model.num_gaussians, model.device), counts


class DefaultStrategy(Strategy):
    """3DGS adaptive density control on its schedule: screen-space gradient statistics after
    every backward (until ``refine_until``); every ``refine_every`` steps after ``refine_from``,
    clone / split / prune (:func:`densify_and_prune`); an opacity reset every ``reset_every``
    steps (and, as 3DGS does on white backgrounds, at ``refine_from``).

    Built by :func:`feature3dgs.training.strategy.make_strategy` from a resolved TrainConfig.
    """

    def __init__(self, *, extent: float, grad_threshold: float, percent_dense: float, min_opacity: float,
                 max_world_size: Optional[float], max_screen_size: Optional[float],
                 max_gaussians: Optional[int], refine_from: int, refine_until: int, refine_every: int,
                 reset_every: int, reset_at_start: bool, generator: torch.Generator, n: int,
                 device: torch.device):
        self.extent = float(extent)
        self.grad_threshold, self.percent_dense, self.min_opacity = grad_threshold, percent_dense, min_opacity
        self.max_world_size, self.max_screen_size, self.max_gaussians = max_world_size, max_screen_size, max_gaussians
        self.refine_from, self.refine_until, self.refine_every = refine_from, refine_until, refine_every
        self.reset_every, self.reset_at_start = reset_every, reset_at_start
        self.generator = generator
        self.stats = DensifyStats.zeros(n, device)
        self.last: dict = {}

    def after_backward(self, model: GaussianModel, out: RenderOutput, camera: Camera, step: int,
                       grad_scale: float = 1.0) -> None:
        if step < self.refine_until:
            grad = out.means2d.grad if out.means2d.requires_grad else None
            self.stats.update(grad, out.radii, camera.width, camera.height, grad_scale)

    def after_optimizer_step(self, model: GaussianModel, optimizer: torch.optim.Optimizer, step: int,
                             lr_means: float) -> None:
        if step >= self.refine_until:
            return
        if step > self.refine_from and step % self.refine_every == 0:
            if self.dist is not None:  # every rank's views count, and every rank decides alike
                self.dist.all_reduce(self.stats.grad_accum, "sum")
                self.dist.all_reduce(self.stats.denom, "sum")
                self.dist.all_reduce(self.stats.max_radii, "max")
            after_reset = step > self.reset_every
            self.stats, counts = densify_and_prune(
                model, optimizer, self.stats, self.grad_threshold, self.extent, percent_dense=self.percent_dense,
                min_opacity=self.min_opacity, max_screen_size=self.max_screen_size if after_reset else None,
                max_world_size=self.max_world_size if after_reset else None, max_gaussians=self.max_gaussians,
                generator=self.generator)
            self.last = {"step": step, **counts}
        # 3DGS also resets at densify_from on white backgrounds; here only when periodic resets
        # happen at all (the first one falls inside the densification window).
        resets = self.reset_every < self.refine_until
        if step % self.reset_every == 0 or (resets and self.reset_at_start and step == self.refine_from):
            reset_opacity(model, optimizer)

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict(), "last": dict(self.last)}

    def load_state_dict(self, state: Mapping, device: torch.device) -> None:
        stats = DensifyStats.from_state_dict(state["stats"])
        self.stats = DensifyStats(*(t.to(device) for t in (stats.grad_accum, stats.denom, stats.max_radii)))
        self.last = dict(state.get("last", {}))
