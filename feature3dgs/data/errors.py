"""The exceptions the scene loaders raise for bad input.

Every problem with a scene on disk, or with a loader option, is raised as a
:class:`SceneFormatError` (a ``ValueError``) whose message is one line naming the file (or
folder) and the key, field or option at fault, and what was expected. A command-line front end
can therefore print ``str(error)`` and exit without a traceback.

* :class:`SceneFormatError`: a file's contents are wrong (bad number, corrupt binary, truncated
  image, ...). ``path`` and ``key`` say where.
* :class:`SceneNotFoundError`: a file or folder the scene needs is missing; it is also a
  ``FileNotFoundError``.
* :class:`SceneOptionError`: a loader argument does not suit the scene (``test_every`` on a
  Blender scene, ``test_every=0``, an option another format takes); ``key`` names the argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, Path]


class SceneFormatError(ValueError):
    """A scene file (or loader option) is invalid. ``str(e)`` is one line naming file and key.

    Attributes:
        path: the file or folder at fault (None when not file-specific).
        key: the key, field or option at fault (None when the whole file is).
    """

    def __init__(self, message: str, *, path: Optional[PathLike] = None, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep path and key through pickling (errors raised in DataLoader worker processes).
        return (_rebuild, (type(self), str(self), self.path, self.key))


class SceneNotFoundError(SceneFormatError, FileNotFoundError):
    """A file or folder the scene needs does not exist (also a ``FileNotFoundError``)."""


class SceneOptionError(SceneFormatError):
    """A loader argument is invalid or does not apply to this scene; ``key`` names it."""


def _rebuild(cls: type, message: str, path: Optional[Path], key: Optional[str]) -> SceneFormatError:
    return cls(message, path=path, key=key)


def format_error(path: PathLike, key: Optional[str], problem: str, cls: type = SceneFormatError) -> SceneFormatError:
    """A :class:`SceneFormatError` (or ``cls``) with the message ``"<path>: <key>: <problem>"``."""
    where = f"{path}: {key}: " if key else f"{path}: "
    return cls(where + problem, path=path, key=key)
