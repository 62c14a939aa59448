"""The worker job ``probe``: report, from inside the jail, what the worker can still do.

Used by the test suite to prove the lockdown: every attempt below must fail.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

from chrootarchive import _linux
from chrootarchive.contract import JobReply, JobRequest
from chrootarchive.engine import fsops
from chrootarchive.engine.jobs import JobContext
from chrootarchive.engine.jobs.unpack import UnpackJob

__all__ = ["JOB"]


def _attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err.errno))
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return "ALLOWED"


class ProbeJob(UnpackJob):
    """The same powers as the unpack job, so the probe shows what an unpack worker can do."""

    def prepare(self, request: JobRequest) -> None:
        pass

    def run(self, request: JobRequest, context: JobContext) -> JobReply:
        return JobReply.make(0, 0, {"probe": _probe()})


def _probe() -> dict[str, str]:
    os.mkdir("probe-dir", 0o700)
    results = {
        "mount": _attempt(lambda: _linux.mount("none", "probe-dir", "tmpfs", 0)),
        "umount": _attempt(lambda: _linux.umount2("/", _linux.MNT_DETACH)),
        "pivot_root": _attempt(lambda: _linux.pivot_root(".", "probe-dir")),
        "chroot": _attempt(lambda: os.chroot("probe-dir")),
        "unshare": _attempt(lambda: _linux.unshare(_linux.CLONE_NEWNS)),
        "exec": _attempt(lambda: os.execv("/bin/sh", ["sh", "-c", "true"])),  # noqa: S606
        "socket": _attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "import": _attempt(lambda: __import__("xml.dom.minidom")),
        "proc": _attempt(lambda: os.stat("/proc/self")),
        "mount_with_dormant_raised": _attempt(
            lambda: fsops.with_privilege(
                lambda: _linux.mount("none", "probe-dir", "tmpfs", 0)
            )
        ),
        "sees_root": str(sorted(os.listdir("/"))),
    }
    os.rmdir("probe-dir")
    return results


JOB = ProbeJob()
