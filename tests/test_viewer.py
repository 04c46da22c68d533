"""The web viewer's logic through its Python API, without a browser (feature3dgs.viewer).

The scene is a tiny distillation of the built-in synthetic scene with a tiny random-weight SAM
(see :func:`build_sam_scene`): its masks mean nothing, so these tests check the paths (camera ->
render, click -> prompt -> mask -> overlay, mask -> 3D selection -> edit -> save), not the
segmentation quality.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from feature3dgs.model.camera import Camera, intrinsics_from_fov, look_at
from feature3dgs.run import Run, RunDir, load_run
from feature3dgs.model.gaussians import GaussianModel, rgb_to_sh
from feature3dgs.viewer import overlay
from feature3dgs.viewer.camera_convert import (camera_from_viser, frame_size, matrix_to_wxyz, same_pose,
                                               scene_up_direction, viser_pose_from_camera, wxyz_to_matrix)
from feature3dgs.viewer.curves import main as curves_main
from feature3dgs.viewer.curves import plot_curves, read_log
from feature3dgs.apps.mask_fusion import gaussian_mask_votes
from feature3dgs.utils.visualize import class_palette
from feature3dgs.viewer.session import ViewerSession
from feature3dgs.utils.visualize import FeaturePCA

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- the tiny scene
def build_sam_scene(root: Path) -> Path:
    """A 30-step distillation of the built-in scene from a tiny random SAM (about 10 s on a CPU),
    built once per pytest run under ``root`` (shared with test_viewer_e2e.py). The run of
    ``python examples/distill_sam.py --quick`` on a quarter of the views, with the feature cache
    inside ``root``."""
    out = root / "sam_run"
    if (out / "point_cloud.ply").is_file() and (out / RunDir.PCA).is_file():
        return out
    from feature3dgs.data import builtin_scene, load_scene
    from feature3dgs.distill.distill import DistillConfig, distill
    from feature3dgs.distill.teachers import build_teacher
    from feature3dgs.training.config import TrainConfig

    data = builtin_scene()
    full = load_scene(data, background="black")
    # a quarter of the training views (and two test views): extracting the teacher's features
    # of all 28 views would take most of the time; the viewer reads all views' cameras later
    scene = dataclasses.replace(full, train_views=full.train_views[::4], test_views=full.test_views[:2])
    tc = TrainConfig(data=str(data), background="black", iterations=30, device="cpu", lpips=None,
                     tensorboard=False, progress=False, max_gaussians=4000, init_random_points=2000)
    dc = DistillConfig(teacher="sam", random_weights=True, render_dim=64, cache_dir=str(root / "cache"))
    distill(scene, RunDir(out), tc, dc, teacher=build_teacher("sam", random_weights=True))
    return out


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory) -> Path:
    return build_sam_scene(tmp_path_factory.getbasetemp() / "viewer_scene")


@pytest.fixture(scope="module")
def shared(sam_run):
    """The loaded scene's teacher and training cameras, built once for the module."""
    scene = load_run(sam_run)
    teacher = scene.teacher()
    cams = [v.camera for v in scene.load_data().train_views]
    return {"teacher": teacher, "cams": cams}


@pytest.fixture
def session(sam_run, shared) -> ViewerSession:
    """A fresh session (its own state and model) sharing the module's teacher."""
    s = ViewerSession.open(sam_run)
    s.scene.set_teacher(shared["teacher"])
    return s


def _render_rgb(model: GaussianModel, cam: Camera) -> torch.Tensor:
    with torch.no_grad():
        return model.render(cam).rgb


# ---------------------------------------------------------------------- camera conversion
def test_quaternion_matrix_roundtrip():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        q = torch.randn(4, generator=g).numpy()
        R = wxyz_to_matrix(q)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(R), 1.0)
        q2 = matrix_to_wxyz(R)
        assert np.allclose(wxyz_to_matrix(q2), R, atol=1e-10)
        assert np.isclose(abs(np.dot(q2, q / np.linalg.norm(q))), 1.0, atol=1e-10)
    for bad in ([0, 0, 0, 0], [np.nan, 1, 0, 0]):
        with pytest.raises(ValueError, match="quaternion"):
            wxyz_to_matrix(bad)


