"""The 1x1-convolution speed-up decoder of Feature 3DGS.

Gaussians carry a low-dimensional feature (D_render channels, e.g. 64 for SAM,
128 for CLIP/LSeg); the rendered map is lifted to the teacher's dimension
D_teacher by a learned per-pixel linear map (a 1x1 convolution). Rendering cost
scales with D_render, so this is where the speed-up comes from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureDecoder(nn.Module):
    """Per-pixel linear map from in_dim to out_dim channels (a 1x1 conv with bias)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"FeatureDecoder needs in_dim, out_dim >= 1, got {in_dim}, {out_dim}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        """(in_dim,H,W) or (B,in_dim,H,W) -> (out_dim,H,W) or (B,out_dim,H,W)."""
        if features.dim() not in (3, 4) or features.shape[-3] != self.in_dim:
            raise ValueError(f"features must be ({self.in_dim},H,W) or (B,{self.in_dim},H,W), "
                             f"got {tuple(features.shape)}")
        if features.dim() == 3:
            return self.conv(features[None])[0]
        return self.conv(features)

    def decode_vectors(self, vectors: Tensor) -> Tensor:
        """(N,in_dim) per-Gaussian features -> (N,out_dim) (the same linear map)."""
        return vectors @ self.conv.weight[:, :, 0, 0].T + self.conv.bias

    def to_dict(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "state_dict": self.state_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureDecoder":
        decoder = cls(int(data["in_dim"]), int(data["out_dim"]))
        decoder.load_state_dict(data["state_dict"])
        return decoder

    @classmethod
    def load(cls, path, map_location: str | torch.device = "cpu") -> "FeatureDecoder":
        """Loads a decoder saved with torch.save(decoder.to_dict(), path) (weights only)."""
        return cls.from_dict(torch.load(path, map_location=map_location, weights_only=True))
