"""The only module that talks to libc directly: system calls by number, through the
compiled ``_syscall`` (or ctypes, where the install had no C compiler).

Python 3.11 has no ``os.unshare``, ``pivot_root``, ``mount``, ``open_tree`` or
``openat2``; these thin wrappers raise ``OSError`` with errno, and a message that
names the call and its arguments, as libpathrs' syscall layer does. ``_syscall`` is
the same calls without ctypes, whose import is a third of the worker's boot (issue 16);
the ctypes path (:func:`_ctypes_calls`) is its fallback and its reference
(tests/test_syscall.py runs both).
"""

from __future__ import annotations

import errno
import os
import struct

from chrootarchive import _host
from chrootarchive._host import MACHINE as _MACHINE
from chrootarchive._host import MACHINES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "AT_EMPTY_PATH",
    "AT_SYMLINK_NOFOLLOW",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "COMPILED",
    "MNT_DETACH",
    "MS_BIND",
    "MS_PRIVATE",
    "MS_REC",
    "MS_SLAVE",
    "RLIMIT_CORE",
    "RLIMIT_DATA",
    "RLIMIT_FSIZE",
    "RLIMIT_NOFILE",
    "RLIM_INFINITY",
    "clear_capabilities",
    "fchownat_empty",
    "mount",
    "mount_setattr_missing",
    "mount_setattr_nodev",
    "move_mount_onto_cwd",
    "open_tree_clone_cwd",
    "pivot_root",
    "prctl",
    "preload_library",
    "prlimit",
    "rename_noreplace",
    "umount2",
    "unshare",
    "utimensat_empty",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
AT_FDCWD = -100
RESOLVE_NO_XDEV = 0x01  # openat2(2)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
PR_SET_PDEATHSIG = 1
SIGKILL = 9  # without importing signal (worker start-up)
PR_SET_NO_NEW_PRIVS = 38

_SYSCALLS = {
    # name: one number per machine of _host.MACHINES (x86_64, aarch64)
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "unshare": (272, 97),
    "prctl": (157, 167),
    "capset": (126, 91),
    "fchownat": (260, 54),
    "utimensat": (280, 88),
    "fstatfs": (138, 44),
    "renameat2": (316, 276),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "openat2": (437, 437),
    "mount_setattr": (442, 442),
    "fchmodat2": (452, 452),
    "prlimit64": (302, 261),
}
_ARCH = MACHINES.index(_MACHINE) if _MACHINE in MACHINES else 0
_KNOWN_MACHINE = _host.unsupported_machine() is None  # numbers and layouts known


def _ctypes_calls() -> tuple[Callable[..., int], Callable[[bytes], int], Callable[[str], bool]]:
    """The three calls through ctypes: the fallback of ``_syscall`` (no C compiler)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def syscall(nr: int, *args: int | bytes | bytearray | None) -> int:
        values: list[object] = []
        for arg in args:  # what _syscall.c takes, refused as it refuses it
            if isinstance(arg, int):
                if not -(1 << 63) <= arg < 1 << 64:
                    raise OverflowError(f"system call argument {arg} does not fit a register")
                values.append(ctypes.c_long(arg))
            elif isinstance(arg, bytearray):
                values.append((ctypes.c_char * len(arg)).from_buffer(arg))
            elif arg is None or isinstance(arg, bytes):
                values.append(arg)
            else:
                raise TypeError("system call arguments are int, None, bytes or bytearray")
        result: int = libc.syscall(ctypes.c_long(nr), *values)
        return -ctypes.get_errno() if result == -1 else result

    def address(data: bytes) -> int:
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0

    def dlopen(name: str) -> bool:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            return False
        return True

    return syscall, address, dlopen


# _syscall(nr, *args) -> the result, or -errno; each argument an int, None, bytes (read
# by the call) or a bytearray (written by it). _address(data): where bytes' data lies.
# _dlopen(name): whether a library could be loaded for good (RTLD_GLOBAL).
try:
    from chrootarchive._syscall import address, dlopen, syscall

    _syscall, _address, _dlopen = syscall, address, dlopen
    COMPILED = True
except ImportError:  # installed without a C compiler (setup.py)
    _syscall, _address, _dlopen = _ctypes_calls()
    COMPILED = False


def _check(result: int, call: str) -> int:
    """``result`` of a call (-errno when it failed): an OSError that names the call."""
    if result < 0:
        raise OSError(-result, f"{call}: {os.strerror(-result)}")
    return result


def _call(name: str, *args: int | bytes | bytearray | None) -> int:
    """System call ``name``: its result, or -errno (ENOSYS on a machine whose numbers
    are not known: _host.unsupported_machine says why)."""
    if not _KNOWN_MACHINE:
        return -errno.ENOSYS
    return _syscall(_SYSCALLS[name][_ARCH], *args)


def _b(path: str | None) -> bytes | None:
    """A path for the kernel: a NUL byte would end it early, so it is refused (as
    ``os`` refuses it)."""
    if path is None:
        return None
    encoded = os.fsencode(path)
    if b"\0" in encoded:
        raise ValueError(f"embedded null byte in path {path!r}")
    return encoded


def unshare(flags: int) -> None:
    _check(_call("unshare", flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _call("mount", _b(source), _b(target), _b(fstype), flags, None),
        f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x})",
    )


def umount2(target: str, flags: int) -> None:
    _check(_call("umount2", _b(target), flags), f"umount2({target!r}, {flags:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(
        _call("pivot_root", _b(new_root), _b(put_old)),
        f"pivot_root({new_root!r}, {put_old!r})",
    )


def open_tree_clone_cwd() -> int:
    """A detached recursive bind-mount copy of the current directory (open_tree(2))."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
    return _check(
        _call("open_tree", AT_FDCWD, b".", flags), "open_tree('.', CLONE)"
    )


