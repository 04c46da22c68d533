"""The Gaussian model (init, activations, parameter groups) and density control
(statistics, clone / split / prune / opacity reset, Adam state surgery)."""

from __future__ import annotations

import math

import pytest
import torch

from feature3dgs.model.camera import Camera, intrinsics_from_fov, look_at
from feature3dgs.training.densify import (
    DensifyStats,
    append_gaussians,
    clone_gaussians,
    densify_and_prune,
    keep_gaussians,
    ndc_grad_norm,
    reset_opacity,
    split_gaussians,
)
from feature3dgs.model.gaussians import (
    SH_C0,
    GaussianModel,
    inverse_sigmoid,
    knn_mean_sq_dist,
    quat_to_rotmat,
    random_init_bounds,
    rgb_to_sh,
    sh_to_rgb,
)


def _model(n=50, feature_dim=0, sh_degree=3, seed=0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * 2 - 1
    cols = torch.rand(n, 3, generator=g)
    m = GaussianModel.from_points(pts, cols, sh_degree=sh_degree, feature_dim=feature_dim)
    # make every parameter row distinguishable
    with torch.no_grad():
        for p in m.params.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return m


def _camera(w=48, h=40) -> Camera:
    return Camera(look_at((0.0, -4.0, 1.0), (0.0, 0.0, 0.0)), intrinsics_from_fov(math.radians(60), w, h), w, h)


def _adam(model: GaussianModel) -> torch.optim.Adam:
    lrs = {k: 1e-2 for k in model.params.keys()}
    return torch.optim.Adam(model.param_groups(lrs), lr=0.0, eps=1e-15)


def _take_step(model: GaussianModel, opt: torch.optim.Optimizer) -> None:
    out = model.render(_camera(), features=model.features)
    loss = out.rgb.square().mean() + (out.features.square().mean() if out.features is not None else 0)
    loss = loss + sum(p.square().sum() * 1e-6 for p in model.params.values())  # every param gets a grad
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------- model
def test_from_points_activations_and_init():
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    cols = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5], [0.2, 0.4, 0.6]])
    m = GaussianModel.from_points(pts, cols, sh_degree=2, feature_dim=4, init_opacity=0.1)
    assert m.num_gaussians == 5 and len(m) == 5
    assert m.max_sh_degree == 2 and m.active_sh_degree == 0
    assert m.sh.shape == (5, 9, 3) and m.params["sh_rest"].abs().sum() == 0
    torch.testing.assert_close(m.colors_dc, cols)
    torch.testing.assert_close(m.opacities, torch.full((5,), 0.1))
    assert m.opacities.shape == (5,)
    torch.testing.assert_close(m.quats, torch.tensor([[1.0, 0, 0, 0]]).repeat(5, 1))
    # scale = sqrt(mean squared distance to the 3 nearest neighbours); point 0's are at distance 1
    assert m.scales[0].tolist() == pytest.approx([1.0] * 3, rel=1e-5)
    assert m.feature_dim == 4 and m.features.shape == (5, 4) and m.features.abs().sum() == 0
    m.one_up_sh_degree(), m.one_up_sh_degree(), m.one_up_sh_degree()
    assert m.active_sh_degree == 2


def test_sh_conversions_and_helpers():
    rgb = torch.rand(10, 3)
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(rgb)), rgb)
    assert rgb_to_sh(torch.tensor(0.5 + SH_C0)).item() == pytest.approx(1.0)
    x = torch.tensor([0.01, 0.5, 0.9])
    torch.testing.assert_close(torch.sigmoid(inverse_sigmoid(x)), x)
    q = torch.randn(20, 4)
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(20, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(20), atol=1e-5, rtol=0)
    pts = torch.rand(300, 3)
    brute = torch.cdist(pts, pts).pow(2).topk(4, largest=False).values[:, 1:].mean(1)
    torch.testing.assert_close(knn_mean_sq_dist(pts), brute, atol=1e-6, rtol=1e-4)


