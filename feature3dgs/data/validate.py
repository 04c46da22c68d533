"""Checks shared by the loaders: numbers read from scene files, image sizes against declared
sizes, sparse points, and loader options. Each raises a :class:`~.errors.SceneFormatError` whose
message names the file and the key."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np

from .errors import PathLike, SceneOptionError, format_error

#: Images may differ from the size declared for them (a downscaled copy) only by a uniform factor:
#: the other side may be off by this fraction, or by one pixel (rounding), whichever is larger.
ASPECT_TOLERANCE = 0.01


def number(
    value: Any,
    path: PathLike,
    key: str,
    expected: str,
    *,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    integer: bool = False,
) -> float:
    """``value`` as a float, or an error naming ``path`` and ``key``.

    Args:
        value: the raw value (from JSON or a parsed file); bools and strings are refused.
        path, key: where it was read, for the message.
        expected: what a good value is, in words, e.g. "a positive focal length in pixels".
        lo, hi: open bounds (``lo < value < hi``) when given.
        integer: require an integral value (800 or 800.0).
    Returns:
        The finite value as a float.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    v = float(value) if ok else math.nan
    ok = ok and math.isfinite(v)
    ok = ok and (lo is None or v > lo) and (hi is None or v < hi)
    ok = ok and (not integer or v == math.floor(v))
    if not ok:
        raise format_error(path, key, f"expected {expected}, got {value!r}")
    return v


def image_scale(
    declared: tuple[float, float],
    actual: tuple[int, int],
    image: PathLike,
    source: str,
) -> tuple[float, float]:
    """Per-axis factors (sx, sy) from a declared camera size to the image file's size.

    A file may be a uniformly downscaled (or upscaled) copy of the declared size; it is refused
    when its aspect ratio differs by more than rounding (one pixel, or ``ASPECT_TOLERANCE``).

    Args:
        declared: (width, height) the camera was calibrated at, in pixels.
        actual: (width, height) of the image file.
        image: the image file, for the message.
        source: where the declared size comes from, e.g. "COLMAP camera 1 in cameras.bin" or
            "w/h of transforms.json".
    """
    (w, h), (wi, hi) = declared, actual
    sx, sy = wi / w, hi / h
    tol_h = max(1.0, ASPECT_TOLERANCE * hi)
    tol_w = max(1.0, ASPECT_TOLERANCE * wi)
    if abs(h * sx - hi) > tol_h and abs(w * sy - wi) > tol_w:
        raise format_error(
            image, "size",
            f"the image is {wi}x{hi} but {source} is {w:g}x{h:g}: the aspect ratios differ, so the "
            "file is not a resized copy of that camera's image (wrong image, or wrong w/h?)",
        )
    return sx, sy


def finite_points(xyz: np.ndarray, rgb: Optional[np.ndarray], path: PathLike) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Drop sparse points whose position (or colour) is not finite; refuse a cloud with none left.

    Args:
        xyz: (N, 3) positions; rgb: optional (N, 3) colours.
        path: the file they were read from, for the messages.
    Returns:
        The finite rows of xyz and rgb (a warning says how many were dropped).
    """
    xyz = np.asarray(xyz)
    ok = np.isfinite(xyz).all(axis=1)
    if rgb is not None:
        ok &= np.isfinite(np.asarray(rgb, dtype=np.float64)).all(axis=1)
    n = len(xyz)
    if n and not ok.any():
        raise format_error(path, "points", f"none of its {n} points has finite coordinates (all NaN or inf)")
    if not ok.all():
        warnings.warn(f"{path}: {n - int(ok.sum())} of {n} points have non-finite values and are dropped",
                      stacklevel=3)
        xyz = xyz[ok]
        rgb = None if rgb is None else np.asarray(rgb)[ok]
    return xyz, rgb


def check_test_every(test_every: Any, source: PathLike) -> Optional[int]:
    """Validate ``test_every``: an integer >= 2 (every k-th view is a test view) or None (no
    test views)."""
    if test_every is None:
        return None
    if isinstance(test_every, bool) or not isinstance(test_every, (int, np.integer)) or test_every < 2:
        raise format_error(
            source, "test_every",
            f"expected an integer >= 2 (views sorted by name with index % test_every == 0 are test "
            f"views) or None for no test views, got {test_every!r}",
            cls=SceneOptionError,
        )
    return int(test_every)


def check_bool(value: Any, source: PathLike, key: str) -> bool:
    """A loader flag must be a real bool (``undistort='never'`` is refused, not read as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise format_error(source, key, f"expected True or False, got {value!r}", cls=SceneOptionError)
    return bool(value)
