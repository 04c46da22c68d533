"""Teachers built tiny from the real library classes (segment_anything, open_clip) with random
weights: documented shapes and grids, agreement with the libraries' own pipelines, weights
resolution and error messages, and LSeg's checkpoint key structure."""

from __future__ import annotations

import math
import re
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("segment_anything")
pytest.importorskip("open_clip")

from feature3dgs.distill.teachers import LanguageTeacher, Teacher, build_teacher  # noqa: E402
from feature3dgs.distill.teachers._weights import file_digest  # noqa: E402
from feature3dgs.distill.teachers.base import check_image  # noqa: E402
from feature3dgs.distill.teachers.clip_dense import DenseClipTeacher, interpolate_pos_embed, maskclip_features  # noqa: E402
from feature3dgs.distill.teachers.lseg import (  # noqa: E402
    LSegConfig, LSegNet, LSegTeacher, build_lseg_from_state_dict, lseg_state_dict_from_checkpoint)
from feature3dgs.distill.teachers.sam import SAM_CHECKPOINTS, SamTeacher  # noqa: E402

DATA = Path(__file__).parent / "data"


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish content (random noise is a poor image) in [0, 1]
    low = torch.rand(3, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(low[None], size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)


@pytest.fixture(scope="module")
def sam():
    return SamTeacher.tiny_random(seed=0)


@pytest.fixture(scope="module")
def clip():
    return DenseClipTeacher.tiny_random(seed=0, resolution=64)


@pytest.fixture(scope="module")
def lseg():
    return LSegTeacher.tiny_random(seed=0, resolution=64)


# ---------------------------------------------------------------------- interface
def test_interface_and_cache_keys(sam, clip, lseg):
    for t in (sam, clip, lseg):
        assert isinstance(t, Teacher) and t.is_random
        assert t.weights_id == "random-seed-0"
        d = t.describe()
        assert d["dim"] == t.dim and d["is_random"] is True and d["teacher"] == t.name
    assert isinstance(clip, LanguageTeacher) and isinstance(lseg, LanguageTeacher)
    assert not isinstance(sam, LanguageTeacher)
    assert (sam.dim, clip.dim, lseg.dim) == (256, 512, 512)
    keys = {t.cache_key() for t in (sam, clip, lseg)}
    assert len(keys) == 3
    # weights and resolution are part of the key
    assert DenseClipTeacher.tiny_random(seed=1, resolution=64).cache_key() != clip.cache_key()
    assert DenseClipTeacher.tiny_random(seed=0, resolution=96).cache_key() != clip.cache_key()
    assert DenseClipTeacher.tiny_random(seed=0, resolution=64).cache_key() == clip.cache_key()


def test_check_image():
    assert check_image(torch.full((3, 4, 5), 255, dtype=torch.uint8)).max() == 1.0
    with pytest.raises(ValueError, match="255"):
        check_image(torch.full((3, 4, 5), 200.0))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        check_image(torch.rand(4, 5, 3))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        check_image(torch.rand(1, 3, 4, 5))


def test_extract_batch_mixed_sizes_matches_single(clip):
    imgs = [_image(40, 80, 1), _image(80, 40, 2), _image(40, 80, 3)]
    batch = clip.extract_batch(imgs)
    assert [tuple(f.shape) for f in batch] == [(512, 2, 4), (512, 4, 2), (512, 2, 4)]
    for im, f in zip(imgs, batch):
        torch.testing.assert_close(f, clip.extract(im), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- SAM
def test_sam_grid_matches_sam_padding(sam):
    # 2:1 landscape -> resized 512 x 1024 -> 32 x 64 valid cells of the 64 x 64 grid
    assert sam.feature_size(64, 128) == (32, 64)
    assert sam.feature_size(128, 128) == (64, 64)
    assert sam.feature_size(300, 100) == (64, math.ceil(341 / 16))  # 100 * 1024/300 = 341.3 -> 341
    # the grid reaches past the image by less than one cell
    eh, ew = sam.feature_extent(300, 100)
    assert eh == pytest.approx(300) and 100 <= ew < 100 + 16 * 300 / 1024
    assert sam.feature_extent(64, 128) == pytest.approx((64.0, 128.0))


@pytest.fixture(scope="module")
def sam_case(sam):
    """One 2:1 image through SAM's own SamPredictor and through the teacher (the image encoder is
    the slow part: each forward is shared by the tests below)."""
    from segment_anything import SamPredictor

    img = _image(64, 128, seed=5)
    pred = SamPredictor(sam.sam_model)
    pred.set_image((img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return {"img": img, "pred": pred, "full": pred.get_image_embedding()[0], "feats": sam.extract(img)}


def test_sam_extract_is_sampredictor_embedding_cropped(sam, sam_case):
    feats, full, pred = sam_case["feats"], sam_case["full"], sam_case["pred"]
    assert feats.shape == (256, 32, 64) and feats.dtype == torch.float32
    # SAM's own predictor on the same uint8 image: same embedding, cropped to the valid region
    assert full.shape == (256, 64, 64)
    assert pred.input_size == (512, 1024)
    torch.testing.assert_close(feats, full[:, :32, :64], atol=1e-4, rtol=1e-4)
    # the crop is exactly the valid region: the next row is padding and differs
    assert not torch.allclose(full[:, 32], full[:, 31])


def test_sam_image_embedding_is_full_square(sam, sam_case):
    torch.testing.assert_close(sam.image_embedding(sam_case["img"]), sam_case["full"], atol=1e-4, rtol=1e-4)


def test_sam_embedding_from_cropped_inverts_crop(sam):
    crop = torch.randn(256, 32, 64)
    full = sam.embedding_from_cropped(crop)
    assert full.shape == (256, 64, 64)
    assert torch.equal(full[:, :32], crop) and not full[:, 32:].any()
    edge = sam.embedding_from_cropped(crop, pad="edge")
    assert torch.equal(edge[:, 63], crop[:, 31])
    fill = sam.embedding_from_cropped(crop, pad=torch.arange(256.0))
    assert torch.equal(fill[:, 40, 10], torch.arange(256.0))
    with pytest.raises(ValueError):
        sam.embedding_from_cropped(torch.randn(256, 65, 10))


def test_sam_predict_masks_matches_sam_predictor(sam, sam_case):
    H, W = 64, 128
    pred, full, crop = sam_case["pred"], sam_case["full"], sam_case["feats"]
    pts, lab = np.array([[30.0, 20.0], [100.0, 40.0]]), np.array([1, 0])
    ref_masks, ref_scores, _ = pred.predict(point_coords=pts, point_labels=lab, multimask_output=False)

    masks, scores = sam.predict_masks(full, pts, lab, image_size=(H, W), return_scores=True)
    assert masks.shape == (1, H, W) and masks.dtype == torch.bool
    assert torch.equal(masks, torch.from_numpy(ref_masks))
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-4, atol=1e-5)

    # cropped (e.g. rendered) features are padded back with the chosen fill
    m_crop = sam.predict_masks(crop, pts, lab, image_size=(H, W))
    m_ref = sam.predict_masks(sam.embedding_from_cropped(crop), pts, lab, image_size=(H, W))
    assert m_crop.shape == (1, H, W) and torch.equal(m_crop, m_ref)

    # boxes: one prompt per box, three masks each with multimask_output
    boxes = np.array([[0, 0, 60, 50], [10, 5, 120, 60]], dtype=np.float32)
    mm, sc = sam.predict_masks(full, boxes=boxes, image_size=(H, W), multimask_output=True, return_scores=True)
    assert mm.shape == (6, H, W) and sc.shape == (6,)
    ref_b, _, _ = pred.predict_torch(None, None, boxes=pred.transform.apply_boxes_torch(torch.from_numpy(boxes), (H, W)),
                                     multimask_output=True)
    assert torch.equal(mm, ref_b.reshape(6, H, W))
    with pytest.raises(ValueError):
        sam.predict_masks(full, image_size=(H, W))
    with pytest.raises(ValueError):
        sam.predict_masks(torch.randn(256, 10, 10), pts, image_size=(H, W))


def test_sam_missing_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE3DGS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        SamTeacher.from_checkpoint("vit_b", cache_dir=tmp_path)
    msg = str(e.value)
    assert "sam_vit_b_01ec64.pth" in msg and str(tmp_path) in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg
    # the default folder comes from $FEATURE3DGS_WEIGHTS
    monkeypatch.setenv("FEATURE3DGS_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "w"))):
        SamTeacher.from_checkpoint("vit_h", allow_download=False)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SamTeacher.from_checkpoint("vit_l", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="vit_h"):
        SamTeacher.from_checkpoint("vit_x")


def test_sam_from_checkpoint_standard_name_and_hash(sam, sam_case, tmp_path, monkeypatch):
    """The standard file in the weights folder is found, loaded strictly and hashed into the key
    (the registry builder is swapped for the tiny one: a real vit_b file is 375 MB)."""
    import segment_anything

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b",
                        lambda checkpoint=None: SamTeacher.tiny_random(seed=3).sam_model)
    path = tmp_path / SAM_CHECKPOINTS["vit_b"]
    torch.save(sam.sam_model.state_dict(), path)
    t = SamTeacher.from_checkpoint("vit_b", cache_dir=tmp_path, allow_download=False)
    assert not t.is_random and t.name == "sam-vit_b"
    assert t.weights_id == f"sha256:{file_digest(path)}" and t.weights_id in t.cache_key()
    torch.testing.assert_close(t.extract(sam_case["img"]), sam_case["feats"])
    # other weights in the same file name -> another key
    torch.save(SamTeacher.tiny_random(seed=9).sam_model.state_dict(), path)
    assert SamTeacher.from_checkpoint("vit_b", cache_dir=tmp_path).cache_key() != t.cache_key()
    # strict: a file with a missing key is rejected
    sd = sam.sam_model.state_dict()
    sd.pop("mask_decoder.iou_token.weight")
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"does not match SAM vit_b: 1 missing keys \['mask_decoder.iou_token"):
        SamTeacher.from_checkpoint("vit_b", cache_dir=tmp_path)


@pytest.mark.parametrize("case,pattern", [
    ("garbage", "SAM vit_b checkpoint .* is not a PyTorch weights file"),
    ("truncated", "is not a PyTorch weights file"),
    ("a list", "is not a state dict of tensors"),
    ("extra key", r"1 unexpected keys \['extra'\]"),
    ("wrong shape", r"1 of the wrong shape \['mask_decoder.iou_token.weight'\].*--teacher-model"),
    ("object", r"was not loaded: it references io.open"),
])
def test_sam_unusable_weights_are_value_errors_naming_the_file(sam, tmp_path, monkeypatch, case, pattern):
    import segment_anything

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b",
                        lambda checkpoint=None: SamTeacher.tiny_random(seed=3).sam_model)
    path = tmp_path / "sam.pth"
    sd = dict(sam.sam_model.state_dict())
    marker = tmp_path / "marker"
    if case == "garbage":
        path.write_bytes(b"\x89PNG not weights" * 50)
    elif case == "truncated":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif case == "a list":
        torch.save([torch.zeros(1)], path)
    elif case == "extra key":
        torch.save({**sd, "extra": torch.zeros(1)}, path)
    elif case == "wrong shape":
        torch.save({**sd, "mask_decoder.iou_token.weight": torch.zeros(2, 2)}, path)
    else:
        torch.save({**sd, "x": _WritesMarker(marker)}, path)
    with pytest.raises(ValueError, match=pattern) as e:
        SamTeacher.from_checkpoint("vit_b", checkpoint=str(path))
    assert str(path) in str(e.value) and not marker.exists()


# ---------------------------------------------------------------------- dense CLIP
def test_clip_shapes_and_normalisation(clip):
    f = clip.extract(_image(50, 100))
    assert clip.input_size(50, 100) == (32, 64)
    assert f.shape == (512, 2, 4) == (clip.dim, *clip.feature_size(50, 100))
    torch.testing.assert_close(f.norm(dim=0), torch.ones(2, 4))
    hi = DenseClipTeacher.tiny_random(seed=0, resolution=128)
    assert hi.extract(_image(96, 128)).shape == (512, 6, 8)
    assert hi.extract(_image(130, 70)).shape == (512, 8, 4)   # 128 x 69 -> 128 x 64


def test_maskclip_is_value_path_of_last_block(clip):
    """MaskCLIP == the model's own forward with the last block's attention restricted to each
    token itself (identity attention), no residual and no MLP, then ln_post and proj."""
    visual = clip.model.visual
    x = torch.randn(2, 3, 64, 64)
    captured = {}
    last = visual.transformer.resblocks[-1]
    h = last.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        pooled = visual(x)
        h.remove()
        xin = captured["x"]
        assert visual.transformer.batch_first
        y = last.ln_1(xin)
        n = y.shape[1]
        eye = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
        v = last.attn(y, y, y, need_weights=False, attn_mask=eye)[0]
        ref = visual.ln_post(v[:, 1:]) @ visual.proj
        dense = maskclip_features(visual, x)
    assert dense.shape == (2, 512, 4, 4)
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), ref, atol=1e-5, rtol=1e-5)
    assert pooled.shape == (2, 512)  # the normal forward still works (hooks removed, no state)