def move_mount_onto_cwd(tree_fd: int) -> None:
    """Attach the detached mount ``tree_fd`` on top of the current directory."""
    _check(
        _call("move_mount", tree_fd, b"", AT_FDCWD, b".", MOVE_MOUNT_F_EMPTY_PATH),
        f"move_mount({tree_fd}, '.')",
    )


MOUNT_ATTR_NODEV = 0x4


def mount_setattr_nodev(path: str) -> None:
    """mount_setattr(2) with ``AT_RECURSIVE``: every mount from ``path`` (a mount root)
    down becomes ``nodev``, so no device node below can be opened (Linux 5.12)."""
    attr = struct.pack("=4Q", MOUNT_ATTR_NODEV, 0, 0, 0)  # struct mount_attr
    _check(
        _call("mount_setattr", AT_FDCWD, _b(path), AT_RECURSIVE, attr, len(attr)),
        f"mount_setattr({path!r}, AT_RECURSIVE, MOUNT_ATTR_NODEV)",
    )


def mount_setattr_missing() -> bool:
    """Whether the kernel has no mount_setattr(2) (Linux < 5.12): asked with a size it
    refuses (EINVAL), which changes nothing."""
    return _call("mount_setattr", -1, None, 0, None, 0) == -errno.ENOSYS


def prctl(option: int, arg2: int = 0) -> None:
    _check(_call("prctl", option, arg2, 0, 0, 0), f"prctl({option}, {arg2})")


def fchownat_empty(fd: int, uid: int, gid: int) -> None:
    """Change the owner of the object behind ``fd`` (an O_PATH fd works; never follows)."""
    _check(
        _call("fchownat", fd, b"", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW),
        f"fchownat({fd}, '', {uid}, {gid}, AT_EMPTY_PATH)",
    )


def fchmod_path_fd(fd: int, mode: int) -> None:
    """fchmodat2(fd, "", mode, AT_EMPTY_PATH): chmod the object an O_PATH fd pins.

    Linux 6.6+; raises OSError(ENOSYS) before.
    """
    _check(_call("fchmodat2", fd, b"", mode, AT_EMPTY_PATH), f"fchmodat2({fd}, {mode:#o})")


RENAME_NOREPLACE = 1


def rename_noreplace(old_dir_fd: int, old: str, new_dir_fd: int, new: str) -> None:
    """renameat2(..., RENAME_NOREPLACE): FileExistsError when ``new`` exists (EINVAL
    where the file system cannot do it)."""
    _check(_call("renameat2", old_dir_fd, _b(old), new_dir_fd, _b(new), RENAME_NOREPLACE),
           f"renameat2({old!r}, {new!r}, RENAME_NOREPLACE)")


def utimensat_empty(fd: int, atime_ns: int, mtime_ns: int) -> None:
    """Set the times of the object behind ``fd`` (an O_PATH fd of a symlink works)."""
    times = struct.pack("=4q", *divmod(atime_ns, 1_000_000_000),  # two struct timespec
                        *divmod(mtime_ns, 1_000_000_000))
    _check(
        _call("utimensat", fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW),
        f"utimensat({fd}, '', AT_EMPTY_PATH)",
    )


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """openat2(2): resolve ``path`` under ``dirfd`` with RESOLVE_* restrictions."""
    how = struct.pack("=3Q", flags, mode, resolve)  # struct open_how
    return _check(
        _call("openat2", dirfd, _b(path), how, len(how)),
        f"openat2({dirfd}, {path!r}, {flags:#x}, {resolve:#x})",
    )


PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
#: The kernel's own file systems (``f_type`` -> name, linux/magic.h): a window on kernel
#: state (procfs, sysfs and what is mounted below them), never a place for files.
KERNEL_FILESYSTEMS = {
    PROC_SUPER_MAGIC: "procfs", SYSFS_MAGIC: "sysfs", 0x42494E4D: "binfmt_misc",
    0x64626720: "debugfs", 0x74726163: "tracefs", 0x73636673: "securityfs",
    0x0027E0EB: "cgroupfs", 0x63677270: "cgroup2fs", 0xCAFE4A11: "bpffs",
    0x62656570: "configfs", 0xDE5E81E4: "efivarfs", 0x6165676C: "pstorefs",
    0x65735543: "fusectl", 0xF97CFF8C: "selinuxfs", 0x43415D53: "smackfs",
}
_STATFS_SIZE = 256  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first


def fstatfs_type(fd: int) -> int:
    """The file system type (``f_type``, a magic number) of the object behind ``fd``."""
    buf = bytearray(_STATFS_SIZE)
    _check(_call("fstatfs", fd, buf), f"fstatfs({fd})")
    f_type: int = struct.unpack_from("=q", buf)[0]
    return f_type & 0xFFFFFFFF


def preload_library(name: str) -> bool:
    """dlopen a library now, so that glibc never loads it later from inside the jail.

    glibc loads ``libgcc_s.so.1`` lazily (thread cancellation, unwinding); inside the
    jail that would run a library from the destination.
    """
    return _dlopen(name)


RLIMIT_FSIZE = 1  # the same on every machine of MACHINES
RLIMIT_DATA = 2
RLIMIT_CORE = 4
RLIMIT_NOFILE = 7
RLIM_INFINITY = (1 << 64) - 1


def prlimit(resource: int, limits: tuple[int, int] | None = None) -> tuple[int, int]:
    """This process's (soft, hard) limit of ``resource`` as it was, and ``limits`` set
    if given (prlimit64(2); :data:`RLIM_INFINITY` is no limit): ``resource`` without
    the module, which the worker need not load."""
    old = bytearray(16)
    new = None if limits is None else struct.pack("=2Q", *limits)  # struct rlimit64
    _check(_call("prlimit64", 0, resource, new, old), f"prlimit64({resource}, {limits})")
    soft, hard = struct.unpack("=2Q", old)
    return soft, hard


# -- locking the worker down ---------------------------------------------------------

PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_CAP_LAST = 63
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

CAPABILITIES = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}


_permitted_mask = 0


def _capset(effective: int, permitted: int) -> None:
    # cap_user_header_t (this thread), which the kernel writes back to on a version it
    # does not know; then two cap_user_data_t.
    header = bytearray(struct.pack("=2I", _LINUX_CAPABILITY_VERSION_3, 0))
    data = struct.pack("=6I", effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, 0,
                       effective >> 32, permitted >> 32, 0)
    _check(_call("capset", header, data), "capset")


def _mask(caps: set[int]) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def set_effective(caps: set[int]) -> None:
    """Make ``caps`` (a subset of what is permitted) the calling thread's effective set."""
    _capset(_mask(caps) & _permitted_mask, _permitted_mask)


def drop_capabilities(keep: set[int], dormant: set[int] | frozenset[int] = frozenset()) -> None:
    """Keep only ``keep`` effective and ``keep | dormant`` at all, bounding set included.

    A dormant capability stays permitted but not effective: the caller raises it with
    :func:`set_effective` around the one call that needs it.
    """
    global _permitted_mask
    allowed = set(keep) | set(dormant)
    for cap in range(_CAP_LAST + 1):
        if cap in allowed:
            continue
        result = _call("prctl", PR_CAPBSET_DROP, cap, 0, 0, 0)
        if result == -errno.EINVAL:
            break  # past the last capability this kernel knows
        _check(result, f"prctl(PR_CAPBSET_DROP, {cap})")
    _permitted_mask = _mask(allowed)
    _capset(_mask(set(keep)), _permitted_mask)


def clear_capabilities() -> None:
    """Give up every capability, effective and permitted (the bounding set is kept:
    dropping from it needs ``CAP_SETPCAP``, which a locked-down worker no longer has)."""
    global _permitted_mask
    _permitted_mask = 0
    _capset(0, 0)


