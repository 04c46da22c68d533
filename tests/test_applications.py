"""Applications of feature fields (segmentation, click selection, SAM prompting, 3D edits) on a
hand-built scene of two Gaussian clusters, and the segmentation metrics on hand-computed cases."""

from __future__ import annotations

import dataclasses

import math

import pytest
import torch

from feature3dgs.model.camera import Camera
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.apps.edit import delete, extract, gaussian_scores, recolor, select_gaussians
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.utils.metrics import confusion_matrix, segmentation_metrics
from feature3dgs.apps.query import relevancy_map, semantic_segmentation, text_relevancy
from feature3dgs.apps.segment import render_decoded_features, sam_masks_on_view, select_by_clicks
from scenes import cluster_camera, two_clusters

D = 8
W, H = 64, 48
N_PER = 20


def make_camera(tx: float = 0.0, name: str = "cam") -> Camera:
    return cluster_camera(tx, 0.0, name)


@pytest.fixture(scope="module")
def scene():
    """Two clusters at z = 3: left (x ~ -0.8, feature a) and right (x ~ +0.8, feature b)."""
    a = torch.zeros(D); a[0] = 1.0
    b = torch.zeros(D); b[1] = 1.0
    params, left = two_clusters(N_PER, sh_degree=1)
    params["features"] = torch.cat([a.repeat(N_PER, 1), b.repeat(N_PER, 1)])
    model = GaussianModel(params, active_sh_degree=1)
    return {"model": model, "a": a, "b": b, "left": left}


