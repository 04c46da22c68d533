"""The CPU blend paths and the exact culling (csrc/cpu, csrc/include/f3d/cull.h).

- FEATURE3DGS_CPU_ISA selects the kernels, backend_info() reports them, bad values
  are refused with a message naming the variable.
- Every path renders the same image (to float rounding) and blends the very same
  (pixel, Gaussian) pairs.
- Culling changes no bit: outputs and gradients with and without it are equal, on
  scenes built to sit at the alpha >= 1/255 boundary, and a brute-force check of
  every culled tile and row segment against the blend's own alpha test finds none
  that the blend would use.
- The input tests pass in every path (run in a subprocess per path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import feature3dgs
from feature3dgs.rendering import _build as _build_config
from feature3dgs.rendering._backend import kernels
from feature3dgs.rendering.kernels import ProjectFunction as _Project
from feature3dgs.rendering.inputs import validate_render_inputs
from scenes import intrinsics, look_at_viewmat, random_scene

ISAS = feature3dgs.backend_info()["cpu_isas_available"]
OUTPUTS = ("rgb", "features", "depth", "alpha")


def camera(width=80, height=56, eye=(0.4, -0.3, 3.0)):
    return dict(viewmat=look_at_viewmat(eye), K=intrinsics(width, height), width=width, height=height)


def boundary_scene(n: int = 500, seed: int = 0, channels: int = 5) -> dict:
    """Gaussians whose alpha peaks near 1/255 (opacities in [1/255 / 1.5, 1.5 / 255] and a few
    strong ones), elongated ones (scale ratios up to 1e3) and large ones: the cases where a
    culling bound that is not conservative would drop a pixel."""
    g = torch.Generator().manual_seed(seed)
    scene = random_scene(n, seed=seed, channels=channels)
    k = n // 3
    scene["opacities"][:k] = (1 / 255) * torch.exp((torch.rand(k, generator=g) - 0.5) * 0.8)
    scene["opacities"][k:k + 10] = 1.0
    scales = scene["scales"]
    scales[k:2 * k, 0] *= 30.0
    scales[k:2 * k, 1] *= 0.03
    scales[2 * k:2 * k + 20] *= 8.0
    return scene


def projected(scene: dict, cam: dict):
    """The rasterizer's inputs for the scene (plain RGB colours): means2d, conics, colors,
    opacities, depths, features, radii."""
    inp = validate_render_inputs(**scene, **cam)
    assert inp.sh is None
    with torch.no_grad():
        means2d, conics, depths, radii, _ = _Project.apply(
            inp.means, inp.quats, inp.scales, torch.empty(0), 0, inp.viewmat, inp.K, cam["width"],
            cam["height"], 0.01)
    features = inp.features if inp.features is not None else torch.empty(0)
    return (means2d, conics, inp.colors.contiguous(), inp.opacities.contiguous(), depths,
            features.contiguous(), radii)


def render_and_grads(scene: dict, cam: dict, seed: int = 0):
    leaves = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    out = feature3dgs.render(**leaves, **cam)
    g = torch.Generator().manual_seed(seed)
    loss = sum((getattr(out, n) * torch.randn(getattr(out, n).shape, generator=g)).sum() for n in OUTPUTS)
    loss.backward()
    values = {n: getattr(out, n).detach() for n in OUTPUTS}
    values.update({f"d_{k}": v.grad for k, v in leaves.items()})
    values["d_means2d"] = out.means2d.grad
    return values


@pytest.mark.parametrize("isa", ISAS)
def test_env_selects_and_backend_info_reports(monkeypatch, isa):
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", isa)
    info = feature3dgs.backend_info()
    assert info["cpu_isa"] == isa
    assert info["cpu_isa_lanes"] == (1 if isa == "scalar" else {"avx512": 16}.get(isa, 8)) or isa == "baseline"
    scene = random_scene(60, seed=1, channels=2)
    stats = kernels().cpu_forward_stats(*projected(scene, camera()), 80, 56)[4]
    assert stats["isa"] == isa


@pytest.mark.parametrize("isa", ISAS)
def test_fma_probe_measures_each_path(monkeypatch, isa):
    """cpu_fma_gflops (the benchmarks' measured fp32 peak) must do the multiply-adds it
    counts: positive, and below what any x86 or Arm core could do (two FP pipes of the
    ISA's hardware width at 6 GHz per thread); a probe whose chains the compiler folded or
    dropped reports more (one did: 2x to 8x over)."""
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", isa)
    g = kernels().cpu_fma_gflops(0.05)
    width = {"scalar": 1, "baseline": 4, "avx2": 8, "avx512": 16}[isa]
    bound = feature3dgs.backend_info()["openmp_threads"] * width * 2 * 2 * 6.0
    assert 0 < g < bound, (isa, g, bound)
    with pytest.raises(ValueError, match="seconds"):
        kernels().cpu_fma_gflops(0.0)


def test_auto_is_the_widest(monkeypatch):
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", "auto")
    assert feature3dgs.backend_info()["cpu_isa"] == ISAS[-1]
    monkeypatch.delenv("FEATURE3DGS_CPU_ISA")
    assert feature3dgs.backend_info()["cpu_isa"] == ISAS[-1]
    assert ISAS[:2] == ["scalar", "baseline"]


def test_isa_modules_only_for_supported_cpus():
    from feature3dgs.rendering import _backend

    for name, how in _backend.isa_modules().items():
        assert kernels().cpu_isa_supported(name), name
        assert how in ("prebuilt", "jit") and name in ISAS
    assert not kernels().cpu_isa_supported("sse9")
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert "avx2" in ISAS  # an x86-64 build with AVX2 here must have registered it


@pytest.mark.parametrize("var, value", [("FEATURE3DGS_CPU_ISA", "avx9"), ("FEATURE3DGS_CPU_ISA", "AVX2 "),
                                        ("FEATURE3DGS_CPU_CULL", "maybe"),
                                        ("FEATURE3DGS_CPU_DETERMINISTIC", "2")])
def test_bad_switch_values_are_refused(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    scene = {k: v.requires_grad_(True) for k, v in random_scene(20, seed=2).items()}
    with pytest.raises(ValueError, match=var):  # the backward reads FEATURE3DGS_CPU_DETERMINISTIC
        feature3dgs.render(**scene, **camera()).rgb.sum().backward()


def test_unsupported_isa_is_refused(monkeypatch):
    missing = [i for i in ("avx2", "avx512") if i not in ISAS]
    if not missing:
        pytest.skip("every ISA is available on this machine")
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", missing[0])
    with pytest.raises(ValueError, match="available: scalar, baseline"):
        feature3dgs.render(**random_scene(20, seed=2), **camera())


def test_build_config_isa_modules(monkeypatch):
    import platform

    csrc = Path(__file__).resolve().parents[1] / "csrc"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    mods = _build_config.isa_modules(csrc)
    assert [m[0] for m in mods] == ["avx2", "avx512"]
    for name, src, flags in mods:
        assert src.is_file() and "-fopenmp" in flags and "-fvisibility=hidden" in flags
    assert "-mavx512f" in mods[1][2] and "-mavx512f" not in mods[0][2]
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert _build_config.isa_modules(csrc) == []  # the baseline kernels (NEON) serve
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("FEATURE3DGS_NO_ISA_MODULES", "1")
    assert _build_config.isa_modules(csrc) == []


@pytest.mark.parametrize("scene_fn", [lambda: random_scene(700, seed=3, channels=19),
                                      lambda: boundary_scene(600, seed=4, channels=3)])
def test_all_paths_agree_and_blend_the_same_pairs(monkeypatch, scene_fn):
    scene, cam = scene_fn(), camera()
    args = projected(scene, cam)
    results = {}
    for isa in ISAS:
        monkeypatch.setenv("FEATURE3DGS_CPU_ISA", isa)
        for cull in ("0", "1"):
            monkeypatch.setenv("FEATURE3DGS_CPU_CULL", cull)
            *outs, stats = kernels().cpu_forward_stats(*args, cam["width"], cam["height"])
            results[isa, cull] = outs, stats
    ref_outs, ref_stats = results["scalar", "0"]
    assert ref_stats["contributing_pairs"] > 0
    for (isa, cull), (outs, stats) in results.items():
        # Culling blends exactly the same pairs; another exp (the SIMD paths use ATen's) may
        # move a pixel that sits on alpha = 1/255 to one side (1 in 19 M on the benchmark scene).
        assert stats["contributing_pairs"] == results[isa, "0"][1]["contributing_pairs"], (isa, cull)
        assert abs(stats["contributing_pairs"] - ref_stats["contributing_pairs"]) <= 2, (isa, cull)
        assert stats["bbox_tile_pairs"] == ref_stats["bbox_tile_pairs"]
        if cull == "1":
            assert stats["tile_pairs"] < stats["bbox_tile_pairs"], "nothing culled: the test is vacuous"
            assert stats["visited_pairs"] < ref_stats["visited_pairs"]
        else:
            assert stats["tile_pairs"] == stats["bbox_tile_pairs"]
        for a, b in zip(outs, ref_outs):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_feature_gemm_phases_are_timed_where_they_run(monkeypatch, isa):
    """cpu_forward_stats times the feature GEMM's gather and products and counts the
    lanes it computes (what benchmarks/cpu_throughput.py reports as `feature_gemm_*`):
    nonzero in the SIMD paths from one vector of channels up, zero where the features
    are blended across pixels (fewer channels than lanes) or by the scalar kernels. The
    lanes are whole list blocks of 2 x 8 pixels (two one-row chunks with 8 lanes, one
    2 x 8 chunk with 16) and hold every blended pair."""
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", isa)
    cam = camera()
    for channels in (3, 19):
        *_, stats = kernels().cpu_forward_stats(*projected(random_scene(400, seed=7, channels=channels), cam),
                                                cam["width"], cam["height"])
        gemm = isa != "scalar" and channels >= stats["lanes"]
        assert (stats["feature_gemm_thread_s"] > 0) == gemm, (channels, stats)
        assert (stats["feature_gather_thread_s"] > 0) == gemm, (channels, stats)
        assert stats["feature_gemm_thread_s"] < 10 and stats["feature_gather_thread_s"] < 10
        lanes = stats["feature_gemm_lanes"]
        assert (lanes > 0) == gemm, (channels, stats)
        if gemm:
            assert lanes % 16 == 0 and stats["contributing_pairs"] <= lanes < 16 * stats["contributing_pairs"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", [5, 6])
def test_culling_changes_no_bit(monkeypatch, isa, seed):
    monkeypatch.setenv("FEATURE3DGS_CPU_ISA", isa)
    scene, cam = boundary_scene(500, seed=seed, channels=4 + 13 * (seed - 5)), camera()
    monkeypatch.setenv("FEATURE3DGS_CPU_CULL", "1")
    culled = render_and_grads(scene, cam)
    monkeypatch.setenv("FEATURE3DGS_CPU_CULL", "0")
    full = render_and_grads(scene, cam)
    for name in full:
        assert torch.equal(culled[name], full[name]), f"{isa}: {name} changed by the culling"


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_no_culled_tile_or_segment_has_a_contributing_pixel(seed):
    scene, cam = boundary_scene(900, seed=seed, channels=1), camera(width=96, height=72)
    m2d, conics, _, opacities, _, _, radii = projected(scene, cam)
    for lanes in (4, 8, 16):
        c = kernels().cpu_check_culling(m2d, conics, opacities, radii, 96, 72, lanes)
        assert c["tiles_culled"] > 50 and c["segments_culled"] > 200, c  # the bound does cull
        assert c["tiles_wrong"] == 0 and c["segments_wrong"] == 0 and c["pixels_wrong"] == 0, c


def test_culling_bound_at_the_threshold():
    """Single Gaussians swept across the alpha = 1/255 level set: the pixel just inside is never
    culled, and Gaussians far enough below the threshold are culled everywhere."""
    n = 400
    g = torch.Generator().manual_seed(10)
    means2d = torch.rand(n, 2, generator=g) * 48 + 8
    a = torch.rand(n, generator=g) * 2 + 0.01
    c = torch.rand(n, generator=g) * 2 + 0.01
    b = (torch.rand(n, generator=g) * 2 - 1) * torch.sqrt(a * c) * 0.999
    conics = torch.stack([a, b, c], 1).contiguous()
    opacities = (1 / 255) * torch.exp(torch.linspace(-0.01, 3.0, n))
    radii = torch.full((n,), 40, dtype=torch.int32)
    res = kernels().cpu_check_culling(means2d, conics, opacities.contiguous(), radii, 64, 64, 16)
    assert res["pixels_wrong"] == 0 and res["tiles_culled"] > 0, res
    low = kernels().cpu_check_culling(means2d, conics, (opacities * 0 + 0.5 / 255).contiguous(), radii, 64, 64, 16)
    assert low["pixels_wrong"] == 0 and low["tiles_culled"] == (radii > 0).sum().item() * 16, low


@pytest.mark.parametrize("isa", ISAS)
def test_input_tests_pass_in_every_path(isa):
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, FEATURE3DGS_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        str(tests / "test_render_inputs.py")], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.slow
def test_jit_build_compiles_and_registers_the_isa_modules(tmp_path):
    """The just-in-time path (a plain `pip install .`) builds the ISA modules this CPU supports."""
    root = Path(__file__).resolve().parents[1]
    code = ("from feature3dgs.rendering import _backend; m = _backend._jit_compile(); _backend._register_isa_modules(m, True); "
            "print(sorted(_backend._isa_modules.items()), m.build_info()['cpu_isas_available'])")
    env = dict(os.environ, FEATURE3DGS_CPU_ONLY="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    want = [i for i in ("avx2", "avx512") if kernels().cpu_isa_supported(i)]
    for isa in want:
        assert f"('{isa}', 'jit')" in r.stdout and f"'{isa}'" in r.stdout.split("]")[-2], r.stdout
        assert f"compiling the {isa} CPU kernels just-in-time" in r.stderr


def test_no_wide_instructions_leak_into_the_baseline_module():
    """feature3dgs._C (scalar and baseline paths, bindings) holds no AVX/AVX-512 register use, and
    each ISA module exports nothing but its init: wider code cannot run on a CPU without it."""
    import importlib
    import shutil

    if shutil.which("objdump") is None or shutil.which("nm") is None:
        pytest.skip("binutils (objdump, nm) not installed")
    main = Path(kernels().__file__)
    if not main.name.startswith("_C"):
        pytest.skip("a JIT build: the check is for the installed modules")
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(main)], capture_output=True, text=True).stdout
    assert "%ymm" not in dis and "%zmm" not in dis
    from feature3dgs.rendering import _backend

    for name in _backend.isa_modules():
        mod = Path(importlib.import_module(f"feature3dgs._cpu_{name}").__file__)
        lines = subprocess.run(["nm", "-D", "--defined-only", str(mod)], capture_output=True,
                               text=True).stdout.splitlines()
        assert [line.split()[-1] for line in lines] == [f"PyInit__cpu_{name}"], lines
