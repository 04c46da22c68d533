"""CPU kernels against the PyTorch reference: forward values and gradients.

Every test runs once per CPU blend path this machine supports (scalar, baseline,
avx2, avx512: FEATURE3DGS_CPU_ISA), with the exact culling on."""

from __future__ import annotations

import pytest
import torch

import feature3dgs
from feature3dgs.rendering import reference
from scenes import intrinsics, look_at_viewmat, random_scene

OUTPUTS = ("rgb", "features", "depth", "alpha")
CPU_ISAS = feature3dgs.backend_info()["cpu_isas_available"]


@pytest.fixture(autouse=True, params=CPU_ISAS)
def cpu_isa(request, monkeypatch):
    """Forces one CPU blend path for the test."""
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", request.param)
    assert feature3dgs.backend_info()["cpu_isa"] == request.param
    return request.param


def render_both(scene: dict, camera: dict, grad: bool = True, **kwargs):
    """Renders the scene with the kernels and the reference on fresh leaves."""
    leaves_k = {k: v.clone().requires_grad_(grad) for k, v in scene.items()}
    leaves_r = {k: v.clone().requires_grad_(grad) for k, v in scene.items()}
    out_k = feature3dgs.render(**leaves_k, **camera, **kwargs)
    out_r = reference.render(**leaves_r, **camera, **kwargs)
    return out_k, out_r, leaves_k, leaves_r


def assert_forward_close(out_k, out_r, atol=1e-5):
    assert torch.equal(out_k.radii, out_r.radii), "radii differ"
    for name in OUTPUTS:
        a, b = getattr(out_k, name), getattr(out_r, name)
        if b is None:
            assert a is None
            continue
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b.detach(), atol=atol, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def backward_both(out_k, out_r, seed=0):
    g = torch.Generator().manual_seed(seed)
    loss_k = loss_r = 0.0
    for name in OUTPUTS:
        a, b = getattr(out_k, name), getattr(out_r, name)
        if b is None:
            continue
        w = torch.randn(b.shape, generator=g)
        loss_k = loss_k + (a * w).sum()
        loss_r = loss_r + (b * w).sum()
    loss_k.backward()
    loss_r.backward()


def assert_grad_close(a: torch.Tensor, b: torch.Tensor, name: str, rel=1e-4):
    assert a is not None and b is not None, name
    scale = b.abs().max().item()
    if scale == 0:
        assert a.abs().max().item() == 0, name
        return
    norm_err = ((a - b).norm() / b.norm()).item()
    max_err = (a - b).abs().max().item() / scale
    assert norm_err < rel and max_err < 10 * rel, f"{name}: relative error {norm_err:.2e} (max {max_err:.2e})"


def check_scene(scene, camera, **kwargs):
    out_k, out_r, leaves_k, leaves_r = render_both(scene, camera, **kwargs)
    assert_forward_close(out_k, out_r)
    backward_both(out_k, out_r)
    for k in scene:
        assert_grad_close(leaves_k[k].grad, leaves_r[k].grad, k)
    assert_grad_close(out_k.means2d.grad, out_r.means2d.grad, "means2d")
    return out_k, out_r


def camera(width=64, height=48, eye=(0.4, -0.3, 3.0), **kw):
    return dict(viewmat=look_at_viewmat(eye), K=intrinsics(width, height, **kw), width=width, height=height)


@pytest.mark.parametrize("channels", [1, 3, 7, 32, 33, 61, 257])
def test_features_any_channel_count(channels):
    scene = random_scene(150, seed=channels, channels=channels)
    check_scene(scene, camera())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sh_degree", [None, 0, 1, 3])
def test_random_scenes_with_sh(seed, sh_degree):
    scene = random_scene(200, seed=10 + seed, channels=4, sh_degree=sh_degree)
    check_scene(scene, camera(), background=torch.tensor([0.2, 0.5, 0.9]))


def test_lower_sh_degree_than_coefficients():
    scene = random_scene(120, seed=5, sh_degree=3)
    out_k, out_r = check_scene(scene, camera(), sh_degree=1)
    out_full = feature3dgs.render(**scene, **camera())
    assert (out_full.rgb - out_k.rgb).abs().max() > 1e-3  # degree 1 really differs


def test_non_square_odd_size_off_centre_principal_point():
    scene = random_scene(250, seed=3, channels=9)
    cam = camera(width=77, height=35, cx=30.3, cy=21.7)
    out_k, _ = check_scene(scene, cam, background=torch.tensor([1.0, 1.0, 1.0]),
                           feature_background=torch.linspace(-1, 1, 9))
    assert out_k.rgb.shape == (3, 35, 77) and out_k.features.shape == (9, 35, 77)