def test_quaternions_agree_with_viser():
    tf = pytest.importorskip("viser.transforms", reason="viser not installed (pip install viser)")
    q = np.array([0.3, -0.5, 0.2, 0.79])
    q /= np.linalg.norm(q)
    assert np.allclose(tf.SO3(q).as_matrix(), wxyz_to_matrix(q), atol=1e-10)
    R = tf.SO3.exp(np.array([0.4, -1.1, 2.0])).as_matrix()
    assert np.allclose(tf.SO3.from_matrix(R).as_matrix(), wxyz_to_matrix(matrix_to_wxyz(R)), atol=1e-10)


def test_viser_pose_is_opencv_camera_looking_at_target():
    """viser's client reports R_world_camera in OpenCV axes (z forward, y down): built the way
    viser's CameraHandle builds it from position / look_at / up, the look-at point must project to
    the image centre and the world's up must point up in the image."""
    position, target, up = np.array([3.0, -2.0, 1.5]), np.array([0.2, 0.1, 0.3]), np.array([0.0, 0.0, 1.0])
    z = (target - position) / np.linalg.norm(target - position)
    y = -(up - np.dot(up, z) * z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    wxyz = matrix_to_wxyz(np.stack([x, y, z], axis=1))
    cam = camera_from_viser(wxyz, position, math.radians(60), 16 / 9, height=90)
    assert (cam.width, cam.height) == (160, 90)
    uv, depth = cam.project(torch.tensor(np.stack([target, target + 0.3 * up]), dtype=torch.float32))
    assert torch.allclose(uv[0], torch.tensor([80.0, 45.0]), atol=1e-3) and depth[0] > 0
    assert uv[1, 1] < 45.0  # up is up
    assert math.isclose(cam.fov_y, math.radians(60), rel_tol=1e-6) and cam.fx == cam.fy
    # the same view through the package's own look_at helper
    assert torch.allclose(cam.viewmat, look_at(position, target, up), atol=1e-5)


def test_frame_size_and_bad_cameras():
    assert frame_size(16 / 9, 640) == (640, 360)
    assert frame_size(0.5, 200) == (100, 200)
    assert frame_size(1e-6, 100) == (1, 100)
    q = [1.0, 0, 0, 0]
    cam = camera_from_viser(q, [0, 0, 0], 1.0, 2.0, long_side=64)
    assert (cam.width, cam.height) == (64, 32) and cam.cx == 32 and cam.cy == 16
    with pytest.raises(ValueError, match="exactly one"):
        camera_from_viser(q, [0, 0, 0], 1.0, 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        camera_from_viser(q, [0, 0, 0], 1.0, 1.0, height=10, long_side=10)
    with pytest.raises(ValueError, match="fov_y"):
        camera_from_viser(q, [0, 0, 0], math.pi, 1.0, height=10)
    with pytest.raises(ValueError, match="aspect"):
        camera_from_viser(q, [0, 0, 0], 1.0, 0.0, height=10)
    with pytest.raises(ValueError, match="position"):
        camera_from_viser(q, [0, np.inf, 0], 1.0, 1.0, height=10)
    with pytest.raises(ValueError, match="long_side"):
        frame_size(1.0, 0)


def test_camera_roundtrip_reproduces_training_render(session, shared):
    """Training camera -> viser pose -> Camera renders the training view's image."""
    cams = shared["cams"]
    up = scene_up_direction(cams)
    for cam in cams[:3]:
        pose = viser_pose_from_camera(cam, look_distance=2.0, up=up)
        back = camera_from_viser(pose.wxyz, pose.position, pose.fov_y, pose.aspect, height=cam.height)
        assert (back.width, back.height) == (cam.width, cam.height)
        assert torch.allclose(back.viewmat, cam.viewmat, atol=1e-5)
        assert torch.allclose(back.K, cam.K, atol=1e-4)
        assert same_pose(back, cam)
        ref, got = _render_rgb(session.model, cam), _render_rgb(session.model, back)
        # float32 round-off of the pose may flip a Gaussian at a threshold (alpha cut-off) in a pixel
        diff = (ref - got).abs()
        assert diff.mean() < 1e-5 and diff.max() < 0.02 and (diff > 1e-4).float().mean() < 1e-3
        # the orbit centre lies on the optical axis, look_distance in front
        uv, z = cam.project(torch.tensor(pose.look_at[None], dtype=torch.float32))
        assert torch.allclose(uv[0], torch.tensor([cam.cx, cam.cy]), atol=1e-2) and abs(float(z[0]) - 2.0) < 1e-4
        # half resolution through long_side is the training camera scaled by 0.5
        half = camera_from_viser(pose.wxyz, pose.position, pose.fov_y, pose.aspect, long_side=cam.width // 2)
        assert torch.allclose(half.K, cam.scaled(0.5).K, atol=1e-4)
    assert not same_pose(cams[0], cams[1])


def test_scene_up_direction():
    cams = [Camera(look_at([3 * math.cos(a), 3 * math.sin(a), 1.0], [0, 0, 0], up=(0, 0, 1)),
                   intrinsics_from_fov(1.0, 32, 32), 32, 32) for a in np.linspace(0, 6, 8)]
    up = scene_up_direction(cams)
    assert up[2] > 0.9 and np.isclose(np.linalg.norm(up), 1.0)
    assert np.allclose(scene_up_direction([]), [0, 0, 1])


# ---------------------------------------------------------------------- render modes
def test_modes_and_their_images(session, shared, sam_run):
    cam = shared["cams"][0]
    assert session.available_modes() == ["rgb", "depth", "alpha", "pca"]
    assert session.pca_source == str(sam_run / RunDir.PCA)
    with pytest.raises(ValueError, match="language teacher"):
        session.set_mode("relevancy")
    with pytest.raises(ValueError, match="semantic"):
        session.set_mode("semantic")
    with pytest.raises(ValueError, match="unknown mode"):
        session.set_mode("normals")
    with pytest.raises(ValueError, match="CLIP or LSeg"):
        session.set_query("a red ball")

    frames = {}
    for mode in session.available_modes():
        session.set_mode(mode)
        assert session.mode == mode
        f = session.render_frame(cam)
        assert f.shape == (cam.height, cam.width, 3) and f.dtype == np.uint8
        frames[mode] = f
    with torch.no_grad():
        out = session.model.render(cam, features=session.model.features)
    # rgb is the model's render on the run's background
    assert np.abs(frames["rgb"].astype(int) - np.round(out.rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255)).max() <= 1
    # depth and alpha are grey pictures, different from the colour image
    for m in ("depth", "alpha"):
        assert (frames[m][..., 0] == frames[m][..., 1]).all() and (frames[m][..., 1] == frames[m][..., 2]).all()
        assert np.abs(frames[m].astype(int) - frames["rgb"]).mean() > 10
    assert np.abs(frames["alpha"][..., 0].astype(int) - np.round(out.alpha[0].clamp(0, 1).numpy() * 255)).max() <= 1
    assert not np.array_equal(frames["depth"], frames["alpha"])
    # PCA: the distillation's saved projection of the decoded features
    pca = FeaturePCA.from_dict(torch.load(sam_run / RunDir.PCA, weights_only=True))
    with torch.no_grad():
        want = pca(session.scene.decoder(out.features))
    assert np.abs(frames["pca"].astype(int) - np.round(want.permute(1, 2, 0).numpy() * 255)).max() <= 1
    assert frames["pca"].std() > 5


def test_pca_fitted_when_not_saved(sam_run, shared):
    scene = load_run(sam_run)
    s = ViewerSession(scene, source_path=sam_run / "point_cloud.ply")
    s.pca, s.pca_source = None, None
    s.set_mode("pca")
    f1 = s.render_frame(shared["cams"][0])
    assert s.pca is not None and "fitted" in s.pca_source
    f2 = s.render_frame(shared["cams"][0])
    assert np.array_equal(f1, f2)  # fitted once, then fixed


class _TextTeacher:
    """A stand-in language teacher: fixed random unit embeddings per phrase."""

    name, is_random = "fake-text", True

    def __init__(self, dim: int):
        self.dim = dim

    def encode_text(self, prompts):
        rows = []
        for p in prompts:
            g = torch.Generator().manual_seed(int(hashlib.md5(p.encode()).hexdigest()[:8], 16))
            rows.append(torch.nn.functional.normalize(torch.randn(self.dim, generator=g), dim=0))
        return torch.stack(rows)


def test_relevancy_mode_with_a_text_encoder(sam_run, shared):
    from feature3dgs.apps.query import relevancy_map

    scene = load_run(sam_run)
    teacher = _TextTeacher(scene.decoder.out_dim)
    scene.set_teacher(teacher)
    s = ViewerSession(scene)
    assert "relevancy" in s.available_modes() and not s.has_sam
    cam = shared["cams"][1]
    s.set_mode("relevancy")
    plain = s.render_frame(cam)
    assert np.array_equal(plain, s.render_frame(cam, "rgb"))  # no query yet: the scene itself
    s.set_query("  the red ball ")
    assert s.query == "the red ball"
    f = s.render_frame(cam)
    with torch.no_grad():
        out = scene.model.render(cam, features=scene.model.features)
        rel = relevancy_map(scene.decoder(out.features), teacher.encode_text(["the red ball"])[0],
                            teacher.encode_text(list(s.negatives)))
    heat = overlay.apply_colormap(rel.numpy()).astype(np.float64)
    want = 0.35 * out.rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.65 * heat
    assert np.abs(f.astype(np.float64) - want).max() <= 1.5
    s.set_query("")
    assert s.query == "" and np.array_equal(s.render_frame(cam), plain)
    # without SAM, clicks select by feature similarity; boxes need SAM
    assert s.segmenter == "similarity"
    from feature3dgs.apps.segment import select_by_clicks

    m = s.click(60, 70, camera=cam)
    assert np.array_equal(m, select_by_clicks(out.features, [(60, 70)], out.features, 0.9).numpy())
    assert m[70, 60]
    m = s.click(20, 20, positive=False, camera=cam)
    assert np.array_equal(m, select_by_clicks(out.features, [(60, 70)], out.features,
                                              negative_clicks=[(20, 20)]).numpy())
    with pytest.raises(ValueError, match="box prompts need"):
        s.box(0, 0, 50, 50, camera=cam)


def test_semantic_mode(shared):
    g = torch.Generator().manual_seed(0)
    n, k = 300, 4
    model = GaussianModel.random(n, [-0.5] * 3, [0.5] * 3, sh_degree=0, generator=g)
    params = {name: p.detach().clone() for name, p in model.params.items()}
    params["opacities"][:] = 5.0  # nearly opaque, so the middle of the view is solid
    params["scales"][:] = math.log(0.12)
    logits = torch.full((n, k), -5.0)
    logits[:, 2] = 5.0  # every Gaussian is class 2
    params["semantics"] = logits
    scene = Run(model=GaussianModel(params, 0), class_names=["a", "b", "c", "d"])
    s = ViewerSession(scene)
    assert s.available_modes() == ["rgb", "depth", "alpha", "semantic"]
    s.set_mode("semantic")
    cam = Camera(look_at([0, -3, 0], [0, 0, 0], up=(0, 0, 1)), intrinsics_from_fov(0.8, 48, 40), 48, 40)
    f = s.render_frame(cam)
    with torch.no_grad():
        alpha = scene.model.render(cam).alpha[0].numpy()
    color = class_palette(k)[2]
    solid = alpha > 0.98
    assert solid.sum() > 20
    assert np.abs(f[solid].astype(float) - color.numpy() * 255 * alpha[solid, None]).max() <= 2


def test_plain_rgb_scene(shared):
    """A 3DGS scene without features: RGB, depth and alpha only; clicks say what is missing."""
    model = GaussianModel.random(200, [-0.5] * 3, [0.5] * 3, sh_degree=1, generator=torch.Generator().manual_seed(1))
    s = ViewerSession(Run(model=model), background="0.2,0.4,0.6")
    assert torch.allclose(s.background, torch.tensor([0.2, 0.4, 0.6]))
    assert s.available_modes() == ["rgb", "depth", "alpha"] and s.segmenter == "none"
    with pytest.raises(ValueError, match="no features"):
        s.set_mode("pca")
    cam = shared["cams"][0]
    assert s.render_frame(cam).shape == (cam.height, cam.width, 3)
    with pytest.raises(ValueError, match="features"):
        s.click(5, 5, camera=cam)
    assert s.prompt_camera is None and s.points == []


# ---------------------------------------------------------------------- prompts
def _expected_mask(session, cam, points=None, labels=None, boxes=None):
    from feature3dgs.apps.segment import sam_masks_on_view

    multi = boxes is None and points is not None and len(points) == 1
    res = sam_masks_on_view(session.model, cam, session.scene.decoder, session.scene.teacher(), points, labels,
                            boxes, multimask_output=multi)
    masks, scores = res.masks, res.scores
    order = torch.argsort(scores, descending=True).tolist()
    best = next((i for i in order if bool(masks[i].any())), order[0])
    return masks[best].numpy()


def test_click_prompt_mask_and_overlay(session, shared):
    cam, other = shared["cams"][0], shared["cams"][5]
    before = session.render_frame(cam)
    mask = session.click(40.5, 70.5, positive=True, camera=cam)
    assert mask.shape == (cam.height, cam.width) and mask.dtype == bool and mask.any()
    assert np.array_equal(mask, _expected_mask(session, cam, [[40.5, 70.5]], [1]))
    assert session.points == [(40.5, 70.5)] and session.labels == [1]
    st = session.status()
    assert st["mask_pixels"] == int(mask.sum()) and st["mask_score"] is not None
    # the overlay: the mask is tinted, the click marked; nothing changes outside them
    f = session.render_frame(cam)
    marker = np.zeros_like(mask)
    yy, xx = np.mgrid[0:cam.height, 0:cam.width]
    marker[(xx + 0.5 - 40.5) ** 2 + (yy + 0.5 - 70.5) ** 2 <= 7 ** 2] = True
    diff = np.abs(f.astype(int) - before).sum(2)
    assert (diff[mask & ~marker] > 0).mean() > 0.9
    assert (diff[~mask & ~marker] == 0).all()
    assert tuple(f[70, 40]) == overlay.POSITIVE_COLOR
    # the same pose at another resolution shows the overlay scaled; another pose shows none
    half = cam.scaled(0.5)
    fh = session.render_frame(half)
    assert tuple(fh[35, 20]) == overlay.POSITIVE_COLOR
    assert np.array_equal(session.render_frame(other), session.render_frame(other, overlays=False))
    # a negative click on the same view adds to the prompts
    m2 = session.click(100, 30, positive=False, camera=cam)
    assert session.labels == [1, 0]
    assert np.array_equal(m2, _expected_mask(session, cam, [[40.5, 70.5], [100, 30]], [1, 0]))
    assert tuple(session.render_frame(cam)[30, 100]) == overlay.NEGATIVE_COLOR
    # the camera (the prompt view) can be omitted for further clicks on it
    session.click(60, 60)
    assert len(session.points) == 3
    # a click on another view starts a new prompt set
    session.click(10, 10, camera=other)
    assert session.points == [(10.0, 10.0)] and session.prompt_camera is other
    # bad clicks raise and change nothing
    for x, y in ((-1, 5), (5, other.height), (float("nan"), 3)):
        with pytest.raises(ValueError, match="outside"):
            session.click(x, y, camera=other)
    assert session.points == [(10.0, 10.0)]
    session.clear_prompts()
    assert session.mask is None and session.points == [] and session.prompt_camera is None
    with pytest.raises(ValueError, match="no camera"):
        session.click(5, 5)


def test_box_prompt(session, shared):
    cam = shared["cams"][2]
    m = session.box(90, 100, 20, 30, camera=cam)  # corners in any order
    assert session.box_prompt == (20.0, 30.0, 90.0, 100.0)
    assert np.array_equal(m, _expected_mask(session, cam, boxes=np.array([[20, 30, 90, 100]], np.float32)))
    f = session.render_frame(cam)
    assert tuple(f[30, 50]) == overlay.BOX_COLOR and tuple(f[65, 20]) == overlay.BOX_COLOR
    # a point on the same view is combined with the box
    session.click(50, 60, camera=cam)
    assert session.box_prompt is not None and session.points == [(50.0, 60.0)]
    # corners are clipped to the image; a box under 2x2 pixels is refused and changes nothing
    session.box(-50, -50, 10, 10, camera=cam)
    assert session.box_prompt == (0.0, 0.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="2x2"):
        session.box(5, 5, 6, 40, camera=cam)
    with pytest.raises(ValueError, match="2x2"):
        session.box(-20, -20, -10, -10, camera=cam)
    assert session.box_prompt == (0.0, 0.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="finite"):
        session.box(0, 0, np.inf, 10, camera=cam)


# ---------------------------------------------------------------------- selection and edits
def test_select_from_mask(session, shared):
    cam = shared["cams"][0]
    with pytest.raises(ValueError, match="no mask"):
        session.select_from_mask()
    session.click(64, 64, camera=cam)
    sel = session.select_from_mask()
    assert sel.dtype == torch.bool and sel.shape == (session.num_gaussians,)
    votes = gaussian_mask_votes(session.model, [cam], [torch.from_numpy(session.mask)])
    assert torch.equal(sel, votes > 0.5)
    assert session.status()["selected"] == int(sel.sum())
    # from another view the selection (not the 2D mask) is shown, tinted
    session.select(torch.arange(session.num_gaussians) < 1500)
    other = shared["cams"][6]
    assert not np.array_equal(session.render_frame(other), session.render_frame(other, overlays=False))
    with pytest.raises(ValueError, match="bool"):
        session.select(torch.zeros(3, dtype=torch.bool))


def _params(model):
    return {k: v.detach().clone() for k, v in model.params.items()}


def test_delete_extract_recolor_change_exactly_the_selection(session):
    orig = _params(session.model)
    n = session.num_gaussians
    sel = torch.zeros(n, dtype=torch.bool)
    sel[::7] = True
    k = int(sel.sum())
    with pytest.raises(ValueError, match="nothing selected"):
        session.delete_selected()

    session.select(sel)
    assert session.recolor_selected([0.1, 0.9, 0.2]) == k
    p = _params(session.model)
    assert torch.allclose(p["sh_dc"][sel], rgb_to_sh(torch.tensor([0.1, 0.9, 0.2])).expand(k, 1, 3), atol=1e-6)
    assert (p["sh_rest"][sel] == 0).all()
    for name in orig:
        assert torch.equal(p[name][~sel], orig[name][~sel]), name
        if name not in ("sh_dc", "sh_rest"):
            assert torch.equal(p[name], orig[name]), name
    assert torch.equal(session.selection, sel)  # recolour keeps the selection

    assert session.delete_selected() == n - k
    p = _params(session.model)
    for name in orig:
        assert torch.equal(p[name], orig[name][~sel] if name not in ("sh_dc", "sh_rest") else p[name])
    assert session.selection is None
    assert session.undo() and session.num_gaussians == n

    session.undo()  # back before the recolour
    assert all(torch.equal(v, orig[k_]) for k_, v in _params(session.model).items())
    assert not session.undo()

    session.select(sel)
    assert session.extract_selected() == k
    p = _params(session.model)
    assert all(torch.equal(p[name], orig[name][sel]) for name in orig)
    session.select(torch.zeros(k, dtype=torch.bool))
    with pytest.raises(ValueError, match="no Gaussians"):
        session.delete_selected()
    with pytest.raises(ValueError, match="rgb"):
        session.recolor_selected([2, 0, 0])
    assert [e["op"] for e in session.edits] == ["extract"]


def test_edit_lifts_the_mask_when_nothing_is_selected(session, shared):
    session.click(64, 64, camera=shared["cams"][0])
    n = session.num_gaussians
    try:
        left = session.delete_selected()
    except ValueError as e:  # the random SAM's mask may hold no Gaussian by majority: say so
        assert "no Gaussians" in str(e)
        return
    assert left < n and session.edits[0]["selected"] == n - left


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_writes_a_new_scene_and_never_the_original(session, sam_run, tmp_path):
    ply_hash = _sha(sam_run / "point_cloud.ply")
    n = session.num_gaussians
    sel = torch.arange(n) % 3 == 0
    session.select(sel)
    session.delete_selected()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        session.save(sam_run)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        session.save(str(sam_run) + "/./")
    out = session.default_save_dir()
    assert out.parent == sam_run.parent and not out.exists()
    out = tmp_path / "edited"
    ply = session.save(out)
    assert ply == out / "point_cloud.ply" and _sha(sam_run / "point_cloud.ply") == ply_hash
    with pytest.raises(FileExistsError):
        session.save(out)
    session.save(out, overwrite=True)
    back = load_run(out)
    assert back.model.num_gaussians == n - int(sel.sum())
    assert torch.equal(back.model.means, session.model.means.detach())
    assert back.decoder is not None and back.teacher_kind == "sam"
    assert (out / RunDir.PCA).is_file() and (out / "log.csv").is_file()
    record = json.loads((out / "viewer_edits.json").read_text())
    assert record["source"] == str((sam_run / "point_cloud.ply").resolve())
    assert [e["op"] for e in record["edits"]] == ["delete"]
    # the saved scene opens in the viewer again, with the same PCA colours
    again = ViewerSession.open(out)
    assert again.pca_source == str(out / RunDir.PCA) and again.num_gaussians == back.model.num_gaussians
    # a bare .ply source is protected too
    bare = ViewerSession.open(ply)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        bare.save(out)


# ---------------------------------------------------------------------- progressive rendering
class _FakeCamera:
    """viser's CameraHandle as the render thread reads it."""

    def __init__(self, pose, width: int, height: int):
        self.wxyz, self.position, self.fov = pose.wxyz, pose.position.copy(), pose.fov_y
        self.image_width, self.image_height = width, height
        self.callbacks = []

    @property
    def aspect(self) -> float:
        return self.image_width / self.image_height

    def on_update(self, cb):
        self.callbacks.append(cb)

    def move(self, dx: float) -> None:
        self.position = self.position + np.array([dx, 0.0, 0.0])
        for cb in self.callbacks:
            cb(self)


class _FakeClient:
    def __init__(self, camera):
        self.client_id, self.camera, self.sent = 7, camera, []
        self.scene = self

    def set_background_image(self, image, format="jpeg", jpeg_quality=None):
        self.sent.append((time.monotonic(), image.shape, jpeg_quality))


def test_progressive_rendering_low_while_moving_then_refined(session, shared):
    from types import SimpleNamespace

    from feature3dgs.viewer.server import _ClientView

    errors = []
    owner = SimpleNamespace(session=session, max_resolution=128, moving_resolution=48, target_frame_ms=100.0,
                            settle_s=0.2, _update_status=lambda cam, ms: None,
                            _report_error=lambda client, title, e: errors.append(e))
    cam = shared["cams"][0]
    client = _FakeClient(_FakeCamera(viser_pose_from_camera(cam), 400, 400))
    view = _ClientView(owner, client)
    try:
        assert not client.sent  # nothing before the browser reports its camera
        for i in range(10):  # the camera moves for 0.3 s
            client.camera.move(0.01)
            time.sleep(0.03)
        last_move = time.monotonic()
        view_done = _wait_for(lambda: view.full_frames >= 1, 20)
        assert view_done and not errors
        sizes = [shape[:2] for _, shape, _ in client.sent]
        assert sizes[0] == (48, 48) and sizes[-1] == (128, 128) and view.moving_frames >= 1
        assert client.sent[-1][0] >= last_move + 0.15  # refined once the camera stood still
        assert view.last_full and view.last_camera.width == 128
        # the refined frame is the session's frame at the browser's current pose
        want = session.render_frame(camera_from_viser(client.camera.wxyz, client.camera.position,
                                                      client.camera.fov, 1.0, long_side=128))
        assert np.array_equal(view.last_frame, want)
        n = len(client.sent)
        view.invalidate()  # a state change (mode, click) re-renders at full resolution at once
        assert _wait_for(lambda: view.full_frames >= 2, 20)
        assert [shape[:2] for _, shape, _ in client.sent[n:]] == [(128, 128)]
    finally:
        view.stop()
        view.thread.join(timeout=10)
    assert not view.thread.is_alive()
    # adaptive size while moving: the frame that fits the time budget at the measured speed
    owner.moving_resolution, owner.max_resolution = None, 1000
    client.camera.image_width, client.camera.image_height = 2000, 1000
    view.ms_per_px = 1e-3  # 1 ms per 1000 pixels: 100 ms buys 100k pixels
    assert view.moving_long_side() == int(math.sqrt(1e5 * 2))
    view.ms_per_px = 1.0
    assert view.moving_long_side() == 64  # never below 64 pixels
    assert view.full_long_side() == 1000


def _wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


# ---------------------------------------------------------------------- overlay helpers
def test_overlay_helpers():
    img = np.full((20, 30, 3), 100, np.uint8)
    m = np.zeros((20, 30), bool)
    m[5:15, 10:20] = True
    out = overlay.draw_mask(img, m)
    assert (out[~m] == 100).all() and (out[m] != 100).any() and np.array_equal(img, np.full_like(img, 100))
    edge = overlay.mask_outline(m)
    assert edge[5, 12] and not edge[10, 15] and edge.sum() == 36
    assert overlay.resize_nearest(m, 40, 60)[20:30, 30:40].all()
    cm = overlay.apply_colormap(np.array([[0.0, 0.5, 1.0, np.nan]]))
    assert cm.shape == (1, 4, 3) and tuple(cm[0, 3]) == tuple(cm[0, 0]) and cm[0, 0, 2] > cm[0, 0, 0]
    b = overlay.draw_box(img, (2, 3, 12, 9))
    assert tuple(b[3, 5]) == overlay.BOX_COLOR and tuple(b[6, 6]) == (100, 100, 100)


# ---------------------------------------------------------------------- training curves
def test_curves_from_the_run_log(sam_run, tmp_path):
    series = read_log(sam_run)
    for tag in ("train/loss", "train/psnr", "test/psnr", "train/n_gaussians", "train/loss/feature"):
        assert tag in series and len(series[tag][0]) >= 1, tag
    out = tmp_path / "c" / "curves.png"
    img = plot_curves(sam_run / "log.csv", out, backend="pil")
    assert out.is_file() and img.ndim == 3 and img.shape[2] == 3 and img.std() > 5
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), img)
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no leftovers


def test_curves_with_matplotlib(sam_run):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the PIL plotter is used)")
    img = plot_curves(sam_run, backend="matplotlib")
    assert img.ndim == 3 and img.std() > 5


