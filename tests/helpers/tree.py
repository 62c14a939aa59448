"""Snapshot a directory tree into a plain dict, and diff two snapshots readably.

A snapshot maps each path relative to the root (``"."`` for the root itself) to a
dict of what the file system says about it, never following symlinks:

- ``type``: ``dir``, ``file``, ``symlink``, ``chardev``, ``blockdev``, ``fifo``,
  ``socket``;
- ``mode``: permission bits including setuid/setgid/sticky (``stat.S_IMODE``);
- ``uid``, ``gid``;
- ``size`` (files and symlinks; directory sizes depend on the file system's history
  and are not recorded);
- ``sha256`` for regular files: a digest of the *content* that does not depend on
  how holes are laid out (see :func:`content_digest`), so a sparse 60 GB file is
  cheap to hash and equal contents give equal digests whatever the block layout;
- ``target`` for symlinks (bytes, verbatim);
- ``link_group`` for regular files with more than one name inside the tree: the
  smallest relative path sharing the inode (comparable across two trees);
- ``rdev`` as ``(major, minor)`` for devices;
- ``xattrs``: every extended attribute, name -> bytes (``os.listxattr``/``getxattr``
  with ``follow_symlinks=False``);
- ``mtime_ns``; optionally ``ctime_ns`` and ``nlink`` (victim trees: a ctime change
  reveals a chmod, chown, link or unlink of the inode), ``blocks`` (sparse checks).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any

Snapshot = dict[str, dict[str, Any]]

_TYPES = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISBLK, "blockdev"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)

_CHUNK = 1 << 16


def file_type(st: os.stat_result) -> str:
    for pred, name in _TYPES:
        if pred(st.st_mode):
            return name
    return "unknown"


def _data_ranges(fd: int, size: int) -> Iterable[tuple[int, int]]:
    """(start, end) of the data regions of ``fd`` (the whole file if SEEK_DATA fails)."""
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, min(end, size)
            pos = end
    except OSError:
        yield pos, size


def content_digest(fd: int, size: int) -> str:
    """sha256 over (offset, block) of every 64 KiB-aligned block that is not all zeros.

    Two files with the same size and the same bytes get the same digest whatever
    their holes; reading a 60 GB sparse file reads only its data regions.
    """
    h = hashlib.sha256(size.to_bytes(8, "little"))
    zero = bytes(_CHUNK)
    done = 0  # blocks below this offset were already hashed
    for start, end in _data_ranges(fd, size):
        block = max(start - start % _CHUNK, done)
        while block < end:
            chunk = os.pread(fd, _CHUNK, block)
            if not chunk:
                break
            if chunk != zero[: len(chunk)]:
                h.update(block.to_bytes(8, "little"))
                h.update(chunk)
            block += _CHUNK
        done = block
    return h.hexdigest()


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.ENODATA:
                continue
            raise
    return out


def snapshot(
    root: str | os.PathLike[str],
    *,
    ignore_root_mtime: bool = False,
    ctime: bool = False,
    nlink: bool = False,
    blocks: bool = False,
    atime: bool = False,
    exclude: Iterable[str] = (),
    content: bool = True,
) -> Snapshot:
    """Snapshot ``root`` (see the module docstring).

    Args:
        ignore_root_mtime: leave out the root directory's own ``mtime_ns`` (and
            ``ctime_ns``): it changes whenever an entry is added to it.
        ctime, nlink, blocks, atime: also record these.
        exclude: relative paths not to record (nor descend into).
        content: hash regular files (False: sizes only).
    """
    root = os.fspath(root)
    excluded = {os.path.normpath(e) for e in exclude}
    snap: Snapshot = {}
    inodes: dict[tuple[int, int], list[str]] = {}

    def record(rel: str, path: str) -> os.stat_result:
        st = os.lstat(path)
        kind = file_type(st)
        info: dict[str, Any] = {
            "type": kind,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
        }
        if ctime:
            info["ctime_ns"] = st.st_ctime_ns
        if atime:
            info["atime_ns"] = st.st_atime_ns
        if nlink:
            info["nlink"] = st.st_nlink
        if blocks and kind == "file":
            info["blocks"] = st.st_blocks
        if kind in ("file", "symlink"):
            info["size"] = st.st_size
        if kind == "file":
            if content:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME)
                try:
                    info["sha256"] = content_digest(fd, st.st_size)
                finally:
                    os.close(fd)
            if st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif kind == "symlink":
            info["target"] = os.readlink(os.fsencode(path))
        elif kind in ("chardev", "blockdev"):
            info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        info["xattrs"] = _xattrs(path)
        snap[rel] = info
        return st

    record(".", root)
    if ignore_root_mtime:
        snap["."].pop("mtime_ns", None)
        snap["."].pop("ctime_ns", None)
        snap["."].pop("atime_ns", None)

    def walk(rel_dir: str, abs_dir: str) -> None:
        for name in sorted(os.listdir(os.fsencode(abs_dir))):
            sname = os.fsdecode(name)
            rel = sname if rel_dir == "." else os.path.join(rel_dir, sname)
            if rel in excluded:
                continue
            path = os.path.join(abs_dir, sname)
            st = record(rel, path)
            if stat.S_ISDIR(st.st_mode):
                walk(rel, path)

    walk(".", root)
    for names in inodes.values():
        if len(names) > 1:
            group = min(names)
            for n in names:
                snap[n]["link_group"] = group
    return snap


def _fmt(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} ({oct(value)})" if value < 0o10000 and value >= 0 else str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v!r}" for k, v in value.items()) + "}"
    return repr(value)


def diff(
    expected: Snapshot,
    actual: Snapshot,
    *,
    ignore: Callable[[str, str], bool] | None = None,
    limit: int = 60,
) -> list[str]:
    """Human-readable differences, one line each (empty list: identical).

    ``ignore(path, key)`` may waive a difference (for instance the mtime of
    directories the archive did not list).
    """
    lines: list[str] = []
    for path in sorted(set(expected) | set(actual)):
        if path not in actual:
            lines.append(f"missing: {path} ({expected[path]['type']})")
            continue
        if path not in expected:
            lines.append(f"unexpected: {path} ({actual[path]['type']})")
            continue
        a, b = expected[path], actual[path]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                if ignore and ignore(path, key):
                    continue
                lines.append(f"{path}: {key}: expected {_fmt(a.get(key))}, got {_fmt(b.get(key))}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more differences"]
    return lines


def assert_same(
    expected: Snapshot,
    actual: Snapshot,
    what: str = "trees differ",
    *,
    ignore: Callable[[str, str], bool] | None = None,
) -> None:
    lines = diff(expected, actual, ignore=ignore)
    if lines:
        raise AssertionError(what + ":\n  " + "\n  ".join(lines))


def find_content(root: str | os.PathLike[str], needle: bytes) -> list[str]:
    """Relative paths of regular files under ``root`` that contain ``needle``."""
    hits = []
    root = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > (64 << 20):
                    continue
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(os.path.relpath(path, root))
            except OSError:
                continue
    return hits
