"""Density-control strategies (gsplat-style): objects the trainer calls around every step, each
with its own state and schedule. :class:`~feature3dgs.training.densify.DefaultStrategy` is 3DGS's
clone / split / prune; :class:`~feature3dgs.training.mcmc.MCMCStrategy` is 3DGS-MCMC's relocation
within a fixed budget. :func:`make_strategy` builds the one a TrainConfig names."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Mapping

import torch
from torch import Tensor

if TYPE_CHECKING:  # annotations only
    from feature3dgs.model.camera import Camera
    from feature3dgs.model.gaussians import GaussianModel
    from feature3dgs.rendering import RenderOutput

__all__ = ["Strategy"]


class Strategy(abc.ABC):
    """The hooks a density-control strategy implements.

    Per training step the trainer calls, in order: :meth:`regularization` (extra loss terms),
    backward, :meth:`after_backward` (gradient statistics), the optimizer step, then
    :meth:`after_optimizer_step` (which may add, remove or move Gaussians, keeping the
    optimizer's state in step). ``last`` holds the counts of the latest refinement (logged).
    """

    last: dict
    #: the process group of a distributed run (set by the trainer): statistics that drive
    #: decisions are reduced over it first, so every rank decides alike
    dist = None

    def regularization(self, model: "GaussianModel", step: int) -> dict[str, Tensor]:
        """Weighted loss terms the strategy adds (default: none)."""
        return {}

    def after_backward(self, model: "GaussianModel", out: "RenderOutput", camera: "Camera", step: int,
                       grad_scale: float = 1.0) -> None:
        """Called after each view's backward, before the optimizer step (default: nothing).
        ``grad_scale`` undoes the averaging of a batch's loss (the batch size), so that
        ``out.means2d.grad * grad_scale`` is this view's own screen-space gradient."""

    @abc.abstractmethod
    def after_optimizer_step(self, model: "GaussianModel", optimizer: torch.optim.Optimizer, step: int,
                             lr_means: float) -> None:
        """Called after the optimizer step of ``step``; ``lr_means`` is the means' learning rate."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """What a checkpoint needs to resume the strategy exactly."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping, device: torch.device) -> None:
        """Restore :meth:`state_dict` (tensors moved to ``device``)."""
