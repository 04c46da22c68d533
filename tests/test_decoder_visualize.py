"""The 1x1-conv decoder and the PCA feature visualisation."""

from __future__ import annotations

import pytest
import torch

from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.utils.visualize import FeaturePCA, depth_to_image, to_uint8_image


def test_decoder_is_per_pixel_linear_and_matches_vector_decoding():
    torch.manual_seed(0)
    dec = FeatureDecoder(8, 20)
    maps = torch.randn(8, 5, 7)
    out = dec(maps)
    assert out.shape == (20, 5, 7)
    vectors = maps.reshape(8, -1).T
    torch.testing.assert_close(out.reshape(20, -1).T, dec.decode_vectors(vectors), atol=1e-5, rtol=1e-5)
    assert dec(maps[None]).shape == (1, 20, 5, 7)
    with pytest.raises(ValueError, match=r"features must be \(8,H,W\)"):
        dec(torch.randn(7, 5, 7))


def test_decoder_save_load_round_trip(tmp_path):
    dec = FeatureDecoder(4, 6)
    torch.save(dec.to_dict(), tmp_path / "decoder.pt")
    back = FeatureDecoder.load(tmp_path / "decoder.pt")
    x = torch.randn(4, 3, 3)
    assert torch.equal(dec(x), back(x))


def test_pca_is_fitted_once_and_shared_across_views():
    torch.manual_seed(0)
    # Features living on a 3-D subspace of 16 channels: the PCA must recover it.
    basis = torch.linalg.qr(torch.randn(16, 3)).Q
    coeffs = torch.randn(3, 10, 12)
    maps = torch.einsum("cd,dhw->chw", basis, coeffs)
    pca = FeaturePCA.fit(maps)
    img = pca(maps)
    assert img.shape == (3, 10, 12) and img.min() >= 0 and img.max() <= 1
    # The projection spans the same subspace (reconstruction is exact up to the PCA's mean).
    proj = pca.basis.T @ pca.basis
    torch.testing.assert_close(proj, torch.eye(3), atol=1e-4, rtol=0)
    # A second view of the same features gets the same colours: one fixed map.
    assert torch.equal(pca(maps[:, :5]), img[:, :5])
    back = FeaturePCA.from_dict(pca.to_dict())
    assert torch.equal(back(maps), img)
    with pytest.raises(ValueError, match="16"):
        pca(torch.randn(8, 2, 2))


def test_image_helpers():
    u8 = to_uint8_image(torch.ones(1, 2, 3))
    assert u8.shape == (2, 3, 3) and (u8 == 255).all()
    depth = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]])
    vis = depth_to_image(depth)
    assert vis[0, 1, 0] == 0 and vis[0, 0, 0] > vis[0, 0, 1] > vis[0, 1, 1] - 1e-6
