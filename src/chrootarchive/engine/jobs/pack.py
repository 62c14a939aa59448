"""The worker job ``pack``: a tar stream of a tree, read without following a symlink.

:func:`run` runs in the jailed worker (the tree lies below its root ``/``) and writes
the stream to fd 1; :func:`run_in_process` runs the same walk in the caller's process
for the ``openat2`` mechanism, writing to a pipe. Compression is the parent's business.

The walk is :class:`~chrootarchive.engine.packer.Packer` (how it reads the tree without
following a symlink); the headers are :mod:`chrootarchive.tarformat.writer`'s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Callable
from typing import Any

from chrootarchive import _linux
from chrootarchive.engine.packer import Packer
from chrootarchive.options import PackOptions

__all__ = ["capabilities", "run", "run_in_process"]

_RESOLVE_IN_ROOT = 0x10
_RESOLVE_NO_MAGICLINKS = 0x02


def capabilities(request: dict[str, Any]) -> frozenset[str]:
    """Reading needs only to bypass permissions (CAP_DAC_OVERRIDE; CAP_FOWNER for
    O_NOATIME). Not CAP_DAC_READ_SEARCH, although it would be enough to read: it also
    opens ``open_by_handle_at(2)``, which reaches any inode of the filesystem from inside
    the jail (the 2014 "shocker" container escape)."""
    return frozenset({"CAP_DAC_OVERRIDE", "CAP_FOWNER"})


def _raise_fd_limit() -> None:
    """One descriptor per directory level is held open: allow as many as we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _open_in_root(root_fd: int, path: str) -> int:
    """Open the directory ``path`` below ``root_fd``, as if ``root_fd`` were ``/``.

    In-root symlinks on the way are followed; ``/proc`` magic links are not (a procfs
    mounted inside the root must not lead out of it); ``..`` stops at the root.
    """
    relative = path.lstrip("/") or "."
    while True:
        try:
            return _linux.openat2(root_fd, relative,
                                  os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                                  _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        except BlockingIOError:
            continue  # EAGAIN: a concurrent rename; the kernel asks us to retry
        except OSError as err:
            code = err.errno or errno.EIO
            if code in (errno.ENOSYS, errno.EPERM) and root_fd == _linux.AT_FDCWD:
                # No openat2 (Linux < 5.6): in the jail, paths cannot leave anyway.
                return os.open(relative, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            raise OSError(code, os.strerror(code)) from err  # without the call


def run(request: dict[str, Any], warn: Callable[[str], None]) -> dict[str, Any]:
    """The job, in the jailed worker: write the tar stream of ``request["src"]`` to fd 1."""
    _raise_fd_limit()
    options = PackOptions.from_json(request["options"])
    src = str(request["src"])
    packer = Packer(1, options, warn, src=str(request.get("display") or src), jailed=True)
    packer.pack(lambda path: _open_in_root(_linux.AT_FDCWD, path), src)
    return {"entries": packer.entries, "size": packer.size}


def run_in_process(
    root_fd: int, request: dict[str, Any], out_fd: int, warn: Callable[[str], None]
) -> dict[str, Any]:
    """The ``openat2`` mechanism: the same walk in the caller's process, no jail.

    The source is resolved with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``
    under ``root_fd``; below it the walk never follows a symlink, so it cannot leave.
    """

    def open_dir(path: str) -> int:
        return _open_in_root(root_fd, path)

    options = PackOptions.from_json(request["options"])
    src = str(request["src"])
    packer = Packer(out_fd, options, warn, src=str(request.get("display") or src),
                    jailed=False)
    packer.pack(open_dir, src)
    return {"entries": packer.entries, "size": packer.size, "confinement": "openat2"}
