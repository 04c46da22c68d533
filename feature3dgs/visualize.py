"""Feature maps as pictures: one PCA, fitted once, maps C channels to RGB so that
colours agree across views (and between a student and its teacher)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class FeaturePCA:
    """A fixed projection of C-dim features to 3 components, scaled to [0,1].

    mean (C,), basis (C,3), low/high (3,): the 1st and 99th percentiles of the
    projected fitting samples, mapped to 0 and 1."""

    mean: Tensor
    basis: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def fit(cls, maps: list[Tensor] | Tensor, max_samples: int = 200_000, seed: int = 0) -> "FeaturePCA":
        """Fits on one or more (C,H,W) maps (or (M,C) vectors)."""
        if isinstance(maps, Tensor):
            maps = [maps]
        rows = [m.detach().float().cpu().reshape(m.shape[0], -1).T if m.dim() == 3 else m.detach().float().cpu()
                for m in maps]
        x = torch.cat(rows)
        if x.shape[0] == 0 or x.shape[1] < 1:
            raise ValueError("FeaturePCA.fit needs at least one feature vector")
        if x.shape[0] > max_samples:
            g = torch.Generator().manual_seed(seed)
            x = x[torch.randperm(x.shape[0], generator=g)[:max_samples]]
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        basis = torch.zeros(x.shape[1], 3)
        k = min(3, vh.shape[0])
        basis[:, :k] = vh[:k].T
        p = (x - mean) @ basis
        low, high = p.quantile(0.01, dim=0), p.quantile(0.99, dim=0)
        return cls(mean, basis, low, torch.maximum(high, low + 1e-6))

    def __call__(self, features: Tensor) -> Tensor:
        """(C,H,W) -> (3,H,W) float in [0,1]."""
        C, H, W = features.shape
        if C != self.mean.shape[0]:
            raise ValueError(f"features have {C} channels, the PCA was fitted on {self.mean.shape[0]}")
        p = (features.detach().float().cpu().reshape(C, -1).T - self.mean) @ self.basis
        p = ((p - self.low) / (self.high - self.low)).clamp(0, 1)
        return p.T.reshape(3, H, W)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "basis": self.basis, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict) -> "FeaturePCA":
        return cls(**{k: data[k] for k in ("mean", "basis", "low", "high")})


def to_uint8_image(image: Tensor) -> np.ndarray:
    """(3,H,W) or (1,H,W) float in [0,1] -> (H,W,3) uint8."""
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def depth_to_image(depth: Tensor, alpha: Tensor | None = None) -> Tensor:
    """(1,H,W) alpha-weighted depth -> (1,H,W) in [0,1] (near bright), normalised by alpha."""
    d = depth.detach().float()
    if alpha is not None:
        d = d / alpha.detach().float().clamp(min=1e-6)
    valid = d[d > 0]
    if valid.numel() == 0:
        return torch.zeros_like(d)
    lo, hi = valid.quantile(0.01), valid.quantile(0.99)
    out = 1 - ((d - lo) / (hi - lo + 1e-9)).clamp(0, 1)
    return torch.where(d > 0, out, torch.zeros_like(out))


def overlay_mask(image: Tensor, mask: Tensor, color=(1.0, 0.2, 0.2), opacity: float = 0.5) -> Tensor:
    """(3,H,W) image in [0,1] with the (H,W) mask tinted by ``color``; the mask's outline is
    drawn at full colour so that small or faint masks stay visible. Returns (3,H,W) float."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3,H,W), got {tuple(image.shape)}")
    m = torch.as_tensor(mask).to(image.device)
    if m.shape != image.shape[1:]:
        raise ValueError(f"mask must be {tuple(image.shape[1:])}, got {tuple(m.shape)}")
    m = m.bool()
    c = torch.as_tensor(color, dtype=image.dtype, device=image.device).reshape(3, 1, 1)
    out = image.detach().clamp(0, 1).clone()
    out = torch.where(m[None], (1 - opacity) * out + opacity * c, out)
    # outline: mask pixels with a 4-neighbour outside the mask
    padded = torch.nn.functional.pad(m[None, None].float(), (1, 1, 1, 1))
    inner = -torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0] > 0.5
    edge = m & ~inner
    return torch.where(edge[None], c.expand_as(out), out)


_HEAT_STOPS = torch.tensor([[0.0, 0.0, 0.2], [0.3, 0.0, 0.6], [0.85, 0.2, 0.3], [1.0, 0.65, 0.0], [1.0, 1.0, 0.8]])


def heatmap(values: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """(H,W) values -> (3,H,W) colours from dark blue (``low``) through red to pale yellow
    (``high``), piecewise linear between five stops."""
    if values.dim() != 2:
        raise ValueError(f"values must be (H,W), got {tuple(values.shape)}")
    t = ((values.detach().float().cpu() - low) / max(high - low, 1e-12)).clamp(0, 1) * (len(_HEAT_STOPS) - 1)
    i = t.floor().long().clamp(max=len(_HEAT_STOPS) - 2)
    f = (t - i)[..., None]
    rgb = _HEAT_STOPS[i] * (1 - f) + _HEAT_STOPS[i + 1] * f
    return rgb.permute(2, 0, 1)
