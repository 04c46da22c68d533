"""Training checkpoints: one torch file per save, written atomically, read with
``torch.load(weights_only=True)`` (no arbitrary code runs when loading an untrusted file).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts::

    {'format': 'feature3dgs-checkpoint', 'version': 1, 'step': int,
     'config': {...TrainConfig fields...},
     'model': {'params': {name: tensor}, 'active_sh_degree': int},
     'optimizer': Adam state_dict, 'aux': {...}, 'densify': {...}, 'rng': {...}, ...}

The trainer decides the contents (:meth:`feature3dgs.training.trainer.Trainer.state_dict`); this module
only writes, finds and validates the files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from feature3dgs.utils.io import atomic_open

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "checkpoint_path",
           "checkpoint_step", "FORMAT", "VERSION"]

FORMAT = "feature3dgs-checkpoint"
VERSION = 1
_NAME = re.compile(r"ckpt_(\d+)\.pt$")


def checkpoint_path(folder: Union[str, Path], step: int) -> Path:
    """The file of the checkpoint of ``step`` in ``folder``: ``ckpt_<step, 7 digits>.pt``."""
    return Path(folder) / f"ckpt_{step:07d}.pt"


def checkpoint_step(path: Union[str, Path]) -> Optional[int]:
    """The step of a checkpoint file name, or None when the name is not ``ckpt_<step>.pt``."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(folder: Union[str, Path]) -> list[Path]:
    """The checkpoint files in ``folder``, by step (oldest first); [] when there is no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in folder.iterdir() if checkpoint_step(p) is not None]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``state`` (tagged with format and version) to ``path`` atomically."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors say what is wrong with the file."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint (ckpt_*.pt) in {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a feature3dgs checkpoint")
    if int(state.get("version", -1)) > VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')} is newer than this "
                         f"feature3dgs understands ({VERSION})")
    state["path"] = str(path)
    return state


def latest_checkpoint(folder: Union[str, Path]) -> Optional[Path]:
    """The checkpoint with the highest step in ``folder`` (or its ``checkpoints/``), or None."""
    folder = Path(folder)
    if (folder / "checkpoints").is_dir():
        folder = folder / "checkpoints"
    found = list_checkpoints(folder)
    return found[-1] if found else None
