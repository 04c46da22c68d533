"""Does a scene hold the cameras a run was fitted to?

A run folder records, in config.json, the scene it was trained on: its source path, format,
the number of train and test views and the extent (1.1 x the spread of the training camera
centres, which changes with any camera pose). The applications render the run at a scene's
cameras; given another scene (``--data OTHER``) they would render views the Gaussians were never
fitted to, silently. :func:`check_scene_matches` compares the two before any work.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ["scene_differences", "check_scene_matches", "EXTENT_RTOL"]

#: relative tolerance on the extent (the same cameras give the same float32 value)
EXTENT_RTOL = 1e-4


def _image_size(scene) -> Optional[list[int]]:
    views = scene.train_views or scene.test_views
    return [int(views[0].camera.width), int(views[0].camera.height)] if views else None


def scene_differences(recorded: Mapping[str, Any], scene) -> list[str]:
    """How ``scene`` (a :class:`feature3dgs.data.Scene`) differs from the recorded scene info
    (config.json's ``"scene"``): the format, the number of train / test views, the extent, and the
    image size when the run recorded one (``"image_size": [W, H]``). Keys the run did not record
    are not compared; [] means the cameras match as far as the record tells."""
    out = []
    if recorded.get("format") and scene.format and recorded["format"] != scene.format:
        out.append(f"format {scene.format} (the run's: {recorded['format']})")
    for key, views in (("n_train", scene.train_views), ("n_test", scene.test_views)):
        if isinstance(recorded.get(key), int) and recorded[key] != len(views):
            out.append(f"{len(views)} {key[2:]} views (the run's: {recorded[key]})")
    ext = recorded.get("extent")
    if isinstance(ext, (int, float)) and scene.views:
        now = float(scene.extent)
        if not math.isclose(now, float(ext), rel_tol=EXTENT_RTOL):
            out.append(f"camera extent {now:.6g} (the run's: {float(ext):.6g}: the cameras are elsewhere)")
    size = recorded.get("image_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and _image_size(scene) not in (None, list(size)):
        w, h = _image_size(scene)
        out.append(f"images of {w}x{h} px (the run's: {size[0]}x{size[1]})")
    return out


def check_scene_matches(recorded: Mapping[str, Any], scene, option: str = "--data") -> Optional[str]:
    """Refuse a scene whose cameras differ from the run's (ValueError listing the differences);
    return a one-line note when they match but the scene was loaded from another path (a moved
    data set), else None."""
    diffs = scene_differences(recorded or {}, scene)
    src = str(scene.source_path) if scene.source_path is not None else "?"
    if diffs:
        was = recorded.get("source_path") or "an unrecorded path"
        raise ValueError(f"{option} {src}: not the scene the run was fitted to ({was}): it has "
                         + "; ".join(diffs))
    was = recorded.get("source_path") if recorded else None
    if was and scene.source_path is not None and Path(was).resolve() != Path(src).resolve():
        return f"note: using the scene at {src}; the run was fitted to {was} (its cameras match)"
    return None