def test_pos_embed_interpolation():
    pos = torch.randn(1 + 16, 8)
    assert torch.equal(interpolate_pos_embed(pos, 4, 4), pos)
    out = interpolate_pos_embed(pos, 3, 6)
    assert out.shape == (1 + 18, 8) and torch.equal(out[0], pos[0])
    const = torch.ones(17, 2)
    torch.testing.assert_close(interpolate_pos_embed(const, 5, 7), torch.ones(36, 2))


def test_clip_encode_text(clip):
    t = clip.encode_text(["a photo of a chair", "a table", "a photo of a chair"])
    assert t.shape == (3, 512)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(t[0], t[2])
    assert not torch.allclose(t[0], t[1])
    assert clip.encode_text("one").shape == (1, 512)
    assert clip.encode_text([]).shape == (0, 512)


def test_clip_from_pretrained_file_and_missing_weights(clip, tmp_path, monkeypatch):
    import json

    import huggingface_hub.constants
    import open_clip

    cfg = {"embed_dim": 512, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "f3d-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    ckpt = tmp_path / "tiny.pt"
    torch.save(clip.model.state_dict(), ckpt)
    t = DenseClipTeacher.from_pretrained("f3d-tiny-test", pretrained=str(ckpt), resolution=64)
    assert not t.is_random and t.weights_id == f"sha256:{file_digest(ckpt)}"
    img = _image(40, 64)
    torch.testing.assert_close(t.extract(img), clip.extract(img), atol=1e-5, rtol=1e-5)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        DenseClipTeacher.from_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path / "empty"))
    assert "huggingface.co/timm/vit_base_patch16_clip_224.openai" in str(e.value)
    with pytest.raises(ValueError, match="neither a file nor"):
        DenseClipTeacher.from_pretrained("ViT-B-16", "no-such-tag")


