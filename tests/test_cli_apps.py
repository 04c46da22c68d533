"""The application sub-commands (segment, query, edit, select) end to end on tiny distilled
scenes, and click selection across views of the synthetic scene against its true labels."""

from __future__ import annotations

import json

import pytest
import torch

from feature3dgs.cli.main import main
from feature3dgs.data import load_scene, make_synthetic_scene
from feature3dgs.distill.distill import DistillConfig, distill
from feature3dgs.distill.labels import label_feature_cache
from feature3dgs.run import RunDir, load_run
from feature3dgs.model.ply import load_ply
from feature3dgs.utils.metrics import confusion_matrix, segmentation_metrics
from feature3dgs.apps.segment import click_features, select_by_clicks, stroke_pixels
from feature3dgs.training.config import TrainConfig

BOX = 2  # class id of the box in the synthetic scene


def _config(data, **kw) -> TrainConfig:
    base = dict(data=str(data), iterations=30, progress=False, lpips=None, tensorboard=False,
                init_random_points=1500, max_gaussians=3000, save_test_renders=False)
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic_scene(tmp_path_factory.mktemp("apps") / "scene", n_views=8, n_test=2, width=48, height=48)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Distillation runs with tiny random-weight SAM and CLIP teachers (meaningless features: the
    commands' plumbing is what is tested here)."""
    tmp = tmp_path_factory.mktemp("runs")
    scene = load_scene(data_dir)
    out = {}
    for teacher, dim in (("sam", 8), ("clip", 8)):
        dc = DistillConfig(teacher=teacher, random_weights=True, render_dim=dim, cache_dir=str(tmp / "cache"))
        distill(scene, RunDir(tmp / teacher), _config(data_dir), dc)
        out[teacher] = tmp / teacher
    return out


@pytest.fixture(scope="module")
def label_run(data_dir, tmp_path_factory):
    """A run distilled from the exact class labels (a multi-view consistent teacher)."""
    tmp = tmp_path_factory.mktemp("label_run")
    scene = load_scene(data_dir)
    cache = label_feature_cache(scene, tmp / "cache", dim=16)
    distill(scene, RunDir(tmp / "run"), _config(data_dir, iterations=150), DistillConfig(render_dim=16), cache=cache)
    return tmp / "run", scene


def test_feature_scene_loads_what_distill_wrote(runs, label_run):
    fs = load_run(runs["sam"])
    assert fs.teacher_kind == "sam" and fs.decoder is not None and fs.decoder.in_dim == 8
    assert fs.teacher().is_random and fs.teacher().dim == fs.decoder.out_dim == 256
    data = fs.load_data()
    assert len(data.test_views) == 2
    assert fs.render_features(data.test_views[0].camera).shape == (256, 48, 48)
    # A run from cached features has no teacher to rebuild, and says so.
    fs_label = load_run(label_run[0])
    assert fs_label.teacher_kind is None
    with pytest.raises(ValueError, match="no teacher"):
        fs_label.encode_text(["box"])
    with pytest.raises(ValueError, match="no text encoder"):
        fs.encode_text(["box"])


def test_feature_scene_save_never_overwrites_and_round_trips(runs, tmp_path):
    fs = load_run(runs["clip"])
    with pytest.raises(ValueError, match="overwrite"):
        fs.save(runs["clip"])
    fs.save(tmp_path / "copy")
    again = load_run(tmp_path / "copy")
    torch.testing.assert_close(again.model.features, fs.model.features)
    torch.testing.assert_close(again.decoder.conv.weight, fs.decoder.conv.weight)
    assert again.distillation == fs.distillation and again.train_config == fs.train_config


def test_load_feature_scene_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="point_cloud.ply"):
        load_run(tmp_path / "empty")


def test_segment_command_writes_masks_and_timings(runs, tmp_path, capsys):
    out = tmp_path / "seg"
    assert main(["segment", str(runs["sam"]), "--view", "0", "--point", "24,30", "--negative", "2,2",
                 "--box", "10,10,40,40", "--multimask", "--out", str(out)]) == 0
    s = json.loads((out / "segment.json").read_text())
    assert len(s["masks"]) == 3 and set(s["timings_ms"]) == {"render_ms", "decode_ms", "mask_ms"}
    assert all(t > 0 for t in s["timings_ms"].values())
    from PIL import Image
    for k in range(3):
        assert Image.open(out / f"mask_{k}.png").size == (48, 48)
        assert Image.open(out / f"overlay_{k}.png").size == (48, 48)
    printed = capsys.readouterr().out
    assert "render" in printed and "RANDOM" in printed
    # Bad prompts are refused with the argument named.
    assert main(["segment", str(runs["sam"]), "--point", "99,5", "--out", str(tmp_path / "x")]) == 2
    assert "outside the 48x48" in capsys.readouterr().err
    assert main(["segment", str(runs["sam"]), "--out", str(tmp_path / "x")]) == 2
    assert "--point" in capsys.readouterr().err
    assert main(["segment", str(runs["clip"]), "--point", "3,3", "--out", str(tmp_path / "x")]) == 2
    assert "SAM" in capsys.readouterr().err
    assert main(["segment", str(runs["sam"]), "--view", "7", "--point", "3,3", "--out", str(tmp_path / "x")]) == 2
    assert "2 views" in capsys.readouterr().err


