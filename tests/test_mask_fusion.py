"""Multi-view object masks on the Gaussians (feature3dgs.apps.mask_fusion) on a hand-built scene of two
separated Gaussian clusters, a Gaussian hidden behind one of them, and several cameras."""

from __future__ import annotations

import dataclasses

import math

import pytest
import torch

from feature3dgs.model.camera import Camera, look_at
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import GaussianModel, inverse_sigmoid
from feature3dgs.apps.mask_fusion import (CarriedPoints, carry_prompt_points, fuse_object, gaussian_mask_votes,
                                     lift_points, multiview_sam_masks, object_mask_bce,
                                     optimize_object_weights, refine_mask_ray_pairs, render_object_mask,
                                     threshold_mask)
from feature3dgs.rendering.kernels import render
from feature3dgs.rendering.reference import render as ref_render

W, H = 64, 48
D = 8
N_GRID = 16  # Gaussians per cluster grid
N_WALL = 10  # opaque layers behind cluster A that hide the occluded Gaussian
K = torch.tensor([[50.0, 0.0, W / 2], [0.0, 50.0, H / 2], [0.0, 0.0, 1.0]])
UP = (0.0, -1.0, 0.0)  # world +y points down the image, as with an identity viewmat


pytestmark = pytest.mark.usefixtures("one_thread")


def cam_at(eye, target=(0.0, 0.0, 3.0), name="cam", width=W, height=H) -> Camera:
    k = K.clone()
    k[0, 2], k[1, 2] = width / 2, height / 2
    return Camera(look_at(eye, target, UP), k, width, height, name)


def _grid(cx: float, z: float) -> torch.Tensor:
    g = torch.linspace(-0.2, 0.2, 4)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.reshape(-1) + cx, yy.reshape(-1), torch.full((16,), z)], 1)


@pytest.fixture(scope="module")
def scene():
    """Cluster A (x ~ -0.8): a 4x4 grid at z = 3 and ten wide opaque layers at z ~ 3.3 behind it;
    cluster B (x ~ +0.8): a 4x4 grid at z = 3; one small Gaussian at z = 3.7 behind A's layers,
    hidden from every camera."""
    g = torch.Generator().manual_seed(0)
    a = _grid(-0.8, 3.0)
    wall = torch.tensor([[-0.8, 0.0, 3.3 + 0.01 * i] for i in range(N_WALL)])
    b = _grid(0.8, 3.0)
    hidden = torch.tensor([[-0.8, 0.0, 3.7]])
    means = torch.cat([a, wall, b, hidden])
    n = means.shape[0]
    scales = torch.full((n, 3), 0.08)
    scales[N_GRID:N_GRID + N_WALL] = torch.tensor([0.35, 0.35, 0.01])
    scales[-1] = 0.03
    opac = torch.full((n, 1), 0.9)
    opac[N_GRID:N_GRID + N_WALL] = 0.9997
    is_a = torch.zeros(n, dtype=torch.bool)
    is_a[:N_GRID + N_WALL] = True
    is_b = torch.zeros(n, dtype=torch.bool)
    is_b[N_GRID + N_WALL:N_GRID + N_WALL + N_GRID] = True
    feats = torch.zeros(n, D)
    feats[is_a, 0] = 1.0
    feats[~is_a, 1] = 1.0
    params = {
        "means": means,
        "sh_dc": torch.randn(n, 1, 3, generator=g) * 0.5,
        "sh_rest": torch.zeros(n, 0, 3),
        "opacities": inverse_sigmoid(opac),
        "scales": torch.log(scales),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        "features": feats,
    }
    model = GaussianModel(params)
    cams = [cam_at((ex, ey, 0.0), name=f"v{i}") for i, (ex, ey) in
            enumerate([(0.0, 0.0), (-0.4, 0.0), (0.4, 0.0), (0.0, 0.3), (0.3, -0.3)])]
    held_out = cam_at((0.25, -0.2, 0.2), name="held_out")
    return {"model": model, "is_a": is_a, "is_b": is_b, "hidden": n - 1, "cams": cams, "held_out": held_out}


def cluster_masks(model: GaussianModel, is_a: torch.Tensor, cam: Camera):
    """Exact mask of cluster A (pixels where A's blending weight exceeds everything else's) and A's
    coverage (that, where the render's alpha > 0.5)."""
    ind = torch.stack([is_a, ~is_a], 1).float()
    with torch.no_grad():
        o = render(model.means, model.params["quats"], model.scales, model.opacities, model.colors_dc,
                   cam.viewmat, cam.K, cam.width, cam.height, features=ind)
    exact = o.features[0] > o.features[1]
    return exact, exact & (o.alpha[0] > 0.5)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


