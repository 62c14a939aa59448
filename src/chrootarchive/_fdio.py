"""Descriptor helpers both sides use (lean: the worker imports this before the jail)."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data``: a pipe or socket may take less than asked."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