def test_query_command(runs, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["query", str(runs["clip"]), "--labels", "sphere,box,ground", "--query", "box",
                 "--out", str(out)]) == 0
    q = json.loads((out / "query.json").read_text())
    assert abs(sum(q["pixel_fraction"].values()) - 1.0) < 1e-6
    assert 0.0 <= q["relevancy_mean"] <= q["relevancy_max"] <= 1.0
    for name in ("semantic.png", "relevancy_box.png", "relevancy_box_overlay.png"):
        assert (out / name).is_file()
    assert main(["query", str(runs["sam"]), "--labels", "box", "--out", str(tmp_path / "x")]) == 2
    assert "text encoder" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["delete", "extract", "recolor"])
def test_edit_command_changes_exactly_top_k(runs, tmp_path, action):
    out = tmp_path / action
    src = load_ply(runs["clip"] / "point_cloud.ply")
    assert main(["edit", str(runs["clip"]), "--query", "a red box", "--top-k", "50", "--action", action,
                 "--color", "0,1,0", "--max-views", "2", "--out", str(out)]) == 0
    e = json.loads((out / "edit.json").read_text())
    edited = load_run(out)  # a complete run folder: decoder and teacher come along
    assert edited.decoder is not None and edited.teacher_kind == "clip"
    n = src.num_gaussians
    assert e["n_selected"] == 50 and e["n_before"] == n
    expected = {"delete": n - 50, "extract": 50, "recolor": n}[action]
    assert edited.model.num_gaussians == e["n_after"] == expected
    if action == "recolor":
        changed = (edited.model.params["sh_dc"] != src.params["sh_dc"]).any(-1).any(-1)
        assert int(changed.sum()) <= 50  # only the selected Gaussians may change colour
        torch.testing.assert_close(edited.model.means, src.means)
        green = edited.model.colors_dc[changed]
        torch.testing.assert_close(green, torch.tensor([0.0, 1.0, 0.0]).expand_as(green), atol=1e-5, rtol=0)
    assert len(list((out / "before_after").glob("*.png"))) == 2
    assert (runs["clip"] / "point_cloud.ply").is_file()  # the original is untouched
    assert load_ply(runs["clip"] / "point_cloud.ply").num_gaussians == n


