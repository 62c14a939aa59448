"""Giving up every power a jailed worker does not need, once it is confined.

Capabilities are cut to what writing files needs (no CAP_SYS_CHROOT, no ptrace, no
network, and CAP_SYS_ADMIN only dormant: permitted but not effective, raised by one
thread around the ``setxattr`` of a ``trusted.*`` name), ``no_new_privs`` is set, a
seccomp filter refuses exec, mounts, namespaces, the kernel's own state, other
processes (signals reach only the worker itself) and their kin whatever the
capabilities (``_linux.seccomp_program``), core dumps are off, and every further import
fails.
"""

from __future__ import annotations

import os
import sys

from chrootarchive import _linux
from chrootarchive.contract import memory_shares
from chrootarchive.engine import fsops

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from chrootarchive.contract import JobRequest, LimitSpec
    from chrootarchive.engine.jobs import Job

__all__ = ["forbid_imports", "lock_down"]

class _ImportsForbidden:
    """A meta path finder that fails every import after confinement, loudly."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        raise ImportError(f"import of {name!r} attempted inside the jail (refused)")


def forbid_imports() -> None:
    """No module can be loaded from now on (no code from the destination ever runs)."""
    sys.meta_path[:] = [_ImportsForbidden()]
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()
    sys.path[:] = []


def lock_down(job: Job, request: JobRequest) -> None:
    """Keep only what ``job`` needs for ``request``; then forbid imports."""
    keep = {_linux.CAPABILITIES[name] for name in job.capabilities(request)}
    dormant = {_linux.CAPABILITIES[name] for name in job.dormant_capabilities} - keep
    _linux.prlimit(_linux.RLIMIT_CORE, (0, 0))
    limits = request.unpack.limits if request.unpack is not None else None
    _backing_rlimits(limits)
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    if os.geteuid() == 0:
        _linux.drop_capabilities(keep, dormant)
        if dormant:
            fsops.enable_privileged_xattrs(
                lambda on: _linux.set_effective(keep | dormant if on else keep)
            )
    _linux.install_seccomp_denylist()
    forbid_imports()


def _backing_rlimits(limits: LimitSpec | None) -> None:
    """Kernel limits behind the unpack limits: file size, open files, memory.

    Memory is ``RLIMIT_DATA`` (heap, anonymous mappings, thread stacks), not
    ``RLIMIT_AS``: the interpreter and its libraries map about 90 MiB of address space
    (150 MiB at boot) that is mostly never touched. Its size is the worker's share of
    ``max_memory`` (``contract.memory_shares``: 27 MiB of the default 64 MiB). A bug
    that allocates without bound then gets ``MemoryError``, reported as the max_memory
    limit (``contract``).
    """
    max_memory = limits.max_memory if limits is not None else None
    if max_memory is not None:
        want = memory_shares(max_memory)[1]
        _soft, hard = _linux.prlimit(_linux.RLIMIT_DATA)
        want = min(want, hard)
        _linux.prlimit(_linux.RLIMIT_DATA, (want, want))
    max_file = limits.max_file_size if limits is not None else None
    if max_file is not None:
        # Python starts with SIGXFSZ ignored: writes past the limit fail with EFBIG.
        _soft, hard = _linux.prlimit(_linux.RLIMIT_FSIZE)
        want = min(max_file + 1, (1 << 63) - 1)
        if want <= hard:
            _linux.prlimit(_linux.RLIMIT_FSIZE, (want, want))
    depth = (limits.max_path_depth if limits is not None else None) or 1024
    _soft, hard = _linux.prlimit(_linux.RLIMIT_NOFILE)
    want = min(depth + 256, hard)  # a descriptor per level when removing deep trees
    _linux.prlimit(_linux.RLIMIT_NOFILE, (want, want))
