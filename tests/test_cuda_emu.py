"""The CUDA kernels' own source, executed on the CPU by the SIMT emulator (csrc/emu),
against the CPU kernels. Default CI tier: no GPU needed.

Every case of tests/cuda_cases.py (the cases tests/test_cuda.py runs on a GPU) runs
the four entry points in a chain on both and compares: integers equal, forward within
1e-6, gradients within 1e-5 relative L2, in three thread orders (ascending,
descending, seeded random), for the default and the channel-tile-16 backward, with
blocks on one and on two OpenMP threads, and once in race mode. The mutation test
injects nine known bugs into scratch copies of csrc/cuda and shows that each one makes
this module's tests fail (run in a subprocess per mutant, with the clear report the
emulator gives).

FEATURE3DGS_EMU_MODULE=path/to/f3d_emu_X.so runs the module against that build
(the mutation test does this); otherwise csrc/cuda is built (cached in build/emu).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cuda_cases import (CASE_BY_NAME, CASES, WORLD_GRADIENTS, chain, compare_strict, cpu_kernels,
                        max_tile_count, preprocess_backward_on, rel_l2)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "csrc" / "emu"))
import build as emu_build  # noqa: E402  (csrc/emu/build.py)

MODULE_ENV = "FEATURE3DGS_EMU_MODULE"
ORDERS = {"ascending": 0, "descending": 1, "random": 2}
# The subset a mutant is checked against: small, and between them they touch every
# kernel, channel tiles > 1, sizes that are not multiples of 16, batches of 256.
QUICK = [c.name for c in CASES if "quick" in c.tags]


@pytest.fixture(scope="module")
def emu():
    path = os.environ.get(MODULE_ENV)
    module = emu_build.load(Path(path) if path else emu_build.build()["main"])
    yield module
    module.set_options()


@pytest.fixture(scope="module")
def cpu():
    return cpu_kernels()


@contextlib.contextmanager
def env_set(name: str, value: str | None):
    """Environment variable `name` set to `value` inside the block (None: left as it is)."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


class ScalarReference(dict):
    """The CPU kernels' outputs per case name, computed on first use (a mutant's run needs only
    the quick cases), on the scalar path: libm expf and one pixel at a time, as the strictly
    compiled CUDA code computes them (the SIMD paths differ from it only through their
    vectorised exp, within the CPU tests' own tolerance against the reference)."""

    def __init__(self, cpu):
        super().__init__()
        self.cpu = cpu

    def __missing__(self, name: str) -> dict:
        with env_set("FEATURE3DGS_CPU_ISA", "scalar"):
            self[name] = chain(self.cpu, CASE_BY_NAME[name])
        return self[name]


@pytest.fixture(scope="module")
def reference(cpu, one_thread_module):
    return ScalarReference(cpu)


def run_case(emu, name: str, order: str = "ascending", threads: int = 1, race: bool = False,
             backward: str | None = None) -> dict:
    emu.set_options(order=ORDERS[order], seed=1234, race=race, threads=threads)
    try:
        with env_set("FEATURE3DGS_CUDA_BACKWARD", backward):
            return chain(emu, CASE_BY_NAME[name])
    finally:
        emu.set_options()


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_case_matches_cpu(emu, reference, name, order):
    errors = compare_strict(run_case(emu, name, order), reference[name])
    assert not errors, f"{name} ({order} order): " + "; ".join(errors)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_preprocess_backward_alone_matches_cpu(emu, reference, name):
    """The world-space gradients from the same screen-space gradients: the strict 1e-5."""
    want = reference[name]
    emu.set_options(order=ORDERS["random"], seed=1234)
    try:
        got = preprocess_backward_on(emu, CASE_BY_NAME[name], want)
    finally:
        emu.set_options()
    errors = [f"{k}: relative L2 error {e:.3g}" for k in WORLD_GRADIENTS
              if got[k].numel() and (e := rel_l2(got[k], want[k])) > 1e-5]
    assert not errors, f"{name}: " + "; ".join(errors)