def test_edit_command_errors(runs, tmp_path, capsys):
    assert main(["edit", str(runs["clip"]), "--query", "x", "--action", "delete", "--out", str(tmp_path / "e")]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main(["edit", str(runs["clip"]), "--query", "x", "--threshold", "2", "--action", "delete",
                 "--out", str(tmp_path / "e")]) == 2
    assert "no Gaussian matches" in capsys.readouterr().err
    assert main(["edit", str(runs["clip"]), "--query", "x", "--top-k", "5", "--action", "delete",
                 "--out", str(runs["clip"])]) == 2
    assert "is the run folder" in capsys.readouterr().err


def _box_pixel(scene, view):
    """The box pixel deepest inside the box's region of the view (x, y): erode the region
    while anything is left."""
    labels = scene.load_labels(view, "class")
    inside = (labels == BOX).float()[None, None]
    while True:
        eroded = -torch.nn.functional.max_pool2d(-inside, 3, 1, 1)
        if eroded.sum() == 0:
            break
        inside = eroded
    y, x = divmod(int(inside.flatten().argmax()), labels.shape[1])
    assert labels[y, x] == BOX
    return float(x), float(y)


def test_clicks_select_the_object_in_every_view(label_run):
    run, scene = label_run
    fs = load_run(run)
    src = next(v for v in scene.test_views if (scene.load_labels(v, "class") == BOX).sum() > 20)
    x, y = _box_pixel(scene, src)
    f_src = fs.render_features(src.camera, decoded=False)
    conf = torch.zeros(2, 2, dtype=torch.int64)
    for view in scene.train_views + scene.test_views:
        mask = select_by_clicks(f_src, [(x, y)], fs.render_features(view.camera, decoded=False), threshold=0.9)
        truth = scene.load_labels(view, "class") == BOX
        conf += confusion_matrix(mask.long(), truth.long(), 2)
    iou_box = float(segmentation_metrics(conf)["iou_per_class"][1])
    assert iou_box > 0.6, conf  # 0.84 measured (150 steps at 48x48)


def test_select_command_selects_the_box_gaussians(label_run, tmp_path):
    run, scene = label_run
    src_index = next(i for i, v in enumerate(scene.test_views) if (scene.load_labels(v, "class") == BOX).sum() > 20)
    x, y = _box_pixel(scene, scene.test_views[src_index])
    out = tmp_path / "sel"
    assert main(["select", str(run), "--view", str(src_index), "--stroke", f"{x},{y};{x + 1},{y}",
                 "--threshold", "0.9", "--action", "extract", "--out", str(out)]) == 0
    s = json.loads((out / "select.json").read_text())
    assert s["n_clicks"] == len(stroke_pixels([(x, y), (x + 1, y)])) == 2
    assert len(list((out / "views").glob("*.png"))) == len(scene.train_views) + len(scene.test_views)
    mask = torch.load(out / "selection.pt")["mask"]
    assert 0 < int(mask.sum()) == s["n_selected_gaussians"] < s["n_gaussians"]
    # The extracted Gaussians render the box: where they are opaque the true label is the box.
    box = load_ply(out / "scene" / "point_cloud.ply")
    assert box.num_gaussians == int(mask.sum())
    hits = total = 0
    for view in scene.test_views + scene.train_views:
        with torch.no_grad():
            alpha = box.render(view.camera).alpha[0]
        covered = alpha > 0.5
        hits += int((scene.load_labels(view, "class")[covered] == BOX).sum())
        total += int(covered.sum())
    assert total > 0 and hits / total > 0.7, (hits, total)  # 0.84 measured


def test_stroke_pixels_and_click_features():
    pts = stroke_pixels([(0, 0), (4, 0), (4, 3)])
    assert pts[0] == (0.0, 0.0) and pts[-1] == (4.0, 3.0) and len(pts) == 1 + 4 + 3
    assert stroke_pixels([(2, 5)]) == [(2.0, 5.0)]
    with pytest.raises(ValueError, match="at least one point"):
        stroke_pixels([])
    f = torch.zeros(3, 4, 5)
    f[1, 2, 3] = 2.0
    torch.testing.assert_close(click_features(f, [(3, 2)]), torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="outside"):
        click_features(f, [(5, 0)])


def test_mask_command_fuses_sam_masks_of_several_views(runs, tmp_path, capsys):
    out = tmp_path / "mask"
    assert main(["mask", str(runs["sam"]), "--view", "0", "--point", "24,30", "--views", "4", "--refine",
                 "--out", str(out)]) == 0
    m = json.loads((out / "mask.json").read_text())
    assert len(m["sam_views"]) + len(m["skipped_views"]) == 5 and m["sam_views"]
    w = torch.load(out / "object_weights.pt")["weights"]
    assert w.shape == (m["n_gaussians"],) and 0 <= float(w.min()) and float(w.max()) <= 1
    assert int((w > 0.5).sum()) == m["n_selected_gaussians"]
    assert len(list((out / "fused").glob("*.png"))) == 2  # the test views (the prompted one among them)
    assert main(["mask", str(runs["sam"]), "--out", str(tmp_path / "x")]) == 2
    assert "--point" in capsys.readouterr().err


def test_semantic_command_learns_the_classes(label_run, tmp_path, capsys):
    run, scene = label_run
    out = tmp_path / "sem"
    assert main(["semantic", str(run), "--steps", "120", "--out", str(out)]) == 0
    s = json.loads((out / "semantic_metrics.json").read_text())
    assert s["class_names"] == scene.class_names
    assert s["loss_last"] < 0.5 * s["loss_first"]
    assert s["test"]["miou"] > 0.6, s["test"]  # held-out views
    fs = load_run(out)
    assert fs.has_semantics and fs.class_names == scene.class_names
    assert fs.semantic_logits.shape == (fs.model.num_gaussians, len(scene.class_names))
    assert len(list((out / "semantic").glob("*.png"))) == len(scene.test_views)
    assert main(["semantic", str(run), "--steps", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--steps" in capsys.readouterr().err