@pytest.mark.parametrize("case,pattern", [
    ("unknown model", r"unknown CLIP model 'ViT-Q-99' \(--teacher-model\): not an open_clip model name"),
    ("garbage", "open_clip weights file .* is not a PyTorch weights file"),
    ("wrong keys", r"open_clip ViT-B-16 weights file .*bad.pt is not usable: .*Missing key"),
    ("object", r"was not loaded: it references io.open"),
])
def test_clip_unusable_weights_and_unknown_models_are_value_errors(tmp_path, case, pattern):
    path = tmp_path / "bad.pt"
    marker = tmp_path / "marker"
    model = "ViT-Q-99" if case == "unknown model" else "ViT-B-16"
    if case == "garbage":
        path.write_bytes(b"not weights at all " * 20)
    elif case in ("wrong keys", "unknown model"):
        torch.save({"foo": torch.zeros(2)}, path)
    else:
        torch.save({"foo": torch.zeros(2), "x": _WritesMarker(marker)}, path)
    with pytest.raises(ValueError, match=pattern) as e:
        DenseClipTeacher.from_pretrained(model, str(path), resolution=64)
    assert case == "unknown model" or str(path) in str(e.value)
    assert "\n" not in str(e.value) and not marker.exists()


# ---------------------------------------------------------------------- LSeg
def _expand(pattern: str) -> list[str]:
    parts = re.split(r"(\{[^}]*\})", pattern)
    choices = []
    for p in parts:
        if p.startswith("{"):
            body = p[1:-1]
            m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
            choices.append([str(i) for i in range(int(m[1]), int(m[2]) + 1)] if m else body.split(","))
        else:
            choices.append([p])
    return ["".join(c) for c in product(*choices)]


