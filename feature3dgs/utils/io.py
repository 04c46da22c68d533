"""Atomic file writes, PNG images and file-name-safe view names.

Atomic: write beside the target, fsync, then ``os.replace``. A reader (or a crash) never sees a
half-written file: the target either keeps its old contents or gets the complete new ones.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["atomic_open", "atomic_write_text", "save_png", "safe_name", "TEMP_SUFFIX", "check_writable_dir",
           "remove_stale_temp_files"]

PathLike = Union[str, os.PathLike]
#: suffix of the temporary files :func:`atomic_open` writes (``.<name>.<random>.tmp``)
TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. The parent
    folder is created if needed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def save_png(image: torch.Tensor, path: PathLike) -> Path:
    """Save a (3,H,W) (or (1,H,W)) float image in [0, 1] as an 8-bit PNG, atomically."""
    img = image.detach().float().cpu()
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must be (3, H, W) or (1, H, W), got {tuple(img.shape)}")
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    a = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_open(path, "wb") as f:
        Image.fromarray(a).save(f, format="PNG")
    return Path(path)


def safe_name(name: str) -> str:
    """A file-name stem for a view name: the extension dropped, path separators and other
    characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    stem = name.rsplit(".", 1)[0] if "." in Path(name).name else name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem.replace("/", "_").replace("\\", "_"))


def check_writable_dir(path: PathLike, option: str = "--out") -> Path:
    """``path`` as a folder that can be written (created later if missing), or OSError naming
    ``option``: the path is an existing file, lies under a file, or is not writable. Call it
    before any work, so a bad output path never costs a run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option}: {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{option}: {path} lies under {probe}, which is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{option}: cannot write in {probe}")
    return path


def remove_stale_temp_files(folder: PathLike) -> int:
    """Delete the temporary files that interrupted :func:`atomic_open` writes left in ``folder``
    (recursively; ``.<name>.<random>.tmp``). Call it only on a folder no one is writing to.
    Returns how many were removed."""
    count = 0
    for p in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            count += 1
    return count