# seccomp: a deny-list filter (docs/security.md says why not an allow-list).
_AUDIT_ARCH = {0: 0xC000003E, 1: 0xC00000B7}
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_X32_SYSCALL_BIT = 0x40000000  # x86_64: the x32 ABI's numbers (same audit arch)
#: clone() flags that make a namespace (CLONE_NEWTIME is the exit signal's byte there).
CLONE_NEW_MASK = 0x7E020000
_NONE = -1  # no such call on this architecture
_DENIED_SYSCALLS = {
    # name: (x86_64, aarch64). Refused with EPERM whatever the capabilities.
    # Running programs, changing the mount tree or the namespaces:
    "execve": (59, 221), "execveat": (322, 281), "mount": _SYSCALLS["mount"],
    "umount2": _SYSCALLS["umount2"], "pivot_root": _SYSCALLS["pivot_root"],
    "chroot": (161, 51), "unshare": _SYSCALLS["unshare"], "setns": (308, 268),
    "open_tree": _SYSCALLS["open_tree"], "move_mount": _SYSCALLS["move_mount"],
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": _SYSCALLS["mount_setattr"], "open_tree_attr": (467, 467),
    "statmount": (457, 457), "listmount": (458, 458),
    # The kernel itself: modules, kexec, reboot, swap, accounting, clocks, names, quotas:
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "adjtimex": (159, 171),
    "clock_adjtime": (305, 266), "sethostname": (170, 161), "setdomainname": (171, 162),
    "quotactl": (179, 60), "quotactl_fd": (443, 443), "syslog": (103, 116),
    "personality": (135, 92), "iopl": (172, _NONE), "ioperm": (173, _NONE),
    "modify_ldt": (154, _NONE), "uselib": (134, _NONE), "fanotify_init": (300, 262),
    # Large attack surfaces no unpacker needs:
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "socket": (41, 198), "connect": (42, 203),
    # Files by handle (reach any inode of a file system, whatever the jail):
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    # Other processes: tracing, memory, descriptors, scheduling, signals by pidfd:
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "pidfd_open": (434, 434), "pidfd_getfd": (438, 438),
    "pidfd_send_signal": (424, 424), "process_madvise": (440, 440),
    "process_mrelease": (448, 448), "migrate_pages": (256, 238), "move_pages": (279, 239),
    "setpriority": (141, 140), "ioprio_set": (251, 30), "sched_setparam": (142, 118),
    "sched_setscheduler": (144, 119), "sched_setaffinity": (203, 122),
    "sched_setattr": (314, 274),
    # Other processes' System V IPC objects and POSIX message queues (in the host's IPC
    # namespace; a uid-0 process owns every root-made one, no capability needed):
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "semget": (64, 190),
    "semop": (65, 193), "semtimedop": (220, 192), "semctl": (66, 191),
    "msgget": (68, 186), "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187),
    "mq_open": (240, 180), "mq_unlink": (241, 181), "mq_timedsend": (242, 182),
    "mq_timedreceive": (243, 183), "mq_notify": (244, 184), "mq_getsetattr": (245, 185),
}
#: Calls that signal a process: allowed only when their target (the first argument) is
#: the locked-down process itself (``raise`` and ``abort`` work; nothing else is reached).
_SELF_ONLY_SYSCALLS = {
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240),
}
_PRLIMIT64 = _SYSCALLS["prlimit64"]  # setrlimit(): target 0 (itself) or its own pid
_IOCTL = (16, 29)
#: ioctl() requests refused on any descriptor: typing into a terminal (the worker's
#: stderr may be the caller's: TIOCSTI would run commands there) and the console's.
DENIED_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}
_CLONE = (56, 220)
_CLONE3 = (435, 435)  # refused with ENOSYS: glibc then falls back to clone()

#: Every call the filter has a rule for, by name (this architecture's numbers; the
#: probe job tries each by number).
SYSCALL_NUMBERS = {
    name: nrs[_ARCH]
    for name, nrs in (*_DENIED_SYSCALLS.items(), *_SELF_ONLY_SYSCALLS.items(),
                      ("prlimit64", _PRLIMIT64), ("clone", _CLONE), ("clone3", _CLONE3),
                      ("ioctl", _IOCTL), ("getpid", (39, 172)))
    if nrs[_ARCH] != _NONE
}
X32_SYSCALL_BIT = _X32_SYSCALL_BIT if _ARCH == 0 else 0


