"""The reserve of free space and inodes that the destination's filesystem keeps.

``Limits.reserve`` is a percentage of the filesystem (its size and its inodes), at most
:data:`MAX_BYTES` and :data:`MAX_INODES`: writing stops with a limit error before the
filesystem has less than that free, instead of filling it ("no space left" for
everything else on it). Read with ``fstatvfs`` on a descriptor of the destination (or
of the spool beside it), so the jailed worker and the parent check it the same way.
"""

from __future__ import annotations

import os

from chrootarchive.errors import LimitExceededError

__all__ = ["MAX_BYTES", "MAX_INODES", "Reserve"]

MAX_BYTES = 1 << 30
"""The most space a reserve keeps (a large filesystem: 1 GiB, not 5% of it)."""
MAX_INODES = 100_000
"""The most inodes a reserve keeps (about what 1 GiB of 10 KiB files takes)."""
_NO_LIMIT = 1 << 80  # a filesystem without an inode count (btrfs reports 0)


def _shown_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return f"{size} bytes"


class Reserve:
    """What one filesystem keeps free; fixed at the first look (its size does not
    change while we write)."""

    __slots__ = ("block", "bytes", "inodes", "percent")

    def __init__(self, percent: float) -> None:
        self.percent = percent
        self.bytes = -1  # until the first look
        self.inodes = 0
        self.block = 4096

    def room(self, fd: int, entry: str | None, need: int = 0,
             need_inodes: int = 0) -> tuple[int, int]:
        """Bytes and inodes free above the reserve once ``need`` more bytes are
        written to the filesystem of ``fd`` (and ``need_inodes`` more inodes taken).

        Raises:
            LimitExceededError: nothing is left above the reserve.
        """
        st = os.fstatvfs(fd)
        if self.bytes < 0:
            self.block = max(st.f_frsize, 512)
            share = self.percent / 100
            self.bytes = min(int(st.f_blocks * st.f_frsize * share), MAX_BYTES)
            self.inodes = min(int(st.f_files * share), MAX_INODES)
        free_bytes = st.f_bavail * st.f_frsize - need
        free_inodes = st.f_favail - need_inodes if st.f_files else _NO_LIMIT
        if free_bytes <= self.bytes or free_inodes <= self.inodes:
            left = f"{_shown_size(max(free_bytes, 0))}"
            if st.f_files:
                left += f" and {free_inodes:,} inodes"
            raise LimitExceededError(
                f"limit reserve ({self.percent:g}% of the destination's filesystem: "
                f"{_shown_size(self.bytes)} and {self.inodes:,} inodes kept free) "
                f"exceeded: {left} would be left; change Limits.reserve (a percentage; "
                f"0: none)", entry)
        return free_bytes - self.bytes, free_inodes - self.inodes
