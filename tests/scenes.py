"""Seeded random scenes shared by the rasterizer tests."""

from __future__ import annotations

import math

import torch


def look_at_viewmat(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """World-to-camera (4,4), OpenCV axes, camera at eye looking at target."""
    eye_t, target_t, up_t = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = target_t - eye_t
    z = z / z.norm()
    x = torch.linalg.cross(z, up_t)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world
    V = torch.eye(4, dtype=torch.float64)
    V[:3, :3] = R
    V[:3, 3] = -R @ eye_t
    return V.float()


def intrinsics(width: int, height: int, fov_x_deg: float = 60.0, cx: float | None = None,
               cy: float | None = None) -> torch.Tensor:
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[fx, 0.0, width / 2 if cx is None else cx],
                         [0.0, fx * 1.05, height / 2 if cy is None else cy],
                         [0.0, 0.0, 1.0]])


def random_scene(n: int, seed: int, channels: int = 0, sh_degree: int | None = None,
                 spread: float = 1.0, scale_range=(-3.5, -1.5)) -> dict:
    """n Gaussians in a cube of half-size `spread` around the origin; the camera
    at distance 3 looks at the origin. Returns render() keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    quats = torch.randn(n, 4, generator=g)
    lo, hi = scale_range
    scales = torch.exp(torch.rand(n, 3, generator=g) * (hi - lo) + lo)
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
        colors[:, 0] += 0.5
    scene = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)
    if channels:
        scene["features"] = torch.randn(n, channels, generator=g)
    return scene


# ---------------------------------------------------------------------- two clusters
CLUSTERS_W, CLUSTERS_H = 64, 48


def cluster_camera(tx: float = 0.0, ty: float = 0.0, name: str = "cam", w: int = CLUSTERS_W,
                   h: int = CLUSTERS_H):
    """Identity-rotation camera shifted by (tx, ty), f = 50 px, that sees :func:`two_clusters`."""
    from feature3dgs.model.camera import Camera

    viewmat = torch.eye(4)
    viewmat[0, 3], viewmat[1, 3] = tx, ty
    K = torch.tensor([[50.0, 0.0, w / 2], [0.0, 50.0, h / 2], [0.0, 0.0, 1.0]])
    return Camera(viewmat, K, w, h, name)


def two_clusters(n_per: int = 20, sh_degree: int = 0, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Raw GaussianModel parameters of two clusters of n_per Gaussians at z = 3: A around
    x = -0.8 (the first n_per), B around x = +0.8. Returns (params, is_a (2 n_per,) bool)."""
    from feature3dgs.model.gaussians import inverse_sigmoid

    g = torch.Generator().manual_seed(seed)
    offs = (torch.rand(2 * n_per, 3, generator=g) - 0.5) * torch.tensor([0.5, 0.5, 0.2])
    centres = torch.tensor([[-0.8, 0.0, 3.0]] * n_per + [[0.8, 0.0, 3.0]] * n_per)
    n = 2 * n_per
    k = (sh_degree + 1) ** 2 - 1
    params = {
        "means": centres + offs,
        "sh_dc": torch.randn(n, 1, 3, generator=g) * 0.5,
        "sh_rest": torch.randn(n, k, 3, generator=g) * 0.1 if k else torch.zeros(n, 0, 3),
        "opacities": inverse_sigmoid(torch.full((n, 1), 0.9)),
        "scales": torch.full((n, 3), math.log(0.08)),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
    }
    return params, torch.arange(n) < n_per
