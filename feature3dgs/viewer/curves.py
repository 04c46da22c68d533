"""Training curves of a run (loss, PSNR, number of Gaussians) from its log.csv.

The trainer (feature3dgs.training.trainer ``_Logger``) writes ``log.csv`` in long format, one row per value::

    step,elapsed_s,tag,value
    10,0.833,train/loss,1.0985612
    10,0.833,train/loss/feature,0.78949946     (one train/loss/<term> per loss term)
    10,0.833,train/psnr,11.265105
    10,0.833,train/n_gaussians,3889
    14,1.152,test/psnr,14.241166

A resumed run appends to the file, so a step may appear twice: the later row wins.

:func:`plot_curves` draws three panels (loss and its terms, train/test PSNR, Gaussians) with
matplotlib when it is installed and with a small PIL plotter otherwise, and can write the PNG
atomically. Command line::

    python -m feature3dgs.viewer.curves RUN_DIR [-o curves.png]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import math
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from feature3dgs.utils.io import atomic_open
from feature3dgs.utils.optional import MissingDependencyError, require

__all__ = ["read_log", "curve_panels", "plot_curves", "save_curves", "main"]

PathLike = Union[str, Path]
Series = dict[str, tuple[np.ndarray, np.ndarray]]

#: (panel title, tags or tag prefixes ending in '/*') in drawing order
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("train/loss", "train/loss/*")),
    ("PSNR (dB)", ("train/psnr", "test/psnr")),
    ("number of Gaussians", ("train/n_gaussians",)),
)
_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def read_log(path: PathLike) -> Series:
    """Read a log.csv (or the log.csv of a run folder).

    Returns:
        {tag: (steps (n,) int64 ascending, values (n,) float64)}, the last row winning per step.
    Raises:
        FileNotFoundError: no such file.
        ValueError: the header is not ``step,elapsed_s,tag,value`` or a row is malformed.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "log.csv"
    if not p.is_file():
        raise FileNotFoundError(f"no training log at {p} (the trainer writes log.csv in its output folder)")
    rows: dict[str, dict[int, float]] = {}
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["step", "elapsed_s", "tag", "value"]:
            raise ValueError(f"{p} is not a training log: expected the header step,elapsed_s,tag,value, got {header}")
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 4:
                raise ValueError(f"{p} line {i}: expected 4 columns, got {len(row)}")
            try:
                step, value = int(row[0]), float(row[3])
            except ValueError:
                raise ValueError(f"{p} line {i}: step and value must be numbers, got {row}") from None
            rows.setdefault(row[2], {})[step] = value
    out: Series = {}
    for tag, by_step in rows.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        out[tag] = (steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return out


def curve_panels(series: Series) -> list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]]:
    """The panels to draw: [(title, [(tag, steps, values), ...]), ...], empty panels left out."""
    panels = []
    for title, patterns in PANELS:
        lines = []
        for pat in patterns:
            if pat.endswith("/*"):
                tags = sorted(t for t in series if t.startswith(pat[:-1]))
            else:
                tags = [pat] if pat in series else []
            for t in tags:
                steps, vals = series[t]
                keep = np.isfinite(vals)
                if keep.any():
                    lines.append((t, steps[keep], vals[keep]))
        if lines:
            panels.append((title, lines))
    return panels


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.1e}"
    return f"{v:.4g}"