@pytest.mark.parametrize("name", [c.name for c in CASES if c.name.startswith("channels_")] + ["dense_tiles"])
def test_channel_tile_16_backward_matches_cpu(emu, reference, name):
    errors = compare_strict(run_case(emu, name, "random", backward="ct16"), reference[name])
    assert not errors, f"{name} (ct16 backward): " + "; ".join(errors)


@pytest.mark.parametrize("name", ["channels_33", "odd_size_off_centre"])
def test_blocks_on_two_openmp_threads(emu, reference, name):
    errors = compare_strict(run_case(emu, name, "ascending", threads=2), reference[name])
    assert not errors, f"{name} (2 threads): " + "; ".join(errors)


def describe(emu, reports: list[str]) -> str:
    """The reports with their code addresses (module+0xOFF) resolved to file:line."""
    addr2line = shutil.which("addr2line")
    path = emu.module_path()

    def where(m: re.Match) -> str:
        if not addr2line:
            return m.group(0)
        pc = int(m.group(1), 16) - 1  # a return address: the call is just before it
        r = subprocess.run([addr2line, "-e", path, "-C", "-i", "-p", hex(pc)], capture_output=True, text=True)
        # The innermost frame outside the emulator's own inline builtins (emu.h).
        frames = [f.replace("(inlined by)", "").strip() for f in r.stdout.splitlines() if f.strip()]
        frames = [f for f in frames if "/emu/emu.h:" not in f] or frames
        where = frames[0].rsplit(" at ", 1)[-1] if frames else "?"
        return m.group(0) + " (" + where + ")"

    return "\n".join(re.sub(r"module\+0x([0-9a-f]+)", where, r) for r in reports)


def test_race_mode_reports_nothing_on_the_kernels(emu, reference):
    emu.take_race_reports()
    out = run_case(emu, "odd_size_off_centre", "random", race=True)
    reports = emu.take_race_reports()
    assert not reports, describe(emu, reports[:10])
    assert not compare_strict(out, reference["odd_size_off_centre"])


def test_cases_exercise_what_they_claim(reference):
    """The case list keeps covering batching (> 256 Gaussians in a tile), culling and
    the empty paths, whatever the scenes' generators do later."""
    assert max_tile_count(reference["dense_tiles"]) > 256
    assert max_tile_count(reference["high_opacity"]) > 256
    nan = reference["nan_means_zero_quats"]["radii"]
    assert (nan[::7] == 0).all() and (nan > 0).any()
    assert reference["empty"]["radii"].numel() == 0
    assert (reference["nothing_visible"]["radii"] == 0).all()
    assert reference["odd_size_off_centre"]["rgb"].shape == (3, 35, 77)


def test_bad_backward_variant_is_a_clear_error(emu):
    with pytest.raises(ValueError, match="FEATURE3DGS_CUDA_BACKWARD must be ct32, ct16 or lb3"):
        run_case(emu, "channels_3", backward="ct64")


