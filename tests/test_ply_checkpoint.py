"""PLY io in the 3DGS layout (exact round trip, features, atomic writes) and checkpoints."""

from __future__ import annotations

import hashlib
import io

import os
import pickle

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from feature3dgs.utils.io import atomic_open
from feature3dgs.training.checkpoint import (MAGIC, CheckpointError, checkpoint_path, latest_checkpoint, load_checkpoint,
                                            save_checkpoint)
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.model.ply import load_ply, ply_property_names, save_ply


def _model(n=40, sh_degree=3, feature_dim=0, seed=0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    params = {
        "means": torch.randn(n, 3, generator=g),
        "sh_dc": torch.randn(n, 1, 3, generator=g),
        "sh_rest": torch.randn(n, k - 1, 3, generator=g),
        "opacities": torch.randn(n, 1, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "quats": torch.randn(n, 4, generator=g),
    }
    if feature_dim:
        params["features"] = torch.randn(n, feature_dim, generator=g)
    return GaussianModel(params, active_sh_degree=min(1, sh_degree))


THREE_DGS_HEADER = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                    + [f"f_rest_{i}" for i in range(45)]
                    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.mark.parametrize("sh_degree,feature_dim", [(3, 0), (3, 16), (0, 0), (2, 5)])
def test_ply_round_trip_is_exact(tmp_path, sh_degree, feature_dim):
    m = _model(sh_degree=sh_degree, feature_dim=feature_dim)
    path = save_ply(m, tmp_path / "pc.ply")
    back = load_ply(path)
    assert back.max_sh_degree == sh_degree and back.active_sh_degree == m.active_sh_degree
    assert back.feature_dim == feature_dim
    assert list(back.params.keys()) == list(m.params.keys())
    for k in m.params.keys():
        assert torch.equal(back.params[k], m.params[k].detach()), k


def test_ply_layout_is_the_3dgs_one(tmp_path):
    m = _model(n=7, sh_degree=3, feature_dim=3)
    save_ply(m, tmp_path / "pc.ply")
    ply = PlyData.read(str(tmp_path / "pc.ply"))
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    assert names == THREE_DGS_HEADER + ["semantic_0", "semantic_1", "semantic_2"]
    assert names == ply_property_names(3, 3)
    assert all(p.val_dtype in ("f4", "float32", "float") for p in v.properties)
    assert not ply.text and ply.byte_order == "<"
    # values as 3DGS reads them: f_rest channel-major, opacity/scales raw, normals zero
    d = v.data
    p = m.params
    assert np.array_equal(d["x"], p["means"][:, 0].detach().numpy())
    assert np.array_equal(d["f_rest_0"], p["sh_rest"][:, 0, 0].detach().numpy())  # R, coefficient 1
    assert np.array_equal(d["f_rest_15"], p["sh_rest"][:, 0, 1].detach().numpy())  # G, coefficient 1
    assert np.array_equal(d["f_rest_16"], p["sh_rest"][:, 1, 1].detach().numpy())  # G, coefficient 2
    assert np.array_equal(d["opacity"], p["opacities"][:, 0].detach().numpy())
    assert np.array_equal(d["rot_0"], p["quats"][:, 0].detach().numpy())
    assert np.all(d["nx"] == 0)


def test_load_plain_3dgs_file(tmp_path):
    """A file as 3DGS writes it (no comment, no features) loads at its full SH degree."""
    n = 5
    arr = np.zeros(n, dtype=[(k, "f4") for k in THREE_DGS_HEADER])
    for i, k in enumerate(THREE_DGS_HEADER):
        arr[k] = np.arange(n) + i
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "point_cloud.ply"))
    m = load_ply(tmp_path / "point_cloud.ply")
    assert m.num_gaussians == n and m.max_sh_degree == 3 and m.active_sh_degree == 3 and m.features is None
    assert m.params["sh_rest"][1, 2, 0].item() == 1 + THREE_DGS_HEADER.index("f_rest_2")
    assert m.params["sh_rest"][1, 0, 2].item() == 1 + THREE_DGS_HEADER.index("f_rest_30")


