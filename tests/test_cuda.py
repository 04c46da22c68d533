"""CUDA kernels against the CPU kernels (skipped without a GPU).

Forward within 1e-4, gradients within 1e-3 relative, on the CPU tests' scene set
and C in {1, 3, 16, 32, 33, 64, 128, 256, 512, 1000}; 1920x1080 images; a
1M-Gaussian smoke test; forward determinism. `-k small` selects the small
forward+backward used under compute-sanitizer.
"""

from __future__ import annotations

import pytest
import torch

import feature3dgs
from scenes import intrinsics, look_at_viewmat, random_scene

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not feature3dgs.backend_info()["cuda"],
    reason="needs a CUDA GPU and the CUDA kernels")

OUTPUTS = ("rgb", "features", "depth", "alpha")


def camera(width=64, height=48, eye=(0.4, -0.3, 3.0), **kw):
    return dict(viewmat=look_at_viewmat(eye), K=intrinsics(width, height, **kw), width=width, height=height)


def on(device, tensors: dict) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in tensors.items()}


def render_pair(scene: dict, cam: dict, **kwargs):
    """Renders on CPU and CUDA, backpropagates the same random weights, returns both."""
    results = []
    for device in ("cpu", "cuda"):
        leaves = {k: v.clone().to(device).requires_grad_(True) for k, v in scene.items()}
        extra = on(device, kwargs)
        out = feature3dgs.render(**leaves, **on(device, cam), **extra)
        g = torch.Generator().manual_seed(0)
        loss = 0.0
        for name in OUTPUTS:
            value = getattr(out, name)
            if value is not None:
                loss = loss + (value * torch.randn(value.shape, generator=g).to(device)).sum()
        loss.backward()
        results.append((out, leaves))
    return results


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, name: str, rel: float):
    a, b = a.detach().cpu(), b.detach().cpu()
    scale = b.abs().max().item()
    if scale == 0:
        assert a.abs().max().item() == 0, name
        return
    err = ((a - b).norm() / b.norm()).item()
    assert err < rel, f"{name}: relative error {err:.2e}"


def check(scene: dict, cam: dict, **kwargs):
    (cpu, leaves_c), (gpu, leaves_g) = render_pair(scene, cam, **kwargs)
    assert torch.equal(cpu.radii, gpu.radii.cpu())
    for name in OUTPUTS:
        a, b = getattr(gpu, name), getattr(cpu, name)
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a.detach().cpu(), b.detach(), atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")
    for k in scene:
        assert_close_rel(leaves_g[k].grad, leaves_c[k].grad, k, 1e-3)
    assert_close_rel(gpu.means2d.grad, cpu.means2d.grad, "means2d", 1e-3)
    return cpu, gpu


@pytest.mark.parametrize("channels", [1, 3, 16, 32, 33, 64, 128, 256, 512, 1000])
def test_feature_channels(channels):
    check(random_scene(300, seed=channels, channels=channels), camera())


@pytest.mark.parametrize("sh_degree", [None, 0, 1, 3])
def test_sh_and_background(sh_degree):
    scene = random_scene(400, seed=20, channels=5, sh_degree=sh_degree)
    check(scene, camera(), background=torch.tensor([0.2, 0.5, 0.9]))


def test_off_screen_behind_camera_odd_size_off_centre():
    scene = random_scene(600, seed=4, channels=9, spread=4.0)
    check(scene, camera(width=77, height=35, cx=30.3, cy=21.7),
          feature_background=torch.linspace(-1, 1, 9))


def test_equal_depth_and_tiny_huge():
    n = 60
    g = torch.Generator().manual_seed(7)
    means = torch.cat([torch.rand(n, 2, generator=g) * 0.6 - 0.3, torch.full((n, 1), 2.0)], dim=1)
    scene = dict(means=means, quats=torch.randn(n, 4, generator=g),
                 scales=torch.rand(n, 3, generator=g) * 0.2 + 0.05, opacities=torch.full((n,), 0.7),
                 colors=torch.rand(n, 3, generator=g), features=torch.randn(n, 17, generator=g))
    check(scene, dict(viewmat=torch.eye(4), K=intrinsics(48, 48), width=48, height=48))
    tiny = random_scene(100, seed=8, channels=2, scale_range=(-9.0, -8.0))
    huge = random_scene(6, seed=9, channels=2, scale_range=(0.5, 1.5))
    check({k: torch.cat([tiny[k], huge[k]]) for k in tiny}, camera())


def test_full_hd_image():
    scene = random_scene(20_000, seed=30, channels=32, scale_range=(-5.0, -3.5))
    check(scene, camera(width=1920, height=1080))


def test_small_forward_backward():
    """The case run under compute-sanitizer memcheck and racecheck."""
    check(random_scene(64, seed=1, channels=20, sh_degree=2), camera(width=40, height=24))


def test_empty_scene():
    scene = {k: v[:0] for k, v in random_scene(10, seed=0, channels=4).items()}
    out = feature3dgs.render(**on("cuda", scene), **on("cuda", camera()), background=torch.ones(3, device="cuda"))
    assert torch.equal(out.rgb.cpu(), torch.ones(3, 48, 64))


def test_one_million_gaussians_smoke():
    scene = random_scene(1_000_000, seed=2, channels=16, scale_range=(-6.5, -5.0))
    leaves = {k: v.cuda().requires_grad_(True) for k, v in scene.items()}
    out = feature3dgs.render(**leaves, **on("cuda", camera(width=1920, height=1080)))
    (out.rgb.sum() + out.features.sum()).backward()
    torch.cuda.synchronize()
    assert torch.isfinite(out.rgb).all() and out.alpha.mean() > 0.1
    assert torch.isfinite(leaves["means"].grad).all() and leaves["features"].grad.abs().sum() > 0


def test_forward_is_deterministic():
    scene = on("cuda", random_scene(5000, seed=3, channels=64))
    cam = on("cuda", camera(width=256, height=192))
    a = feature3dgs.render(**scene, **cam)
    b = feature3dgs.render(**scene, **cam)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.features, b.features)
    assert torch.equal(a.depth, b.depth) and torch.equal(a.alpha, b.alpha)
