"""render() input checking: clear errors, accepted variants, documented edge cases; the kernels
and the reference accept and refuse the same inputs and agree on every accepted one."""

from __future__ import annotations

import math

import pytest
import torch

import feature3dgs
from feature3dgs.rendering import inputs, reference
from feature3dgs.rendering.kernels import DOUBLE_BACKWARD_MESSAGE
from scenes import intrinsics, look_at_viewmat, random_scene

CAM = dict(viewmat=look_at_viewmat((0.0, 0.0, 3.0)), K=intrinsics(40, 32), width=40, height=32)


def scene(n=30, channels=4):
    return random_scene(n, seed=0, channels=channels)


@pytest.mark.parametrize("renderer", [feature3dgs.render, reference.render])
@pytest.mark.parametrize("name,bad,pattern", [
    ("means", torch.zeros(30, 2), r"means must have shape \(N, 3\)"),
    ("quats", torch.zeros(30, 3), r"quats must have shape \(30, 4\)"),
    ("scales", torch.zeros(29, 3), r"scales must have shape \(30, 3\)"),
    ("opacities", torch.zeros(30, 2), r"opacities must have shape \(30,\)"),
    ("colors", torch.zeros(30, 4), r"colors must have shape \(30, 3\)"),
    ("colors", torch.zeros(30, 5, 3), r"colors as SH must have K = \(degree\+1\)\^2"),
    ("colors", torch.zeros(30, 25, 3), r"degree <= 3"),
    ("features", torch.zeros(30, 0), r"features must have at least one channel"),
    ("features", torch.zeros(31, 8), r"features must have shape \(30, \?\)"),
    ("viewmat", torch.eye(3), r"viewmat must have shape \(4, 4\)"),
    ("K", torch.eye(4), r"K must have shape \(3, 3\)"),
    ("quats", torch.zeros(30, 4, dtype=torch.int64), r"quats must be float32"),
    ("features", torch.zeros(30, 4, dtype=torch.float16), r"features must be float32"),
    ("means", [[0.0, 0.0, 0.0]], r"means must be a torch.Tensor"),
    ("width", 0, r"width must be between 1 and 16384"),
    ("height", -5, r"height must be between 1 and 16384"),
    ("width", 10**6, r"width must be between 1 and 16384"),
    ("width", 12.5, r"width must be an int"),
    ("height", True, r"height must be an int"),
    ("near", 0.0, r"near must be a positive finite number"),
    ("near", float("nan"), r"near must be a positive finite number"),
    ("background", torch.zeros(4), r"background must have shape \(3,\)"),
    ("feature_background", torch.zeros(3), r"feature_background must have shape \(4,\)"),
    ("sh_degree", 2, r"sh_degree is given but colors is \(N, 3\)"),
])
def test_bad_arguments_raise_value_error_naming_them(renderer, name, bad, pattern):
    kwargs = {**scene(), **CAM, name: bad}
    with pytest.raises(ValueError, match=pattern):
        renderer(**kwargs)


def test_float64_refused_by_kernels_but_accepted_by_reference():
    s = {k: v.double() for k, v in scene().items()}
    with pytest.raises(ValueError, match="means must be float32, got float64"):
        feature3dgs.render(**s, **CAM)
    assert reference.render(**s, **CAM).rgb.dtype == torch.float64


def test_sh_degree_above_coefficients_refused():
    s = random_scene(10, seed=1, sh_degree=1)
    with pytest.raises(ValueError, match=r"sh_degree must be an int in \[0, 1\]"):
        feature3dgs.render(**s, **CAM, sh_degree=2)


def test_device_mismatch_names_the_argument():
    s = scene()
    s["scales"] = s["scales"].to("meta")
    with pytest.raises(ValueError, match=r"scales must be on cpu like means, got meta"):
        feature3dgs.render(**s, **CAM)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_cuda_tensors_without_a_gpu_give_a_clear_error():
    s = scene()
    with pytest.raises((RuntimeError, AssertionError), match="(?i)cuda|nvidia"):
        feature3dgs.render(**{k: v.to("cuda") for k, v in s.items()}, **CAM)


def test_non_contiguous_inputs_accepted_and_equal():
    s = scene(40, channels=6)
    base = feature3dgs.render(**s, **CAM)
    strided = {
        "means": torch.cat([s["means"], s["means"]], 1)[:, :3],
        "quats": s["quats"].T.contiguous().T,
        "scales": s["scales"].T.contiguous().T,
        "opacities": torch.stack([s["opacities"], s["opacities"]], 1)[:, 0],
        "colors": s["colors"].T.contiguous().T,
        "features": s["features"].T.contiguous().T,
    }
    assert not strided["quats"].is_contiguous() and not strided["features"].is_contiguous()
    out = feature3dgs.render(**strided, **{**CAM, "viewmat": CAM["viewmat"].T.contiguous().T})
    assert torch.equal(out.rgb, base.rgb) and torch.equal(out.features, base.features)


