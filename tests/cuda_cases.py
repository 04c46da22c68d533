"""Cases and comparisons shared by the CUDA kernels' tests.

tests/test_cuda.py runs them on a GPU (CUDA kernels against the CPU kernels, with
the tolerant rule that fast math needs) and tests/test_cuda_emu.py runs them under
the SIMT emulator (the same CUDA source compiled for the CPU, strict float math,
tight tolerances). Both drive the four kernel entry points of ops.h in a chain:
preprocess forward, rasterize forward, rasterize backward (seeded upstream
gradients), preprocess backward, and compare every output.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scenes import intrinsics, look_at_viewmat, random_scene

# Outputs of the chain.
INT_OUTPUTS = ("radii", "last_contrib", "tile_offsets", "gaussian_ids")
PER_GAUSSIAN = ("means2d", "conics", "depths", "colors", "colors_raw")
IMAGES = ("rgb", "features", "depth", "alpha", "final_T")
SCREEN_GRADIENTS = ("d_means2d", "d_conics", "d_colors", "d_opacities", "d_depths", "d_features")
WORLD_GRADIENTS = ("d_means", "d_quats", "d_scales", "d_sh")  # the preprocess backward's outputs
GRADIENTS = SCREEN_GRADIENTS + WORLD_GRADIENTS


def cpu_kernels():
    """The compiled module feature3dgs._C (its CPU kernels for CPU tensors)."""
    try:
        return importlib.import_module("feature3dgs._C")
    except ImportError:  # a JIT build
        return importlib.import_module("feature3dgs.rendering._backend").kernels()


@dataclass(frozen=True)
class Case:
    """One scene and camera. scene() returns means, quats, scales, opacities, colors
    ((N,3) RGB or (N,K,3) SH) and features ((N,C), or None for C = 0)."""

    name: str
    scene: Callable[[], dict]
    width: int = 64
    height: int = 48
    eye: tuple = (0.4, -0.3, 3.0)
    camera: Callable[[int, int], tuple[Tensor, Tensor]] | None = None
    sh_degree: int | None = None
    near: float = 0.01
    tags: frozenset = field(default_factory=frozenset)

    def view(self) -> tuple[Tensor, Tensor]:
        if self.camera is not None:
            return self.camera(self.width, self.height)
        return look_at_viewmat(self.eye), intrinsics(self.width, self.height)


def _scene(n, seed, channels=0, **kw) -> Callable[[], dict]:
    def make():
        s = random_scene(n, seed=seed, channels=channels, **kw)
        s.setdefault("features", None)
        return s
    return make


def _dense_tiles() -> dict:
    """700 faint Gaussians over a 40x24 image: every tile holds more than 256 (batching)."""
    s = random_scene(700, seed=41, channels=9, spread=0.35, scale_range=(-3.5, -2.5))
    s["opacities"] = torch.full((700,), 0.02)
    return s


def _nan_zero_quats() -> dict:
    s = random_scene(160, seed=42, channels=3)
    s["means"][::7] = float("nan")        # culled
    s["quats"][3::11] = 0.0               # zero quaternion: culled
    s["scales"][5::13, 1] = float("nan")  # culled
    return s


def _equal_depths() -> dict:
    n = 60
    g = torch.Generator().manual_seed(7)
    means = torch.cat([torch.rand(n, 2, generator=g) * 0.6 - 0.3, torch.full((n, 1), 2.0)], dim=1)
    return dict(means=means, quats=torch.randn(n, 4, generator=g),
                scales=torch.rand(n, 3, generator=g) * 0.2 + 0.05, opacities=torch.full((n,), 0.7),
                colors=torch.rand(n, 3, generator=g), features=torch.randn(n, 17, generator=g))


def _identity_camera(width, height):
    return torch.eye(4), intrinsics(width, height)


def _empty() -> dict:
    s = random_scene(10, seed=0, channels=4)
    return {k: v[:0] for k, v in s.items()}


def _nothing_visible() -> dict:
    s = random_scene(50, seed=43, channels=5)
    s["means"][:, 2] += 10.0  # behind the camera at z = 3 looking down -z ... and beyond
    s["means"][:25, 0] += 40.0  # far off-screen
    return s


def _tiny_and_huge() -> dict:
    tiny = random_scene(100, seed=8, channels=2, scale_range=(-9.0, -8.0))
    huge = random_scene(6, seed=9, channels=2, scale_range=(0.5, 1.5))
    s = {k: torch.cat([tiny[k], huge[k]]) for k in tiny}
    s["opacities"][-6:] = 0.3
    return s


def _high_opacity() -> dict:
    s = random_scene(400, seed=11, channels=6, scale_range=(-2.0, -1.0))
    s["opacities"] = torch.full((400,), 0.98)
    return s


CHANNELS = (0, 1, 3, 7, 8, 9, 16, 17, 31, 32, 33, 64, 100)

CASES: list[Case] = (
    [Case(f"channels_{c}", _scene(200, seed=100 + c, channels=c),
          tags=frozenset({"quick"} if c in (0, 33) else ())) for c in CHANNELS]
    + [Case(f"sh_degree_{d}", _scene(150, seed=20 + d, channels=5, sh_degree=d), sh_degree=d,
            tags=frozenset({"quick"} if d == 3 else ())) for d in range(4)]
    + [Case("sh_degree_1_of_3", _scene(120, seed=5, channels=2, sh_degree=3), sh_degree=1),
       Case("dense_tiles", _dense_tiles, width=40, height=24, tags=frozenset({"quick"})),
       Case("odd_size_off_centre", _scene(600, seed=4, channels=9, spread=4.0), width=77, height=35,
            camera=lambda w, h: (look_at_viewmat((0.4, -0.3, 3.0)), intrinsics(w, h, cx=30.3, cy=21.7)),
            tags=frozenset({"quick"})),
       Case("nan_means_zero_quats", _nan_zero_quats),
       Case("equal_depths", _equal_depths, width=48, height=48, camera=_identity_camera),
       Case("tiny_and_huge", _tiny_and_huge),
       Case("high_opacity", _high_opacity),
       Case("empty", _empty),
       Case("nothing_visible", _nothing_visible)]
)
CASE_BY_NAME = {c.name: c for c in CASES}


# ------------------------------------------------------------------ the chain
def _case_inputs(case: Case, device: str):
    """The inputs of a case on `device`: means, quats, scales, opacities, colors ((N,3) RGB or
    (N,K,3) SH), sh (the SH coefficients, or empty), SH degree, features ((N,C) or empty),
    viewmat, K."""
    s = case.scene()
    viewmat, K = case.view()
    to = lambda t: t.to(device).contiguous()  # noqa: E731
    means, quats, scales, opac = (to(s[k]) for k in ("means", "quats", "scales", "opacities"))
    colors = to(s["colors"])
    has_sh = colors.dim() == 3
    sh = colors if has_sh else torch.empty(0, device=device)
    deg = case.sh_degree if case.sh_degree is not None else (
        int(round(math.sqrt(colors.shape[1]))) - 1 if has_sh else 0)
    feats = to(s["features"]) if s.get("features") is not None else torch.empty(0, device=device)
    return means, quats, scales, opac, colors, sh, deg, feats, to(viewmat), to(K)


def chain(kernels, case: Case, device: str = "cpu", seed: int = 0) -> dict[str, Tensor]:
    """Runs the four entry points of `kernels` on `device` and returns every output
    and gradient (on the CPU). The upstream gradients are seeded random normals."""
    means, quats, scales, opac, colors, sh, deg, feats, vm, Km = _case_inputs(case, device)
    empty = torch.empty(0, device=device)
    has_sh = colors.dim() == 3
    C = feats.shape[1] if feats.dim() == 2 else 0
    W, H = case.width, case.height

    means2d, conics, depths, radii, sh_colors, colors_raw = kernels.preprocess_forward(
        means, quats, scales, sh, deg, vm, Km, W, H, case.near)
    used_colors = sh_colors if has_sh else colors
    rgb, fo, depth, alpha, final_T, last, offsets, ids = kernels.rasterize_forward(
        means2d, conics, used_colors, opac, depths, feats, radii, W, H)

    g = torch.Generator().manual_seed(seed)
    d_rgb = torch.randn(3, H, W, generator=g).to(device)
    d_feat = torch.randn(C, H, W, generator=g).to(device) if C else empty
    d_depth = torch.randn(1, H, W, generator=g).to(device)
    d_alpha = torch.randn(1, H, W, generator=g).to(device)
    d_means2d, d_conics, d_colors, d_opac, d_depths, d_features = kernels.rasterize_backward(
        means2d, conics, used_colors, opac, depths, feats, W, H, final_T, last, offsets, ids,
        d_rgb, d_feat, d_depth, d_alpha)
    d_means, d_quats, d_scales, d_sh = kernels.preprocess_backward(
        means, quats, scales, sh, deg, vm, Km, W, H, case.near, radii, colors_raw, d_means2d, d_conics,
        d_depths, d_colors if has_sh else empty)
    out = dict(means2d=means2d, conics=conics, depths=depths, radii=radii, colors=sh_colors,
               colors_raw=colors_raw, rgb=rgb, features=fo, depth=depth, alpha=alpha, final_T=final_T,
               last_contrib=last, tile_offsets=offsets, gaussian_ids=ids, d_means2d=d_means2d,
               d_conics=d_conics, d_colors=d_colors, d_opacities=d_opac, d_depths=d_depths,
               d_features=d_features, d_means=d_means, d_quats=d_quats, d_scales=d_scales, d_sh=d_sh)
    return {k: v.detach().cpu() for k, v in out.items()}


def preprocess_backward_on(kernels, case: Case, want: dict[str, Tensor], device: str = "cpu") -> dict[str, Tensor]:
    """The preprocess backward of `kernels` alone, fed the forward outputs and screen-space
    gradients of another chain (`want`): {d_means, d_quats, d_scales, d_sh} on the CPU, to be
    compared with want's at the strict tolerance."""
    means, quats, scales, _, colors, sh, deg, _, vm, Km = _case_inputs(case, device)
    to = lambda t: t.to(device).contiguous()  # noqa: E731
    d_colors = to(want["d_colors"]) if colors.dim() == 3 else torch.empty(0, device=device)
    d_means, d_quats, d_scales, d_sh = kernels.preprocess_backward(
        means, quats, scales, sh, deg, vm, Km, case.width, case.height, case.near, to(want["radii"]),
        to(want["colors_raw"]), to(want["d_means2d"]), to(want["d_conics"]), to(want["d_depths"]), d_colors)
    out = dict(d_means=d_means, d_quats=d_quats, d_scales=d_scales, d_sh=d_sh)
    return {k: v.detach().cpu() for k, v in out.items()}


