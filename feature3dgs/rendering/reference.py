"""Pure-PyTorch reference renderer: the readable statement of the rendering math.

It implements exactly what the compiled kernels implement (docs/conventions.md)
with plain tensor operations and autograd, so it is the oracle of the tests and
the documentation of the math. It is slow (a Python loop over 16x16 tiles) and
meant for small scenes. It accepts float64 as well as float32 inputs.

It has the kernels' two stages under the same names (:func:`project`, :func:`rasterize`, see
:mod:`feature3dgs.rendering.kernels`), so each stage has its oracle, and :func:`render` has the
same signature and returns the same `RenderOutput` as `feature3dgs.render`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from feature3dgs.rendering.inputs import (
    Projection,
    RasterImages,
    RenderInputs,
    RenderOutput,
    composite,
    validate_render_inputs,
)

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
COV_DILATION = 0.3
FRUSTUM_SLACK = 1.3

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """(N,4) unit quaternions (w,x,y,z) -> (N,3,3) rotation matrices."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def sh_basis(degree: int, d: Tensor) -> Tensor:
    """Real SH basis (3DGS signs) at unit directions d (N,3) -> (N, (degree+1)^2)."""
    x, y, z = d.unbind(-1)
    b = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        b += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        b += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy),
              SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        b += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z,
              SH_C3[2] * y * (4 * zz - xx - yy), SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
              SH_C3[4] * x * (4 * zz - xx - yy), SH_C3[5] * z * (xx - yy),
              SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(b, dim=-1)


def sh_to_color(sh: Tensor, degree: int, means: Tensor, cam_center: Tensor) -> Tensor:
    """Colour max(SH(dir) + 0.5, 0) with dir = normalised (mean - camera centre).

    sh (N,K,3), means (N,3), cam_center (3,) -> (N,3)."""
    v = means - cam_center
    d = v / v.norm(dim=-1, keepdim=True)
    basis = sh_basis(degree, d)  # (N, (degree+1)^2)
    coeffs = sh[:, : basis.shape[1], :]
    return ((basis[:, :, None] * coeffs).sum(dim=1) + 0.5).clamp(min=0.0)


def ewa_projection(inp: RenderInputs, means: Tensor, quats: Tensor, scales: Tensor) -> dict[str, Tensor]:
    """EWA projection of Gaussians (M,3),(M,4),(M,3) into the camera of `inp`.

    Returns the camera-space mean p_cam (M,3), mean2d (M,2) in pixels, cov2d
    entries a, b, c (M,) with the low-pass dilation, conic (M,3) = (A, B, C) of
    the inverse covariance, and radius (M,) in pixels (float, ceil'd)."""
    R, t = inp.viewmat[:3, :3], inp.viewmat[:3, 3]
    fx, fy, cx, cy = inp.K[0, 0], inp.K[1, 1], inp.K[0, 2], inp.K[1, 2]
    p_cam = means @ R.T + t
    x, y, z = p_cam.unbind(-1)

    q = quats / quats.norm(dim=-1, keepdim=True)
    M = quat_to_rotmat(q) * scales[:, None, :]  # R(q) diag(s)
    sigma = M @ M.transpose(1, 2)

    ux, uy = x / z, y / z
    lim_x = FRUSTUM_SLACK * 0.5 * inp.width / fx
    lim_y = FRUSTUM_SLACK * 0.5 * inp.height / fy
    uxc = torch.minimum(torch.maximum(ux, -lim_x), lim_x)
    uyc = torch.minimum(torch.maximum(uy, -lim_y), lim_y)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * uxc / z, zero, fy / z, -fy * uyc / z], -1).reshape(-1, 2, 3)
    T = J @ R
    cov = T @ sigma @ T.transpose(1, 2)
    a = cov[:, 0, 0] + COV_DILATION
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + COV_DILATION

    det = a * c - b * b
    inv_det = 1.0 / det
    conic = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=-1)
    mid = 0.5 * (a + c)
    lambda_max = mid + (mid * mid - det).clamp(min=0.0).sqrt()
    radius = torch.ceil(3.0 * lambda_max.sqrt()).clamp(max=1e8)
    mean2d = torch.stack([fx * ux + cx, fy * uy + cy], dim=-1)
    return dict(p_cam=p_cam, mean2d=mean2d, det=det, conic=conic, radius=radius)


