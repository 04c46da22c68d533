"""CPU rasterizer throughput on a trained scene, against this machine's fp32 peak.

The scene: the built-in synthetic scene trained (RGB, --train-steps, 100k random
initial Gaussians, seed 0), cached as a PLY; rendered at --size x --size from test
view 0 with random seeded features of C channels. For each C (3, 64, 256) and each
CPU path it reports, in one run:

- pairs: (tile, Gaussian) pairs of the tile rectangles and after the exact culling;
  (pixel, Gaussian) pairs visited (alpha evaluated) and contributing (blended);
- the rasterizer kernels alone (forward, backward) and feature3dgs.render (forward,
  forward+backward), wall and CPU (process) time, medians of --repeats runs;
- ns per visited and per contributing pair; the feature blend's GFLOP/s: useful
  flops (2 C per contributing pair forward; 4 C backward: dL/dv . f and
  dL/df += w dL/dout) over the time the features add to the kernel (the same
  kernel timed with C and with no features, in turn, the least CPU time of each:
  `feature_stage_*`),
  over the forward's feature GEMM alone (the SIMD paths from one vector of channels up:
  the products and their output stores, without the blend loop that records the
  weights and the gather of the tile's feature rows, both timed apart, min over
  --repeats counted runs: `feature_gemm_*`, `feature_gather_ms`),
  and over the whole kernel's time (`feature_gflops_*`), each as a fraction of the
  fp32 peak: the larger of the formula from the detected ISA, threads and clock, and the
  multiply-add throughput measured on this machine (the OS may report a nominal clock
  below the one the cores run at); both are printed and recorded;
- ratios to the path of before this work: FEATURE3DGS_CPU_ISA=scalar, culling off,
  atomic backward (`legacy`).

    python benchmarks/cpu_throughput.py                     # full run, writes JSON
    python benchmarks/cpu_throughput.py --quick             # small smoke run
    python benchmarks/cpu_throughput.py --baseline-checkout ../old   # also against another revision

--baseline-checkout DIR (a built checkout: git worktree add ../old REV; python setup.py
build_ext --inplace there) also times the widest path's kernels with and without features
in subprocesses, alternately this checkout's package and DIR's (same script, same scene),
--baseline-rounds times, and reports the feature stages of both and their ratios.

The machine may be shared: the CPU-time figures are less disturbed by other load
than wall time; the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# The package to measure: this checkout's, or (the --baseline-checkout subprocesses) another's.
PACKAGE_ROOT = Path(os.environ.get("FEATURE3DGS_BENCH_PACKAGE", ROOT))
sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import feature3dgs  # noqa: E402  (before bench_utils, which puts this checkout first on the path)
from bench_utils import cpuinfo_values, git_revision, write_result  # noqa: E402
from feature3dgs.rendering._backend import kernels  # noqa: E402

SCENE_VERSION = "cpu_throughput_scene_v1"
CHANNELS = [3, 64, 256]
# (label, FEATURE3DGS_CPU_ISA, CULL, DETERMINISTIC)
LEGACY = ("legacy", "scalar", "0", "0")


def paths() -> list[tuple[str, str, str, str]]:
    """legacy, the scalar kernels with culling, each SIMD path, and the widest with the atomic
    backward (the cost of determinism)."""
    avail = feature3dgs.backend_info()["cpu_isas_available"]
    return ([LEGACY, ("scalar+cull", "scalar", "1", "1")] + [(isa, isa, "1", "1") for isa in avail if isa != "scalar"]
            + [(f"{avail[-1]}-atomic", avail[-1], "1", "0")])


@contextmanager
def cpu_path(isa: str, cull: str, det: str):
    keys = ("FEATURE3DGS_CPU_ISA", "FEATURE3DGS_CPU_CULL", "FEATURE3DGS_CPU_DETERMINISTIC")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict(zip(keys, (isa, cull, det))))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trained_scene(steps: int, cache: Path):
    """The trained built-in scene's Gaussians (cached PLY) and its test view 0."""
    from feature3dgs.data import builtin_scene, load_scene
    from feature3dgs.model.ply import load_ply, save_ply
    from feature3dgs.run import fit

    scene = load_scene(builtin_scene())
    path = cache / f"{SCENE_VERSION}-{steps}.ply"
    if not path.is_file():
        print(f"training the built-in scene for {steps} steps (once; cached in {path}) ...", flush=True)
        t0 = time.perf_counter()
        trainer = fit(scene, None, iterations=steps, device="cpu", lpips=None, tensorboard=False,
                      progress=False, save_test_renders=False, eval_every=0, checkpoint_every=0,
                      init_random_points=100_000, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_ply(trainer.model, path)
        print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return load_ply(path), scene.test_views[0].camera


def clock_ghz() -> tuple[float, str]:
    for f in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",
              "/sys/devices/system/cpu/cpu0/cpufreq/base_frequency"):
        try:
            return int(Path(f).read_text()) / 1e6, f
        except (OSError, ValueError):
            pass
    try:
        mhz = [float(v) for v in cpuinfo_values("cpu MHz")]
        if mhz:
            return max(mhz) / 1e3, "/proc/cpuinfo cpu MHz (max over cores)"
    except ValueError:
        pass
    return 2.0, "unknown (assumed 2.0 GHz)"


