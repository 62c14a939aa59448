"""The system calls of ``_linux``, through the compiled ``_syscall`` and through ctypes.

``_syscall`` spares the worker loading ctypes (a third of its boot: issue 16); ctypes is
its fallback where the install had no C compiler, and its reference. Each wrapper runs
here through both, on real files and, for the calls that change the process
(capabilities, seccomp, limits, namespaces), in a child interpreter; they must agree,
and their errors must name the call.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chrootarchive import _linux
from chrootarchive.tarformat import format as fmt

BACKENDS = ("compiled", "ctypes")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``_linux`` with its calls made through one backend."""
    assert _linux.COMPILED, "the suite runs with the compiled modules built"
    if request.param == "ctypes":
        syscall, address, dlopen = _linux._ctypes_calls()
        monkeypatch.setattr(_linux, "_syscall", syscall)
        monkeypatch.setattr(_linux, "_address", address)
        monkeypatch.setattr(_linux, "_dlopen", dlopen)
    yield request.param


# A fresh interpreter for the calls that change the process for good: a fork of the
# test process would carry its threads (3.12+ warns of that, rightly).
_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import test_syscall
sys.stdout.write(test_syscall._child(sys.argv[2], sys.argv[3], sys.argv[4:]))
"""


def _child(backend: str, name: str, args: list[str]) -> str:
    """In the child: ``name(*args)`` with ``_linux``'s calls through ``backend``; its
    result (repr'd), or its exception's."""
    if backend == "ctypes":
        syscall, address, dlopen = _linux._ctypes_calls()
        vars(_linux).update(_syscall=syscall, _address=address, _dlopen=dlopen)
    try:
        return repr(globals()[name](*args))
    except BaseException as err:  # reported to the parent
        return f"{type(err).__name__}: {err}"


def _in_child(backend: str, check: Callable[..., object], *args: str) -> str:
    """``check(*args)`` run in a child interpreter (it may change the process for good)
    with the backend given; what :func:`_child` says."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(Path(__file__).parent), backend, check.__name__,
         *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _lower_limits() -> object:
    old = _linux.prlimit(_linux.RLIMIT_NOFILE, (100, 200))
    return old, resource.getrlimit(resource.RLIMIT_NOFILE)


def _lock() -> object:
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
    chown = _linux.CAPABILITIES["CAP_CHOWN"]
    _linux.drop_capabilities({chown})
    with open("/proc/self/status") as f:
        caps = {line.split(":")[0]: int(line.split()[1], 16)
                for line in f if line.startswith(("CapEff", "CapPrm", "CapBnd"))}
    _linux.install_seccomp_denylist()
    try:
        _linux.unshare(_linux.CLONE_NEWNS)
        denied = "allowed"
    except PermissionError as err:
        denied = str(err)
    return caps, denied, _linux.raw_syscall(_linux.SYSCALL_NUMBERS["getpid"]) == os.getpid()


def _mounts(top: str) -> object:
    tmp_path = Path(top)
    _linux.unshare(_linux.CLONE_NEWNS)
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    _linux.mount(str(tmp_path / "src"), str(tmp_path / "onto"), None, _linux.MS_BIND)
    bound = (tmp_path / "onto" / "file").read_bytes()
    os.chdir(tmp_path / "src")
    tree = _linux.open_tree_clone_cwd()
    os.chdir(tmp_path / "onto")
    _linux.move_mount_onto_cwd(tree)
    os.close(tree)
    _linux.mount_setattr_nodev(str(tmp_path / "onto"))
    nodev = bool(os.statvfs(tmp_path / "onto").f_flag & os.ST_NODEV)
    os.chdir("/")
    _linux.umount2(str(tmp_path / "onto"), _linux.MNT_DETACH)
    _linux.umount2(str(tmp_path / "onto"), _linux.MNT_DETACH)
    return bound, nodev, os.listdir(tmp_path / "onto")


def test_the_worker_uses_the_compiled_calls() -> None:
    from chrootarchive import _syscall

    assert _linux._syscall is _syscall.syscall and _linux._dlopen is _syscall.dlopen


def test_a_failed_call_names_itself_and_its_errno(backend: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        _linux.pivot_root(str(tmp_path / "missing"), str(tmp_path / "old"))
    assert caught.value.errno == errno.ENOENT
    assert str(caught.value).startswith(f"[Errno 2] pivot_root({str(tmp_path / 'missing')!r}")
    assert _linux.mount_setattr_missing() is False  # Linux 5.12+: here
    with pytest.raises(OSError) as nosys:
        _linux.raw_syscall(-1)
    assert nosys.value.errno == errno.ENOSYS


def test_raw_syscall_passes_every_argument(backend: str) -> None:
    getpid = 39 if os.uname().machine == "x86_64" else 172
    assert _linux.raw_syscall(getpid) == os.getpid()
    # kill(own pid, 0): two arguments, the second zero; a negative one is a process group
    kill = _linux.SYSCALL_NUMBERS["kill"]
    assert _linux.raw_syscall(kill, os.getpid(), 0) == 0
    with pytest.raises(ProcessLookupError):
        _linux.raw_syscall(kill, 2**22 + 12345, 0)


def test_fstatfs_reads_the_magic(backend: str, tmp_path: Path) -> None:
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _linux.fstatfs_type(fd) == _linux.PROC_SUPER_MAGIC
    finally:
        os.close(fd)
    fd = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _linux.fstatfs_type(fd) == 0x01021994  # TMPFS_MAGIC
    finally:
        os.close(fd)


def test_times_owner_and_mode_through_a_path_descriptor(backend: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("gives files away: root's")  # CI runs as root
    (tmp_path / "target").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to("target")
    fd = os.open(link, os.O_PATH | os.O_NOFOLLOW)
    try:
        _linux.utimensat_empty(fd, -1_500_000_000, 1_234_567_890_123_456_789)
        _linux.fchownat_empty(fd, 1234, 5678)
    finally:
        os.close(fd)
    st = os.lstat(link)
    assert (st.st_atime_ns, st.st_mtime_ns) == (-1_500_000_000, 1_234_567_890_123_456_789)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert os.stat(tmp_path / "target").st_mtime_ns != 1_234_567_890_123_456_789
    fd = os.open(tmp_path / "target", os.O_PATH)
    try:
        _linux.fchmod_path_fd(fd, 0o4711)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        pytest.skip("fchmodat2 is Linux 6.6+")
    finally:
        os.close(fd)
    assert os.stat(tmp_path / "target").st_mode & 0o7777 == 0o4711


def test_rename_noreplace_and_names_with_a_nul(backend: str, tmp_path: Path) -> None:
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "a").write_bytes(b"a")
        (tmp_path / "b").write_bytes(b"b")
        with pytest.raises(FileExistsError, match="renameat2"):
            _linux.rename_noreplace(dirfd, "a", dirfd, "b")
        # A NUL would end the name early for the kernel ("b"): refused, as os refuses it.
        with pytest.raises(ValueError, match="null byte"):
            _linux.rename_noreplace(dirfd, "a", dirfd, "c\0b")
        _linux.rename_noreplace(dirfd, "a", dirfd, "c")
    finally:
        os.close(dirfd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]
    assert (tmp_path / "b").read_bytes() == b"b" and (tmp_path / "c").read_bytes() == b"a"


def test_openat2_resolves_in_the_root(backend: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(b"inside")
    (root / "escape").symlink_to("/etc/passwd")
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _linux.openat2(dirfd, "escape", os.O_RDONLY | os.O_CLOEXEC, 0,
                            _linux.RESOLVE_IN_ROOT | _linux.RESOLVE_NO_MAGICLINKS)
        with os.fdopen(fd, "rb") as f:
            assert f.read() == b"inside"
        with pytest.raises(OSError) as caught:
            _linux.openat2(dirfd, "escape", os.O_RDONLY, 0, _linux.RESOLVE_NO_XDEV | 0x04)
        assert caught.value.errno == errno.ELOOP  # RESOLVE_NO_SYMLINKS
    finally:
        os.close(dirfd)


def test_limits_read_and_set(backend: str) -> None:
    soft, hard = _linux.prlimit(_linux.RLIMIT_NOFILE)
    assert (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
    core = _linux.prlimit(_linux.RLIMIT_CORE)
    infinity = _linux.RLIM_INFINITY
    assert tuple(infinity if v == resource.RLIM_INFINITY else v
                 for v in resource.getrlimit(resource.RLIMIT_CORE)) == core

    assert _in_child(backend, _lower_limits) == repr(((soft, hard), (100, 200)))


def test_libraries_load_for_good(backend: str) -> None:
    assert _linux.preload_library("libgcc_s.so.1") is True
    assert _linux.preload_library("libchrootarchive-nothing.so.9") is False


def test_capabilities_and_seccomp_in_a_child(backend: str) -> None:
    """What lock_down does, in a child: the capabilities left, and the filter's EPERM
    for a denied call (unshare) while an allowed one (getpid) still works."""
    if os.geteuid() != 0:
        pytest.skip("drops capabilities that only root holds")  # CI runs as root
    chown = 1 << _linux.CAPABILITIES["CAP_CHOWN"]
    caps = {"CapPrm": chown, "CapEff": chown, "CapBnd": chown}
    assert _in_child(backend, _lock) == repr(
        (caps, "[Errno 1] unshare(0x20000): Operation not permitted", True))


def test_a_namespace_and_mounts_in_a_child(backend: str, tmp_path: Path) -> None:
    """unshare, mount (a bind and a propagation change), open_tree, move_mount and
    umount2, as the pivot mechanism makes them."""
    if os.geteuid() != 0:
        pytest.skip("mounts need root")  # CI runs as root
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file").write_bytes(b"seen")
    (tmp_path / "onto").mkdir()

    assert _in_child(backend, _mounts, str(tmp_path)) == repr((b"seen", True, []))
    assert os.listdir(tmp_path / "onto") == []  # the host's own mount table untouched


@pytest.mark.parametrize("size", [0, 1, 8, 100, 256, 257, 512, 1024])
def test_byte_sum_compiled_agrees_with_zlib(size: int) -> None:
    """``_ustar.byte_sum`` (the worker need not load zlib) against its reference."""
    from chrootarchive.tarformat import _ustar

    assert fmt.byte_sum is _ustar.byte_sum
    for seed in range(64):
        block = bytes((seed * 131 + i * (seed | 1) * 7) & 0xFF for i in range(size))
        ascii_block = bytes(b & 0x7F for b in block)
        for data in (block, ascii_block, bytearray(block), b"\xff" * size):
            assert fmt.byte_sum(data) == sum(data)
            if size <= 512:  # the zlib rule's range: one block
                assert fmt.byte_sum_zlib(data) == sum(data)


def test_the_fallback_is_chosen_without_the_compiled_module(tmp_path: Path) -> None:
    """With ``_syscall`` unloadable, ``_linux`` takes ctypes (and says so)."""

    code = (
        "import sys; sys.modules['chrootarchive._syscall'] = None\n"
        "from chrootarchive import _linux\n"
        "print(_linux.COMPILED, 'ctypes' in sys.modules, _linux.preload_library('libgcc_s.so.1'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "True", "True"]


@pytest.mark.parametrize("back", [-(2**40), 2**64 - 2**40])
def test_both_backends_pass_a_register_wide_argument(backend: str, back: int,
                                                     tmp_path: Path) -> None:
    """An int from -2**63 to 2**64 - 1 fills a register: lseek to 2**40, then back by
    2**40, given as a negative or as its unsigned twin, ends at 0."""
    lseek = 8 if os.uname().machine == "x86_64" else 62
    with open(tmp_path / "f", "wb") as f:
        assert _linux.raw_syscall(lseek, f.fileno(), 2**40, os.SEEK_SET) == 2**40
        assert _linux.raw_syscall(lseek, f.fileno(), back, os.SEEK_CUR) == 0


@pytest.mark.parametrize("arg", [2**64, -(2**63) - 1, "text", 1.5, memoryview(b"x")])
def test_both_backends_refuse_what_fits_no_register(backend: str, arg: Any) -> None:
    getpid = _linux.SYSCALL_NUMBERS["getpid"]
    expected = OverflowError if isinstance(arg, int) else TypeError
    with pytest.raises(expected):
        _linux._syscall(getpid, arg)


def test_the_aarch64_numbers_are_the_kernels() -> None:
    """The numbers of the other machine, against the kernel's generic table (the one
    aarch64 uses) where its headers are installed; x86_64's, against its own."""
    import re

    tables = {1: Path("/usr/include/asm-generic/unistd.h")}
    tables.update({0: p for p in Path("/usr/include").glob("*/asm/unistd_64.h")})
    checked = 0
    for arch, header in tables.items():
        if not header.exists():
            continue
        text = header.read_text()
        known = {m[1]: int(m[2]) for m in re.finditer(
            r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text)}
        for name, numbers in _linux._SYSCALLS.items():
            if name in known:
                assert numbers[arch] == known[name], (name, arch)
                checked += 1
    if not checked:
        pytest.skip("no kernel headers here")
    assert checked >= 10


def test_a_32_bit_python_is_refused_by_name() -> None:
    """Its calls would go by the i386 (or x32) numbers with 64-bit structures."""

    code = ("import sys; sys.maxsize = 2**31 - 1\n"
            "from chrootarchive import _host, _linux\n"
            "print(_host.unsupported_machine()); print(_linux._call('unshare', 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("this Python is a 32-bit program on ")
    assert int(out[1]) == -errno.ENOSYS