def raw_syscall(nr: int, *args: int) -> int:
    """syscall(2) by number with integer arguments (the probe job's only use)."""
    return _check(_syscall(nr, *args), f"syscall({nr})")


_LD_W_ABS, _JEQ_K, _JSET_K, _RET_K = 0x20, 0x15, 0x45, 0x06
_NR_OFFSET, _ARCH_OFFSET, _ARG0_OFFSET, _ARG1_OFFSET = 0, 4, 16, 24  # seccomp_data:
# the low words of args[0] and args[1] (little-endian; the kernel reads a pid, clone's
# flags and an ioctl request from the low 32 bits only)


def _assemble(code: list[tuple[int, int | str, int | str, int] | str]) -> list[
        tuple[int, int, int, int]]:
    """Resolve forward jumps to labels (a plain string in ``code`` marks a label)."""
    labels: dict[str, int] = {}
    index = 0
    for item in code:
        if isinstance(item, str):
            labels[item] = index
        else:
            index += 1
    prog: list[tuple[int, int, int, int]] = []
    for item in code:
        if isinstance(item, str):
            continue
        op, jt, jf, k = item
        here = len(prog) + 1
        jumps = [labels[j] - here if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= j <= 255 for j in jumps):
            raise ValueError(f"seccomp filter: jump out of range at {len(prog)}")
        prog.append((op, jumps[0], jumps[1], k))
    return prog


def seccomp_program(own_pid: int) -> list[tuple[int, int, int, int]]:
    """The filter, as BPF instructions: a foreign architecture is killed; the x32
    numbers, clone() with a namespace flag, the denied calls and ioctl requests, and a
    signal or ``prlimit64`` aimed at any other process fail with EPERM; clone3 with
    ENOSYS. Calls whose answer depends on their number only (all but clone, ioctl,
    prlimit64 and the signals) are answered from the kernel's per-number cache
    (Linux 5.11+) without running the program."""
    nr = (_LD_W_ABS, 0, 0, _NR_OFFSET)
    arg0 = (_LD_W_ABS, 0, 0, _ARG0_OFFSET)
    arg1 = (_LD_W_ABS, 0, 0, _ARG1_OFFSET)
    tiocsti, tioclinux = DENIED_IOCTLS.values()
    code: list[tuple[int, int | str, int | str, int] | str] = [
        (_LD_W_ABS, 0, 0, _ARCH_OFFSET),
        (_JEQ_K, 1, 0, _AUDIT_ARCH[_ARCH]),
        (_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),
        nr,
    ]
    if _ARCH == 0:
        code.append((_JSET_K, "eperm", 0, _X32_SYSCALL_BIT))
    code += [
        (_JEQ_K, "enosys", 0, _CLONE3[_ARCH]),
        (_JEQ_K, "clone", 0, _CLONE[_ARCH]),
        (_JEQ_K, "prlimit", 0, _PRLIMIT64[_ARCH]),
        (_JEQ_K, "ioctl", 0, _IOCTL[_ARCH]),
    ]
    code += [(_JEQ_K, "self", 0, nrs[_ARCH]) for nrs in _SELF_ONLY_SYSCALLS.values()]
    code += [(_JEQ_K, "eperm", 0, nrs[_ARCH]) for nrs in _DENIED_SYSCALLS.values()
             if nrs[_ARCH] != _NONE]
    code += [
        (_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        "clone", arg0, (_JSET_K, "eperm", "allow", CLONE_NEW_MASK),
        "prlimit", arg0, (_JEQ_K, "allow", "self_pid", 0),
        "ioctl", arg1, (_JEQ_K, "eperm", 0, tiocsti), (_JEQ_K, "eperm", "allow", tioclinux),
        "self", arg0,
        "self_pid", (_JEQ_K, "allow", "eperm", own_pid),
        "allow", (_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        "eperm", (_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM),
        "enosys", (_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    return _assemble(code)


def install_seccomp_denylist() -> None:
    """Install :func:`seccomp_program` for this process (and what it forks).

    Needs no_new_privs (or CAP_SYS_ADMIN) first.
    """
    prog = seccomp_program(os.getpid())
    # struct sock_filter {u16 code; u8 jt, jf; u32 k}, and struct sock_fprog {unsigned
    # short len; (padding); struct sock_filter *filter}, which points at them: the
    # local ``filters`` keeps them alive while the kernel copies them.
    filters = b"".join(struct.pack("=HBBI", *instruction) for instruction in prog)
    fprog = struct.pack("@HP", len(prog), _address(filters))
    _check(_call("prctl", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0),
           "prctl(PR_SET_SECCOMP)")