def test_model_without_features_and_degree0():
    m = _model(feature_dim=0, sh_degree=0)
    assert m.features is None and m.feature_dim == 0 and "features" not in m.params
    assert m.params["sh_rest"].shape == (50, 0, 3)
    out = m.render(_camera(), features=m.features)  # no features: silently RGB only
    assert out.features is None and out.rgb.shape == (3, 40, 48)


def test_model_render_gradients_reach_every_parameter():
    m = _model(feature_dim=5)
    m.active_sh_degree = 3
    out = m.render(_camera(), torch.ones(3), features=m.features)
    assert out.features.shape == (5, 40, 48)
    (out.rgb.sum() + out.features.sum()).backward()
    for name, p in m.params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_random_init_and_bounds():
    g = torch.Generator().manual_seed(3)
    m = GaussianModel.random(500, [-1, -2, -3], [1, 2, 3], sh_degree=1, generator=g)
    assert m.num_gaussians == 500
    assert (m.means.min(0).values >= torch.tensor([-1, -2, -3.0])).all()
    assert (m.means.max(0).values <= torch.tensor([1, 2, 3.0])).all()
    assert ((m.colors_dc - 0.5).abs() < 0.01).all()  # 3DGS: near grey
    # cameras on a ring looking at (0, 0, 0.5): the box is centred there
    K = intrinsics_from_fov(math.radians(40), 64, 64)
    cams = [Camera(look_at((4 * math.cos(a), 4 * math.sin(a), 1.5), (0, 0, 0.5)), K, 64, 64)
            for a in torch.linspace(0, 6, 8).tolist()]
    lo, hi = random_init_bounds(cams)
    torch.testing.assert_close((lo + hi) / 2, torch.tensor([0.0, 0.0, 0.5]), atol=1e-4, rtol=0)
    half = float((hi - lo)[0] / 2)
    assert half == pytest.approx(math.hypot(4, 1) * math.tan(math.radians(20)), rel=1e-3)
    with pytest.raises(ValueError, match="empty"):
        GaussianModel.random(10, [0, 0, 0], [0, 1, 1])
    with pytest.raises(ValueError, match="empty point cloud"):
        GaussianModel.from_points(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        GaussianModel.from_points(torch.tensor([[0.0, float("nan"), 0.0]]))


def test_param_groups_named_and_complete():
    m = _model(feature_dim=3)
    lrs = {"means": 1.0, "sh_dc": 2.0, "sh_rest": 3.0, "opacities": 4.0, "scales": 5.0, "quats": 6.0, "features": 7.0}
    groups = m.param_groups(lrs)
    assert [g["name"] for g in groups] == list(lrs)
    assert all(g["params"][0] is m.params[g["name"]] for g in groups)
    assert [g["lr"] for g in groups] == list(lrs.values())
    with pytest.raises(KeyError, match="features"):
        m.param_groups({k: v for k, v in lrs.items() if k != "features"})


# ---------------------------------------------------------------------- density control
def test_ndc_grad_conversion_matches_3dgs_units():
    # 3DGS's grad is dL/d(ndc) with pixel = ((ndc + 1) * W - 1) / 2, i.e. dpixel/dndc = W / 2.
    g_px = torch.tensor([[1e-4, 0.0], [0.0, 1e-4], [3e-5, 4e-5]])
    n = ndc_grad_norm(g_px, width=800, height=600)
    torch.testing.assert_close(n, torch.tensor([1e-4 * 400, 1e-4 * 300, math.hypot(3e-5 * 400, 4e-5 * 300)]))


def test_stats_accumulate_only_visible():
    s = DensifyStats.zeros(3)
    s.update(torch.tensor([[1e-4, 0], [1e-4, 0], [1e-4, 0]]), torch.tensor([2, 0, 5], dtype=torch.int32), 20, 20)
    s.update(torch.tensor([[3e-4, 0], [1e-4, 0], [0, 0]]), torch.tensor([4, 0, 1], dtype=torch.int32), 20, 20)
    torch.testing.assert_close(s.denom, torch.tensor([2.0, 0, 2]))
    torch.testing.assert_close(s.mean_grad(), torch.tensor([(1e-3 + 3e-3) / 2, 0.0, 1e-3 / 2]))
    torch.testing.assert_close(s.max_radii, torch.tensor([4.0, 0, 5]))


def _check_optimizer_consistent(model, opt):
    for g in opt.param_groups:
        p = g["params"][0]
        assert p is model.params[g["name"]], g["name"]
        st = opt.state.get(p)
        if st:
            assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape


def test_keep_clone_append_carry_every_param_and_adam_state():
    m = _model(n=30, feature_dim=6)
    opt = _adam(m)
    _take_step(m, opt)
    before = {k: v.detach().clone() for k, v in m.params.items()}
    moments = {k: opt.state[m.params[k]]["exp_avg"].clone() for k in m.params.keys()}
    steps = {k: opt.state[m.params[k]]["step"].clone() for k in m.params.keys()}

    keep = torch.zeros(30, dtype=torch.bool)
    keep[[1, 4, 7, 20]] = True
    keep_gaussians(m, opt, keep)
    assert m.num_gaussians == 4
    _check_optimizer_consistent(m, opt)
    for k in m.params.keys():
        torch.testing.assert_close(m.params[k].detach(), before[k][keep])
        torch.testing.assert_close(opt.state[m.params[k]]["exp_avg"], moments[k][keep])
        assert opt.state[m.params[k]]["step"] == steps[k]

    mask = torch.tensor([True, False, True, False])
    assert clone_gaussians(m, opt, mask) == 2
    assert m.num_gaussians == 6
    _check_optimizer_consistent(m, opt)
    for k in m.params.keys():
        torch.testing.assert_close(m.params[k].detach()[4:], before[k][keep][mask])
        assert opt.state[m.params[k]]["exp_avg"][4:].abs().sum() == 0  # new rows start at zero
    _take_step(m, opt)  # the optimizer still works on the new tensors
    with pytest.raises(ValueError, match="rows for"):
        append_gaussians(m, opt, {"means": torch.zeros(1, 3)})


def test_split_samples_children_inside_parent_and_shrinks():
    m = _model(n=10, feature_dim=2)
    opt = _adam(m)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 5]] = True
    parents = {k: v.detach()[mask].clone() for k, v in m.params.items()}
    g = torch.Generator().manual_seed(0)
    assert split_gaussians(m, opt, mask, generator=g) == 2
    assert m.num_gaussians == 10 - 2 + 4
    _check_optimizer_consistent(m, opt)
    kids = {k: v.detach()[-4:] for k, v in m.params.items()}
    # children 0,1 are of parent 0 / 1 (repeat order): same features, quats, colours, opacity
    for k in ("features", "quats", "sh_dc", "sh_rest", "opacities"):
        torch.testing.assert_close(kids[k], parents[k].repeat((2,) + (1,) * (parents[k].dim() - 1)))
    torch.testing.assert_close(kids["scales"], parents["scales"].repeat(2, 1) - math.log(1.6))
    # the children lie within a few parent standard deviations of the parent
    d = (kids["means"] - parents["means"].repeat(2, 1)).norm(dim=1)
    assert (d < 4 * parents["scales"].exp().max(dim=1).values.repeat(2) * math.sqrt(3)).all()
    assert (d > 0).all()


