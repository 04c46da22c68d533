"""LSeg (Li et al., ICLR 2022, "Language-driven Semantic Segmentation") as a language teacher.

:class:`LSegNet` is the LSeg network with the ``clip_vitl16_384`` backbone: a ViT-L/16 (384)
image encoder whose blocks 5, 11, 17 and 23 feed a DPT decoder (reassemble with a projected
readout token, 3x3 convs to 256 channels, four fusion blocks with batch norm), a 1x1 head to the
512-d CLIP space, and the CLIP ViT-B/32 text tower. The code is written here from the public
definition (isl-org/lang-seg, ``modules/models/lseg_net.py``, ``lseg_blocks.py``,
``lseg_vit.py``); module names follow it so that the official checkpoint's ``state_dict`` loads
with ``strict=True``:

- ``pretrained.model.*``: the timm ``vit_large_patch16_384`` (cls_token, pos_embed,
  patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm, head);
- ``pretrained.act_postprocess{1..4}.{0.project.0,3,4}``: readout projection and resampling convs;
- ``scratch.layer{1..4}_rn``, ``scratch.refinenet{1..4}.{out_conv,resConfUnit{1,2}.{conv,bn}{1,2}}``,
  ``scratch.head1``, (``scratch.head_block`` for arch_option 1/2), ``scratch.output_conv`` (no weights);
- ``clip_pretrained.*``: OpenAI CLIP ViT-B/32 (visual tower included, as the official model keeps it).

The official ``LSeg.logit_scale`` is ``nn.Parameter(...).exp()``, a plain tensor that is *not* in
the state dict (only ``clip_pretrained.logit_scale`` is); here it is a non-persistent buffer.
The official checkpoint (``demo_e200.ckpt``) is a PyTorch-Lightning checkpoint whose
``state_dict`` keys carry the ``net.`` prefix of ``LSegModule.net``.

Teacher features: the image is resized (bilinear, antialiased) to (H', W') with the long side ~
``resolution`` (default 480, LSeg's crop size) and both sides multiples of 32, normalised with
mean = std = 0.5; the output is ``scratch.head1`` (the 512-d per-pixel embedding LSeg compares with
text), at half the input resolution, (512, H'/2, W'/2), L2-normalised per pixel. The grid covers
the whole image.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._weights import file_digest, load_weights_file
from .base import LanguageTeacher, grid_size, resize_to_grid

__all__ = ["LSegConfig", "LSegNet", "LSegTeacher", "lseg_state_dict_from_checkpoint", "build_lseg_from_state_dict",
           "LSEG_DEMO_CHECKPOINT_URL"]

#: where the official demo checkpoint is published (linked from the isl-org/lang-seg README)
LSEG_DEMO_CHECKPOINT_URL = "https://drive.google.com/file/d/1FTuHY1xPUkM-5gaDtMfgCl3D0gR89WV7/view?usp=sharing"


@dataclass(frozen=True)
class LSegConfig:
    """Sizes of :class:`LSegNet`. The defaults are the official ``clip_vitl16_384`` model."""

    vit_width: int = 1024
    vit_depth: int = 24
    vit_heads: int = 16
    vit_patch: int = 16
    vit_image_size: int = 384          # pos_embed grid (interpolated to the input at run time)
    vit_num_classes: int = 1000        # timm's classifier head (unused, but in the checkpoint)
    hooks: tuple[int, ...] = (5, 11, 17, 23)
    reassemble: tuple[int, ...] = (256, 512, 1024, 1024)
    features: int = 256
    out_dim: int = 512
    readout: str = "project"
    use_bn: bool = True
    arch_option: int = 0               # 1: bottleneck head block, 2: depthwise head block (logits only)
    block_depth: int = 0
    activation: str = "lrelu"
    clip_embed_dim: int = 512
    clip_vision: Mapping[str, Any] = field(default_factory=lambda: dict(image_size=224, layers=12, width=768,
                                                                        patch_size=32))
    clip_text: Mapping[str, Any] = field(default_factory=lambda: dict(context_length=77, vocab_size=49408,
                                                                      width=512, heads=8, layers=12))
    name: str = "clip_vitl16_384"

    @classmethod
    def tiny(cls) -> "LSegConfig":
        """The same module structure with tiny widths and depths (for tests)."""
        return cls(vit_width=32, vit_depth=4, vit_heads=2, vit_image_size=64, vit_num_classes=10,
                   hooks=(0, 1, 2, 3), reassemble=(8, 16, 32, 32), features=16, out_dim=512,
                   clip_embed_dim=512,
                   clip_vision=dict(image_size=64, layers=1, width=32, patch_size=32, head_width=16),
                   clip_text=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
                   name="tiny")


# ---------------------------------------------------------------------- ViT-L/16 (timm layout)
class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class _ViT(nn.Module):
    """The timm VisionTransformer parameter layout, run with an interpolated position embedding
    and returning the token sequences after the hooked blocks (the official ``forward_flex``)."""

    def __init__(self, cfg: LSegConfig):
        super().__init__()
        D, g = cfg.vit_width, cfg.vit_image_size // cfg.vit_patch
        self.patch_size = cfg.vit_patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, D))
        self.patch_embed = _PatchEmbed(cfg.vit_patch, D)
        self.blocks = nn.ModuleList([_Block(D, cfg.vit_heads) for _ in range(cfg.vit_depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, cfg.vit_num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def resized_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        tok, grid = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        g = int(math.isqrt(grid.shape[0]))
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        return torch.cat([tok, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def forward_hooked(self, x: torch.Tensor, hooks: tuple[int, ...]) -> list[torch.Tensor]:
        B, _, H, W = x.shape
        gh, gw = H // self.patch_size, W // self.patch_size
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1) + self.resized_pos_embed(gh, gw)
        outs = []
        for i, blk in enumerate(self.blocks[: max(hooks) + 1]):
            t = blk(t)
            if i in hooks:
                outs.append(t)
        return outs


# ---------------------------------------------------------------------- DPT reassemble / fusion
class _ProjectReadout(nn.Module):
    """Concatenate the class token to every patch token and project back (readout='project')."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, 1:]
        return self.project(torch.cat([patches, x[:, :1].expand_as(patches)], dim=-1))


