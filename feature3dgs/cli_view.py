"""The `feature3dgs view` sub-command (the web viewer, feature3dgs.viewer)."""

from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    v = sub.add_parser("view", help="explore a trained scene in the browser (viser)")
    v.add_argument("scene", help="a training or distillation output folder, or a .ply")


def cmd_view(args: argparse.Namespace) -> int:
    raise NotImplementedError("the viewer is not written yet")
