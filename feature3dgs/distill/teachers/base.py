"""The interface every teacher implements.

A teacher maps an image to a dense feature map::

    feats = teacher.extract(image)      # image (3, H, W) float in [0, 1] -> (D, h, w) float32

``teacher.feature_size(H, W)`` gives (h, w) without running the network and
``teacher.feature_extent(H, W)`` the part of the image plane the (h, w) grid covers: cell (i, j)
covers rows [i, i + 1) * ext_h / h and columns [j, j + 1) * ext_w / w in image pixels. For most
teachers the extent is the image itself (H, W); SAM's grid can reach past the image's bottom or
right edge by less than one cell (see :class:`~feature3dgs.distill.teachers.sam.SamTeacher`).

Language teachers add ``encode_text(list[str]) -> (n, D)``, L2-normalised, in the space of their
(L2-normalised) image features, so ``einsum('d,dhw->hw', text, feats)`` is a cosine similarity.

Teachers know nothing of Gaussians, scenes or caches; ``cache_key()`` identifies what they
compute (teacher, weights, input resolution, feature-definition version) so a cache built with
different weights or settings is never read back.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Teacher", "LanguageTeacher", "check_image", "grid_size", "resize_to_grid"]


def check_image(image: torch.Tensor) -> torch.Tensor:
    """Validate one image: (3, H, W) float in [0, 1] (uint8 is accepted and divided by 255)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image is empty: {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise TypeError(f"image must be float in [0, 1] (or uint8), got {image.dtype}")
    lo, hi = float(image.min()), float(image.max())
    if not (lo >= -1e-3 and hi <= 1.0 + 1e-3):
        raise ValueError(
            f"image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]"
            + (" (a 0-255 image? divide by 255)" if hi > 1.5 else ""))
    return image.float().clamp(0.0, 1.0)


def grid_size(h: int, w: int, long_side: int, multiple: int) -> tuple[int, int]:
    """(H', W'): the image scaled so its long side is ``long_side``, each side rounded to the
    nearest multiple of ``multiple`` (at least one multiple)."""
    s = long_side / max(h, w)
    return (max(multiple, int(round(h * s / multiple)) * multiple),
            max(multiple, int(round(w * s / multiple)) * multiple))


def resize_to_grid(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, 3, H, W) to ``size`` with antialiasing when shrinking (no-op at equal size)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)  # bicubic overshoots


class Teacher(abc.ABC):
    """A frozen 2D feature extractor.

    Attributes:
        kind: which teacher family it is: 'sam', 'clip' or 'lseg' (what ``build_teacher`` takes).
        name: short identifier, e.g. 'sam-vit_h', 'clip-ViT-B-16', 'lseg-vitl16'.
        dim: feature channels D.
        is_random: True when the weights are random (tests, smoke runs): features are then
            meaningless and callers must say so loudly.
        weights_id: identity of the weights: 'sha256:<16 hex>' of the checkpoint file, an
            open_clip tag, or 'random-seed-N'.
        resolution: the input resolution the network sees (long side in pixels).
        version: bumped whenever the definition of the features changes (preprocessing, crop,
            normalisation), which invalidates caches.
        amp: run the network under float16 autocast on CUDA (outputs are float32 either way).
    """

    kind: str
    name: str
    dim: int
    is_random: bool
    weights_id: str
    resolution: int
    version: int = 1
    amp: bool = False

    # ------------------------------------------------------------------ to implement
    @property
    @abc.abstractmethod
    def module(self) -> torch.nn.Module:
        """The underlying network (moved by :meth:`to`)."""

    @abc.abstractmethod
    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the features of an image of the given size."""

    @abc.abstractmethod
    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] on the device -> (B, D, h, w). Called without grad."""

    # ------------------------------------------------------------------ provided
    def feature_extent(self, height: int, width: int) -> tuple[float, float]:
        """The (height, width) in image pixels that the feature grid spans from the top-left
        corner: (H, W) unless the teacher says otherwise."""
        return float(height), float(width)

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def to(self, device: Any) -> "Teacher":
        """Move the network to ``device``; returns self."""
        self.module.to(device)
        return self

    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def extract(self, image: torch.Tensor) -> torch.Tensor:
        """Features of one image.

        Args:
            image: (3, H, W) float in [0, 1] (any device).

        Returns:
            (D, h, w) float32 on the teacher's device, (h, w) = ``feature_size(H, W)``.
        """
        return self.extract_batch([image])[0]

    def extract_batch(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features of several images; images of equal size run as one batch.

        Returns:
            A list of (D, h, w) float32 tensors in the order of ``images``.
        """
        imgs = [check_image(im) for im in images]
        out: list[Optional[torch.Tensor]] = [None] * len(imgs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(imgs):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        self.module.eval()
        dev = self.device
        for (h, w), idx in groups.items():
            batch = torch.stack([imgs[i] for i in idx]).to(dev)
            with torch.no_grad(), self._autocast():
                feats = self._extract(batch)
            feats = feats.float()
            expect = (len(idx), self.dim, *self.feature_size(h, w))
            if tuple(feats.shape) != expect:  # an implementation error, never user error
                raise AssertionError(f"{self.name}: features {tuple(feats.shape)}, expected {expect}")
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return out  # type: ignore[return-value]

    def cache_key(self) -> str:
        """Identity of the features: name, weights, input resolution and feature version."""
        return f"{self.name}|weights={self.weights_id}|res={self.resolution}|v={self.version}"

    def describe(self) -> dict:
        """A JSON-able description (written into feature-cache manifests)."""
        return {
            "teacher": self.name,
            "dim": self.dim,
            "weights": self.weights_id,
            "is_random": self.is_random,
            "resolution": self.resolution,
            "version": self.version,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
        }

    def __repr__(self) -> str:
        rnd = ", RANDOM WEIGHTS" if self.is_random else ""
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, weights={self.weights_id!r}, " \
               f"resolution={self.resolution}, device={self.device}{rnd})"


class LanguageTeacher(Teacher):
    """A teacher whose image features live in a text-embedding space."""

    @abc.abstractmethod
    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised (n, D) text embeddings (called without grad)."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings.

        Args:
            texts: n strings (a single string is accepted as one).

        Returns:
            (n, D) float32 on the teacher's device, unit norm per row.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        self.module.eval()
        with torch.no_grad(), self._autocast():
            t = self._encode_text(texts)
        return F.normalize(t.float(), dim=-1)