class _IgnoreReadout(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:]


class _AddReadout(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:] + x[:, :1]


def _reassemble(cfg: LSegConfig, i: int) -> nn.Sequential:
    """act_postprocess{i+1}: [readout, (transpose), (unflatten), 1x1 conv, resample]."""
    D, c = cfg.vit_width, cfg.reassemble[i]
    readout = {"project": lambda: _ProjectReadout(D), "ignore": _IgnoreReadout, "add": _AddReadout}[cfg.readout]()
    layers: list[nn.Module] = [readout, nn.Identity(), nn.Identity(), nn.Conv2d(D, c, kernel_size=1)]
    if i == 0:
        layers.append(nn.ConvTranspose2d(c, c, kernel_size=4, stride=4))
    elif i == 1:
        layers.append(nn.ConvTranspose2d(c, c, kernel_size=2, stride=2))
    elif i == 3:
        layers.append(nn.Conv2d(c, c, kernel_size=3, stride=2, padding=1))
    return nn.Sequential(*layers)


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int, use_bn: bool):
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=not use_bn)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)
        self.activation = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.activation(x))
        if self.use_bn:
            out = self.bn1(out)
        out = self.conv2(self.activation(out))
        if self.use_bn:
            out = self.bn2(out)
        return out + x


class _FusionBlock(nn.Module):
    def __init__(self, features: int, use_bn: bool):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = _ResidualConvUnit(features, use_bn)
        self.resConfUnit2 = _ResidualConvUnit(features, use_bn)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Interpolate(nn.Module):
    def __init__(self, scale_factor: float, mode: str = "bilinear", align_corners: bool = True):
        super().__init__()
        self.scale_factor, self.mode, self.align_corners = scale_factor, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners)


class _DepthwiseConv(nn.Module):
    """One 3x3 conv shared by all channels (the official ``depthwise_conv``)."""

    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(1, 1, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        return self.depthwise(x.reshape(B * C, 1, H, W)).reshape(B, C, H, W)


class _HeadBlock(nn.Module):
    """arch_option 1 (bottleneck: + channel max) or 2 (depthwise) block applied to the logits."""

    def __init__(self, bottleneck: bool, activation: str):
        super().__init__()
        self.bottleneck = bottleneck
        self.depthwise = _DepthwiseConv()
        self.activation = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(), "tanh": nn.Tanh()}[activation]

    def forward(self, x: torch.Tensor, act: bool = True) -> torch.Tensor:
        y = self.depthwise(x)
        if self.bottleneck:
            y = y + x.max(dim=1, keepdim=True)[0]
        return self.activation(y) if act else y


