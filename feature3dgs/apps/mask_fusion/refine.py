"""Mask refinement by ray pairs (SANeRF-HQ's RGB similarity): neighbouring pixels of similar
colour are made to agree, so a mask blurred across a colour edge snaps to the edge."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["refine_mask_ray_pairs"]


def _pairs(neighbours: int):
    """(dy, dx, distance) of the undirected neighbour offsets."""
    offs = [(0, 1, 1.0), (1, 0, 1.0)]
    if neighbours == 8:
        offs += [(1, 1, math.sqrt(2)), (1, -1, math.sqrt(2))]
    return offs


def _slices(h: int, w: int, dy: int, dx: int):
    """Slices of the pixels p and their neighbours q = p + (dy, dx) that lie inside the image."""
    p = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    q = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
    return p, q


def refine_mask_ray_pairs(mask_prob: Tensor, image: Tensor, *, sigma: float = 0.1, smoothness: float = 20.0,
                          neighbours: int = 8, iterations: int = 200, confidence_weighting: bool = True,
                          tol: float = 1e-6) -> Tensor:
    """Make neighbouring rays of similar colour agree (SANeRF-HQ's ray-pair RGB similarity).

    Minimises over q (the refined mask)::

        E(q) = sum_p u_p (q_p - m_p)^2 + smoothness * sum_{p~r} a_pr (q_p - q_r)^2,
        a_pr = exp(-|I_p - I_r|^2 / (2 sigma^2)) / |p - r|

    over 4- or 8-neighbour pairs p~r. The unary weight u_p keeps q close to the input m; with
    ``confidence_weighting`` it is 0.01 + (2 m_p - 1)^2, so confident pixels (m near 0 or 1)
    hold their value and uncertain ones (m near 0.5) take it from neighbours of their own
    colour: a mask blurred across a colour edge snaps to the edge. E is quadratic; its
    minimiser solves a sparse symmetric positive definite system, done here with conjugate
    gradients (``iterations`` at most, stopping at relative residual ``tol``), vectorised over
    the pixels. The result is a convex combination of input values, so it stays in [0, 1].

    Args:
        mask_prob: (H, W) probabilities in [0, 1] (or bool).
        image: (C, H, W) channels-first colours (C = 3 for RGB, any C works), e.g. in [0, 1];
            ``sigma`` is in the image's units.
        sigma: colour scale of the pair weights.
        smoothness: weight of the pairwise term (a larger value spreads values further).
        neighbours: 4 or 8.

    Returns:
        (H, W) float32 refined probabilities in [0, 1] on the mask's device.
    """
    m = torch.as_tensor(mask_prob)
    if m.dim() != 2:
        raise ValueError(f"mask_prob must be (H, W), got {tuple(m.shape)}")
    m = m.to(torch.float64)
    if not bool(torch.isfinite(m).all()) or float(m.min()) < -1e-6 or float(m.max()) > 1 + 1e-6:
        raise ValueError("mask_prob must hold finite probabilities in [0, 1]")
    m = m.clamp(0, 1)
    img = torch.as_tensor(image)
    if img.dim() == 2:
        img = img[None]
    H, W = m.shape
    if img.dim() != 3 or tuple(img.shape[1:]) != (H, W):
        raise ValueError(f"image must be (C, H, W) with (H, W) = ({H}, {W}) like mask_prob, got {tuple(img.shape)}")
    if neighbours not in (4, 8):
        raise ValueError(f"neighbours must be 4 or 8, got {neighbours}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if not smoothness >= 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    img = img.to(m.device, torch.float64)

    edges = []
    deg = torch.zeros_like(m)
    for dy, dx, dist in _pairs(neighbours):
        ps, qs = _slices(H, W, dy, dx)
        diff2 = ((img[(slice(None),) + ps] - img[(slice(None),) + qs]) ** 2).sum(0)
        a = smoothness * torch.exp(-diff2 / (2 * sigma ** 2)) / dist
        edges.append((ps, qs, a))
        deg[ps] += a
        deg[qs] += a
    u = 0.01 + (2 * m - 1) ** 2 if confidence_weighting else torch.ones_like(m)

    def apply(x: Tensor) -> Tensor:
        y = (u + deg) * x
        for ps, qs, a in edges:
            y[ps] -= a * x[qs]
            y[qs] -= a * x[ps]
        return y

    b = u * m
    x = m.clone()
    r = b - apply(x)
    p = r.clone()
    rs = (r * r).sum()
    bnorm = float((b * b).sum().sqrt()) or 1.0
    for _ in range(int(iterations)):
        if float(rs.sqrt()) <= tol * bnorm:
            break
        Ap = apply(p)
        alpha = rs / (p * Ap).sum().clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum()
        p = r + (rs_new / rs.clamp_min(1e-300)) * p
        rs = rs_new
    return x.clamp(0, 1).to(torch.float32)

