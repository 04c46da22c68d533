"""The just-in-time build path used when the package was installed without a prebuilt extension."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_jit_compile_of_the_cpu_kernels(tmp_path):
    code = ("from feature3dgs.rendering import _backend; m = _backend._jit_compile(); "
            "info = m.build_info(); assert info['cuda'] is False and info['tile_size'] == 16; print('ok')")
    env = dict(os.environ, FEATURE3DGS_CPU_ONLY="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
               PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiling the CPU kernels just-in-time" in result.stderr
    assert result.stdout.strip().endswith("ok")
