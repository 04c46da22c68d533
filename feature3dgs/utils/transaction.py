"""Replacing several files of a folder together, so that a crash leaves the old set or the new one.

A :class:`FolderTransaction` writes the new files under ``FOLDER/.pending/`` (each complete and
fsynced), then a journal ``.pending/COMMIT.json`` listing them (the commit point), then renames
each into place and removes what the journal says to remove. :func:`recover` finishes a
transaction whose journal exists (every step is idempotent) and discards one without a journal,
so after a crash at any point the folder holds either every old file or every new one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal, Union

from feature3dgs.utils.io import atomic_write_text

__all__ = ["FolderTransaction", "recover", "PENDING", "JOURNAL", "Recovery"]

PENDING = ".pending"
JOURNAL = "COMMIT.json"
Recovery = Literal["none", "rolled back", "completed"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderTransaction:
    """New contents for files of ``folder`` (see the module docstring).

    Write each new file to :meth:`path` (its staging location), mark files to remove with
    :meth:`remove`, then :meth:`commit`; :meth:`abort` discards everything staged.
    """

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        self.staging = self.folder / PENDING
        if self.staging.exists():
            recover(self.folder)
        self.staging.mkdir(parents=True, exist_ok=False)
        self._removals: list[str] = []

    def path(self, relative: Union[str, Path]) -> Path:
        """Where to write the new version of ``folder/relative``."""
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"a transaction writes inside its folder, got {relative}")
        return self.staging / rel

    def remove(self, relative: Union[str, Path]) -> None:
        """Delete ``folder/relative`` when the transaction commits."""
        self._removals.append(Path(relative).as_posix())

    def commit(self) -> None:
        """Make every staged file (and removal) take effect."""
        files = sorted(p.relative_to(self.staging).as_posix() for p in self.staging.rglob("*") if p.is_file())
        _fsync_dir(self.staging)
        atomic_write_text(self.staging / JOURNAL, json.dumps({"files": files, "remove": self._removals}))
        _apply(self.folder)

    def abort(self) -> None:
        """Discard everything staged (the folder keeps its old files)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def _apply(folder: Path) -> None:
    staging = folder / PENDING
    journal = json.loads((staging / JOURNAL).read_text(encoding="utf-8"))
    for rel in journal["files"]:
        src = staging / rel
        if src.exists():  # absent: already moved before an interruption
            dst = folder / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    for rel in journal["remove"]:
        target = folder / rel
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    _fsync_dir(folder)
    shutil.rmtree(staging, ignore_errors=True)


def recover(folder: Union[str, Path]) -> Recovery:
    """Finish (journal written) or discard (no journal) an interrupted transaction of ``folder``."""
    folder = Path(folder)
    staging = folder / PENDING
    if not staging.exists():
        return "none"
    if (staging / JOURNAL).is_file():
        _apply(folder)
        return "completed"
    shutil.rmtree(staging, ignore_errors=True)
    return "rolled back"
