"""The CPU kernels' host block cache (csrc/cpu/host_block_cache.{h,cpp}).

The rasterizer's large outputs and scratch come from a cache of mapped blocks that
hands out uninitialised memory. What must hold:
- a reused block never leaks an earlier call's values: blocks released full of NaN
  give the same outputs and gradients, bit for bit, as a run without the cache, in
  every CPU path (a kernel that left an element unwritten would show a NaN);
- repeated renders are served from the cache (hits, no new misses), the cap
  (FEATURE3DGS_CPU_CACHE_MB) bounds what it keeps, 0 disables it, clear empties it;
- a bad FEATURE3DGS_CPU_CACHE_MB is refused with a message naming it.
"""

from __future__ import annotations

import io

import pytest
import torch

import feature3dgs
from feature3dgs.rendering import clear_cpu_cache, cpu_cache_info
from feature3dgs.rendering._backend import kernels
from scenes import random_scene
from test_cpu_dispatch import ISAS, camera, projected

# Large enough that the outputs and the feature gradients are cached blocks (>= 1 MiB).
WIDTH, HEIGHT, CHANNELS, N = 128, 96, 48, 6000


def case(seed: int = 0):
    """Kernel inputs and output gradients; the Gaussians sit right of x = 0.3, so a third of
    the image is empty (tiles and row segments that no Gaussian blends are written too)."""
    scene = random_scene(N, seed=seed, channels=CHANNELS)
    scene["means"][:, 0] = scene["means"][:, 0].abs() + 0.3
    cam = camera(WIDTH, HEIGHT)
    kin = projected(scene, cam)
    g = torch.Generator().manual_seed(seed + 1)
    d_out = [torch.randn(s, generator=g) for s in ((3, HEIGHT, WIDTH), (CHANNELS, HEIGHT, WIDTH),
                                                   (1, HEIGHT, WIDTH), (1, HEIGHT, WIDTH))]
    return kin, d_out


def forward_backward(kin, d_out):
    K = kernels()
    out = K.rasterize_forward(*kin, WIDTH, HEIGHT)
    grads = K.rasterize_backward(*kin[:6], WIDTH, HEIGHT, out[4], out[5], out[6], out[7], *d_out)
    return [t.clone() for t in out[:6]], [t.clone() for t in grads], out, grads


def poison(tensors) -> None:
    for t in tensors:
        if t.is_floating_point():
            t.fill_(float("nan"))
        else:
            t.fill_(-(2 ** 30))


@pytest.mark.parametrize("isa", ISAS)
def test_reused_blocks_leak_no_values(monkeypatch, isa):
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", isa)
    kin, d_out = case()
    monkeypatch.setenv("FEATURE3DGS_CPU_CACHE_MB", "0")
    want_out, want_grads, *_ = forward_backward(kin, d_out)
    assert kin[5].numel() * 4 >= 1 << 20 and want_out[1].numel() * 4 >= 1 << 20
    assert 0.1 < (want_out[4] == 1).float().mean() < 0.9, "the case must have empty and covered pixels"

    monkeypatch.delenv("FEATURE3DGS_CPU_CACHE_MB")
    clear_cpu_cache()
    for _ in range(3):
        got_out, got_grads, out, grads = forward_backward(kin, d_out)
        for name, a, b in zip(("rgb", "features", "depth", "alpha", "T", "last"), got_out, want_out):
            assert torch.equal(a, b), f"{isa}: {name} differs with the cache"
        for name, a, b in zip(("means2d", "conics", "colors", "opacities", "depths", "features"), got_grads,
                              want_grads):
            assert torch.equal(a, b), f"{isa}: d_{name} differs with the cache"
        # Back to the cache full of NaN: the next round must overwrite every element.
        poison(list(out[:6]) + list(grads))
        del out, grads
    assert cpu_cache_info()["hits"] > 0


