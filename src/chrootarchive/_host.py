"""What the parent asks about this machine and process before it starts a worker, read
without libc: ``_linux`` and the mechanisms' modules (3-5 ms; 5-8 ms when ``_linux``
went through ``ctypes``), which an unpack as root never needs in the parent
(docs/performance.md, issue 16).
"""

from __future__ import annotations

import os
import sys

__all__ = ["MACHINE", "MACHINES", "current_umask", "unsupported_machine"]

#: The machines (``uname -m``) whose system-call numbers ``_linux`` knows, in the order
#: of its pairs.
MACHINES = ("x86_64", "aarch64")
MACHINE = os.uname().machine


def unsupported_machine() -> str | None:
    """Why no confinement can work on this machine, or None: the system-call numbers
    (and the seccomp filter's architecture) are known for :data:`MACHINES` only, and
    the structures passed to the kernel are laid out for a 64-bit process (a 32-bit
    Python on an x86_64 kernel says x86_64, and would make its calls by i386 numbers)."""
    if MACHINE not in MACHINES:
        return (f"this machine is {MACHINE or 'unknown'}; chrootarchive supports "
                f"{' and '.join(MACHINES)} only")
    if sys.maxsize < 1 << 32:
        return (f"this Python is a 32-bit program on {MACHINE}; chrootarchive needs a "
                "64-bit Python")
    return None


def current_umask() -> int:
    """The process umask, read without changing it (Linux 4.7+ shows it in /proc):
    ``os.umask`` can only read it by setting it, which races with other threads."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
