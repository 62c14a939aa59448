"""Tar entries to filesystem objects, relative to a root, with Docker's semantics.

One :class:`Unpacker` per extraction. It gets entries from a
:class:`~chrootarchive.tarformat.reader.TarReader` and acts through a
:class:`~chrootarchive.engine.fsops.FileOps`, so it does not know how it is confined.

Order of work for each entry (Docker's): clean the name; skip excluded ones; make
implied parents (0755, owned by the mapped root); replace what is there unless a
directory meets a directory; create the object so that nothing pre-existing can be
written through; then owner, xattrs, mode and times through the new object's
descriptor. Directory modes and times are applied at the end, deepest first.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import struct
import sys
import time

from chrootarchive.engine import acl, filters, fsops, idmap, layer, linkwalk, space
from chrootarchive.engine import names as paths
from chrootarchive.engine.filewriter import FileMetadata, FileWriter
from chrootarchive.errors import (
    ArchiveError,
    BreakoutError,
    ChrootArchiveError,
    DestinationError,
    InternalError,
    LimitExceededError,
    MalformedArchiveError,
    WorkerError,
    counted,
    from_os_error,
    printable,
    quoted,
)
from chrootarchive.tarformat import reader as tarreader
from chrootarchive.tarformat.reader import TarEntry, TarReader

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import NoReturn

    from chrootarchive.contract import UnpackSpec
    from chrootarchive.engine.finisher import Finisher

__all__ = ["UnpackStats", "Unpacker"]

_NS_MIN = -(2**63)
_NS_MAX = 2**63 - 1
# os.fsencode() without its call: a name is encoded once per entry.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_DEST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
_MAX_RETRIES = 8
_NODE_KINDS = frozenset((tarreader.SYMLINK, tarreader.FIFO, tarreader.CHARDEV,
                         tarreader.BLOCKDEV))
_THREADED_MIN_SIZE = 256 << 10  # files from this size on are written by the writer thread
FINISHER_AFTER = 64  # small files before a helper process is worth its fork
_FINISHER_MAX_FILE = 64 << 10  # larger files from a pipe are not handed to the helper
# A larger file the worker copies itself goes a step at a time: once the helper has run
# dry, it takes the rest (more than a step) and the worker goes back to parsing.
_COPY_STEP = 1 << 20
# Data charged and not yet written, at most: the writer thread's queue (MAX_PENDING
# chunks of 1 MiB, and the one it writes), the helper's batches in flight.
_WRITER_IN_FLIGHT = 6 << 20
_FINISHER_IN_FLIGHT = 2 << 20
# The cache of known directories: names (and about 100 bytes each) up to this much, then
# the older half is forgotten. Only a cache (a forgotten parent is found again with
# mkdir and stat), but every distinct prefix of every name would otherwise stay: a name
# that goes through a symlink into a deep tree adds a thousand long ones.
_DIRS_BUDGET = 2 << 20
_DIR_OVERHEAD = 100
_MAX_UNMAPPABLE = 1024  # owners remembered as unrepresentable (a cache, too)
# The filesystem's reserve (Limits.reserve, engine.space) is looked at again (one
# fstatvfs) when half of what was left above it may have been used (a quarter, in
# entries: an entry may take an inode and a block or two), and at least every
# _LOOK_BYTES of data and _LOOK_ENTRIES entries.
_LOOK_BYTES = 64 << 20
_LOOK_ENTRIES = 4096
_XATTR_INODE = 1024  # xattr bytes for which tmpfs takes one inode (BOGO_INODE_SIZE)
_HUGE = 1 << 80
_HEADERS_EACH = tarreader.MAX_HEADERS - tarreader.FREE_HEADERS + 1  # entries one may count
PASS_FLOOR = 1 << 30
"""Data a stream holds that nothing writes (a whiteout's, an excluded file's, a GNU
dumpdir's, what follows the end of the archive) is read through all the same: beyond
this much, it counts as if written, against the reserve, so that its time is bounded as
an untar's of the same stream is by what it can write (1 MB of bzip2 holds 1 TiB of
zeros: two hours to read through). A file's is seeked over, and never counts so."""


class _SkipEntry(Exception):
    """An existing file is kept (``old_files == "skip"``): the entry is not unpacked."""


class UnpackStats:
    """Entries seen and the sum of their sizes (Docker's ApplyLayer size), and the
    xattrs that were skipped (refused by the kernel, unsupported, or privileged)."""

    __slots__ = ("entries", "size", "skipped_xattrs")

    def __init__(self) -> None:
        self.entries = 0
        self.size = 0
        self.skipped_xattrs = 0


_PENDING = struct.Struct("<QQIqqI")  # dev, ino, mode, atime_ns, mtime_ns, len(path)
_DATA_LINK = struct.Struct("<QQI")  # dev, ino, len(path)
# dev, ino, len(path), len(entry name), then the whole record's length: path, entry name
# and the ACL's value, one after the other (:meth:`Unpacker._dir_xattrs`)
_DEFAULT_ACL_RECORD = struct.Struct("<QQIII")
# What following the symlinks made under filter data may cost (path components looked
# at): enough for any real tree, and a bound on what a tangle of symlinks can make it
# take (linkwalk.LinkWalk).
_LINK_STEPS = 1 << 16
_LINK_STEPS_PER_ENTRY = 64
# A layer's markers through symlinks: its own walk, so a small start (an image of
# many layers must not have 65,536 steps for each).
_LAYER_LINK_STEPS = 4096
_PENDING_BUDGET = 1 << 20  # bytes of records kept in memory; the older ones are spilled


def _creation_mode(entry: TarEntry) -> int:
    """The mode a regular file is created with: its own, and the owner's write bit
    while its xattrs are set (``user.*`` ones need write permission, which the
    unprivileged owner of a 0o444 file lacks; :func:`_mode_after` then sets the mode)."""
    return entry.mode & 0o777 | (0o200 if entry.xattrs else 0)


def _mode_after(entry: TarEntry) -> bool:
    """Whether a file's mode is set once its owner and xattrs are: setuid, setgid and
    sticky bits (a chown clears them), or a mode it was not created with."""
    return bool(entry.mode & 0o7000) or bool(entry.xattrs and not entry.mode & 0o200)


class _Records:
    """Names with a few numbers each, kept until the end of the unpack: the directories
    whose mode and times are applied then (deepest first), and the symlinks that the
    ``data`` filter follows then (:mod:`.linkwalk`).

    Packed, a directory is its name and 40 bytes (as objects it was about 300). Past
    :data:`_PENDING_BUDGET` the records go to a spill file: an unnamed file
    (``O_TMPFILE``) in the destination, on its filesystem and under its reserve, gone
    when closed (where the filesystem has none, they stay in memory, under the worker's
    memory limit).
    """

    __slots__ = ("_data", "_fields", "_open_spill", "_segments", "_spill")

    def __init__(self, open_spill: Callable[[], int], fields: struct.Struct) -> None:
        self._data = bytearray()  # records: the name, then its fields (read backwards)
        self._fields = fields  # the last one is the name's length
        self._open_spill = open_spill
        self._spill = -2  # -2: not opened yet, -1: none to be had
        self._segments: list[tuple[int, int]] = []  # (offset, size) in the spill file

    def append(self, path: str, *values: int) -> None:
        name = os.fsencode(path)
        self._data += name
        self._data += self._fields.pack(*values, len(name))
        if len(self._data) > _PENDING_BUDGET:
            self._flush()

    def _flush(self) -> None:
        if self._spill == -2:
            try:
                self._spill = self._open_spill()
            except OSError:
                self._spill = -1
        if self._spill < 0:
            return
        offset = self._segments[-1][0] + self._segments[-1][1] if self._segments else 0
        view = memoryview(self._data)
        written = 0
        while written < len(view):
            written += os.pwrite(self._spill, view[written:], offset + written)
        self._segments.append((offset, len(self._data)))
        self._data = bytearray()

    def newest_first(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """(path, its numbers), the last appended first."""
        yield from self._records(self._data)
        for offset, size in reversed(self._segments):
            data = bytearray()
            while len(data) < size:
                got = os.pread(self._spill, size - len(data), offset + len(data))
                if not got:
                    raise OSError(errno.EIO, "a spill file of records is short")
                data += got
            yield from self._records(data)

    def _records(self, data: bytearray) -> Iterator[tuple[str, tuple[int, ...]]]:
        fields = self._fields
        end = len(data)
        while end:
            end -= fields.size
            *values, size = fields.unpack_from(data, end)
            end -= size
            yield os.fsdecode(bytes(data[end:end + size])), tuple(values)

    def close(self) -> None:
        if self._spill >= 0:
            os.close(self._spill)
        self._spill = -1


ROOTLESS_XATTR = "user.rootlesscontainers"

_DEFAULT_ACL = "system.posix_acl_default"
_XATTR_SIZE_MAX = 65536  # the kernel's largest xattr value (E2BIG beyond)

#: xattrs a directory declared again by a layer keeps from below: labels that the kernel
#: or a security module manages (as umoci leaves ``security.selinux`` and
#: ``system.nfs4_acl`` alone). Names ending in "." are prefixes.
_HOST_XATTRS = ("security.selinux", "security.SMACK64", "security.apparmor", "security.ima",
                "security.evm", "system.nfs4_acl")
#: ... and, in the overlay output format, the layer's own overlayfs markers.
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_ACL_PROBES = 4096  # ACL ids tried in a user namespace, at most (each costs a setxattr)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _rootless_resource(uid: int, gid: int) -> bytes:
    """umoci's ``user.rootlesscontainers`` value: protobuf ``Resource{uid=1, gid=2}``."""
    record = b""
    if uid:
        record += b"\x08" + _varint(uid)
    if gid:
        record += b"\x10" + _varint(gid)
    return record


def _clamp_ns(value: int) -> int:
    return min(max(value, _NS_MIN), _NS_MAX)


def _open_spill(fs: fsops.FileOps) -> int:
    """An unnamed file in the destination (gone when closed), for state that does not
    fit in the worker's memory."""
    root = fs.open_dir(".")
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=root)
    finally:
        os.close(root)


class DataLinks:
    """filter data: the symlinks made (where they really are, and their inodes), to be
    followed once all is written, and the walk that follows them with its budget.
    One for a stack of layers: a later layer can make an earlier one's symlink lead
    out (``s -> .`` under ``l -> a/s/../..``), so all are followed at the end."""

    __slots__ = ("records", "walk")

    def __init__(self, fs: fsops.FileOps) -> None:
        self.records = _Records(lambda: _open_spill(fs), _DATA_LINK)
        self.walk = linkwalk.LinkWalk(fs, _LINK_STEPS)