def test_opacities_n_by_1_and_float64_camera_accepted():
    s = scene()
    a = feature3dgs.render(**s, **CAM)
    s["opacities"] = s["opacities"][:, None]
    b = feature3dgs.render(**s, **{**CAM, "viewmat": CAM["viewmat"].double(), "K": CAM["K"].double()})
    assert torch.equal(a.rgb, b.rgb)


@pytest.mark.parametrize("renderer", [feature3dgs.render, reference.render])
def test_empty_scene_renders_background(renderer):
    empty = {k: v[:0] for k, v in scene().items()}
    empty = {k: v.requires_grad_(True) for k, v in empty.items()}
    out = renderer(**empty, **CAM, background=torch.tensor([0.1, 0.2, 0.3]),
                   feature_background=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert out.rgb.shape == (3, 32, 40)
    torch.testing.assert_close(out.rgb, torch.tensor([0.1, 0.2, 0.3])[:, None, None].expand(3, 32, 40))
    torch.testing.assert_close(out.features[:, 5, 7], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert (out.alpha == 0).all() and (out.depth == 0).all() and out.radii.shape == (0,)
    if renderer is feature3dgs.render:
        (out.rgb.sum() + out.features.sum()).backward()
        assert empty["means"].grad.shape == (0, 3)


def test_everything_behind_camera_renders_background():
    s = scene()
    s["means"] = s["means"] + torch.tensor([0.0, 0.0, 10.0])  # camera at z=3 looks towards -z
    out = feature3dgs.render(**s, **CAM, background=torch.ones(3))
    assert (out.radii == 0).all() and torch.equal(out.rgb, torch.ones(3, 32, 40))


def test_backend_info_reports_kernels():
    info = feature3dgs.backend_info()
    assert info["cpu"] is True and isinstance(info["cuda"], bool)
    assert info["openmp_threads"] >= 1 and info["tile_size"] == 16
    assert info["version"] == feature3dgs.__version__
    if info["cuda"]:
        assert info["cuda_archs"]


def test_render_without_features_returns_none():
    s = scene()
    del s["features"]
    out = feature3dgs.render(**s, **CAM)
    assert out.features is None and out.rgb.shape == (3, 32, 40)
    with_features = feature3dgs.render(**scene(), **CAM)
    assert out.alpha.max() > 0.5 and torch.equal(out.rgb, with_features.rgb)


# ---------------------------------------------------------------------- values no render can mean
def _set(name, index, value):
    """An edit of the scene/camera: ``kwargs[name][index] = value`` on a copy."""
    def edit(kwargs):
        t = kwargs[name].clone()
        t[index] = value
        kwargs[name] = t
    return edit


def _replace(name, value):
    def edit(kwargs):
        kwargs[name] = value() if callable(value) else value
    return edit


NAN, INF = float("nan"), float("inf")
K0 = CAM["K"]

# (case id, edit, the message's pattern): every class of value that is refused
REFUSED = [
    ("negative scale", _set("scales", (slice(0, 2), 0), -0.1), r"scales: 2 of 90 values are negative"),
    ("opacity 5", _set("opacities", 3, 5.0), r"opacities: 1 of 30 values lie outside \[0, 1\].*max 5"),
    ("opacity -1", _set("opacities", slice(0, 4), -1.0), r"opacities: 4 of 30 values lie outside \[0, 1\]"),
    ("opacity NaN", _set("opacities", 3, NAN), r"opacities: 1 of 30 values are NaN or Inf"),
    ("opacity Inf", _set("opacities", 3, INF), r"opacities: 1 of 30 values are NaN or Inf"),
    ("colour NaN", _set("colors", (0, 1), NAN), r"colors: 1 of 90 values are NaN or Inf"),
    ("colour -Inf", _set("colors", (slice(0, 3), 2), -INF), r"colors: 3 of 90 values are NaN or Inf"),
    ("SH NaN", _replace("colors", lambda: torch.full((30, 4, 3), 0.2).index_put_((torch.tensor([5]),), torch.tensor(NAN))),
     r"colors \(SH coefficients\): 12 of 360 values are NaN or Inf"),
    ("feature NaN", _set("features", (7, 2), NAN), r"features: 1 of 120 values are NaN or Inf"),
    ("feature Inf", _set("features", slice(0, 30), INF), r"features: 120 of 120 values are NaN or Inf"),
    ("background NaN", _replace("background", torch.tensor([0.0, NAN, 0.0])), r"background: 1 of 3 values"),
    ("feature background Inf", _replace("feature_background", torch.tensor([0.0, 0.0, INF, 0.0])),
     r"feature_background: 1 of 4 values"),
    ("viewmat NaN", _set("viewmat", (0, 3), NAN), r"viewmat: 1 of 16 values are NaN or Inf"),
    ("viewmat last row", _set("viewmat", (3, 0), 0.5), r"viewmat must be a world-to-camera matrix.*last row"),
    ("K NaN", _set("K", (0, 0), INF), r"K: 1 of 9 values are NaN or Inf"),
    ("K zeros", _replace("K", torch.zeros(3, 3)), r"K must be pinhole intrinsics"),
    ("K fx < 0", _set("K", (0, 0), -float(K0[0, 0])), r"K must be pinhole intrinsics .* fx, fy > 0"),
    ("K fy = 0", _set("K", (1, 1), 0.0), r"K must be pinhole intrinsics"),
    ("K last row", _set("K", (2, 2), 2.0), r"K must be pinhole intrinsics"),
    ("K skew", _set("K", (0, 1), 0.5), r"K must be pinhole intrinsics"),
    ("K row 1", _set("K", (1, 0), 0.5), r"K must be pinhole intrinsics"),
    ("viewmat requires grad", _replace("viewmat", lambda: CAM["viewmat"].clone().requires_grad_(True)),
     r"viewmat requires grad, but camera gradients are not supported: pass viewmat.detach\(\)"),
    ("K requires grad", _replace("K", lambda: K0.clone().requires_grad_(True)),
     r"K requires grad, but camera gradients are not supported"),
]


@pytest.mark.parametrize("renderer", [feature3dgs.render, reference.render], ids=["kernels", "reference"])
@pytest.mark.parametrize("edit,pattern", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_values_no_render_can_mean_are_refused(renderer, edit, pattern):
    kwargs = {**scene(), **CAM}
    edit(kwargs)
    with pytest.raises(ValueError, match=pattern):
        renderer(**kwargs)


def test_zero_scales_and_boundary_opacities_are_accepted_and_agree():
    s = scene()
    s["scales"][:5] = 0.0  # a point: the 0.3 px low-pass dilation still gives it a footprint
    s["opacities"][:3] = 0.0
    s["opacities"][3:6] = 1.0
    out = feature3dgs.render(**s, **CAM)
    ref = reference.render(**s, **CAM)
    torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-5, rtol=0)
    assert (out.radii[:5] > 0).any()


def _grads(renderer, s, cam=CAM):
    leaves = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    out = renderer(**leaves, **cam, background=torch.tensor([0.2, 0.3, 0.4]))
    w = torch.linspace(-1, 1, out.rgb.numel()).reshape(out.rgb.shape)
    ((out.rgb * w).sum() + out.features.sum() + out.depth.sum() + out.alpha.sum()).backward()
    return out, {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("case", ["behind the camera", "N = 0", "all non-finite"])
def test_renders_with_every_gaussian_culled_backpropagate_zero_gradients(case):
    s = scene()
    if case == "behind the camera":
        s["means"] = s["means"] + torch.tensor([0.0, 0.0, 10.0])
    elif case == "N = 0":
        s = {k: v[:0] for k, v in s.items()}
    else:
        s["means"][:, 0] = NAN
    results = [_grads(r, s) for r in (feature3dgs.render, reference.render)]
    for out, grads in results:
        assert (out.radii == 0).all()
        torch.testing.assert_close(out.rgb, torch.tensor([0.2, 0.3, 0.4])[:, None, None].expand(3, 32, 40))
        assert out.rgb.grad_fn is not None and out.features.grad_fn is not None
        for name, g in grads.items():
            assert g is not None and g.shape == s[name].shape, name
            assert (g == 0).all(), name


def test_non_finite_geometry_is_culled_alike_in_kernels_and_reference():
    """NaN/Inf means, quaternions or scales and zero quaternions cull the Gaussian in both
    implementations: same images, and zero (not NaN) gradients for the culled rows."""
    s = scene(30)
    s["means"][0, 1] = NAN
    s["quats"][1] = 0.0
    s["scales"][2, 0] = INF
    s["quats"][3, 2] = -INF
    s["means"][4] = INF
    out_k, g_k = _grads(feature3dgs.render, s)
    out_r, g_r = _grads(reference.render, s)
    assert (out_k.radii[:5] == 0).all() and (out_r.radii[:5] == 0).all()
    assert (out_k.radii[5:] > 0).any()
    torch.testing.assert_close(out_k.rgb, out_r.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_k.features, out_r.features, atol=1e-5, rtol=0)
    for name in g_k:
        assert torch.isfinite(g_k[name]).all() and torch.isfinite(g_r[name]).all(), name
        assert (g_k[name][:5] == 0).all() and (g_r[name][:5] == 0).all(), name
        torch.testing.assert_close(g_k[name], g_r[name], atol=1e-4, rtol=1e-3)
    # the culled Gaussians change nothing: the image is the one without them
    rest = {k: v[5:] for k, v in s.items()}
    torch.testing.assert_close(feature3dgs.render(**rest, **CAM, background=torch.tensor([0.2, 0.3, 0.4])).rgb,
                               out_k.rgb, atol=1e-6, rtol=0)


def test_double_backward_is_refused_by_the_kernels_and_works_in_the_reference():
    s = scene(20)
    means = s.pop("means").requires_grad_(True)
    out = feature3dgs.render(means, **s, **CAM)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(out.rgb.sum(), means, create_graph=True)
    assert "double backward is not supported" in DOUBLE_BACKWARD_MESSAGE
    # first-order gradients are unaffected, and the reference differentiates twice
    (g,) = torch.autograd.grad(feature3dgs.render(means, **s, **CAM).rgb.sum(), means)
    s64 = {k: v.double() for k, v in s.items()}
    m64 = means.detach().double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(reference.render(m64, **s64, **CAM).rgb.sum(), m64, create_graph=True)
    torch.testing.assert_close(g.double(), g_ref.detach(), atol=1e-4, rtol=1e-3)
    (hvp,) = torch.autograd.grad((g_ref * torch.ones_like(g_ref)).sum(), m64)
    assert torch.isfinite(hvp).all() and hvp.abs().sum() > 0


def test_render_bytes_estimate_and_device_limit():
    assert inputs.render_bytes(40, 32, 4) == 40 * 32 * (2 * 9 + 2) * 4
    assert inputs.render_bytes(16384, 16384, 5000) > 5e12  # the 5.4 TB request
    limit = inputs.memory_limit(torch.device("cpu"))
    assert limit is not None and limit > 2**28
    assert inputs.memory_limit(torch.device("meta")) is None


@pytest.mark.parametrize("renderer", [feature3dgs.render, reference.render], ids=["kernels", "reference"])
def test_renders_larger_than_memory_are_refused_before_allocating(renderer, monkeypatch):
    one = {k: v[:1] for k, v in scene(1, channels=5000).items()}
    with pytest.raises(ValueError, match=r"a 16384x16384 render with 5000 feature channels needs about "
                                         r"[\d.,]+ TiB .* more than the .* of the host's RAM"):
        renderer(**one, **{**CAM, "width": 16384, "height": 16384})
    # the limit is what decides: one byte short of the estimate refuses, the estimate passes
    need = inputs.render_bytes(40, 32, 4)
    monkeypatch.setattr(inputs, "memory_limit", lambda device: need - 1)
    with pytest.raises(ValueError, match="a 40x32 render with 4 feature channels"):
        renderer(**scene(), **CAM)
    monkeypatch.setattr(inputs, "memory_limit", lambda device: need)
    assert renderer(**scene(), **CAM).rgb.shape == (3, 32, 40)


def test_accepted_edge_values_agree_between_kernels_and_reference():
    """Values at the edges of what is accepted: tiny and huge (finite) scales, opacities of
    exactly 0 and 1, colours outside [0, 1], huge features, a principal point off the image."""
    s = scene(30, channels=3)
    s["scales"][0] = 1e-8
    s["scales"][1] = 50.0
    s["opacities"][2] = 1.0
    s["opacities"][3] = 0.0
    s["colors"][4] = torch.tensor([-2.0, 3.0, 0.5])
    s["features"][5] = 1e30
    cam = {**CAM, "K": intrinsics(40, 32, cx=-5.0, cy=40.0)}
    out_k, g_k = _grads(feature3dgs.render, s, cam)
    out_r, g_r = _grads(reference.render, s, cam)
    for a, b in ((out_k.rgb, out_r.rgb), (out_k.alpha, out_r.alpha), (out_k.depth, out_r.depth)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_k.features, out_r.features, atol=1e-5, rtol=1e-5)
    for name in ("means", "opacities", "colors"):
        num = (g_k[name] - g_r[name]).norm()
        assert num <= 1e-3 * max(1.0, float(g_r[name].norm())), name


def test_cameras_with_rounding_in_their_constant_entries_are_accepted():
    """A viewmat from torch.linalg.inv of a camera-to-world matrix has rounding noise in its last
    row; that (and a K with a rounding-size skew) is accepted and renders as the exact camera."""
    c2w = torch.linalg.inv(CAM["viewmat"].double())
    noisy = torch.linalg.inv(c2w).float()
    noisy[3, :3] += torch.tensor([3e-7, -2e-7, 1e-7])
    K = CAM["K"].clone()
    K[0, 1] = 1e-5
    exact = feature3dgs.render(**scene(), **CAM)
    out = feature3dgs.render(**scene(), **{**CAM, "viewmat": noisy, "K": K})
    torch.testing.assert_close(out.rgb, exact.rgb, atol=1e-4, rtol=0)
