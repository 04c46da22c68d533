"""The Gaussian model: raw (optimised) parameters, their activations, initialisation and the
per-parameter optimizer groups.

Every per-Gaussian tensor lives in ``model.params`` (an ``nn.ParameterDict``) with the Gaussians
along dim 0; densification (:mod:`feature3dgs.training.densify`) treats them all alike, so a parameter
added there (e.g. by a later training stage) is cloned, split and pruned with the rest.

:meth:`GaussianModel.render` is *the* render of a trained model: training, evaluation,
distillation, the applications and the viewer all call it.

Raw parameters and their activations (the 3DGS layout, also what the PLY file stores):

=============  ============  =========================================================
name           shape         activation / meaning
=============  ============  =========================================================
means          (N, 3)        world-space centres (identity)
sh_dc          (N, 1, 3)     degree-0 SH coefficient; colour = 0.5 + C0 * sh_dc
sh_rest        (N, K-1, 3)   SH coefficients of degree 1..max_sh_degree, K = (deg+1)^2
opacities      (N, 1)        logits; opacity = sigmoid
scales         (N, 3)        log standard deviations; scale = exp
quats          (N, 4)        rotation (w, x, y, z), normalised on use
features       (N, D)        optional distilled features (identity), absent when D = 0
semantics      (N, K)        optional class logits (feature3dgs.apps.semantic), absent when K = 0
=============  ============  =========================================================
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from feature3dgs.model.camera import Camera
from feature3dgs.rendering import RenderOutput, render

__all__ = [
    "GaussianModel",
    "SH_C0",
    "rgb_to_sh",
    "sh_to_rgb",
    "inverse_sigmoid",
    "knn_mean_sq_dist",
    "quat_to_rotmat",
    "random_init_bounds",
    "PARAM_ORDER",
    "FEATURES",
    "SEMANTICS",
]

SH_C0 = 0.28209479177387814
PARAM_ORDER = ("means", "sh_dc", "sh_rest", "opacities", "scales", "quats", "features")
#: the optional per-Gaussian parameters: distilled features (N, D) and class logits (N, K)
FEATURES = "features"
SEMANTICS = "semantics"


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Degree-0 SH coefficient whose colour (0.5 + C0 * c) is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: Tensor) -> Tensor:
    return sh * SH_C0 + 0.5


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1 - x))


def quat_to_rotmat(q: Tensor) -> Tensor:
    """(N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3) rotation matrices."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(q.shape[:-1] + (3, 3))


