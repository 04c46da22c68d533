"""Ctrl-C between steps: a long run stops at a safe point instead of in the middle of an update."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Optional

__all__ = ["DeferredInterrupt"]


class DeferredInterrupt:
    """While active (a ``with`` block in the main thread), the first SIGINT only sets
    :attr:`requested`, for the loop to stop at its next safe point; a second one raises
    KeyboardInterrupt at once. Elsewhere (another thread) it changes nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._active = False

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._active = True
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous)
            self._active = False
