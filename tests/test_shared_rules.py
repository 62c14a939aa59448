"""The rules written once for both sides: id maps, OSError translation, write_all."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from chrootarchive import _fdio
from chrootarchive.engine import idmap
from chrootarchive.errors import (
    ArchiveError,
    DestinationError,
    InternalError,
    SourceError,
    from_os_error,
)
from chrootarchive.options import IDMap, UnpackOptions

MAPS = (IDMap(0, 100_000, 1000), IDMap(1000, 5000, 10))


def test_ids_map_both_ways_and_none_outside_the_ranges() -> None:
    assert idmap.to_host(0, MAPS) == 100_000
    assert idmap.to_host(999, MAPS) == 100_999
    assert idmap.to_host(1005, MAPS) == 5005
    assert idmap.to_host(1010, MAPS) is None
    assert idmap.to_container(100_999, MAPS) == 999
    assert idmap.to_container(5009, MAPS) == 1009
    assert idmap.to_container(99_999, MAPS) is None
    assert idmap.to_host(42, ()) == 42 and idmap.to_container(42, ()) == 42


def test_an_unmapped_id_names_the_entry() -> None:
    with pytest.raises(ArchiveError) as info:
        idmap.to_host_or_fail(2000, MAPS, "gid", "a/b")
    assert info.value.entry == "a/b" and "gid 2000" in info.value.message


def test_root_owner_is_chown_or_the_mapped_root_or_none() -> None:
    assert idmap.root_owner(UnpackOptions(uid_maps=MAPS, gid_maps=MAPS)) == (100_000, 100_000)
    assert idmap.root_owner(UnpackOptions()) == (0, 0)
    assert idmap.root_owner(UnpackOptions(chown=(7, 8), uid_maps=MAPS[1:])) == (7, 8)
    assert idmap.root_owner(UnpackOptions(no_lchown=True, uid_maps=MAPS)) is None
    assert idmap.root_owner(UnpackOptions(filter="data", uid_maps=MAPS)) is None
    with pytest.raises(ArchiveError):
        idmap.root_owner(UnpackOptions(uid_maps=MAPS[1:]))


def test_os_errors_become_library_errors() -> None:
    missing = OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    err = from_os_error(missing, "src/x", kind=SourceError)
    assert isinstance(err, SourceError) and isinstance(err, FileNotFoundError)
    assert type(err).__name__ == "SourceError" and err.message == "no such file or directory"
    assert err.entry == "src/x"
    assert type(from_os_error(missing)) is InternalError
    opened = from_os_error(missing, "d", kind=DestinationError, action="cannot open")
    assert opened.message == "cannot open: No such file or directory"
    for full in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # whatever the caller was doing
        assert type(from_os_error(OSError(full, os.strerror(full)), kind=SourceError)) is (
            DestinationError)
    assert from_os_error(OSError("no errno")).message == "no errno"


def test_write_all_writes_everything_to_a_pipe() -> None:
    r, w = os.pipe()
    try:
        data = os.urandom(200_000)  # more than a pipe holds: many partial writes
        out = bytearray()

        def reader() -> None:
            while chunk := os.read(r, 65536):
                out.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        _fdio.write_all(w, bytearray(data))
        os.close(w)
        w = -1
        thread.join()
        assert bytes(out) == data
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
