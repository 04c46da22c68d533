"""The `feature3dgs view` sub-command (the web viewer, feature3dgs.viewer)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from feature3dgs.cli.errors import CLIError
from feature3dgs.run import RunDir
from feature3dgs.viewer.address import check_listen_address
from feature3dgs.viewer.server import require_viser, serve

__all__ = ["register"]


def register(sub) -> dict:
    v = sub.add_parser("view", help="explore a trained scene in the browser (viser)",
                       description="Serve an interactive viewer of a trained scene: free camera, render modes "
                                   "(RGB, depth, alpha, feature PCA, text relevancy, semantic classes), "
                                   "click-to-segment with SAM, delete/extract/recolour, training curves. "
                                   "Open the printed address in a browser; Ctrl-C stops it.")
    v.add_argument("run", metavar="RUN", help="a training or distillation output folder, or a .ply")
    v.add_argument("--port", type=int, default=8080,
                   help="TCP port (default 8080; 0: any free port); a port in use is an error")
    v.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    v.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    v.add_argument("--max-resolution", type=int, default=None,
                   help="longer side of a still frame in pixels (default 1920 on a GPU, 640 on a CPU)")
    v.add_argument("--weights-dir", default=None, help="folder holding the teacher's weights (SAM / CLIP)")
    return {"view": cmd_view}


def cmd_view(args: argparse.Namespace) -> int:
    scene = Path(args.run)
    if not scene.exists():
        raise CLIError(f"scene not found: {scene}")
    if scene.is_dir() and not RunDir(scene).is_run():
        raise CLIError(f"{scene} holds no {RunDir.PLY} (is it a training or distillation output folder?)")
    if not (0 <= args.port <= 65535):
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    if args.max_resolution is not None and args.max_resolution < 16:
        raise CLIError(f"--max-resolution must be >= 16 pixels, got {args.max_resolution}")
    check_listen_address(args.host, args.port)  # a malformed or busy address fails at once, never hangs
    require_viser()

    # Ctrl-C only sets an event, from before the server starts: a SIGINT that lands while it is
    # starting (or between two statements) still stops it cleanly instead of leaving its threads.
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    srv = None
    try:
        srv = serve(scene, host=args.host, port=args.port, device=args.device,
                    max_resolution=args.max_resolution, weights_dir=args.weights_dir)
        while not interrupted.wait(0.2) and not srv.stopped:
            pass
        if interrupted.is_set():
            print("\nstopping the viewer", flush=True)
    finally:
        if srv is not None:
            srv.stop()
        signal.signal(signal.SIGINT, previous)
    return 0