# ---------------------------------------------------------------- mutation test
# (name, file in csrc/cuda, text, replacement, regexes the failing run must print); text and
# replacement may be tuples of alternatives (the first text found is replaced by its partner),
# for a line that other work on the kernels is known to change.
MUTANTS = [
    ("removed_barrier", "render_forward.cu",
     "      }\n    }\n    __syncthreads();\n\n    for (int j = 0; j < count && !done; ++j) {",
     "      }\n    }\n\n    for (int j = 0; j < count && !done; ++j) {",
     (r"rgb: max abs error", r"(race on|uninitialised read of) shared word[^\n]*render_forward\.cu:\d+")),
    ("early_return_before_barrier", "render_backward.cu",
     "  const Vec2 center = pixel_center(px, py);\n\n  // Per-pixel state;",
     "  const Vec2 center = pixel_center(px, py);\n  if (!inside) return;\n\n  // Per-pixel state;",
     (r"render_backward\.cu:\d+ but lane \d+ of its mask has exited",)),
    ("shuffle_under_divergent_branch", "render_backward.cu",
     "        reduce_add_slots<16>(p, g, v, kBaseValues, lane);",
     "        if (valid) reduce_add_slots<16>(p, g, v, kBaseValues, lane);",
     (r"__shfl_xor_sync at \S+\.cu[h]?:\d+ .*(a collective in divergent code|a lane skipped a collective)",)),
    ("barrier_in_divergent_code", "render_backward.cu",
     "    __syncthreads();  // the previous batch is consumed",
     "    if (tid < 128) __syncthreads();  // the previous batch is consumed",
     (r"reached __syncthreads at \S+render_backward\.cu:\d+ while 128 threads wait at __syncthreads at "
      r"\S+render_backward\.cu:\d+ \(a barrier in divergent code\)",)),
    ("tile_range_off_by_one", "binning.cu",
     "for (int64_t t = prev + 1; t <= cur; ++t) tile_offsets[t] = (int)i;",
     "for (int64_t t = prev + 1; t <= cur; ++t) tile_offsets[t] = (int)(i < M ? i + 1 : M);",
     (r"tile_offsets: \d+ entries differ",)),
    ("radix_sort_end_bit", "binning.cu",
     ("const int end_bit = 32 + bit_width_of_count(T);", "const int end_bit = 32 + bit_width_of_count(T + 1);"),
     ("const int end_bit = 32 + bit_width_of_count(T) - 1;", "const int end_bit = 32 + bit_width_of_count(T + 1) - 1;"),
     (r"gaussian_ids: (\d+ entries differ|shape)",)),
    # Race mode alone catches these two (fibers do not interleave inside a statement, so the
    # values stay right): a plain read-modify-write of shared memory by many threads, and
    # non-atomic additions to one gradient from several blocks.
    ("plain_shared_max", "render_backward.cu",
     "  if (last > 0) atomicMax(&s_max_last, last);",
     "  if (last > s_max_last) s_max_last = last;",
     (r"race on shared word[^\n]*render_backward\.cu:\d+",)),
    ("plain_global_add", "render_backward.cu",
     "  if (lane % kLanesPerValue == 0 && slot < n) atomicAdd(slot_address(p, g, slot), v[0]);",
     "  if (lane % kLanesPerValue == 0 && slot < n) *slot_address(p, g, slot) += v[0];",
     (r"non-atomic writes of global address[^\n]*render_backward\.cu:\d+",)),
    ("backward_channel_offset", "render_backward.cu",
     "float* row = p.g_features + (int64_t)g * p.C + c0;",
     "float* row = p.g_features + (int64_t)g * p.C;",
     (r"d_features: relative L2 error",)),
]


def make_mutant(directory: Path, file: str, text, replacement) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(ROOT / "csrc" / "cuda", directory)
    target = directory / file
    source = target.read_text()
    texts = (text,) if isinstance(text, str) else text
    replacements = (replacement,) if isinstance(replacement, str) else replacement
    for t, r in zip(texts, replacements):
        if source.count(t) == 1:
            target.write_text(source.replace(t, r))  # a fresh mtime: ninja sees the new content
            return
    raise AssertionError(f"mutant text not found exactly once in csrc/cuda/{file}; update MUTANTS in "
                         f"{__file__}:\n{texts}")


MUTANT_TIMEOUT_S = 300  # one mutant's run of the quick cases takes ~20 s on 2 cores