def test_curves_resumed_runs_and_bad_logs(tmp_path, capsys):
    log = tmp_path / "log.csv"
    rows = [["step", "elapsed_s", "tag", "value"], [10, 1, "train/loss", 0.5], [20, 2, "train/loss", 0.4],
            [10, 3, "train/loss", 0.45], [20, 3, "train/n_gaussians", 100]]  # a resumed run rewrote step 10
    with open(log, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    s = read_log(log)
    assert s["train/loss"][0].tolist() == [10, 20] and s["train/loss"][1].tolist() == [0.45, 0.4]
    assert curves_main([str(tmp_path)]) == 0 and (tmp_path / "curves.png").is_file()
    with pytest.raises(FileNotFoundError, match="no training log"):
        read_log(tmp_path / "nope")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        read_log(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("step,elapsed_s,tag,value\nx,1,train/loss,3\n")
    with pytest.raises(ValueError, match="line 2"):
        read_log(tmp_path / "bad2.csv")
    (tmp_path / "other.csv").write_text("step,elapsed_s,tag,value\n1,1,train/lr_means,3\n")
    with pytest.raises(ValueError, match="no loss"):
        plot_curves(tmp_path / "other.csv")
    assert curves_main([str(tmp_path / "nope")]) == 2
    assert "no training log" in capsys.readouterr().err


# ---------------------------------------------------------------------- the CLI
def test_cli_view_bad_inputs(tmp_path, capsys, monkeypatch, sam_run):
    from feature3dgs.cli.main import main

    assert main(["view", str(tmp_path / "missing")]) == 2
    assert "scene not found" in capsys.readouterr().err
    assert main(["view", str(tmp_path)]) == 2
    assert "no point_cloud.ply" in capsys.readouterr().err
    assert main(["view", str(sam_run), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "viser", None)  # as if viser were not installed
    assert main(["view", str(sam_run)]) == 2
    assert "pip install viser" in capsys.readouterr().err


def test_server_requires_viser(monkeypatch, session):
    from feature3dgs.viewer.server import ViewerServer

    monkeypatch.setitem(sys.modules, "viser", None)
    with pytest.raises(ImportError, match="pip install viser"):
        ViewerServer(session, port=0)


def test_cli_view_serves_on_loopback_and_stops_on_ctrl_c(sam_run, tmp_path):
    pytest.importorskip("viser", reason="viser not installed (pip install viser)")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "feature3dgs", "view", str(sam_run), "--port", "0",
                             "--max-resolution", "64"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    try:
        url = None
        end = time.monotonic() + 90
        while url is None and time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"feature3dgs viewer: (http://[\d.]+:\d+)", line)
            url = m.group(1) if m else None
        assert url is not None, "".join(lines)
        assert url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read(4096).lower()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
        assert "stopping the viewer" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