def measured_fma_gflops(isa: str) -> float:
    """The fp32 multiply-add throughput that the `isa` kernels' own code reaches on all
    threads (independent FMA chains for 1 s, feature3dgs._C.cpu_fma_gflops)."""
    with cpu_path(isa, "1", "1"):
        return float(kernels().cpu_fma_gflops(1.0))


def cpu_vendor_family() -> tuple[str, int]:
    """/proc/cpuinfo's vendor_id and cpu family of the first core ("", -1 where unknown)."""
    vendors, families = cpuinfo_values("vendor_id"), cpuinfo_values("cpu family")
    try:
        family = int(families[0]) if families else -1
    except ValueError:
        family = -1
    return (vendors[0] if vendors else ""), family


def fma_units(isa: str) -> tuple[int, str]:
    """FMA instructions of `isa`'s width that one core issues per cycle, and why: two for AVX2
    and AVX-512 on server x86 cores since Haswell / Skylake-SP, except AMD Zen 4 (family 25),
    which runs a 512-bit FMA as two halves on its two 256-bit pipes (so one per cycle: the
    same flops per cycle as AVX2)."""
    vendor, family = cpu_vendor_family()
    if isa == "avx512" and vendor == "AuthenticAMD" and family == 25:
        return 1, "AMD family 25 (Zen 4): 512-bit FMAs on two 256-bit pipes"
    return 2, "two FMA pipes of the ISA's width"


def fp32_peak(isa: str, threads: int, measured: float) -> dict:
    """The larger of: threads x FMA units x lanes x 2 flops x clock (fma_units: two FMA units
    per core, one for AVX-512 on Zen 4; SSE2 baseline 4 lanes, scalar 1), and the throughput
    measured on this machine (`measured`). The clock that the OS reports may be the nominal
    one, below what the cores run at: the measured figure then exceeds the formula, and is
    the limit to compare against."""
    lanes = {"avx512": 16, "avx2": 8, "baseline": 4, "scalar": 1}[isa]
    units, units_source = fma_units(isa)
    ghz, source = clock_ghz()
    nominal = threads * units * lanes * 2 * ghz
    gflops = max(nominal, measured)
    return dict(isa=isa, threads=threads, fma_units=units, fma_units_source=units_source, lanes=lanes, ghz=ghz,
                clock_source=source, nominal_gflops=nominal, measured_gflops=measured, gflops=gflops,
                formula=(f"max({threads} threads x {units} FMA units ({units_source}) x {lanes} lanes x 2 flops x "
                         f"{ghz:.2f} GHz = {nominal:.1f}, measured {measured:.1f} ({isa} FMA chains on {threads} "
                         f"threads, 1 s)) = {gflops:.1f} GFLOP/s"))


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU (process) ms."""
    wall, cpu, _ = timed_in_turn([fn], repeats)[0]
    return wall, cpu


def timed_in_turn(fns, repeats: int) -> list[tuple[float, float, float]]:
    """Per function: median wall ms, median CPU ms and minimum CPU ms, the functions run in
    turn (a, b, a, b, ...), so that a difference of two of them sees the same machine load."""
    for fn in fns:
        fn()
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[i].append(time.process_time() - c0)
            wall[i].append(time.perf_counter() - w0)
    return [(statistics.median(w) * 1e3, statistics.median(c) * 1e3, min(c) * 1e3) for w, c in zip(wall, cpu)]


def stage_ms(with_features: float, without: float) -> float | None:
    """What the features add to a kernel's time, or None where that is below 5% of the
    kernel's time (timing noise, not a figure)."""
    stage = with_features - without
    return stage if stage > 0.05 * with_features else None


