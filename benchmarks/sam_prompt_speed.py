"""Time of a SAM prompt on a novel view: render features + decode + SAM's mask decoder,
against running SAM's image encoder on the rendered image instead (what a user without a
feature field would do).

The network sizes are SAM's real ones (the image encoder of --encoder, e.g. vit_b; the prompt
encoder and mask decoder are the same for vit_b/l/h) with random weights: the time does not
depend on the weights. The Gaussians are random, N of them with D_render-dim features, and a
D_render -> 256 decoder, seen by a camera at the image sizes given.

    python benchmarks/sam_prompt_speed.py [--gaussians 50000] [--sizes 256 512] [--encoder vit_b]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from feature3dgs.model.camera import Camera, intrinsics_from_fov, look_at  # noqa: E402
from feature3dgs.model.decoder import FeatureDecoder  # noqa: E402
from feature3dgs.model.gaussians import GaussianModel  # noqa: E402
from feature3dgs.rendering.device import resolve_device  # noqa: E402
from feature3dgs.apps.segment import sam_masks_on_view  # noqa: E402
from bench_utils import git_revision, write_result  # noqa: E402


def build_sam(encoder: str):
    """SamTeacher with SAM's real architecture and random weights."""
    import segment_anything

    from feature3dgs.distill.teachers.sam import SamTeacher

    sam = segment_anything.sam_model_registry[encoder](checkpoint=None)
    return SamTeacher(sam, model_type=encoder, weights_id="random", is_random=True)


def random_model(n: int, dim: int, device: torch.device, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    points = (torch.rand(n, 3, generator=g) * 2 - 1) * 1.0
    model = GaussianModel.from_points(points, torch.rand(n, 3, generator=g), sh_degree=3, feature_dim=dim)
    with torch.no_grad():
        model.params["features"].normal_(generator=g)
    return model.to(device)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussians", type=int, default=50_000)
    parser.add_argument("--render-dim", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image sizes (pixels)")
    parser.add_argument("--encoder", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "none"],
                        help="SAM image encoder timed for comparison ('none' skips it)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default results/sam_prompt_speed-DEVICE.json)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sam = build_sam(args.encoder if args.encoder != "none" else "vit_b").to(device)
    model = random_model(args.gaussians, args.render_dim, device)
    decoder = FeatureDecoder(args.render_dim, sam.dim).to(device).eval()
    rows = []
    for size in args.sizes:
        K = intrinsics_from_fov(0.9, size, size)
        cam = Camera(look_at((0.0, -3.5, 0.5), (0.0, 0.0, 0.0)), K, size, size, f"{size}px").to(device)
        points = torch.tensor([[size * 0.5, size * 0.5], [size * 0.2, size * 0.8]])
        labels = torch.tensor([1, 0])
        timings = []
        for _ in range(args.repeats + 1):  # the first call warms up
            timings.append(dataclasses.asdict(sam_masks_on_view(model, cam, decoder, sam, points, labels).timings))
        timings = timings[1:]
        med = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
        row = dict(size=size, **med, feature_path_ms=sum(med.values()))
        if args.encoder != "none":
            with torch.no_grad():
                rgb = model.render(cam).rgb.clamp(0, 1)

                def encode():
                    sam.image_embedding(rgb)
                    sync()

                encode()
                row["encoder_ms"] = median_ms(encode, max(1, args.repeats // 2))
                row["encoder_path_ms"] = row["encoder_ms"] + med["mask_ms"]
                row["speedup"] = row["encoder_path_ms"] / row["feature_path_ms"]
        rows.append(row)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"SAM prompt on a novel view: {args.gaussians} Gaussians, {args.render_dim}-d features -> 256, "
          f"{dev_name}, torch {torch.__version__}, git {git_revision()}; median of {args.repeats}")
    head = f"{'size':>6} | {'render':>8} {'decode':>8} {'mask':>8} {'total':>8}"
    if args.encoder != "none":
        head += f" | {args.encoder + ' enc':>10} {'enc+mask':>9} {'speed-up':>8}"
    print(head + "   (ms)")
    for r in rows:
        line = (f"{r['size']:>6} | {r['render_ms']:8.1f} {r['decode_ms']:8.1f} {r['mask_ms']:8.1f} "
                f"{r['feature_path_ms']:8.1f}")
        if "encoder_ms" in r:
            line += f" | {r['encoder_ms']:10.1f} {r['encoder_path_ms']:9.1f} {r['speedup']:7.1f}x"
        print(line)
    out = args.out or ROOT / "benchmarks" / "results" / f"sam_prompt_speed-{device.type}.json"
    result = dict(benchmark="sam_prompt_speed", device=dev_name, torch=torch.__version__, git=git_revision(),
                  date=time.strftime("%Y-%m-%d"), gaussians=args.gaussians, render_dim=args.render_dim,
                  encoder=args.encoder, repeats=args.repeats, rows=rows)
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
