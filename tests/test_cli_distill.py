"""`feature3dgs extract` and `feature3dgs distill` end to end on a tiny scene."""

from __future__ import annotations

import json

import torch

from feature3dgs.cli.main import main
from feature3dgs.data import load_scene, make_synthetic_scene
from feature3dgs.distill.cache import FeatureCache
from feature3dgs.model.ply import load_ply


def test_extract_then_distill_reuses_the_cache(tmp_path, capsys):
    data = make_synthetic_scene(tmp_path / "scene", n_views=4, n_test=1, width=32, height=32)
    cache_dir = tmp_path / "cache"
    assert main(["extract", "--data", str(data), "--teacher", "clip", "--random-weights-for-testing",
                 "--cache-dir", str(cache_dir), "--no-progress"]) == 0
    caches = FeatureCache.find(cache_dir)
    assert len(caches) == 1
    names = {v.name for v in load_scene(data).views}
    assert set(caches[0].names()) == names
    out = tmp_path / "out"
    code = main(["distill", "--data", str(data), "--out", str(out), "--teacher", "clip",
                 "--random-weights-for-testing", "--render-dim", "8", "--iterations", "10",
                 "--cache-dir", str(cache_dir), "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err and "cosine" in captured.out
    assert load_ply(out / "point_cloud.ply").feature_dim == 8
    cfg = json.loads((out / "distill_config.json").read_text())
    assert cfg["teacher"]["kind"] == "clip" and cfg["teacher"]["random_weights"] is True
    assert cfg["render_dim"] == 8 and cfg["teacher_dim"] == 512 and cfg["config"]["render_dim"] == 8
    assert len(FeatureCache.find(cache_dir)) == 1  # same key: nothing extracted anew


def test_distill_errors_name_the_problem(tmp_path, capsys):
    assert main(["distill", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    data = make_synthetic_scene(tmp_path / "scene", n_views=2, n_test=1, width=16, height=16)
    assert main(["distill", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--init-model", str(tmp_path / "nope.ply"), "--random-weights-for-testing"]) == 2
    assert "--init-model" in capsys.readouterr().err


def test_init_model_from_ply_checkpoint_or_folder(tmp_path):
    from feature3dgs.training.checkpoint import save_checkpoint
    from feature3dgs.run import load_model
    from feature3dgs.model.gaussians import GaussianModel
    from feature3dgs.model.ply import save_ply

    model = GaussianModel.from_points(torch.rand(20, 3), torch.rand(20, 3), sh_degree=1)
    save_ply(model, tmp_path / "run" / "point_cloud.ply")
    save_checkpoint({"model": model.raw_state()}, tmp_path / "ckpt.pt")
    for path in (tmp_path / "run", tmp_path / "run" / "point_cloud.ply", tmp_path / "ckpt.pt"):
        loaded = load_model(path)
        assert torch.allclose(loaded.means, model.means) and loaded.num_gaussians == 20
