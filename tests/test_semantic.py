"""Closed-set semantic rendering (feature3dgs.apps.semantic): gradients against the reference renderer,
post-hoc fitting on a two-cluster scene and on the built-in synthetic scene, joint training on the
Trainer, files, densification, palette and input errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from feature3dgs.model.camera import Camera
from feature3dgs.training.checkpoint import load_checkpoint
from feature3dgs.training.densify import clone_gaussians, keep_gaussians, split_gaussians
from feature3dgs.model.gaussians import SEMANTICS
from feature3dgs.run import RunDir, load_run
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.model.ply import load_ply, save_ply
from feature3dgs.rendering.kernels import render
from feature3dgs.rendering.reference import render as ref_render
from feature3dgs.utils.metrics import confusion_matrix, segmentation_metrics
from feature3dgs.apps.semantic import (EMPTY_LOGIT, SemanticLoss, SemanticTrainer, add_semantic_logits, empty_logits,
                                       fit_semantics, predict_semantic_map, render_semantic_logits, semantic_logits,
                                       semantic_loss)
from feature3dgs.utils.visualize import class_palette, colorize_labels
from feature3dgs.training.config import TrainConfig
from scenes import cluster_camera, two_clusters

W, H = 64, 48
N_PER = 20
QUIET = dict(progress=False, lpips=None, tensorboard=False, eval_every=0, checkpoint_every=0,
             save_test_renders=False)


pytestmark = pytest.mark.usefixtures("one_thread")


make_camera = cluster_camera


@pytest.fixture(scope="module")
def clusters():
    """Two clusters at z = 3 (as in test_applications): A at x ~ -0.8, B at x ~ +0.8."""
    params, is_a = two_clusters(N_PER)
    model = GaussianModel(params)
    return model, is_a


def cluster_labels(model: GaussianModel, is_a: torch.Tensor, cam: Camera) -> torch.Tensor:
    """(H, W) int64: 1 where cluster A covers the pixel (alpha > 0.5, A's weight the larger),
    2 for B, 0 elsewhere."""
    ind = torch.stack([is_a, ~is_a], 1).float()
    with torch.no_grad():
        o = render(model.means, model.params["quats"], model.scales, model.opacities, model.colors_dc,
                   cam.viewmat, cam.K, cam.width, cam.height, features=ind)
    lab = torch.where(o.features[0] > o.features[1], 1, 2)
    return torch.where(o.alpha[0] > 0.5, lab, torch.zeros_like(lab))


# ---------------------------------------------------------------------------------- rendering
def test_rendered_logits_and_gradients_match_the_reference_renderer():
    g = torch.Generator().manual_seed(1)
    n, k = 25, 4
    model = GaussianModel({
        "means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.2, 1.0, 0.6]) + torch.tensor([0, 0, 3.0]),
        "sh_dc": torch.randn(n, 1, 3, generator=g), "sh_rest": torch.zeros(n, 3, 3),
        "opacities": torch.randn(n, 1, generator=g), "scales": torch.rand(n, 3, generator=g) * 1.5 - 3.0,
        "quats": torch.randn(n, 4, generator=g), SEMANTICS: torch.randn(n, k, generator=g) * 2})
    cam = make_camera(0.1, -0.05, w=24, h=20)
    labels = torch.randint(0, k, (20, 24), generator=g)
    bg = (torch.randn(k, generator=g)).requires_grad_(True)
    names = ["means", "quats", "scales", "opacities", SEMANTICS]
    inputs = [model.params[nm] for nm in names] + [bg]

    logits = render_semantic_logits(model, cam, bg)
    assert logits.shape == (k, 20, 24)
    grads = torch.autograd.grad(semantic_loss(logits, labels), inputs)

    ref = ref_render(model.means, model.params["quats"], model.scales, model.opacities, model.colors_dc.detach(),
                     cam.viewmat, cam.K, cam.width, cam.height, features=model.params[SEMANTICS],
                     feature_background=bg)
    torch.testing.assert_close(logits, ref.features, atol=1e-5, rtol=1e-5)
    ref_grads = torch.autograd.grad(torch.nn.functional.cross_entropy(ref.features[None], labels[None]), inputs)
    for nm, a, b in zip(names + ["background"], grads, ref_grads):
        assert float(b.abs().max()) > 0, nm
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3, msg=nm)

    # frozen geometry: only the logits (and the background) get gradients
    frozen = render_semantic_logits(model, cam, bg, detach_geometry=True)
    torch.testing.assert_close(frozen, logits)
    loss = semantic_loss(frozen, labels)
    loss.backward()
    assert model.params["means"].grad is None and model.params[SEMANTICS].grad is not None


def test_empty_pixels_are_background_class_zero(clusters):
    model, _ = clusters
    m = add_semantic_logits(model, 3, init=torch.tensor([-2.0, 4.0, 1.0]))  # every Gaussian says "1"
    away = Camera(torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0])), make_camera().K, W, H, "away")  # sees nothing
    logits = render_semantic_logits(m, away)
    torch.testing.assert_close(logits, empty_logits(3)[:, None, None].expand(3, H, W))
    assert empty_logits(3).tolist() == [EMPTY_LOGIT, 0.0, 0.0]
    assert bool((predict_semantic_map(m, away) == 0).all())
    # plain alpha-weighted logits: 0 where empty (argmax ties resolve to class 0 as well)
    z = render_semantic_logits(m, away, background=torch.zeros(3))
    assert bool((z == 0).all()) and bool((predict_semantic_map(m, away, torch.zeros(3)) == 0).all())
    # on the clusters: covered pixels say 1, empty ones 0, partial ones are blended with the background
    cam = make_camera()
    pred = predict_semantic_map(m, cam)
    with torch.no_grad():
        out = model.render(cam)
        full = render_semantic_logits(m, cam)
    a = out.alpha[0]
    assert bool((pred[a > 0.9] == 1).all()) and bool((pred[a < 0.01] == 0).all())
    expect = a * torch.tensor([-2.0, 4.0, 1.0])[:, None, None] + (1 - a) * empty_logits(3)[:, None, None]
    torch.testing.assert_close(full, expect, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------- fitting
def test_fit_semantics_on_two_clusters_reaches_high_held_out_accuracy(clusters):
    model, is_a = clusters
    train = [make_camera(tx, ty, f"v{i}") for i, (tx, ty) in
             enumerate([(0.0, 0.0), (0.25, 0.0), (-0.25, 0.1), (0.1, -0.2)])]
    pairs = [(c, cluster_labels(model, is_a, c)) for c in train]
    assert all(int((lab == 1).sum()) > 50 and int((lab == 2).sum()) > 50 for _, lab in pairs)
    fitted, curve = fit_semantics(model, pairs, steps=120, lr=0.2)
    assert SEMANTICS not in model.params  # the input is untouched
    assert semantic_logits(fitted).shape == (2 * N_PER, 3)  # K from the largest label
    assert sum(curve[-10:]) / 10 < 0.25 * sum(curve[:3]) / 3, (curve[:3], curve[-10:])
    # geometry unchanged
    for name in ("means", "scales", "opacities", "quats"):
        assert torch.equal(fitted.params[name], model.params[name])
    held = make_camera(-0.15, 0.12, "held_out")
    truth = cluster_labels(model, is_a, held)
    pred = predict_semantic_map(fitted, held)
    assert pred.dtype == torch.int64 and pred.shape == (H, W)
    acc = float((pred == truth).float().mean())
    assert acc > 0.95, acc
    m = segmentation_metrics(confusion_matrix(pred, truth, 3))
    assert m["miou"] > 0.85, m
    # the Gaussians' own argmax is their cluster
    cls = semantic_logits(fitted).argmax(1)
    assert bool((cls[is_a] == 1).all()) and bool((cls[~is_a] == 2).all())


@pytest.fixture(scope="module")
def synthetic():
    """The built-in synthetic scene at 32x32 and 600 Gaussians from its points after 200 quick RGB
    steps (~3 s)."""
    from feature3dgs.data import builtin_scene, load_scene
    from feature3dgs.training.trainer import Trainer

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # (module fixtures run before the autouse one_thread)
    try:
        scene = load_scene(builtin_scene(), target_width=32)
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(scene.points.shape[0], generator=g)[:600]
        model = GaussianModel.from_points(scene.points[idx], scene.colors[idx], sh_degree=0, init_opacity=0.5)
        tr = Trainer(scene, TrainConfig(iterations=200, sh_degree=0, densify_from=10 ** 6, densify_until=1,
                                        **QUIET), model=model)
        tr.train()
    finally:
        torch.set_num_threads(old)
    return scene, tr.model


def _miou(model, scene, views) -> dict:
    conf = sum(confusion_matrix(predict_semantic_map(model, v.camera), scene.load_labels(v, "class"), 4)
               for v in views)
    return segmentation_metrics(conf)


def test_fit_semantics_on_the_synthetic_scene(synthetic):
    scene, model = synthetic
    fitted, curve = fit_semantics(model, scene, steps=240, lr=0.1)
    assert semantic_logits(fitted).shape == (model.num_gaussians, len(scene.class_names))
    assert sum(curve[-24:]) / 24 < 0.3 * curve[0], (curve[0], curve[-24:])
    m = _miou(fitted, scene, scene.test_views)
    # measured 0.87 (class IoUs 0.96 / 0.85 / 0.84 / 0.82); the same fit on the untrained point
    # Gaussians gives ~0.6, all-background ~0.2
    assert m["miou"] > 0.75, m
    assert m["pixel_accuracy"] > 0.93, m
    assert bool((m["iou_per_class"] > 0.5).all()), m


def _mean_ce(model, scene, views) -> float:
    with torch.no_grad():
        return sum(float(semantic_loss(render_semantic_logits(model, v.camera), scene.load_labels(v, "class")))
                   for v in views) / len(views)


def test_semantic_loss_on_the_trainer_lowers_the_ce(synthetic, tmp_path):
    scene, model = synthetic
    cfg = TrainConfig(iterations=60, sh_degree=0, densify_from=10 ** 6, densify_until=1, seed=0, **QUIET)
    tr = SemanticTrainer(scene, cfg, model=model, lr_semantics=0.1, semantic_weight=0.5)
    assert SEMANTICS not in model.params and semantic_logits(tr.model).shape[1] == 4
    assert any(g["name"] == SEMANTICS for g in tr.optimizer.param_groups)
    views = scene.train_views[:6]
    before = _mean_ce(tr.model, scene, views)
    means0 = tr.model.means.detach().clone()
    seen = []
    tr.callbacks.append(lambda t, step, logs: seen.append(logs["loss/semantic"]))
    for _ in range(60):
        tr.train_step()
    after = _mean_ce(tr.model, scene, views)
    assert after < 0.6 * before, (before, after)
    assert len(seen) == 60 and sum(seen[-10:]) < sum(seen[:10])
    assert not torch.equal(tr.model.means.detach(), means0)  # RGB + semantic terms move the geometry
    # checkpoint and resume keep the logits and their Adam state
    path = tr.save_checkpoint(tmp_path / "ckpt.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["params"][SEMANTICS], tr.model.params[SEMANTICS].detach())
    back = SemanticTrainer.from_checkpoint(path, scene=scene)
    assert torch.equal(back.model.params[SEMANTICS], tr.model.params[SEMANTICS])
    tr.train_step()
    back.train_step()
    torch.testing.assert_close(back.model.params[SEMANTICS], tr.model.params[SEMANTICS])
    # a plain SemanticLoss entry names the view when labels are missing
    class NoLabels:
        def load_labels(self, view, kind):
            return None

    class FakeTrainer:
        scene = NoLabels()
        model = tr.model

    class Batch:
        view = scene.train_views[0]
        camera = scene.train_views[0].camera

    with pytest.raises(ValueError, match="labels"):
        SemanticLoss()(FakeTrainer(), Batch(), None)


# ---------------------------------------------------------------------------------- files and edits
def test_ply_round_trip_and_semantic_json(clusters, tmp_path):
    model, _ = clusters
    g = torch.Generator().manual_seed(5)
    m = add_semantic_logits(model, 3, init=torch.randn(model.num_gaussians, 3, generator=g))
    save_ply(m, tmp_path / "point_cloud.ply")
    back = load_ply(tmp_path / "point_cloud.ply")
    assert torch.equal(back.params[SEMANTICS], m.params[SEMANTICS].detach())
    names = ["background", "cluster_a", "cluster_b"]
    path = RunDir(tmp_path).write_class_names(names)
    assert path.name == RunDir.SEMANTIC and json.loads(path.read_text()) == {"class_names": names}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file
    fs = load_run(tmp_path)
    assert fs.class_names == names and fs.has_semantics
    assert torch.equal(fs.semantic_logits, m.params[SEMANTICS].detach())
    RunDir(tmp_path).write_class_names(names[:2])  # a count that does not match the logits is caught on load
    with pytest.raises(ValueError, match="classes"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="class_names"):
        RunDir(tmp_path).write_class_names([])
    with pytest.raises(ValueError, match="class_names"):
        RunDir(tmp_path).write_class_names("background")


def test_densification_and_edits_carry_the_logits(clusters):
    model, _ = clusters
    n = model.num_gaussians
    m = add_semantic_logits(model, 3, init=torch.arange(3 * n, dtype=torch.float32).reshape(n, 3))
    assert semantic_logits(m).shape == (n, 3)
    opt = torch.optim.Adam(m.param_groups({k: 0.1 for k in m.params.keys()}))
    m.params[SEMANTICS].sum().backward()
    opt.step()
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    assert clone_gaussians(m, opt, mask) == 3
    assert semantic_logits(m).shape == (n + 3, 3)
    st = opt.state[m.params[SEMANTICS]]  # Adam moments follow the rows, new rows start at 0
    assert st["exp_avg"].shape == (n + 3, 3) and bool((st["exp_avg"][n:] == 0).all())
    assert bool((st["exp_avg"][:n] != 0).all())
    assert torch.equal(m.params[SEMANTICS][n:], m.params[SEMANTICS][[1, 4, 7]])
    split = torch.zeros(n + 3, dtype=torch.bool)
    split[[0, 2]] = True
    parents = m.params[SEMANTICS][[0, 2]].detach().clone()
    assert split_gaussians(m, None, split, generator=torch.Generator().manual_seed(0)) == 2
    assert m.num_gaussians == n + 3 + 2 and semantic_logits(m).shape == (n + 5, 3)
    assert all(p.shape[0] == n + 5 for p in m.params.values())
    kids = m.params[SEMANTICS][-4:]
    assert torch.equal(kids, parents.repeat(2, 1))  # children copy their parent's logits
    keep = torch.ones(n + 5, dtype=torch.bool)
    keep[:5] = False
    keep_gaussians(m, None, keep)
    assert semantic_logits(m).shape == (n, 3)
    # edits keep the logits too
    from feature3dgs.apps.edit import extract

    sub = extract(m, torch.arange(n) < 10)
    assert torch.equal(sub.params[SEMANTICS], m.params[SEMANTICS].detach()[:10])
    # replacing logits with another K
    m4 = add_semantic_logits(m, 5, init=1.5)
    assert semantic_logits(m4).shape == (n, 5) and bool((m4.params[SEMANTICS] == 1.5).all())


def test_palette_and_colorize():
    for k in (1, 4, 20, 40):
        pal = class_palette(k)
        assert pal.shape == (k, 3) and pal.dtype == torch.float32
        assert pal.min() >= 0 and pal.max() <= 1
        assert float(pal[0].max()) <= 0.1  # background is black
        if k > 1:
            d = torch.cdist(pal, pal) + torch.eye(k) * 10
            assert float(d.min()) > (0.15 if k <= 20 else 0.05), k
    labels = torch.tensor([[0, 1], [2, 255]])
    img = colorize_labels(labels, class_palette(3), ignore_index=255)
    assert img.shape == (3, 2, 2)
    torch.testing.assert_close(img[:, 0, 1], class_palette(3)[1])
    torch.testing.assert_close(img[:, 1, 1], torch.ones(3))
    assert colorize_labels(torch.tensor([[0, 3]])).shape == (3, 1, 2)
    with pytest.raises(ValueError, match="labels"):
        colorize_labels(torch.tensor([[0, 3]]), class_palette(3))
    with pytest.raises(ValueError, match="k"):
        class_palette(0)


# ---------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_value_errors_naming_the_argument(clusters):
    model, _ = clusters
    cam = make_camera()
    logits = torch.zeros(3, H, W)
    with pytest.raises(ValueError, match="labels"):
        semantic_loss(logits, torch.zeros(H, W + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        semantic_loss(logits, torch.full((H, W), 3, dtype=torch.int64))  # class id >= K
    with pytest.raises(ValueError, match="labels"):
        semantic_loss(logits, torch.full((H, W), -1, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        semantic_loss(logits, torch.zeros(H, W))  # float labels
    with pytest.raises(ValueError, match="logits"):
        semantic_loss(torch.zeros(H, W), torch.zeros(H, W, dtype=torch.int64))
    # ignored pixels may hold any id; all ignored gives 0
    lab = torch.full((H, W), 255, dtype=torch.int64)
    assert float(semantic_loss(logits, lab, ignore_index=255)) == 0.0
    lab[0, 0] = 2
    assert float(semantic_loss(logits, lab, ignore_index=255)) == pytest.approx(math.log(3), abs=1e-6)
    with pytest.raises(ValueError, match="model"):
        render_semantic_logits(model, cam)
    with pytest.raises(ValueError, match="model"):
        predict_semantic_map(model, cam)
    m = add_semantic_logits(model, 3)
    with pytest.raises(ValueError, match="background"):
        render_semantic_logits(m, cam, background=torch.zeros(4))
    with pytest.raises(ValueError, match="num_classes"):
        add_semantic_logits(model, 0)
    with pytest.raises(ValueError, match="init"):
        add_semantic_logits(model, 3, init=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="labels"):
        fit_semantics(model, [(cam, torch.full((H, W), 5, dtype=torch.int64))], steps=1, num_classes=3)
    with pytest.raises(ValueError, match="scene"):
        fit_semantics(model, [], steps=1)
    with pytest.raises(ValueError, match="kind"):
        SemanticLoss(kind="parts")