def render_args(model, camera, channels: int, size: int) -> dict:
    g = torch.Generator().manual_seed(channels)
    cam = camera.scaled(size / camera.width)
    with torch.no_grad():
        args = dict(means=model.means.detach(), quats=model.quats.detach(), scales=model.scales.detach(),
                    opacities=model.opacities.detach(), colors=model.sh.detach(),
                    features=torch.randn(model.means.shape[0], channels, generator=g))
    return args, cam


def kernel_inputs(model, camera, C: int, size: int):
    """The rasterizer kernels' inputs for the scene with C random feature channels, the same
    without features, and the camera."""
    from feature3dgs.rendering.inputs import validate_render_inputs
    from feature3dgs.rendering.kernels import ProjectFunction

    rargs, cam = render_args(model, camera, C, size)
    inp = validate_render_inputs(**rargs, viewmat=cam.viewmat, K=cam.K, width=cam.width, height=cam.height)
    with torch.no_grad():
        sh = inp.sh if inp.sh is not None else torch.empty(0)
        m2d, conics, depths, radii, sh_colors = ProjectFunction.apply(
            inp.means, inp.quats, inp.scales, sh, inp.sh_degree, inp.viewmat, inp.K, cam.width,
            cam.height, inp.near)
    colors = (inp.colors if inp.sh is None else sh_colors).contiguous()
    kin = (m2d, conics, colors, inp.opacities.contiguous(), depths, inp.features.contiguous(), radii)
    return kin, kin[:5] + (torch.empty(0),) + kin[6:], rargs, cam


def kernel_times(kin, kin0, cam, repeats: int):
    """(forward, forward without features, backward, backward without features): each
    timed_in_turn's (median wall, median CPU, least CPU) ms, in the CPU path of the
    environment (cpu_path)."""
    K = kernels()
    W, H = cam.width, cam.height
    out = K.rasterize_forward(*kin, W, H)
    gr = [torch.randn_like(out[i]) for i in range(4)]
    out0 = K.rasterize_forward(*kin0, W, H)
    g0 = torch.empty(0)
    kf, kf0 = timed_in_turn([lambda: K.rasterize_forward(*kin, W, H),
                             lambda: K.rasterize_forward(*kin0, W, H)], repeats)
    kb, kb0 = timed_in_turn([
        lambda: K.rasterize_backward(*kin[:6], W, H, out[4], out[5], out[6], out[7], gr[0], gr[1], gr[2], gr[3]),
        lambda: K.rasterize_backward(*kin0[:6], W, H, out0[4], out0[5], out0[6], out0[7], gr[0], g0, gr[2],
                                     gr[3])], repeats)
    return kf, kf0, kb, kb0


