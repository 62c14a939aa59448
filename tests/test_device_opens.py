"""No device, FIFO or socket is ever opened, by the worker or the parent (issue 14, item 4).

A device node's ``open`` runs its driver: reading a tree or an image must never reach
one, even when a racer swaps a regular file for a device while the tree is read. The
opens are counted with inotify (``IN_OPEN`` on a ``c 1 3`` node made here), which sees
every open of that inode that gets past the kernel's checks, by any process.
"""

from __future__ import annotations

import contextlib
import ctypes  # noqa: TID251 - inotify in the test only (not in os)
import ctypes.util  # noqa: TID251
import json
import os
import select
import socket
import stat
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chrootarchive import _fdio
from helpers.cli import run_cli
from helpers.oci_images import OCI_CONFIG, Entry, OCIBuilder, canonical, make_tar, sha256

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")

_IN_OPEN = 0x20
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")


class OpenCounter:
    """Counts opens of one path with inotify (``IN_OPEN``)."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.opens = 0

    def count(self) -> int:
        """Opens seen so far (drains the queue)."""
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                if mask & _IN_OPEN:
                    self.opens += 1
                offset += _EVENT.size + length
        return self.opens

    def close(self) -> None:
        os.close(self.fd)


def _device(path: Path) -> None:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers


@pytest.fixture
def null_node(tmp_path: Path) -> Iterator[tuple[Path, OpenCounter]]:
    """A ``c 1 3`` node outside any tree, watched: racers hard-link it into place."""
    node = tmp_path / "null"
    _device(node)
    counter = OpenCounter(node)
    # The counter works: one deliberate open is seen.
    os.close(os.open(node, os.O_RDONLY))
    assert counter.count() == 1
    counter.opens = 0
    try:
        yield node, counter
    finally:
        counter.close()


_RACER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
src, stop = sys.argv[1].encode(), sys.argv[2]
pairs = [(f"{src.decode()}/t{i:02}".encode(), f"{src.decode()}/t{i:02}.other".encode())
         for i in range(int(sys.argv[3]))]
print("ready", flush=True)
n = 0
while not os.path.exists(stop):
    for a, b in pairs:
        libc.renameat2(-100, a, -100, b, 2)  # RENAME_EXCHANGE
    n += 1
print(n, flush=True)
"""


@contextlib.contextmanager
def _racing(src: Path, other: Callable[[int, Path], None], targets: int) -> Iterator[None]:
    """A racer process that keeps exchanging each ``tNN`` (a regular file) with
    ``tNN.other`` (made by ``other``: a hard link to the watched device, say),
    atomically (``RENAME_EXCHANGE``)."""
    for i in range(targets):
        (src / f"t{i:02}").write_bytes(b"x" * 64)
        other(i, src / f"t{i:02}.other")
    stop = src.parent.parent / "stop-racer"
    proc = subprocess.Popen([sys.executable, "-I", "-c", _RACER, str(src), str(stop),
                             str(targets)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=30)
        assert int(out) > 0  # it did swap


def test_open_regular_refuses_every_other_type(tmp_path: Path,
                                               null_node: tuple[Path, OpenCounter]) -> None:
    """The helper the parent and the in-process mechanism use: a device, FIFO, socket or
    symlink is reported, never opened. (A jailed worker's variant relies on its nodev
    mounts: the racer tests below cover it.)"""
    node, counter = null_node
    os.link(node, tmp_path / "dev")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("file", tmp_path / "link")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "file").write_bytes(b"data")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("dev", "fifo", "link", "sock"):
            fd, st = _fdio.open_regular(name, dir_fd)
            assert fd == -1 and not stat.S_ISREG(st.st_mode)
        fd, st = _fdio.open_regular("file", dir_fd)
        try:
            assert os.read(fd, 10) == b"data" and st.st_size == 4
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
        sock.close()
    assert counter.count() == 0


def _race(tmp_path: Path, node: Path, runs: int, command: list[str]) -> None:
    """Run ``command`` (SRC_ROOT and OUT filled in) ``runs`` times under a racer."""
    root = tmp_path / "root"
    src = root / "src"
    src.mkdir(parents=True)
    with _racing(src, lambda _, path: os.link(node, path), 30):
        for run in range(runs):
            out = tmp_path / f"out{run}"
            if command[0] == "cp":
                out.mkdir()
            args = [str(root) if a == "SRC_ROOT" else str(out) if a == "OUT" else a
                    for a in command]
            rc, _, err = run_cli(*args)
            assert rc == 0, err


def test_tar_root_under_a_racer_never_opens_the_device(
    mechanism: str, tmp_path: Path, null_node: tuple[Path, OpenCounter]
) -> None:
    """``tar --root`` while a racer swaps a regular file for a device: zero opens."""
    node, counter = null_node
    _race(tmp_path, node, 15,
          ["tar", "--confine", mechanism, "--root", "SRC_ROOT", "/src", "-o", "OUT"])
    assert counter.count() == 0


