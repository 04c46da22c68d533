"""Training checkpoints: the file format, its checksum, and finding the files.

A checkpoint file is::

    b"F3DGSCKPT2\\n"  (11 bytes)  sha256 of the rest (32 bytes)  torch.save bytes of the state

The state is a plain dict of tensors, numbers, strings, lists and dicts::

    {'format': 'feature3dgs-checkpoint', 'version': 2, 'step': int,
     'config': {...TrainConfig fields...},
     'model': {'params': {name: tensor}, 'active_sh_degree': int},
     'optimizer': Adam state_dict, 'strategy': {...}, 'rng': {...}, ...}

It is read with ``torch.load(weights_only=True)`` (no code runs when loading an untrusted file),
after the checksum is verified, so one flipped byte anywhere is refused instead of resuming from
a silently wrong optimizer state. Files are written atomically (a temporary file, fsync,
rename). The trainer decides the contents (:meth:`feature3dgs.training.trainer.Trainer.state_dict`).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from feature3dgs.utils.io import atomic_open

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "checkpoint_path",
           "checkpoint_step", "check_resumable", "CheckpointError", "RESUME_KEYS", "FORMAT", "VERSION", "MAGIC"]

FORMAT = "feature3dgs-checkpoint"
VERSION = 2
MAGIC = b"F3DGSCKPT2\n"
_DIGEST = 32
_NAME = re.compile(r"ckpt_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: not a checkpoint, corrupt, or from a newer version."""


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
    """Write ``state`` (tagged with format and version) to ``path`` atomically, with its checksum.

    Raises:
        OSError: the file could not be written (e.g. the disk is full); ``path`` is untouched.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    body = buffer.getbuffer()
    with atomic_open(path, "wb") as f:
        f.write(MAGIC)
        f.write(hashlib.sha256(body).digest())
        f.write(body)
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or the latest one in a folder), verify its checksum and load it
    weights-only.

    Raises:
        FileNotFoundError: no such file (or no checkpoint in the folder).
        CheckpointError: not a feature3dgs checkpoint, a checksum mismatch (corruption), or a
            newer version than this code reads; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint (ckpt_*.pt) in {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a feature3dgs checkpoint (version {VERSION} files start with "
                              f"{MAGIC!r})")
    digest, body = data[len(MAGIC):len(MAGIC) + _DIGEST], memoryview(data)[len(MAGIC) + _DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt (truncated or altered); "
                              "resume from another checkpoint or start afresh")
    try:
        state = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as e:  # a valid checksum over bytes torch cannot read: written by something else
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a feature3dgs checkpoint")
    if int(state.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is newer than this feature3dgs "
                              f"understands ({VERSION})")
    if "model" not in state:
        raise CheckpointError(f"{path}: the checkpoint has no 'model' entry")
    state["path"] = str(path)
    return state


#: what a checkpoint needs to resume training (Trainer.state_dict writes all of them)
RESUME_KEYS = ("step", "config", "model", "optimizer", "strategy", "rng")


def check_resumable(state: dict[str, Any]) -> None:
    """CheckpointError naming the file and the missing entries when ``state`` cannot resume a run."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{state.get('path', 'the checkpoint')}: cannot resume from it, it has no "
                              f"{', '.join(repr(k) for k in missing)} (a model export, or from an older version)")


def latest_checkpoint(folder: Union[str, Path]) -> Optional[Path]:
    """The checkpoint with the highest step in ``folder`` (or its ``checkpoints/``), or None."""
    folder = Path(folder)
    if (folder / "checkpoints").is_dir():
        folder = folder / "checkpoints"
    found = list_checkpoints(folder)
    return found[-1] if found else None