def _official_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (DATA / "lseg_keys.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, shape = line.split()
        dims = () if shape == "-" else tuple(int(s) for s in shape.split(","))
        for k in _expand(pattern):
            assert k not in keys, f"duplicate key {k} in the fixture"
            keys[k] = dims
    return keys


def test_lseg_full_model_keys_match_official_definition():
    official = _official_keys()
    with torch.device("meta"):
        net = LSegNet()  # the real sizes, no memory
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: s for k, s in ours.items() if official[k] != s} == {}
    assert sum(math.prod(s) for s in official.values()) > 490e6  # ViT-L + CLIP B/32 + DPT


def test_lseg_official_layout_checkpoint_loads_strictly():
    """A Lightning checkpoint with exactly the official keys (meta tensors: no memory) loads."""
    official = _official_keys()
    ckpt = {"state_dict": {f"net.{k}": torch.empty(s, device="meta") for k, s in official.items()},
            "hyper_parameters": {"backbone": "clip_vitl16_384", "num_features": 256, "arch_option": 0,
                                 "block_depth": 0, "activation": "lrelu"}, "epoch": 199}
    sd, hp = lseg_state_dict_from_checkpoint(ckpt)
    assert len(sd) == len(official) and hp["arch_option"] == 0
    net = build_lseg_from_state_dict(sd, hyper_parameters=hp)
    assert net.scratch.head1.weight.shape == (512, 256, 1, 1)
    # a missing or an extra key is refused
    bad = dict(sd)
    bad.pop("scratch.head1.bias")
    with pytest.raises(ValueError, match="scratch.head1.bias"):
        build_lseg_from_state_dict(bad)
    bad = dict(sd, logit_scale=torch.empty((), device="meta"))
    with pytest.raises(ValueError, match="logit_scale"):
        build_lseg_from_state_dict(bad)
    bad = dict(sd, **{"scratch.head1.bias": torch.empty(7, device="meta")})
    with pytest.raises(ValueError, match="1 tensors of the wrong shape.*scratch.head1.bias"):
        build_lseg_from_state_dict(bad)


