"""Feature maps as pictures: one PCA, fitted once, maps C channels to RGB so that
colours agree across views (and between a student and its teacher)."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from feature3dgs.utils.metrics import label_map


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


# ---------------------------------------------------------------- colour maps and mask overlays
# numpy (H, W, 3) uint8 primitives (the viewer draws with them) and torch wrappers for (3, H, W)
# float images.

# Anchors of a perceptually ordered map (dark blue -> teal -> yellow -> dark red, like turbo),
# linearly interpolated.
_CMAP = np.array([
    [48, 18, 59], [70, 107, 227], [40, 187, 236], [50, 241, 151],
    [164, 252, 60], [237, 208, 58], [251, 128, 34], [122, 4, 3],
], dtype=np.float64)


def apply_colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) floats in [0, 1] (clipped; NaN -> 0) -> (H, W, 3) uint8 (turbo-like: low blue, high red)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0).clip(0.0, 1.0)
    pos = v * (len(_CMAP) - 1)
    i = np.minimum(pos.astype(np.int64), len(_CMAP) - 2)
    f = (pos - i)[..., None]
    return (_CMAP[i] * (1 - f) + _CMAP[i + 1] * f + 0.5).astype(np.uint8)


def tint(image: np.ndarray, weight: np.ndarray, color, strength: float = 0.5) -> np.ndarray:
    """Blend ``color`` (RGB uint8) into ``image`` (H, W, 3) uint8 with per-pixel weight
    ``strength * weight`` ((H, W) in [0, 1])."""
    a = (np.clip(np.asarray(weight, dtype=np.float32), 0, 1) * strength)[..., None]
    out = image.astype(np.float32) * (1 - a) + np.asarray(color, dtype=np.float32) * a
    return (out + 0.5).astype(np.uint8)


def mask_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool: mask pixels with a 4-neighbour outside the mask (or the image), dilated inward
    ``thickness`` times."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    for _ in range(max(1, thickness)):
        p = np.pad(inner, 1, constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def draw_mask(image: np.ndarray, mask: np.ndarray, color=(0, 150, 255), strength: float = 0.5,
              outline=(255, 255, 255)) -> np.ndarray:
    """(H, W, 3) uint8 with the pixels of ``mask`` ((H, W) bool) tinted and its outline drawn."""
    m = np.asarray(mask, dtype=bool)
    out = tint(image, m.astype(np.float32), color, strength)
    if outline is not None and m.any():
        thick = max(1, round(max(image.shape[:2]) / 300))
        out[mask_outline(m, thick)] = np.asarray(outline, dtype=np.uint8)
    return out


def overlay_mask(image: Tensor, mask: Tensor, color=(1.0, 0.2, 0.2), opacity: float = 0.5) -> Tensor:
    """(3,H,W) image in [0,1] with the (H,W) mask tinted by ``color`` (RGB in [0,1]) and outlined
    in white (:func:`draw_mask`). Returns (3,H,W) float in [0,1]."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3,H,W), got {tuple(image.shape)}")
    m = torch.as_tensor(mask).detach().cpu()
    if m.shape != image.shape[1:]:
        raise ValueError(f"mask must be {tuple(image.shape[1:])}, got {tuple(m.shape)}")
    rgb = tuple(int(round(255 * float(c))) for c in color)
    drawn = draw_mask(to_uint8_image(image), m.bool().numpy(), rgb, opacity)
    return torch.from_numpy(drawn).permute(2, 0, 1).float() / 255.0


def heatmap(values: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """(H,W) values -> (3,H,W) float colours of :func:`apply_colormap`, ``low`` blue to ``high`` red."""
    if values.dim() != 2:
        raise ValueError(f"values must be (H,W), got {tuple(values.shape)}")
    v = (values.detach().float().cpu() - low) / max(high - low, 1e-12)
    return torch.from_numpy(apply_colormap(v.numpy())).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------- class label maps
_BASE_COLORS = [
    (0.0, 0.0, 0.0), (0.90, 0.10, 0.15), (0.20, 0.70, 0.25), (0.15, 0.35, 0.95), (1.00, 0.85, 0.10),
    (0.60, 0.20, 0.80), (0.10, 0.85, 0.90), (1.00, 0.50, 0.05), (0.95, 0.40, 0.80), (0.55, 0.85, 0.20),
    (0.50, 0.30, 0.10), (0.55, 0.55, 0.55), (0.00, 0.45, 0.45), (0.95, 0.95, 0.95), (0.50, 0.00, 0.15),
    (0.65, 0.75, 1.00), (0.45, 0.45, 0.00), (1.00, 0.75, 0.60), (0.00, 0.20, 0.50), (0.75, 1.00, 0.70),
]


def class_palette(k: int) -> Tensor:
    """(K, 3) float32 colours in [0, 1], one per class; class 0 (background) is black.

    The first 20 are hand-picked distinct colours; beyond them the hues follow the golden
    ratio with alternating brightness.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    cols = list(_BASE_COLORS[:k])
    i = 0
    while len(cols) < k:
        h = (i * 0.6180339887498949 + 0.1) % 1.0
        s = 0.55 + 0.4 * ((i // 2) % 2)
        v = 0.95 if i % 2 == 0 else 0.6
        cols.append(colorsys.hsv_to_rgb(h, s, v))
        i += 1
    return torch.tensor(cols, dtype=torch.float32)


def colorize_labels(labels: Tensor, palette: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                    ignore_color: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
    """(3, H, W) float image of an (H, W) integer label map (default palette:
    :func:`class_palette` of max label + 1); ``ignore_index`` pixels get ``ignore_color``."""
    t = torch.as_tensor(labels)
    if t.dim() != 2:
        raise ValueError(f"labels must be (H, W), got {tuple(t.shape)}")
    if palette is None:
        counted = t if ignore_index is None else t[t != ignore_index]
        palette = class_palette(int(counted.max()) + 1 if counted.numel() else 1)
    pal = torch.as_tensor(palette, dtype=torch.float32)
    if pal.dim() != 2 or pal.shape[1] != 3:
        raise ValueError(f"palette must be (K, 3), got {tuple(pal.shape)}")
    lab = label_map(t, pal.shape[0], t.shape[0], t.shape[1], ignore_index)
    ign = lab == ignore_index if ignore_index is not None else torch.zeros_like(lab, dtype=torch.bool)
    pal = pal.to(lab.device)
    img = pal[torch.where(ign, torch.zeros_like(lab), lab)]
    if ignore_index is not None:
        img[ign] = torch.tensor(ignore_color, dtype=torch.float32, device=img.device)
    return img.permute(2, 0, 1).contiguous()
