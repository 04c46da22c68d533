"""3DGS-MCMC density control (Kheradmand et al., "3D Gaussian Splatting as Markov Chain Monte
Carlo", 2024): the Gaussians are samples, and the count grows only up to a fixed budget.

Every ``refine_every`` steps inside the refinement window:

* **relocate**: each "dead" Gaussian (opacity <= ``min_opacity``) is moved onto a live one drawn
  with probability proportional to opacity;
* **add**: ``growth`` x N new Gaussians (until the cap) are copies of Gaussians drawn the same way.

A Gaussian copied into n Gaussians at the same place gets the opacity and scale that keep what the
n copies composite to equal the original (the paper's relocation rule)::

    o' = 1 - (1 - o)^(1/n)
    s' = s * o / sum_{k=0}^{n-1} C(n, k+1) (-1)^k o'^(k+1) / sqrt(k+1)

(the paper writes the denominator as a double sum over i <= n and k < i of C(i-1, k); summing C(i-1,
k) over i gives C(n, k+1)). The Adam moments of every Gaussian involved restart at zero.

After every optimizer step, the means get noise shaped by each Gaussian's covariance and gated by
its transparency: ``dx = Sigma eps * lr_means * noise_lr * sigmoid(100 (1 - o - 0.995))``, so
nearly transparent Gaussians explore while opaque ones stay put (the SGLD step). The loss gains
``opacity_reg * mean(opacity) + scale_reg * mean(scale)``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from feature3dgs.model.gaussians import GaussianModel, inverse_sigmoid, quat_to_rotmat
from feature3dgs.training.densify import append_gaussians, swap_param
from feature3dgs.training.strategy import Strategy

__all__ = ["relocation", "relocate_dead", "add_gaussians", "inject_position_noise", "MCMCStrategy",
           "default_budget", "MAX_COPIES"]

#: copies of one Gaussian per refinement at most (the relocation rule is exact in float64 up to here)
MAX_COPIES = 51


def relocation(opacities: Tensor, scales: Tensor, copies: Tensor, min_opacity: float = 0.005) -> tuple[Tensor, Tensor]:
    """Opacity and scale of each of ``copies`` identical Gaussians that together stand for one.

    Args:
        opacities: (M,) activated opacities o in (0, 1).
        scales: (M, 3) activated scales s.
        copies: (M,) integer n >= 1 (clipped to :data:`MAX_COPIES`).
    Returns:
        (M,) opacities o' and (M, 3) scales s' (see the module docstring); n = 1 returns the input.
    """
    n = copies.clamp(1, MAX_COPIES).to(torch.float64)
    o = opacities.to(torch.float64).clamp(1e-12, 1 - 1e-12)
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n)
    k = torch.arange(MAX_COPIES, dtype=torch.float64, device=o.device)  # (K,)
    # C(n, k+1) for every row, 0 where k+1 > n
    kk = k[None, :] + 1.0
    log_binom = torch.lgamma(n[:, None] + 1) - torch.lgamma(kk + 1) - torch.lgamma((n[:, None] - kk).clamp_min(0) + 1)
    binom = torch.where(kk <= n[:, None], torch.exp(log_binom).round(), torch.zeros_like(log_binom))
    sign = torch.where(k % 2 == 0, 1.0, -1.0)[None, :]
    terms = binom * sign * torch.pow(new_o[:, None], kk) / torch.sqrt(kk)
    denom = terms.sum(1)
    coeff = o / denom
    new_o = new_o.clamp(min_opacity, 1 - 1e-6)
    return new_o.to(opacities.dtype), (scales.to(torch.float64) * coeff[:, None]).to(scales.dtype)


def _sample(model: GaussianModel, n: int, among: Optional[Tensor], generator: torch.Generator) -> Tensor:
    """``n`` indices drawn with replacement, with probability proportional to opacity (only
    ``among`` when given)."""
    probs = model.opacities.detach().clamp_min(0).to(torch.float64).cpu()
    if among is not None:
        probs = probs * among.cpu().to(probs.dtype)
    if not bool(probs.sum() > 0):
        probs = torch.ones_like(probs) if among is None else among.cpu().to(probs.dtype)
    return torch.multinomial(probs, n, replacement=True, generator=generator).to(model.device)


def _reset_moments(optimizer: Optional[torch.optim.Optimizer], model: GaussianModel, rows: Tensor) -> None:
    """Zero the Adam moments of ``rows`` in every per-Gaussian parameter."""
    if optimizer is None:
        return
    for p in model.params.values():
        state = optimizer.state.get(p)
        if not state:
            continue
        for key, v in state.items():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape == p.shape:
                v[rows] = 0


def _set_rows(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], name: str, rows: Tensor,
              values: Tensor) -> None:
    """Write ``values`` into rows of parameter ``name`` (a new Parameter; optimizer state kept)."""
    old = model.params[name]
    data = old.detach().clone()
    data[rows] = values.to(data.dtype)
    new = nn.Parameter(data.contiguous())
    swap_param(optimizer, name, old, new, lambda v: v)
    model.params[name] = new


def _copy_with_relocation(model: GaussianModel, optimizer, sources: Tensor, min_opacity: float) -> dict[str, Tensor]:
    """Apply the relocation rule to the sampled ``sources`` (with repeats) in place and return
    the rows of their copies (one per sample)."""
    uniq, counts = torch.unique(sources, return_counts=True)
    per_sample = torch.zeros(model.num_gaussians, dtype=torch.long, device=model.device)
    per_sample[uniq] = counts
    n_copies = per_sample[uniq] + 1
    new_o, new_s = relocation(model.opacities.detach()[uniq], model.scales.detach()[uniq], n_copies, min_opacity)
    _set_rows(model, optimizer, "opacities", uniq, inverse_sigmoid(new_o)[:, None])
    _set_rows(model, optimizer, "scales", uniq, torch.log(new_s))
    _reset_moments(optimizer, model, uniq)
    return {k: v.detach()[sources].clone() for k, v in model.params.items()}


@torch.no_grad()
def relocate_dead(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], min_opacity: float,
                  generator: torch.Generator) -> int:
    """Move every Gaussian with opacity <= ``min_opacity`` onto a live one (drawn by opacity).
    Returns the number moved."""
    dead = model.opacities.detach() <= min_opacity
    dead |= ~torch.isfinite(model.opacities.detach())
    n_dead = int(dead.sum())
    if n_dead == 0 or n_dead == model.num_gaussians:
        return 0
    sources = _sample(model, n_dead, ~dead, generator)
    rows = _copy_with_relocation(model, optimizer, sources, min_opacity)
    dead_idx = dead.nonzero().squeeze(1)
    for name, values in rows.items():
        _set_rows(model, optimizer, name, dead_idx, values)
    _reset_moments(optimizer, model, dead_idx)
    return n_dead


@torch.no_grad()
def add_gaussians(model: GaussianModel, optimizer: Optional[torch.optim.Optimizer], n: int, min_opacity: float,
                  generator: torch.Generator) -> int:
    """Add ``n`` copies of Gaussians drawn by opacity (relocation rule on the sources). Returns n."""
    if n <= 0:
        return 0
    sources = _sample(model, n, None, generator)
    rows = _copy_with_relocation(model, optimizer, sources, min_opacity)
    append_gaussians(model, optimizer, rows)
    return n


@torch.no_grad()
def inject_position_noise(model: GaussianModel, scale: float, generator: torch.Generator) -> None:
    """The SGLD step: means += Sigma eps * scale * sigmoid(100 (1 - o - 0.995)), eps ~ N(0, I)."""
    if scale <= 0:
        return
    means = model.params["means"]
    R = quat_to_rotmat(model.params["quats"].detach())
    s = model.scales.detach()
    M = R * s[:, None, :]
    cov = M @ M.transpose(1, 2)
    gate = torch.sigmoid(100.0 * ((1.0 - model.opacities.detach()) - 0.995))
    eps = torch.randn(means.shape, generator=generator).to(means.device)
    noise = torch.einsum("nij,nj->ni", cov, eps) * (gate * scale)[:, None]
    means.add_(torch.nan_to_num(noise, nan=0.0, posinf=0.0, neginf=0.0))


def default_budget(n_train_pixels: int) -> int:
    """The Gaussian budget when none is given: one Gaussian per 16 training pixels, between 10 000
    and 3 000 000 (e.g. 24 views of 128 x 128 pixels: 24 576; 200 views of 800 x 800: 3 000 000)."""
    return int(min(3_000_000, max(10_000, n_train_pixels // 16)))


class MCMCStrategy(Strategy):
    """3DGS-MCMC (see the module docstring), built by the trainer from a resolved TrainConfig."""

    def __init__(self, *, cap: int, noise_lr: float, min_opacity: float, growth: float, opacity_reg: float,
                 scale_reg: float, refine_from: int, refine_until: int, refine_every: int,
                 generator: torch.Generator):
        if cap < 1:
            raise ValueError(f"the Gaussian budget (max_gaussians) must be >= 1, got {cap}")
        self.cap, self.noise_lr, self.min_opacity, self.growth = int(cap), float(noise_lr), float(min_opacity), growth
        self.opacity_reg, self.scale_reg = float(opacity_reg), float(scale_reg)
        self.refine_from, self.refine_until, self.refine_every = refine_from, refine_until, refine_every
        self.generator = generator
        self.last: dict = {}

    def regularization(self, model: GaussianModel, step: int) -> dict[str, Tensor]:
        terms = {}
        if self.opacity_reg > 0:
            terms["opacity_reg"] = self.opacity_reg * model.opacities.abs().mean()
        if self.scale_reg > 0:
            terms["scale_reg"] = self.scale_reg * model.scales.abs().mean()
        return terms

    def after_optimizer_step(self, model: GaussianModel, optimizer: torch.optim.Optimizer, step: int,
                             lr_means: float) -> None:
        if self.refine_from < step < self.refine_until and step % self.refine_every == 0:
            n0 = model.num_gaussians
            moved = relocate_dead(model, optimizer, self.min_opacity, self.generator)
            target = min(self.cap, max(n0, math.ceil(n0 * (1.0 + self.growth))))
            added = add_gaussians(model, optimizer, target - n0, self.min_opacity, self.generator)
            self.last = {"step": step, "relocated": moved, "added": added, "n": model.num_gaussians, "n_before": n0}
        inject_position_noise(model, lr_means * self.noise_lr, self.generator)

    def state_dict(self) -> dict:
        return {"last": dict(self.last)}

    def load_state_dict(self, state: Mapping, device: torch.device) -> None:
        self.last = dict(state.get("last", {}))