def test_reset_opacity_clamps_and_zeros_moments():
    m = _model(n=20)
    opt = _adam(m)
    with torch.no_grad():
        m.params["opacities"][:10] = inverse_sigmoid(torch.tensor(0.005))
        m.params["opacities"][10:] = inverse_sigmoid(torch.tensor(0.7))
    _take_step(m, opt)
    reset_opacity(m, opt, 0.01)
    assert (m.opacities <= 0.01 + 1e-6).all()
    assert m.opacities[10:].sub(0.01).abs().max() < 1e-6
    assert m.opacities[:10].max() < 0.0075  # lower ones unchanged (moved by one step only)
    st = opt.state[m.params["opacities"]]
    assert st["exp_avg"].abs().sum() == 0 and st["exp_avg_sq"].abs().sum() == 0
    _check_optimizer_consistent(m, opt)


def _stats_with(grads: list[float], n: int) -> DensifyStats:
    s = DensifyStats.zeros(n)
    s.grad_accum[: len(grads)] = torch.tensor(grads)
    s.denom[:] = 1
    return s


def test_densify_and_prune_clone_small_split_large_prune_transparent():
    n = 8
    pts = torch.arange(n, dtype=torch.float32)[:, None] * torch.tensor([[1.0, 0, 0]])
    m = GaussianModel.from_points(pts, feature_dim=3, sh_degree=1, init_opacity=0.5)
    extent = 10.0  # percent_dense * extent = 0.1
    with torch.no_grad():
        m.params["scales"][:] = math.log(0.05)  # small
        m.params["scales"][[2, 3]] = math.log(0.5)  # large
        m.params["opacities"][6] = inverse_sigmoid(torch.tensor(0.001))  # transparent -> pruned
        m.params["features"][:] = torch.arange(n, dtype=torch.float32)[:, None]
    opt = _adam(m)
    grads = [3e-4, 1e-4, 3e-4, 1e-4, 0, 5e-4, 0, 0]  # threshold 2e-4: clone 0, 5; split 2
    stats, counts = densify_and_prune(m, opt, _stats_with(grads, n), 2e-4, extent, generator=torch.Generator().manual_seed(0))
    assert counts == {"cloned": 2, "split": 1, "pruned": 1, "n": 8 + 2 + 1 - 1, "n_before": 8}
    assert m.num_gaussians == 10 and len(stats) == 10 and stats.denom.sum() == 0
    _check_optimizer_consistent(m, opt)
    ids = m.features[:, 0].round().long().tolist()
    assert sorted(ids) == [0, 0, 1, 2, 2, 3, 4, 5, 5, 7]  # 6 pruned, 2 split in two, 0 and 5 cloned
    big = m.scales.detach().max(dim=1).values.tolist()
    kids = [i for i, v in enumerate(ids) if v == 2]
    assert all(big[i] == pytest.approx(0.5 / 1.6, rel=1e-5) for i in kids)


