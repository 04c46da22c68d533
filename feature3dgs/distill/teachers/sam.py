"""Segment Anything (SAM) image embeddings as a teacher, and SAM's prompt decoding.

SAM resizes an image so its long side is 1024 (``ResizeLongestSide``), normalises it and pads it
at the bottom/right to 1024x1024; the image encoder gives a 256 x 64 x 64 embedding of that padded
square (one cell per 16x16 input pixels). The teacher's features are that embedding *cropped to
the image's valid region*: ``(256, h', w')`` with ``h' = ceil(h_r / 16)``, ``w' = ceil(w_r / 16)``
where ``(h_r, w_r)`` is the resized image size. A 2:1 landscape image gives (256, 32, 64), a
square one (256, 64, 64). When ``h_r`` is not a multiple of 16 the last row of cells also covers
a few rows of padding, so the grid spans ``feature_extent(H, W) = (16 h' H / h_r, 16 w' W / w_r)``
image pixels (at most one cell more than the image).

For prompting, :meth:`SamTeacher.embedding_from_cropped` puts (rendered) cropped features back in
SAM's padded 64x64 frame and :meth:`SamTeacher.predict_masks` runs SAM's own prompt encoder, mask
decoder and mask post-processing on it.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from feature3dgs.utils.optional import require

from ._weights import file_digest, load_weights_file, resolve_weights
from .base import Teacher, check_image

__all__ = ["SamTeacher", "SAM_CHECKPOINTS"]

_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

#: model type -> standard checkpoint file name (published at https://dl.fbaipublicfiles.com/segment_anything/<name>)
SAM_CHECKPOINTS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}

ArrayLike = Union[torch.Tensor, np.ndarray, list, tuple]


class SamTeacher(Teacher):
    """SAM's image encoder as a 256-channel teacher (see the module docstring for the grid).

    Build with :meth:`from_checkpoint` (real weights) or :meth:`tiny_random` (tests).

    Attributes:
        sam_model: the ``segment_anything.modeling.Sam`` module (image encoder, prompt encoder,
            mask decoder, pixel normalisation).
        model_type: 'vit_h', 'vit_l', 'vit_b' or 'tiny'.
    """

    kind = "sam"

    version = 1

    def __init__(self, sam_model, *, model_type: str, weights_id: str, is_random: bool):
        require("segment_anything", "segment-anything", "the SAM teacher")
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam_model = sam_model.eval()
        self.model_type = model_type
        self.name = f"sam-{model_type}"
        self.weights_id = weights_id
        self.is_random = is_random
        enc = sam_model.image_encoder
        self.img_size = int(enc.img_size)
        self.resolution = self.img_size
        self.patch = int(enc.patch_embed.proj.stride[0])
        self.grid = self.img_size // self.patch
        self.dim = int(sam_model.prompt_encoder.embed_dim)
        self.transform = ResizeLongestSide(self.img_size)
        for p in self.sam_model.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        model_type: str = "vit_h",
        checkpoint: Optional[str] = None,
        cache_dir: Optional[str] = None,
        *,
        allow_download: bool = True,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "SamTeacher":
        """SAM with official weights.

        Args:
            model_type: 'vit_h', 'vit_l' or 'vit_b'.
            checkpoint: path of the .pth file; by default the standard file name
                (:data:`SAM_CHECKPOINTS`) is looked for in ``cache_dir``.
            cache_dir: weights folder (default ``$FEATURE3DGS_WEIGHTS`` or
                ``~/.cache/feature3dgs/weights``); a missing file is downloaded there if possible.
            allow_download: set False to never touch the network.
            device: where to put the model (default CPU).

        The file is loaded weights-only (no code in it runs).

        Raises:
            FileNotFoundError: no checkpoint and no way to download it (the message names the
                file, the folder and the URL).
            ValueError: the file is not a PyTorch state dict, or its keys or shapes are not those
                of SAM ``model_type`` (the message names the file).
        """
        sam_mod = require("segment_anything", "segment-anything", "the SAM teacher")
        if model_type not in SAM_CHECKPOINTS:
            raise ValueError(f"SAM model_type must be one of {sorted(SAM_CHECKPOINTS)}, got {model_type!r}")
        fname = SAM_CHECKPOINTS[model_type]
        path = resolve_weights(fname, _URL + fname, what=f"SAM {model_type} checkpoint",
                               checkpoint=checkpoint, cache_dir=cache_dir, allow_download=allow_download)
        what = f"SAM {model_type} checkpoint"
        state = load_weights_file(path, what)
        if not isinstance(state, dict) or not state or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise ValueError(f"{what} {path} is not a state dict of tensors (got {type(state).__name__}); "
                             f"expected {fname} from {_URL + fname}")
        sam = sam_mod.sam_model_registry[model_type](checkpoint=None)
        expected = sam.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"{what} {path} does not match SAM {model_type}: {len(missing)} missing keys {missing[:3]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} of the wrong shape {wrong[:3]} "
                f"(is it a checkpoint of another model type? --teacher-model picks vit_h, vit_l or vit_b)")
        sam.load_state_dict(state, strict=True)
        teacher = cls(sam, model_type=model_type, weights_id=f"sha256:{file_digest(path)}", is_random=False)
        return teacher.to(device) if device is not None else teacher

    @classmethod
    def tiny_random(cls, seed: int = 0, img_size: int = 1024, embed_dim: int = 32, depth: int = 2) -> "SamTeacher":
        """A tiny SAM with random weights, built from segment_anything's own classes.

        The image encoder is a 2-block ViT of width 32 (one windowed, one global block with
        relative positions) at SAM's full 1024 input and 16-pixel patches, so the embedding keeps
        SAM's 256 x 64 x 64 layout; the prompt encoder is SAM's, the mask decoder has a 1-layer
        two-way transformer. Preprocessing (resize, normalisation, padding) is SAM's. About half a
        second per image on one CPU core.
        """
        require("segment_anything", "segment-anything", "the SAM teacher")
        import segment_anything.modeling as m

        grid = img_size // 16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = m.Sam(
                image_encoder=m.ImageEncoderViT(
                    img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=2,
                    mlp_ratio=4, out_chans=256, qkv_bias=True,
                    norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                    window_size=14, global_attn_indexes=(depth - 1,)),
                prompt_encoder=m.PromptEncoder(
                    embed_dim=256, image_embedding_size=(grid, grid),
                    input_image_size=(img_size, img_size), mask_in_chans=16),
                mask_decoder=m.MaskDecoder(
                    num_multimask_outputs=3,
                    transformer=m.TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=64, num_heads=2),
                    transformer_dim=256, iou_head_depth=2, iou_head_hidden_dim=32),
                pixel_mean=[123.675, 116.28, 103.53],
                pixel_std=[58.395, 57.12, 57.375],
            )
        return cls(sam, model_type="tiny", weights_id=f"random-seed-{seed}", is_random=True)

    # ------------------------------------------------------------------ geometry
    @property
    def module(self) -> torch.nn.Module:
        return self.sam_model

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h_r, w_r): the image size after SAM's resize (long side = 1024)."""
        return tuple(self.transform.get_preprocess_shape(height, width, self.img_size))  # type: ignore[return-value]

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        hr, wr = self.input_size(height, width)
        return math.ceil(hr / self.patch), math.ceil(wr / self.patch)

    def feature_extent(self, height: int, width: int) -> tuple[float, float]:
        hr, wr = self.input_size(height, width)
        h, w = self.feature_size(height, width)
        return h * self.patch * height / hr, w * self.patch * width / wr

    # ------------------------------------------------------------------ encoding
    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, 1024, 1024) exactly as SamPredictor.set_image does:
        uint8 RGB, ResizeLongestSide.apply_image, pixel normalisation, bottom/right zero pad."""
        out = []
        for im in images:
            u8 = (im.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
            arr = u8.permute(1, 2, 0).cpu().numpy()
            arr = self.transform.apply_image(arr)
            out.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))
        x = torch.stack(out).to(device=self.device, dtype=torch.float32)
        return self.sam_model.preprocess(x)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.sam_model.image_encoder(self._preprocess(images))

    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        h, w = self.feature_size(images.shape[-2], images.shape[-1])
        return self._embed(images)[:, :, :h, :w]

    def image_embedding(self, image: torch.Tensor) -> torch.Tensor:
        """SAM's full (256, 64, 64) embedding of the padded square (what SamPredictor computes)."""
        image = check_image(image)
        self.sam_model.eval()
        with torch.no_grad(), self._autocast():
            return self._embed(image[None].to(self.device))[0].float()

    def embedding_from_cropped(
        self, features: torch.Tensor, pad: Union[str, torch.Tensor] = "zeros"
    ) -> torch.Tensor:
        """Put cropped features (256, h', w') back into SAM's padded (256, 64, 64) frame.

        The inverse of the crop in :meth:`extract`: the features go to the top-left corner.

        Args:
            features: (256, h', w') with h', w' <= 64, e.g. rendered and decoded features.
            pad: what fills the padding cells: 'zeros', 'edge' (replicate the last row/column)
                or a (256,) vector (e.g. SAM's embedding of a padding region).
        """
        if features.ndim != 3 or features.shape[0] != self.dim:
            raise ValueError(f"features must be ({self.dim}, h, w), got {tuple(features.shape)}")
        h, w = features.shape[-2:]
        g = self.grid
        if h > g or w > g:
            raise ValueError(f"features ({h}x{w}) are larger than SAM's {g}x{g} grid")
        if isinstance(pad, torch.Tensor):
            fill = pad.to(features).reshape(self.dim, 1, 1)
            out = fill.expand(self.dim, g, g).clone()
            out[:, :h, :w] = features
            return out
        if pad == "zeros":
            return F.pad(features, (0, g - w, 0, g - h))
        if pad == "edge":
            return F.pad(features[None], (0, g - w, 0, g - h), mode="replicate")[0]
        raise ValueError(f"pad must be 'zeros', 'edge' or a tensor, got {pad!r}")

    # ------------------------------------------------------------------ prompting
    def predict_masks(
        self,
        embedding: torch.Tensor,
        points: Optional[ArrayLike] = None,
        labels: Optional[ArrayLike] = None,
        boxes: Optional[ArrayLike] = None,
        *,
        image_size: tuple[int, int],
        multimask_output: bool = False,
        return_scores: bool = False,
        pad: Union[str, torch.Tensor] = "zeros",
    ):
        """Masks from prompts with SAM's prompt encoder, mask decoder and post-processing.

        Args:
            embedding: (256, 64, 64) in SAM's padded frame, or cropped (256, h', w') with
                (h', w') = ``feature_size(*image_size)`` (padded back with ``pad``).
            points: (n, 2) pixel coordinates (x, y) in the image of size ``image_size``.
            labels: (n,) 1 = foreground, 0 = background (default: all foreground).
            boxes: (m, 4) or (4,) boxes (x0, y0, x1, y1) in pixels. Each box is one prompt (the
                points, if any, are added to every box); without boxes the points are one prompt.
            image_size: (H, W) of the image the prompts refer to and the masks are returned at.
            multimask_output: three masks per prompt (SAM's ambiguity-aware output) instead of one.
            return_scores: also return SAM's predicted IoU of each mask.

        Returns:
            masks (k, H, W) bool with k = prompts x (3 if multimask_output else 1), prompt-major;
            and (k,) float32 scores when ``return_scores``.
        """
        if points is None and boxes is None:
            raise ValueError("give points and/or boxes")
        H, W = int(image_size[0]), int(image_size[1])
        dev = self.device
        emb = embedding.to(dev, torch.float32)
        g = self.grid
        if tuple(emb.shape) != (self.dim, g, g):
            expect = (self.dim, *self.feature_size(H, W))
            if tuple(emb.shape) != expect:
                raise ValueError(f"embedding must be ({self.dim}, {g}, {g}) or the crop {expect} of an "
                                 f"image of size {(H, W)}, got {tuple(emb.shape)}")
            emb = self.embedding_from_cropped(emb, pad=pad)

        coords = lab = box = None
        if points is not None:
            coords = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 2).to(dev)
            if labels is None:
                lab = torch.ones(coords.shape[0], dtype=torch.int64, device=dev)
            else:
                lab = torch.as_tensor(np.asarray(labels)).reshape(-1).to(dev, torch.int64)
                if lab.shape[0] != coords.shape[0]:
                    raise ValueError(f"{coords.shape[0]} points but {lab.shape[0]} labels")
            coords = self.transform.apply_coords_torch(coords, (H, W))[None]
            lab = lab[None]
        if boxes is not None:
            box = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4).to(dev)
            box = self.transform.apply_boxes_torch(box, (H, W))
            if coords is not None:
                coords = coords.expand(box.shape[0], -1, -1)
                lab = lab.expand(box.shape[0], -1)

        sam = self.sam_model.eval()
        with torch.no_grad():
            sparse, dense = sam.prompt_encoder(
                points=(coords, lab) if coords is not None else None, boxes=box, masks=None)
            low_res, iou = sam.mask_decoder(
                image_embeddings=emb[None],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            logits = sam.postprocess_masks(low_res, input_size=self.input_size(H, W), original_size=(H, W))
        masks = (logits > sam.mask_threshold).reshape(-1, H, W)
        if return_scores:
            return masks, iou.reshape(-1).float()
        return masks