class Unpacker:
    """Applies the entries of one archive below the current root.

    ``data_links``: under filter data, the stack's record of the symlinks made, which
    the stack follows at its end (:meth:`check_data_links`); without it, each unpack
    keeps its own and follows them at its end.
    """

    def __init__(
        self,
        fs: fsops.FileOps,
        options: UnpackSpec,
        warn: Callable[[str], None],
        *,
        layer_mode: bool = False,
        in_user_namespace: bool = False,
        listed: Callable[[str], None] | None = None,
        data_links: DataLinks | None = None,
    ) -> None:
        self.fs = fs
        self.listed = listed  # told each entry's name once it is unpacked (tar -v)
        self.writer: FileWriter | None = None
        # The helper process that finishes small files (see finisher): allowed by the
        # jailed worker for large inputs, forked after the first few small files.
        self.finisher: Finisher | None = None
        self.finisher_countdown = -1  # set to FINISHER_AFTER to allow the helper
        self.extents_here = 0  # larger files copied here while the helper was behind
        self.extents_handed_over = 0  # of which the helper, once idle, copied the rest
        # Paths of files the helper creates and has not yet created (its pending set):
        # nothing else is done to such a path, or below it, before it has (_settle).
        self.pending: set[str] = set()
        self._redoing = False  # the worker creates files the helper gave back
        # Files are sent by name only where replacing is the rule: what the helper
        # finds in the way it gives back, and the worker replaces it as it would.
        # And only in a jail (the base FileOps): the helper resolves names from its
        # working directory, which must be the jail's root.
        self.by_name = options.old_files == "replace" and type(fs) is fsops.FileOps
        self.options = options
        self.warn = warn
        self.excludes = paths.exclude_matcher(options.excludes, options.exclude_style)
        self.strip = options.strip_components
        self.old_files = options.old_files
        self.kept_old = 0  # old_files "keep": the files kept, the error at the end
        self.kept_old_first: str | None = None
        self.stats = UnpackStats()
        self.euid = os.geteuid()
        # Without full privilege (a user namespace, or no root at all) some things
        # cannot be represented; they are skipped and counted, as Docker does in a
        # user namespace and umoci does with --rootless.
        self.limited = in_user_namespace or self.euid != 0
        self.unmappable: set[tuple[int, int]] = set()
        self.skipped_owners = 0
        self.skipped_devices = 0
        # The private directory the last symlink or special file was made in, kept for
        # those that follow it in the same directory (removed before any other entry).
        self.node_dir: fsops.PrivateDir | None = None
        self.node_parent = ""
        # Device nodes (and FIFOs) not made: skipped without privilege, or left out by
        # filter data; a hardlink to one is not made either. Hashed: there may be many.
        self.skipped_device_names = layer.NameSet()
        self.excluded_names = layer.NameSet()  # files left out by the excludes: the same
        self.excluded_links = 0  # hardlinks to them, left out (GNU tar fails on each)
        # tarfile's members=: the only names unpacked (cleaned as entry names are); those
        # not yet met, an error at the end.
        self.members: frozenset[str] | None = None
        self.members_unseen: dict[str, None] = {}  # in the caller's order
        if options.members is not None:
            self.members_unseen = dict.fromkeys(paths.clean_name(m) for m in options.members)
            self.members = frozenset(self.members_unseen)
        self.skipped_xattrs = 0  # privileged ones, without privilege
        self.refused_xattrs = 0  # refused by the kernel (EPERM), as Docker and GNU tar skip
        self.refused_example = ""
        self.unsupported_xattrs = 0  # best effort: not supported by the filesystem
        self.stale_xattrs = 0  # of a redeclared directory, that could not be removed
        self.acl_dropped = 0  # named ACL entries the user namespace cannot represent
        self.acl_dropped_ids: list[str] = []
        self.acl_known: dict[tuple[int, int], bool] = {}
        self.acl_probes_left = _ACL_PROBES
        self.layer_mode = layer_mode
        self.kept_xattrs = _HOST_XATTRS + (
            _OVERLAY_XATTRS if options.whiteout_format == "overlay" else ())
        self.limits = options.limits
        # The limits hold for the whole operation: an image's layers below this one
        # (and its spool) used some already.
        self.deadline = (None if self.limits.timeout is None else
                         time.monotonic() + self.limits.timeout - self.limits.used_seconds)
        # File data is charged against bytes_budget: the bytes until the next look at
        # max_bytes and the filesystem's reserve (_look_bytes).
        self.bytes_used = self.limits.used_bytes
        self.bytes_budget = self.bytes_given = 0
        # Data read through and not written (_read_past); whether reading it costs
        # time (a stream: a pipe, or a ring the parent decompresses into).
        self.passed = 0
        self.pass_look = PASS_FLOOR
        self.passes_cost = True
        self.xattr_budget = 0  # xattr bytes until the next look at the reserve
        self.reserve = space.Reserve(self.limits.reserve) if self.limits.reserve else None
        self.room = (_HUGE, _HUGE)  # free bytes and inodes above the reserve, last seen
        self.filter = filters.EntryFilter(options.filter, options.umask)
        self.filtering = options.filter != "fully_trusted"
        self.egid = os.getegid()
        # The owner of the implied parents it makes (None: the creator's).
        self.root_owner = idmap.root_owner(options)
        # Directories known to exist, with whether they are setgid (new files then
        # inherit the directory's group, so the owner must be set explicitly).
        self.dirs: dict[str, bool] = {
            ".": bool(fs.stat(".").st_mode & stat.S_ISGID)
        }
        self.dirs_size = 0  # what the cache holds, counted against _DIRS_BUDGET
        # Those of them reached through an in-root symlink (``s`` for ``s -> real``, and
        # below it): a name there is another name of a file elsewhere, so the helper
        # never creates one by name, and the worker settles with the helper before it
        # creates one (a file the helper is still creating could be the same file).
        self.aliased: set[str] = set()
        self.pending_dirs = _Records(self._open_spill, _PENDING)
        #: Directories' default ACLs, set once all is unpacked; spilled as the pending
        #: directories are (a tree of directories each with one is the archive's choice).
        self.default_acls = _Records(self._open_spill, _DEFAULT_ACL_RECORD)
        # filter data: the symlinks made (where they really are, and their inodes),
        # followed once all is written (check_data_links).
        self.follows_links_at_end = data_links is None  # not a stack's layer
        if options.filter != "data":
            data_links = None
        elif data_links is None:
            data_links = DataLinks(fs)
        self.data_links = data_links
        self.link_steps_given = 0  # entries whose steps were added to the walk's budget
        self.layer_walk: linkwalk.LinkWalk | None = None  # whiteouts through symlinks
        self.whiteouts = layer.LayerRules(
            fs,
            apply_whiteouts=layer_mode,
            overlay=options.whiteout_format == "overlay",
            in_user_namespace=in_user_namespace,
            forget=self._forget,
        )
        # Decided once, not per entry: the per-entry cost is what small files cost.
        self.markers = self.whiteouts.active
        # Below these, an entry cannot cross a limit: one compare each instead of
        # _check_entry_limits() (a name of n characters has at most 4n bytes).
        limits = self.limits
        huge = 1 << 80
        # A name of n characters has at most n slashes: one length compare covers the
        # depth too (a longer name gets the full check, which counts them).
        self.safe_name_chars = min(
            huge if limits.max_path_length is None else limits.max_path_length // 4,
            huge if limits.max_path_depth is None else limits.max_path_depth - 1)
        self.safe_size = huge if limits.max_file_size is None else limits.max_file_size
        self.create_file = fs.create_file
        self.has_excludes = bool(self.excludes)
        # GNU tar matches its patterns against the name as stored ("./src/x.js" for
        # "./src/*.js"): tar-style patterns are tried on it too, not on the clean name
        # alone (docs/excludes.md).
        self.stored_names_excluded = options.exclude_style == "tar"
        self.caller_owns = options.filter == "data"  # PEP 706: the owners are the caller's
        self.identity_owner = not (options.no_lchown or self.caller_owns or options.chown
                                   or options.uid_maps or options.gid_maps)
        # ACL ids are owners: mapped when owners are (not with chown, no_lchown).
        self.map_acl_ids = bool(options.uid_maps or options.gid_maps) and not (
            options.no_lchown or options.filter == "data" or options.chown)

    # -- the loop -----------------------------------------------------------------

    def run(self, reader: TarReader) -> UnpackStats:
        self.passes_cost = reader.file_source() < 0 or reader.ring_size > 0
        try:
            try:
                try:
                    self._loop(reader)
                except ChrootArchiveError:
                    # A file the helper or the writer thread failed on came earlier in
                    # the archive: its error (a full disk, say) is the one to report.
                    self._finish_helpers()
                    raise
                self._finish_helpers()
                self.close_node_dir()  # (what the helper gave back may have made one)
            finally:
                if self.finisher is not None:
                    self.finisher.abort()  # only if still running (an unexpected error)
                if self.writer is not None:
                    self.writer.drain()
        except BaseException:
            try:
                self.close_node_dir()
            except Exception:  # the first error is the one to report
                pass
            self.pending_dirs.close()  # its spill file, if any
            self.default_acls.close()
            try:
                self.check_data_links(failing=True)
            except Exception:  # the first error is the one to report
                pass
            try:
                self.whiteouts.finish()  # the AUFS link directory: ours, not the archive's
            except Exception:  # the first error is the one to report
                pass
            raise
        if self.follows_links_at_end:
            self.check_data_links()
        elif self.data_links is not None:
            self._link_walk()  # this layer's entries count for the stack's walk
        self.finish_dirs()
        self.whiteouts.finish()
        self._summarize_skips()
        self._reader_notes(reader)
        self.stats.skipped_xattrs = (self.skipped_xattrs + self.refused_xattrs
                                     + self.unsupported_xattrs)
        if self.kept_old:
            more = f"; {self.kept_old - 1:,} more kept" if self.kept_old > 1 else ""
            raise DestinationError(
                f"exists, and old files are kept (old_files='keep'{more}); the rest was "
                "unpacked", self.kept_old_first, errno.EEXIST)
        if self.members_unseen:
            missing = len(self.members_unseen) - 1
            raise ArchiveError("no entry of this name in the archive (members=)"
                               + (f"; {missing:,} more not found" if missing else "")
                               + "; the rest was unpacked", next(iter(self.members_unseen)))
        return self.stats

    def _reader_notes(self, reader: TarReader) -> None:
        """What the reader read leniently, as GNU tar and bsdtar do (Go refuses it), or
        as Go does (a layer cut in its last padding)."""
        if reader.lone_zero_block is not None:
            self.warn(f"the archive ends at a lone zero block (offset {reader.lone_zero_block:,}):"
                      " what follows it was not read, as GNU tar and bsdtar stop there")
        if reader.padding_cut is not None:
            self.warn(f"the layer ends in the padding after {printable(reader.padding_cut)}'s "
                      "data, without end-of-archive blocks: read to there as Go's "
                      "archive/tar reads it (umoci writes such layers), its DiffID being "
                      "checked")
        if reader.lenient_times:
            self.warn(f"{reader.lenient_times} PAX time records had characters after the "
                      f"number (the first in the {reader.lenient_time_where}): read as GNU "
                      "tar and bsdtar read them")

    def _loop(self, reader: TarReader) -> None:
        most_entries = 0  # entries before the next look (_look_entries)
        stats = self.stats
        apply = self.apply if self.members is None else self._apply_members
        listed = self.listed
        name: str | None = None  # of the entry being applied; None while reading one
        out_of_memory = False
        try:
            for entry in reader:
                name = entry.name
                stats.entries += 1
                stats.size += entry.size
                if stats.entries > most_entries:
                    most_entries = self._look_entries(stats.entries, name,
                                                      reader.extra_headers)
                if self.deadline is not None:
                    self._check_time(name)
                stored = entry.stored_size
                if stored:
                    charged = self.bytes_used + self.bytes_given - self.bytes_budget
                try:
                    if apply(entry, reader) and listed is not None:
                        listed(name)  # as stored: GNU tar lists it so, stripped or not
                except _SkipEntry:
                    pass  # the reader skips its data
                except ChrootArchiveError:
                    raise
                except OSError as err:
                    raise self._os_error(err, name) from err
                if stored:
                    # What was not charged as written is read past (the reader skips it).
                    left = stored - (self.bytes_used + self.bytes_given
                                     - self.bytes_budget - charged)
                    if left > 0:
                        self._read_past(left, name)
                name = None
        except MemoryError:  # the worker's RLIMIT_DATA (jail.lockdown)
            if self.limits.max_memory is None:
                raise
            out_of_memory = True
        if out_of_memory:  # raised here, so that what ran out is freed (no traceback)
            raise LimitExceededError(
                f"limit max_memory ({self.limits.max_memory:,} bytes) exceeded: the worker "
                f"ran out of the memory the limit allows it (raise Limits.max_memory)", name)

    def apply(self, entry: TarEntry, reader: TarReader) -> bool:
        """Unpack one entry; False when it was left out (excluded, stripped, dropped)."""
        stored = entry.name  # as GNU tar matches tar-style excludes: before stripping
        if self.node_dir is not None and entry.kind not in _NODE_KINDS:
            self.close_node_dir()  # kept for a run of nodes only
        if self.strip and not self._strip(entry):
            return False
        # paths.clean_name(), whose first test is written out here: most names are
        # already clean, and the call cost 4% of an entry (issue 16). Any other name,
        # and every name with "./" before it, goes through clean_name.
        name = entry.name
        if not (name and name[0] not in "./" and name[-1] != "/" and "//" not in name
                and "/." not in name and "\x00" not in name):
            name = paths.clean_name(name)
        if len(name) > self.safe_name_chars or entry.size > self.safe_size or entry.xattrs:
            self._check_entry_limits(name, entry)
        if self.has_excludes and (self.excludes.matches(name) or (
                self.stored_names_excluded and name != stored
                and self.excludes.matches(stored.rstrip("/")))):
            if entry.kind != tarreader.DIRECTORY:
                self.excluded_names.add(name)  # a hardlink to it is left out too
            return False
        if self.filtering:
            if not self.filter.keep(entry):
                if entry.kind in (tarreader.CHARDEV, tarreader.BLOCKDEV, tarreader.FIFO):
                    self.skipped_device_names.add(name)  # a hardlink to it is left out too
                return False
        elif entry.mode & 0o6000:
            self.filter.note(entry)
        if self.markers and self.whiteouts.is_marker(name):
            self._marker(name, entry, reader)
            return True
        if self.pending and name in self.pending:
            self._settle()  # the same name again: the helper's file first
        kind = entry.kind
        if name == ".":
            if kind != tarreader.DIRECTORY:
                raise ArchiveError("cannot replace the destination root", entry.name)
            self._merge_dir(".", entry)
            return True
        parent = name.rpartition("/")[0]
        if parent and parent not in self.dirs:
            self._make_dirs(parent, entry.name)
        if self.aliased and self.pending and parent in self.aliased:
            self._settle()  # this name may be another name of a file in flight
        # Layer rules: where the name really is, resolved before the write (which may
        # replace a directory, and drop what is known of the symlinks on the way).
        written = (self._layer_name(name) if self.markers and self.aliased
                   and parent in self.aliased else name)
        if kind is tarreader.REGULAR:
            done = self._file_by_name(name, parent, entry, reader)
            if not done:
                self._file(name, entry, reader, helper=done is None)
        elif kind == tarreader.DIRECTORY:
            self._dir(name, entry)
        elif kind == tarreader.SYMLINK:
            self._symlink(name, entry)
        elif kind == tarreader.HARDLINK:
            self._hardlink(name, entry)
        elif kind in (tarreader.CHARDEV, tarreader.BLOCKDEV, tarreader.FIFO):
            self._special(name, entry)
        else:
            raise InternalError(f"unhandled entry kind {kind!r}", entry.name)
        if self.markers:
            self.whiteouts.note_written(written)
        return True

    def _apply_members(self, entry: TarEntry, reader: TarReader) -> bool:
        """:meth:`apply` for the entries ``members=`` names (by the name as stored,
        cleaned); one left out is excluded, and a hardlink to it too. The loop calls
        this one in place of ``apply`` only when there are members: no cost else."""
        assert self.members is not None
        name = paths.clean_name(entry.name)
        if name in self.members:
            self.members_unseen.pop(name, None)
            return self.apply(entry, reader)
        if entry.kind != tarreader.DIRECTORY:  # named as a hardlink's target will be
            left = paths.strip_components(entry.name, self.strip) if self.strip else name
            if left is not None:
                self.excluded_names.add(paths.clean_name(left))
        return False

    def _strip(self, entry: TarEntry) -> bool:
        """``strip_components`` as GNU tar does it: on the name and on a hardlink's
        target (a symlink's target is left alone); False: skip the entry (its name has
        no more components)."""
        name = paths.strip_components(entry.name, self.strip)
        if name is None:
            return False
        if entry.kind == tarreader.HARDLINK:
            target = paths.strip_components(entry.linkname, self.strip)
            if target is None:  # GNU tar fails this entry too ("Cannot hard link to ''")
                raise ArchiveError(
                    f"hardlink target {printable(entry.linkname)} has no more than "
                    f"{self.strip} components (UnpackOptions.strip_components)", entry.name)
            entry.linkname = target
        entry.name = name
        return True

    def _marker(self, name: str, entry: TarEntry, reader: TarReader) -> None:
        """A whiteout, opaque marker or AUFS metadata entry of a layer."""
        if self.pending:
            self._settle()  # it may remove what the helper is creating
        kept_copy = self.whiteouts.aufs_link_file(name, entry)
        if kept_copy is not None:
            done = self._file_by_name(kept_copy, kept_copy.rpartition("/")[0], entry, reader)
            if not done:
                self._file(kept_copy, entry, reader, helper=done is None)
            return
        try:
            self._ensure_parent(name, entry.name)
        except BreakoutError:
            raise  # a parent on a kernel file system (openat2): never "nothing there"
        except (FileNotFoundError, NotADirectoryError, ArchiveError):
            return  # below a file, or a symlink that leads nowhere: nothing to white out

        if self.aliased and name.rpartition("/")[0] in self.aliased:
            name = self._layer_name(name)  # "lib/.wh.x" for lib -> usr/lib: usr/lib's x

        def overlay_whiteout(target: str) -> None:
            device = TarEntry(name=entry.name, kind=tarreader.CHARDEV, mode=0,
                              uid=entry.uid, gid=entry.gid, size=0, mtime_ns=entry.mtime_ns)
            self._special(target, device)
            self.whiteouts.note_written(target)

        self.whiteouts.apply_marker(name, entry, overlay_whiteout)

    # -- parents and replacement --------------------------------------------------

    def _ensure_parent(self, name: str, entry_name: str) -> None:
        parent = name.rpartition("/")[0]
        if not parent or parent in self.dirs:
            return
        self._make_dirs(parent, entry_name)

    def _make_dirs(self, path: str, entry_name: str) -> None:
        parts = path.split("/")
        prefix = ""
        parent_setgid = self.dirs.get(".", False)
        linked = False  # reached through an in-root symlink
        for part in parts:
            prefix = f"{prefix}/{part}" if prefix else part
            known = self.dirs.get(prefix)
            if known is not None:
                parent_setgid = known
                linked = prefix in self.aliased
                continue
            if self.pending and (linked or prefix in self.pending):
                self._settle()  # a file the helper creates is in the way, or may be
            try:
                self.fs.mkdir(prefix, 0o755)
            except FileExistsError:
                if self.markers and self._dir_over_own_whiteout(prefix, entry_name):
                    self._remember(prefix, parent_setgid, linked)
                    continue
                try:
                    st = self.fs.stat(prefix)  # in-root symlinks to directories are fine
                except FileNotFoundError:
                    if self.whiteouts.is_marker(entry_name.rpartition("/")[2]):
                        raise
                    raise ArchiveError(
                        f"cannot create parent directory {quoted(prefix)}: a symlink that leads "
                        "nowhere is in the way", entry_name,
                    ) from None
                if not stat.S_ISDIR(st.st_mode):
                    raise ArchiveError(
                        f"cannot create parent directory {quoted(prefix)}: not a directory",
                        entry_name,
                    ) from None
                parent_setgid = bool(st.st_mode & stat.S_ISGID)
                if not linked:
                    here = self.fs.lstat(prefix)
                    linked = here is None or stat.S_ISLNK(here.st_mode)
                self._remember(prefix, parent_setgid, linked)
                continue
            # A new implied directory: 0755 owned by the mapped root. mkdir under a
            # setgid parent inherits setgid and the parent's group.
            owner = self.root_owner
            if owner is not None and (parent_setgid or owner != (self.euid, self.egid)):
                self._chown_new_dir(prefix, owner, entry_name)
            self._remember(prefix, parent_setgid, linked)

    def _dir_over_own_whiteout(self, path: str, entry_name: str) -> bool:
        """Overlay: a parent that this layer implies where it whited out a lower one
        (``.wh.a``, then ``a/x``): its whiteout gives way to an opaque directory, as
        when the layer declares ``a/`` itself. False: no whiteout of this layer's is
        there."""
        if not self.whiteouts.replaces_whiteout(path):
            return False
        st = self.fs.lstat(path)
        if st is None or not stat.S_ISCHR(st.st_mode) or st.st_rdev != 0:
            return False  # the layer put something else there since
        self.fs.unlink(path)
        self.fs.mkdir(path, 0o755)
        fd = self.fs.open_dir(path)
        try:
            self.whiteouts.directory_made(path, fd)
        finally:
            os.close(fd)
        owner = self.root_owner
        if owner is not None and owner != (self.euid, self.egid):
            self._chown_new_dir(path, owner, entry_name)
        return True

    def _remember(self, path: str, setgid: bool, linked: bool = False) -> None:
        """Cache ``path`` as a directory (``linked``: reached through an in-root
        symlink, as is all below such a directory); past the budget, forget the older
        half."""
        linked = linked or (bool(self.aliased) and path.rpartition("/")[0] in self.aliased)
        if path not in self.dirs:
            self.dirs_size += len(path) + _DIR_OVERHEAD
            if self.dirs_size > _DIRS_BUDGET:
                dirs = self.dirs
                root = dirs.pop(".")
                keep = list(dirs.items())[len(dirs) // 2:]
                dirs.clear()
                dirs["."] = root
                dirs.update(keep)
                self.dirs_size = sum(len(p) + _DIR_OVERHEAD for p, _ in keep)
                self.aliased.intersection_update(dirs)
        self.dirs[path] = setgid
        if linked:
            self.aliased.add(path)

    def _chown_new_dir(self, path: str, owner: tuple[int, int], entry_name: str) -> None:
        fd = self.fs.open_dir(path)
        try:
            self._chown(fd, owner, entry_name, os.fchown)
            os.fchmod(fd, 0o755 | (os.fstat(fd).st_mode & stat.S_ISGID))
        finally:
            os.close(fd)

    def _forget(self, path: str, directory: bool = True) -> None:
        """Drop cached knowledge about ``path`` and anything below it.

        A ``directory`` removed through an in-root symlink (``s/d`` for ``s -> .``) is
        known by another name too (``d``), and a name reached through one may lead into
        a directory removed: then the cache is dropped whole, or its aliases with it.
        """
        if directory and self.aliased:
            if path in self.aliased or path.rpartition("/")[0] in self.aliased:
                root = self.dirs["."]
                self.dirs.clear()
                self.dirs["."] = root
                self.dirs_size = 0
                self.aliased.clear()
                return
            for alias in self.aliased:
                if self.dirs.pop(alias, None) is not None:
                    self.dirs_size -= len(alias) + _DIR_OVERHEAD
            self.aliased.clear()
        if self.dirs.pop(path, None) is not None:
            self.dirs_size -= len(path) + _DIR_OVERHEAD
        self.aliased.discard(path)
        prefix = path + "/"
        for known in [p for p in self.dirs if p.startswith(prefix)]:
            del self.dirs[known]
            self.dirs_size -= len(known) + _DIR_OVERHEAD
            self.aliased.discard(known)

    def _clear_for(self, name: str, entry: TarEntry) -> bool:
        """Make room for ``entry`` at ``name``. Returns True when a directory is kept.

        Replaces what is there, except when a directory meets a directory.
        """
        if self.pending:
            self._settle()  # what is removed may hold files the helper creates
        st = self.fs.lstat(name)
        if st is None:
            return False
        existing_dir = stat.S_ISDIR(st.st_mode)
        new_dir = entry.kind == tarreader.DIRECTORY
        if self.old_files != "replace" and not (existing_dir and new_dir):
            if self.old_files == "keep":  # GNU tar's -k: an error, once the rest is done
                self.kept_old += 1
                if self.kept_old_first is None:
                    self.kept_old_first = entry.name
            if not self.filtering:
                self.filter.unnote(entry)  # counted as made in apply(): it is not
            raise _SkipEntry
        if self.options.no_overwrite_dir_nondir and existing_dir != new_dir:
            # The destination's state, not a fault of the archive: an OSError, as
            # tarfile's (IsADirectoryError; FileExistsError from os.mkdir) and old_files
            # 'keep' (FileExistsError) raise it.
            what = "directory" if existing_dir else "non-directory"
            raise DestinationError(
                f"cannot replace existing {what} (no_overwrite_dir_nondir=True)", entry.name,
                errno.EISDIR if existing_dir else errno.EEXIST,
            )
        if existing_dir and new_dir:
            return True
        if existing_dir:
            self.fs.remove_tree(name)
        else:
            self.fs.unlink(name)
        self._forget(name, existing_dir)
        return False

    def _create(self, name: str, entry: TarEntry, create: Callable[[], None]) -> bool:
        """Run ``create``; when something is in the way, clear it and retry.

        Returns True when an existing directory was kept (dir meets dir).
        """
        for _ in range(_MAX_RETRIES):
            try:
                create()
                return False
            except FileExistsError:
                if self._clear_for(name, entry):
                    return True
        raise DestinationError("the path keeps reappearing (a concurrent writer?)", entry.name)

    # -- limits ------------------------------------------------

    def _limit(self, limit: str, value: float, unit: str, entry: str) -> None:
        shown = f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
        if value == 1:
            unit = "entry" if unit == "entries" else unit.removesuffix("s")
        raise LimitExceededError(f"limit {limit} ({shown} {unit}) exceeded", entry)

    def _charge(self, size: int, entry: str) -> None:
        """Count ``size`` bytes of file data against max_bytes and the reserve (before
        they are written)."""
        self.bytes_budget -= size
        if self.bytes_budget < 0:
            self._look_bytes(entry, size)
        if self.deadline is not None:
            self._check_time(entry)

    def _read_past(self, size: int, entry: str) -> None:
        """Count ``size`` bytes of data that nothing writes (see PASS_FLOOR) against
        max_bytes, as file data (the size the result reports counts them too), and, in
        a stream, beyond PASS_FLOOR, against the reserve as if written."""
        self.bytes_budget -= size
        if self.bytes_budget < 0:
            self._look_bytes(entry, 0)  # none of it goes to the filesystem
        if self.passes_cost:
            self.passed += size
            if self.reserve is not None and self.passed > self.pass_look:
                self._check_reserve(entry, self.passed - PASS_FLOOR)
                self.pass_look = self.passed + min(self.room[0] // 2, _LOOK_BYTES)
        if self.deadline is not None:
            self._check_time(entry)

    def trailing_allowance(self) -> int | None:
        """The most bytes that may follow the end of the archive (read through, as
        :meth:`_read_past` counts them); None: no bound (a file: they are seeked over)."""
        if not self.passes_cost:
            return None
        allowed = _HUGE
        max_bytes = self.limits.max_bytes
        if max_bytes is not None:
            allowed = max_bytes - (self.bytes_used + self.bytes_given - self.bytes_budget)
        if self.reserve is not None:
            try:
                self._check_reserve(None, max(self.passed - PASS_FLOOR, 0))
                room = self.room[0]
            except LimitExceededError:  # filled since: what is left of the floor only
                room = 0
            allowed = min(allowed, room + max(PASS_FLOOR - self.passed, 0))
        return None if allowed >= _HUGE else max(allowed, 0)

    def trailing_error(self, size: int) -> LimitExceededError:
        """The error of more than :meth:`trailing_allowance` (``size``) bytes after the
        end of the archive: the limit they would cross."""
        max_bytes = self.limits.max_bytes
        used = self.bytes_used + self.bytes_given - self.bytes_budget
        if max_bytes is not None and used + size >= max_bytes:
            return LimitExceededError(
                f"limit max_bytes ({max_bytes:,} bytes) exceeded: more than {size:,} bytes "
                "follow the end of the archive", None)
        return LimitExceededError(
            f"limit reserve ({self.limits.reserve:g}% of the destination's filesystem) "
            f"exceeded: more than {size:,} bytes follow the end of the archive, read "
            "through as if written; change Limits.reserve (a percentage; 0: none)", None)

    def _charge_small(self, size: int, entry: str) -> None:
        """:meth:`_charge` for a small file: one subtraction while the budget lasts and
        no deadline is set."""
        self.bytes_budget -= size
        if self.bytes_budget < 0 or self.deadline is not None:
            self.bytes_budget += size
            self._charge(size, entry)

    def _look_bytes(self, entry: str, size: int) -> None:
        """The byte budget ran out charging ``size``: check max_bytes and the reserve,
        and give a new budget."""
        self.bytes_used += self.bytes_given - self.bytes_budget  # ``size`` included
        max_bytes = self.limits.max_bytes
        if max_bytes is not None and self.bytes_used > max_bytes:
            self._limit("max_bytes", max_bytes, "bytes", entry)
        step = _HUGE
        if self.reserve is not None:
            # Not on the filesystem yet: ``size`` and what the writer thread and the
            # helper hold (what was written before is in what fstatvfs tells).
            in_flight = size
            if self.writer is not None:
                in_flight += _WRITER_IN_FLIGHT
            if self.finisher is not None:
                in_flight += _FINISHER_IN_FLIGHT + self.finisher.poll()
            self._check_reserve(entry, in_flight)
            step = min(self.room[0] // 2, _LOOK_BYTES)
        if max_bytes is not None:
            step = min(step, max_bytes - self.bytes_used)
        self.bytes_given = self.bytes_budget = step

    def _look_entries(self, entries: int, entry: str, extra: int = 0) -> int:
        """Check max_entries and the reserve; return the count of the next look.
        ``extra``: extended headers that count as entries (TarReader.extra_headers)."""
        max_entries = self.limits.max_entries
        total = entries + extra + self.limits.used_entries  # the layers below counted too
        if max_entries is not None and total > max_entries:
            self._limit("max_entries", max_entries, "entries", entry)
        step = _HUGE
        if self.reserve is not None:
            self._check_reserve(entry, 0)
            room_bytes, room_inodes = self.room
            step = max(min(room_inodes // 4, room_bytes // 4 // self.reserve.block,
                           _LOOK_ENTRIES), 1)
        if max_entries is not None:
            # Each entry may bring extended headers that count too (at most
            # _HEADERS_EACH in all): the next look comes before they can cross it.
            step = min(step, max((max_entries - total + 1) // _HEADERS_EACH, 1))
        return entries + step - 1

    def _check_reserve(self, entry: str | None, need: int, need_inodes: int = 0) -> None:
        """Stop before the destination's filesystem has less than the reserve free."""
        assert self.reserve is not None
        fd = self.fs.open_dir(".")
        try:
            self.room = self.reserve.room(fd, entry, need, need_inodes)
        finally:
            os.close(fd)

    def _check_time(self, entry: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            assert self.limits.timeout is not None
            self._limit("timeout", self.limits.timeout, "seconds", entry)

    def _check_entry_limits(self, name: str, entry: TarEntry) -> None:
        limits = self.limits
        if (limits.max_path_length is not None and len(name) * 4 > limits.max_path_length
                and len(os.fsencode(name)) > limits.max_path_length):
            self._limit("max_path_length", limits.max_path_length, "bytes", entry.name)
        if limits.max_path_depth is not None and name.count("/") + 1 > limits.max_path_depth:
            self._limit("max_path_depth", limits.max_path_depth, "components", entry.name)
        if (limits.max_file_size is not None and entry.kind == tarreader.REGULAR
                and entry.size > limits.max_file_size):
            self._limit("max_file_size", limits.max_file_size, "bytes", entry.name)
        if entry.xattrs:
            total = sum(len(k) + len(v) for k, v in entry.xattrs.items())
            if limits.max_xattr_bytes is not None and total > limits.max_xattr_bytes:
                self._limit("max_xattr_bytes", limits.max_xattr_bytes, "bytes", entry.name)
            if self.reserve is not None:
                self._charge_xattrs(total, entry.name)

    def _charge_xattrs(self, size: int, entry: str) -> None:
        """xattrs take room that no data charge counts: blocks (ext4, xfs) or, on
        tmpfs, inodes (a KiB of xattrs for each): the reserve is looked at again before
        half of what was left of either may have gone (300 entries of 1 MB of xattrs,
        in 28 KB of zstd, used up the 50,000 inodes of a tmpfs)."""
        self.xattr_budget -= size
        if self.xattr_budget < 0:  # this entry's counted as both, to be sure
            self._check_reserve(entry, size, -(-size // _XATTR_INODE))
            room_bytes, room_inodes = self.room
            self.xattr_budget = min(room_bytes // 2, room_inodes * _XATTR_INODE // 2,
                                    _LOOK_BYTES)

    # -- entry kinds --------------------------------------------------------------

    def _owner(self, entry: TarEntry) -> tuple[int, int] | None:
        """The owner to set, or None to leave the creator's."""
        if self.identity_owner:
            return (entry.uid, entry.gid)
        if self.options.no_lchown or self.caller_owns:
            return None
        if self.options.chown is not None:
            return self.options.chown
        return (
            idmap.to_host_or_fail(entry.uid, self.options.uid_maps, "uid", entry.name),
            idmap.to_host_or_fail(entry.gid, self.options.gid_maps, "gid", entry.name),
        )

    @staticmethod
    def _times(entry: TarEntry) -> tuple[int, int]:
        mtime = entry.mtime_ns
        if not _NS_MIN <= mtime <= _NS_MAX:
            mtime = _clamp_ns(mtime)
        atime = entry.atime_ns
        if atime is None:
            return mtime, mtime
        if not _NS_MIN <= atime <= _NS_MAX:
            atime = _clamp_ns(atime)
        return (atime if atime > mtime else mtime), mtime

    def _needs_chown(self, owner: tuple[int, int] | None, parent: str) -> bool:
        if owner is None:
            return False
        return owner != (self.euid, self.egid) or self.dirs.get(parent or ".", True)

    def _create_file(self, name: str, entry: TarEntry) -> int:
        mode = _creation_mode(entry)
        try:
            return self.create_file(name, mode)
        except FileExistsError:
            pass
        fd = -1

        def create() -> None:
            nonlocal fd
            fd = self.fs.create_file(name, mode)

        self._create(name, entry, create)
        return fd

    def _file(self, name: str, entry: TarEntry, reader: TarReader, helper: bool = True
              ) -> None:
        """A regular file that the helper does not create (see :meth:`_file_by_name`,
        asked first); ``helper``: False when that found the helper behind, or an owner
        to set, so that this file is not handed to it either."""
        try:
            fd = self.create_file(name, _creation_mode(entry))
        except FileExistsError:
            fd = self._create_file(name, entry)  # clears what is in the way
        if (helper and entry.size and self.finisher is not None
                and self.identity_owner and not entry.xattrs and not entry.mode & 0o7000
                and self._extent_file(fd, name, reader, entry)):
            return
        if entry.size < _THREADED_MIN_SIZE or reader.can_splice(entry):
            # Small files: a hand-over costs about what their few syscalls cost. Large
            # ones from a pipe: moved by the kernel (splice), nothing to hand over.
            if self.identity_owner and not entry.xattrs and not entry.mode & 0o7000:
                self._plain_file(fd, name, reader, entry, helper)  # closes fd
            else:
                self._write_inline(fd, name, reader, entry)  # closes fd
            return
        handed_over = False
        try:
            sparse = entry.sparse is not None
            owner = self._owner(entry)
            atime, mtime = self._times(entry)
            meta = FileMetadata(
                entry=entry.name,
                size=entry.size if sparse else None,
                owner=owner if self._needs_chown(owner, name.rpartition("/")[0]) else None,
                xattrs=entry.xattrs or None,
                special_mode=entry.mode & 0o7777 if _mode_after(entry) else None,
                atime_ns=atime,
                mtime_ns=mtime,
            )
            writer = self.writer
            if writer is None:  # started at the first large file: most archives have none
                writer = self.writer = FileWriter(self._writer_chown, self._writer_xattrs)
            pending: tuple[int, bytes] | None = None
            for offset, chunk in reader.data(entry):
                self._charge(len(chunk), entry.name)
                if writer.error is not None:
                    self._raise_writer_error()
                if pending is not None:
                    writer.put(fd, pending[0], pending[1], meta, False)
                    handed_over = True
                pending = (offset if sparse else -1, bytes(chunk))
            if pending is None:
                pending = (-1, b"")
            writer.put(fd, pending[0], pending[1], meta, True)
            handed_over = True
        finally:
            if not handed_over:
                os.close(fd)

    def _file_by_name(self, name: str, parent: str, entry: TarEntry, reader: TarReader
                      ) -> bool | None:
        """A plain regular file (``parent``: its directory) that the helper creates,
        writes (or copies from the archive), times and closes. Nothing done when it
        returns False (the helper is behind, or an owner is to be set: :meth:`_file`
        then does it all) or None (not a file for the helper to create: it may still
        finish it by descriptor)."""
        finisher = self.finisher
        if (finisher is None or not self.by_name or not self.identity_owner
                or entry.xattrs or entry.mode & 0o7000 or name in self.dirs
                # Not over a directory of ours: the helper would give the file back,
                # and until then the names below would still go into that directory.
                or (self.aliased and parent in self.aliased)):
            return None
        if entry.uid != self.euid or entry.gid != self.egid or self.dirs.get(
                parent or ".", True):
            return False  # an owner to set: the helper has no capability
        size = entry.size
        # Written out (what _charge and _times do in the common case): this is the
        # path of most entries, and its cost is what small files cost.
        mtime = entry.mtime_ns
        atime = entry.atime_ns  # a PAX atime (GNU tar --xattrs, --format=posix), or None
        if atime is None:
            if _NS_MIN <= mtime <= _NS_MAX:
                atime = mtime
            else:
                atime, mtime = self._times(entry)
        elif not _NS_MIN <= mtime <= atime <= _NS_MAX:  # an odd time, or atime < mtime
            atime, mtime = self._times(entry)
        encoded = name.encode(_FS_ENCODING, _FS_ERRORS)
        # From a regular file, any file with data travels as an extent: the worker then
        # neither copies its data into a batch nor sends it, and a batch holds up to
        # MAX_FILES files however large they are (with the data in the batch, a tree of
        # source files filled one batch every ten files: linux.tar 1.33 -> 1.07 s in
        # bench/engine_time.py, issue 16's ninth round).
        offset = reader.extent(entry) if size else -1
        if offset >= 0:
            self.bytes_budget -= size  # _charge_small(), written out
            if self.bytes_budget < 0 or self.deadline is not None:
                self.bytes_budget += size
                self._charge(size, entry.name)
            if not finisher.add_new(name, encoded, entry.mode & 0o777, b"", offset, size,
                                    atime, mtime, entry.name, entry):
                # The helper is far behind: this file is copied here (charged as one
                # the helper takes, even if an old file is kept: --skip-old-files).
                fd = self._create_file(name, entry)
                self._copy_extent_here(finisher, fd, entry, offset)
                return True
        else:
            if size > _FINISHER_MAX_FILE or not finisher.has_room(size + len(encoded)):
                return False  # too large for a batch, or the helper is behind
            view = reader.whole_data(entry)
            if view is None:
                return False
            if size:
                self._charge_small(size, entry.name)
            finisher.add_new(name, encoded, entry.mode & 0o777, view, -1, 0, atime, mtime,
                             entry.name, entry)
        if finisher.error is not None:
            self._raise_finisher_error(finisher.error)
        if finisher.returned:
            self._redo_returned()
        return True

    def _settle(self) -> None:
        """Wait until the helper has created the files it was sent; create those it gave
        back."""
        assert self.finisher is not None
        self.finisher.settle()
        if self.finisher.error is not None:
            self._raise_finisher_error(self.finisher.error)
        self._redo_returned()

    def _redo_returned(self) -> None:
        """Create, in archive order, the files the helper left to the worker (something
        was in the way: it is replaced here as for any file)."""
        finisher = self.finisher
        if finisher is None or self._redoing:
            return  # the outer call goes on with them in order
        self._redoing = True
        try:
            while finisher.returned:
                for path, token, data, offset, size in finisher.take_returned():
                    entry = token
                    assert isinstance(entry, TarEntry)
                    self._redo_file(finisher, path, entry, data, offset, size)
        finally:
            self._redoing = False

    def _redo_file(self, finisher: Finisher, path: str, entry: TarEntry,
                   data: memoryview | None, offset: int, size: int) -> None:
        try:
            if entry.kind == tarreader.SYMLINK:
                self._make_symlink(path, entry)
                return
            fd = self._create_file(path, entry)
            try:
                if offset >= 0:
                    finisher.copy_extent(fd, offset, size)
                elif data:
                    written = os.write(fd, data)
                    while written < len(data):
                        written += os.write(fd, data[written:])
                os.utime(fd, ns=self._times(entry))
            finally:
                os.close(fd)
        except _SkipEntry:
            pass
        except ChrootArchiveError:
            raise
        except OSError as err:
            if err.errno == errno.ENODATA:  # an extent past the end of the archive
                raise MalformedArchiveError("unexpected end of archive: truncated data",
                                            entry.name) from None
            raise self._os_error(err, entry.name) from err

    def _extent_file(self, fd: int, name: str, reader: TarReader, entry: TarEntry) -> bool:
        """A larger plain file of an archive read from a regular file: the helper copies
        its data from the archive, sets its times and closes it (the reader seeks over
        the data). False (``fd`` still ours) when it cannot."""
        assert self.finisher is not None
        if entry.uid != self.euid or entry.gid != self.egid or self.dirs.get(
                name.rpartition("/")[0] or ".", True):
            return False  # an owner to set: the helper has no capability
        offset = reader.extent(entry)
        if offset < 0:
            return False
        try:
            self._charge(entry.size, entry.name)
            atime, mtime = self._times(entry)
            room = self.finisher.has_extent_room(entry.size)
        except BaseException:
            os.close(fd)
            raise
        if not room:
            self._copy_extent_here(self.finisher, fd, entry, offset)
            return True
        self.finisher.add_extent(fd, offset, entry.size, atime, mtime, entry.name)
        if self.finisher.error is not None:
            self._raise_finisher_error(self.finisher.error)
        if self.finisher.returned:
            self._redo_returned()
        return True

    def _copy_extent_here(self, finisher: Finisher, fd: int, entry: TarEntry,
                          offset: int) -> None:
        """Copy a larger file's data from the archive in this thread (the helper is too
        far behind to take it: see :meth:`Finisher.has_extent_room`), time and close it
        (``fd``, in every case); the reader seeks over the data, as for the helper.

        A step at a time: if the helper runs dry meanwhile, it takes over the rest
        (from the descriptor's offset, which it shares), so that neither core waits
        for the other on a large file (rootfs.tar's 47 MB file list: issue 16)."""
        try:
            if finisher.error is not None:  # the helper failed: say so, not go on
                self._raise_finisher_error(finisher.error)
            size = entry.size
            atime, mtime = self._times(entry)
            while size > 2 * _COPY_STEP:
                finisher.copy_extent(fd, offset, _COPY_STEP)
                offset += _COPY_STEP
                size -= _COPY_STEP
                # Not ours while the helper may take it: an interrupt (the timeout's
                # alarm) after the helper's batch closed it must not close it again.
                owned, fd = fd, -1
                if finisher.take_over_if_idle(owned, offset, size, atime, mtime, entry.name):
                    self.extents_handed_over += 1
                    if finisher.error is not None:
                        self._raise_finisher_error(finisher.error)
                    return
                fd = owned
            finisher.copy_extent(fd, offset, size)
            os.utime(fd, ns=(atime, mtime))
            self.extents_here += 1
        except OSError as err:
            if err.errno == errno.ENODATA:  # an extent past the end of the archive
                raise MalformedArchiveError("unexpected end of archive: truncated data",
                                            entry.name) from None
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    def _plain_file(self, fd: int, name: str, reader: TarReader, entry: TarEntry,
                    helper: bool = True) -> None:
        """:meth:`_write_inline` for the most common file (owner as archived, no xattrs,
        no special bits), written out: most of an archive's cost is per entry.
        ``helper``: it may be handed to the helper."""
        try:
            view = reader.whole_data(entry)
            uid = entry.uid
            gid = entry.gid
            chown = uid != self.euid or gid != self.egid or self.dirs.get(
                name.rpartition("/")[0] or ".", True
            )
            mtime = entry.mtime_ns
            times_plain = entry.atime_ns is None and _NS_MIN <= mtime <= _NS_MAX
            if view is None:
                self._write_chunks(fd, reader, entry)
            else:
                size = len(view)
                if size:
                    self._charge_small(size, entry.name)
                finisher = self.finisher
                if (finisher is not None and helper and not chown
                        and size <= _FINISHER_MAX_FILE):
                    # It writes, sets the times and closes.
                    if times_plain:
                        finisher.add(fd, view, mtime, mtime, entry.name)
                    else:  # a PAX atime (GNU tar --xattrs, --format=posix) or an odd mtime
                        finisher.add(fd, view, *self._times(entry), entry.name)
                    fd = -1
                    if finisher.error is not None:
                        self._raise_finisher_error(finisher.error)
                    if finisher.returned:
                        self._redo_returned()
                    return
                if self.finisher_countdown > 0:
                    self.finisher_countdown -= 1
                    if not self.finisher_countdown:
                        self._start_finisher(reader)
                if size:
                    written = os.write(fd, view)
                    while written < size:
                        written += os.write(fd, view[written:])
            if chown:
                self._chown(fd, (uid, gid), entry.name, os.fchown)
            if times_plain:
                os.utime(fd, ns=(mtime, mtime))
            else:
                os.utime(fd, ns=self._times(entry))
        finally:
            if fd >= 0:
                os.close(fd)

    def _write_inline(self, fd: int, name: str, reader: TarReader, entry: TarEntry) -> None:
        """Data and metadata in this thread, then close ``fd`` (in every case)."""
        try:
            write = os.write
            view = reader.whole_data(entry)
            if view is not None:
                if view:
                    self._charge(len(view), entry.name)
                    while view:
                        view = view[write(fd, view):]
            else:
                self._write_chunks(fd, reader, entry)
            owner = self._owner(entry)
            if owner is not None and self._needs_chown(owner, name.rpartition("/")[0]):
                self._chown(fd, owner, entry.name, os.fchown)
            if entry.xattrs:
                self._xattrs_fd(fd, entry)
            if _mode_after(entry):
                os.fchmod(fd, entry.mode & 0o7777)
            os.utime(fd, ns=self._times(entry))
        finally:
            os.close(fd)

    def _write_chunks(self, fd: int, reader: TarReader, entry: TarEntry) -> None:
        """A file's data chunk by chunk (large or sparse files), or moved by the kernel
        from a pipe."""
        if reader.can_splice(entry):
            for step in reader.spliced(entry, fd):
                self._charge(step, entry.name)
            return
        sparse = entry.sparse is not None
        write = os.write
        pwrite = os.pwrite
        for offset, chunk in reader.data(entry):
            self._charge(len(chunk), entry.name)
            if sparse:
                while chunk:
                    n = pwrite(fd, chunk, offset)
                    chunk = chunk[n:]
                    offset += n
            else:
                while chunk:
                    n = write(fd, chunk)
                    chunk = chunk[n:]
        if sparse:
            os.ftruncate(fd, entry.size)

    def _writer_chown(self, fd: int, owner: tuple[int, int], entry: str) -> None:
        self._chown(fd, owner, entry, os.fchown)

    def _writer_xattrs(self, fd: int, xattrs: dict[str, bytes], entry: str) -> None:
        for key, value in xattrs.items():
            self._set_xattr(lambda k, v: os.setxattr(fd, k, v), key, value, entry)

    def _finish_helpers(self) -> None:
        """Wait for the helper process and the writer thread; raise their first error."""
        if self.finisher is not None:
            failed = self.finisher.finish()
            if failed is not None:
                self._raise_finisher_error(failed)
            self._redo_returned()
        if self.writer is not None:
            self.writer.drain()
            if self.writer.error is not None:
                self._raise_writer_error()

    def _raise_finisher_error(self, failed: tuple[OSError, str]) -> NoReturn:
        err, entry = failed
        if not err.errno:  # the helper ended early (killed, say): a process died
            raise WorkerError(err.strerror or str(err), entry or None)
        if err.errno == errno.ENODATA:  # an extent past the end of the archive
            raise MalformedArchiveError("unexpected end of archive: truncated data", entry)
        raise self._os_error(err, entry) from err

    def _start_finisher(self, reader: TarReader) -> None:
        """Fork the helper, if the worker runs no thread yet (forking then is safe)."""
        self.finisher_countdown = -1  # one try
        if self.writer is None:
            from chrootarchive.engine.finisher import Finisher  # imported before the jail

            self.finisher = Finisher.start(reader.file_source(), reader.ring_size)
            if self.finisher is not None:
                self.pending = self.finisher.pending
                # In a ring, the extents not yet copied hold it; when the parent has no
                # room left, the reader has them copied (see chrootarchive._ring).
                reader.hold_ring(self.finisher.oldest_extent, self._settle)

    def _raise_writer_error(self) -> None:
        assert self.writer is not None and self.writer.error is not None
        err, entry = self.writer.error
        if isinstance(err, ChrootArchiveError):
            raise err
        if isinstance(err, OSError):
            raise self._os_error(err, entry) from err
        raise InternalError(f"{type(err).__name__}: {err}", entry) from err

    def _dir(self, name: str, entry: TarEntry) -> None:
        created_mode = (entry.mode & 0o7777) | 0o700

        def create() -> None:
            self.fs.mkdir(name, created_mode)

        kept = self._create(name, entry, create)
        if not kept and not entry.xattrs and not self.markers:
            owner = self._owner(entry)
            if owner is None or not self._needs_chown(owner, name.rpartition("/")[0]):
                # Nothing to set now (most directories): its identity, for the end, is
                # read with lstat rather than through a descriptor (three syscalls).
                # The same guarantee: a directory someone renames into place between
                # the mkdir and the look is theirs either way (docs/security.md).
                st = self.fs.lstat(name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    self._remember(name, bool(st.st_mode & stat.S_ISGID))
                    atime, mtime = self._times(entry)
                    self.pending_dirs.append(name, st.st_dev, st.st_ino,
                                             entry.mode & 0o7777, atime, mtime)
                    return
                # Not a directory any more: the descriptor's open below says so.
        self._apply_dir(name, entry, kept)

    def _merge_dir(self, name: str, entry: TarEntry) -> None:
        self._apply_dir(name, entry, True)

    def _apply_dir(self, name: str, entry: TarEntry, existed: bool) -> None:
        if existed and self.old_files != "replace":
            # GNU tar's --keep-old-files/--skip-old-files: an existing directory is
            # merged into, its own metadata kept.
            fd = self.fs.open_dir(name)
            try:
                self._remember(name, bool(os.fstat(fd).st_mode & stat.S_ISGID))
            finally:
                os.close(fd)
            return
        fd = self.fs.open_dir(name)
        try:
            if existed and self.layer_mode:
                self._drop_other_xattrs(fd, entry)
            owner = self._owner(entry)
            if owner is not None and (existed or self._needs_chown(owner, posixpath.dirname(name))):
                self._chown(fd, owner, entry.name, os.fchown)
            if entry.xattrs:
                self._dir_xattrs(fd, name, entry)
            if not existed:
                self.whiteouts.directory_made(name, fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self._remember(name, bool(st.st_mode & stat.S_ISGID))
        atime, mtime = self._times(entry)
        self.pending_dirs.append(name, st.st_dev, st.st_ino, entry.mode & 0o7777, atime, mtime)

    def _symlink(self, name: str, entry: TarEntry) -> None:
        paths.check_symlink(name, entry.linkname, entry.name)
        if self.data_links is not None:  # made here (not by the helper): its inode
            where = self._real_location(name, entry.name)
            self._make_symlink(name, entry)
            self._note_data_link(name, where)
            return
        finisher = self.finisher
        if (finisher is not None and self.by_name and self.identity_owner
                and not entry.xattrs and entry.uid == self.euid and entry.gid == self.egid
                and not self.dirs.get(name.rpartition("/")[0] or ".", True)
                and name not in self.dirs and name.rpartition("/")[0] not in self.aliased):
            # Nothing to set but the times: the helper makes it (or gives it back; not
            # over a directory of ours, as for files).
            target = os.fsencode(entry.linkname)
            if finisher.has_room(len(target) + len(name)):
                finisher.add_symlink(name, target, *self._times(entry), entry.name, entry)
                if finisher.error is not None:
                    self._raise_finisher_error(finisher.error)
                if finisher.returned:
                    self._redo_returned()
                return
        self._make_symlink(name, entry)

    def _make_symlink(self, name: str, entry: TarEntry) -> None:
        target = entry.linkname
        self._make_node(name, entry, lambda dir_fd, node: os.symlink(target, node,
                                                                     dir_fd=dir_fd))

    def _hardlink(self, name: str, entry: TarEntry) -> None:
        target = self.whiteouts.hardlink_target(paths.hardlink_target(entry.linkname, entry.name))
        if target == name:
            return  # a link to itself: nothing to do
        if target == ".":
            raise ArchiveError("cannot hard link to the destination root", entry.name)
        if self.pending:
            # Not only the same name: the target may reach a pending file through an
            # in-root symlink (s/f for real/f), or an old file the helper gives back.
            self._settle()

        skipped = [False]

        def create() -> None:
            try:
                self.fs.hardlink(target, name)
            except FileNotFoundError:
                if self.fs.lstat(target) is None:
                    if target in self.skipped_device_names:
                        skipped[0] = True  # another name of a device skipped
                        return
                    if target in self.excluded_names:  # by excludes or members
                        self.excluded_links += 1  # another name of a file excluded
                        return
                    raise ArchiveError(
                        f"hardlink target {quoted(entry.linkname)} does not exist", entry.name
                    ) from None
                raise
            except PermissionError:
                st = self.fs.lstat(target)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    raise ArchiveError(
                        f"hardlink target {quoted(entry.linkname)} is a directory", entry.name
                    ) from None
                raise

        self._create(name, entry, create)
        if self.data_links is not None and not skipped[0]:
            st = self.fs.lstat(name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                # Another name of a symlink: followed too, from where it is.
                try:
                    where = self._real_location(name, entry.name)
                except BreakoutError:
                    self.fs.unlink(name)
                    raise
                self._note_data_link(name, where)
        if skipped[0]:
            if self.filtering and self.filter.name == "data":
                self.filter.dropped["device nodes and FIFOs"] += 1
            else:
                self.skipped_devices += 1

    def _special(self, name: str, entry: TarEntry) -> None:
        if entry.kind == tarreader.FIFO:
            fmt, device = stat.S_IFIFO, 0
        else:
            fmt = stat.S_IFCHR if entry.kind == tarreader.CHARDEV else stat.S_IFBLK
            if entry.devmajor >= 1 << 32 or entry.devminor >= 1 << 32:
                raise MalformedArchiveError("device number out of range", entry.name)
            device = os.makedev(entry.devmajor, entry.devminor)
        mode = fmt | (entry.mode & 0o777)
        try:
            self._make_node(name, entry, lambda dir_fd, node: os.mknod(node, mode, device,
                                                                       dir_fd=dir_fd))
        except PermissionError:
            if not self.limited or entry.kind == tarreader.FIFO:
                raise
            self.skipped_devices += 1  # devices need real root (CAP_MKNOD in init userns)
            self.skipped_device_names.add(name)  # a hardlink to it is skipped too
            return
        if entry.kind != tarreader.FIFO and (entry.devmajor or entry.devminor):
            self.filter.made("device nodes")  # not a 0/0 whiteout

    def _make_node(self, name: str, entry: TarEntry,
                   make: Callable[[int, str], None]) -> None:
        """A symlink or special file, made by ``make(dir_fd, name)`` in a private
        directory of the worker's, given its owner, xattrs, mode and times there, and
        moved to ``name`` (what is in the way cleared as for files). Made at ``name``, it
        was re-opened there for them: a racer with the worker's uid passed every check
        with a node of its own linked there for the moment, and it took them."""
        if self.old_files != "replace" and self.fs.lstat(name) is not None:
            self._clear_for(name, entry)  # skipped, as before anything is made
        parent = name.rpartition("/")[0]
        where = self._node_dir(parent)  # ours alone until kept: clearing the way may
        try:                            # settle the helper, which may make nodes too
            try:
                node = where.make(name, make)
            except FileExistsError:
                raise DestinationError("replaced while being created (a concurrent "
                                       "writer?)", entry.name) from None
            with node:
                self._node_metadata(node, name, entry)
                self._create(name, entry, node.place)
        except BaseException:
            where.close()
            raise
        if self.node_dir is None:
            self.node_dir, self.node_parent = where, parent
        else:
            where.close()

    def _node_metadata(self, node: fsops.PrivateNode, name: str, entry: TarEntry) -> None:
        """Owner, xattrs, mode and times of a node made in a private directory."""
        st = node.st
        if not self._is_made(st, entry) or (
                entry.kind == tarreader.SYMLINK and node.readlink() != entry.linkname):
            raise DestinationError(
                "replaced while being created (a concurrent writer?)", entry.name)
        owner = self._owner(entry)
        if owner is not None and (owner != (st.st_uid, st.st_gid)):
            self._chown(node.fd, owner, entry.name, fsops.set_owner_path_fd)
        for key, value in entry.xattrs.items():
            self._set_xattr(node.setxattr, key, value, entry)
        if not stat.S_ISLNK(st.st_mode) and (
                entry.mode & 0o7000 or stat.S_IMODE(st.st_mode) != entry.mode & 0o777):
            # Special bits, or those the caller's umask took (openat2): through the
            # descriptor, on the node no one else can reach.
            self.fs.chmod_via(node.fd, name, stat.S_IFMT(st.st_mode) | entry.mode)
        fsops.set_times_path_fd(node.fd, *self._times(entry))

    def _node_dir(self, parent: str) -> fsops.PrivateDir:
        """The private directory to make a node of ``parent`` in, the caller's until it
        keeps it: the one made for the node before, if it was made in ``parent`` and
        ``parent`` still leads to the same directory, else a new one. One for a run of
        nodes: a directory made and removed per node cost a third of the time of
        20,000 symlinks."""
        held, self.node_dir = self.node_dir, None
        if held is not None:
            if self.node_parent == parent and os.fstat(held.private_fd).st_nlink:
                try:
                    st, pinned = self.fs.stat(parent or "."), os.fstat(held.parent_fd)
                except BaseException:
                    held.close()
                    raise
                if (st.st_dev, st.st_ino) == (pinned.st_dev, pinned.st_ino):
                    return held  # (not removed with its parent, nor emptied)
            held.close()
        return self.fs.node_dir(parent)

    def close_node_dir(self) -> None:
        """Remove the private directory nodes were made in, if there is one."""
        held, self.node_dir = self.node_dir, None
        if held is not None:
            held.close()

    @staticmethod
    def _is_made(st: os.stat_result, entry: TarEntry) -> bool:
        """The node in the private directory is of the entry's kind (and device)."""
        if entry.kind == tarreader.SYMLINK:
            ok = stat.S_ISLNK(st.st_mode)
        elif entry.kind == tarreader.FIFO:
            ok = stat.S_ISFIFO(st.st_mode)
        else:
            want = stat.S_IFCHR if entry.kind == tarreader.CHARDEV else stat.S_IFBLK
            ok = (stat.S_IFMT(st.st_mode) == want
                  and st.st_rdev == os.makedev(entry.devmajor, entry.devminor))
        return ok

    def _dir_xattrs(self, fd: int, name: str, entry: TarEntry) -> None:
        """A directory's xattrs, but its default ACL, set once all is unpacked (as GNU
        tar and bsdtar do): set now, every entry made below would inherit it, an access
        ACL (and mask) that the archive does not give it."""
        for key, value in entry.xattrs.items():
            if key == _DEFAULT_ACL:
                if len(value) > _XATTR_SIZE_MAX:  # what setxattr(2) would say now
                    err = OSError(errno.E2BIG, os.strerror(errno.E2BIG))
                    raise from_os_error(err, entry.name, kind=ArchiveError,
                                        action=f"setting xattr {key}") from err
                st = os.fstat(fd)
                path, entry_name = os.fsencode(name), os.fsencode(entry.name)
                record = path + entry_name + value
                # Kept until the end, spilled to the destination's filesystem: counted
                # as file data (max_bytes, the reserve), as a directory declared again
                # and again keeps a record each time (64 KiB of ACL per 1 KiB of gzip).
                self._charge(len(record) + _DEFAULT_ACL_RECORD.size, entry.name)
                self.default_acls.append(os.fsdecode(record), st.st_dev, st.st_ino,
                                         len(path), len(entry_name))
            else:
                self._set_xattr(lambda k, v: os.setxattr(fd, k, v), key, value, entry)

    def _set_default_acls(self) -> None:
        """The default ACLs :meth:`_dir_xattrs` kept, on the directories that were made
        (one replaced since is not ours any more); a directory's last one wins."""
        done = layer.NameSet()
        try:
            for record, (dev, ino, path_size, entry_size) in self.default_acls.newest_first():
                key = f"{dev}:{ino}"
                if key in done:
                    continue
                done.add(key)
                data = os.fsencode(record)
                path = os.fsdecode(data[:path_size])
                entry = os.fsdecode(data[path_size:path_size + entry_size])
                try:
                    fd = self.fs.open_dir(path)
                except OSError:
                    continue
                try:
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) == (dev, ino):
                        self._xattr_fd(fd, _DEFAULT_ACL, data[path_size + entry_size:], entry)
                finally:
                    os.close(fd)
        finally:
            self.default_acls.close()

    def _xattr_fd(self, fd: int, key: str, value: bytes, entry: str) -> None:
        self._set_xattr(lambda k, v: os.setxattr(fd, k, v), key, value, entry)

    def _xattrs_fd(self, fd: int, entry: TarEntry) -> None:
        for key, value in entry.xattrs.items():
            self._set_xattr(lambda k, v: os.setxattr(fd, k, v), key, value, entry)

    def _drop_other_xattrs(self, fd: int, entry: TarEntry) -> None:
        """A directory that a layer declares again takes exactly this entry's xattrs and
        ACLs, as overlayfs shows the upper directory's (and umoci clears them): remove
        the lower one's others, but for labels the host manages."""
        names: list[str] = []
        try:
            # trusted.* are listed (and removed) only with CAP_SYS_ADMIN.
            fsops.with_privilege(lambda: names.extend(os.listxattr(fd)))
        except OSError as err:
            if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            raise
        wanted = entry.xattrs
        for key in names:
            if key in wanted or key.startswith(self.kept_xattrs):
                continue
            try:
                if key.startswith("trusted."):
                    def remove(name: str = key) -> None:
                        os.removexattr(fd, name)

                    fsops.with_privilege(remove)
                else:
                    os.removexattr(fd, key)
            except OSError as err:
                if err.errno == errno.ENODATA:
                    continue
                if err.errno in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP):
                    self.stale_xattrs += 1
                    continue
                raise from_os_error(err, entry.name, kind=ArchiveError,
                                    action=f"removing xattr {key}") from err

    def _acl_host_ids(self, value: bytes, entry: str) -> bytes:
        maps = self.options
        return acl.map_ids(
            value,
            lambda i: idmap.to_host_or_fail(i, maps.uid_maps, "uid", entry),
            lambda i: idmap.to_host_or_fail(i, maps.gid_maps, "gid", entry),
        )

    def _set_xattr(
        self, setter: Callable[[str, bytes], None], key: str, value: bytes,
        entry: TarEntry | str,
    ) -> None:
        entry_name = entry if isinstance(entry, str) else entry.name
        if self.map_acl_ids and key in acl.ACL_XATTRS:
            value = self._acl_host_ids(value, entry_name)
        try:
            if key.startswith("trusted."):
                fsops.with_privilege(lambda: setter(key, value))
            else:
                setter(key, value)
                if key == "security.capability":
                    self.filter.made("file capabilities")
        except OSError as err:
            if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) and self.options.best_effort_xattrs:
                self.unsupported_xattrs += 1
                self.warn(f"{entry_name}: xattr {key} not supported here, skipped")
                return
            if err.errno == errno.EPERM:
                # Refused by the kernel: a privileged namespace without privilege, or
                # security.ima under an IMA policy, user.* on a symlink. Docker and GNU
                # tar skip these with a warning.
                if self.limited and not key.startswith("user."):
                    self.skipped_xattrs += 1  # trusted.* and friends need real root
                else:
                    if not self.refused_xattrs:
                        self.refused_example = f"{key} of {entry_name}"
                    self.refused_xattrs += 1
                return
            if err.errno == errno.EINVAL and self.limited and key in acl.ACL_XATTRS:
                try:
                    if self._set_representable_acl(setter, key, value):
                        return
                except OSError as again:
                    err = again
            raise from_os_error(err, entry_name, kind=ArchiveError,
                                action=f"setting xattr {key}") from err

    def _set_representable_acl(
        self, setter: Callable[[str, bytes], None], key: str, value: bytes
    ) -> bool:
        """In a user namespace, an ACL naming an id outside its map is refused whole
        (EINVAL): set it without those entries (they grant nothing anyone here could
        use), as owners that cannot be represented are skipped. False if every entry is
        representable (the EINVAL has another cause)."""
        entries = acl.parse(value)
        if entries is None:
            return False
        named = (acl.USER, acl.GROUP)
        kept = []
        for item in entries:
            tag, _perm, ident = item
            if tag in named:
                known = self.acl_known.get((tag, ident))
                if known is None and self.acl_probes_left <= 0:
                    known = False  # a hostile number of distinct ids: no more probes
                elif known is None:
                    # The kernel alone knows the namespace's map (/proc is not in the
                    # jail): ask it with this one entry, once per id.
                    self.acl_probes_left -= 1
                    probe = [e for e in entries if e[0] not in named or e is item]
                    try:
                        setter(key, acl.build(probe))
                        known = True
                    except OSError as err:
                        if err.errno != errno.EINVAL:
                            raise
                        known = False
                    self.acl_known[(tag, ident)] = known
                if not known:
                    self.acl_dropped += 1
                    shown = f"{'u' if tag == acl.USER else 'g'}:{ident}"
                    if len(self.acl_dropped_ids) < 5 and shown not in self.acl_dropped_ids:
                        self.acl_dropped_ids.append(shown)
                    continue
            kept.append(item)
        if len(kept) == len(entries):
            return False
        setter(key, acl.build(kept))
        return True

    # -- what cannot be represented without privilege ----------------------------

    def _chown(
        self, fd: int, owner: tuple[int, int], entry: str, chown: Callable[[int, int, int], None]
    ) -> None:
        """Set an owner; unprivileged, an owner that cannot be represented is skipped."""
        if owner in self.unmappable:
            self._skip_owner(fd, owner)
            return
        try:
            chown(fd, *owner)
        except OSError as err:
            if not self.limited or err.errno not in (errno.EINVAL, errno.EPERM):
                raise
            if len(self.unmappable) < _MAX_UNMAPPABLE:
                self.unmappable.add(owner)
            self._skip_owner(fd, owner)

    def _skip_owner(self, fd: int, owner: tuple[int, int]) -> None:
        self.skipped_owners += 1
        if self.options.rootless_xattr and owner != (0, 0):
            record = _rootless_resource(*owner)
            try:
                os.setxattr(fd, ROOTLESS_XATTR, record)
            except OSError:
                try:
                    os.setxattr(f"/proc/self/fd/{fd}", ROOTLESS_XATTR, record)
                except OSError:
                    pass

    def _summarize_skips(self) -> None:
        for line in self.filter.warnings():
            self.warn(line)
        if self.skipped_owners:
            ids = ", ".join(f"{u}:{g}" for u, g in sorted(self.unmappable)[:5])
            self.warn(
                f"{counted(self.skipped_owners, 'entry', 'entries')} kept the unpacking "
                "user's ownership: "
                f"owners ({ids}{', ...' if len(self.unmappable) > 5 else ''}) cannot be "
                "represented without privilege or outside the user namespace's id map"
                + (f" (recorded in {ROOTLESS_XATTR})" if self.options.rootless_xattr else "")
            )
        if self.skipped_devices:
            self.warn(f"{counted(self.skipped_devices, 'device node')} skipped: creating "
                      "devices needs real root")
        if self.excluded_links and self.members is not None:
            self.warn(f"{counted(self.excluded_links, 'hardlink')} left out: the target is "
                      "not among members= (or excluded); tarfile would copy its data there")
        elif self.excluded_links:
            self.warn(f"{counted(self.excluded_links, 'hardlink')} to excluded files left "
                      "out")
        if self.skipped_xattrs:
            self.warn(f"{counted(self.skipped_xattrs, 'privileged xattr')} (trusted.*, "
                      "security.*) skipped: they need real root")
        if self.refused_xattrs:
            self.warn(f"{counted(self.refused_xattrs, 'xattr')} refused by the kernel "
                      f"(operation not "
                      f"permitted) skipped, as Docker and GNU tar skip them (the first: "
                      f"{self.refused_example})")
        if self.acl_dropped:
            ids = ", ".join(self.acl_dropped_ids)
            self.warn(f"{counted(self.acl_dropped, 'ACL entry', 'ACL entries')} left out: "
                      f"their ids ({ids}"
                      f"{', ...' if self.acl_dropped > len(self.acl_dropped_ids) else ''}) "
                      "are outside the user namespace's id map and cannot be represented")
        if self.stale_xattrs:
            self.warn(f"{counted(self.stale_xattrs, 'xattr')} of directories declared "
                      "again by the "
                      "layer could not be removed (not permitted here)")

    # -- the end ------------------------------------------------------------------

    # -- filter data: symlinks that lead out ---------------------------------------

    def _link_walk(self) -> linkwalk.LinkWalk:
        """The walk (the data filter's, else one of the layer's), its budget topped up
        for the entries read since."""
        if self.data_links is not None:
            walk = self.data_links.walk
        else:
            if self.layer_walk is None:  # each layer's own: a small start, then per entry
                self.layer_walk = linkwalk.LinkWalk(self.fs, _LAYER_LINK_STEPS)
            walk = self.layer_walk
        walk.budget += _LINK_STEPS_PER_ENTRY * (self.stats.entries - self.link_steps_given)
        self.link_steps_given = self.stats.entries
        return walk

    def _layer_name(self, name: str) -> str:
        """Layer rules: ``name``, whose parent was reached through an in-root symlink,
        by where it really is, so that a marker hides only what lower layers left
        there, whichever name the layer gives it (umoci's ``upperPaths``). As it is
        when that cannot be said (a tangle past the budget): then a marker may take
        some of the layer's own files in that directory, and nothing else."""
        parent, _, base = name.rpartition("/")
        try:
            parts = self._link_walk().in_root(parent)
        except linkwalk.TooManyLookups:
            return name
        if parts is None:
            return name
        return "/".join([*parts, base])

    def _real_location(self, name: str, entry_name: str) -> str:
        """Where ``name`` really is: its parent resolved through the symlinks on the
        way (a directory known to have none is taken as it is).

        Raises:
            BreakoutError: the parent leads out of the destination.
            ArchiveError: the walks' budget is spent.
        """
        parent, _, base = name.rpartition("/")
        if not parent or (parent in self.dirs and parent not in self.aliased):
            return name
        try:
            parts = self._link_walk().real_parent(parent)
        except linkwalk.TooManyLookups:
            raise self._tangle_error() from None
        if parts is None:
            raise BreakoutError(
                "the directory it is in leads out of the destination through the "
                "symlinks on its way: refused by the data filter", entry_name)
        return "/".join([*parts, base])

    def _note_data_link(self, name: str, where: str) -> None:
        st = self.fs.lstat(name)
        if st is not None and self.data_links is not None:
            self.data_links.records.append(where, st.st_dev, st.st_ino)

    @staticmethod
    def _leads_out(walk: linkwalk.LinkWalk, where: str) -> bool:
        """Whether the symlink recorded at ``where`` leads out. Its directory is
        resolved again: a name recorded as real may now pass through a symlink, and
        the symlink is where the kernel found it by that name."""
        parent, _, name = where.rpartition("/")
        parts = walk.real_parent(parent) if parent else []
        return parts is None or walk.leads_out(parts, name)

    def _tangle_error(self) -> ArchiveError:
        return ArchiveError(
            f"the data filter could not follow the archive's symlinks within the steps "
            f"it allows ({_LINK_STEPS:,}, and {_LINK_STEPS_PER_ENTRY} an entry): a "
            f"tangle of symlinks; those not followed were removed")

    def check_data_links(self, *, failing: bool = False) -> None:
        """filter data: no symlink made leads out of the destination, now that all is
        written (:mod:`.linkwalk`: a lexical check at each entry cannot see it). Each
        is followed from where it was made, if it is still there; those that lead
        out, or cannot be followed, are removed, and the first is the error. After
        another error (``failing``) they are only removed. Past the walks' budget,
        every symlink not yet followed is removed, and that is the error."""
        if self.data_links is None:
            return
        walk: linkwalk.LinkWalk | None = self._link_walk()
        links = self.data_links.records
        self.data_links = None
        if walk is not None and walk.budget < 0:
            walk = None
        refused: tuple[str, str] | None = None
        removed = unfollowed = 0
        stuck: tuple[OSError, str] | None = None  # a symlink that could not be removed
        broke: BaseException | None = None  # what stopped the walks (memory, say)
        try:
            for where, (dev, ino) in links.newest_first():
                try:
                    st = self.fs.lstat(where)
                except OSError:
                    continue  # not reached any more: not where it was made
                if st is None or (st.st_dev, st.st_ino) != (dev, ino):
                    continue  # replaced, or removed with its directory
                if walk is not None:
                    try:
                        target = self.fs.readlink(where)
                        if not self._leads_out(walk, where):
                            continue
                        refused = (where, target)  # read newest first: the archive's first
                    except linkwalk.TooManyLookups:
                        walk = None
                    except OSError:
                        unfollowed += 1  # removed, as one that leads out
                    except BaseException as err:  # the rest is removed, then it is raised
                        walk, broke = None, err
                try:
                    self.fs.unlink(where)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as err:
                    stuck = stuck or (err, where)
        finally:
            links.close()
        if broke is not None:
            if isinstance(broke, MemoryError) and self.limits.max_memory is not None:
                raise LimitExceededError(
                    f"limit max_memory ({self.limits.max_memory:,} bytes) exceeded while "
                    f"following the archive's symlinks (filter data); those not followed "
                    f"were removed")
            raise broke
        if failing:
            return
        if stuck is not None:
            raise self._os_error(*stuck)
        if walk is None:
            raise self._tangle_error()
        if refused is not None:
            where, target = refused
            more = f"; {removed - 1:,} more removed" if removed > 1 else ""
            raise BreakoutError(
                f"symlink target {quoted(target)} leads out of the destination through the "
                f"symlinks on its way: refused by the data filter, and removed{more}", where)
        if unfollowed:
            self.warn(f"filter data: removed {unfollowed} symlinks that could not be "
                      "followed to see where they lead")

    def _open_spill(self) -> int:
        return _open_spill(self.fs)

    def finish_dirs(self) -> None:
        """Apply directory modes and times, deepest first, only to our directories."""
        try:
            self._set_default_acls()
            self._finish_dirs()
        finally:
            self.pending_dirs.close()

    def _finish_dirs(self) -> None:
        """Each directory takes the mode and times of its last entry, as with GNU tar
        and ``tarfile``: the records are read newest first, and a directory already
        done (by any of its names) is left alone. An older record of a directory that
        was replaced would otherwise win too, whenever the new one reused its inode.
        The directories done are kept as hashes, 8 bytes each (:class:`layer.NameSet`):
        a set of tuples took 115 bytes a directory, and 150,000 directories ran out of
        the default memory limit."""
        done = layer.NameSet()
        for path, (dev, ino, mode, atime_ns, mtime_ns) in self.pending_dirs.newest_first():
            try:
                fd = self.fs.open_dir(path)
            except OSError:
                continue  # replaced or removed since: not ours any more
            try:
                st = os.fstat(fd)
                key = f"{dev}:{ino}"
                if (st.st_dev, st.st_ino) != (dev, ino) or key in done:
                    continue
                done.add(key)
                if stat.S_IMODE(st.st_mode) != mode:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(atime_ns, mtime_ns))
            except OSError as err:
                raise self._os_error(err, path) from err
            finally:
                os.close(fd)

    def _os_error(self, err: OSError, entry: str) -> ChrootArchiveError:
        """Whether the destination or the archive is at fault, by errno."""
        if err.errno in (errno.EACCES, errno.EROFS) and not self._root_writable():
            # Not this entry's fault: the destination itself (the parent names it).
            return DestinationError(f"cannot write to the destination: {err.strerror}")
        kind = DestinationError if err.errno in _DEST_ERRNOS else ArchiveError
        return from_os_error(err, entry, kind=kind)

    def _root_writable(self) -> bool:
        try:
            fd = self.fs.open_dir(".")
        except OSError:
            return True  # cannot tell: the entry's own error stands
        try:
            return os.access(".", os.W_OK, dir_fd=fd, effective_ids=True)
        finally:
            os.close(fd)