def test_cp_from_root_under_a_racer_never_opens_the_device(
    tmp_path: Path, null_node: tuple[Path, OpenCounter]
) -> None:
    """``cp --from-root`` likewise."""
    node, counter = null_node
    _race(tmp_path, node, 15, ["cp", "--from-root", "SRC_ROOT", "/src", "OUT"])
    assert counter.count() == 0


_OTHERS = ("dir", "symlink", "fifo", "device")


def test_a_listing_gone_stale_is_never_trusted(
    mechanism: str, tmp_path: Path, null_node: tuple[Path, OpenCounter]
) -> None:
    """The listing's file types (``d_type``) only choose the first call: while a racer
    exchanges files with directories, symlinks, FIFOs and the device, every entry is
    packed as what its descriptor showed (a file's data is the file's), the device is
    never opened, and in the caller's process (``openat2``) no FIFO either."""
    node, counter = null_node
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo_counter = OpenCounter(fifo)
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # the counter sees a FIFO's open
    assert fifo_counter.count() == 1
    fifo_counter.opens = 0

    def other(i: int, path: Path) -> None:
        kind = _OTHERS[i % len(_OTHERS)]
        if kind == "dir":
            path.mkdir()
            (path / "inner").write_bytes(b"in")
        elif kind == "symlink":
            path.symlink_to("elsewhere")
        else:
            os.link(fifo if kind == "fifo" else node, path)

    root = tmp_path / "root"
    src = root / "src"
    src.mkdir(parents=True)
    allowed = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
               "fifo": tarfile.FIFOTYPE, "device": tarfile.CHRTYPE}
    try:
        with _racing(src, other, 32):
            for run in range(10):
                out = tmp_path / f"out{run}.tar"
                rc, _, err = run_cli("tar", "--confine", mechanism, "--root", root, "/src/",
                                     "-o", out)
                assert rc == 0, err
                with tarfile.open(out) as tar:
                    for member in tar.getmembers():
                        first = member.name.removeprefix("./").split("/")[0]
                        if not first.startswith("t"):
                            continue
                        kind = _OTHERS[int(first[1:3]) % len(_OTHERS)]
                        if member.name.endswith("/inner"):
                            assert kind == "dir" and member.isreg()
                            continue
                        # The FIFO and the device are one inode each: hard links.
                        assert member.type in (tarfile.REGTYPE, tarfile.LNKTYPE,
                                               allowed[kind]), member.name
                        assert member.type != tarfile.LNKTYPE or kind in ("fifo", "device")
                        if member.isreg():
                            data = tar.extractfile(member)
                            assert data is not None and data.read() == b"x" * 64
        assert counter.count() == 0
        if mechanism == "openat2":
            assert fifo_counter.count() == 0
    finally:
        fifo_counter.close()


@pytest.mark.parametrize("which", ["manifest", "config", "layer", "index.json"])
def test_unpack_image_refuses_a_device_blob_without_opening_it(
    which: str, tmp_path: Path, null_node: tuple[Path, OpenCounter]
) -> None:
    """An OCI layout where a document or blob is a device node: refused, never opened."""
    node, counter = null_node
    layout = tmp_path / "layout"
    oci = OCIBuilder(layout)
    layer_tar = make_tar([])
    layer = oci.layer(layer_tar, "none")
    config = oci.blob(canonical({"architecture": "amd64", "os": "linux",
                                 "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar)]},
                                 "config": {}}), OCI_CONFIG)
    manifest = oci.manifest(config, [layer])
    oci.tag(manifest, "latest")
    victim = {"manifest": oci.path(manifest), "config": oci.path(config),
              "layer": oci.path(layer), "index.json": layout / "index.json"}[which]
    victim.unlink()
    os.link(node, victim)
    rc, _, err = run_cli("unpack-image", layout, tmp_path / "rootfs")
    assert rc != 0, err
    assert counter.count() == 0


def test_unpack_image_refuses_a_fifo_manifest_without_blocking(tmp_path: Path) -> None:
    """A FIFO in place of a blob is refused at once (opening it would wait for a writer,
    or wake one)."""
    layout = tmp_path / "layout"
    oci = OCIBuilder(layout)
    desc = oci.image([make_tar([])], "none")
    oci.tag(desc, "latest")
    path = oci.path(desc)
    path.unlink()
    os.mkfifo(path)
    rc, _, err = run_cli("unpack-image", layout, tmp_path / "rootfs", timeout=20)
    assert rc != 0 and "not a regular file" in err, err


# -- a path the caller names: ARCHIVE, IMAGE ---------------------------------------------


