"""The helper process that finishes small files (``chrootarchive.engine.finisher``).

For a large plain tar the confined worker forks a helper after its first small files;
the worker creates each file and passes the descriptor, the data and the time over a
socket, and the helper writes, sets the time and closes. These tests check that:

- through the command line, as root and as uid 65534 (``userns``), the helper exists,
  is confined and locked down as the worker is (same root, seccomp, no_new_privs,
  bounding set) and holds no capability at all, and the tree is the archive's, byte for
  byte, with every mode and time; no process is left behind;
- an error in the helper (a full disk, a file-size limit) is reported as the worker
  reports its own: one line, naming the entry that failed;
- batches the kernel refuses (here: the helper is gone before the first) are
  finished by the worker itself, in order, and nothing is lost;
- files the helper creates by name (the worker only parses and decides) give the tree
  the worker alone would make, whatever is in the way: the same name again, a file
  then a directory or a link at its name, a directory replaced by a symlink, what a
  destination already holds (a symlink to a victim outside, which is never followed),
  a directory of another owner (which the helper, without capabilities, leaves to the
  worker).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chrootarchive import Limits, MalformedArchiveError, untar
from chrootarchive.engine import unpacker as unpack
from chrootarchive.engine.finisher import MAX_EXTENT
from helpers import hardening, tree
from helpers.cli import CLI, CLIResult, assert_one_line_error
from helpers.leaks import child_pids

SRC = Path(__file__).resolve().parents[1] / "src"
HELPER_AFTER = unpack.FINISHER_AFTER


def _archive(count: int, size_of: Callable[[int], int], *, big_every: int = 0) -> bytes:
    """``count`` files in 10 directories: sizes from ``size_of(i)``, various modes and
    times, every ``big_every``-th file larger than the helper takes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for d in range(10):
            info = tarfile.TarInfo(f"d{d}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for i in range(count):
            size = size_of(i)
            if big_every and i % big_every == big_every - 1:
                size = 100_000
            data = (f"file {i};".encode() * (size // 7 + 1))[:size]
            info = tarfile.TarInfo(f"d{i % 10}/f{i:05d}")
            info.size = size
            info.mode = (0o644, 0o600, 0o755, 0o640)[i % 4]
            info.mtime = 1_000_000_000 + i * 37
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _expected(archive: bytes) -> dict[str, tuple[int, float, str]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        for m in tf:
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = (m.mode, m.mtime, hashlib.sha256(f.read()).hexdigest())
    return out


def _actual(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.lstat()
            out[str(path.relative_to(root))] = (
                st.st_mode & 0o7777, int(st.st_mtime), hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return out


@pytest.fixture
def unpriv() -> Iterator[hardening.Unprivileged]:
    area = hardening.Unprivileged()
    yield area
    area.cleanup()


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_helper_is_confined_and_the_tree_is_exact(
    user: str, tmp_path: Path, unpriv: hardening.Unprivileged
) -> None:
    """As root (``pivot``) and as uid 65534 (``userns``)."""
    # Every 400th file is larger than the helper takes as data: it copies those from
    # the archive (extents).
    archive = _archive(20_000, lambda i: (i * 331) % 3000, big_every=400)
    assert len(archive) >= 4 << 20  # the worker may fork a helper from this size on
    if user == "root":
        path = tmp_path / "many.tar"
        path.write_bytes(archive)
        dest = tmp_path / "dest"
        argv, env, cwd = [*CLI, "untar", str(path), str(dest)], None, None
    else:
        path = unpriv.write("many.tar", archive)
        dest = unpriv.mkdir() / "dest"
        argv = [*hardening.SETPRIV, hardening.SYSTEM_PYTHON, "-m", "chrootarchive", "untar",
                str(path), str(dest)]
        env, cwd = unpriv.env(), "/"
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen: dict[str, dict[str, str]] = {}

    def watch() -> None:
        # The last look at both while they run: the helper may be seen between its
        # fork and its own lock-down (it has read nothing yet then), so not the first.
        while proc.poll() is None:
            for worker in hardening.workers_of(proc.pid):
                for helper in hardening.workers_of(worker):
                    try:
                        look = {"worker": hardening.status(worker),
                                "helper": hardening.status(helper),
                                "roots": {"same": str(
                                    os.stat(f"/proc/{worker}/root").st_ino
                                    == os.stat(f"/proc/{helper}/root").st_ino
                                    and os.readlink(f"/proc/{worker}/root")
                                    == os.readlink(f"/proc/{helper}/root"))}}
                    except OSError:
                        continue  # one of them ended while it was read
                    seen.update(look)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _out, err = proc.communicate(timeout=300)
    watcher.join()
    assert proc.returncode == 0, err.decode()
    assert "helper" in seen, "no helper process was seen during the extraction"
    worker, helper = seen["worker"], seen["helper"]
    for key in ("Seccomp", "NoNewPrivs", "CapBnd", "Uid", "Gid"):
        assert helper[key] == worker[key], (key, helper[key], worker[key])
    assert helper["Seccomp"] == "2" and helper["NoNewPrivs"] == "1"
    assert int(worker["CapEff"], 16)  # the worker writes owners, devices...
    assert int(helper["CapEff"], 16) == int(helper["CapPrm"], 16) == 0  # ...the helper not
    assert seen["roots"]["same"] == "True"
    assert _actual(dest) == _expected(archive)
    assert not [p for p, _, st in child_pids(proc.pid) if st != "Z"]


def test_helper_full_disk_names_the_entry(tmp_path: Path) -> None:
    """A 4 MiB tmpfs in a private mount namespace; 300 files of 30 KiB: the disk fills
    after the helper has taken over the small files."""
    archive = _archive(300, lambda i: 30_000)
    path = tmp_path / "fills.tar"
    assert len(archive) >= 4 << 20  # the worker may fork a helper from this size on
    path.write_bytes(archive)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = hardening.on_small_tmpfs(mnt, "4m", *CLI, "untar", "--reserve", "0", str(path),
                                    str(mnt / "dest"))
    result = CLIResult((proc.returncode, proc.stdout.decode(), proc.stderr.decode()))
    line = assert_one_line_error(result, rc=4, mentions=("no space left",))
    found = re.search(r"d\d/f(\d{5})", line)
    assert found, line
    assert int(found.group(1)) > HELPER_AFTER, line  # a file the helper was given


# In a child process, the unpacker in-process (no jail) with the helper allowed.
_IN_PROCESS = """\
import json, os, resource, signal, sys
sys.path.insert(0, sys.argv[1])
from chrootarchive.engine import fsops
from chrootarchive.tarformat import reader as tarreader
from chrootarchive.engine import unpacker as unpack
from chrootarchive.options import UnpackOptions, unpack_spec
archive, dest, mode = sys.argv[2:5]
os.chdir(dest)
os.umask(0)
if mode == "fsize":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
u = unpack.Unpacker(fsops.FileOps(), unpack_spec(UnpackOptions()), print,
                    layer_mode=mode.startswith("layer"))
u.finisher_countdown = -1 if mode.endswith("alone") else 64
if mode == "gone":
    start = u._start_finisher
    def start_then_lose_the_helper(*args):
        start(*args)
        pid = u.finisher._pid
        os.kill(pid, signal.SIGKILL)
        while open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
            pass  # dead, its socket closed (finish() reaps it)
    u._start_finisher = start_then_lose_the_helper
result = {"helper": False}
# The helper is stopped once forked, and let go when until() is true (or after
# timeout s), after note() is called.
def hold_helper(until, timeout, note):
    import threading, time
    start = u._start_finisher
    def start_then_hold(*args):
        start(*args)
        pid = u.finisher._pid
        os.kill(pid, signal.SIGSTOP)
        def resume():
            deadline = time.monotonic() + timeout
            while not until() and time.monotonic() < deadline:
                time.sleep(0.0005)
            note()
            os.kill(pid, signal.SIGCONT)
        threading.Thread(target=resume, daemon=True).start()
    u._start_finisher = start_then_hold
def size_of(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
if mode.startswith("stalled:"):
    # Let go only when the worker has created the archive's last file (or after 20 s):
    # the worker must not wait for it.
    last, _, wait = mode.partition(":")[2].partition(":")
    hold_helper(lambda: os.path.exists(last), float(wait or 20),
                lambda: result.update(last_made_while_stalled=os.path.exists(last)))
if mode.startswith("release-when-copying:"):
    # Let go once the worker has begun to copy the large file itself: the helper then
    # runs dry while that copy goes on.
    big = mode.partition(":")[2]
    hold_helper(lambda: size_of(big) > 0, 20, lambda: result.update(
        released_while_copying=0 < size_of(big) < os.path.getsize(archive) // 2))
fd = os.open(archive, os.O_RDONLY)
try:
    u.run(tarreader.TarReader(fd))
except Exception as err:
    result["error"] = [type(err).__name__, err.message, err.entry]
result["helper"] = u.finisher is not None
result["finished_here"] = u.finisher.finished_here if u.finisher else 0
result["taken"] = u.finisher.taken if u.finisher else 0
result["extents"] = u.finisher.extents if u.finisher else 0
result["by_name"] = u.finisher.by_name if u.finisher else 0
result["given_back"] = u.finisher.given_back if u.finisher else 0
result["extents_here"] = u.extents_here
result["extents_handed_over"] = u.extents_handed_over
print(json.dumps(result))
"""


def _in_process(archive: bytes, tmp_path: Path, mode: str, dest: Path | None = None
                ) -> dict[str, Any]:
    path = tmp_path / "in.tar"
    path.write_bytes(archive)
    if dest is None:
        dest = tmp_path / "dest"
        dest.mkdir()
    proc = subprocess.run([sys.executable, "-c", _IN_PROCESS, str(SRC), str(path), str(dest),
                           mode], capture_output=True, timeout=120)
    assert proc.stdout, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout.decode().splitlines()[-1])
    return result


def test_helper_error_names_its_entry(tmp_path: Path) -> None:
    """A write the helper makes fails (RLIMIT_FSIZE): the error names that file."""
    archive = _archive(200, lambda i: 60_000 if i == 150 else 1000)
    result = _in_process(archive, tmp_path, "fsize")
    assert result["helper"]
    assert result["error"][0] == "DestinationError", result
    assert result["error"][2] == "d0/f00150", result
    assert "too large" in result["error"][1].lower(), result


@pytest.mark.parametrize("count", [HELPER_AFTER + 10, 1000])
def test_batches_the_helper_cannot_take_are_finished_here(count: int, tmp_path: Path) -> None:
    archive = _archive(count, lambda i: (i * 97) % 5000, big_every=50)
    result = _in_process(archive, tmp_path, "gone")
    assert "error" not in result, result
    assert result["helper"] and result["finished_here"] > 0, result
    assert _actual(tmp_path / "dest") == _expected(archive)


def test_files_with_an_atime_go_to_the_helper_and_keep_both_times(tmp_path: Path) -> None:
    """GNU tar --xattrs and --format=posix write a PAX atime for every entry (a root
    filesystem's tar does): the helper takes those files too, and sets both times."""
    buf = io.BytesIO()
    times = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(300):
            data = b"x" * (i * 13 % 3000)
            info = tarfile.TarInfo(f"f{i:03d}")
            info.size = len(data)
            info.mtime = 1_000_000_000 + i
            atime = (1_500_000_000 + i * 7) * 10**9 + 123_456_789
            if i % 50 == 7:
                atime = 900_000_000 * 10**9  # older than the mtime: the mtime is used
            info.pax_headers = {"atime": f"{atime // 10**9}.{atime % 10**9:09d}",
                                "ctime": "1700000000.5"}
            times[info.name] = (max(atime, info.mtime * 10**9), info.mtime * 10**9)
            tf.addfile(info, io.BytesIO(data))
    result = _in_process(buf.getvalue(), tmp_path, "plain")
    assert "error" not in result, result
    assert result["helper"] and result["taken"] > 200, result
    dest = tmp_path / "dest"
    for name, (atime_ns, mtime_ns) in times.items():
        st = (dest / name).stat()
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime_ns, mtime_ns), name
    assert _actual(dest) == _expected(buf.getvalue())


def test_files_of_an_archive_in_a_regular_file_travel_as_extents(tmp_path: Path) -> None:
    """From a regular file, every file with data that the helper takes travels as an
    extent (the helper copies it from the archive): the worker neither copies the data
    into a batch nor sends it. Empty files have nothing to copy."""
    archive = _archive(600, lambda i: (i * 397) % 20_000 if i % 9 else 0)
    result = _in_process(archive, tmp_path, "plain")
    assert "error" not in result, result
    # At least the four batches the helper may have in flight: 256 files.
    assert result["helper"] and result["extents"] > 200, result
    empty = len(range(0, 600, 9))
    assert result["taken"] - result["extents"] <= empty, result  # those carry no extent
    assert _actual(tmp_path / "dest") == _expected(archive)


def test_larger_files_are_copied_by_the_helper_from_the_archive(tmp_path: Path) -> None:
    """Files larger than a batch takes (here 70 KB to 3 MB) travel as extents too: the
    helper copies them from the archive into the file (or the worker does, those that
    come while the helper is as far behind as it may be)."""
    sizes = {i: 70_000 + i * 9_973 for i in range(100, 400, 7)}
    sizes[300] = 3_000_000
    archive = _archive(400, lambda i: sizes.get(i, (i * 97) % 5000))
    result = _in_process(archive, tmp_path, "plain")
    assert "error" not in result, result
    assert result["helper"] and result["extents"] > len(sizes) // 2, result
    assert result["extents"] + result["extents_here"] >= len(sizes) - 1, result
    assert _actual(tmp_path / "dest") == _expected(archive)


def test_the_rest_of_a_large_copy_goes_to_the_helper_once_it_runs_dry(
        tmp_path: Path) -> None:
    """The worker copies a large file itself while the helper is behind; once the
    helper has done all it was sent, it takes over the rest of that copy (it writes
    on from the descriptor's offset, which it shares) and the worker goes on parsing.
    The file is whole, byte for byte, and has its time."""
    # After the helper's start, files of 2.5 MB until it has as much in flight as it
    # may (32 MiB), then one of 128 MiB: copied here. The helper, let go then, has
    # about a quarter as much to copy as the worker.
    first = HELPER_AFTER + 1
    big = first + 16
    count = big + 4
    archive = _archive(count, lambda i: 1000 if i < first or i > big
                       else 128 << 20 if i == big else 2_500_000)
    result = _in_process(archive, tmp_path, f"release-when-copying:d{big % 10}/f{big:05d}")
    assert "error" not in result, result
    assert result["released_while_copying"], result
    assert result["extents_handed_over"] == 1, json.dumps(result)
    assert _actual(tmp_path / "dest") == _expected(archive)


def test_larger_files_are_copied_here_while_the_helper_is_behind(tmp_path: Path) -> None:
    """A run of large files: once the helper has as many batches or bytes in flight as
    it may, the worker copies the next ones from the archive itself instead of waiting
    for it (its core would stay idle). Here the helper is stopped, and the worker still
    reaches the archive's last file."""
    count = HELPER_AFTER + 20
    archive = _archive(count, lambda i: 9_000_000 + i if i >= HELPER_AFTER + 4 else 1000)
    last = f"d{(count - 1) % 10}/f{count - 1:05d}"
    result = _in_process(archive, tmp_path, f"stalled:{last}")
    assert "error" not in result, result
    assert result["last_made_while_stalled"], result
    assert result["extents"] >= 1 and result["extents_here"] >= 10, result
    # Every file after the helper's start (the 65th file starts it): the 16 large ones
    # and the 3 small ones before them, each an extent, copied by the helper or here.
    assert result["extents"] + result["extents_here"] == count - HELPER_AFTER - 1, result
    assert result["extents"] == result["taken"], result
    assert _actual(tmp_path / "dest") == _expected(archive)


def test_an_extent_past_the_end_of_a_truncated_archive_names_its_entry(
    tmp_path: Path,
) -> None:
    """The archive ends inside a large file's data: one error, naming that file (found
    by the helper's copy or by the reader's seek, whichever comes first)."""
    archive = _archive(200, lambda i: 2_000_000 if i == 150 else 1000)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        member = tf.getmember("d0/f00150")
    cut = archive[: member.offset_data + 1_000_000]
    result = _in_process(cut, tmp_path, "plain")
    assert result["helper"], result
    assert result["error"][0] == "MalformedArchiveError", result
    assert result["error"][2] == "d0/f00150", result
    assert "truncated" in result["error"][1], result


@pytest.mark.parametrize("claimed", [MAX_EXTENT, MAX_EXTENT + 1, (1 << 63) - 1])
def test_a_file_claiming_more_than_an_archive_holds_is_named_with_every_limit_off(
        claimed: int, tmp_path: Path) -> None:
    """With every limit off, a header may claim up to 2**63 bytes (base-256). The
    worker copies such a file itself, and hands the rest of that copy to the helper
    only when it is at most MAX_EXTENT bytes: the helper refuses a batch with a larger
    extent, and lost the batch's other files, and the error named the first of them
    ("d5/f00065: message too long"). The archive's end names the file, whoever meets
    it."""
    small = _archive(HELPER_AFTER + 40, lambda i: 1000)
    with tarfile.open(fileobj=io.BytesIO(small)) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    info = tarfile.TarInfo("claims")
    info.size = claimed
    header = info.tobuf(tarfile.GNU_FORMAT)
    assert header[124] & 0x80  # the size in base 256
    archive = tmp_path / "claims.tar"
    archive.write_bytes(small[:end] + header + b"x" * (20 << 20))
    dest = tmp_path / "dest"
    dest.mkdir()
    off = Limits(**{name: None for name in (
        "max_bytes", "max_entries", "max_file_size", "max_path_length", "max_path_depth",
        "max_xattr_bytes", "max_memory", "reserve")})
    with pytest.raises(MalformedArchiveError) as caught:
        untar(archive, dest, limits=off)
    assert caught.value.entry == "claims", caught.value
    assert "truncated" in str(caught.value), caught.value


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE,
         linkname: str = "", mode: int = 0o644, owner: int = 0, mtime: int = 1_500_000_000
         ) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.uid = info.gid = owner
    info.mtime = mtime
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def _files_for_the_helper_to_start(tf: tarfile.TarFile) -> None:
    for i in range(100):
        _add(tf, f"a/f{i:03d}", b"x" * i)


def _tricky_archive() -> bytes:
    """After enough small files for the helper, every way in which a file created by
    name meets something in its way, between many small files (batches mix them)."""
    buf = io.BytesIO()
    big = bytes(range(256)) * 400  # 102,400 bytes: an extent
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "owned", kind=tarfile.DIRTYPE, mode=0o755, owner=1000)
        _add(tf, "sg", kind=tarfile.DIRTYPE, mode=0o2775)
        _add(tf, "dd", kind=tarfile.DIRTYPE, mode=0o755)
        for i in range(100):
            _add(tf, f"a/f{i:03d}", f"first {i}".encode() * (i % 9), mtime=1_000_000 + i)
        for round_ in range(3):
            _add(tf, "dup", f"dup {round_}".encode() * 50, mtime=2_000_000 + round_)
            _add(tf, "bigdup", big[round_:] + big[:round_], mtime=2_000_100 + round_)
            for i in range(40):
                _add(tf, f"b{round_}/f{i:03d}", f"filler {round_} {i}".encode())
        _add(tf, "fd1", b"a file first")
        _add(tf, "fd1", kind=tarfile.DIRTYPE, mode=0o750)
        _add(tf, "fd1/x", b"then below it")
        _add(tf, "hl", b"linked to")
        _add(tf, "hl2", kind=tarfile.LNKTYPE, linkname="hl")
        _add(tf, "sl", b"a file, then a symlink")
        _add(tf, "sl", kind=tarfile.SYMTYPE, linkname="hl")
        for i in range(30):
            _add(tf, f"dd/f{i:02d}", f"in dd {i}".encode())
            _add(tf, f"owned/f{i:02d}", f"owned {i}".encode())  # the helper cannot
            _add(tf, f"sg/f{i:02d}", f"setgid {i}".encode())
        _add(tf, "dd", kind=tarfile.SYMTYPE, linkname="a")
        # Symlinks: the helper makes them too.
        _add(tf, "s1", kind=tarfile.SYMTYPE, linkname="a/f001", mtime=3_000_001)
        _add(tf, "s2", kind=tarfile.SYMTYPE, linkname="nowhere", mtime=3_000_002)
        _add(tf, "s3", kind=tarfile.SYMTYPE, linkname="a/f002")
        _add(tf, "s3", b"a file where a symlink was")
        _add(tf, "s4", kind=tarfile.SYMTYPE, linkname="b0")
        _add(tf, "s4/new", b"through a symlink to a directory")
        _add(tf, "s5", kind=tarfile.SYMTYPE, linkname="a/f003")
        _add(tf, "s5h", kind=tarfile.LNKTYPE, linkname="s5")
        _add(tf, "pre/sym", kind=tarfile.SYMTYPE, linkname="file")
        for i in range(5):
            _add(tf, f"owned/sl{i}", kind=tarfile.SYMTYPE, linkname=f"f{i:02d}")
        _add(tf, "dd2/f", b"under a new directory")
        for name in ("pre/file", "pre/dir", "pre/link", "pre/biglink"):
            _add(tf, name, (name.encode() * 30000)[: 70_000 if "big" in name else 900])
        for i in range(100):
            _add(tf, f"c/f{i:03d}", f"last {i}".encode() * (i % 7))
    return buf.getvalue()


def _victim_and_dest(tmp_path: Path, name: str) -> tuple[Path, Path, tree.Snapshot]:
    """A victim tree outside, and a destination that already holds what the archive
    replaces: a file, a directory with files, symlinks to the victim's files."""
    victim = tmp_path / f"victim-{name}"
    victim.mkdir()
    (victim / "secret").write_bytes(b"do not touch")
    (victim / "big").write_bytes(b"do not touch either")
    dest = tmp_path / name
    (dest / "pre" / "dir").mkdir(parents=True)
    (dest / "pre" / "dir" / "inside").write_bytes(b"old")
    (dest / "pre" / "file").write_bytes(b"old file")
    (dest / "pre" / "sym").write_bytes(b"a file where the archive has a symlink")
    (dest / "pre" / "link").symlink_to(victim / "secret")
    (dest / "pre" / "biglink").symlink_to(victim / "big")
    (dest / "dup").symlink_to(victim / "secret")
    return victim, dest, tree.snapshot(victim, ctime=True, nlink=True)


def test_files_created_by_the_helper_give_the_tree_the_worker_alone_gives(
    tmp_path: Path,
) -> None:
    """The worker alone against the worker with its helper creating files by name, the
    same archive into the same kind of destination: the same tree; the helper created
    files, and gave some back (those in the way, those of the directory of uid 1000)."""
    archive = _tricky_archive()
    trees = {}
    for mode in ("alone", "plain"):
        victim, dest, before = _victim_and_dest(tmp_path, mode)
        result = _in_process(archive, tmp_path, mode, dest)
        assert "error" not in result, result
        tree.assert_same(before, tree.snapshot(victim, ctime=True, nlink=True),
                         "the victim outside changed")
        trees[mode] = tree.snapshot(dest, nlink=True)
        if mode == "plain":
            assert result["by_name"] > 300, result
            # dup x2, bigdup x2, pre/* x5, s3, the 35 names in "owned" (at least)
            assert result["given_back"] >= 45, result
    listed = {"owned", "sg", "fd1"}  # the others' times are those of their making

    def implied_dir_time(path: str, key: str) -> bool:
        return (key == "mtime_ns" and trees["alone"][path]["type"] == "dir"
                and path not in listed)

    tree.assert_same(trees["alone"], trees["plain"], "the helper made another tree",
                     ignore=implied_dir_time)
    dest = tmp_path / "plain"
    assert (dest / "dup").read_bytes() == b"dup 2" * 50
    assert (dest / "fd1" / "x").read_bytes() == b"then below it"
    assert os.readlink(dest / "dd") == "a" and os.readlink(dest / "sl") == "hl"
    assert os.readlink(dest / "s1") == "a/f001" and os.lstat(dest / "s1").st_mtime == 3_000_001
    assert (dest / "b0" / "new").read_bytes() == b"through a symlink to a directory"
    assert os.readlink(dest / "pre" / "sym") == "file"
    assert (dest / "owned" / "f07").stat().st_uid == 0


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_files_created_by_the_helper_never_follow_a_planted_symlink(
    user: str, tmp_path: Path, unpriv: hardening.Unprivileged
) -> None:
    """Through the command line (``pivot`` as root, ``userns`` as uid 65534), a large
    archive read from a file (the helper creates its files) into a destination holding
    symlinks to a victim outside at the names the archive writes: the victim is
    unchanged, and the tree is the one ``--confine openat2`` makes (no helper)."""
    names = [f"f{i:05d}" for i in range(6000)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i, name in enumerate(names):
            _add(tf, f"d/{name}", f"archive {i}\n".encode() * (i % 40), mtime=1_000_000 + i)
    archive = buf.getvalue()
    assert len(archive) >= 4 << 20  # the worker may fork a helper from this size on
    base = unpriv.mkdir("base") if user == "nobody" else tmp_path
    victim = base / "victim"
    victim.mkdir()
    (victim / "secret").write_bytes(b"do not touch")
    if user == "nobody":
        os.chown(victim, hardening.NOBODY, hardening.NOBODY)
        os.chown(victim / "secret", hardening.NOBODY, hardening.NOBODY)
    before = tree.snapshot(victim, ctime=True, nlink=True)
    path = base / "many.tar"
    path.write_bytes(archive)
    path.chmod(0o644)
    dests = {}
    for how in ("file", "openat2"):
        dest = base / f"dest-{how}"
        (dest / "d").mkdir(parents=True)
        for name in names[100::7]:  # after the helper started
            (dest / "d" / name).symlink_to(victim / "secret")
        if user == "nobody":
            for dirpath, dirnames, filenames in os.walk(dest):
                for entry in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
                    os.lchown(entry, hardening.NOBODY, hardening.NOBODY)
        args = ["untar", str(path), str(dest)]
        if how == "openat2":
            args[1:1] = ["--confine", "openat2"]
        if user == "root":
            proc = subprocess.run([*CLI, *args], capture_output=True, timeout=120)
            rc, err = proc.returncode, proc.stderr.decode()
        else:
            result = unpriv.cli(*args, timeout=120)
            rc, err = result.rc, result.err
        assert rc == 0, err
        dests[how] = tree.snapshot(dest)
    tree.assert_same(before, tree.snapshot(victim, ctime=True, nlink=True),
                     "the victim outside changed")
    tree.assert_same(dests["openat2"], dests["file"], "the helper made another tree",
                     ignore=lambda path, key: key == "mtime_ns" and path in {".", "d"})
    assert (base / "dest-file" / "d" / names[107]).read_bytes() == b"archive 107\n" * 27


def _aliases(case: str) -> bytes:
    """Two names of one file (``s/x`` and ``real/x``, ``s -> real``), the earlier one
    handed to the helper by name, the later one made while it is still in flight."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "real", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "s", kind=tarfile.SYMTYPE, linkname="real")
        _files_for_the_helper_to_start(tf)
        first, second = ("real", "s") if case == "large-reversed" else ("s", "real")
        if case.startswith("large"):  # the worker copies the second itself (bytes)
            _add(tf, f"{first}/big", b"A" * 20_000_000, mtime=1_000)
            _add(tf, f"{second}/big", b"B" * 20_000_000, mtime=2_000)
        elif case == "small-after-large":  # a full batch, 34 MB in flight
            _add(tf, "s/big", b"A" * 34_000_000, mtime=1_000)
            for i in range(64):
                _add(tf, f"b/f{i:03d}", b"y")
            _add(tf, "real/big", b"B small", mode=0o600, mtime=2_000)
        else:  # "batches": the helper is behind by as many batches as it may be
            _add(tf, "s/x", b"A", mtime=1_000)
            _add(tf, "s/y", b"A", mtime=1_000)
            for i in range(300):
                _add(tf, f"b/f{i:03d}", b"y" * 100)
            _add(tf, "real/x", b"B", mode=0o600, mtime=2_000)
            _add(tf, "real/y", kind=tarfile.DIRTYPE, mode=0o755)
            _add(tf, "real/y/inner", b"C")
        _add(tf, "zzz", b"last")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["large", "large-reversed", "small-after-large", "batches"])
def test_two_names_of_one_file_through_a_symlink_as_without_the_helper(
    case: str, tmp_path: Path,
) -> None:
    """``s/x`` and ``real/x`` are one file when ``s -> real``: whatever the helper still
    has in flight, the later entry wins, as when the worker works alone (a name below a
    symlink never goes to the helper by name, and the worker settles with the helper
    before it makes one)."""
    archive = _aliases(case)
    trees = {}
    for mode in ("alone", "plain", "stalled:never:0.5"):
        area = tmp_path / mode.partition(":")[0]
        area.mkdir()
        result = _in_process(archive, area, mode)
        assert "error" not in result, (mode, result)
        trees[mode] = _actual(area / "dest")
    assert trees["plain"] == trees["alone"]
    assert trees["stalled:never:0.5"] == trees["alone"]
    assert (tmp_path / "alone" / "dest" / "real" / "big" if case != "batches" else
            tmp_path / "alone" / "dest" / "real" / "x").read_bytes()[:1] == b"B"


def test_a_name_below_a_file_the_helper_creates_fails_as_without_it(tmp_path: Path) -> None:
    """A file, then a name below it with no directory entry: the parent cannot be made
    (not a directory), with or without the helper (the worker waits for the helper's
    file before it makes the parent)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _files_for_the_helper_to_start(tf)
        _add(tf, "p", b"a file")
        _add(tf, "p/y", b"below a file")
    for mode in ("alone", "plain"):
        (tmp_path / mode).mkdir()
        result = _in_process(buf.getvalue(), tmp_path / mode, mode)
        assert result["error"][0] == "ArchiveError", (mode, result)
        assert result["error"][2] == "p/y", (mode, result)
        assert "not a directory" in result["error"][1], (mode, result)
        assert (tmp_path / mode / "dest" / "p").read_bytes() == b"a file"


def test_whiteouts_after_files_the_helper_creates_as_without_it(tmp_path: Path) -> None:
    """A layer: files, then a whiteout of one of them and an opaque marker in their
    directory (the worker waits for the helper's files before a marker): the tree is the
    one the worker alone makes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _files_for_the_helper_to_start(tf)
        _add(tf, "x", b"whited out later")
        _add(tf, "y", b"kept")
        _add(tf, ".wh.x")
        _add(tf, "d/a", b"in d")
        _add(tf, "d/.wh..wh..opq")
        _add(tf, "d/b", b"after the marker")
    trees = {}
    for mode in ("layer-alone", "layer"):
        dest = tmp_path / mode / "dest"
        (dest / "d").mkdir(parents=True)
        (dest / "d" / "lower").write_bytes(b"from a lower layer")
        result = _in_process(buf.getvalue(), tmp_path / mode, mode, dest)
        assert "error" not in result, result
        trees[mode] = tree.snapshot(dest)
    tree.assert_same(trees["layer-alone"], trees["layer"], "the helper made another tree",
                     ignore=lambda path, key: key == "mtime_ns" and path in {".", "a", "d"})
    # A whiteout hides what lower layers have, not what its own layer wrote.
    assert "x" in trees["layer"] and "d/lower" not in trees["layer"], sorted(trees["layer"])


def test_no_helper_under_openat2_and_nothing_lands_in_the_working_directory(
    tmp_path: Path,
) -> None:
    """``--confine openat2`` runs the unpacker in the caller's process: no helper is
    forked there (the caller's threads), and no file is created by name from the
    caller's working directory, which here holds the archive's directory ``d``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(6000):
            _add(tf, f"d/f{i:05d}", f"archive {i}\\n".encode() * (i % 40))
    archive = buf.getvalue()
    assert len(archive) >= 4 << 20  # the jailed worker would fork a helper
    path = tmp_path / "many.tar"
    path.write_bytes(archive)
    cwd = tmp_path / "cwd"
    (cwd / "d").mkdir(parents=True)
    (cwd / "d" / "keep").write_bytes(b"the caller's")
    before = tree.snapshot(cwd, ctime=True, nlink=True)
    dest = tmp_path / "dest"
    proc = subprocess.Popen([*CLI, "untar", "--confine", "openat2", str(path), str(dest)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    forked = []
    while proc.poll() is None:
        forked += child_pids(proc.pid)
        time.sleep(0.002)
    _out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert not forked, forked
    tree.assert_same(before, tree.snapshot(cwd, ctime=True, nlink=True),
                     "the working directory changed")
    assert len(os.listdir(dest / "d")) == 6000


@pytest.mark.parametrize("how", ["gz-file", "zst-pipe"])
def test_compressed_input_has_the_helper_too(how: str, tmp_path: Path) -> None:
    """While the parent decompresses, the worker still forks its helper (a .tar.gz
    file of 1 MiB or more, or a pipe of unknown size), and the tree is exact."""
    import gzip

    import zstandard

    archive = _archive(20_000, lambda i: (i * 331) % 3000)
    packed = (gzip.compress(archive, 1) if how.startswith("gz")
              else zstandard.ZstdCompressor().compress(archive))
    assert how.endswith("pipe") or len(packed) >= 1 << 20
    path = tmp_path / "many.tar.x"
    path.write_bytes(packed)
    dest = tmp_path / "dest"
    feed = None
    if how.endswith("file"):
        proc = subprocess.Popen([*CLI, "untar", str(path), str(dest)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    else:
        feed = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
        assert feed.stdout is not None
        proc = subprocess.Popen([*CLI, "untar", "-", str(dest)], stdin=feed.stdout,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        feed.stdout.close()
    helpers: set[int] = set()
    while proc.poll() is None:
        for worker in hardening.workers_of(proc.pid):
            helpers.update(hardening.workers_of(worker))
        time.sleep(0.002)
    _out, err = proc.communicate()
    if feed is not None:
        feed.wait()
    assert proc.returncode == 0, err.decode()
    assert helpers, "no helper process was seen during the extraction"
    assert _actual(dest) == _expected(archive)


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_file_over_a_directory_of_ours_then_a_name_below_it_as_without_the_helper(
    kind: str, tmp_path: Path
) -> None:
    """A directory the archive made (with a file in it), then a file or a symlink at its
    name, then a name below that: the worker alone replaces the directory and fails the
    name below it ("not a directory"). With the helper the same: the file or symlink is
    not sent by name over a directory of ours (the helper would give it back, and the
    name below would meanwhile have been written into the old directory, then lost with
    it when the file was made: no error, a file missing)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _files_for_the_helper_to_start(tf)
        _add(tf, "q", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "q/old", b"in the directory")
        for i in range(70):
            _add(tf, f"z/f{i:02d}", b"between")
        if kind == "file":
            _add(tf, "q", b"now a file")
        else:
            _add(tf, "q", kind=tarfile.SYMTYPE, linkname="z")
        _add(tf, "q/y", b"below it")
        for i in range(70):
            _add(tf, f"w/f{i:02d}", b"after")
    outcomes: dict[str, tuple[Any, tree.Snapshot]] = {}  # (the JSON error, the tree)
    for mode in ("alone", "plain"):
        (tmp_path / mode).mkdir()
        result = _in_process(buf.getvalue(), tmp_path / mode, mode)
        dest = tmp_path / mode / "dest"
        outcomes[mode] = (result.get("error"), tree.snapshot(dest))
        if mode == "plain":
            assert result["by_name"] > 100, result
    assert outcomes["plain"][0] == outcomes["alone"][0]
    snapshots = {mode: snapshot for mode, (_error, snapshot) in outcomes.items()}
    tree.assert_same(snapshots["alone"], snapshots["plain"], "the helper made another tree",
                     ignore=lambda path, key: (key == "mtime_ns"
                                               and snapshots["alone"][path]["type"] == "dir"))
    if kind == "file":
        assert outcomes["alone"][0][2] == "q/y", outcomes["alone"]
        assert not (tmp_path / "plain" / "dest" / "q").is_dir()
    else:
        assert (tmp_path / "plain" / "dest" / "z" / "y").read_bytes() == b"below it"


@pytest.mark.parametrize("number, name", [(9, "SIGKILL"), (6, "SIGABRT"), (17, "SIGCHLD"),
                                          (31, "SIGSYS"), (200, "signal 200")])
def test_the_helper_names_a_signal_without_the_signal_module(number: int, name: str) -> None:
    """The worker cannot import ``signal`` once jailed (and it would load ``enum`` at
    start-up): the helper's killer is named from ``_signal``, as ``signal`` names it."""
    import signal

    from chrootarchive.engine.finisher import signal_name

    assert signal_name(number) == name
    if number < 65:
        assert signal.Signals(number).name == name
