"""2D teachers whose dense features the Gaussians distil.

Every teacher implements :class:`~feature3dgs.distill.teachers.base.Teacher`:
``extract(image (3, H, W) float in [0, 1]) -> (D, h, w) float32``, ``dim``, ``feature_size``,
``feature_extent``, ``cache_key()``, ``is_random`` and ``to(device)``; language teachers add
``encode_text(list[str]) -> (n, D)`` (L2-normalised).

=========================  ====  =========================================  ==================
teacher                    D     grid of an H x W image                     weights
=========================  ====  =========================================  ==================
SamTeacher (sam)           256   SAM's 64x64 grid cropped to the image:     SAM vit_h/l/b .pth
                                 (ceil(h_r/16), ceil(w_r/16)), long side 64
DenseClipTeacher (clip)    512   (H'/16, W'/16), H' x W' ~ resolution       open_clip tag/file
LSegTeacher (lseg)         512   (H'/2, W'/2), H' x W' ~ resolution, /32    LSeg demo_e200.ckpt
=========================  ====  =========================================  ==================

The networks' packages (segment-anything, open-clip-torch) are imported only when a teacher is
built.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ._weights import UnsafeCheckpointError
from .base import LanguageTeacher, Teacher
from .clip_dense import DenseClipTeacher
from .lseg import LSEG_DEMO_CHECKPOINT_URL, LSegTeacher
from .sam import SamTeacher

__all__ = ["Teacher", "LanguageTeacher", "SamTeacher", "DenseClipTeacher", "LSegTeacher", "build_teacher",
           "TEACHERS", "UnsafeCheckpointError"]

TEACHERS = ("sam", "clip", "lseg")


def build_teacher(
    kind: str,
    *,
    checkpoint: Optional[str] = None,
    model: Optional[str] = None,
    weights_dir: Optional[str] = None,
    resolution: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    random_weights: bool = False,
    allow_download: bool = True,
    seed: int = 0,
    trust_checkpoint: bool = False,
) -> Teacher:
    """Build a teacher by name.

    Args:
        kind: 'sam', 'clip' or 'lseg'.
        checkpoint: SAM: .pth path (default: the standard file in ``weights_dir``); CLIP: an
            open_clip pretrained tag or a file (default 'openai'); LSeg: the .ckpt path (required).
        model: SAM: 'vit_h' (default), 'vit_l', 'vit_b'; CLIP: an open_clip model name
            (default 'ViT-B-16'). Unused for LSeg.
        weights_dir: SAM: folder of the weights (and downloads); CLIP: open_clip's download cache.
        resolution: network input long side (CLIP default 448, LSeg 480; SAM is fixed at 1024).
        random_weights: build the tiny random-weight variant (tests and smoke runs only).
        trust_checkpoint: LSeg: unpickle a checkpoint completely when it references objects
            beyond tensors (and the Lightning objects that get inert stand-ins). Unpickling can
            run code from the file: only for files from a trusted source. SAM and CLIP weights
            are plain state dicts and are always loaded weights-only.

    Every weights file is loaded with ``torch.load(weights_only=True)`` unless
    ``trust_checkpoint``; a file that is not usable gives a ValueError naming it.
    """
    if kind not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {kind!r}")
    if kind == "sam":

        if random_weights:
            t: Teacher = SamTeacher.tiny_random(seed=seed)
        else:
            t = SamTeacher.from_checkpoint(model or "vit_h", checkpoint=checkpoint, cache_dir=weights_dir,
                                           allow_download=allow_download)
        if resolution is not None and resolution != t.resolution:
            raise ValueError(f"SAM's input resolution is fixed at {t.resolution}, got --resolution {resolution}")
    elif kind == "clip":

        if random_weights:
            t = DenseClipTeacher.tiny_random(seed=seed, resolution=resolution or 64)
        else:
            t = DenseClipTeacher.from_pretrained(model or "ViT-B-16", checkpoint or "openai", cache_dir=weights_dir,
                                                 resolution=resolution or 448)
    else:

        if random_weights:
            t = LSegTeacher.tiny_random(seed=seed, resolution=resolution or 64)
        else:
            if checkpoint is None:

                raise FileNotFoundError(
                    "the LSeg teacher needs --checkpoint: the official demo_e200.ckpt, from "
                    f"{LSEG_DEMO_CHECKPOINT_URL} (linked from https://github.com/isl-org/lang-seg)")
            t = LSegTeacher.from_checkpoint(checkpoint, resolution=resolution or 480,
                                          trust_checkpoint=trust_checkpoint)
    return t.to(device) if device is not None else t
