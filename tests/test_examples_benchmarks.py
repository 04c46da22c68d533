"""The examples and benchmark scripts run end to end in a tiny setting."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import feature3dgs

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str):
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script,dim", [("examples/distill_sam.py", 64), ("examples/distill_clip.py", 128)])
def test_distill_examples_run_tiny(tmp_path, monkeypatch, capsys, script, dim):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEATURE3DGS_WEIGHTS", str(tmp_path / "no_weights"))
    example = load_script(script)
    out = tmp_path / "out"
    assert example.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "RANDOM weights" in printed.err  # the loud warning without real weights
    assert "feature loss" in printed.out and "cosine" in printed.out
    from feature3dgs.model.ply import load_ply

    assert load_ply(out / "point_cloud.ply").feature_dim == dim
    panels = sorted((out / "renders" / "features").glob("*.png"))
    assert panels
    panel = np.asarray(Image.open(panels[0]))
    assert panel.shape[1] == 3 * panel.shape[0]  # render | student | teacher


def test_raster_speed_quick_writes_json(tmp_path):
    bench = load_script("benchmarks/raster_speed.py")
    out = tmp_path / "speed.json"
    assert bench.main(["--quick", "--device", "cpu", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] >= row["fwd_ms"] * 0.5
        assert row["speedup_vs_reference"] > 1  # the kernels beat the PyTorch reference


@pytest.mark.skipif(shutil.which("nvcc") is None or torch.version.cuda is None,
                    reason="needs nvcc and a CUDA build of torch")
def test_cuda_kernels_are_compiled_when_toolkit_present():
    info = feature3dgs.backend_info()
    assert info["cuda"], "nvcc and a CUDA torch are present, but the CUDA kernels were not built"
    assert info["cuda_archs"]


def test_distill_speed_benchmark_writes_json(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    bench = load_script("benchmarks/distill_speed.py")
    out = tmp_path / "distill.json"
    assert bench.main(["--steps", "3", "--teacher-dim", "16", "--render-dim", "4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["decoder"] for r in rows] == [False, True] and [r["render_dim"] for r in rows] == [16, 4]
    assert all(r["ms_per_step"] > 0 and -1 <= r["cosine"] <= 1 for r in rows)


def test_student_vs_teacher_benchmark_writes_both_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    bench = load_script("benchmarks/student_vs_teacher.py")
    out = tmp_path / "svt.json"
    assert bench.main(["--steps", "5", "--teacher-size", "16", "--noise", "0.5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for who in ("teacher", "student"):
        assert 0 <= result[who]["miou"] <= 1 and 0 <= result[who]["pixel_accuracy"] <= 1
    # A 16x16 teacher with heavy noise is far from the labels but better than chance.
    assert 0.2 < result["teacher"]["pixel_accuracy"] < 0.95


def test_segment_prompts_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEATURE3DGS_WEIGHTS", str(tmp_path / "no_weights"))
    out = tmp_path / "out"
    assert load_script("examples/segment_prompts.py").main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("render") >= 3 and "RANDOM" in printed
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == ["box.png", "point.png", "point_negative.png"]


def test_click_select_example_finds_the_box(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert load_script("examples/click_select.py").main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ious = [float(line.rsplit(" ", 1)[1]) for line in printed.splitlines() if "IoU with the true box" in line]
    assert len(ious) == 28 and sum(ious) / len(ious) > 0.6, ious  # 0.85 measured after 60 steps
    from feature3dgs.model.ply import load_ply

    assert 0 < load_ply(out / "box" / "point_cloud.ply").num_gaussians < load_ply(out / "run" / "point_cloud.ply").num_gaussians


def test_sam_prompt_speed_benchmark_writes_json(tmp_path):
    bench = load_script("benchmarks/sam_prompt_speed.py")
    out = tmp_path / "sam.json"
    assert bench.main(["--gaussians", "500", "--sizes", "32", "--repeats", "1", "--encoder", "none",
                       "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["size"] == 32 and row["feature_path_ms"] == pytest.approx(
        row["render_ms"] + row["decode_ms"] + row["mask_ms"])
    assert min(row["render_ms"], row["decode_ms"], row["mask_ms"]) > 0


def test_text_query_edit_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEATURE3DGS_WEIGHTS", str(tmp_path / "no_weights"))
    out = tmp_path / "out"
    assert load_script("examples/text_query_edit.py").main(["--quick", "--out", str(out), "--top-k", "40"]) == 0
    printed = capsys.readouterr().out
    assert "40 of" in printed and "RANDOM" in printed
    from feature3dgs.model.ply import load_ply

    n = load_ply(out / "run" / "point_cloud.ply").num_gaussians
    assert load_ply(out / "deleted" / "point_cloud.ply").num_gaussians == n - 40
    assert load_ply(out / "recolored" / "point_cloud.ply").num_gaussians == n
    for name in ("query/semantic.png", "query/relevancy.png", "deleted/before_after.png"):
        assert (out / name).is_file()


def test_semantic_scene_example_learns_classes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert load_script("examples/semantic_scene.py").main(["--quick", "--out", str(out)]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if "mIoU" in s)
    assert float(line.split("mIoU ")[1].split(",")[0]) > 0.6, line  # 0.89 measured
    from feature3dgs.run import load_run

    assert load_run(out / "scene").class_names == ["background", "sphere", "box", "cylinder"]


def test_multiview_mask_example_fusion_beats_2d_masks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEATURE3DGS_WEIGHTS", str(tmp_path / "no_weights"))
    out = tmp_path / "out"
    assert load_script("examples/multiview_mask.py").main(["--quick", "--out", str(out)]) == 0
    lines = [s for s in capsys.readouterr().out.splitlines() if "held-out IoU" in s]
    assert len(lines) == 2
    for line in lines:  # degraded 2D masks 0.26 -> fused 0.63 (votes), 0.74 (optimised) measured
        before, after = (float(v) for v in (line.split("masks ")[1].split(" ")[0], line.rsplit(" ", 1)[1]))
        assert after > before + 0.2, line
    assert list((out / "sam_fused").glob("*.png"))


def test_cpu_throughput_benchmark_quick_writes_every_path(tmp_path):
    bench = load_script("benchmarks/cpu_throughput.py")
    out = tmp_path / "cpu.json"
    assert bench.main(["--quick", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    paths = {r["path"] for r in rows}
    assert {"legacy", "scalar+cull", "baseline"} <= paths
    assert all(r["visited_pairs"] >= r["contributing_pairs"] > 0 for r in rows)
    peak = result["fp32_peak"]
    assert peak["measured_gflops"] > 0 and peak["gflops"] == max(peak["nominal_gflops"], peak["measured_gflops"])


def test_cpu_throughput_peak_counts_zen4_avx512_as_one_fma_unit(monkeypatch):
    """Zen 4 issues one 512-bit FMA per cycle (two 256-bit halves): its AVX-512 nominal peak
    equals its AVX2 one; other cores and ISAs keep two units."""
    bench = load_script("benchmarks/cpu_throughput.py")
    monkeypatch.setattr(bench, "clock_ghz", lambda: (3.0, "test"))
    monkeypatch.setattr(bench, "cpu_vendor_family", lambda: ("AuthenticAMD", 25))
    assert bench.fma_units("avx512")[0] == 1 and bench.fma_units("avx2")[0] == 2
    zen4 = bench.fp32_peak("avx512", 2, 0.0)
    assert zen4["nominal_gflops"] == bench.fp32_peak("avx2", 2, 0.0)["nominal_gflops"] == 2 * 2 * 8 * 2 * 3.0
    assert "Zen 4" in zen4["formula"]
    monkeypatch.setattr(bench, "cpu_vendor_family", lambda: ("GenuineIntel", 6))
    assert bench.fp32_peak("avx512", 2, 0.0)["nominal_gflops"] == 2 * 2 * 16 * 2 * 3.0
    # The measured throughput wins where it is the larger.
    assert bench.fp32_peak("avx512", 2, 1000.0)["gflops"] == 1000.0


def test_cpu_throughput_against_a_baseline_checkout(tmp_path):
    """--baseline-checkout times the stages in subprocesses of each package (here this checkout
    as its own baseline) and records them; a directory without the package is refused."""
    bench = load_script("benchmarks/cpu_throughput.py")
    out = tmp_path / "cpu.json"
    common = ["--train-steps", "30", "--size", "128", "--channels", "32", "--repeats", "2",
              "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert bench.main(common + ["--baseline-checkout", str(ROOT), "--baseline-rounds", "1"]) == 0
    result = json.loads(out.read_text())
    base = result["baseline"]
    # The subprocesses measured the package they were given (its revision, its ISA).
    assert base["checkout"] == str(ROOT) and base["rounds"] == 1 and base["git"] == result["git"]
    assert base["isa"] == feature3dgs.backend_info()["cpu_isas_available"][-1]
    (row,) = base["rows"]
    assert row["channels"] == 32
    # Kernels of a few ms on a shared machine: only that every time was measured.
    for who in ("this", "baseline"):
        assert all(0 < row[who][k] < 1e4 for k in ("fwd_ms", "fwd_no_features_ms", "bwd_ms", "bwd_no_features_ms"))
    assert row["speedup_fwd_ms"] > 0 and row["speedup_bwd_ms"] > 0
    with pytest.raises(SystemExit, match="no feature3dgs package"):
        bench.main(common + ["--baseline-checkout", str(tmp_path)])


def test_data_load_benchmark_writes_json(tmp_path):
    bench = load_script("benchmarks/data_load.py")
    result = bench.main(["--sizes", "40x30", "--images", "2", "--repeats", "1", "--out", str(tmp_path)])
    assert list(tmp_path.glob("*data_load*.json")) and result


def test_distributed_scaling_benchmark_runs_one_and_two_processes(tmp_path):
    bench = load_script("benchmarks/distributed_scaling.py")
    out = tmp_path / "scaling.json"
    assert bench.main(["--images", "8", "--max-gaussians", "3000", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["processes"] for r in rows] == [1, 2] and [r["images_seen"] for r in rows] == [8, 8]
    assert all(r["psnr"] > 5 for r in rows)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "lego_200").is_dir(), reason="needs ../shared/data/lego_200")
def test_train_quality_benchmark_on_a_real_scene(tmp_path):
    bench = load_script("benchmarks/train_quality.py")
    assert bench.main(["--scene", "lego_200", "--steps", "4", "--eval-every", "2", "--max-gaussians", "5000",
                       "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path), "--set", "init_random_points=2000",
                       "resolution_scale=0.25"]) == 0
    record = json.loads((tmp_path / "train_quality-lego_200-cpu.json").read_text())
    assert record["steps_done"] == 4 and len(record["curve"]) == 2 and record["test_psnr"] > 5
