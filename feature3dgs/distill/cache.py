"""On-disk cache of teacher features: fp16, one file per image, memory-mapped when read.

Layout::

    <root>/<teacher-slug>-<sha256(key)[:12]>/
        manifest.json            {"format": 1, "key": <teacher.cache_key()>, "meta": {...teacher...}}
        <name-slug>-<hash>.npy   (D, h, w) float16, written atomically
        <name-slug>-<hash>.json  {"name", "shape", "source", "info"}: written after the .npy, it
                                 marks the entry complete

The key (teacher name, weights identity, input resolution, feature version) picks the folder, so
features from other weights or settings are never read back: changing any of them starts a new
folder. Each entry also stores an optional ``source`` fingerprint of the image it came from (file,
size, mtime, load size, background); an entry whose source differs is treated as missing and is
extracted again. Writes go to a temporary file that is renamed into place, so an interrupted
extraction leaves only complete entries, and a rerun extracts only what is missing.

Nothing holds more than one batch of features in memory: :meth:`FeatureCache.memmap` maps a file
read-only and :meth:`FeatureCache.load` reads one image's features.

:func:`extract_features` fills a cache from (name, loader) pairs; :func:`fill_feature_cache` does it
for every view of a scene. The default root is :func:`default_cache_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from feature3dgs.utils.io import atomic_open, check_writable_dir

__all__ = ["FeatureCache", "extract_features", "fill_feature_cache", "ExtractResult", "view_source", "default_cache_dir",
           "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MANIFEST = "manifest.json"

PathLike = Union[str, os.PathLike]


def _slug(text: str, n: int) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    return s[-n:]


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _write_json(path: Path, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


class FeatureCache:
    """Features of one teacher configuration (``key``) under ``root``.

    Args:
        root: the cache root; each key gets its own subfolder.
        key: the teacher's ``cache_key()``.
        meta: JSON-able description stored in the manifest on creation (``teacher.describe()``).
        create: create the folder if missing (else FileNotFoundError); a root that cannot be
            written (a file, under a file, read-only) is a ValueError before anything is created.
    """

    def __init__(self, root: PathLike, key: str, meta: Optional[dict] = None, create: bool = True):
        if not key:
            raise ValueError("a feature cache needs a non-empty key")
        self.root = Path(root)
        self.key = key
        self.path = self.root / f"{_slug(key.split('|')[0], 48)}-{_digest(key, 12)}"
        manifest = self.path / _MANIFEST
        if manifest.is_file():
            m = json.loads(manifest.read_text(encoding="utf-8"))
            if m.get("key") != key:
                raise RuntimeError(f"{manifest} holds key {m.get('key')!r}, not {key!r} (hash collision?)")
            if m.get("format") != FORMAT_VERSION:
                raise RuntimeError(f"{manifest}: cache format {m.get('format')}, this code reads {FORMAT_VERSION}; "
                                   "delete the folder to rebuild it")
            self.meta: dict = m.get("meta") or {}
        elif create:
            check_writable_dir(self.root, "the feature cache folder (--cache-dir)")
            self.path.mkdir(parents=True, exist_ok=True)
            self.meta = dict(meta or {})
            _write_json(manifest, {"format": FORMAT_VERSION, "key": key, "meta": self.meta,
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        else:
            raise FileNotFoundError(f"no feature cache for key {key!r} under {self.root}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_teacher(cls, root: PathLike, teacher: Any, create: bool = True) -> "FeatureCache":
        """The cache of ``teacher`` (keyed by ``teacher.cache_key()``) under ``root``."""
        return cls(root, teacher.cache_key(), meta=teacher.describe(), create=create)

    @classmethod
    def find(cls, root: PathLike, teacher: Optional[str] = None) -> list["FeatureCache"]:
        """The caches under ``root`` (optionally only those of the teacher named ``teacher``, e.g.
        'sam-vit_h'), newest manifest first: lets training open features without building the
        teacher."""
        found = []
        for manifest in Path(root).glob(f"*/{_MANIFEST}"):
            try:
                m = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if m.get("format") != FORMAT_VERSION or "key" not in m:
                continue
            if teacher is not None and (m.get("meta") or {}).get("teacher") != teacher \
                    and m["key"].split("|")[0] != teacher:
                continue
            found.append((manifest.stat().st_mtime, cls(root, m["key"], create=False)))
        return [c for _, c in sorted(found, key=lambda t: -t[0])]

    # ------------------------------------------------------------------ entries
    def _stem(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"entry names must be non-empty strings, got {name!r}")
        return f"{_slug(name, 80)}-{_digest(name, 10)}"

    def file(self, name: str) -> Path:
        """The .npy file of ``name`` (whether or not it exists)."""
        return self.path / f"{self._stem(name)}.npy"

    def _record(self, name: str) -> Path:
        return self.path / f"{self._stem(name)}.json"

    def info(self, name: str) -> Optional[dict]:
        """The entry's record ({'name', 'shape', 'source', 'info'}), or None when not cached."""
        try:
            rec = json.loads(self._record(name).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return rec if rec.get("name") == name else None

    def has(self, name: str, source: Optional[str] = None) -> bool:
        """True when ``name`` is cached completely (and, if ``source`` is given, from that source)."""
        rec = self.info(name)
        if rec is None or not self.file(name).is_file():
            return False
        return source is None or rec.get("source") == source

    __contains__ = has

    def save(self, name: str, features: Union[torch.Tensor, np.ndarray], source: Optional[str] = None,
             info: Optional[dict] = None) -> Path:
        """Store (D, h, w) features as float16 (atomically; replaces an existing entry).

        Raises:
            ValueError: wrong rank, or values that are not finite in float16 (|x| > 65504).
        """
        if isinstance(features, torch.Tensor):
            arr = features.detach().to("cpu", torch.float16).numpy()
        else:
            arr = np.asarray(features).astype(np.float16)
        if arr.ndim != 3:
            raise ValueError(f"features must be (D, h, w), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"features of {name!r} are not finite in float16 (NaN, Inf or |x| > 65504)")
        dim = self.meta.get("dim")
        if dim is not None and arr.shape[0] != dim:
            raise ValueError(f"features of {name!r} have {arr.shape[0]} channels, the cache's teacher has {dim}")
        arr = np.ascontiguousarray(arr)
        record = self._record(name)
        record.unlink(missing_ok=True)  # the entry is incomplete until the new record is written
        npy = self.file(name)
        with atomic_open(npy, "wb") as f:
            np.lib.format.write_array(f, arr, allow_pickle=False)
        _write_json(record, {"name": name, "shape": list(arr.shape), "source": source, "info": info or {}})
        return npy

    def memmap(self, name: str) -> np.memmap:
        """The (D, h, w) float16 features, memory-mapped read-only (no copy is made)."""
        if not self.has(name):
            raise KeyError(f"{name!r} is not in the feature cache {self.path}")
        mm = np.load(self.file(name), mmap_mode="r", allow_pickle=False)
        if mm.dtype != np.float16 or mm.ndim != 3:
            raise RuntimeError(f"{self.file(name)}: expected a (D, h, w) float16 array, got {mm.dtype} {mm.shape}")
        return mm

    def load(self, name: str, device: Optional[Union[str, torch.device]] = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The features of ``name`` as a (D, h, w) tensor (float32 by default), read through the
        memory map: only this image's features are read."""
        mm = self.memmap(name)
        arr = np.array(mm, copy=True) if dtype == torch.float16 else mm.astype(np.float32)
        return torch.from_numpy(arr).to(device=device or "cpu", dtype=dtype)

    def shape(self, name: str) -> tuple[int, int, int]:
        rec = self.info(name)
        if rec is None:
            raise KeyError(f"{name!r} is not in the feature cache {self.path}")
        return tuple(rec["shape"])  # type: ignore[return-value]

    def names(self) -> list[str]:
        """Names of the complete entries, sorted."""
        out = []
        for rec in self.path.glob("*.json"):
            if rec.name == _MANIFEST:
                continue
            try:
                name = json.loads(rec.read_text(encoding="utf-8"))["name"]
            except (OSError, ValueError, KeyError):
                continue
            if self.has(name):
                out.append(name)
        return sorted(out)

    def __len__(self) -> int:
        return len(self.names())

    def missing(self, names: Iterable[str], sources: Optional[Sequence[Optional[str]]] = None) -> list[str]:
        """The names (of ``names``) not cached (or cached from another source)."""
        names = list(names)
        srcs = list(sources) if sources is not None else [None] * len(names)
        return [n for n, s in zip(names, srcs) if not self.has(n, s)]

    def remove(self, name: str) -> None:
        self._record(name).unlink(missing_ok=True)
        self.file(name).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"FeatureCache(path={str(self.path)!r}, key={self.key!r})"


# ---------------------------------------------------------------------- extraction
@dataclass
class ExtractResult:
    """What :func:`extract_features` did."""

    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cache_dir: Optional[Path] = None
    seconds: float = 0.0


Item = Union[tuple[str, Any], tuple[str, Any, Optional[str]]]


def extract_features(
    teacher: Any,
    images: Iterable[Item],
    cache: FeatureCache,
    batch_size: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    total: Optional[int] = None,
) -> ExtractResult:
    """Extract and cache the features of every image not cached yet (resumable).

    Args:
        teacher: a :class:`~feature3dgs.distill.teachers.base.Teacher` whose ``cache_key()`` is ``cache.key``.
        images: (name, loader) or (name, loader, source) items; ``loader()`` returns the (3, H, W)
            float image in [0, 1] (a tensor is accepted instead of a loader). Loaders run only for
            names that need extracting, and images are dropped as soon as their batch is done.
        cache: the :class:`FeatureCache` to fill.
        batch_size: images per teacher call (images of equal size run as one batch).
        progress: show a tqdm progress bar.
        overwrite: extract even the names already cached.
        total: number of items, for the progress bar when ``images`` has no len().

    Returns:
        An :class:`ExtractResult` with the names extracted and skipped.
    """
    if cache.key != teacher.cache_key():
        raise ValueError(f"the cache key {cache.key!r} is not the teacher's {teacher.cache_key()!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(teacher, "is_random", False):
        warnings.warn(f"teacher {teacher.name} has RANDOM weights: its features are meaningless "
                      "(tests and smoke runs only)", stacklevel=2)
    if total is None and hasattr(images, "__len__"):
        total = len(images)  # type: ignore[arg-type]
    result = ExtractResult(cache_dir=cache.path)
    t0 = time.perf_counter()
    seen: set[str] = set()
    batch: list[tuple[str, Optional[str], torch.Tensor]] = []

    bar = tqdm(total=total, desc=f"{teacher.name} features", unit="img", disable=not progress, dynamic_ncols=True)

    def flush() -> None:
        feats = teacher.extract_batch([im for _, _, im in batch])
        for (name, source, im), f in zip(batch, feats):
            cache.save(name, f, source=source, info={"image_size": [int(im.shape[-2]), int(im.shape[-1])]})
            result.extracted.append(name)
        bar.update(len(batch))
        bar.set_postfix(extracted=len(result.extracted), skipped=len(result.skipped))
        batch.clear()

    try:
        for item in images:
            if len(item) == 2:
                (name, loader), source = item, None
            elif len(item) == 3:
                name, loader, source = item
            else:
                raise ValueError(f"items must be (name, loader) or (name, loader, source), got {len(item)} fields")
            if name in seen:
                raise ValueError(f"duplicate image name {name!r}")
            seen.add(name)
            if not overwrite and cache.has(name, source):
                result.skipped.append(name)
                bar.update(1)
                continue
            image = loader() if callable(loader) else loader
            batch.append((name, source, image))
            del image
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    finally:
        batch.clear()
        bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def view_source(scene: Any, view: Any) -> Optional[str]:
    """A fingerprint of the image a scene view loads: file path, size and mtime, the size it is
    loaded at, the compositing background and the distortion (None when there is no file)."""
    try:
        path = Path(view.image_path).resolve()
        st = path.stat()
    except (OSError, TypeError, AttributeError):
        return None
    cam = view.camera
    bg = [round(float(x), 6) for x in torch.as_tensor(scene.background).reshape(-1).tolist()]
    dist = getattr(view, "distortion", None)
    return json.dumps({"file": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                       "size": [int(cam.width), int(cam.height)], "background": bg,
                       "distortion": repr(dist) if dist is not None else None}, sort_keys=True)


def default_cache_dir() -> Path:
    """The feature-cache root when none is given: ``$FEATURE3DGS_CACHE/features``, else
    ``~/.cache/feature3dgs/features``."""
    root = os.environ.get("FEATURE3DGS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "feature3dgs") / "features"


def fill_feature_cache(scene: Any, teacher: Any, cache_dir: Optional[PathLike] = None, batch_size: int = 1,
                       progress: bool = True, views: Optional[Sequence[Any]] = None,
                       overwrite: bool = False) -> tuple[FeatureCache, ExtractResult]:
    """Extract (resumably) the teacher's features of ``views`` (default: every train and test view)
    into the cache of ``teacher`` under ``cache_dir`` (default :func:`default_cache_dir`)."""
    cache = FeatureCache.for_teacher(Path(cache_dir) if cache_dir else default_cache_dir(), teacher)
    chosen = list(views) if views is not None else list(scene.train_views) + list(scene.test_views)
    items = [(v.name, (lambda v=v: scene.load_image(v)), view_source(scene, v)) for v in chosen]
    result = extract_features(teacher, items, cache, batch_size=batch_size, progress=progress,
                              overwrite=overwrite, total=len(items))
    return cache, result