@pytest.mark.parametrize("command", ["untar", "apply-layer", "unpack-image"])
@pytest.mark.parametrize("how", ["node", "symlink"])
def test_an_input_path_that_is_a_device_is_refused_unopened(
    command: str, how: str, tmp_path: Path, null_node: tuple[Path, OpenCounter]
) -> None:
    """ARCHIVE or IMAGE is a device node, or a symlink to one (a hostile download
    directory can hold ``x.tar -> /dev/watchdog``): refused, with how to read a device
    on purpose, and never opened."""
    node, counter = null_node
    path = tmp_path / "input.tar"
    if how == "node":
        os.link(node, path)
    else:
        path.symlink_to(node)
    (tmp_path / "dest").mkdir()
    rc, _, err = run_cli(command, path, tmp_path / "dest")
    assert rc != 0 and "a character device: not opened" in err and "'-'" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert counter.count() == 0


@pytest.mark.parametrize("command", ["untar", "unpack-image"])
def test_an_input_path_that_is_a_named_fifo_is_refused_at_once(
    command: str, tmp_path: Path
) -> None:
    """A FIFO that no one writes: refused without waiting (opening it would block until
    a writer came, or wake one that waits)."""
    fifo = tmp_path / "input.tar"
    os.mkfifo(fifo)
    (tmp_path / "dest").mkdir()
    rc, _, err = run_cli(command, fifo, tmp_path / "dest", timeout=20)
    assert rc != 0 and "a FIFO: not opened" in err, err


@pytest.mark.parametrize("command", ["untar", "unpack-image"])
def test_an_input_path_that_is_an_anonymous_pipe_is_read(
    command: str, tmp_path: Path
) -> None:
    """``<(command)``: the shell passes ``/dev/fd/N``, an anonymous pipe (pipefs), which
    is opened (that never blocks and wakes no one) and read."""
    source = tmp_path / "input.tar"
    if command == "untar":
        source.write_bytes(make_tar([Entry("d/f", data=b"piped\n")]))
    else:
        layout = tmp_path / "layout"
        oci = OCIBuilder(layout)
        oci.tag(oci.image([make_tar([Entry("d/f", data=b"piped\n")])], "none"), "latest")
        subprocess.run(["tar", "-C", layout, "-cf", source, "."], check=True)
    proc = subprocess.run(
        ["bash", "-c", 'exec "$0" -m chrootarchive "$1" <(cat "$2") "$3"',
         sys.executable, command, source, tmp_path / "dest"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dest" / "d" / "f").read_bytes() == b"piped\n"


# -- the jailed reader needs nodev mounts --------------------------------------------------

SECCOMP_RUN = Path(__file__).resolve().parent / "helpers" / "seccomp_run.py"

_IN_NAMESPACE = r"""
import json, subprocess, sys

def flags():
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] + " " + line.split()[5] for line in f]

before = flags()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr,
                  "before": before, "after": flags()}))
"""


def _where_unshare_fails(*args: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the CLI where ``unshare`` fails (a seccomp filter denies it), from a private
    mount namespace made for the test; return its ``rc``, ``out``, ``err`` and the
    namespace's mounts (mount point and per-mount options) ``before`` and ``after``."""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         sys.executable, "-c", _IN_NAMESPACE,
         sys.executable, str(SECCOMP_RUN), "--deny", "unshare:EPERM", "--",
         sys.executable, "-m", "chrootarchive", *(os.fspath(a) for a in args)],
        capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_a_jail_that_cannot_be_made_nodev_does_not_read(tmp_path: Path) -> None:
    """``chroot`` without a mount namespace of its own (``unshare`` refused) cannot make
    its mounts ``nodev`` without changing everyone's: it does not try (the namespace's
    mount flags are the same after), and a pack job refuses to start there (exit 3,
    saying why), while unpacking, which opens nothing it did not create, still works.
    With ``auto``, ``tar`` goes on to the in-process ``openat2``."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    run = _where_unshare_fails("tar", "--confine", "chroot", src, "-o", tmp_path / "a.tar")
    assert run["before"] == run["after"]
    assert run["rc"] == 3 and "nodev" in run["err"], run["err"]
    assert len(run["err"].strip().splitlines()) == 1, run["err"]

    run = _where_unshare_fails("tar", "--json", src, "-o", tmp_path / "b.tar")
    assert run["before"] == run["after"]
    assert run["rc"] == 0, run["err"]
    assert json.loads(run["out"])["confinement"] == "openat2", run["out"]
    with tarfile.open(tmp_path / "b.tar") as tar:
        member = tar.extractfile("f")
        assert member is not None and member.read() == b"data"

    (tmp_path / "a.tar").write_bytes(make_tar([Entry("d/f", data=b"x")]))
    run = _where_unshare_fails("untar", "--confine", "chroot", tmp_path / "a.tar",
                               tmp_path / "dest")
    assert run["before"] == run["after"]
    assert run["rc"] == 0, run["err"]
    assert (tmp_path / "dest" / "d" / "f").read_bytes() == b"x"