def test_lseg_tiny_shapes(lseg):
    assert lseg.input_size(48, 100) == (32, 64)
    f = lseg.extract(_image(48, 100))
    assert f.shape == (512, 16, 32) == (lseg.dim, *lseg.feature_size(48, 100))
    torch.testing.assert_close(f.norm(dim=0), torch.ones(16, 32))
    t = lseg.encode_text(["wall", "floor"])
    assert t.shape == (2, 512)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    # the official logits path: (B, n_labels, H, W) at the input resolution
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        logits = lseg.net(x, lseg.tokenizer(["wall", "floor", "sky"]))
    assert logits.shape == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="multiple of 32"):
        lseg.net.image_features(torch.rand(1, 3, 48, 64))


def test_lseg_checkpoint_round_trip(lseg, tmp_path):
    sd = lseg.net.state_dict()
    ckpt = {"state_dict": {f"net.{k}": v.clone() for k, v in sd.items()}, "epoch": 1,
            "hyper_parameters": {"backbone": "clip_vitl16_384", "arch_option": 0}}
    path = tmp_path / "lseg.ckpt"
    torch.save(ckpt, path)
    t = LSegTeacher.from_checkpoint(str(path), config=LSegConfig.tiny(), resolution=64)
    assert not t.is_random and t.weights_id == f"sha256:{file_digest(path)}"
    loaded = t.net.state_dict()
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    img = _image(64, 64, seed=7)
    torch.testing.assert_close(t.extract(img), lseg.extract(img))
    torch.testing.assert_close(t.encode_text(["a"]), lseg.encode_text(["a"]))
    # arch_option 2 adds scratch.head_block, which the keys reveal
    with pytest.raises(ValueError, match="head_block"):
        build_lseg_from_state_dict(dict(sd), LSegConfig.tiny(), {"arch_option": 2, "block_depth": 1})
    with pytest.raises(FileNotFoundError, match="demo_e200.ckpt"):
        LSegTeacher.from_checkpoint(str(tmp_path / "missing.ckpt"))