def test_densify_respects_cap_and_world_size_prune():
    n = 6
    m = GaussianModel.from_points(torch.rand(n, 3), sh_degree=0, init_opacity=0.5)
    with torch.no_grad():
        m.params["scales"][:] = math.log(0.01)
        m.params["scales"][5] = math.log(5.0)  # huge in world units -> pruned by world size
    opt = _adam(m)
    grads = [1e-3, 5e-4, 9e-4, 3e-4, 0, 0]
    _, counts = densify_and_prune(m, opt, _stats_with(grads, n), 2e-4, extent=1.0, max_gaussians=8,
                                  max_world_size=0.1)
    # budget 2: the two largest gradients (0 and 2) are cloned; Gaussian 5 pruned
    assert counts["cloned"] == 2 and counts["split"] == 0 and counts["pruned"] == 1
    assert m.num_gaussians == 7
    # screen-size pruning uses the max radii (clones inherit theirs)
    m2 = GaussianModel.from_points(torch.rand(4, 3), sh_degree=0, init_opacity=0.5)
    s = DensifyStats.zeros(4)
    s.max_radii[:] = torch.tensor([5.0, 30.0, 10.0, 25.0])
    _, c2 = densify_and_prune(m2, None, s, 1.0, extent=1.0, max_screen_size=20)
    assert c2["pruned"] == 2 and m2.num_gaussians == 2


def test_densify_never_prunes_everything():
    m = GaussianModel.from_points(torch.rand(5, 3), sh_degree=0, init_opacity=0.001)
    _, counts = densify_and_prune(m, None, DensifyStats.zeros(5), 1.0, extent=1.0)
    assert m.num_gaussians == 1 and counts["pruned"] == 4