def test_repeated_renders_hit_and_the_cap_bounds_it(monkeypatch):
    kin, d_out = case(seed=3)
    clear_cpu_cache()
    forward_backward(kin, d_out)  # the first call allocates; its blocks come back on release
    first = cpu_cache_info()
    assert first["misses"] > 0 and first["cached_bytes"] > 0
    forward_backward(kin, d_out)
    second = cpu_cache_info()
    assert second["misses"] == first["misses"], "a repeated render allocated new blocks"
    assert second["hits"] >= first["misses"]
    assert second["cached_bytes"] <= second["cap_bytes"]

    monkeypatch.setenv("FEATURE3DGS_CPU_CACHE_MB", "1")  # smaller than the features block
    forward_backward(kin, d_out)
    assert cpu_cache_info()["cached_bytes"] <= 1 << 20

    monkeypatch.setenv("FEATURE3DGS_CPU_CACHE_MB", "0")
    clear_cpu_cache()
    forward_backward(kin, d_out)
    info = cpu_cache_info()
    assert info["cap_bytes"] == 0 and info["cached_bytes"] == 0 and info["hits"] == 0

    monkeypatch.delenv("FEATURE3DGS_CPU_CACHE_MB")
    forward_backward(kin, d_out)
    assert cpu_cache_info()["cached_bytes"] > 0
    clear_cpu_cache()
    info = cpu_cache_info()
    assert info["cached_bytes"] == 0 and info["cached_blocks"] == 0


def test_tensors_from_the_cache_behave_like_torch_tensors():
    kin, _ = case(seed=5)
    out = kernels().rasterize_forward(*kin, WIDTH, HEIGHT)
    feats = out[1]
    feats.resize_(CHANNELS + 1, HEIGHT, WIDTH)  # grows through the cache's allocator
    feats[-1].fill_(2.0)
    assert torch.equal(feats[-1], torch.full((HEIGHT, WIDTH), 2.0))
    buf = io.BytesIO()
    torch.save(feats, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), feats)


@pytest.mark.parametrize("value", ["-1", "lots", "1.5"])
def test_bad_cap_is_refused(monkeypatch, value):
    kin, _ = case(seed=7)
    monkeypatch.setenv("FEATURE3DGS_CPU_CACHE_MB", value)
    with pytest.raises(ValueError, match="FEATURE3DGS_CPU_CACHE_MB"):
        kernels().rasterize_forward(*kin, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="FEATURE3DGS_CPU_CACHE_MB"):
        cpu_cache_info()


def test_render_through_the_public_api_uses_it():
    scene = random_scene(N, seed=9, channels=CHANNELS)
    cam = camera(WIDTH, HEIGHT)
    clear_cpu_cache()
    a = feature3dgs.render(**scene, **cam).features.clone()
    b = feature3dgs.render(**scene, **cam).features
    assert torch.equal(a, b)
    assert cpu_cache_info()["hits"] > 0


def test_a_forked_child_renders_with_a_cache_of_its_own():
    """A forked process (a DataLoader worker) gets an empty cache of its own (the parent's
    lock may be held by a thread that the child does not have) and renders the same bits;
    it runs the kernels on one thread (GNU OpenMP's pool of the parent would hang it)."""
    import multiprocessing as mp

    kin, d_out = case(seed=11)
    want, want_grads, *_ = forward_backward(kin, d_out)  # the parent's cache now holds blocks
    assert cpu_cache_info()["cached_bytes"] > 0
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_render, args=(kin, d_out, q))
    p.start()
    try:
        before, got, got_grads, after = q.get(timeout=120)
    finally:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0
    assert before["hits"] == before["misses"] == before["cached_bytes"] == 0, before
    assert after["misses"] > 0
    assert all(torch.equal(torch.from_numpy(a), b) for a, b in zip(got, want))
    assert all(torch.equal(torch.from_numpy(a), b) for a, b in zip(got_grads, want_grads))


def _child_render(kin, d_out, q):
    before = cpu_cache_info()
    got, got_grads, *_ = forward_backward(kin, d_out)
    q.put((before, [t.numpy() for t in got], [t.numpy() for t in got_grads], cpu_cache_info()))