def _fake_modules(monkeypatch, dotted: str):
    """Register empty modules for ``dotted`` and its parents (so pickle can save their classes)."""
    import sys
    import types

    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return sys.modules[dotted]


def _lightning_checkpoint(lseg, monkeypatch, path, extra=None, **hp):
    """A Lightning-style checkpoint of ``lseg`` as pytorch_lightning writes it: hyper-parameters as
    an AttributeDict, callback states keyed by the callback class, a numpy number; then the fake
    pytorch_lightning modules are removed again (as on a machine without Lightning)."""
    mod = _fake_modules(monkeypatch, "pytorch_lightning.utilities.parsing")
    cb = _fake_modules(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint")

    class AttributeDict(dict):
        pass

    class ModelCheckpoint:
        pass

    for m, cls in ((mod, AttributeDict), (cb, ModelCheckpoint)):
        cls.__module__, cls.__qualname__ = m.__name__, cls.__name__
        setattr(m, cls.__name__, cls)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in lseg.net.state_dict().items()},
            "hyper_parameters": AttributeDict(**{"backbone": "clip_vitl16_384", "arch_option": 0,
                                                 "activation": "lrelu", "base_lr": np.float64(0.004), **hp}),
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "monitor": "val_acc"}},
            "pytorch-lightning_version": "1.3.5", "epoch": 199, **(extra or {})}
    torch.save(ckpt, path)
    monkeypatch.undo()
    return path


def test_lseg_lightning_checkpoint_loads_weights_only_without_lightning(lseg, tmp_path, monkeypatch):
    """Lightning's objects get inert stand-ins (their modules are never imported): the checkpoint
    loads weights-only, without a warning, and its arch options are honoured."""
    import sys
    import warnings

    path = _lightning_checkpoint(lseg, monkeypatch, tmp_path / "demo.ckpt")
    assert "pytorch_lightning" not in sys.modules
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert "pytorch_lightning.utilities.parsing.AttributeDict" in unsafe
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # torch alone refuses it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = LSegTeacher.from_checkpoint(str(path), config=LSegConfig.tiny(), resolution=64)
    assert "pytorch_lightning" not in sys.modules
    img = _image(32, 64, seed=2)
    torch.testing.assert_close(t.extract(img), lseg.extract(img))
    # the hyper-parameters are read through the stand-in: arch_option 2 needs scratch.head_block
    arch2 = _lightning_checkpoint(lseg, monkeypatch, tmp_path / "arch2.ckpt", arch_option=2, block_depth=1)
    with pytest.raises(ValueError, match="arch2.ckpt.*missing keys.*head_block"):
        LSegTeacher.from_checkpoint(str(arch2), config=LSegConfig.tiny(), resolution=64)


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_lseg_checkpoint_that_would_run_code_is_refused_unless_trusted(lseg, tmp_path, monkeypatch):
    from feature3dgs.distill.teachers import UnsafeCheckpointError

    marker = tmp_path / "marker"
    path = _lightning_checkpoint(lseg, monkeypatch, tmp_path / "evil.ckpt", {"x": _WritesMarker(marker)})
    with pytest.raises(UnsafeCheckpointError, match=r"evil.ckpt was not loaded: it references io.open.*"
                                                    r"--trust-checkpoint"):
        LSegTeacher.from_checkpoint(str(path), config=LSegConfig.tiny(), resolution=64)
    with pytest.raises(ValueError, match="io.open"):
        build_teacher("lseg", checkpoint=str(path))
    assert not marker.exists()
    with pytest.warns(UserWarning, match="trust_checkpoint=True.*code in the file can run"):
        t = LSegTeacher.from_checkpoint(str(path), config=LSegConfig.tiny(), resolution=64, trust_checkpoint=True)
    assert marker.exists()  # the point of the flag: the file was unpickled completely
    torch.testing.assert_close(t.extract(_image(32, 32)), lseg.extract(_image(32, 32)))


