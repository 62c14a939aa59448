"""The worker job ``probe``: report, from inside the jail, what the worker can still do.

Used by the test suite to prove the lockdown: every attempt in :func:`_probe` must fail,
and :func:`syscall_attempts` makes each call the seccomp filter has a rule for, by
number, with arguments that would fail harmlessly (EFAULT, EBADF, EINVAL...) if it
reached the kernel: only the filter answers EPERM (or ENOSYS) for them.
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
        return JobReply.make(0, 0, {"probe": _probe(), "syscalls": syscall_attempts()})


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


_BAD = 1  # an address nothing is mapped at: EFAULT
_CLONE_THREAD = 0x10000  # without CLONE_SIGHAND: EINVAL, no child is ever made
_CLONE_NEW = {
    "NEWNS": 0x20000, "NEWCGROUP": 0x02000000, "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}
_RLIMIT_NOFILE = 7
_FIONREAD = 0x541B
#: name -> arguments. A call that is absent on this architecture is skipped.
_CALLS: dict[str, tuple[int, ...]] = {
    "execve": (0, 0, 0), "execveat": (-1, 0, 0, 0, 0), "mount": (0, _BAD, 0, 0, 0),
    "umount2": (_BAD, 0), "pivot_root": (_BAD, _BAD), "chroot": (_BAD,), "unshare": (0,),
    "setns": (-1, 0), "open_tree": (-1, _BAD, 0), "move_mount": (-1, _BAD, -1, _BAD, 0),
    "fsopen": (_BAD, 0), "fsconfig": (-1, 0, 0, 0, 0), "fsmount": (-1, 0, 0),
    "fspick": (-1, _BAD, 0), "mount_setattr": (-1, _BAD, 0, 0, 0),
    "open_tree_attr": (-1, _BAD, 0, 0, 0), "statmount": (_BAD, 0, 0, 0),
    "listmount": (_BAD, 0, 0, 0),
    "kexec_load": (0, 1000, 0, 0x80), "kexec_file_load": (-1, -1, 0, 0, 0x80),
    "init_module": (0, 0, 0), "finit_module": (-1, 0, 0), "delete_module": (_BAD, 0),
    "reboot": (0, 0, 0, 0), "swapon": (_BAD, 0), "swapoff": (_BAD,), "acct": (_BAD,),
    "settimeofday": (_BAD, 0), "clock_settime": (0, _BAD), "adjtimex": (_BAD,),
    "clock_adjtime": (0, _BAD), "sethostname": (0, -1), "setdomainname": (0, -1),
    "quotactl": (0xFF, 0, 0, 0), "quotactl_fd": (-1, 0xFF, 0, 0), "syslog": (0xFF, 0, 0),
    "personality": (0xFFFFFFFF,), "iopl": (4,), "ioperm": (0, 0, 0),
    "modify_ldt": (99, 0, 0), "uselib": (_BAD,), "fanotify_init": (0xFFFFFFFF, 0),
    "bpf": (9999, 0, 0), "perf_event_open": (0, 0, -1, -1, 0), "userfaultfd": (0xFFFF,),
    "keyctl": (9999, 0, 0, 0, 0), "add_key": (_BAD, 0, 0, 0, 0),
    "request_key": (_BAD, 0, 0, 0), "io_uring_setup": (0, _BAD),
    "io_uring_enter": (-1, 0, 0, 0, 0, 0), "io_uring_register": (-1, 0, 0, 0),
    "socket": (-1, 0, 0), "connect": (-1, 0, 0), "open_by_handle_at": (-1, 0, 0),
    "name_to_handle_at": (-1, _BAD, _BAD, _BAD, 0), "ptrace": (2, -1, 0, 0),
    "process_vm_readv": (0, 0, 0, 0, 0, 1), "process_vm_writev": (0, 0, 0, 0, 0, 1),
    "kcmp": (-1, -1, 99, 0, 0), "pidfd_open": (-1, 0), "pidfd_getfd": (-1, -1, 0),
    "pidfd_send_signal": (-1, 0, 0, 0), "process_madvise": (-1, 0, 0, 0, 0),
    "process_mrelease": (-1, 0), "migrate_pages": (-1, 0, 0, 0),
    "move_pages": (-1, 0, 0, 0, 0, 0), "setpriority": (0x7F, 0, 0),
    "ioprio_set": (0x7F, 0, 0), "sched_setparam": (-1, 0), "sched_setscheduler": (-1, 0, 0),
    "sched_setaffinity": (-1, 0, 0), "sched_setattr": (-1, 0, 0),
    # System V IPC and message queues: bad ids, sizes or descriptors (no key is made):
    "shmget": (0, 0, 0), "shmat": (-1, 0, 0), "shmctl": (-1, 0xFF, 0),
    "semget": (0, -1, 0), "semop": (-1, 0, 0), "semtimedop": (-1, 0, 0, 0),
    "semctl": (-1, 0, 0xFF, 0), "msgget": (0x7FFFFFF1, 0), "msgsnd": (-1, 0, 0, 0),
    "msgrcv": (-1, 0, 0, 0, 0), "msgctl": (-1, 0xFF, 0), "mq_open": (_BAD, 0, 0, 0),
    "mq_unlink": (_BAD,), "mq_timedsend": (-1, 0, 0, 0, 0),
    "mq_timedreceive": (-1, 0, 0, 0, 0), "mq_notify": (-1, 0),
    "mq_getsetattr": (-1, 0, 0),
    # Signals (signal 0: only the permission check) and limits of another process (pid 1):
    "kill": (1, 0), "tkill": (1, 0), "tgkill": (1, 1, 0), "rt_sigqueueinfo": (1, 0, _BAD),
    "rt_tgsigqueueinfo": (1, 1, 0, _BAD), "prlimit64": (1, _RLIMIT_NOFILE, 0, 0),
    "clone3": (0, 0),
}


def syscall_attempts() -> dict[str, str]:
    """Each call the filter has a rule for: its errno name, or ALLOWED.

    Besides the refused calls, what must stay allowed: signalling itself, its own
    limits, clone() without a namespace flag (answered by the kernel: EINVAL), and
    other ioctl requests (EBADF).
    """
    results: dict[str, str] = {}
    calls = {name: (_linux.SYSCALL_NUMBERS[name], args) for name, args in _CALLS.items()
             if name in _linux.SYSCALL_NUMBERS}
    clone = _linux.SYSCALL_NUMBERS["clone"]
    for flag, value in _CLONE_NEW.items():
        calls[f"clone:{flag}"] = (clone, (value | _CLONE_THREAD, 0, 0, 0, 0))
    calls["clone:plain"] = (clone, (_CLONE_THREAD, 0, 0, 0, 0))
    calls["kill:self"] = (_linux.SYSCALL_NUMBERS["kill"], (os.getpid(), 0))
    calls["prlimit64:self"] = (_linux.SYSCALL_NUMBERS["prlimit64"],
                               (0, _RLIMIT_NOFILE, 0, 0))
    ioctl = _linux.SYSCALL_NUMBERS["ioctl"]
    for request, value in _linux.DENIED_IOCTLS.items():
        calls[f"ioctl:{request}"] = (ioctl, (-1, value, 0))  # no descriptor: EBADF
    calls["ioctl:plain"] = (ioctl, (-1, _FIONREAD, 0))
    if _linux.X32_SYSCALL_BIT:
        calls["x32:getpid"] = (_linux.X32_SYSCALL_BIT | _linux.SYSCALL_NUMBERS["getpid"], ())
    for name, (nr, args) in calls.items():
        try:
            _linux.raw_syscall(nr, *args)
            results[name] = "ALLOWED"
        except OSError as err:
            results[name] = errno.errorcode.get(err.errno or 0, str(err.errno))
    return results


JOB = ProbeJob()
