"""The package's layout rules, checked on its source: imports go one way through the layers, no
private name is used across modules, and imports inside functions are kept for optional (or
heavy third-party) packages. The checker is also run on snippets that break each rule, so a
checker that stopped seeing violations would fail here too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "feature3dgs"

#: kernels <- rendering <- model <- data <- training <- distill <- run <- apps <- viewer <- cli
LAYERS = {"version": 0, "utils": 0, "rendering": 1, "model": 2, "data": 3, "training": 4, "distill": 5,
          "run": 6, "apps": 7, "viewer": 8, "cli": 9, "__init__": 10, "__main__": 10}

#: what may be imported inside a function: packages that are optional, or heavy and needed only
#: by one feature (the teachers' networks), and torch in the build-settings module that setup.py
#: reads without torch
LAZY_OK = {"viser", "lpips", "matplotlib", "torch.utils.tensorboard", "scipy", "segment_anything", "open_clip",
           "cv2", "torch.utils.cpp_extension"}
LAZY_OK_IN = {"rendering/_build.py": {"torch"}}


def layer_of(relpath: str) -> int:
    head = relpath.split("/")[0].removesuffix(".py")
    return LAYERS[head]


def module_name(relpath: str) -> str:
    parts = relpath.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["feature3dgs", *parts])


def _resolve(node: ast.ImportFrom, relpath: str) -> str:
    if node.level == 0:
        return node.module or ""
    base = module_name(relpath).split(".")
    if not relpath.endswith("__init__.py"):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(source: str, relpath: str) -> list[str]:
    """Every rule broken by the module ``relpath`` (relative to feature3dgs/) with ``source``."""
    tree = ast.parse(source)
    own_layer = layer_of(relpath)
    own_pkg = module_name(relpath).rsplit(".", 1)[0] if not relpath.endswith("__init__.py") else module_name(relpath)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    in_function.add(id(sub))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        else:
            mod = _resolve(node, relpath)
            targets = [(mod, a.name) for a in node.names]
        for mod, name in targets:
            where = f"{relpath}:{node.lineno}"
            if id(node) in in_function:
                lazy_ok = LAZY_OK | LAZY_OK_IN.get(relpath, set())
                if not any(mod == ok or mod.startswith(ok + ".") for ok in lazy_ok):
                    found.append(f"{where}: import of {mod} inside a function")
            if not mod.startswith("feature3dgs"):
                continue
            parts = mod.split(".")
            if len(parts) >= 2 and parts[1] in LAYERS and LAYERS[parts[1]] > own_layer:
                found.append(f"{where}: {module_name(relpath)} (layer {own_layer}) imports {mod} "
                             f"(layer {LAYERS[parts[1]]})")
            if name is not None and name.startswith("_") and not name.startswith("__") and mod != own_pkg:
                found.append(f"{where}: private name {name} imported from {mod}")
            private = [i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")]
            if private and not own_pkg.startswith(".".join(parts[:private[0]])):
                found.append(f"{where}: private module {mod} imported from outside its package")
    return found


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_csrc" not in p.parts)


def test_the_package_follows_its_layout_rules():
    found = []
    for path in package_modules():
        found += violations(path.read_text(encoding="utf-8"), path.relative_to(PACKAGE).as_posix())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("relpath, source, rule", [
    ("model/gaussians.py", "from feature3dgs.training.trainer import Trainer\n", "imports feature3dgs.training"),
    ("rendering/kernels.py", "import feature3dgs.run\n", "imports feature3dgs.run"),
    ("apps/edit.py", "from feature3dgs.training.trainer import _private_helper\n", "private name"),
    ("cli/main.py", "from feature3dgs.rendering import _backend\n", "private name"),
    ("apps/edit.py", "import feature3dgs.rendering._backend\n", "private module"),
    ("training/trainer.py", "def f():\n    import json\n", "inside a function"),
    ("training/trainer.py", "def f():\n    from feature3dgs.data import load_scene\n", "inside a function"),
    ("data/scene.py", "def f():\n    from .undistort import undistort_camera\n", "inside a function"),
])
def test_the_checker_catches_each_kind_of_violation(relpath, source, rule):
    found = violations(source, relpath)
    assert any(rule in v for v in found), found


def test_the_checker_accepts_what_the_rules_allow():
    assert violations("def f():\n    import viser\n", "viewer/server.py") == []
    assert violations("from feature3dgs.rendering._backend import kernels\n", "rendering/kernels.py") == []
    assert violations("from feature3dgs.utils.io import atomic_open\n", "model/ply.py") == []
    assert violations("def f():\n    import torch\n", "rendering/_build.py") == []
    assert violations("from feature3dgs.rendering import _build\n", "rendering/_backend.py") == []
