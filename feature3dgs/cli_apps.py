"""The application sub-commands of `feature3dgs` (segment, query, edit, select, mask, semantic)."""

from __future__ import annotations

HANDLERS: dict = {}


def add_parsers(sub) -> None:
    pass