@pytest.mark.parametrize("channels", [19, 40])
def test_feature_products_on_partial_tiles(channels):
    """From one vector of channels up (8 or 16) the SIMD paths blend features as products
    over chunk lists; at 77 x 35 the edge tiles are 13 pixels wide and 3 rows high, so a
    2 x 8 chunk (16 lanes) has a row and a 13-pixel tile has columns outside the image.
    Outputs and gradients match the reference, with 19 channels (blocks of 16, 2, 1) and 40."""
    scene = random_scene(300, seed=9, channels=channels)
    cam = camera(width=77, height=35, cx=40.2, cy=17.1)
    out_k, _ = check_scene(scene, cam, feature_background=torch.linspace(-1, 1, channels))
    assert out_k.features.shape == (channels, 35, 77)
    alpha = out_k.alpha.reshape(35, 77)
    assert (alpha[:, 64:] > 0.05).any() and (alpha[32:, :] > 0.05).any()  # the edge tiles blend


def test_partly_outside_view_and_behind_camera():
    scene = random_scene(300, seed=4, channels=3, spread=4.0)  # camera at z=3 is inside the cloud
    cam = camera()
    out_k, _ = check_scene(scene, cam)
    p_cam = scene["means"] @ cam["viewmat"][:3, :3].T + cam["viewmat"][:3, 3]
    behind = p_cam[:, 2] < 0.01
    assert behind.any() and (out_k.radii[behind] == 0).all()
    assert (out_k.radii > 0).any() and (out_k.radii == 0).sum() > behind.sum()  # off-screen culled too


def test_equal_depth_ties_break_by_index():
    n = 40
    g = torch.Generator().manual_seed(7)
    means = torch.cat([torch.rand(n, 2, generator=g) * 0.6 - 0.3, torch.full((n, 1), 2.0)], dim=1)
    scene = dict(means=means, quats=torch.randn(n, 4, generator=g),
                 scales=torch.rand(n, 3, generator=g) * 0.2 + 0.05, opacities=torch.full((n,), 0.7),
                 colors=torch.rand(n, 3, generator=g), features=torch.randn(n, 5, generator=g))
    cam = dict(viewmat=torch.eye(4), K=intrinsics(48, 48), width=48, height=48)
    out_k, _ = check_scene(scene, cam)
    # Reversing the order of equal-depth Gaussians changes the image: order matters and is by index.
    flipped = {k: v.flip(0) for k, v in scene.items()}
    out_f = feature3dgs.render(**flipped, **cam)
    assert (out_f.rgb - out_k.rgb.detach()).abs().max() > 1e-3


def test_tiny_and_huge_gaussians():
    tiny = random_scene(60, seed=8, channels=2, scale_range=(-9.0, -8.0))
    huge = random_scene(6, seed=9, channels=2, scale_range=(0.5, 1.5))
    scene = {k: torch.cat([tiny[k], huge[k]]) for k in tiny}
    scene["opacities"][-6:] = 0.3
    out_k, _ = check_scene(scene, camera())
    assert (out_k.radii[:60][out_k.radii[:60] > 0] <= 3).all()  # dilation-only footprint
    assert out_k.radii[60:].max() > 64  # covers the whole image


def test_high_opacity_early_termination():
    scene = random_scene(400, seed=11, channels=6, scale_range=(-2.0, -1.0))
    scene["opacities"] = torch.full((400,), 0.98)
    out_k, _ = check_scene(scene, camera())
    # Transmittance ran out (T < 1e-3) over most of the image, yet never below T_MIN.
    assert (out_k.alpha > 0.999).float().mean() > 0.5
    assert out_k.alpha.max() <= 1 - 1e-4 + 1e-7


def test_gradcheck_reference_float64():
    g = torch.Generator().manual_seed(0)
    n = 3
    inputs = dict(
        means=(torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 0.6,
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
        scales=torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.1 + 0.1,
        opacities=torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.3,
        colors=torch.rand(n, 4, 3, generator=g, dtype=torch.float64),
        features=torch.randn(n, 2, generator=g, dtype=torch.float64),
    )
    viewmat = look_at_viewmat((0.2, 0.1, 2.5)).double()
    K = intrinsics(20, 18).double()
    names = list(inputs)

    def fn(*args):
        out = reference.render(**dict(zip(names, args)), viewmat=viewmat, K=K, width=20, height=18)
        return out.rgb, out.features, out.depth, out.alpha

    leaves = tuple(v.requires_grad_(True) for v in inputs.values())
    # fast_mode checks random projections v^T J u: every input and output direction is exercised.
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_means2d_grad_is_screen_space_gradient():
    from feature3dgs.rendering.kernels import RasterizeFunction

    scene = random_scene(50, seed=12, channels=2)
    leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    out = feature3dgs.render(**leaves, **camera())
    weights = torch.randn(3, 48, 64, generator=torch.Generator().manual_seed(0))
    (out.rgb * weights).sum().backward()
    g = out.means2d.grad
    assert g is not None and g.shape == (50, 2)
    assert (g[out.radii == 0] == 0).all() and g[out.radii > 0].abs().sum() > 0

    # Central differences of the rasterize stage in the 2D means, in pixels.
    from feature3dgs.rendering.kernels import ProjectFunction
    from feature3dgs.rendering.inputs import validate_render_inputs
    inp = validate_render_inputs(**scene, **camera())
    with torch.no_grad():
        means2d, conics, depths, radii, _ = ProjectFunction.apply(
            inp.means, inp.quats, inp.scales, torch.empty(0), 0, inp.viewmat, inp.K, 64, 48, 0.01)

        def loss(m2d):
            rgb, *_ = RasterizeFunction.apply(m2d, conics, inp.colors, inp.opacities, depths, inp.features,
                                       radii, 64, 48)
            return (rgb * weights).sum().item()

        for i in torch.argsort(g.norm(dim=1), descending=True)[:5].tolist():
            for axis in range(2):
                eps = 0.02
                plus, minus = means2d.clone(), means2d.clone()
                plus[i, axis] += eps
                minus[i, axis] -= eps
                fd = (loss(plus) - loss(minus)) / (2 * eps)
                # The alpha >= 1/255 cut-off makes the loss jump by ~0.004 per pixel crossing it.
                assert abs(fd - g[i, axis].item()) < 0.1 * g[i].norm().item() + 0.02, (i, axis)


def test_forward_is_deterministic():
    scene = random_scene(400, seed=13, channels=8)
    a = feature3dgs.render(**scene, **camera())
    b = feature3dgs.render(**scene, **camera())
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.features, b.features)


