"""The feature3dgs command line: train (outputs, resume, errors), render, eval, info."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from feature3dgs.cli.main import main
from feature3dgs.data import make_synthetic_scene
from feature3dgs.model.ply import load_ply

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--no-progress", "--max-gaussians", "3000", "--lpips", "none", "--threads", "1"]


@pytest.fixture(autouse=True)
def restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return make_synthetic_scene(tmp_path_factory.mktemp("cli_scene"), n_views=6, n_test=2, width=48, height=48,
                                seed=1, n_points=800)


@pytest.fixture(scope="module")
def trained(scene_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["train", "--data", str(scene_dir), "--out", str(out), "--iterations", "30", "--eval-every", "15",
               "--checkpoint-every", "10", "--keep-checkpoints", "2", "--background", "white", *FAST])
    assert rc == 0
    return out


def test_train_writes_every_output(trained, capsys):
    out = trained
    for name in ("point_cloud.ply", "metrics.json", "config.json", "log.csv"):
        assert (out / name).is_file(), name
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("ckpt_*.pt"))
    assert ckpts == ["ckpt_0000020.pt", "ckpt_0000030.pt"]  # keeps the newest two
    pngs = sorted(p.name for p in (out / "renders" / "test").glob("*.png"))
    assert pngs == ["test_r_000.png", "test_r_001.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 30 and metrics["test"]["n_views"] == 2 and metrics["test"]["psnr"] > 5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["iterations"] == 30 and cfg["config"]["background"] == [1.0, 1.0, 1.0]
    assert cfg["config"]["densify_every"] == 10  # resolved schedule recorded
    rows = list(csv.DictReader(open(out / "log.csv")))
    tags = {r["tag"] for r in rows}
    assert {"train/loss", "train/psnr", "train/n_gaussians", "train/loss/l1", "test/psnr"} <= tags
    assert {int(r["step"]) for r in rows if r["tag"] == "test/psnr"} == {15, 30}
    assert load_ply(out / "point_cloud.ply").num_gaussians == metrics["n_gaussians"]


def test_train_resume_continues(trained, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained, out)
    assert main(["train", "--out", str(out), "--resume", *FAST]) == 0  # keeps the checkpoint's 30 steps
    assert json.loads((out / "metrics.json").read_text())["step"] == 30
    rc = main(["train", "--out", str(out), "--resume", "--iterations", "40", *FAST])
    assert rc == 0
    assert json.loads((out / "metrics.json").read_text())["step"] == 40
    assert (out / "checkpoints" / "ckpt_0000040.pt").is_file()


def test_render_and_eval(trained, scene_dir, tmp_path, capsys):
    assert main(["render", str(trained), "--out", str(tmp_path / "r"), "--split", "train"]) == 0
    assert len(list((tmp_path / "r").glob("*.png"))) == 6
    capsys.readouterr()
    assert main(["eval", str(trained), "--lpips", "none"]) == 0
    text = capsys.readouterr().out
    assert "mean (2 views)" in text and "PSNR" in text
    ev = json.loads((trained / "eval_test.json").read_text())
    saved = json.loads((trained / "metrics.json").read_text())["test"]
    assert ev["psnr"] == pytest.approx(saved["psnr"], abs=1e-4)  # the PLY renders as the trained model
    # a bare PLY needs --data
    ply = tmp_path / "model.ply"
    ply.write_bytes((trained / "point_cloud.ply").read_bytes())
    assert main(["eval", str(ply), "--lpips", "none", "--out", str(tmp_path / "e.json")]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["eval", str(ply), "--data", str(scene_dir), "--background", "white", "--lpips", "none",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["psnr"] == pytest.approx(saved["psnr"], abs=1e-4)


def test_cli_errors(tmp_path, capsys, scene_dir):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "o")]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "o"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(scene_dir), "--out", str(tmp_path / "o"), "--background", "purple"])
    assert main([]) == 2


def test_fresh_run_refuses_folder_with_checkpoints(trained, scene_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained, out)
    args = ["train", "--data", str(scene_dir), "--out", str(out), "--iterations", "5", *FAST]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_0000005.pt"]  # keeps the last
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert max(int(r["step"]) for r in rows) == 5  # a fresh log


def test_nan_loss_exit_status(scene_dir, tmp_path, capsys, monkeypatch):
    """A run whose loss turns NaN stops with exit status 1 and writes no final outputs (a NaN
    learning rate, the old way to provoke this, is now refused as an option)."""
    from feature3dgs.training.trainer import Trainer

    plain = Trainer.loss_terms
    monkeypatch.setattr(Trainer, "loss_terms",
                        lambda self, b, o: {**plain(self, b, o), "poison": torch.tensor(float("nan"))})
    out = tmp_path / "o"
    rc = main(["train", "--data", str(scene_dir), "--out", str(out), "--iterations", "20", *FAST])
    assert rc == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 1" in err and "poison=nan" in err
    assert not (out / "point_cloud.ply").exists() and not (out / "metrics.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(scene_dir), "--out", str(out), "--lr-sh-dc", "nan", *FAST])
    assert exit_info.value.code == 2 and "--lr-sh-dc" in capsys.readouterr().err


def test_info_and_python_m(capsys):
    assert main(["info"]) == 0
    assert "cpu: True" in capsys.readouterr().out
    r = subprocess.run([sys.executable, "-m", "feature3dgs", "info"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "tile_size" in r.stdout
