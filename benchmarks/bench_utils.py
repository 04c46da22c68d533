"""What the benchmark scripts share: the git revision they ran at, the JSON they write, and
the CPU's /proc/cpuinfo fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature3dgs.utils.io import atomic_write_text  # noqa: E402


def git_revision(root: Path = ROOT) -> str:
    """The short git revision of the checkout at root (this one by default), or "unknown"."""
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                       text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpuinfo_values(key: str) -> list[str]:
    """The values of /proc/cpuinfo's field `key` (case-insensitive), one per core that lists
    it, in order; empty where the file is missing (not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    values = []
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key.lower():
            values.append(value.strip())
    return values


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` atomically (floats as floats) and say so."""
    atomic_write_text(Path(path), json.dumps(result, indent=2, default=float))
    print(f"wrote {path}")
