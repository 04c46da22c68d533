"""The training schedule: 3DGS's step values at 30 000 steps, how they scale to other run
lengths, and the means' learning-rate decay."""

from __future__ import annotations

import math

__all__ = ["SCHEDULE_REFERENCE", "SCHEDULE_DEFAULTS", "MCMC_SCHEDULE_DEFAULTS", "SCHEDULE_FLOORS",
           "SCHEDULE_FLOORS_IN_VIEWS", "expon_lr"]

SCHEDULE_REFERENCE = 30_000
#: 3DGS step values at the reference length (scaled unless given explicitly)
SCHEDULE_DEFAULTS = {
    "sh_up_every": 1000,
    "densify_from": 500,
    "densify_until": 15_000,
    "densify_every": 100,
    "opacity_reset_every": 3000,
    "lr_means_steps": 30_000,
    "eval_every": 7000,
    "checkpoint_every": 7000,
}
#: 3DGS-MCMC's values where they differ (gsplat's MCMCStrategy: refinement until step 25 000)
MCMC_SCHEDULE_DEFAULTS = {"densify_until": 25_000}
#: Floors of the scaled values: a densification needs some views of gradient statistics (else the
#: count explodes in short runs), and an opacity reset needs a few hundred steps to recover at
#: lr_opacity 0.025 (Adam moves a logit about lr per step). At 30 000 steps they do not bind.
SCHEDULE_FLOORS = {"densify_from": 50, "densify_every": 10, "opacity_reset_every": 300}
#: The floors that count views seen (divided by the views per step of a batched run); the
#: opacity reset's counts optimiser steps.
SCHEDULE_FLOORS_IN_VIEWS = ("densify_from", "densify_every")


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """3DGS's log-linear decay from lr_init (step 0) to lr_final (step >= max_steps)."""
    if lr_init == 0.0 and lr_final == 0.0:
        return 0.0
    if lr_init <= 0.0 or lr_final <= 0.0:
        return lr_init if step < max_steps else lr_final
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)
