"""Multi-view consistent object masks on the Gaussians (as in SANeRF-HQ).

2D object masks (from SAM, a user's brush, a label map) of a few views become a per-Gaussian
object weight in [0, 1]; rendering that weight gives the object's mask from any view.

Pipeline (:func:`fuse_object` ties it together)::

    prompts in one view --carry_prompt_points--> prompts in other views   (rendered depth)
                         --multiview_sam_masks--> SAM masks in those views (rendered features)
    masks of views      --gaussian_mask_votes / optimize_object_weights--> (N,) weights
    weights             --render_object_mask--> (H, W) mask at any camera
    mask + image        --refine_mask_ray_pairs--> mask whose edges follow colour edges

Conventions: masks are (H, W) bool or float in [0, 1] at the camera's resolution; pixel
coordinates are (x, y) = (column, row) with the centre of pixel (i, j) at (i + 0.5, j + 0.5)
(see :mod:`feature3dgs.model.camera`); depths are camera-space z in world units. Geometry is never
changed: every render here uses detached means, rotations, scales and opacities.

The votes are explained in :mod:`.votes`, the prompt propagation in :mod:`.prompts`, the
refinement in :mod:`.refine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from feature3dgs.apps.mask_fusion.checks import CameraList, as_cameras, as_masks
from feature3dgs.apps.mask_fusion.prompts import (
    CarriedPoints,
    MultiviewMasks,
    carry_prompt_points,
    lift_points,
    multiview_sam_masks,
)
from feature3dgs.apps.mask_fusion.refine import refine_mask_ray_pairs
from feature3dgs.apps.mask_fusion.votes import (
    gaussian_mask_votes,
    object_mask_bce,
    optimize_object_weights,
    render_object_mask,
    threshold_mask,
)
from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel

__all__ = [
    "gaussian_mask_votes",
    "optimize_object_weights",
    "object_mask_bce",
    "render_object_mask",
    "threshold_mask",
    "lift_points",
    "carry_prompt_points",
    "CarriedPoints",
    "multiview_sam_masks",
    "MultiviewMasks",
    "refine_mask_ray_pairs",
    "fuse_object",
    "FusedObject",
]


@dataclass
class FusedObject:
    """A 3D object selection: per-Gaussian weights in [0, 1], renderable from any view.

    Attributes:
        model: the Gaussians the weights belong to.
        weights: (N,) float32 object weight per Gaussian.
        method: 'vote' or 'optimize'.
        threshold: the weight above which a Gaussian belongs to the object (:attr:`selection`)
            and the rendered mask value above which a pixel does (:meth:`binary_mask`).
    """

    model: GaussianModel
    weights: Tensor
    method: str
    threshold: float = 0.5

    @property
    def selection(self) -> Tensor:
        """(N,) bool: the object's Gaussians (for feature3dgs.apps.edit.extract / delete / recolor)."""
        return self.weights > self.threshold

    def render_mask(self, camera: Camera, normalize: bool = False) -> Tensor:
        """(H, W) float mask in [0, 1] at ``camera`` (see :func:`render_object_mask`)."""
        with torch.no_grad():
            return render_object_mask(self.model, self.weights, camera, normalize)

    def binary_mask(self, camera: Camera) -> Tensor:
        """(H, W) bool: rendered mask > threshold."""
        return threshold_mask(self.render_mask(camera), self.threshold)


def fuse_object(model: GaussianModel, cameras: CameraList, masks, method: str = "vote", *, threshold: float = 0.5,
                background_weight: float = 1.0, steps: int = 150, lr: float = 0.1,
                alpha_threshold: float = 0.5, refine_images: Optional[Sequence[Optional[Tensor]]] = None,
                refine_kwargs: Optional[dict] = None) -> FusedObject:
    """2D masks of several views -> per-Gaussian object weights -> a :class:`FusedObject`.

    Args:
        model, cameras, masks: as in :func:`gaussian_mask_votes` (None masks skip views).
        method: 'vote' (:func:`gaussian_mask_votes`, one render per view) or 'optimize'
            (:func:`optimize_object_weights`, started from the votes).
        threshold: see :class:`FusedObject`.
        refine_images: optional (C, H, W) image per view (None: no refinement of that view):
            the masks are first refined with :func:`refine_mask_ray_pairs` (``refine_kwargs``).

    Returns:
        the :class:`FusedObject` (``.render_mask(camera)``, ``.binary_mask(camera)``,
        ``.selection``).
    """
    if method not in ("vote", "optimize"):
        raise ValueError(f"method must be 'vote' or 'optimize', got {method!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    cams = as_cameras(cameras)
    ms = as_masks(masks, cams, model.device)
    if refine_images is not None:
        imgs = list(refine_images)
        if len(imgs) != len(cams):
            raise ValueError(f"refine_images holds {len(imgs)} images for {len(cams)} cameras")
        ms = [m if (m is None or img is None) else
              refine_mask_ray_pairs(m, torch.as_tensor(img).to(m.device), **(refine_kwargs or {}))
              for m, img in zip(ms, imgs)]
    votes = gaussian_mask_votes(model, cams, ms, background_weight=background_weight)
    if method == "vote":
        w = votes
    else:
        w = optimize_object_weights(model, cams, ms, steps=steps, lr=lr, init=votes,
                                    alpha_threshold=alpha_threshold)
    return FusedObject(model=model, weights=w, method=method, threshold=float(threshold))