def max_tile_count(out: dict[str, Tensor]) -> int:
    offsets = out["tile_offsets"].long()
    return int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0


# ------------------------------------------------------------- comparisons
def rel_l2(a: Tensor, b: Tensor) -> float:
    """|a - b| / |b| over the finite entries (0 when both are zero)."""
    a, b = a.double().flatten(), b.double().flatten()
    ok = torch.isfinite(b) & torch.isfinite(a)
    a, b = a[ok], b[ok]
    nb = b.norm().item()
    diff = (a - b).norm().item()
    return diff / nb if nb > 0 else diff


def _same_shape_and_nans(name: str, a: Tensor, b: Tensor) -> list[str]:
    if a.shape != b.shape:
        return [f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"]
    if a.is_floating_point() and not torch.equal(torch.isnan(a), torch.isnan(b)):
        return [f"{name}: NaN in different places"]
    return []


def compare_strict(got: dict, want: dict, fwd_tol: float = 1e-6, grad_rel: float = 1e-5,
                   chained_grad_rel: float = 1e-4) -> list[str]:
    """The emulator's rule: integers equal, forward within fwd_tol (absolute and relative),
    screen-space gradients within grad_rel relative L2. Returns the failures (empty: equal).

    The world-space gradients of a chain (d_means, d_quats, d_scales, d_sh) come from the
    preprocess backward applied to the screen-space gradients, which the rasterize backward
    sums with atomics in an order that depends on the thread schedule: their rounding
    differences (~5e-7 relative) are amplified by the projection's conditioning (up to ~1e-5 on
    the off-centre case), so they get chained_grad_rel. The preprocess backward alone is held to
    grad_rel by :func:`preprocess_backward_on` (the same screen-space gradients on both sides)."""
    errors: list[str] = []
    for name in INT_OUTPUTS:
        a, b = got[name], want[name]
        if name == "gaussian_ids":  # the part the tile ranges cover (culled pairs may trail it)
            a = a[: int(got["tile_offsets"][-1])] if got["tile_offsets"].numel() else a
            b = b[: int(want["tile_offsets"][-1])] if want["tile_offsets"].numel() else b
        errs = _same_shape_and_nans(name, a, b)
        if not errs and not torch.equal(a, b):
            errs.append(f"{name}: {(a != b).sum().item()} entries differ")
        errors += errs
    for name in PER_GAUSSIAN + IMAGES:
        a, b = got[name], want[name]
        errs = _same_shape_and_nans(name, a, b)
        if errs:
            errors += errs
            continue
        ok = torch.isfinite(b)
        if a.numel() and not torch.allclose(a[ok], b[ok], atol=fwd_tol, rtol=fwd_tol):
            errors.append(f"{name}: max abs error {(a[ok] - b[ok]).abs().max().item():.3g}")
    for name in GRADIENTS:
        a, b = got[name], want[name]
        errs = _same_shape_and_nans(name, a, b)
        if errs:
            errors += errs
            continue
        tol = chained_grad_rel if name in WORLD_GRADIENTS else grad_rel
        if a.numel() and (e := rel_l2(a, b)) > tol:
            errors.append(f"{name}: relative L2 error {e:.3g}")
    return errors


def near_integer_radius(conics: Tensor, tol: float = 1e-4) -> Tensor:
    """(N,) bool: where 3 sqrt(largest eigenvalue of cov2d) lies within tol of an integer,
    cov2d recovered (in float64) from the conic, so that the ceil may flip under fast math."""
    a, b, c = (conics[:, i].double() for i in range(3))
    det = a * c - b * b
    ca, cb, cc = c / det, -b / det, a / det  # cov2d = conic^-1
    mid = 0.5 * (ca + cc)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - (ca * cc - cb * cb), min=0))
    r = 3 * torch.sqrt(lam)
    return (r - torch.round(r)).abs() < tol