def stage_times(args, threads: int) -> dict:
    """The widest path's kernels with and without features per C (least CPU ms / threads)."""
    model, camera = trained_scene(args.train_steps, args.cache)
    best = feature3dgs.backend_info()["cpu_isas_available"][-1]
    rows = []
    with cpu_path(best, "1", "1"):
        for C in args.channels:
            kin, kin0, _, cam = kernel_inputs(model, camera, C, args.size)
            kf, kf0, kb, kb0 = kernel_times(kin, kin0, cam, args.repeats)
            rows.append(dict(channels=C, fwd_ms=kf[2] / threads, fwd_no_features_ms=kf0[2] / threads,
                             bwd_ms=kb[2] / threads, bwd_no_features_ms=kb0[2] / threads))
    return dict(git=git_revision(PACKAGE_ROOT), isa=best, rows=rows)


def against_baseline(args, checkout: Path) -> dict:
    """Feature stages of this checkout's package and checkout's, from --baseline-rounds
    alternating subprocesses of this script (least of all rounds)."""
    checkout = checkout.resolve()
    if not (checkout / "feature3dgs" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-checkout {checkout}: no feature3dgs package there")
    runs: dict[str, list[dict]] = {"this": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.baseline_rounds):
            for who, root in (("this", ROOT), ("baseline", checkout)):
                out = Path(tmp) / f"{who}-{r}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--stage-times-only", "--out", str(out),
                       "--train-steps", str(args.train_steps), "--size", str(args.size), "--repeats",
                       str(args.repeats), "--cache", str(args.cache), "--channels", *map(str, args.channels)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                env = dict(os.environ, FEATURE3DGS_BENCH_PACKAGE=str(root), PYTHONPATH=str(root))
                p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
                if p.returncode != 0 or not out.is_file():
                    raise SystemExit(f"the stage timing with {root} failed:\n{(p.stdout + p.stderr)[-3000:]}")
                runs[who].append(json.loads(out.read_text()))
    keys = ("fwd_ms", "fwd_no_features_ms", "bwd_ms", "bwd_no_features_ms")
    rows = []
    for i, C in enumerate(args.channels):
        row = dict(channels=C)
        for who in runs:
            best = {k: min(run["rows"][i][k] for run in runs[who]) for k in keys}
            row[who] = dict(best, fwd_stage_ms=stage_ms(best["fwd_ms"], best["fwd_no_features_ms"]),
                            bwd_stage_ms=stage_ms(best["bwd_ms"], best["bwd_no_features_ms"]))
        for k in ("fwd_stage_ms", "bwd_stage_ms", "fwd_ms", "bwd_ms"):
            t, b = row["this"][k], row["baseline"][k]
            row[f"speedup_{k}"] = b / t if t is not None and b is not None else None
        rows.append(row)
    return dict(checkout=str(checkout), git=runs["baseline"][0]["git"], isa=runs["this"][0]["isa"],
                rounds=args.baseline_rounds, rows=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512, help="render size (square)")
    parser.add_argument("--channels", type=int, nargs="*", default=CHANNELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("FEATURE3DGS_CACHE", Path.home() / ".cache" / "feature3dgs")) / "bench")
    parser.add_argument("--quick", action="store_true", help="30 training steps, 128 px, C=3, 1 repeat")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--baseline-checkout", type=Path, default=None,
                        help="also compare the widest path's feature stages with this built checkout's")
    parser.add_argument("--baseline-rounds", type=int, default=3)
    parser.add_argument("--stage-times-only", action="store_true", help=argparse.SUPPRESS)  # the subprocesses
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.size, args.channels, args.repeats = 30, 128, [3], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.stage_times_only:
        write_result(args.out, stage_times(args, threads))
        return 0
    load_before = os.getloadavg()

    model, camera = trained_scene(args.train_steps, args.cache)
    n = model.means.shape[0]
    info = feature3dgs.backend_info()
    best = info["cpu_isas_available"][-1]
    measured = {isa: measured_fma_gflops(isa) for isa in info['cpu_isas_available']}
    peak = fp32_peak(best, threads, measured[best])
    print(f"feature3dgs {info['version']}, git {git_revision()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {threads} threads, load average {load_before[0]:.1f}")
    print(f"scene: built-in, trained {args.train_steps} steps, {n} Gaussians, {args.size}x{args.size}, test view 0")
    print(f"fp32 peak ({best}): {peak['formula']} (clock from {peak['clock_source']})")

    rows = []
    header = (f"{'C':>4} {'path':>12} | {'tile pairs':>10} {'visited':>11} {'contrib':>11} | "
              f"{'k fwd':>7} {'k bwd':>7} ms cpu | {'fwd':>7} {'fwd+bwd':>8} ms wall ({'cpu':>7}) | "
              f"{'ns/visit':>8} {'GF/s f':>7} {'%pk':>5} {'GF/s b':>7} {'%pk':>5} | "
              f"{'stage f':>7} {'%pk':>5} {'stage b':>7} {'%pk':>5} | {'gemm f':>6} {'%pk':>5} {'dense':>5} | {'x fwd':>6} {'x f+b':>6}")
    print(header)
    print("-" * len(header))
    for C in args.channels:
        # The rasterizer's own inputs, for timing its kernels alone.
        kin, kin0, rargs, cam = kernel_inputs(model, camera, C, args.size)
        render_kw = dict(viewmat=cam.viewmat, K=cam.K, width=cam.width, height=cam.height)
        K = kernels()
        base = None
        for label, isa, cull, det in paths():
            with cpu_path(isa, cull, det):
                # The pair counts from one run; the GEMM's phase times, where it runs, least of --repeats.
                counted = [K.cpu_forward_stats(*kin, cam.width, cam.height)[-1]]
                if counted[0]["feature_gemm_thread_s"] > 0:
                    counted += [K.cpu_forward_stats(*kin, cam.width, cam.height)[-1] for _ in range(args.repeats - 1)]
                stats = counted[0]
                gather_s = min(c["feature_gather_thread_s"] for c in counted)
                gemm_s = min(c["feature_gemm_thread_s"] for c in counted)
                # With C channels and without features, in turn (the feature stage is their difference).
                kf, kf0, kb, kb0 = kernel_times(kin, kin0, cam, args.repeats)

                def fwd():
                    with torch.no_grad():
                        feature3dgs.render(**rargs, **render_kw)

                def fwd_bwd():
                    leaves = {k: (v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v)
                              for k, v in rargs.items()}
                    o = feature3dgs.render(**leaves, **render_kw)
                    (o.rgb.sum() + o.features.sum() + 1e-3 * o.depth.sum()).backward()

                rf = timed(fwd, args.repeats)
                rfb = timed(fwd_bwd, args.repeats)
            contrib = stats["contributing_pairs"]
            path_peak = fp32_peak(isa, threads, measured[isa])["gflops"]
            row = dict(channels=C, path=label, isa=isa, cull=cull == "1", deterministic=det == "1",
                       n_gaussians=n, width=cam.width, height=cam.height, **{k: stats[k] for k in
                       ("bbox_tile_pairs", "tile_pairs", "visited_pairs", "contributing_pairs")},
                       kernel_fwd_ms_wall=kf[0], kernel_fwd_ms_cpu=kf[1], kernel_bwd_ms_wall=kb[0],
                       kernel_bwd_ms_cpu=kb[1], kernel_fwd_no_features_ms_cpu=kf0[1],
                       kernel_bwd_no_features_ms_cpu=kb0[1], kernel_fwd_ms_cpu_min=kf[2], kernel_bwd_ms_cpu_min=kb[2],
                       kernel_fwd_no_features_ms_cpu_min=kf0[2], kernel_bwd_no_features_ms_cpu_min=kb0[2],
                       render_fwd_ms_wall=rf[0], render_fwd_ms_cpu=rf[1], render_fwd_bwd_ms_wall=rfb[0],
                       render_fwd_bwd_ms_cpu=rfb[1])
            # Per pair and GFLOP/s from wall time of the kernels with `threads` threads.
            row["ns_per_visited_pair_fwd"] = kf[0] * 1e6 / max(stats["visited_pairs"], 1)
            row["ns_per_contributing_pair_fwd"] = kf[0] * 1e6 / max(contrib, 1)
            row["ns_per_visited_pair_fwd_bwd"] = (kf[0] + kb[0]) * 1e6 / max(stats["visited_pairs"], 1)
            row["feature_gflops_fwd"] = 2 * C * contrib / (kf[0] * 1e6)
            row["feature_gflops_bwd"] = 4 * C * contrib / (kb[0] * 1e6)
            row["feature_peak_fraction_fwd"] = row["feature_gflops_fwd"] / peak["gflops"]
            row["feature_peak_fraction_bwd"] = row["feature_gflops_bwd"] / peak["gflops"]
            # The same from CPU time (threads x the time each thread ran), less disturbed by
            # other load on a shared machine.
            row["feature_gflops_fwd_cpu"] = 2 * C * contrib / (kf[1] / threads * 1e6)
            row["feature_gflops_bwd_cpu"] = 4 * C * contrib / (kb[1] / threads * 1e6)
            row["feature_peak_fraction_fwd_cpu"] = row["feature_gflops_fwd_cpu"] / peak["gflops"]
            row["feature_peak_fraction_bwd_cpu"] = row["feature_gflops_bwd_cpu"] / peak["gflops"]
            # The feature stage: what the C channels add to each kernel (CPU time / threads; the
            # least of the runs in turn with and without features).
            for d, t, t0, flops in (("fwd", kf[2], kf0[2], 2), ("bwd", kb[2], kb0[2], 4)):
                row[f"feature_stage_ms_{d}"] = (t - t0) / threads
                stage = stage_ms(t / threads, t0 / threads)  # None: timing noise, no figure
                ok = stage is not None
                row[f"feature_stage_gflops_{d}"] = flops * C * contrib / (stage * 1e6) if ok else None
                row[f"feature_stage_peak_fraction_{d}"] = row[f"feature_stage_gflops_{d}"] / peak["gflops"] if ok else None
            # The forward's feature GEMM alone (thread seconds / threads); 0 where it is not used.
            row["feature_gather_ms"] = gather_s * 1e3 / threads
            row["feature_gemm_ms"] = gemm_s * 1e3 / threads
            row["feature_gemm_gflops_fwd"] = 2 * C * contrib / (gemm_s / threads * 1e9) if gemm_s > 0 else None
            row["feature_gemm_peak_fraction_fwd"] = (row["feature_gemm_gflops_fwd"] / peak["gflops"]
                                                     if gemm_s > 0 else None)
            # The share of the GEMM's lanes that carry a weight (blended pairs / lanes computed).
            row["feature_gemm_lanes"] = stats["feature_gemm_lanes"]
            row["feature_gemm_lane_density"] = contrib / row["feature_gemm_lanes"] if row["feature_gemm_lanes"] else None
            row["path_peak_gflops"] = path_peak
            if base is None:
                base = row
            if label.endswith("-atomic"):
                det_row = next(r for r in rows if r["channels"] == C and r["path"] == isa)
                row["determinism_cost_kernel_bwd_cpu"] = det_row["kernel_bwd_ms_cpu"] / row["kernel_bwd_ms_cpu"] - 1
            for key in ("kernel_fwd_ms_cpu", "kernel_bwd_ms_cpu", "render_fwd_ms_wall", "render_fwd_bwd_ms_wall",
                        "render_fwd_ms_cpu", "render_fwd_bwd_ms_cpu"):
                row[f"speedup_{key}"] = base[key] / row[key]
            rows.append(row)

            def stage(d: str) -> str:
                g = row[f"feature_stage_gflops_{d}"]
                return f"{'-':>7} {'-':>5}" if g is None else f"{g:7.1f} {100 * row[f'feature_stage_peak_fraction_{d}']:4.1f}%"
            def gemm() -> str:
                g, dense = row["feature_gemm_gflops_fwd"], row["feature_gemm_lane_density"]
                d = f"{'-':>5}" if dense is None else f"{100 * dense:4.0f}%"
                return f"{'-':>6} {'-':>5} {d}" if g is None else f"{g:6.1f} {100 * row['feature_gemm_peak_fraction_fwd']:4.1f}% {d}"
            print(f"{C:>4} {label:>12} | {stats['tile_pairs']:>10} {stats['visited_pairs']:>11} {contrib:>11} | "
                  f"{kf[1]:7.0f} {kb[1]:7.0f} ms cpu | {rf[0]:7.0f} {rfb[0]:8.0f} ms wall ({rfb[1]:7.0f}) | "
                  f"{row['ns_per_visited_pair_fwd']:8.2f} {row['feature_gflops_fwd']:7.1f} "
                  f"{100 * row['feature_peak_fraction_fwd']:4.1f}% {row['feature_gflops_bwd']:7.1f} "
                  f"{100 * row['feature_peak_fraction_bwd']:4.1f}% | {stage('fwd')} {stage('bwd')} | {gemm()} | "
                  f"{row['speedup_render_fwd_ms_cpu']:5.2f}x "
                  f"{row['speedup_render_fwd_bwd_ms_cpu']:5.2f}x", flush=True)
    baseline = None
    if args.baseline_checkout:
        baseline = against_baseline(args, args.baseline_checkout)
        print(f"\nagainst {baseline['checkout']} (git {baseline['git']}), {baseline['isa']}, least of "
              f"{baseline['rounds']} alternating subprocesses each; ms per thread:")
        print(f"{'C':>4} | {'stage fwd':>9} {'baseline':>9} {'x':>6} | {'stage bwd':>9} {'baseline':>9} {'x':>6} | "
              f"{'x fwd':>6} {'x bwd':>6}")
        def ms(v: float | None) -> str:
            return f"{'-':>9}" if v is None else f"{v:9.1f}"

        def ratio(v: float | None) -> str:
            return f"{'-':>6}" if v is None else f"{v:5.2f}x"
        for r in baseline["rows"]:
            t, b = r["this"], r["baseline"]
            print(f"{r['channels']:>4} | {ms(t['fwd_stage_ms'])} {ms(b['fwd_stage_ms'])} {ratio(r['speedup_fwd_stage_ms'])} | "
                  f"{ms(t['bwd_stage_ms'])} {ms(b['bwd_stage_ms'])} {ratio(r['speedup_bwd_stage_ms'])} | "
                  f"{ratio(r['speedup_fwd_ms'])} {ratio(r['speedup_bwd_ms'])}")
    load_after = os.getloadavg()
    print(f"bbox tile pairs (no culling) at C={args.channels[0]}: {rows[0]['bbox_tile_pairs']}; "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}. Ratios (x) are CPU-time "
          "ratios of feature3dgs.render against the legacy path.")
    result = dict(benchmark="cpu_throughput", device="cpu", device_name=platform.processor() or platform.machine(),
                  torch=torch.__version__, feature3dgs=info, git=git_revision(), date=time.strftime("%Y-%m-%d"),
                  threads=threads, repeats=args.repeats, train_steps=args.train_steps, n_gaussians=n,
                  size=args.size, fp32_peak=peak, load_average_before=load_before, load_average_after=load_after,
                  flop_model=("feature blend flops: forward 2*C per contributing pair, backward 4*C; over the kernel's "
                              "wall time (feature_gflops_*) or its CPU time / threads (feature_gflops_*_cpu); "
                              "feature_stage_*: over the CPU time / threads that the features add to the kernel "
                              "(least CPU time of the kernel with C channels minus that of the same kernel with none, "
                              "run in turn); "
                              "feature_gemm_*: over the forward's feature GEMM alone (products and output stores, "
                              "thread seconds / threads, min of the counted runs)"),
                  rows=rows, baseline=baseline)
    out = args.out or ROOT / "benchmarks" / "results" / f"cpu_throughput{'-quick' if args.quick else ''}.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