def _plot_pil(panels, width: int, panel_height: int) -> np.ndarray:
    font = ImageFont.load_default()
    img = Image.new("RGB", (width, panel_height * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 64, 12, 22, 26
    for k, (title, lines) in enumerate(panels):
        y0 = k * panel_height
        x_lo = min(float(s.min()) for _, s, _ in lines)
        x_hi = max(float(s.max()) for _, s, _ in lines)
        v_lo = min(float(v.min()) for _, _, v in lines)
        v_hi = max(float(v.max()) for _, _, v in lines)
        if v_hi - v_lo < 1e-12:
            v_lo, v_hi = v_lo - 0.5 * max(abs(v_lo), 1.0), v_hi + 0.5 * max(abs(v_hi), 1.0)
        if x_hi <= x_lo:
            x_lo, x_hi = x_lo - 1, x_hi + 1
        pad = 0.05 * (v_hi - v_lo)
        v_lo, v_hi = v_lo - pad, v_hi + pad
        px0, px1 = left, width - right
        py0, py1 = y0 + top, y0 + panel_height - bottom

        def to_px(x, v):
            return (px0 + (x - x_lo) / (x_hi - x_lo) * (px1 - px0), py1 - (v - v_lo) / (v_hi - v_lo) * (py1 - py0))

        for t in _nice_ticks(v_lo, v_hi):
            _, y = to_px(x_lo, t)
            draw.line([(px0, y), (px1, y)], fill=(230, 230, 230))
            draw.text((4, y - 6), _fmt(t), fill=(60, 60, 60), font=font)
        for t in _nice_ticks(x_lo, x_hi, 6):
            x, _ = to_px(t, v_lo)
            draw.line([(x, py0), (x, py1)], fill=(230, 230, 230))
            draw.text((x - 8, py1 + 4), _fmt(t), fill=(60, 60, 60), font=font)
        draw.rectangle([px0, py0, px1, py1], outline=(80, 80, 80))
        draw.text((px0, y0 + 5), title, fill=(0, 0, 0), font=font)
        draw.text((px1 - 24, py1 + 14), "step", fill=(60, 60, 60), font=font)
        lx = px0 + 8 + 8 * len(title)
        for i, (tag, steps, vals) in enumerate(lines):
            color = _COLORS[i % len(_COLORS)]
            pts = [to_px(float(s), float(v)) for s, v in zip(steps, vals)]
            if len(pts) == 1:
                x, y = pts[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
            else:
                draw.line(pts, fill=color, width=2)
            draw.line([(lx, y0 + 11), (lx + 14, y0 + 11)], fill=color, width=2)
            draw.text((lx + 17, y0 + 5), tag, fill=(0, 0, 0), font=font)
            lx += 17 + 6 * len(tag) + 14
    return np.asarray(img)


def _plot_matplotlib(panels, width: int, panel_height: int) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dpi = 100
    fig, axes = plt.subplots(len(panels), 1, figsize=(width / dpi, panel_height * len(panels) / dpi), dpi=dpi,
                             squeeze=False)
    for ax, (title, lines) in zip(axes[:, 0], panels):
        for tag, steps, vals in lines:
            ax.plot(steps, vals, label=tag, marker="." if len(steps) == 1 else None)
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("step", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def plot_curves(log: Union[PathLike, Series], out_png: Optional[PathLike] = None, *, backend: str = "auto",
                width: int = 720, panel_height: int = 200) -> np.ndarray:
    """Draw the training curves.

    Args:
        log: a log.csv path, a run folder, or the output of :func:`read_log`.
        out_png: also write the picture there as a PNG (atomically).
        backend: 'matplotlib', 'pil', or 'auto' (matplotlib when importable).
        width, panel_height: picture size in pixels (one panel per quantity).
    Returns:
        (H, W, 3) uint8 picture.
    Raises:
        ValueError: the log holds none of the plotted tags, or an unknown backend.
    """
    series = read_log(log) if not isinstance(log, dict) else log
    panels = curve_panels(series)
    if not panels:
        raise ValueError(f"the log holds no loss, PSNR or Gaussian-count values (tags: {sorted(series)})")
    if backend not in ("auto", "matplotlib", "pil"):
        raise ValueError(f"backend must be 'auto', 'matplotlib' or 'pil', got {backend!r}")
    if backend == "auto":
        backend = "matplotlib" if importlib.util.find_spec("matplotlib") is not None else "pil"
    elif backend == "matplotlib":
        require("matplotlib", "matplotlib", "plotting the training curves with --backend matplotlib")
    image = (_plot_matplotlib if backend == "matplotlib" else _plot_pil)(panels, width, panel_height)
    if out_png is not None:
        save_curves(image, out_png)
    return image


def save_curves(image: np.ndarray, path: PathLike) -> Path:
    """Write an (H, W, 3) uint8 picture as PNG, atomically."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(image)).save(f, format="PNG")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feature3dgs.viewer.curves", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder (or its log.csv)")
    parser.add_argument("-o", "--out", default=None, help="PNG to write (default: RUN/curves.png)")
    parser.add_argument("--backend", default="auto", choices=["auto", "matplotlib", "pil"])
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "curves.png"
    try:
        plot_curves(run, out, backend=args.backend)
    except (OSError, ValueError, MissingDependencyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
