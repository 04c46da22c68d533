"""Main example. Until feature distillation lands (issue 5) it renders the
built-in synthetic scene: Gaussians placed on the scene's sampled surface points,
each with a 64-channel feature, rendered from the held-out test cameras to PNG
(colour, depth, and the features shown through a 3-component PCA), with timings.

    python examples/distill_sam.py [--out outputs/distill_sam] [--channels 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import feature3dgs
from feature3dgs.data import builtin_scene, load_scene


def gaussians_on_points(points: torch.Tensor, colors: torch.Tensor, channels: int, seed: int = 0) -> dict:
    """Isotropic Gaussians on the points, sized by the distance to the 3rd-nearest neighbour."""
    g = torch.Generator().manual_seed(seed)
    dist = torch.cdist(points, points).topk(4, largest=False).values[:, 1:].mean(1)
    n = points.shape[0]
    return dict(means=points, quats=torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
                scales=dist[:, None].repeat(1, 3) * 0.7, opacities=torch.full((n,), 0.9),
                colors=colors, features=torch.randn(n, channels, generator=g))


def pca_image(features: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor, lo, hi) -> np.ndarray:
    """(C,H,W) features -> (H,W,3) uint8 through a fixed 3-component projection."""
    C, H, W = features.shape
    proj = (features.reshape(C, -1).T - mean) @ basis
    proj = ((proj - lo) / (hi - lo)).clamp(0, 1)
    return (proj.reshape(H, W, 3).numpy() * 255).astype(np.uint8)


def to_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/distill_sam"))
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args(argv)

    info = feature3dgs.backend_info()
    print(f"feature3dgs {info['version']}: CPU kernels ({info['openmp_threads']} threads), "
          f"CUDA kernels {'compiled for ' + info['cuda_archs'] if info['cuda'] else 'not built'}")
    scene = load_scene(builtin_scene())
    device = "cuda" if torch.cuda.is_available() and info["cuda"] else "cpu"
    gs = {k: v.to(device) for k, v in gaussians_on_points(scene.points, scene.colors, args.channels).items()}
    print(f"built-in scene: {len(scene.train_views)} train / {len(scene.test_views)} test views, "
          f"{gs['means'].shape[0]} Gaussians with {args.channels}-d features, rendering on {device}")
    print("NOTE: no training yet (scene optimisation and distillation land with later issues): "
          "the features are random and the colours come from the sampled points.")

    args.out.mkdir(parents=True, exist_ok=True)
    basis = mean = lo = hi = None
    for view in scene.test_views:
        cam = view.camera
        kwargs = dict(viewmat=cam.viewmat.to(device), K=cam.K.to(device), width=cam.width, height=cam.height,
                      background=scene.background.to(device))
        feature3dgs.render(**gs, **kwargs)  # warm-up
        t0 = time.perf_counter()
        with torch.no_grad():
            out = feature3dgs.render(**gs, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        feats = out.features.cpu()
        if basis is None:  # one PCA for all views so that colours agree
            flat = feats.reshape(args.channels, -1).T
            mean = flat.mean(0)
            basis = torch.linalg.svd(flat - mean, full_matrices=False).Vh[:3].T
            p = (flat - mean) @ basis
            lo, hi = p.quantile(0.01, dim=0), p.quantile(0.99, dim=0)
        rgb = (out.rgb.cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        gt = (scene.load_image(view).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        depth = out.depth[0].cpu() / out.alpha[0].cpu().clamp(min=1e-6)
        depth = ((depth - depth.min()) / (depth.max() - depth.min() + 1e-9)).numpy()
        depth_u8 = (np.stack([depth] * 3, -1) * 255).astype(np.uint8)
        panel = np.concatenate([gt, rgb, depth_u8, pca_image(feats, basis, mean, lo, hi)], axis=1)
        path = args.out / f"{Path(cam.name).stem or 'view'}.png"
        to_png(path, panel)
        print(f"  {cam.name}: {cam.width}x{cam.height} rendered in {ms:.1f} ms -> {path} "
              "(ground truth | render | depth | feature PCA)")
    print(f"outputs in {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
