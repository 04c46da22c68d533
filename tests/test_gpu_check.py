"""benchmarks/gpu_check.sh --dry-run: the wheels, the commands and the output layout of the
one-shot GPU check, verified on the CPU machine (the GPU run itself needs a GPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout")


def wheel(directory: Path, name: str, version: str, requires: list[str]) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(directory / f"{dist}-py3-none-any.whl", "w") as z:
        meta = [f"Name: {name}", f"Version: {version}"] + [f"Requires-Dist: {r}" for r in requires]
        z.writestr(f"{dist}.dist-info/METADATA", "\n".join(meta) + "\n")


def dry_run(tmp_path: Path, wheels: list[tuple]) -> tuple[subprocess.CompletedProcess, Path]:
    wheel_dir = tmp_path / "whl"
    wheel_dir.mkdir(parents=True)
    for w in wheels:
        wheel(wheel_dir, *w)
    out = tmp_path / "out"
    env = dict(os.environ, F3D_WHEEL_DIR=str(wheel_dir), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, out


GOOD = [("plyfile", "1.1.5", ["numpy>=2.0"]), ("pytorch-msssim", "1.0.0", ["torch"])]


def test_dry_run_checks_and_lays_out_the_outputs(tmp_path):
    proc, out = dry_run(tmp_path, GOOD + [("gsplat", "1.5.3", ["ninja", "jaxtyping", "rich>=12", "torch",
                                                               'typing_extensions; python_version < "3.8"'])])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["passed"] is True
    names = [s["name"] for s in summary["steps"]]
    assert names == ["environment", "install_wheels", "gsplat_build", "build", "test_cuda", "memcheck",
                     "racecheck", "raster_speed", "distributed_scaling"]
    commands = {s["name"]: s["command"] for s in summary["steps"]}
    assert "compute-sanitizer --tool memcheck" in commands["memcheck"] and "-k small" in commands["memcheck"]
    assert "compute-sanitizer --tool racecheck" in commands["racecheck"]
    rs = commands["raster_speed"]
    assert "--device cuda" in rs and "--backward-variants ct32 ct16 lb3" in rs and "--no-gsplat" not in rs
    assert "tests/test_cuda.py" in commands["test_cuda"]
    # What comes back from the device: at most 8 plain files, no sub-folders.
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files), files
    assert set(summary["files"]) == {f.name for f in files}


def test_dry_run_without_gsplat_says_the_comparison_is_skipped(tmp_path):
    proc, out = dry_run(tmp_path, GOOD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert any("gsplat" in line and "skipped" in line for line in summary["wheels"])
    assert "gsplat_build" not in [s["name"] for s in summary["steps"]]


def test_dry_run_fails_on_a_missing_or_unusable_wheel(tmp_path):
    proc, out = dry_run(tmp_path, GOOD[1:])
    assert proc.returncode == 1 and "plyfile==1.1.5: no wheel" in proc.stdout
    assert json.loads((out / "summary.json").read_text())["passed"] is False
    proc, _ = dry_run(tmp_path / "b", GOOD + [("gsplat", "1.5.3", ["notonthedevice>=1"])])
    assert proc.returncode == 1 and "needs notonthedevice>=1" in proc.stdout
    proc, _ = dry_run(tmp_path / "c", [("plyfile", "1.0.0", [])] + GOOD[1:])
    assert proc.returncode == 1 and "is not version 1.1.5" in proc.stdout
