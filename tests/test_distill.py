"""Feature distillation on a tiny synthetic scene with a multi-view consistent label teacher."""

from __future__ import annotations

import json

import pytest
import torch

from feature3dgs.data import load_scene, make_synthetic_scene
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.distill.distill import DistillConfig, FeatureDistillation, distill, student_features
from feature3dgs.distill.labels import label_feature_cache
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.model.ply import load_ply
from feature3dgs.run import RunDir
from feature3dgs.training.config import TrainConfig
from feature3dgs.training.trainer import TrainBatch


@pytest.fixture(scope="module")
def scene_and_cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    scene = load_scene(make_synthetic_scene(tmp / "scene", n_views=8, n_test=2, width=40, height=40))
    return scene, label_feature_cache(scene, tmp / "cache", dim=16), tmp


def quick_config(**kw) -> TrainConfig:
    base = dict(iterations=120, progress=False, lpips=None, tensorboard=False, init_random_points=1500,
                max_gaussians=4000, save_test_renders=False)
    return TrainConfig(**(base | kw))


def loss_drop(curve) -> float:
    first = sum(v for _, v in curve[:5]) / 5
    last = sum(v for _, v in curve[-10:]) / 10
    return first / last


def test_distillation_with_decoder_lowers_feature_loss_5x(scene_and_cache):
    scene, cache, tmp = scene_and_cache
    out = tmp / "with_decoder"
    m = distill(scene, RunDir(out), quick_config(), DistillConfig(render_dim=4, lr_decoder=1e-2), cache=cache)
    assert m.render_dim == 4 and m.teacher.dim == 16 and m.teacher.kind is None  # a prepared cache, no network
    assert loss_drop(m.feature_loss_curve) >= 5, m.feature_loss_curve[::20]
    assert m.features.cosine > 0.8  # held-out views
    # Saved: PLY with 4 feature channels, the decoder, the config, PCA panels.
    model = load_ply(out / "point_cloud.ply")
    assert model.feature_dim == 4
    decoder = FeatureDecoder.load(out / "decoder.pt")
    assert (decoder.in_dim, decoder.out_dim) == (4, 16)
    assert json.loads((out / "distill_config.json").read_text())["render_dim"] == 4
    assert len(list((out / "renders" / "features").glob("*.png"))) == len(scene.test_views)


def test_distillation_without_decoder_trains(scene_and_cache):
    scene, cache, _ = scene_and_cache
    m = distill(scene, None, quick_config(lr_features=2e-2), DistillConfig(), cache=cache)
    assert m.render_dim == 16 and m.decoder is None
    assert loss_drop(m.feature_loss_curve) >= 2, m.feature_loss_curve[::20]


def test_distilling_onto_a_trained_rgb_scene_adds_features(scene_and_cache):
    scene, cache, _ = scene_and_cache
    rgb_only = GaussianModel.from_points(scene.points[:500], scene.colors[:500], sh_degree=1)
    m = distill(scene, None, quick_config(iterations=20, sh_degree=1), DistillConfig(render_dim=8),
                model=rgb_only, cache=cache)
    assert m.model.feature_dim == 8


@pytest.mark.parametrize("to_geometry", [True, False])
def test_feature_gradient_to_geometry_is_switchable(scene_and_cache, to_geometry):
    scene, cache, _ = scene_and_cache
    model = GaussianModel.from_points(scene.points[:300], scene.colors[:300], sh_degree=0, feature_dim=4)
    with torch.no_grad():
        model.params["features"].normal_()
        model.params["opacities"].fill_(0.0)
    view = scene.train_views[0]
    cam = view.camera

    class FakeTrainer:
        device = torch.device("cpu")

    fake = FakeTrainer()
    fake.model = model
    loss_fn = FeatureDistillation(cache, 1.0, FeatureDecoder(4, 16), feature_to_geometry=to_geometry)
    out = model.render(cam, scene.background, features=model.features if to_geometry else None)
    batch = TrainBatch(1, view, cam, scene.load_image(view), scene.background)
    loss_fn(fake, batch, out)["feature"].backward()
    assert model.params["features"].grad.abs().sum() > 0
    geometry = [model.params[k].grad for k in ("means", "scales", "quats", "opacities")]
    if to_geometry:
        assert all(g is not None and g.abs().sum() > 0 for g in geometry)
    else:
        assert all(g is None or g.abs().sum() == 0 for g in geometry)


def test_student_features_resize_and_decode():
    dec = FeatureDecoder(3, 5)
    x = torch.randn(3, 32, 48)
    y = student_features(x, (8, 12), dec)
    assert y.shape == (5, 8, 12)
    # Decoding commutes with the (linear, weights-sum-to-one) resize.
    z = torch.nn.functional.interpolate(dec(x)[None], size=(8, 12), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(y, z, atol=1e-5, rtol=1e-5)


def test_same_seed_same_distilled_model(scene_and_cache):
    """The seed decides everything, the decoder's initial weights included (whatever the global
    RNG did before), so a distillation run is reproducible and an interrupted one resumable."""
    scene, cache, _ = scene_and_cache
    runs = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # a different global RNG state before each run
        torch.rand(noise)
        runs.append(distill(scene, None, quick_config(iterations=20), DistillConfig(render_dim=4), cache=cache))
    a, b = runs
    for k, v in a.model.params.items():
        assert torch.equal(v, b.model.params[k]), k
    for (ka, va), (kb, vb) in zip(a.decoder.state_dict().items(), b.decoder.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
