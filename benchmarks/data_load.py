"""Cost of what the scene loaders add per image: the load-time integrity check and undistortion.

Compared within one run, as ratios against a full decode of the same file:

* ``check_image`` (run at load for every image): PNG chunk CRCs (no decompression), JPEG decoded
  at 1/8 scale (PIL draft mode);
* undistortion of a decoded image (OpenCV remap with cached tables), and the one-off new-K
  policy plus table build per camera;
* ``load_scene`` of the shared real scenes (when ../shared/data is present), which checks every
  image.

Images are generated here (smooth gradients plus noise, so they compress like photos).

    python benchmarks/data_load.py [--sizes 504x378 1600x1200] [--images 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_utils import git_revision, write_result  # noqa: E402


def photo_like(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(4 * (x + y))], -1) * 0.35 + 0.5
    return np.clip((base + rng.normal(0, 0.04, base.shape)) * 255, 0, 255).astype(np.uint8)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["504x378", "1600x1200"])
    ap.add_argument("--images", type=int, default=8, help="files per format and size (median over them)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    import cv2
    import PIL
    import torch
    from PIL import Image

    from feature3dgs.model.camera import Camera
    from feature3dgs.data import load_scene
    from feature3dgs.data import undistort as U
    from feature3dgs.data.images import check_image, read_image_u8

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            for fmt in ("png", "jpg"):
                files = []
                for k in range(args.images):
                    p = Path(tmp) / f"{size}_{k}.{fmt}"
                    Image.fromarray(photo_like(w, h, k)).save(p, **({"quality": 92} if fmt == "jpg" else {}))
                    files.append(p)
                check = statistics.median(median_ms(lambda p=p: check_image(p), args.repeats) for p in files)
                decode = statistics.median(median_ms(lambda p=p: read_image_u8(p), args.repeats) for p in files)
                rows.append(dict(what=f"check_image {fmt}", size=size, ms=check, full_decode_ms=decode,
                                 ratio=check / decode))
            # Undistortion: fern-like pincushion (zoom > 1) and a fisheye, per image and per camera.
            img = photo_like(w, h, 0)
            f = 0.81 * w
            K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
            cam = Camera(torch.eye(4), K, w, h)
            decode = statistics.median(median_ms(lambda p=p: read_image_u8(p), args.repeats)
                                       for p in sorted(Path(tmp).glob(f"{size}_*.jpg")))
            for name, dist in (("radtan k1=0.02", U.Distortion(k1=0.0197505)),
                               ("fisheye", U.Distortion(k1=0.05, k2=-0.02, k3=0.005, fisheye=True))):
                def setup(dist=dist):
                    U._zoom.cache_clear()
                    U._maps.cache_clear()
                    _, und = U.undistort_camera(cam, dist)
                    und.maps()
                    return und
                per_camera = median_ms(setup, args.repeats)
                und = setup()
                per_image = median_ms(lambda: und.apply(img), args.repeats)
                rows.append(dict(what=f"undistort {name}", size=size, ms=per_image, full_decode_ms=decode,
                                 ratio=per_image / decode, per_camera_ms=per_camera,
                                 zoom=und.K_undistorted[0] / und.K_distorted[0]))

    scenes = []
    shared = ROOT.parent / "shared" / "data"
    for name, kw in (("fern_llff", dict(images="images_8")), ("lego_200", {})):
        if (shared / name).is_dir():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ms = median_ms(lambda: load_scene(shared / name, **kw), args.repeats)
                scene = load_scene(shared / name, **kw)
            scenes.append(dict(scene=name, views=len(scene.views), load_ms=ms, per_view_ms=ms / len(scene.views)))

    print(f"{'what':<26} {'size':>10} {'ms':>8} {'decode ms':>10} {'ratio':>7} {'per camera ms':>14}")
    for r in rows:
        print(f"{r['what']:<26} {r['size']:>10} {r['ms']:8.2f} {r['full_decode_ms']:10.2f} {r['ratio']:7.3f} "
              f"{r.get('per_camera_ms', float('nan')):14.2f}")
    for s in scenes:
        print(f"load_scene {s['scene']}: {s['views']} views, {s['load_ms']:.0f} ms ({s['per_view_ms']:.1f} ms/view)")
    result = dict(
        benchmark="data_load",
        device=platform.processor() or platform.machine(),
        cpu_count=__import__("os").cpu_count(),
        torch=torch.__version__, opencv=cv2.__version__, pillow=PIL.__version__,
        git_revision=git_revision(), repeats=args.repeats, images=args.images,
        note="CPU timings, medians; the machine may be shared (see the report)",
        rows=rows, scenes=scenes,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_result(args.out / f"{time.strftime('%Y-%m-%d')}-cpu-data_load.json", result)
    return result


if __name__ == "__main__":
    main()
