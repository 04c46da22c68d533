"""The README's two commands, as a new user runs them: the main command is the test command's
install followed by the example, and the example runs exactly as written (in the tiny setting,
through the same entry point, with the caches in a temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from feature3dgs.model.ply import load_ply
from feature3dgs.run import RunDir

ROOT = Path(__file__).resolve().parents[1]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text)
    assert m, f"README.md has no command after <!-- {marker} -->"
    return m.group(1).strip()


def test_the_two_commands_share_their_install_steps():
    main, tests = readme_command("main-command"), readme_command("test-command")
    *install, run = [part.strip() for part in main.split("&&")]
    *test_install, pytest = [part.strip() for part in tests.split("&&")]
    assert run == "python examples/distill_sam.py" and pytest == "pytest -q"
    assert [p.replace('".[test]"', ".") for p in test_install] == install
    assert install[0].startswith("python3 -m venv") and any(p.startswith("pip install torch") for p in install)


def test_the_main_command_runs_as_written(tmp_path):
    run = readme_command("main-command").split("&&")[-1].split()
    env = dict(os.environ, FEATURE3DGS_EXAMPLE_TINY="1", FEATURE3DGS_CACHE=str(tmp_path / "cache"),
               FEATURE3DGS_WEIGHTS=str(tmp_path / "weights"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    work = tmp_path / "clone"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")  # the relative paths the README uses
    r = subprocess.run([sys.executable if run[0] == "python" else run[0], *run[1:]], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "plan: distil sam-tiny" in r.stdout and "estimated time on cpu" in r.stdout
    assert "RANDOM" in r.stderr + r.stdout
    out = work / "outputs" / "distill_sam"
    assert load_ply(out / RunDir.PLY).feature_dim == 64 and (out / RunDir.DECODER).is_file()
    overlay = out / "sam_click" / "overlay.png"
    assert Image.open(overlay).size == (128, 128)
    assert "SAM on held-out view" in r.stdout and "sam_click/overlay.png" in r.stdout
