"""The examples and benchmark scripts run end to end in a tiny setting."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
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


def test_distill_sam_example_writes_renders(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE3DGS_CACHE", str(tmp_path / "cache"))
    example = load_script("examples/distill_sam.py")
    assert example.main(["--out", str(tmp_path / "out"), "--channels", "8"]) == 0
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) >= 1
    panel = np.asarray(Image.open(pngs[0]))
    h = panel.shape[0]
    gt, render = panel[:, :h].astype(float), panel[:, h:2 * h].astype(float)
    # The render of the scene's own surface points resembles the ground truth.
    assert np.abs(gt - render).mean() < 40 and render.std() > 10


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