@pytest.mark.parametrize("content,pattern", [
    (b"\x00garbage" * 100, "is not a PyTorch weights file"),
    (b"", "is not a PyTorch weights file"),
    ("truncated", "is not a PyTorch weights file"),
    ("not a dict", "an LSeg checkpoint is a dict"),
    ("no tensors", "holds no tensors"),
    ("wrong keys", r"does not match the LSeg definition: \d+ missing keys"),
    ("bad hyper-parameter", r"hyper-parameter 'arch_option' must be a int"),
    ("legacy format with an object", r"is not usable.*--trust-checkpoint"),
])
def test_lseg_unusable_checkpoints_are_value_errors_naming_the_file(lseg, tmp_path, content, pattern):
    path = tmp_path / "bad.ckpt"
    sd = {f"net.{k}": v for k, v in lseg.net.state_dict().items()}
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        torch.save({"state_dict": sd}, path)
        path.write_bytes(path.read_bytes()[:4000])
    elif content == "not a dict":
        torch.save([torch.zeros(2)], path)
    elif content == "no tensors":
        torch.save({"state_dict": {"a": 1}}, path)
    elif content == "wrong keys":
        torch.save({"state_dict": {"net.foo": torch.zeros(2)}}, path)
    elif content == "bad hyper-parameter":
        torch.save({"state_dict": sd, "hyper_parameters": {"arch_option": "zero"}}, path)
    else:
        torch.save({"state_dict": sd, "obj": _WritesMarker(tmp_path / "m")}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=pattern) as e:
        LSegTeacher.from_checkpoint(str(path), config=LSegConfig.tiny(), resolution=64)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "m").exists()


def test_lseg_vit_matches_timm():
    """The ViT part computes what timm's VisionTransformer computes with the same weights."""
    timm = pytest.importorskip("timm")
    cfg = LSegConfig.tiny()
    torch.manual_seed(0)
    net = LSegNet(cfg).eval()
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=cfg.vit_image_size, patch_size=16, embed_dim=cfg.vit_width, depth=cfg.vit_depth,
        num_heads=cfg.vit_heads, num_classes=cfg.vit_num_classes).eval()
    ref.load_state_dict(net.pretrained.model.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = net.pretrained.model.forward_hooked(x, cfg.hooks)
        t = ref.norm_pre(ref._pos_embed(ref.patch_embed(x)))
        theirs = []
        for blk in ref.blocks:
            t = blk(t)
            theirs.append(t)
    for i, o in zip(cfg.hooks, ours):
        torch.testing.assert_close(o, theirs[i], atol=1e-5, rtol=1e-5)


def test_build_teacher_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURE3DGS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="demo_e200.ckpt"):
        build_teacher("lseg")
    with pytest.raises(ValueError, match="teacher must be"):
        build_teacher("dino")
    with pytest.raises(ValueError, match="fixed at 1024"):
        build_teacher("sam", random_weights=True, resolution=512)
    with pytest.raises(FileNotFoundError, match="sam_vit_h_4b8939.pth"):
        build_teacher("sam", weights_dir=str(tmp_path))
