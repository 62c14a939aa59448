"""Run by any Python from 3.11 on (tests/test_refcounts.py): call every entry point of the
compiled modules many times, on inputs that give back None, bools, small ints and
interned strings, and print how far the reference counts of those objects moved.

The compiled modules are built once, for the stable ABI, and loaded by every Python
from 3.11 on. From 3.12 those objects are immortal, and headers of one version count
their references in a way another version does not undo (3.11's count inline, 3.13's
return None without a reference): a count that drifts brings the interpreter down
("none_dealloc", "bool_dealloc") far from the fault. Standard library only, so that a
bare interpreter runs it: ``python refcount_probe.py PACKAGE_PARENT ROUNDS``.
"""

from __future__ import annotations

import gc
import io
import json
import os
import sys
import tarfile
import tempfile


def _archive() -> bytes:
    """A file, a symlink and a file with a times-only PAX header, then the end."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("file"), io.BytesIO(b""))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "file"
        tar.addfile(link)
    plain = out.getvalue()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        timed = tarfile.TarInfo("timed")
        timed.pax_headers = {"mtime": "1.5", "atime": "2.25"}
        tar.addfile(timed, io.BytesIO(b""))
    return plain[:1024] + out.getvalue()


GETPID = {"x86_64": 39, "aarch64": 172}[os.uname().machine]


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    rounds = int(sys.argv[2])
    from chrootarchive import _syscall
    from chrootarchive.engine import _finish, finisher
    from chrootarchive.tarformat import _ustar, reader

    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from helpers.batch_members import BatchMembers  # run as a script: tests/ for helpers

    data = bytearray(_archive())
    zero = bytearray(1024)
    kinds, regular = reader._ENTRY_KINDS, reader.REGULAR

    class Batch(_finish.Batch, BatchMembers):

        def __init__(self) -> None:
            self._names, self._own, self._sizes, self._name_sizes = [], [], [], []
            self._numbers, self._paths, self._data = [], bytearray(), bytearray()
            self.pending = set()
            self._extents, self._first_extent = 0, -1
            self.in_flight_bytes = self.extents = self.taken = self.by_name = 0
            self._max_data, self._batch_extents = 1 << 20, 1 << 20

        def _send(self) -> None:
            self.__init__()  # type: ignore[misc]

        def _can_send(self, sends: int, extra: int) -> bool:
            return False

    def calls(directory: str) -> None:
        for at in (0, 512, 1024, len(data) - 512):
            _ustar.ustar(data, at, len(data))
            _ustar.entry(data, at, len(data), reader.TarEntry, kinds, regular)
            _ustar.pax_entry(data, at, len(data), reader.TarEntry, kinds, regular, 4096)
        assert _ustar.ustar(zero, 0, 1024) is None
        assert _ustar.ustar(zero, 0, 100) is None  # no whole block
        assert _ustar.entry(zero, 0, 1024, reader.TarEntry, kinds, regular) is None
        entry = reader.TarEntry("name", regular, 0o644, 0, 0, 0, 0)
        assert entry.atime_ns is None and entry.devmajor == 0 and entry.linkname == ""
        del entry
        batch = Batch()
        assert batch.add_new("p", b"p", 0o644, b"", -1, 0, 0, 0, "p", None) is True
        assert batch.add_new("q", b"q", 0o644, b"", 0, 1 << 20, 0, 0, "q", None) is False
        assert batch.add_new("r", b"r", 0o644, b"", 0, 1 << 63, 0, 0, "r", None) is False
        del batch
        assert _ustar.byte_sum(b"") == 0 and _ustar.byte_sum(b"\x01") == 1
        assert _syscall.syscall(GETPID) == os.getpid()
        assert _syscall.syscall(GETPID, None, 0, 1, -1) == os.getpid()
        assert _syscall.syscall(-1) < 0  # -ENOSYS
        assert _syscall.dlopen("libc.so.6") is True
        assert _syscall.dlopen("/nonexistent/libnothing.so") is False
        assert _syscall.address(b"a") != 0
        held = bytearray(8)
        try:  # an error after a buffer is held: it is let go
            _syscall.syscall(GETPID, held, 1.5)  # type: ignore[arg-type]
        except TypeError:
            pass
        held.append(0)  # (a buffer still held could not be resized)
        assert _syscall.syscall(GETPID, b"x", held, 2**64 - 1) == os.getpid()
        name = b"made"
        layout = finisher._layout(1).pack(1, len(name), 0, 0, -1, 0o644)
        assert _finish.finish(finisher._COUNT.pack(1) + layout + name + b"x", [], -1,
                              0) == (0, 0, ())
        os.unlink(os.path.join(directory, "made"))
        layout = finisher._layout(1).pack(1, len(name), 0, 0, -1, finisher.SYMLINK)
        assert _finish.finish(finisher._COUNT.pack(1) + layout + name + b"x", [], -1,
                              0) is None  # a symlink: left to the Python loop

    watched = {"None": None, "True": True, "False": False, "0": 0, "1": 1, "-1": -1,
               "empty": "", "regular": regular}
    with tempfile.TemporaryDirectory() as directory:
        os.chdir(directory)
        for _ in range(50):  # caches and interned names made before counting
            calls(directory)
        gc.collect()
        before = {key: sys.getrefcount(value) for key, value in watched.items()}
        for _ in range(rounds):
            calls(directory)
        gc.collect()
        after = {key: sys.getrefcount(value) for key, value in watched.items()}
        os.chdir("/")
    print(json.dumps({key: after[key] - before[key] for key in watched}))


if __name__ == "__main__":
    main()