def tile_rect(mean2d: Tensor, radius: Tensor, grid_x: int, grid_y: int) -> tuple[Tensor, ...]:
    """Touched tiles [x0, x1) x [y0, y1) per Gaussian, clipped to the grid."""
    u, v = mean2d[:, 0], mean2d[:, 1]
    x0 = torch.floor((u - radius) / TILE).clamp(0, grid_x)
    x1 = (torch.floor((u + radius) / TILE) + 1).clamp(0, grid_x)
    y0 = torch.floor((v - radius) / TILE).clamp(0, grid_y)
    y1 = (torch.floor((v + radius) / TILE) + 1).clamp(0, grid_y)
    return x0.long(), y0.long(), x1.long(), y1.long()


@torch.no_grad()
def visible_mask(inp: RenderInputs) -> Tensor:
    """(N,) bool: the Gaussians that pass culling (near plane, finite, det > 0,
    radius > 0, at least one touched tile)."""
    finite = (torch.isfinite(inp.means).all(-1) & torch.isfinite(inp.quats).all(-1)
              & torch.isfinite(inp.scales).all(-1))
    with torch.no_grad():
        proj = ewa_projection(inp, inp.means, inp.quats, inp.scales)
    z = proj["p_cam"][:, 2]
    ok = finite & (z >= inp.near) & torch.isfinite(proj["p_cam"]).all(-1)
    ok &= (proj["det"] > 0) & torch.isfinite(proj["det"]) & (proj["radius"] > 0)
    ok &= torch.isfinite(proj["mean2d"]).all(-1)
    gx, gy = math.ceil(inp.width / TILE), math.ceil(inp.height / TILE)
    radius = torch.where(ok, proj["radius"], torch.zeros_like(proj["radius"]))
    mean2d = torch.where(ok[:, None], proj["mean2d"], torch.zeros_like(proj["mean2d"]))
    x0, y0, x1, y1 = tile_rect(mean2d, radius, gx, gy)
    return ok & ((x1 - x0) * (y1 - y0) > 0)


