"""Descriptor I/O both sides need. Lean: the jailed worker imports it."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``: a pipe or socket may take less than asked."""
    with memoryview(data) as view:
        while view:
            n = os.write(fd, view)
            view = view[n:]