def _clip_model(cfg: LSegConfig) -> nn.Module:
    try:
        import open_clip
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    except ImportError as e:  # pragma: no cover
        raise ImportError("the LSeg teacher needs open_clip (for the CLIP text tower): "
                          "pip install open-clip-torch") from e
    return open_clip.CLIP(embed_dim=cfg.clip_embed_dim, vision_cfg=CLIPVisionCfg(**dict(cfg.clip_vision)),
                          text_cfg=CLIPTextCfg(**dict(cfg.clip_text)), quick_gelu=True)


class LSegNet(nn.Module):
    """The LSeg network (see the module docstring for the layout and checkpoint compatibility)."""

    def __init__(self, config: Optional[LSegConfig] = None):
        super().__init__()
        cfg = self.config = config or LSegConfig()
        if len(cfg.hooks) != 4 or len(cfg.reassemble) != 4:
            raise ValueError("LSeg needs four hooks and four reassemble widths")
        self.clip_pretrained = _clip_model(cfg)
        self.pretrained = nn.Module()
        self.pretrained.model = _ViT(cfg)
        for i in range(4):
            setattr(self.pretrained, f"act_postprocess{i + 1}", _reassemble(cfg, i))
        self.scratch = nn.Module()
        for i in range(4):
            setattr(self.scratch, f"layer{i + 1}_rn",
                    nn.Conv2d(cfg.reassemble[i], cfg.features, kernel_size=3, padding=1, bias=False))
        for i in range(4):
            setattr(self.scratch, f"refinenet{i + 1}", _FusionBlock(cfg.features, cfg.use_bn))
        self.scratch.head1 = nn.Conv2d(cfg.features, cfg.out_dim, kernel_size=1)
        if cfg.arch_option in (1, 2):
            self.scratch.head_block = _HeadBlock(cfg.arch_option == 1, cfg.activation)
        elif cfg.arch_option != 0:
            raise ValueError(f"arch_option must be 0, 1 or 2, got {cfg.arch_option}")
        self.scratch.output_conv = nn.Sequential(_Interpolate(scale_factor=2, mode="bilinear", align_corners=True))
        self.register_buffer("logit_scale", torch.tensor(1.0 / 0.07), persistent=False)

    def reset_nonpersistent_buffers(self, device: Union[str, torch.device] = "cpu") -> None:
        """Recompute the buffers a state dict does not carry (after building on 'meta')."""
        ctx = self.clip_pretrained.context_length
        mask = torch.full((ctx, ctx), float("-inf"), device=device).triu_(1)
        self.clip_pretrained.attn_mask = mask
        self.logit_scale = torch.tensor(1.0 / 0.07, device=device)

    # ------------------------------------------------------------------ forward
    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised to [-1, 1], H and W multiples of 32 -> (B, out_dim, H/2, W/2),
        the per-pixel embeddings before normalisation (``scratch.head1``)."""
        B, _, H, W = x.shape
        if H % 32 or W % 32:
            raise ValueError(f"LSeg input size must be a multiple of 32, got {H}x{W}")
        p = self.pretrained
        gh, gw = H // p.model.patch_size, W // p.model.patch_size
        tokens = p.model.forward_hooked(x, self.config.hooks)
        layers = []
        for i, t in enumerate(tokens):
            seq = getattr(p, f"act_postprocess{i + 1}")
            y = seq[0](t)
            y = y.transpose(1, 2).reshape(B, y.shape[-1], gh, gw)
            for m in list(seq)[3:]:
                y = m(y)
            layers.append(getattr(self.scratch, f"layer{i + 1}_rn")(y))
        s = self.scratch
        path = s.refinenet4(layers[3])
        path = s.refinenet3(path, layers[2])
        path = s.refinenet2(path, layers[1])
        path = s.refinenet1(path, layers[0])
        return s.head1(path)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip_pretrained.encode_text(tokens)

    def forward(self, x: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (B, n_labels, H, W), as the official ``LSeg.forward``."""
        img = F.normalize(self.image_features(x), dim=1)
        txt = F.normalize(self.encode_text(text_tokens), dim=-1)
        out = self.logit_scale * torch.einsum("bchw,nc->bnhw", img, txt.to(img.dtype))
        if self.config.arch_option in (1, 2):
            for _ in range(self.config.block_depth - 1):
                out = self.scratch.head_block(out)
            out = self.scratch.head_block(out, False)
        return self.scratch.output_conv(out)