# ---------------------------------------------------------------------------------- votes
def test_scene_is_as_designed(scene):
    model, is_a = scene["model"], scene["is_a"]
    for cam in scene["cams"] + [scene["held_out"]]:
        exact, cover = cluster_masks(model, is_a, cam)
        assert cover.sum() > 60 and (~exact & (model.render(cam).alpha[0].detach() > 0.5)).sum() > 30


def test_votes_with_exact_masks_separate_the_clusters(scene):
    model, is_a, is_b, cams = scene["model"], scene["is_a"], scene["is_b"], scene["cams"]
    masks = [cluster_masks(model, is_a, c)[0] for c in cams]
    votes, (pos, tot) = gaussian_mask_votes(model, cams, masks, return_evidence=True)
    assert votes.shape == (model.num_gaussians,) and votes.dtype == torch.float32
    assert votes.min() >= 0 and votes.max() <= 1
    seen = tot > 0
    assert bool(seen[is_b].all()) and int(seen[is_a].sum()) >= N_GRID + 2
    assert votes[is_a & seen].min() > 0.99, votes[is_a & seen]
    assert votes[is_b].max() < 0.01
    # the Gaussian behind A's opaque layers is never blended: no evidence, weight 0
    h = scene["hidden"]
    assert tot[h] == 0 and pos[h] == 0 and votes[h] == 0
    # so are Gaussians no camera sees; a single view is enough for a selection
    v1 = gaussian_mask_votes(model, cams[0], masks[0])
    assert v1[is_a & (v1 > 0)].min() > 0.99 and v1[is_b].max() < 0.01
    # None skips a view: same result as leaving it out
    v_skip = gaussian_mask_votes(model, cams, [masks[0]] + [None] * (len(cams) - 1))
    torch.testing.assert_close(v_skip, v1)
    # background_weight < 1 favours inclusion
    soft = [m.float() * 0.7 for m in masks]
    v_lo = gaussian_mask_votes(model, cams, soft, background_weight=0.2)
    v_hi = gaussian_mask_votes(model, cams, soft, background_weight=1.0)
    assert bool((v_lo[seen] >= v_hi[seen] - 1e-6).all()) and v_lo[is_a & seen].mean() > v_hi[is_a & seen].mean()


