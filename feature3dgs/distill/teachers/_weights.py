"""Finding, downloading and fingerprinting teacher weights.

Weights are looked for in one folder: the ``cache_dir`` argument, else ``$FEATURE3DGS_WEIGHTS``,
else ``~/.cache/feature3dgs/weights``. A missing file is downloaded there when a network is
reachable and downloads are allowed (not with ``FEATURE3DGS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``);
otherwise the error names the file, the folder to put it in and where to get it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Optional, Union

from tqdm.auto import tqdm

from feature3dgs.utils.io import atomic_open

__all__ = ["weights_dir", "offline", "resolve_weights", "file_digest", "download"]

PathLike = Union[str, os.PathLike]

_TRUE = {"1", "true", "yes", "on"}


def weights_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The folder weights are looked up in and downloaded to."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FEATURE3DGS_WEIGHTS")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/feature3dgs/weights").expanduser()


def offline() -> bool:
    """True when downloads are switched off by the environment."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("FEATURE3DGS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def download(url: str, dest: Path, timeout: float = 30.0, progress: bool = True) -> Path:
    """Stream ``url`` to ``dest`` (written beside it, then renamed: never a partial file)."""
    with atomic_open(dest, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                  disable=not progress) as bar:
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    return dest


def resolve_weights(
    filename: str,
    url: str,
    *,
    what: str,
    checkpoint: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    allow_download: bool = True,
) -> Path:
    """The local path of a weights file.

    Args:
        filename: the standard file name (looked for in the weights folder).
        url: where the file is published (downloaded from, and named in errors).
        what: a short description for messages, e.g. "SAM vit_h checkpoint".
        checkpoint: an explicit path; used as is (it must exist).
        cache_dir: the weights folder (see :func:`weights_dir`).
        allow_download: try to download a missing file (unless :func:`offline`).

    Raises:
        FileNotFoundError: the file is not there and could not be downloaded; the message says
            which file, where to put it and where to get it.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found at {path}. Get {filename} from {url}")
        return path
    folder = weights_dir(cache_dir)
    path = folder / filename
    if path.is_file():
        return path
    reason = "downloads are disabled (allow_download=False)" if not allow_download else (
        "downloads are disabled by FEATURE3DGS_OFFLINE/HF_HUB_OFFLINE" if offline() else "")
    if not reason:
        try:
            return download(url, path)
        except Exception as e:  # no network, HTTP error, disk full...
            reason = f"the download failed ({type(e).__name__}: {e})"
    raise FileNotFoundError(
        f"{what} '{filename}' not found in {folder} and {reason}. Download it from {url} and put "
        f"it at {path} (or set FEATURE3DGS_WEIGHTS to the folder holding it, or pass the path "
        f"explicitly)."
    )


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: PathLike, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's SHA-256 (memoised per path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 23), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo][:length]