# ---------------------------------------------------------------------- checkpoint loading
#: the packages whose objects a Lightning checkpoint holds beside its tensors (hyper-parameters
#: as AttributeDict, callback states keyed by class, ...): they get inert stand-ins, never imported
LIGHTNING_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "lightning_utilities.",
                     "omegaconf.", "argparse.Namespace")

#: the hyper-parameters an LSeg checkpoint may set, with their types
_HP_TYPES = {"backbone": str, "num_features": int, "arch_option": int, "block_depth": int, "activation": str,
             "no_batchnorm": bool}


def lseg_state_dict_from_checkpoint(ckpt: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict of :class:`LSegNet`, hyper-parameters) from a loaded checkpoint.

    Accepts a Lightning checkpoint (``state_dict`` with ``net.``-prefixed keys; other top-level
    modules are ignored), or a bare LSegNet state dict (optionally ``module.``-prefixed).
    """
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"an LSeg checkpoint is a dict (a Lightning checkpoint or a state dict), got "
                         f"{type(ckpt).__name__}")
    raw_hp = ckpt.get("hyper_parameters")
    hp = {k: v for k, v in raw_hp.items() if k in _HP_TYPES} if isinstance(raw_hp, Mapping) else {}
    for k, v in hp.items():
        if not isinstance(v, _HP_TYPES[k]) or (isinstance(v, bool) and _HP_TYPES[k] is int):
            raise ValueError(f"hyper-parameter {k!r} must be a {_HP_TYPES[k].__name__}, got {v!r}")
    sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    if not isinstance(sd, Mapping):
        raise ValueError(f"'state_dict' must be a dict of tensors, got {type(sd).__name__}")
    sd = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError("the checkpoint holds no tensors (no 'state_dict' of LSegNet weights)")
    for prefix in ("net.", "module.net.", "module."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    return sd, hp


def build_lseg_from_state_dict(
    state: Mapping[str, torch.Tensor],
    config: Optional[LSegConfig] = None,
    hyper_parameters: Optional[Mapping[str, Any]] = None,
) -> LSegNet:
    """An :class:`LSegNet` holding ``state`` (loaded strictly), without a random initialisation:
    the network is built on the 'meta' device and the tensors are assigned, then cast to float32.

    ``hyper_parameters`` (from a Lightning checkpoint) set arch_option / block_depth / activation;
    without them a ``scratch.head_block`` in the state dict implies arch_option 1.

    Raises:
        ValueError: a missing, unexpected or wrongly shaped tensor (named), or hyper-parameters
            this definition does not implement.
    """
    state = dict(state)
    cfg = config or LSegConfig()
    hp = dict(hyper_parameters or {})
    if config is None and hp.get("backbone", cfg.name) != cfg.name:
        raise ValueError(f"LSeg backbone {hp['backbone']!r}: only {cfg.name!r} is implemented")
    if "num_features" in hp:
        cfg = replace(cfg, features=int(hp["num_features"]))
    has_head_block = any(k.startswith("scratch.head_block.") for k in state)
    arch = int(hp.get("arch_option", 1 if has_head_block else 0))
    cfg = replace(cfg, arch_option=arch, block_depth=int(hp.get("block_depth", cfg.block_depth)),
                  activation=str(hp.get("activation", cfg.activation)))
    if hp.get("no_batchnorm"):
        warnings.warn("the checkpoint's hyper-parameters say no_batchnorm, but LSegNet always uses batch norm "
                      "(as the official LSegNet does); the strict load will tell")
    if cfg.activation not in ("relu", "lrelu", "tanh"):
        raise ValueError(f"LSeg activation must be 'relu', 'lrelu' or 'tanh', got {cfg.activation!r}")
    with torch.device("meta"):
        net = LSegNet(cfg)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # tensors of the wrong shape
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise ValueError(f"the state dict does not match the LSeg definition: {len(lines)} tensors of the wrong "
                         f"shape, e.g. {lines[0] if lines else str(e)[:200]}") from None
    if missing or unexpected:
        raise ValueError(f"the state dict does not match the LSeg definition: {len(missing)} missing keys "
                           f"{missing[:8]}{'...' if len(missing) > 8 else ''}, {len(unexpected)} unexpected keys "
                           f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    net = net.float()
    dev = next(iter(state.values())).device if state else torch.device("cpu")
    net.reset_nonpersistent_buffers(dev)
    return net.eval()


# ---------------------------------------------------------------------- teacher
class LSegTeacher(LanguageTeacher):
    """LSeg per-pixel CLIP features (see the module docstring), with ``encode_text``."""

    kind = "lseg"

    version = 1

    def __init__(self, net: LSegNet, *, weights_id: str, is_random: bool, resolution: int = 480):
        import open_clip

        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.name = f"lseg-{net.config.name}"
        self.dim = int(net.config.out_dim)
        self.weights_id = weights_id
        self.is_random = is_random
        self.resolution = int(resolution)
        if self.resolution < 32:
            raise ValueError(f"LSeg resolution must be >= 32, got {resolution}")
        self.tokenizer = open_clip.SimpleTokenizer(context_length=net.clip_pretrained.context_length)

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        *,
        resolution: int = 480,
        config: Optional[LSegConfig] = None,
        device: Optional[Union[str, torch.device]] = None,
        trust_checkpoint: bool = False,
    ) -> "LSegTeacher":
        """LSeg with the official checkpoint (``demo_e200.ckpt``) or any LSegNet state dict.

        The file is loaded weights-only: tensors and plain containers, with inert stand-ins for
        the Lightning (and omegaconf, argparse) objects a Lightning checkpoint holds, so no code
        from the file runs and Lightning need not be installed.

        Args:
            path: the .ckpt file (Lightning: ``state_dict`` keys prefixed with ``net.``).
            resolution: long side of the network input (multiples of 32 are used).
            config: network sizes (default: the official clip_vitl16_384 model).
            trust_checkpoint: unpickle the file completely when it references other classes or
                functions. Unpickling can run any code in the file: only for a file from a
                source you trust (the CLI's ``--trust-checkpoint``).

        Raises:
            FileNotFoundError: no file at ``path`` (the message says where to get it).
            UnsafeCheckpointError (a ValueError): the file references objects beyond tensors,
                and ``trust_checkpoint`` is False.
            ValueError: the file is not a PyTorch checkpoint, or its keys or shapes do not match
                the LSeg definition (strict loading); the message names the file.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"LSeg checkpoint not found at {p}. Download demo_e200.ckpt (the official LSeg ViT-L/16 "
                f"model) from {LSEG_DEMO_CHECKPOINT_URL} (linked from https://github.com/isl-org/lang-seg) "
                f"and pass its path.")
        ckpt = load_weights_file(p, "LSeg checkpoint", trust_checkpoint=trust_checkpoint, stand_ins=LIGHTNING_MODULES,
                                 trust_hint="pass --trust-checkpoint (trust_checkpoint=True), which unpickles it "
                                            "completely and can run code it contains")
        try:
            state, hp = lseg_state_dict_from_checkpoint(ckpt)
            net = build_lseg_from_state_dict(state, config=config, hyper_parameters=hp)
        except ValueError as e:
            raise ValueError(f"LSeg checkpoint {p}: {e}") from None
        del ckpt, state
        teacher = cls(net, weights_id=f"sha256:{file_digest(p)}", is_random=False, resolution=resolution)
        return teacher.to(device) if device is not None else teacher

    @classmethod
    def tiny_random(cls, seed: int = 0, resolution: int = 64) -> "LSegTeacher":
        """:meth:`LSegConfig.tiny` with random weights (batch-norm statistics randomised too, so
        that the decoder is not the identity)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = LSegNet(LSegConfig.tiny())
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        return cls(net, weights_id=f"random-seed-{seed}", is_random=True, resolution=resolution)

    @property
    def module(self) -> torch.nn.Module:
        return self.net

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') the network sees: long side ~ resolution, multiples of 32."""
        return grid_size(height, width, self.resolution, 32)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.input_size(height, width)
        return h // 2, w // 2

    def _extract(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_to_grid(images, self.input_size(*images.shape[-2:]), mode="bilinear")
        feats = self.net.image_features((x - 0.5) / 0.5)
        return F.normalize(feats.float(), dim=1)

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.net.encode_text(self.tokenizer(texts).to(self.device))

    def describe(self) -> dict:
        d = super().describe()
        cfg = asdict(self.net.config)
        d["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        return d