def blend_tile(px: Tensor, py: Tensor, mean2d: Tensor, conic: Tensor, opacity: Tensor,
               values: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha blending of n depth-sorted Gaussians at P pixels.

    px, py (P,) pixel centres; mean2d (n,2); conic (n,3); opacity (n,);
    values (n,V) the quantities to blend. Returns (sum_i w_i v_i (P,V), final T (P,))."""
    dx = px[None, :] - mean2d[:, 0:1]  # (n,P)
    dy = py[None, :] - mean2d[:, 1:2]
    A, B, C = conic[:, 0:1], conic[:, 1:2], conic[:, 2:3]
    power = -0.5 * (A * dx * dx + C * dy * dy) - B * dx * dy
    alpha = (opacity[:, None] * torch.exp(power)).clamp(max=ALPHA_MAX)
    used = (power <= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(used, alpha, torch.zeros_like(alpha))
    # Stop before a Gaussian would bring T below T_MIN: T is non-increasing, so
    # every Gaussian from that one on is dropped.
    with torch.no_grad():
        kept = torch.cumprod(1 - alpha, dim=0) >= T_MIN
    alpha = torch.where(kept, alpha, torch.zeros_like(alpha))
    one_minus = 1 - alpha
    T_after = torch.cumprod(one_minus, dim=0)
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]], dim=0)
    w = alpha * T_before  # (n,P)
    return w.T @ values, T_after[-1]


def blend_tiles(inp: RenderInputs, mean2d: Tensor, conic: Tensor, opacity: Tensor, depth: Tensor,
                colors: Tensor, features: Tensor | None, radius: Tensor) -> dict[str, Tensor]:
    """Tile-by-tile blending of the visible Gaussians (all inputs indexed alike)."""
    W, H = inp.width, inp.height
    gx, gy = math.ceil(W / TILE), math.ceil(H / TILE)
    values = [colors, depth[:, None]] + ([features] if features is not None else [])
    values = torch.cat(values, dim=1)  # (M, 3 + 1 + C)
    V = values.shape[1]
    x0, y0, x1, y1 = tile_rect(mean2d.detach(), radius, gx, gy)
    # Front to back: by depth, ties by index (a stable sort of index order).
    order = torch.sort(depth.detach(), stable=True).indices
    rows = []
    for ty in range(gy):
        row = []
        for tx in range(gx):
            c0, r0 = tx * TILE, ty * TILE
            w_t, h_t = min(TILE, W - c0), min(TILE, H - r0)
            rr, cc = torch.meshgrid(torch.arange(r0, r0 + h_t), torch.arange(c0, c0 + w_t), indexing="ij")
            px = cc.reshape(-1).to(mean2d) + 0.5
            py = rr.reshape(-1).to(mean2d) + 0.5
            touches = (x0[order] <= tx) & (tx < x1[order]) & (y0[order] <= ty) & (ty < y1[order])
            ids = order[touches]
            if ids.numel() == 0:
                out = torch.zeros(h_t * w_t, V, dtype=values.dtype)
                T = torch.ones(h_t * w_t, dtype=values.dtype)
            else:
                out, T = blend_tile(px, py, mean2d[ids], conic[ids], opacity[ids], values[ids])
            img = torch.cat([out, (1 - T)[:, None]], dim=1)  # (P, V+1)
            row.append(img.T.reshape(V + 1, h_t, w_t))
        rows.append(torch.cat(row, dim=2))
    image = torch.cat(rows, dim=1)  # (V+1, H, W)
    if values.shape[0] == 0:
        # Nothing visible: the images are constant, but they stay in the autograd graph (with zero
        # gradients), as the kernels' outputs do, so that backward works on any render.
        image = image + 0 * (values.sum() + mean2d.sum() + conic.sum() + opacity.sum())
    return dict(rgb=image[0:3], depth=image[3:4], features=image[4:V] if features is not None else None,
                alpha=image[V:V + 1])


def project(inp: RenderInputs) -> Projection:
    """Stage 1: the N Gaussians in screen space; culled Gaussians get radius 0 and zero rows.

    Only the visible Gaussians are projected with autograd (their rows are scattered into
    zeros), so a culled Gaussian with NaN parameters cannot poison any gradient."""
    N = inp.means.shape[0]
    vis = visible_mask(inp)
    idx = vis.nonzero().squeeze(1)
    proj = ewa_projection(inp, inp.means[idx], inp.quats[idx], inp.scales[idx])
    if inp.sh is not None:
        R, t = inp.viewmat[:3, :3], inp.viewmat[:3, 3]
        cam_center = -R.T @ t
        colors_v = sh_to_color(inp.sh[idx], inp.sh_degree, inp.means[idx], cam_center)
    else:
        colors_v = inp.colors[idx]

    def scatter(rows: Tensor, width: int) -> Tensor:
        shape = (N, width) if width else (N,)
        return torch.zeros(shape, dtype=inp.means.dtype).index_put((idx,), rows)

    colors = scatter(colors_v, 3) if inp.sh is not None else inp.colors
    radii = torch.zeros(N, dtype=torch.int32).index_put((idx,), proj["radius"].detach().int())
    return Projection(means2d=scatter(proj["mean2d"], 2), conics=scatter(proj["conic"], 3),
                      depths=scatter(proj["p_cam"][:, 2], 0), radii=radii, colors=colors)


def rasterize(inp: RenderInputs, proj: Projection) -> RasterImages:
    """Stage 2: front-to-back blending, tile by tile, of the Gaussians with radius > 0."""
    idx = (proj.radii > 0).nonzero().squeeze(1)
    feats = inp.features[idx] if inp.features is not None else None
    img = blend_tiles(inp, proj.means2d[idx], proj.conics[idx], inp.opacities[idx], proj.depths[idx],
                      proj.colors[idx], feats, proj.radii[idx].to(inp.means.dtype))
    return RasterImages(rgb=img["rgb"], features=img["features"], depth=img["depth"], alpha=img["alpha"])


def render(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
           viewmat: Tensor, K: Tensor, width: int, height: int, *, features: Tensor | None = None,
           sh_degree: int | None = None, near: float = 0.01, background: Tensor | None = None,
           feature_background: Tensor | None = None) -> RenderOutput:
    """Reference render; see `feature3dgs.render` for the arguments and outputs."""
    inp = validate_render_inputs(means, quats, scales, opacities, colors, viewmat, K, width, height,
                                 features=features, sh_degree=sh_degree, near=near,
                                 background=background, feature_background=feature_background,
                                 allow_float64=True, check_device=False)
    proj = project(inp)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    return composite(inp, proj, rasterize(inp, proj))
