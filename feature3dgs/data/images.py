"""Image file io: decoding to uint8 arrays, resizing, alpha compositing, a byte-bounded LRU cache.

Arrays here are NumPy, channels last, (H, W, C) uint8 with C in {1, 3, 4} unless stated; the
float tensors handed to training are produced by :func:`composite` at the last moment so that
decoded images can be kept compactly as uint8.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import SceneFormatError, SceneNotFoundError, SceneOptionError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    """True for a file whose suffix is a supported image format (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise SceneNotFoundError(f"image folder not found: {folder}", path=folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


#: What PIL (and its codecs) raise for a file that is not a valid image or ends early.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn any decoder failure inside the block into a SceneFormatError naming the file."""
    try:
        yield
    except FileNotFoundError:
        raise SceneNotFoundError(f"image file not found: {path}", path=path) from None
    except SceneFormatError:
        raise
    except _DECODE_ERRORS as e:
        raise SceneFormatError(f"{path}: cannot decode image ({type(e).__name__}: {e}); "
                               "the file is corrupt, truncated or not an image", path=path, key="image") from None


def _open(path: Path) -> Image.Image:
    with _decoding(path):
        return Image.open(path)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only."""
    with _open(path) as im:
        return im.size


def check_image(path: Path) -> tuple[int, int]:
    """Check that an image file is complete, cheaply, and return its (width, height).

    PNG: every chunk's CRC is verified through IEND (PIL's verify; no decompression). JPEG: the
    file must hold an end-of-image marker after its last start-of-scan marker (a truncated file
    has none; libjpeg itself only fails on truncation, treating other corruption as warnings).
    Other formats: a full decode. A file that passes and still fails to decode later raises a
    SceneFormatError naming it then.

    Raises:
        SceneFormatError: naming the file when it is missing, truncated or corrupt.
    """
    path = Path(path)
    with _decoding(path):
        with Image.open(path) as im:
            size = im.size
            if size[0] <= 0 or size[1] <= 0:
                raise ValueError(f"empty image {size[0]}x{size[1]}")
            if im.format == "PNG":
                im.verify()
            elif im.format == "JPEG":
                data = path.read_bytes()
                sos = data.rfind(b"\xff\xda")
                if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
                    raise OSError("image file is truncated (no end-of-image marker after the last scan)")
            else:
                im.load()
    return size


def read_image_u8(path: Path) -> np.ndarray:
    """Decode a colour image to (H, W, 3) or (H, W, 4) uint8 (RGBA when it has transparency).

    Grey images are expanded to RGB; 16-bit images are reduced to 8 bits.
    """
    with _open(path) as im, _decoding(path):
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            a = np.clip(a / 257.0 + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(a[..., None], 3, axis=2)
        has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            im.mode == "P" and "transparency" in im.info
        )
        im = im.convert("RGBA" if has_alpha else "RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def read_gray(path: Path) -> np.ndarray:
    """Decode an image as one channel, (H, W) uint8 (used for masks)."""
    with _open(path) as im, _decoding(path):
        if im.mode in ("RGBA", "LA", "PA"):
            # A mask stored with transparency: the alpha channel is the mask.
            return np.asarray(im.getchannel("A"), dtype=np.uint8).copy()
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def read_label(path: Path) -> np.ndarray:
    """Decode an integer label image (8- or 16-bit PNG) to (H, W) int32 ids, unchanged values."""
    with _open(path) as im, _decoding(path):
        if im.mode == "P":
            a = np.asarray(im)  # palette indices are the labels
        elif im.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
            a = np.asarray(im)
        else:
            raise SceneFormatError(f"{path}: label image has mode {im.mode}; expected a single-channel integer PNG",
                                   path=path, key="mode")
        return a.astype(np.int32)


def read_depth(path: Path, png_scale: float = 1e-3) -> np.ndarray:
    """Read a depth map as (H, W) float32.

    ``.npy`` files hold depth directly (float); image files hold integers multiplied by
    ``png_scale`` (default 1e-3: 16-bit PNG in millimetres to metres). 0 means no depth.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise SceneNotFoundError(f"depth file not found: {path}", path=path)
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise SceneFormatError(f"{path}: cannot read depth array ({e})", path=path, key="depth") from None
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise SceneFormatError(f"{path}: depth file must hold an (H, W) numeric array, got {a.dtype} {a.shape}",
                                   path=path, key="depth")
        return a.astype(np.float32)
    with _open(path) as im, _decoding(path):
        return (np.asarray(im, dtype=np.float64) * png_scale).astype(np.float32)


def resize_u8(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample an (H, W, C) or (H, W) uint8 image to (height, width) with Lanczos filtering.

    RGBA images are filtered with premultiplied alpha (PIL does this), so transparent pixels do
    not bleed their colour into the result.
    """
    if a.shape[1] == width and a.shape[0] == height:
        return a
    im = Image.fromarray(a)
    return np.asarray(im.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8).copy()


def resize_nearest(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resampling of an (H, W, ...) array (labels, depth) to (height, width).

    Output pixel (i, j) takes the input pixel containing its centre under the pixel-centre
    convention: source column floor((i + 0.5) * W / width).
    """
    h, w = a.shape[:2]
    if (w, h) == (width, height):
        return a
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    return a[rows[:, None], cols[None, :]]


def parse_background(background: "Sequence[float] | str | torch.Tensor") -> torch.Tensor:
    """Background colour as a (3,) float32 tensor in [0, 1]; accepts 'white', 'black' or 3 numbers."""
    if isinstance(background, str):
        names = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
        if background.lower() not in names:
            raise SceneOptionError(f"background must be 'white', 'black' or 3 floats, got {background!r}",
                                   key="background")
        background = names[background.lower()]
    try:
        bg = torch.as_tensor(np.asarray(background, dtype=np.float32)).flatten()
    except (TypeError, ValueError):
        raise SceneOptionError(f"background must be 'white', 'black' or 3 floats in [0, 1], got {background!r}",
                               key="background") from None
    if bg.numel() != 3:
        raise SceneOptionError(f"background must have 3 values, got {bg.numel()}", key="background")
    if not torch.isfinite(bg).all() or (bg < 0).any() or (bg > 1).any():
        raise SceneOptionError(f"background values must lie in [0, 1], got {bg.tolist()}", key="background")
    return bg


def composite(img_u8: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(H, W, 3|4) uint8 -> (3, H, W) float32 in [0, 1], RGBA composited over ``background`` (3,)."""
    x = img_u8.permute(2, 0, 1).to(torch.float32) / 255.0
    if x.shape[0] == 4:
        rgb, a = x[:3], x[3:4]
        x = rgb * a + background.to(x)[:, None, None] * (1.0 - a)
    return x.contiguous()


class ByteLRU:
    """A thread-safe least-recently-used cache of tensors bounded by their total size in bytes.

    An entry larger than the whole budget is returned but not kept. ``max_bytes = 0`` disables
    caching (every access decodes from disk).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[Hashable, torch.Tensor]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict:
        # Pickled (e.g. into spawned DataLoader workers) empty and without the lock.
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])

    @property
    def nbytes(self) -> int:
        """Total size of the cached tensors in bytes."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def get(self, key: Hashable, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached tensor for ``key``, calling ``load()`` and caching the result on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = load()
        size = value.element_size() * value.numel()
        if size > self.max_bytes:
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.element_size() * old.numel()
        return value


def to_tensor_u8(a: np.ndarray) -> torch.Tensor:
    """Wrap an (H, W[, C]) array as a contiguous tensor (channels last kept), no copy when possible."""
    return torch.from_numpy(np.ascontiguousarray(a))