def knn_mean_sq_dist(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """Mean squared distance of each point to its ``k`` nearest other points, (N,).

    3DGS sets the initial scale of a Gaussian to the square root of this (k = 3). Uses SciPy's
    cKDTree when installed, else chunked brute force in torch.
    """
    pts = points.detach().to(torch.float64).cpu()
    n = pts.shape[0]
    if n <= 1:
        return torch.ones(n, dtype=torch.float32, device=points.device)
    k = min(k, n - 1)
    try:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(pts.numpy()).query(pts.numpy(), k=k + 1)
        d2 = torch.from_numpy(d[:, 1:] ** 2).mean(1)
    except ImportError:  # pragma: no cover - scipy is usually present
        out = []
        for s in range(0, n, chunk):
            dist = torch.cdist(pts[s:s + chunk], pts).pow_(2)
            out.append(dist.topk(k + 1, largest=False).values[:, 1:].mean(1))
        d2 = torch.cat(out)
    return d2.to(torch.float32).to(points.device)


def random_init_bounds(cameras: Sequence[Camera]) -> tuple[Tensor, Tensor]:
    """An axis-aligned box (lo, hi) that the cameras look into, for random initialisation.

    The centre is the point closest (least squares) to all optical axes; the half size is what
    the cameras see at their mean distance from it: ``mean_dist * tan(fov / 2)`` with the wider
    of the two fields of view. For the NeRF-synthetic scenes this gives about the [-1.3, 1.3]^3
    box 3DGS uses. When the axes are nearly parallel (forward-facing captures) the centre falls
    back to the camera centroid moved one mean camera spread along the mean viewing direction.
    """
    if not cameras:
        raise ValueError("random_init_bounds needs at least one camera")
    centers = torch.stack([c.center.double().cpu() for c in cameras])
    dirs = torch.stack([c.viewmat[2, :3].double().cpu() for c in cameras])  # optical axes (world)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64)
    A = torch.zeros(3, 3, dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    for c, d in zip(centers, dirs):
        P = eye - torch.outer(d, d)
        A += P
        b += P @ c
    evals = torch.linalg.eigvalsh(A)
    spread = float((centers - centers.mean(0)).norm(dim=1).max())
    if float(evals[0]) > 0.05 * len(cameras):
        center = torch.linalg.solve(A, b)
    else:
        center = centers.mean(0) + dirs.mean(0) * max(spread, 1.0)
    dist = float((centers - center).norm(dim=1).mean())
    half_fov = max(max(c.fov_x, c.fov_y) for c in cameras) / 2
    half = max(dist * math.tan(half_fov), 1e-3)
    center = center.float()
    return center - half, center + half


class GaussianModel(nn.Module):
    """N 3D Gaussians with SH colour and an optional D-dimensional feature vector.

    Build one from raw parameters (``GaussianModel(params, active_sh_degree)``), or with
    :meth:`from_points` or :meth:`random`; read activated values through the properties; render
    with :meth:`render`.
    """

    def __init__(self, params: Mapping[str, Tensor], active_sh_degree: int = 0):
        super().__init__()
        missing = [k for k in PARAM_ORDER[:-1] if k not in params]
        if missing:
            raise ValueError(f"GaussianModel: missing parameters {missing}")
        n = params["means"].shape[0]
        self.params = nn.ParameterDict()
        for name in list(PARAM_ORDER) + [k for k in params if k not in PARAM_ORDER]:
            if name not in params:
                continue
            t = params[name]
            if name == "features" and (t is None or t.dim() != 2 or t.shape[1] == 0):
                continue
            if t.shape[0] != n:
                raise ValueError(f"parameter {name!r} has {t.shape[0]} rows, means has {n}")
            self.params[name] = nn.Parameter(t.detach().clone().to(torch.float32).contiguous())
        k = self.params["sh_rest"].shape[1] + 1
        deg = math.isqrt(k) - 1
        if (deg + 1) ** 2 != k or deg > 3:
            raise ValueError(f"SH coefficient count {k} is not (degree+1)^2 with degree <= 3")
        self.max_sh_degree = deg
        self.active_sh_degree = min(int(active_sh_degree), deg)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_points(cls, points: Tensor, colors: Optional[Tensor] = None, sh_degree: int = 3,
                    feature_dim: int = 0, init_opacity: float = 0.1) -> "GaussianModel":
        """3DGS initialisation from a point cloud: one isotropic Gaussian per point with scale
        sqrt(mean squared distance to its 3 nearest neighbours), identity rotation, opacity
        ``init_opacity``, DC colour from ``colors`` (default grey), zero higher SH and zero
        features."""
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.dim() != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {tuple(points.shape)}")
        n = points.shape[0]
        if n == 0:
            raise ValueError("cannot initialise Gaussians from an empty point cloud")
        if not torch.isfinite(points).all():
            raise ValueError("initial points contain NaN or Inf")
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
        colors = torch.full_like(points, 0.5) if colors is None else torch.as_tensor(colors, dtype=torch.float32)
        k = (sh_degree + 1) ** 2
        dist2 = knn_mean_sq_dist(points).clamp_min(1e-7)
        params = {
            "means": points.clone(),
            "sh_dc": rgb_to_sh(colors.clamp(0, 1)).reshape(n, 1, 3),
            "sh_rest": torch.zeros(n, k - 1, 3),
            "opacities": inverse_sigmoid(torch.full((n, 1), float(init_opacity))),
            "scales": torch.log(dist2.sqrt())[:, None].repeat(1, 3),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        }
        if feature_dim > 0:
            params["features"] = torch.zeros(n, int(feature_dim))
        return cls(params)

    @classmethod
    def random(cls, n: int, lo: Sequence[float] | Tensor, hi: Sequence[float] | Tensor, sh_degree: int = 3,
               feature_dim: int = 0, init_opacity: float = 0.1,
               generator: Optional[torch.Generator] = None) -> "GaussianModel":
        """``n`` Gaussians uniformly in the box [lo, hi] with near-grey colours (the 3DGS
        initialisation for scenes without sparse points: SH DC drawn from U(0, 1/255))."""
        if n <= 0:
            raise ValueError(f"number of random Gaussians must be positive, got {n}")
        lo_t = torch.as_tensor(lo, dtype=torch.float32).reshape(3)
        hi_t = torch.as_tensor(hi, dtype=torch.float32).reshape(3)
        if not bool((hi_t > lo_t).all()):
            raise ValueError(f"random init box is empty: lo={lo_t.tolist()} hi={hi_t.tolist()}")
        pts = lo_t + (hi_t - lo_t) * torch.rand(n, 3, generator=generator)
        shs = torch.rand(n, 3, generator=generator) / 255.0
        return cls.from_points(pts, sh_to_rgb(shs), sh_degree, feature_dim, init_opacity)

    # ------------------------------------------------------------------ sizes
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def __len__(self) -> int:
        return self.num_gaussians

    @property
    def feature_dim(self) -> int:
        return int(self.params[FEATURES].shape[1]) if FEATURES in self.params else 0

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    def one_up_sh_degree(self) -> None:
        self.active_sh_degree = min(self.active_sh_degree + 1, self.max_sh_degree)

    # ------------------------------------------------------------------ activated values
    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def scales(self) -> Tensor:
        return torch.exp(self.params["scales"])

    @property
    def opacities(self) -> Tensor:
        """(N,) in (0, 1)."""
        return torch.sigmoid(self.params["opacities"]).squeeze(-1)

    @property
    def quats(self) -> Tensor:
        return torch.nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def sh(self) -> Tensor:
        """(N, K, 3) all SH coefficients (DC first)."""
        return torch.cat([self.params["sh_dc"], self.params["sh_rest"]], dim=1)

    @property
    def features(self) -> Optional[Tensor]:
        return self.params[FEATURES] if FEATURES in self.params else None

    @property
    def colors_dc(self) -> Tensor:
        """(N, 3) the view-independent colour (DC term only)."""
        return sh_to_rgb(self.params["sh_dc"][:, 0])

    # ------------------------------------------------------------------ rendering
    def render(self, camera: Camera, background: Optional[Tensor] = None, *, features: Optional[Tensor] = None,
               feature_background: Optional[Tensor] = None, detach_geometry: bool = False,
               sh_degree: Optional[int] = None) -> RenderOutput:
        """Render the Gaussians at ``camera`` through :func:`feature3dgs.render`.

        Args:
            camera: the view (moved to the model's device if needed).
            background: (3,) RGB behind the Gaussians (default black).
            features: (N, C) per-Gaussian values to blend into ``out.features``: usually
                ``model.features``, or class logits, object weights, ... (None: RGB only; the
                cost grows with C, so RGB-only training leaves it off).
            feature_background: (C,) value behind the Gaussians (default 0).
            detach_geometry: render from detached means, rotations, scales, opacities and
                colours, so that only ``features`` (and the backgrounds) get gradients.
            sh_degree: SH degree to evaluate (default: the active one).
        Returns:
            the :class:`RenderOutput` (rgb (3,H,W), features (C,H,W) or None, depth, alpha,
            radii, means2d).
        """
        cam = camera if camera.viewmat.device == self.device else camera.to(self.device)
        geometry = [self.means, self.params["quats"], self.scales, self.opacities, self.sh]
        if detach_geometry:
            geometry = [t.detach() for t in geometry]
        return render(*geometry, cam.viewmat, cam.K, cam.width, cam.height, features=features,
                      sh_degree=self.active_sh_degree if sh_degree is None else sh_degree,
                      background=background, feature_background=feature_background)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, lrs: Mapping[str, float]) -> list[dict]:
        """Adam parameter groups, one per parameter, each tagged with its ``name``.

        ``lrs`` maps parameter names to learning rates; every parameter needs one.
        """
        groups = []
        for name, p in self.params.items():
            if name not in lrs:
                raise KeyError(f"no learning rate for parameter {name!r}")
            groups.append({"params": [p], "lr": float(lrs[name]), "name": name})
        return groups

    def raw_state(self) -> dict:
        """Plain-tensor state for checkpoints: {'params': {name: tensor}, 'active_sh_degree': int}."""
        return {"params": {k: v.detach().clone() for k, v in self.params.items()},
                "active_sh_degree": int(self.active_sh_degree)}

    @classmethod
    def from_raw_state(cls, state: Mapping) -> "GaussianModel":
        return cls(state["params"], int(state.get("active_sh_degree", 0)))

    def extra_repr(self) -> str:
        return (f"N={self.num_gaussians}, sh_degree={self.active_sh_degree}/{self.max_sh_degree}, "
                f"feature_dim={self.feature_dim}")