def _regions(model, cam):
    """Masks of the pixels covered (alpha > 0.5) by the left / right cluster."""
    with torch.no_grad():
        alpha = model.render(cam).alpha[0]
    cols = torch.arange(W)[None].expand(H, W)
    covered = alpha > 0.5
    return covered & (cols < W // 2), covered & (cols >= W // 2)


def test_clusters_are_visible_and_apart(scene):
    left_px, right_px = _regions(scene["model"], make_camera())
    assert left_px.sum() > 30 and right_px.sum() > 30
    # a gap of empty columns between the clusters
    with torch.no_grad():
        alpha = scene["model"].render(make_camera()).alpha[0]
    assert alpha[:, W // 2 - 2:W // 2 + 2].max() < 1e-3


def test_text_relevancy_and_semantic_segmentation(scene):
    model, a, b = scene["model"], scene["a"], scene["b"]
    cam = make_camera()
    with torch.no_grad():
        feats = render_decoded_features(model, cam)
    assert feats.shape == (D, H, W)
    text = torch.stack([a, b])
    rel = text_relevancy(feats, text)
    assert rel.shape == (2, H, W)
    assert rel.min() >= -1 - 1e-5 and rel.max() <= 1 + 1e-5
    left_px, right_px = _regions(model, cam)
    seg = semantic_segmentation(feats, text)
    assert seg.dtype == torch.int64 and seg.shape == (H, W)
    assert (seg[left_px] == 0).all() and (seg[right_px] == 1).all()
    torch.testing.assert_close(rel[0][left_px], torch.ones(int(left_px.sum())), atol=1e-4, rtol=0)
    # text embeddings are normalised internally: scaling them changes nothing
    torch.testing.assert_close(text_relevancy(feats, 3 * text), rel)

    # relevancy: plain cosine mapped to [0, 1], and LERF pairwise softmax against negatives
    r0 = relevancy_map(feats, a)
    assert r0.shape == (H, W) and r0.min() >= 0 and r0.max() <= 1
    assert r0[left_px].min() > 0.99 and r0[right_px].max() < 0.51
    neg = torch.zeros(2, D); neg[0, 2] = 1.0; neg[1, 1] = 1.0  # "stuff" and the right cluster
    r1 = relevancy_map(feats, a, neg, temperature=0.1)
    assert r1.min() >= 0 and r1.max() <= 1
    assert r1[left_px].min() > 0.99 and r1[right_px].max() < 0.01

    # with a decoder (identity map from D to D) the result is the same
    dec = FeatureDecoder(D, D)
    with torch.no_grad():
        dec.conv.weight.copy_(torch.eye(D)[:, :, None, None])
        dec.conv.bias.zero_()
        torch.testing.assert_close(render_decoded_features(model, cam, dec), feats)


def test_select_by_clicks_across_views(scene):
    model = scene["model"]
    cam1, cam2 = make_camera(0.0, "v1"), make_camera(0.25, "v2")  # ~4 px shift
    with torch.no_grad():
        f1 = render_decoded_features(model, cam1)
        f2 = render_decoded_features(model, cam2)
    uv, _ = cam1.project(model.means[scene["left"]].detach().mean(0, keepdim=True))
    click = (int(uv[0, 0]), int(uv[0, 1]))
    left2, right2 = _regions(model, cam2)
    sel = select_by_clicks(f1, [click], f2, threshold=0.9)
    assert sel.shape == (H, W) and sel.dtype == torch.bool
    assert sel[left2].all()
    assert not sel[right2].any()
    assert not sel[:, W // 2:].any()  # nothing on the right half at all
    # with a negative click on the right cluster the decision is positive-vs-negative
    uvr, _ = cam1.project(model.means[~scene["left"]].detach().mean(0, keepdim=True))
    sel2 = select_by_clicks(f1, [click], f2, negative_clicks=[(int(uvr[0, 0]), int(uvr[0, 1]))])
    assert sel2[left2].all() and not sel2[right2].any()
    # clicking the right cluster selects the right one
    sel3 = select_by_clicks(f1, [(int(uvr[0, 0]), int(uvr[0, 1]))], f2)
    assert sel3[right2].all() and not sel3[left2].any()
    with pytest.raises(ValueError):
        select_by_clicks(f1, [(W, 0)], f2)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.params.items()}


def _assert_unchanged(model, snap):
    for k, v in snap.items():
        assert torch.equal(model.params[k].detach(), v), k


def test_edit_select_extract_delete_recolor(scene):
    model, a, left = scene["model"], scene["a"], scene["left"]
    snap = _snapshot(model)
    scores = gaussian_scores(model, None, a)
    assert scores.shape == (2 * N_PER,)
    sel = select_gaussians(scores, threshold=0.5)
    assert torch.equal(sel, left)
    assert torch.equal(select_gaussians(scores, top_k=N_PER), left)
    assert torch.equal(select_gaussians(scores, threshold=0.5, top_k=3).sum(), torch.tensor(3))
    with pytest.raises(ValueError):
        select_gaussians(scores)
    # through a decoder (decode_vectors): a random invertible map, the query decoded alike
    dec = FeatureDecoder(D, 16)
    q = dec.decode_vectors(a[None])[0].detach()
    assert torch.equal(select_gaussians(gaussian_scores(model, dec, q), threshold=0.999), left)

    ext = extract(model, sel)
    dele = delete(model, sel)
    assert ext.num_gaussians == N_PER and dele.num_gaussians == N_PER
    assert ext.active_sh_degree == model.active_sh_degree
    for k in model.params:
        assert torch.equal(ext.params[k], model.params[k].detach()[sel]), k
        assert torch.equal(dele.params[k], model.params[k].detach()[~sel]), k

    red = torch.tensor([1.0, 0.0, 0.0])
    rec = recolor(model, sel, red)
    assert rec.num_gaussians == model.num_gaussians
    for k in model.params:
        if k in ("sh_dc", "sh_rest"):
            assert torch.equal(rec.params[k][~sel], model.params[k].detach()[~sel]), k
        else:
            assert torch.equal(rec.params[k], model.params[k].detach()), k
    torch.testing.assert_close(rec.colors_dc[sel], red.expand(N_PER, 3), atol=1e-6, rtol=0)
    assert (rec.params["sh_rest"][sel] == 0).all()
    # the rendered left cluster is red (composited on black), the right one unchanged
    cam = make_camera()
    left_px, right_px = _regions(model, cam)
    with torch.no_grad():
        out_new, out_old = rec.render(cam), model.render(cam)
    rgb_left = out_new.rgb[:, left_px]
    torch.testing.assert_close(rgb_left[0], out_new.alpha[0][left_px], atol=1e-4, rtol=0)
    assert rgb_left[1:].abs().max() < 1e-4
    torch.testing.assert_close(out_new.rgb[:, right_px], out_old.rgb[:, right_px])

    # the input model is untouched and the outputs do not share storage with it
    _assert_unchanged(model, snap)
    ext.params["means"].data.add_(1.0)
    rec.params["sh_dc"].data.add_(1.0)
    _assert_unchanged(model, snap)
    with pytest.raises(ValueError):
        delete(model, torch.ones(2 * N_PER, dtype=torch.bool))
    with pytest.raises(ValueError):
        extract(model, torch.ones(3, dtype=torch.bool))


def test_sam_masks_on_view(scene):
    pytest.importorskip("segment_anything")
    from feature3dgs.distill.teachers.sam import SamTeacher

    teacher = SamTeacher.tiny_random()
    assert teacher.feature_size(H, W) == (48, 64)
    dec = FeatureDecoder(D, 256)
    model = scene["model"]
    cam = make_camera()
    out = sam_masks_on_view(model, cam, dec, teacher, points=[(18, 24)], labels=[1])
    assert out.masks.shape == (1, H, W) and out.masks.dtype == torch.bool
    assert out.scores.shape == (1,)
    assert set(dataclasses.asdict(out.timings)) == {"render_ms", "decode_ms", "mask_ms"}
    assert all(v >= 0 for v in dataclasses.asdict(out.timings).values())
    out = sam_masks_on_view(model, cam, dec, teacher, boxes=[[5, 5, 30, 40], [34, 5, 60, 40]],
                            multimask_output=True)
    assert out.masks.shape == (6, H, W) and out.scores.shape == (6,)
    with pytest.raises(ValueError):
        sam_masks_on_view(model, cam, FeatureDecoder(D, 32), teacher, points=[(1, 1)])


# ---------------------------------------------------------------------------------- metrics
def test_confusion_matrix_and_metrics_by_hand():
    target = torch.tensor([[0, 0, 1],
                           [1, 2, 2]])
    pred = torch.tensor([[0, 1, 1],
                         [1, 2, 0]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.dtype == torch.int64
    # rows = target, columns = prediction
    assert conf.tolist() == [[1, 1, 0],
                             [0, 2, 0],
                             [1, 0, 1]]
    m = segmentation_metrics(conf)
    # class 0: TP 1, FP 1 (pixel (1,2)), FN 1 (pixel (0,1)) -> 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: TP 1, FP 0, FN 1 -> 1/2
    iou = [1 / 3, 2 / 3, 1 / 2]
    torch.testing.assert_close(m["iou_per_class"], torch.tensor(iou, dtype=torch.float64))
    assert m["miou"] == pytest.approx(sum(iou) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_metrics_absent_classes_and_ignore_index():
    target = torch.tensor([[0, 0, 255],
                           [3, 3, 3]])
    pred = torch.tensor([[0, 3, 1],
                         [3, 3, 3]])
    conf = confusion_matrix(pred, target, 4, ignore_index=255)  # pixel (0,2) is not counted
    assert int(conf.sum()) == 5
    m = segmentation_metrics(conf)
    iou = m["iou_per_class"]
    # class 0: TP 1, FN 1 -> 1/2; class 3: TP 3, FP 1 -> 3/4; classes 1 and 2 absent -> NaN
    assert iou[0] == pytest.approx(0.5) and iou[3] == pytest.approx(0.75)
    assert math.isnan(iou[1]) and math.isnan(iou[2])
    assert m["miou"] == pytest.approx((0.5 + 0.75) / 2)
    assert m["pixel_accuracy"] == pytest.approx(4 / 5)
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1.0) / 2)

    # a class only predicted (never in the target) counts in mIoU (IoU 0) but not in class accuracy
    m2 = segmentation_metrics(confusion_matrix(torch.tensor([1, 0]), torch.tensor([0, 0]), 2))
    assert m2["iou_per_class"].tolist() == [0.5, 0.0]
    assert m2["miou"] == pytest.approx(0.25)
    assert m2["mean_class_accuracy"] == pytest.approx(0.5)

    perfect = segmentation_metrics(confusion_matrix(target.clamp(max=3), target.clamp(max=3), 4))
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 4)
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 4)
    empty = segmentation_metrics(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_accuracy"])
