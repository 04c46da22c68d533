"""The ``feature3dgs`` command: one parser, one error policy (:mod:`feature3dgs.cli.errors`).

    feature3dgs train    --data SCENE --out RUN [...]        fit Gaussians (every TrainConfig field)
    feature3dgs distill  --data SCENE --out RUN [...]        + features from a 2D teacher
    feature3dgs extract  --data SCENE --teacher sam [...]    fill the teacher feature cache
    feature3dgs render | eval RUN [...]                      views / metrics of a trained scene
    feature3dgs segment | query | edit | select | mask | semantic RUN [...]   the applications
    feature3dgs view RUN                                     the web viewer
    feature3dgs info                                         the compiled kernels

Exit status: 0 success, 1 training failed (e.g. a NaN loss), 2 bad arguments or inputs,
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from feature3dgs.cli import apps, distill, train, view
from feature3dgs.cli.errors import EXIT_USAGE, run_command

__all__ = ["main", "build_parser"]


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser of every sub-command, and the handler of each."""
    parser = argparse.ArgumentParser(prog="feature3dgs", description="3D Gaussian Splatting with distilled features")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict = {}
    for module in (train, distill, apps, view):
        handlers.update(module.register(sub))
    return parser, handlers


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``feature3dgs`` console script; returns the exit status."""
    parser, handlers = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return run_command(args.command, lambda: handlers[args.command](args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