def test_load_ply_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_ply(tmp_path / "missing.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(ValueError, match="not a readable PLY"):
        load_ply(tmp_path / "junk.ply")
    arr = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(ValueError, match="missing properties"):
        load_ply(tmp_path / "points.ply")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "pc.ply"
    m = _model(n=5)
    save_ply(m, path)
    good = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_open(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["pc.ply"]  # no temporary left behind


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_latest(tmp_path):
    m = _model(feature_dim=4)
    opt = torch.optim.Adam(m.param_groups({k: 0.1 for k in m.params.keys()}), eps=1e-15)
    sum(p.square().sum() for p in m.params.values()).backward()
    opt.step()
    state = {"step": 12, "model": m.raw_state(), "optimizer": opt.state_dict(),
             "rng": {"generator": torch.Generator().manual_seed(5).get_state(), "view_order": [3, 1]},
             "config": {"iterations": 100, "init_random_box": None, "background": "white"}}
    folder = tmp_path / "checkpoints"
    for step in (5, 12, 7):
        save_checkpoint({**state, "step": step}, checkpoint_path(folder, step))
    assert latest_checkpoint(tmp_path) == checkpoint_path(folder, 12)
    back = load_checkpoint(tmp_path)  # a folder: its latest checkpoint
    assert back["step"] == 12 and back["config"]["background"] == "white"
    m2 = GaussianModel.from_raw_state(back["model"])
    for k in m.params.keys():
        assert torch.equal(m2.params[k], m.params[k].detach())
    opt2 = torch.optim.Adam(m2.param_groups({k: 0.1 for k in m2.params.keys()}), eps=1e-15)
    opt2.load_state_dict(back["optimizer"])
    for k in m.params.keys():
        assert torch.equal(opt2.state[m2.params[k]]["exp_avg_sq"], opt.state[m.params[k]]["exp_avg_sq"])
    assert torch.equal(back["rng"]["generator"], state["rng"]["generator"])


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": "feature3dgs-checkpoint", "version": 2, "model": {}, "payload": _Evil(marker)}, buf)
    body = buf.getvalue()  # a well-framed file with a valid checksum: only weights_only stops it
    path.write_bytes(MAGIC + hashlib.sha256(body).digest() + body)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    (tmp_path / "other.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"something": torch.zeros(2)}, tmp_path / "foreign.pt")  # a plain torch file
    with pytest.raises(ValueError, match="not a feature3dgs checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty")


# ---------------------------------------------------------------------- class logits (feature3dgs.apps.semantic)
def _semantic_model(n=30, sh_degree=1, feature_dim=0, num_classes=5, seed=1) -> GaussianModel:
    m = _model(n=n, sh_degree=sh_degree, feature_dim=feature_dim, seed=seed)
    params = {k: v.detach() for k, v in m.params.items()}
    params["semantics"] = torch.randn(n, num_classes, generator=torch.Generator().manual_seed(seed + 7)) * 3
    return GaussianModel(params, active_sh_degree=m.active_sh_degree)


@pytest.mark.parametrize("feature_dim,num_classes", [(0, 5), (4, 3), (16, 1)])
def test_ply_round_trip_of_class_logits_is_exact(tmp_path, feature_dim, num_classes):
    from feature3dgs.model.gaussians import SEMANTICS

    m = _semantic_model(feature_dim=feature_dim, num_classes=num_classes)
    assert SEMANTICS == "semantics"
    back = load_ply(save_ply(m, tmp_path / "pc.ply"))
    assert list(back.params.keys()) == list(m.params.keys())
    assert back.feature_dim == feature_dim and back.params[SEMANTICS].shape == (30, num_classes)
    for k in m.params.keys():
        assert torch.equal(back.params[k], m.params[k].detach()), k


def test_class_logits_are_appended_after_the_3dgs_and_feature_properties(tmp_path):
    m = _semantic_model(n=6, sh_degree=3, feature_dim=2, num_classes=3)
    save_ply(m, tmp_path / "pc.ply")
    v = PlyData.read(str(tmp_path / "pc.ply"))["vertex"]
    names = [p.name for p in v.properties]
    assert names == THREE_DGS_HEADER + ["semantic_0", "semantic_1", "sem_0", "sem_1", "sem_2"]
    assert names == ply_property_names(3, 2, 3)
    assert np.array_equal(v.data["sem_2"], m.params["semantics"][:, 2].detach().numpy())
    # a reader that knows only the 3DGS properties (a standard viewer) finds them unchanged
    assert np.array_equal(v.data["opacity"], m.params["opacities"][:, 0].detach().numpy())
    # a file without sem_* loads without the parameter
    assert "semantics" not in load_ply(save_ply(_model(n=6), tmp_path / "plain.ply")).params


def test_checkpoint_round_trip_of_class_logits(tmp_path):
    """raw_state carries every entry of model.params, so checkpoints need nothing special."""
    m = _semantic_model(feature_dim=4)
    opt = torch.optim.Adam(m.param_groups({k: 0.1 for k in m.params.keys()}), eps=1e-15)
    sum(p.square().sum() for p in m.params.values()).backward()
    opt.step()
    path = save_checkpoint({"step": 3, "model": m.raw_state(), "optimizer": opt.state_dict()},
                           checkpoint_path(tmp_path, 3))
    back = load_checkpoint(path)
    m2 = GaussianModel.from_raw_state(back["model"])
    assert list(m2.params.keys()) == list(m.params.keys())
    assert torch.equal(m2.params["semantics"], m.params["semantics"].detach())
    opt2 = torch.optim.Adam(m2.param_groups({k: 0.1 for k in m2.params.keys()}), eps=1e-15)
    opt2.load_state_dict(back["optimizer"])
    assert torch.equal(opt2.state[m2.params["semantics"]]["exp_avg"], opt.state[m.params["semantics"]]["exp_avg"])


def test_checkpoint_checksum_catches_any_flipped_byte_and_truncation(tmp_path):
    state = {"step": 3, "model": _model().raw_state(), "optimizer": {"lr": torch.full((50,), 6e-6)}}
    path = save_checkpoint(state, tmp_path / "ckpt.pt")
    good = path.read_bytes()
    assert torch.equal(load_checkpoint(path)["optimizer"]["lr"], state["optimizer"]["lr"])
    g = torch.Generator().manual_seed(0)
    for pos in torch.randint(len(MAGIC), len(good), (12,), generator=g).tolist() + [len(good) - 1]:
        bad = bytearray(good)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            load_checkpoint(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)
    path.write_bytes(good)
    assert load_checkpoint(path)["step"] == 3