@pytest.mark.skipif(bool(os.environ.get(MODULE_ENV)), reason="a mutant's own run")
def test_mutants_are_caught(tmp_path):
    scratch = emu_build.default_build_dir() / "mutants"
    for name, file, text, replacement, _ in MUTANTS:
        make_mutant(scratch / name, file, text, replacement)
    builds = emu_build.build({name: scratch / name for name, *_ in MUTANTS})  # one ninja run
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    quick = " or ".join(f"{n}-" for n in QUICK) + " or race_mode"
    logs = {name: tmp_path / f"{name}.log" for name, *_ in MUTANTS}
    returncodes: dict[str, int | str] = {}

    def start(name: str) -> subprocess.Popen:
        env_m = dict(env, **{MODULE_ENV: str(builds[name])})
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
               "-k", f"({quick}) and not mutants and not two_openmp and not channel_tile_16"]
        # Output to a file, never a pipe nobody reads: a mutant's long failure report must not
        # fill a pipe buffer and block it (and with it this test) forever.
        with open(logs[name], "w") as log:
            return subprocess.Popen(cmd, cwd=ROOT, env=env_m, stdout=log, stderr=subprocess.STDOUT, text=True)

    names = [name for name, *_ in MUTANTS]
    for pair in (names[i:i + 2] for i in range(0, len(names), 2)):  # two at a time on 2 cores
        running = {name: start(name) for name in pair}
        for name, proc in running.items():
            try:
                returncodes[name] = proc.wait(timeout=MUTANT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                returncodes[name] = f"killed after {MUTANT_TIMEOUT_S} s (a hang the emulator should have reported)"
    survivors = []
    for name, _, _, _, expect in MUTANTS:
        out = logs[name].read_text(errors="replace")
        code = returncodes[name]
        caught = isinstance(code, int) and code not in (0, 5)
        if not caught or not all(re.search(e, out) for e in expect):
            survivors.append(f"{name}: returncode {code}, expected /{expect}/ in:\n" + out[-3000:])
    assert not survivors, "mutants not caught as expected:\n" + "\n".join(survivors)


def test_comparison_rules_catch_what_they_should(reference):
    """compare_strict (here) and compare_tolerant (tests/test_cuda.py, GPU only) on perturbed copies
    of the CPU's outputs: each rule accepts what it must tolerate and refuses the rest."""
    from cuda_cases import compare_tolerant

    want = reference["channels_33"]

    def perturbed(**changes):
        out = {k: v.clone() for k, v in want.items()}
        for k, fn in changes.items():
            out[k] = fn(out[k])
        return out

    assert not compare_strict(want, want) and not compare_tolerant(want, want)
    # Forward: 1e-5 is too much for the strict rule; a few pixels off pass the tolerant one.
    assert compare_strict(perturbed(rgb=lambda t: t + 1e-5), want)
    few = perturbed(rgb=lambda t: t.index_put_((torch.tensor([0]), torch.tensor([3]), torch.tensor([5])),
                                               torch.tensor(9.0)))
    assert not compare_tolerant(few, want)
    many = perturbed(alpha=lambda t: t + (torch.rand(t.shape, generator=torch.Generator().manual_seed(0)) < 0.01))
    assert any("pixels off" in e for e in compare_tolerant(many, want))
    # Gradients: 1e-4 relative fails the strict rule, passes the tolerant one; 1e-2 fails both.
    assert compare_strict(perturbed(d_conics=lambda t: t * (1 + 1e-4)), want)
    assert not compare_tolerant(perturbed(d_means=lambda t: t * (1 + 1e-4)), want)
    # The chained world-space gradients: 5e-5 passes (schedule-dependent rounding, amplified), 1e-3 fails.
    assert not compare_strict(perturbed(d_means=lambda t: t * (1 + 5e-5)), want)
    assert compare_strict(perturbed(d_scales=lambda t: t * (1 + 1e-3)), want)
    assert compare_tolerant(perturbed(d_features=lambda t: t * (1 + 1e-2)), want)
    # Radii: a flip passes the tolerant rule only where 3 sqrt(lambda) is near an integer.
    from cuda_cases import near_integer_radius

    visible = want["radii"] > 0
    assert near_integer_radius(want["conics"], tol=0.5)[visible].all()  # tolerance widened: every one
    far = ~near_integer_radius(want["conics"]) & (want["radii"] > 0)
    i = int(far.nonzero()[0])
    flipped = perturbed(radii=lambda t: t.index_put_((torch.tensor([i]),), t[i] + 1))
    assert any("radii" in e for e in compare_tolerant(flipped, want)) and compare_strict(flipped, want)


# ------------------------------------------------- the emulator's own builtins
def test_selftest_collectives_and_barriers(emu):
    """Every warp collective and barrier variant on one block of two warps, against Python."""
    out = emu.selftest("collectives")
    t = torch.arange(64)
    lane, base = t % 32, t - t % 32
    v = t * 10 + 1
    expect = torch.stack([
        v[base + 3],                                                    # __shfl_sync(v, 3)
        torch.where(lane >= 1, v[(t - 1).clamp(min=0)], v),             # __shfl_up_sync(v, 1)
        torch.where(lane % 16 + 2 < 16, v[(t + 2).clamp(max=63)], v),   # __shfl_down_sync(v, 2, 16)
        v[base + (lane ^ 5)],                                           # __shfl_xor_sync(v, 5)
        torch.full((64,), sum(1 << i for i in range(0, 32, 3))),        # __ballot_sync(lane % 3 == 0)
        (t < 32).int(),                                                 # __all_sync(t < 40) per warp
        (t >= 32).int(),                                                # __any_sync(t == 63) per warp
        torch.full((64,), 16), torch.ones(64, dtype=torch.long), torch.ones(64, dtype=torch.long),
        torch.where(lane < 16, v[base + (lane ^ 1)], torch.full((64,), -1)),  # partial-mask xor
        torch.full((64,), 64 * 1000 + 1),                               # blockDim.x, gridDim.x
    ], dim=1).int()
    assert torch.equal(out, expect), (out != expect).nonzero()[:10]


def test_selftest_atomics_across_blocks(emu):
    for threads in (1, 2):
        emu.set_options(threads=threads)
        fsum, count, mx, winners, cas, exch, mn = emu.selftest("atomics").tolist()
        emu.set_options()
        assert (fsum, count, mx, winners, exch, mn) == (128, 256, 363, 1, 7, -255)
        assert 1 <= cas <= 256


# What each misuse must report; the wording depends on which thread the schedule runs first.
@pytest.mark.parametrize("which, message", [
    (0, r"__shfl_xor_sync at \S+selftest\.cpp:\d+ with a mask that does not name its own lane"),
    (1, r"reached __syncthreads at \S+selftest\.cpp:\d+ while \d+ threads wait at __syncthreads at "
        r"\S+selftest\.cpp:\d+ \(a barrier in divergent code\)"),
    (2, r"(reached __syncthreads at \S+selftest\.cpp:\d+ while lanes of its warp wait for it at __shfl_xor_sync"
        r"|calls __shfl_xor_sync at \S+selftest\.cpp:\d+ but lane \d+ of its mask waits at __syncthreads)"),
    (3, r"(calls __shfl_xor_sync at \S+selftest\.cpp:\d+ but lane \d+ of its mask has exited"
        r"|exited while lanes of its warp wait for it at __shfl_xor_sync at \S+selftest\.cpp:\d+)"),
    (4, r"reads lane 20 outside the mask in __shfl_sync at \S+selftest\.cpp:\d+"),
    (5, r"calls __any_sync at \S+selftest\.cpp:\d+ while other lanes of its warp wait at __any_sync at "
        r"\S+selftest\.cpp:\d+ \(a collective in divergent code\)"),
])
@pytest.mark.parametrize("order", ["ascending", "random"])
def test_selftest_misuse_is_a_clear_error_not_a_hang(emu, which, message, order):
    emu.set_options(order=ORDERS[order], seed=3)
    try:
        with pytest.raises(RuntimeError, match=r"block \(0,0,0\), thread \(\d+,0,0\) \(lane \d+ of warp \d\): .*"
                                               + message):
            emu.selftest("error", which)
    finally:
        emu.set_options()


@pytest.mark.parametrize("which, report", [
    (0, None),
    (1, r"race on shared word .* written by thread \(\d+,0,0\) at \S+ and by thread"),
    (2, r"uninitialised read of shared word"),
    (3, r"atomic update of shared word .* mixed with plain accesses|plain read of shared word .* atomically"),
    (4, r"non-atomic writes of global address 0x[0-9a-f]+: block \(\d,0,0\) wrote it"),
])
def test_selftest_race_mode_reports(emu, which, report):
    emu.take_race_reports()
    emu.set_options(race=True, order=ORDERS["random"], seed=5)
    try:
        emu.selftest("race", which)
    finally:
        emu.set_options()
    reports = emu.take_race_reports()
    if report is None:
        assert not reports, describe(emu, reports)
    else:
        assert reports and re.search(report, reports[0]), reports
        assert "selftest.cpp:" in describe(emu, reports[:1])  # resolved to the source line
