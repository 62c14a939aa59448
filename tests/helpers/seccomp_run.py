"""Run a command under a seccomp filter that makes chosen system calls fail.

    python3 seccomp_run.py --deny unshare:EPERM --deny openat2:ENOSYS -- CMD [ARGS...]

Installs, in this process only, ``prctl(PR_SET_NO_NEW_PRIVS, 1)`` and a
``SECCOMP_MODE_FILTER`` program that answers each denied system call with the given
errno, then ``exec``s ``CMD``: the filter survives the exec (no_new_privs is set) and is
inherited by every child, so the command and the workers it spawns see a kernel
without those calls. Nothing machine-wide changes.

Runs under any Python 3 with ctypes (Debian's ``/usr/bin/python3`` as uid 65534 too):
it imports nothing outside the standard library.
"""

from __future__ import annotations

import ctypes  # noqa: TID251 - a test helper, not the package: ctypes is the only way
import errno
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K

# offsetof(struct seccomp_data, nr / arch)
OFF_NR = 0
OFF_ARCH = 4

ARCHES = {
    # machine: (AUDIT_ARCH_*, {name: number})
    "x86_64": (0xC000003E, {"unshare": 272, "openat2": 437, "mount": 165, "pivot_root": 155,
                            "clone3": 435, "setns": 308, "chroot": 161}),
    "aarch64": (0xC00000B7, {"unshare": 97, "openat2": 437, "mount": 40, "pivot_root": 41,
                             "clone3": 435, "setns": 268, "chroot": 51}),
}


def syscall_table() -> tuple[int, dict[str, int]]:
    machine = platform.machine()
    if machine not in ARCHES:
        raise SystemExit(f"seccomp_run: unsupported architecture {machine}")
    return ARCHES[machine]


def build_filter(deny: dict[int, int], audit_arch: int) -> bytes:
    """A classic BPF program: foreign architectures and other calls are allowed."""
    prog: list[tuple[int, int, int, int]] = [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 1, 0, audit_arch),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
    ]
    for nr, err in deny.items():
        prog.append((BPF_JEQ_K, 0, 1, nr))
        prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | (err & 0xFFFF)))
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def install(deny: dict[int, int], audit_arch: int) -> None:
    code = build_filter(deny, audit_arch)
    count = len(code) // 8
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    addr = ctypes.addressof(fprog)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, addr, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def parse(argv: list[str]) -> tuple[dict[int, int], int, list[str]]:
    audit_arch, numbers = syscall_table()
    deny: dict[int, int] = {}
    i = 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] != "--deny" or i + 1 >= len(argv):
            raise SystemExit(f"usage: seccomp_run.py [--deny SYSCALL:ERRNO]... -- CMD; "
                             f"got {argv[i]!r}")
        name, _, err_name = argv[i + 1].partition(":")
        if name not in numbers:
            raise SystemExit(f"seccomp_run: unknown system call {name!r}")
        deny[numbers[name]] = getattr(errno, err_name or "EPERM")
        i += 2
    command = argv[i + 1:]
    if not command:
        raise SystemExit("seccomp_run: no command given")
    return deny, audit_arch, command


def main(argv: list[str]) -> None:
    deny, audit_arch, command = parse(argv)
    install(deny, audit_arch)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
