"""Dense, language-aligned CLIP features (MaskCLIP) through open_clip.

CLIP's image tower only aligns its pooled class token with text. MaskCLIP (Zhou et al., ECCV 2022,
"Extract Free Dense Labels from CLIP") gets per-patch features in the same space by changing the
last transformer block: each patch token is replaced by its *value* projection (the q-k attention
is skipped, so a token does not mix with the others), followed by the attention's output
projection; the residual branch and the MLP are dropped. The final ``ln_post`` and ``proj`` then
map the tokens into the joint embedding space, where they are compared with ``encode_text``.

Geometry: the image is resized (bicubic, antialiased) to (H', W') with the long side ~
``resolution`` and both sides multiples of the patch size, and the positional embedding is
interpolated (bicubic) to the (H'/p, W'/p) grid, so non-square images keep their aspect. The
output is (D, H'/p, W'/p) -- (512, h/16, w/16) for ViT-B/16 -- L2-normalised per cell; the grid
covers the whole image (cell (i, j) covers rows [i, i+1) H / h').
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from feature3dgs.utils.optional import require

from ._weights import file_digest, load_weights_file, offline, weights_error
from .base import LanguageTeacher, grid_size, resize_to_grid

__all__ = ["DenseClipTeacher", "maskclip_features", "interpolate_pos_embed"]


def interpolate_pos_embed(pos: torch.Tensor, gh: int, gw: int, num_prefix: int = 1) -> torch.Tensor:
    """(num_prefix + g*g, C) learned positional embedding -> (num_prefix + gh*gw, C) (bicubic)."""
    prefix, grid = pos[:num_prefix], pos[num_prefix:]
    g = int(round(grid.shape[0] ** 0.5))
    if g * g != grid.shape[0]:
        raise ValueError(f"positional embedding grid of {grid.shape[0]} tokens is not square")
    if (gh, gw) == (g, g):
        return pos
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)
    return torch.cat([prefix, grid], dim=0)


def maskclip_features(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """MaskCLIP patch features of an open_clip ``VisionTransformer``.

    Args:
        visual: ``model.visual`` of an open_clip CLIP ViT (standard residual attention blocks,
            class-token pooling, no attentional pooler).
        images: (B, 3, H, W) normalised images, H and W multiples of the patch size.

    Returns:
        (B, D, H/p, W/p) patch features in the text embedding space (not normalised).
    """
    if getattr(visual, "attn_pool", None) is not None:
        raise NotImplementedError("MaskCLIP features need a ViT without attentional pooling")
    blocks = visual.transformer.resblocks
    last = blocks[-1]
    attn = getattr(last, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise NotImplementedError(f"MaskCLIP needs nn.MultiheadAttention blocks, got {type(attn).__name__}")

    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, C, gh, gw)
    B, C, gh, gw = x.shape
    x = x.reshape(B, C, gh * gw).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, C).expand(B, 1, C)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, gh, gw).to(x.dtype)[None]
    x = visual.ln_pre(x)

    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    # last block: value projection of every token, out-projection; no q-k mixing, no residual, no MLP
    y = last.ln_1(x)
    v = F.linear(y, attn.in_proj_weight[2 * C:], None if attn.in_proj_bias is None else attn.in_proj_bias[2 * C:])
    v = attn.out_proj(v)
    v = last.ls_1(v) if hasattr(last, "ls_1") else v
    if not batch_first:
        v = v.transpose(0, 1)
    tokens = visual.ln_post(v[:, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return tokens.permute(0, 2, 1).reshape(B, -1, gh, gw)


def _check_weights_file(path: str) -> None:
    """Refuse a ``torch.load`` file that is not weights-only loadable before open_clip reads it
    (open_clip loads with ``weights_only=True`` too, and retries without the argument only on
    a TypeError; this check keeps that retry from ever reading a file that holds objects).
    Safetensors and numpy (big_vision) files hold no pickles and are left to open_clip."""
    if str(path).endswith((".safetensors", ".npz", ".npy")):
        return
    load_weights_file(path, "open_clip weights file")


class DenseClipTeacher(LanguageTeacher):
    """MaskCLIP dense features of an open_clip ViT, with ``encode_text`` in the same space.

    Build with :meth:`from_pretrained` (real weights) or :meth:`tiny_random` (tests). See the
    module docstring for the feature definition and grid.
    """

    kind = "clip"

    version = 1

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, model_name: str, weights_id: str,
                 is_random: bool, resolution: int = 448):
        oc = require("open_clip", "open-clip-torch", "the CLIP teacher")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.name = f"clip-{model_name}"
        self.weights_id = weights_id
        self.is_random = is_random
        self.resolution = int(resolution)
        visual = model.visual
        self.patch = int(visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else visual.patch_size)
        if self.resolution < self.patch:
            raise ValueError(f"resolution {resolution} is smaller than the patch size {self.patch}")
        self.dim = int(visual.output_dim)
        cfg = oc.get_model_preprocess_cfg(model)
        mean = cfg.get("mean", oc.OPENAI_DATASET_MEAN)
        std = cfg.get("std", oc.OPENAI_DATASET_STD)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_name: str = "ViT-B-16",
        pretrained: str = "openai",
        cache_dir: Optional[str] = None,
        *,
        resolution: int = 448,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "DenseClipTeacher":
        """An open_clip model with pretrained weights.

        Args:
            model_name: an open_clip ViT name ('ViT-B-16', 'ViT-L-14', ...).
            pretrained: an open_clip tag ('openai', 'laion2b_s34b_b88k', ...) or the path of a
                checkpoint file for that architecture.
            cache_dir: where open_clip caches downloads (default: its own, the Hugging Face cache).
            resolution: long side of the network input in pixels.

        A file is loaded weights-only (no code in it runs).

        Raises:
            FileNotFoundError: the weights are not available locally and cannot be downloaded.
            ValueError: ``model_name`` is not an open_clip model, ``pretrained`` neither a file nor
                a tag of it, or the file is not a weights file of that model (named in the message).
        """
        oc = require("open_clip", "open-clip-torch", "the CLIP teacher")
        known = oc.list_models()
        if not isinstance(model_name, str) or (model_name not in known
                                               and not model_name.startswith(("hf-hub:", "local-dir:"))):
            lower = {m.lower(): m for m in known}
            close = [lower[m] for m in difflib.get_close_matches(str(model_name).lower(), list(lower), n=6, cutoff=0.5)]
            raise ValueError(f"unknown CLIP model {model_name!r} (--teacher-model): not an open_clip model name; "
                             f"e.g. {', '.join(close or known[:8])} (open_clip.list_models() has all "
                             f"{len(known)})")
        is_file = pretrained is not None and os.path.isfile(pretrained)
        if is_file:
            _check_weights_file(pretrained)
        tag_cfg = {} if is_file else oc.get_pretrained_cfg(model_name, pretrained)
        if not is_file and not tag_cfg:
            raise ValueError(f"{pretrained!r} is neither a file nor an open_clip tag of {model_name}; "
                             f"tags: {oc.list_pretrained_tags_by_model(model_name)}")
        try:
            model = oc.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir,
                                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)), device="cpu")
        except Exception as e:
            if is_file:  # garbage, another architecture's weights, wrong keys or shapes
                raise weights_error(f"open_clip {model_name} weights file", pretrained, e) from None
            where = tag_cfg.get("hf_hub") or ""
            src = (f"https://huggingface.co/{where.rstrip('/')}" if where else tag_cfg.get("url", "?"))
            raise FileNotFoundError(
                f"open_clip weights {model_name}/{pretrained} are not in the cache "
                f"({cache_dir or 'the Hugging Face cache'}) and could not be downloaded"
                f"{' (offline mode)' if offline() else ''}. Download them from {src} (file "
                f"open_clip_pytorch_model.bin or open_clip_model.safetensors"
                f"{', or ' + tag_cfg['url'] if tag_cfg.get('url') else ''}) and pass the file as "
                f"pretrained=<path> (--checkpoint <path>), or point cache_dir (--weights-dir) at a cache "
                f"holding them. Cause: {type(e).__name__}: {e}"
            ) from e
        weights_id = f"sha256:{file_digest(pretrained)}" if is_file else f"open_clip:{pretrained}"
        teacher = cls(model, oc.get_tokenizer(model_name), model_name=model_name, weights_id=weights_id,
                      is_random=False, resolution=resolution)
        return teacher.to(device) if device is not None else teacher

    @classmethod
    def tiny_random(cls, seed: int = 0, resolution: int = 64, embed_dim: int = 512) -> "DenseClipTeacher":
        """A tiny open_clip ``CLIP`` (2-layer ViT/16 of width 32, 2-layer text transformer of width
        32, the real BPE tokenizer and a 512-d joint space) with random weights."""
        oc = require("open_clip", "open-clip-torch", "the CLIP teacher")
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = oc.CLIP(
                embed_dim=embed_dim,
                vision_cfg=CLIPVisionCfg(image_size=64, layers=2, width=32, head_width=16, patch_size=16),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
                quick_gelu=True,
            )
        oc.set_model_preprocess_cfg(model, {"size": 64, "mean": oc.OPENAI_DATASET_MEAN,
                                            "std": oc.OPENAI_DATASET_STD, "interpolation": "bicubic",
                                            "resize_mode": "shortest", "fill_color": 0})
        return cls(model, oc.SimpleTokenizer(context_length=77), model_name="tiny",
                   weights_id=f"random-seed-{seed}", is_random=True, resolution=resolution)

    # ------------------------------------------------------------------ features
    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') the network sees: long side ~ resolution, multiples of the patch size."""
        return grid_size(height, width, self.resolution, self.patch)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.input_size(height, width)
        return h // self.patch, w // self.patch

    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_to_grid(images, self.input_size(*images.shape[-2:]), mode="bicubic")
        x = (x - self._mean.to(x.device)) / self._std.to(x.device)
        feats = maskclip_features(self.model.visual, x)
        return F.normalize(feats.float(), dim=1)

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)
