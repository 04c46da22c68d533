"""Resource gates of the CUDA kernels (skipped only when nvcc is absent).

benchmarks/cuda_resources.py compiles every csrc/cuda/*.cu file's device code for
sm_80 and sm_90 with `-Xptxas -v` and the build's nvcc flags; the gates fail on any
register spill or local stack frame (bar the kernels its ALLOWED_SPILLS names, each
under a byte cap) and on static shared memory above 46 KB per block. The figures,
with the theoretical occupancy, are written as JSON like the script's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import cuda_resources  # noqa: E402

pytestmark = pytest.mark.skipif(cuda_resources.nvcc_path() is None, reason="nvcc not found")


@pytest.fixture(scope="module")
def result():
    return cuda_resources.measure()


def test_no_spill_no_stack_frame_and_shared_memory_under_46kb(result):
    failures = cuda_resources.gate_failures(result)
    assert not failures, "\n".join(failures)


def test_every_kernel_is_measured_for_both_architectures(result):
    kernels = {arch: {r["kernel"] for r in result["rows"] if r["arch"] == arch} for arch in (80, 90)}
    assert kernels[80] == kernels[90]
    expected = {"render_forward_kernel<32, true>", "render_forward_kernel<32, false>",
                "render_backward_kernel<32, 1>", "render_backward_kernel<16, 3>", "render_backward_kernel<32, 3>",
                "count_tiles_kernel", "duplicate_kernel", "tile_ranges_kernel",
                "preprocess_forward_kernel<3>", "preprocess_backward_kernel<-1>"}
    assert expected <= kernels[80], expected - kernels[80]
    for r in result["rows"]:
        assert 0 < r["registers"] <= 255, r
        assert r["library"] or 0 < r["occupancy"] <= 1, r


def test_backward_variants_raise_occupancy(result):
    occ = {(r["kernel"], r["arch"]): r for r in result["rows"]}
    for arch in (80, 90):
        base = occ[("render_backward_kernel<32, 1>", arch)]
        for variant in ("render_backward_kernel<16, 3>", "render_backward_kernel<32, 3>"):
            assert occ[(variant, arch)]["registers"] <= 80
            assert occ[(variant, arch)]["blocks_per_sm"] > base["blocks_per_sm"], (variant, arch)


def test_json_record(result, tmp_path):
    out = tmp_path / "cuda_resources.json"
    assert cuda_resources.main(["--out", str(out), "--check"]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "cuda_resources" and data["git"] and data["nvcc_flags"]
    row = data["rows"][0]
    for key in ("kernel", "file", "arch", "registers", "shared", "stack_frame", "spill_stores",
                "blocks_per_sm", "occupancy", "limited_by"):
        assert key in row


def test_occupancy_and_gates_on_known_figures():
    # The measurement: 114 registers, 44 KB of shared memory, 256 threads.
    occ = cuda_resources.occupancy(114, 44036, 80)
    assert occ["blocks_per_sm"] == 2 and occ["occupancy"] == 0.25 and occ["limited_by"] == "registers"
    assert cuda_resources.occupancy(80, 44036, 80)["blocks_per_sm"] == 3  # 80 x 32 x 8 x 3 <= 65536
    assert cuda_resources.occupancy(32, 44036, 80)["limited_by"] == "shared memory"
    rows = [dict(kernel="k", file="f.cu", arch=80, registers=40, shared=100, stack_frame=8, spill_stores=8,
                 spill_loads=4),
            dict(kernel="render_backward_kernel<32, 3>", file="f.cu", arch=80, registers=80, shared=47105,
                 stack_frame=48, spill_stores=56, spill_loads=44),
            dict(kernel="render_backward_kernel<32, 3>", file="f.cu", arch=90, registers=80, shared=100,
                 stack_frame=96, spill_stores=96, spill_loads=96)]
    failures = cuda_resources.gate_failures({"rows": rows})
    assert len(failures) == 3, failures  # k spills; 47105 B of shared; the allowed one over its cap
    assert "spill" in failures[0] and "shared memory" in failures[1] and "allowed at most 64" in failures[2]


def test_ptxas_report_parsing():
    text = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem
"""
    (row,) = cuda_resources.parse_ptxas(text)
    assert row == dict(mangled="_Z3fooPf", arch=90, stack_frame=16, spill_stores=4, spill_loads=8, registers=40,
                       shared=2048)
