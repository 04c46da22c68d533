"""Atomic file writes, PNG images, file-name-safe view names, and output-folder checks.

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
    """Check, before any work, that ``path`` can be (or is) a folder this process writes into.

    The folder need not exist; nothing is created (one temporary file is created and removed in
    the nearest existing folder to test the permission, which also catches read-only file
    systems and permissions that ``os.access`` misjudges).

    Args:
        path: the output folder.
        option: how messages name it (a CLI flag such as ``--out`` or ``--cache-dir``).

    Returns:
        ``path`` as a Path (``~`` expanded).

    Raises:
        ValueError: one line naming ``option`` and the path: an existing file, a path under a
            file, or a folder that cannot be written.
    """
    if path is None or str(path).strip() == "":
        raise ValueError(f"{option} must name a folder, got {path!r}")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is an existing file, not a folder; choose another path")
    probe = out
    while not probe.exists():
        if probe.parent == probe:  # pragma: no cover - a root that does not exist
            raise ValueError(f"{option} {out}: no existing folder above it")
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{option} {out} lies under {probe}, which is a file, not a folder; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".feature3dgs-write-test.", suffix=TEMP_SUFFIX, dir=probe)
    except OSError as e:
        where = "" if probe == out else f" (in {probe}, where it would be created)"
        raise ValueError(f"{option} {out} is not writable{where}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)
    return out


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
