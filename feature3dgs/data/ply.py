"""Point-cloud PLY io for sparse initialisation points (positions and colours only).

Reads ascii and binary (little/big endian) PLY files with a ``vertex`` element holding
x, y, z and optionally red, green, blue (uchar 0..255 or float 0..1). Writes the layout 3DGS
uses for ``points3d.ply``: binary little endian x, y, z, nx, ny, nz (float32), red, green,
blue (uchar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _parse_header(f, path: Path) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path} is not a PLY file (missing 'ply' magic line)")
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no 'end_header'")
        tok = line.decode("ascii", "replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            if tok[1] == "list":
                elements[-1][2].append((tok[4], "list"))
            else:
                if tok[1] not in _PLY_TYPES:
                    raise ValueError(f"{path}: unknown PLY property type {tok[1]!r}")
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the vertices of a PLY file.

    Returns:
        xyz: (N, 3) float32 positions.
        rgb: (N, 3) float32 colours in [0, 1], or None when the file has no colours.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f, path)
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: expected 'vertex' as the first PLY element")
        _, n, props = elements[0]
        if any(t == "list" for _, t in props):
            raise ValueError(f"{path}: list properties in the vertex element are not supported")
        names = [p for p, _ in props]
        if fmt == "ascii":
            rows = [f.readline().split() for _ in range(n)]
            data = {p: np.array([float(r[i]) for r in rows]) for i, p in enumerate(names)}
            types = dict(props)
        else:
            end = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(p, end + t) for p, t in props])
            raw = f.read(dtype.itemsize * n)
            if len(raw) < dtype.itemsize * n:
                raise ValueError(f"{path}: PLY file truncated ({n} vertices declared)")
            arr = np.frombuffer(raw, dtype=dtype, count=n)
            data = {p: arr[p] for p in names}
            types = dict(props)
    for c in ("x", "y", "z"):
        if c not in data:
            raise ValueError(f"{path}: PLY vertex element lacks property {c!r}")
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
    if all(c in data for c in ("red", "green", "blue")):
        rgb = np.stack([data["red"], data["green"], data["blue"]], axis=1).astype(np.float32)
        if types["red"] in ("u1", "i1"):
            rgb /= 255.0
        elif types["red"] in ("u2", "i2"):
            rgb /= 65535.0
        return xyz, np.clip(rgb, 0.0, 1.0)
    return xyz, None


def write_ply_points(path: Path, xyz: np.ndarray, rgb: np.ndarray, normals: np.ndarray | None = None) -> None:
    """Write points as binary little-endian PLY (x y z nx ny nz float32, red green blue uchar).

    Args:
        xyz: (N, 3) positions.
        rgb: (N, 3) colours in [0, 1].
        normals: optional (N, 3) normals (zeros when omitted).
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    n = xyz.shape[0]
    nrm = np.zeros_like(xyz) if normals is None else np.asarray(normals, dtype=np.float32)
    col = np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    dtype = np.dtype([(c, "<f4") for c in ("x", "y", "z", "nx", "ny", "nz")] + [(c, "u1") for c in ("red", "green", "blue")])
    arr = np.empty(n, dtype=dtype)
    for i, c in enumerate("xyz"):
        arr[c] = xyz[:, i]
        arr["n" + c] = nrm[:, i]
    for i, c in enumerate(("red", "green", "blue")):
        arr[c] = col[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(arr.tobytes())