# ---------------------------------------------------------------------- stage by stage
def _inputs(scene, cam, allow_float64=False):
    from feature3dgs.rendering.inputs import validate_render_inputs

    return validate_render_inputs(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                  scene["colors"], cam["viewmat"], cam["K"], cam["width"], cam["height"],
                                  features=scene.get("features"), allow_float64=allow_float64)


@pytest.mark.parametrize("sh_degree", [None, 0, 2, 3])
def test_project_stage_matches_reference(sh_degree):
    """Stage 1 alone: the kernels' projection against the reference's, values and gradients."""
    from feature3dgs.rendering import kernels

    scene = random_scene(200, seed=11, sh_degree=sh_degree, channels=0)
    leaves = [{k: v.clone().requires_grad_(True) for k, v in scene.items()} for _ in range(2)]
    cam = camera(70, 45)
    pk = kernels.project(_inputs(leaves[0], cam))
    pr = reference.project(_inputs(leaves[1], cam))
    assert torch.equal(pk.radii, pr.radii) and int((pk.radii > 0).sum()) > 50
    vis = pk.radii > 0
    g = torch.Generator().manual_seed(3)
    loss_k = loss_r = 0.0
    for name in ("means2d", "conics", "depths", "colors"):
        a, b = getattr(pk, name), getattr(pr, name)
        torch.testing.assert_close(a[vis], b[vis].detach(), atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        w = torch.randn(b.shape, generator=g) * (vis[:, None] if b.dim() == 2 else vis)
        loss_k = loss_k + (a * w).sum()
        loss_r = loss_r + (b * w).sum()
    loss_k.backward()
    loss_r.backward()
    for k in ("means", "quats", "scales", "colors"):
        assert_grad_close(leaves[0][k].grad, leaves[1][k].grad, k)


def test_rasterize_stage_matches_reference():
    """Stage 2 alone: both blend the same screen-space Gaussians; outputs and the gradients to
    means2d, conics, colours, opacities, depths and features agree."""
    from feature3dgs.rendering import kernels
    from feature3dgs.rendering.inputs import Projection

    scene = random_scene(150, seed=5, channels=9)
    cam = camera(50, 40)
    with torch.no_grad():
        base = kernels.project(_inputs(scene, cam))
    outs, leaves = [], []
    for stage in (kernels, reference):
        lv = {"means2d": base.means2d.clone(), "conics": base.conics.clone(), "depths": base.depths.clone(),
              "colors": base.colors.clone(), "opacities": scene["opacities"].clone(),
              "features": scene["features"].clone()}
        lv = {k: v.requires_grad_(True) for k, v in lv.items()}
        sc = dict(scene, opacities=lv["opacities"], features=lv["features"])
        proj = Projection(means2d=lv["means2d"], conics=lv["conics"], depths=lv["depths"], radii=base.radii,
                          colors=lv["colors"])
        outs.append(stage.rasterize(_inputs(sc, cam), proj))
        leaves.append(lv)
    g = torch.Generator().manual_seed(0)
    loss = [0.0, 0.0]
    for name in ("rgb", "features", "depth", "alpha"):
        a, b = getattr(outs[0], name), getattr(outs[1], name)
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        w = torch.randn(b.shape, generator=g)
        loss = [loss[0] + (a * w).sum(), loss[1] + (b * w).sum()]
    loss[0].backward()
    loss[1].backward()
    for k in leaves[0]:
        assert_grad_close(leaves[0][k].grad, leaves[1][k].grad, k)
