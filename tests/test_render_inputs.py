"""render() input checking: clear errors, accepted variants, documented edge cases."""

from __future__ import annotations

import pytest
import torch

import feature3dgs
from feature3dgs.rendering import reference
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


def test_non_finite_camera_refused():
    bad = CAM["viewmat"].clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="viewmat contains NaN or Inf"):
        feature3dgs.render(**scene(), **{**CAM, "viewmat": bad})
    badK = CAM["K"].clone()
    badK[0, 0] = float("inf")
    with pytest.raises(ValueError, match="K contains NaN or Inf"):
        feature3dgs.render(**scene(), **{**CAM, "K": badK})


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


def test_non_finite_gaussians_are_culled_not_fatal():
    s = scene(30)
    s["means"][0, 1] = float("nan")
    s["quats"][1] = 0.0  # zero quaternion: no rotation defined
    s["scales"][2, 0] = float("inf")
    s["opacities"][3] = float("nan")
    out = feature3dgs.render(**s, **CAM)
    assert (out.radii[:3] == 0).all()
    assert torch.isfinite(out.rgb).all() and torch.isfinite(out.features).all()
    # NaN opacity: still projected, but invisible; the rest of the image is unaffected.
    s2 = scene(30)
    s2["opacities"][3] = 0.0
    for i in range(3):
        s2["opacities"][i] = 0.0
    ref = feature3dgs.render(**s2, **CAM)
    torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-6, rtol=0)


def test_nan_feature_propagates_only_where_the_gaussian_is():
    s = scene(30)
    out0 = feature3dgs.render(**s, **CAM)
    i = int(torch.argmax(out0.radii))
    s["features"][i, 0] = float("nan")
    out = feature3dgs.render(**s, **CAM)
    nan_pixels = torch.isnan(out.features[0])
    assert nan_pixels.any() and not nan_pixels.all()
    assert torch.isfinite(out.rgb).all()


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