def compare_tolerant(got: dict, want: dict, pixel_tol: float = 1e-3, max_pixel_frac: float = 0.002,
                     grad_rel: float = 1e-3) -> list[str]:
    """The GPU rule (fast math may flip rare discrete decisions): at most max_pixel_frac of the
    pixels off by more than pixel_tol in any image output; radii equal except where the CPU's
    3 sqrt(lambda) is within 1e-4 of an integer; gradients within grad_rel relative L2."""
    errors: list[str] = []
    r_got, r_want = got["radii"], want["radii"]
    if r_got.shape != r_want.shape:
        return [f"radii: shape {tuple(r_got.shape)} != {tuple(r_want.shape)}"]
    bad = (r_got != r_want) & ~near_integer_radius(want["conics"])
    if bad.any():
        errors.append(f"radii: {int(bad.sum())} differ away from an integer 3 sqrt(lambda)")
    same = (r_got == r_want) & (r_want > 0)
    for name in ("means2d", "conics", "depths", "colors"):
        a, b = got[name], want[name]
        if a.numel() == 0 and b.numel() == 0:
            continue
        if a.shape != b.shape:
            errors.append(f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}")
        elif not torch.allclose(a[same], b[same], atol=1e-3, rtol=1e-3):
            errors.append(f"{name}: max abs error {(a[same] - b[same]).abs().max().item():.3g}")
    H, W = want["alpha"].shape[-2:]
    off = torch.zeros(H, W, dtype=torch.bool)
    for name in IMAGES:
        a, b = got[name], want[name]
        if a.shape != b.shape:
            errors.append(f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}")
            continue
        if a.numel():
            d = (a - b).abs().reshape(-1, H, W)
            off |= ((d > pixel_tol) | (torch.isnan(a) != torch.isnan(b)).reshape(-1, H, W)).any(dim=0)
    if off.float().mean().item() > max_pixel_frac:
        errors.append(f"images: {int(off.sum())} of {H * W} pixels off by more than {pixel_tol}")
    for name in GRADIENTS:
        a, b = got[name], want[name]
        if a.shape != b.shape:
            errors.append(f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}")
        elif a.numel() and (e := rel_l2(a, b)) > grad_rel:
            errors.append(f"{name}: relative L2 error {e:.3g}")
    return errors