def test_votes_equal_brute_force_blending_weights():
    """Tiny overlapping scene: sum_p w_i m / sum_p w_i from per-Gaussian weight images of the
    reference renderer (features = identity: channel i is w_i(p))."""
    g = torch.Generator().manual_seed(3)
    n = 5
    means = torch.tensor([[-0.3, 0.0, 3.0], [0.0, 0.1, 3.2], [0.25, -0.1, 2.9], [0.1, 0.0, 3.6], [0.0, 0.0, 8.0]])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.2 + 0.1
    opac = torch.tensor([0.7, 0.5, 0.9, 0.6, 0.8])
    model = GaussianModel({
        "means": means, "sh_dc": torch.zeros(n, 1, 3), "sh_rest": torch.zeros(n, 0, 3),
        "opacities": inverse_sigmoid(opac)[:, None], "scales": torch.log(scales), "quats": quats})
    cams = [cam_at((0.0, 0.0, 0.0), (0.0, 0.0, 3.0), width=32, height=24),
            cam_at((0.5, 0.2, 0.3), (0.0, 0.0, 3.0), width=32, height=24)]
    masks = [torch.rand(24, 32, generator=g), torch.rand(24, 32, generator=g) > 0.5]
    pos = torch.zeros(n, dtype=torch.float64)
    tot = torch.zeros(n, dtype=torch.float64)
    for cam, m in zip(cams, masks):
        out = ref_render(model.means.detach(), model.params["quats"].detach(), model.scales.detach(),
                         model.opacities.detach(), model.colors_dc.detach(), cam.viewmat, cam.K, cam.width,
                         cam.height, features=torch.eye(n))
        w = out.features.double()  # (n, H, W): w_i(p)
        pos += (w * m.double()).sum((1, 2))
        tot += w.sum((1, 2))
    expected = (pos / tot).float()
    votes, (pos_k, tot_k) = gaussian_mask_votes(model, cams, masks, return_evidence=True)
    assert bool((tot > 1).all())
    torch.testing.assert_close(tot_k, tot, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(pos_k, pos, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(votes, expected, rtol=2e-4, atol=1e-5)


def test_optimized_weights_lower_the_bce_and_separate_the_clusters(scene):
    model, is_a, is_b, cams = scene["model"], scene["is_a"], scene["is_b"], scene["cams"]
    covers = [cluster_masks(model, is_a, c)[1] for c in cams[:3]]
    w, hist = optimize_object_weights(model, cams[:3], covers, steps=80, lr=0.2, return_history=True)
    assert w.shape == (model.num_gaussians,) and w.min() >= 0 and w.max() <= 1
    assert hist[0] == pytest.approx(math.log(2), abs=1e-3)  # all weights start at 0.5
    half = torch.full_like(w, 0.5)
    bce0 = object_mask_bce(model, half, cams[:3], covers)
    bce1 = object_mask_bce(model, w, cams[:3], covers)
    assert bce0 == pytest.approx(math.log(2), abs=1e-3)
    assert bce1 < 0.25 * bce0, (bce0, bce1)
    seen = gaussian_mask_votes(model, cams[:3], covers, return_evidence=True)[1][1] > 0
    assert w[is_a & seen].mean() > 0.85 and w[is_b].mean() < 0.15
    assert w[is_b].max() < 0.5 and w[scene["hidden"]] == 0
    # the rendered mask of the fitted weights matches cluster A from a held-out camera
    held = scene["held_out"]
    truth = cluster_masks(model, is_a, held)[1]
    pred = threshold_mask(render_object_mask(model, w, held))
    assert iou(pred, truth) > 0.9


def test_render_object_mask_from_a_held_out_camera(scene):
    model, is_a, cams, held = scene["model"], scene["is_a"], scene["cams"], scene["held_out"]
    obj = fuse_object(model, cams, [cluster_masks(model, is_a, c)[0] for c in cams], method="vote")
    m = obj.render_mask(held)
    assert m.shape == (H, W) and m.dtype == torch.float32 and m.min() >= 0 and m.max() <= 1
    truth = cluster_masks(model, is_a, held)[1]
    assert iou(obj.binary_mask(held), truth) > 0.95
    # coverage masks (alpha > 0.5, what SAM would give) leave out the tails of A's wide layers,
    # which lowers their votes; a background weight below 1 keeps them (IoU 0.82 at 1, 0.90 at 0.5)
    covers = [cluster_masks(model, is_a, c)[1] for c in cams]
    generous = fuse_object(model, cams, covers, method="vote", background_weight=0.5)
    assert iou(generous.binary_mask(held), truth) > 0.85
    assert obj.selection.dtype == torch.bool and bool(obj.selection[scene["is_b"]].logical_not().all())
    # cluster B's pixels stay out of the mask
    exact_a, _ = cluster_masks(model, is_a, held)
    b_cover = ~exact_a & (model.render(held).alpha[0].detach() > 0.5)
    assert b_cover.sum() > 30 and m[b_cover].max() < 0.05
    # normalised: the object's share of the surface, 0 where nothing is rendered
    mn = render_object_mask(model, obj.weights, held, normalize=True)
    assert mn.min() >= 0 and mn.max() <= 1 and bool((mn >= m - 1e-5).all())
    opt = fuse_object(model, cams[:2], [cluster_masks(model, is_a, c)[1] for c in cams[:2]], method="optimize",
                      steps=30)
    assert opt.method == "optimize" and iou(opt.binary_mask(held), truth) > 0.9


# ---------------------------------------------------------------------------------- prompts
def test_carry_prompt_points_round_trip_and_visibility():
    src = cam_at((0.0, 0.0, 0.0), (0.0, 0.0, 3.0))
    dst1 = cam_at((0.7, -0.3, 0.4), (0.1, 0.0, 3.0))
    behind = cam_at((0.0, 0.0, 6.0), (0.0, 0.0, 10.0))   # the point is behind it
    away = cam_at((0.0, 0.0, 0.0), (4.0, 0.0, 3.0))      # the point projects outside its image
    P = torch.tensor([[0.31, -0.17, 3.4], [-0.5, 0.2, 2.8]])
    uv, z = src.project(P)
    # depth map holding each point's z at its pixel (and junk elsewhere)
    depth = torch.full((H, W), 7.0)
    for (x, y), zz in zip(uv.tolist(), z.tolist()):
        depth[int(y), int(x)] = zz
    world, valid = lift_points(uv, depth, src)
    assert bool(valid.all())
    torch.testing.assert_close(world.float(), P, atol=1e-4, rtol=0)
    carried = carry_prompt_points(uv, depth, src, [dst1, behind, away])
    assert len(carried) == 3 and all(isinstance(c, CarriedPoints) for c in carried)
    exp_uv, exp_z = dst1.project(P)
    assert (carried[0].points - exp_uv).abs().max() < 0.5  # within half a pixel (in fact ~1e-4)
    assert (carried[0].points - exp_uv).abs().max() < 1e-2
    torch.testing.assert_close(carried[0].z, exp_z, atol=1e-4, rtol=0)
    assert carried[0].visible.tolist() == [True, True]
    assert carried[1].visible.tolist() == [False, False] and bool((carried[1].z < 0).all())
    assert carried[2].visible.tolist() == [False, False]
    u2 = carried[2].points[:, 0]
    assert bool(((u2 < 0) | (u2 >= W)).all())

    # occlusion against the destination's depth map
    d_ok = torch.full((H, W), float(exp_z.mean()))
    for (x, y), zz in zip(exp_uv.tolist(), exp_z.tolist()):
        d_ok[int(y), int(x)] = zz * 1.02                 # within the 5% tolerance
    d_occ = d_ok.clone()
    x0, y0 = exp_uv[0].tolist()
    d_occ[int(y0), int(x0)] = 0.5 * float(exp_z[0])    # something much closer covers point 0
    d_empty = torch.zeros(H, W)                          # nothing rendered: nothing occludes
    c = carry_prompt_points(uv, depth, src, [dst1, dst1, dst1], [d_ok, d_occ, d_empty])
    assert c[0].visible.tolist() == [True, True]
    assert c[1].visible.tolist() == [False, True]
    assert c[2].visible.tolist() == [True, True]
    # a point without source depth (no surface) is visible nowhere
    depth0 = depth.clone()
    depth0[int(uv[1, 1]), int(uv[1, 0])] = 0.0
    c0 = carry_prompt_points(uv, depth0, src, [dst1])[0]
    assert c0.visible.tolist() == [True, False] and bool(torch.isnan(c0.points[1]).all())

    with pytest.raises(ValueError, match="points_xy"):
        carry_prompt_points(torch.zeros(2, 3), depth, src, [dst1])
    with pytest.raises(ValueError, match="points_xy"):
        carry_prompt_points([[W + 1.0, 3.0]], depth, src, [dst1])
    with pytest.raises(ValueError, match="depth"):
        carry_prompt_points(uv, torch.ones(H, W + 1), src, [dst1])
    with pytest.raises(ValueError, match="dst_depths"):
        carry_prompt_points(uv, depth, src, [dst1], [torch.ones(3, 3)])
    with pytest.raises(ValueError, match="dst_cameras"):
        carry_prompt_points(uv, depth, src, [])


def test_multiview_sam_masks_end_to_end(scene):
    pytest.importorskip("segment_anything")
    from feature3dgs.distill.teachers import build_teacher

    teacher = build_teacher("sam", random_weights=True)
    dec = FeatureDecoder(D, 256)
    model, cams = scene["model"], scene["cams"]
    src = cams[0]
    a_front = model.means[: N_GRID].detach().mean(0, keepdim=True)
    b_front = model.means[N_GRID + N_WALL: 2 * N_GRID + N_WALL].detach().mean(0, keepdim=True)
    uv, _ = src.project(torch.cat([a_front, b_front]))
    away = cam_at((0.0, 0.0, 0.0), (0.0, 0.0, -3.0), name="away")      # looks the other way
    right = cam_at((0.0, 0.0, 0.0), (3.0, 0.0, 3.0), name="right")     # sees B but not A
    dsts = [cams[1], cams[2], away, right]
    res = multiview_sam_masks(model, dec, teacher, src, uv, [1, 0], dsts)
    fields = dataclasses.asdict(res)
    assert set(fields) == {"masks", "scores", "points", "labels", "carried"}
    assert all(len(getattr(res, k)) == len(dsts) for k in fields)
    for k in (0, 1):
        m = res.masks[k]
        assert m.shape == (H, W) and m.dtype == torch.bool
        assert isinstance(res.scores[k], float)
        assert res.points[k].shape == (2, 2) and res.labels[k].tolist() == [1, 0]
    assert res.masks[2] is None and res.masks[3] is None  # no visible positive point
    assert res.points[2] is None and res.scores[3] is None
    assert res.carried[2].visible.tolist() == [False, False]
    assert res.carried[3].visible.tolist() == [False, True]  # B's point survives, A's does not
    # the carried points are the surface points under the clicks, seen from the destinations
    with torch.no_grad():
        out = model.render(src)
    z_src = (out.depth[0] / out.alpha[0])[int(uv[0, 1]), int(uv[0, 0])]
    P, _ = lift_points(uv[:1], torch.full((H, W), float(z_src)), src)
    exp, _ = cams[1].project(P.float())
    torch.testing.assert_close(res.points[0][:1], exp, atol=1e-3, rtol=0)
    # multimask: best of three
    res3 = multiview_sam_masks(model, dec, teacher, src, uv[:1], None, cams[1:2], multimask_output=True)
    assert res3.masks[0].shape == (H, W)
    with pytest.raises(ValueError, match="labels"):
        multiview_sam_masks(model, dec, teacher, src, uv, [0, 0], dsts)
    with pytest.raises(ValueError, match="labels"):
        multiview_sam_masks(model, dec, teacher, src, uv, [1], dsts)


# ---------------------------------------------------------------------------------- refinement
def test_ray_pair_refinement_snaps_a_blurry_mask_to_the_colour_edge():
    g = torch.Generator().manual_seed(0)
    edge = 30
    cols = torch.arange(W, dtype=torch.float32)[None].expand(H, W)
    truth = cols < edge
    image = torch.where(truth[None], torch.tensor([0.8, 0.2, 0.1])[:, None, None],
                        torch.tensor([0.1, 0.3, 0.8])[:, None, None])
    image = (image + 0.02 * torch.randn(3, H, W, generator=g)).clamp(0, 1)
    # the mask's boundary is 3 px off, blurred over several pixels
    blurry = torch.sigmoid((edge + 3 - (cols + 0.5)) / 2.0)
    before_err = float((blurry - truth.float()).abs().mean())
    before_iou = iou(blurry > 0.5, truth)
    refined = refine_mask_ray_pairs(blurry, image)
    assert refined.shape == (H, W) and refined.dtype == torch.float32
    assert refined.min() >= 0 and refined.max() <= 1
    after_err = float((refined - truth.float()).abs().mean())
    after_iou = iou(refined > 0.5, truth)
    assert after_err < 0.5 * before_err, (before_err, after_err)
    assert before_iou < 0.93 and after_iou > 0.99, (before_iou, after_iou)
    # 4-neighbours work too; zero smoothness returns the input
    assert iou(refine_mask_ray_pairs(blurry, image, neighbours=4) > 0.5, truth) > 0.99
    torch.testing.assert_close(refine_mask_ray_pairs(blurry, image, smoothness=0.0), blurry)
    # on a uniformly coloured image the refinement only smooths (no edge to snap to)
    flat = refine_mask_ray_pairs(blurry, torch.full((3, H, W), 0.5))
    assert float((flat - truth.float()).abs().mean()) > 0.8 * before_err
    with pytest.raises(ValueError, match="image"):
        refine_mask_ray_pairs(blurry, image[:, :, :10])
    with pytest.raises(ValueError, match="mask_prob"):
        refine_mask_ray_pairs(blurry * 2, image)
    with pytest.raises(ValueError, match="neighbours"):
        refine_mask_ray_pairs(blurry, image, neighbours=6)


# ---------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_value_errors_naming_the_argument(scene):
    model, cams = scene["model"], scene["cams"]
    good = torch.zeros(H, W, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        gaussian_mask_votes(model, cams[:1], [torch.zeros(H, W + 1)])
    with pytest.raises(ValueError, match="masks"):
        gaussian_mask_votes(model, cams[:2], [good])
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        gaussian_mask_votes(model, cams[:1], [torch.full((H, W), 2.0)])
    with pytest.raises(ValueError, match="masks"):
        gaussian_mask_votes(model, cams[:1], [None])
    with pytest.raises(ValueError, match="cameras"):
        gaussian_mask_votes(model, [], [])
    with pytest.raises(ValueError, match="cameras"):
        gaussian_mask_votes(model, ["not a camera"], [good])
    with pytest.raises(ValueError, match="background_weight"):
        gaussian_mask_votes(model, cams[:1], [good], background_weight=-1.0)
    with pytest.raises(ValueError, match="init"):
        optimize_object_weights(model, cams[:1], [good], steps=1, init=torch.zeros(3))
    with pytest.raises(ValueError, match="steps"):
        optimize_object_weights(model, cams[:1], [good], steps=-1)
    with pytest.raises(ValueError, match="weights"):
        render_object_mask(model, torch.zeros(model.num_gaussians + 1), cams[0])
    with pytest.raises(ValueError, match="method"):
        fuse_object(model, cams[:1], [good], method="magic")


def test_votes_work_inside_no_grad(scene):
    model, is_a, cams = scene["model"], scene["is_a"], scene["cams"]
    masks = [cluster_masks(model, is_a, c)[0] for c in cams[:2]]
    expected = gaussian_mask_votes(model, cams[:2], masks)
    with torch.no_grad():
        torch.testing.assert_close(gaussian_mask_votes(model, cams[:2], masks), expected)
        w = optimize_object_weights(model, cams[:1], masks[:1], steps=3)
    assert w.shape == expected.shape
