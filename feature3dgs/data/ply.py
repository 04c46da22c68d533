"""Point-cloud PLY io for sparse initialisation points (positions and colours only), via plyfile.

Reads ascii and binary (little/big endian) PLY files with a ``vertex`` element holding
x, y, z and optionally red, green, blue (integers scaled by their type's maximum, e.g. uchar
0..255, or floats 0..1). Writes the layout 3DGS uses for ``points3d.ply``: binary little endian
x, y, z, nx, ny, nz (float32), red, green, blue (uchar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plyfile

from .errors import SceneNotFoundError, format_error
from .validate import finite_points


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the vertices of a PLY file.

    Vertices with a non-finite coordinate or colour are dropped with a warning; a file none of
    whose vertices is finite is refused.

    Returns:
        xyz: (N, 3) float32 positions.
        rgb: (N, 3) float32 colours in [0, 1], or None when the file has no colours.
    Raises:
        SceneNotFoundError: the file does not exist.
        SceneFormatError: it is not a readable PLY point cloud (message names file and key).
    """
    path = Path(path)
    if not path.is_file():
        raise SceneNotFoundError(f"PLY file not found: {path}", path=path)
    try:
        # Memory-mapped (plyfile's default) for binary files: plyfile then checks the declared
        # vertex count against the file size instead of allocating it first.
        ply = plyfile.PlyData.read(str(path))
    except plyfile.PlyParseError as e:
        raise format_error(path, "ply", f"not a valid PLY file ({e})") from None
    except (ValueError, TypeError, EOFError, UnicodeDecodeError, OSError, MemoryError) as e:
        raise format_error(path, "ply", f"not a valid PLY file ({type(e).__name__}: {e})") from None
    if "vertex" not in [el.name for el in ply.elements]:
        raise format_error(path, "vertex", "the PLY file has no 'vertex' element")
    vertex = ply["vertex"]
    data = vertex.data
    names = data.dtype.names or ()
    for c in ("x", "y", "z"):
        if c not in names:
            raise format_error(path, f"vertex.{c}", f"the vertex element lacks property {c!r} (has {', '.join(names)})")
        if data.dtype[c].kind not in "iuf":
            raise format_error(path, f"vertex.{c}", f"expected a numeric property, got {data.dtype[c]}")
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float64)
    rgb = None
    if all(c in names for c in ("red", "green", "blue")):
        kind = data.dtype["red"]
        rgb = np.stack([data["red"], data["green"], data["blue"]], axis=1).astype(np.float64)
        if kind.kind in "iu":
            rgb /= float(np.iinfo(kind).max)
    xyz, rgb = finite_points(xyz, rgb, path)
    return xyz.astype(np.float32), None if rgb is None else np.clip(rgb, 0.0, 1.0).astype(np.float32)


def write_ply_points(path: Path, xyz: np.ndarray, rgb: np.ndarray, normals: np.ndarray | None = None) -> None:
    """Write points as binary little-endian PLY (x y z nx ny nz float32, red green blue uchar).

    Args:
        xyz: (N, 3) positions.
        rgb: (N, 3) colours in [0, 1].
        normals: optional (N, 3) normals (zeros when omitted).
    """
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    nrm = np.zeros_like(xyz) if normals is None else np.asarray(normals, dtype=np.float32).reshape(-1, 3)
    col = np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8).reshape(-1, 3)
    if not (len(xyz) == len(nrm) == len(col)):
        raise ValueError(f"xyz {xyz.shape}, normals {nrm.shape} and rgb {col.shape} must have the same length")
    dtype = [(c, "<f4") for c in ("x", "y", "z", "nx", "ny", "nz")] + [(c, "u1") for c in ("red", "green", "blue")]
    arr = np.empty(len(xyz), dtype=dtype)
    for i, c in enumerate("xyz"):
        arr[c] = xyz[:, i]
        arr["n" + c] = nrm[:, i]
    for i, c in enumerate(("red", "green", "blue")):
        arr[c] = col[:, i]
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=False, byte_order="<").write(str(path))
