"""Finding, downloading, fingerprinting and safely loading teacher weights.

Weights are looked for in one folder: the ``cache_dir`` argument, else ``$FEATURE3DGS_WEIGHTS``,
else ``~/.cache/feature3dgs/weights``. A missing file is downloaded there when a network is
reachable and downloads are allowed (not with ``FEATURE3DGS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``);
otherwise the error names the file, the folder to put it in and where to get it.

Weights files are user input: :func:`load_weights_file` reads them with
``torch.load(weights_only=True)``, which builds tensors and plain containers and nothing else,
so no code from the file runs. Classes a checkpoint holds beside its tensors (Lightning keeps
hyper-parameters and callback states as objects) can be given inert stand-ins by module
(``stand_ins``) through ``torch.serialization.safe_globals``: their modules are never imported.
A full unpickle, which can run code from the file, happens only with ``trust_checkpoint=True``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import types
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from feature3dgs.utils.io import atomic_open

__all__ = ["weights_dir", "offline", "resolve_weights", "file_digest", "download", "load_weights_file",
           "UnsafeCheckpointError", "weights_error"]

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


# ---------------------------------------------------------------------- loading without running code
class UnsafeCheckpointError(ValueError):
    """A weights file needs more than tensors and plain containers to be unpickled; it was not
    loaded (``trust_checkpoint=True`` would unpickle it completely)."""


def weights_error(what: str, path: PathLike, e: BaseException) -> ValueError:
    """A one-line ValueError saying that the weights file ``path`` could not be used, and why."""
    reason = " ".join(str(e).split()) or type(e).__name__
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return ValueError(f"{what} {path} is not usable: {reason}")


def _numpy_safe_globals() -> list[tuple[Any, str]]:
    """numpy scalars and dtypes (hyper-parameters saved as numpy numbers), under the names both
    numpy 1 and numpy 2 pickle them with. Building them runs no code from the file."""
    core = getattr(np, "_core", None) or np.core
    out: list[tuple[Any, str]] = [(np.dtype, "numpy.dtype")]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((core.multiarray.scalar, f"{mod}.scalar"))
    for name in dir(getattr(np, "dtypes", ())):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out.append((cls, f"numpy.dtypes.{name}"))
    return out


def _stand_in(full_name: str) -> type:
    """An inert stand-in for the class or function ``full_name`` of a checkpoint: calling or
    instantiating it with any arguments gives an empty OrderedDict, which then receives the
    pickled dict items and attribute state. Its module is never imported."""
    module, _, name = full_name.rpartition(".")

    def __new__(cls, *args, **kwargs):  # noqa: N807 - the pickle protocol's constructor hook
        return collections.OrderedDict()

    return type(name or full_name, (), {"__new__": __new__, "__module__": f"<stand-in for {module}>"})


class _LenientUnpickler(pickle.Unpickler):
    """The full unpickler of trusted files: classes of packages that are not installed (e.g.
    pytorch_lightning) become dicts instead of failing the load."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stand_in(f"{module}.{name}")


_lenient_pickle = types.SimpleNamespace(Unpickler=_LenientUnpickler, load=pickle.load, __name__="lenient_pickle")


def _full_unpickle(path: Path, what: str, reason: str) -> Any:
    warnings.warn(f"{what} {path}: {reason}; unpickling it completely because trust_checkpoint=True "
                  "(--trust-checkpoint): code in the file can run", stacklevel=3)
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)


def load_weights_file(path: PathLike, what: str, *, trust_checkpoint: bool = False,
                      stand_ins: Sequence[str] = (), trust_hint: str = "") -> Any:
    """``torch.load`` of a user-supplied weights file that runs no code from it.

    Args:
        path: the file (``torch.save`` output: zip or legacy format).
        what: how messages name the file, e.g. "SAM vit_b checkpoint".
        trust_checkpoint: if the file needs objects beyond tensors and plain containers (other
            than the ``stand_ins``), unpickle it completely instead of refusing it. Only for
            files from a trusted source: unpickling can run any code.
        stand_ins: module prefixes (e.g. ``"pytorch_lightning."``) whose classes and functions
            the file may reference; each becomes an inert stand-in (an OrderedDict of what was
            pickled), so the file loads weights-only without those packages.
        trust_hint: how the error tells the user to trust the file (e.g. "pass --trust-checkpoint").

    Returns:
        the unpickled object (on the CPU; memory-mapped when the format allows).

    Raises:
        UnsafeCheckpointError: the file references other classes or functions (they are named).
        ValueError: the file is not a readable PyTorch file (garbage, truncated, TorchScript).
    """
    path = Path(path)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(2)
        if len(head) < 2 or head[0] != pickle.PROTO[0]:
            raise ValueError(f"{what} {path} is not a PyTorch weights file (neither a torch.save zip archive "
                             "nor a legacy torch.save pickle; truncated, or another format?)")
    unsafe: list[str] = []
    if is_zip:
        try:
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception as e:  # a zip that is not a torch.save archive, a TorchScript archive, ...
            raise weights_error(what, path, e) from None
    numpy_ok = _numpy_safe_globals()
    numpy_names = {name for _, name in numpy_ok}
    prefixes = tuple(stand_ins)
    stubbed = [g for g in unsafe if prefixes and g.startswith(prefixes)]
    blocked = [g for g in unsafe if g not in numpy_names and g not in stubbed]
    hint = f" If the file comes from a source you trust, {trust_hint}." if trust_hint else ""
    if blocked:
        listed = ", ".join(blocked[:4]) + (f" and {len(blocked) - 4} more" if len(blocked) > 4 else "")
        if trust_checkpoint:
            return _full_unpickle(path, what, f"it references {listed}")
        raise UnsafeCheckpointError(
            f"{what} {path} was not loaded: it references {listed}, which a weights-only load does not "
            f"construct (unpickling them could run code from the file).{hint}")
    allowed: list[Callable | tuple[Any, str]] = [*numpy_ok, *((_stand_in(g), g) for g in stubbed)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:  # garbage, truncated, legacy files holding objects, unsupported opcodes
        if trust_checkpoint:
            return _full_unpickle(path, what, f"not loadable as weights only ({type(e).__name__})")
        err = weights_error(what, path, e)
        raise (UnsafeCheckpointError(f"{err}.{hint}") if hint else err) from None
