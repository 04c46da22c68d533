"""A missing optional package is one line on stderr naming it and its pip command, and exit
status 2; never a traceback. Each package is hidden by putting None in sys.modules (what an
uninstalled package looks like to ``import``)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from feature3dgs.cli.main import main
from feature3dgs.data import make_synthetic_scene
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.run import RunDir
from feature3dgs.utils.optional import MissingDependencyError, require
from feature3dgs.viewer.curves import main as curves_main


def hide(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def one_line_naming(err: str, pip_name: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert f"pip install {pip_name}" in lines[0] and "Traceback" not in err


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return make_synthetic_scene(tmp_path_factory.mktemp("opt") / "scene", n_views=3, n_test=1, width=24, height=24,
                                n_points=200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("opt_run") / "run")
    run.write_model(GaussianModel.from_points(torch.rand(30, 3), sh_degree=0))
    (run.path / RunDir.LOG).write_text("step,elapsed_s,tag,value\n1,0.1,train/loss,0.5\n2,0.2,train/loss,0.4\n")
    return run.path


def test_require_names_the_package_and_its_pip_command(monkeypatch, tmp_path):
    hide(monkeypatch, "viser")
    with pytest.raises(MissingDependencyError, match=r"the viewer needs the 'viser' package.*pip install viser"):
        require("viser", "viser", "the viewer")
    assert require("json", "json", "x") is json
    # a package that is installed but fails in one of its own imports shows that error instead
    (tmp_path / "installed_but_broken_pkg.py").write_text("import definitely_not_a_module_4711\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="definitely_not_a_module_4711") as info:
        require("installed_but_broken_pkg", "installed-but-broken-pkg", "a feature")
    assert not isinstance(info.value, MissingDependencyError)


def test_view_without_viser(monkeypatch, run_dir, capsys):
    hide(monkeypatch, "viser")
    assert main(["view", str(run_dir)]) == 2
    one_line_naming(capsys.readouterr().err, "viser")


def test_eval_lpips_without_lpips(monkeypatch, run_dir, scene_dir, capsys):
    hide(monkeypatch, "lpips")
    assert main(["eval", str(run_dir), "--data", str(scene_dir), "--lpips", "alex"]) == 2
    one_line_naming(capsys.readouterr().err, "lpips")
    # left at its default, LPIPS is skipped with a note and the evaluation goes on
    assert main(["eval", str(run_dir), "--data", str(scene_dir), "--out", str(run_dir / "e.json")]) == 0
    assert "LPIPS skipped" in capsys.readouterr().out


def test_train_tensorboard_without_tensorboard(monkeypatch, scene_dir, tmp_path, capsys):
    hide(monkeypatch, "tensorboard", "torch.utils.tensorboard")
    out = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--out", str(out), "--iterations", "2", "--no-progress",
                 "--tensorboard"]) == 2
    one_line_naming(capsys.readouterr().err, "tensorboard")
    assert not out.exists()  # refused before any work


def test_curves_matplotlib_without_matplotlib(monkeypatch, run_dir, capsys):
    hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    assert curves_main([str(run_dir), "--backend", "matplotlib", "-o", str(run_dir / "c.png")]) == 2
    one_line_naming(capsys.readouterr().err, "matplotlib")
    assert curves_main([str(run_dir), "--backend", "pil", "-o", str(run_dir / "c.png")]) == 0


def test_distorted_scene_without_opencv(monkeypatch, scene_dir, tmp_path, capsys):
    meta_path = scene_dir / "transforms_train.json"
    distorted = tmp_path / "distorted"
    import shutil

    shutil.copytree(scene_dir, distorted)
    meta = json.loads(meta_path.read_text())
    meta["k1"] = 0.05
    (distorted / "transforms_train.json").write_text(json.dumps(meta))
    hide(monkeypatch, "cv2")
    assert main(["train", "--data", str(distorted), "--out", str(tmp_path / "o"), "--iterations", "1",
                 "--no-progress"]) == 2
    one_line_naming(capsys.readouterr().err, "opencv-python-headless")
