"""The tree walk of the ``pack`` job: a tar stream of a tree, read without following a
symlink.

How the tree is read, so that nobody can redirect a read (CVE-2018-15664):

* the source is resolved once, by the ``open_dir`` the job gives (``openat2`` with
  ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` from the root); in-root symlinks on the
  way to it are followed, its last component only when the source ends with ``/`` or
  ``/.`` (as ``docker cp`` does);
* below it, every directory is opened from its parent's descriptor with
  ``O_NOFOLLOW | O_DIRECTORY`` and listed through its own descriptor, and every name
  is one component acted on with ``*at`` calls that never follow a symlink. No path
  string is resolved again from the root, so a racer who swaps a directory for a
  symlink gets the symlink packed as a symlink (or the entry skipped), never followed;
* no device, FIFO or socket is ever opened, not even one a racer swaps in for a file
  (:mod:`chrootarchive._fdio`): in the caller's process a file is pinned with
  ``O_PATH | O_NOFOLLOW``, its type checked on that descriptor and only then is that
  inode opened for reading (``/proc/self/fd``); in a jail, whose mounts are ``nodev``,
  the kernel refuses a device's open and what else opens is closed unread. The header
  is made from the ``fstat`` of that descriptor, so header and data describe the same
  inode;
* the listing's file types (``d_type``) only choose the first call: a file is opened
  and a directory is opened ``O_DIRECTORY`` without a ``stat`` first, and what is
  found on the descriptor decides;
* no user or group name is ever looked up (CVE-2019-14271): names come from the
  caller's mapping or are left empty; owners are numeric.

The headers are written by :mod:`chrootarchive.tarformat.writer`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from chrootarchive._fdio import (
    READ_FLAGS,
    close_pair,
    open_regular_in_jail,
    pin_regular,
    proc_fds,
    reopen,
    write_all,
)
from chrootarchive.engine import acl, fsops, idmap
from chrootarchive.engine import names as paths
from chrootarchive.errors import (
    ChrootArchiveError,
    ConfinementError,
    SourceError,
    from_os_error,
)
from chrootarchive.tarformat.format import (
    BLKTYPE,
    BLOCK,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    NS,
    REGTYPE,
    SYMTYPE,
    ZERO_BLOCK,
)
from chrootarchive.tarformat.writer import header

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from chrootarchive.contract import PackSpec
    from chrootarchive.engine.jobs import IdMapRanges


    #: Opens a directory below the root (a path as the caller gave it), returns its fd.
    Opener = Callable[[str], int]

__all__ = ["Packer"]

_FLUSH_AT = 1 << 20  # bytes buffered before a write to the pipe
_SMALL_FILE = 256 << 10  # files up to this size are copied through the buffer
_SENDFILE_MAX = 1 << 30
#: Data regions of one sparse file, at most: beyond, it is written whole (the map is
#: read into memory by whoever unpacks it, under its limits).
_MAX_SPARSE_REGIONS = 10_000
_MAX_LINKS = 100_000  # inodes remembered for their next hard link (about 150 bytes each)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: Host-specific labels that mean nothing elsewhere (Docker and GNU tar omit them too).
_SKIPPED_XATTRS = frozenset({"security.selinux"})
#: Readable only with CAP_SYS_ADMIN, which the jailed worker gives up: never packed, so
#: that every mechanism writes the same archive.
_SKIPPED_PREFIX = "trusted."
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES})
# errno of an open that met something else than what was listed: a racer was there.
_CHANGED = frozenset({errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EINVAL})
# What the listing said a name was (d_type): only a hint of which call to try first.
_OTHER, _FILE, _DIR = 0, 1, 2


# -- output --------------------------------------------------------------------------

class _Out:
    """Buffered writes to the output pipe; big files go straight with sendfile."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.sendfile_ok = True

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= _FLUSH_AT:
            self.flush()

    def zeros(self, count: int) -> None:
        if count < BLOCK:
            self.buf += ZERO_BLOCK[:count]
            return
        while count > 0:
            n = min(count, _FLUSH_AT)
            self.write(bytes(n))
            count -= n

    def flush(self) -> None:
        if self.buf:
            write_all(self.fd, self.buf)
            self.buf = bytearray()

    def copy_from(self, src: int, size: int, start: int = 0) -> int:
        """Copy ``size`` bytes of ``src`` from ``start``; returns how many there were."""
        done = 0
        if size <= _SMALL_FILE:
            while done < size:
                chunk = os.pread(src, size - done, start + done)
                if not chunk:
                    break
                self.buf += chunk
                done += len(chunk)
            if len(self.buf) >= _FLUSH_AT:
                self.flush()
            return done
        self.flush()
        while done < size:
            if self.sendfile_ok:
                try:
                    n = os.sendfile(self.fd, src, start + done,
                                    min(size - done, _SENDFILE_MAX))
                except OSError as err:
                    if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    self.sendfile_ok = False
                    continue
            else:
                chunk = os.pread(src, min(size - done, _FLUSH_AT), start + done)
                n = len(chunk)
                if n:
                    write_all(self.fd, chunk)
            if n == 0:
                break
            done += n
        return done

    def finish(self) -> None:
        self.zeros(2 * BLOCK)  # the end-of-archive marker
        self.flush()


def _name_bytes(item: tuple[str, int]) -> bytes:
    return item[0].encode("utf-8", "surrogateescape")


def _data_regions(fd: int, size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of the data in a file with holes (``SEEK_DATA``/``SEEK_HOLE``),
    ending with ``(size, 0)`` when it ends in a hole, as GNU tar writes it; None when it
    has no hole after all, or too many regions, or the filesystem cannot tell."""
    regions: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                data = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as err:
                if err.errno != errno.ENXIO:  # ENXIO: only a hole from here
                    raise
                break
            if data >= size:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            regions.append((data, hole - data))
            if len(regions) > _MAX_SPARSE_REGIONS:
                return None
            offset = hole
    except OSError:
        return None
    if regions == [(0, size)]:
        return None
    if not regions or sum(regions[-1]) < size:
        regions.append((size, 0))
    return regions


# -- the walk ------------------------------------------------------------------------


def _source_error(err: OSError, where: str) -> ChrootArchiveError:
    return from_os_error(err, where, kind=SourceError)


class Packer:
    """Writes the tar stream of one source.

    Args:
        out_fd: where the stream goes.
        options: what to pack and how to name and own it.
        warn: called with one line for each thing skipped.
        src: the source's name in messages (its path as the caller gave it).
        jailed: running confined (xattrs of symlinks are read via ``fchdir``; files
            are opened as :func:`~chrootarchive._fdio.open_regular_in_jail` says; there
            is no ``/proc``), else in-process (via ``/proc/self/fd``).
    """

    def __init__(
        self,
        out_fd: int,
        options: PackSpec,
        warn: Callable[[str], None],
        *,
        src: str,
        jailed: bool,
        outside_ids: tuple[IdMapRanges, IdMapRanges] | None = None,
    ) -> None:
        self.out = _Out(out_fd)
        self.options = options
        self.warn = warn
        self.src = src
        self.jailed = jailed
        self.excludes = paths.exclude_matcher(options.excludes, options.exclude_style)
        self.has_exceptions = options.exclude_style == "docker" and any(
            p.strip().startswith("!") for p in options.excludes)  # tar's '!' is literal
        self.rebase = sorted(options.rebase_names.items(), key=lambda kv: -len(kv[0]))
        # Inodes with more links still to come: (name packed first, links not seen yet).
        self.links: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.links_full = False  # warned that _MAX_LINKS was reached
        self.seen: set[str] | None = set() if len(options.include_files) > 1 else None
        self.noatime = os.O_NOATIME
        self.fds = -1  # /proc/self/fd while packing in-process
        #: st_dev -> the kernel file system it is (procfs...), or None; learnt once each.
        self.kinds: dict[int, str | None] = {}
        self.entries = 0
        self.size = 0
        #: In a user namespace of the jail's: its uid and gid maps (inside as
        #: ``container_id``, outside as ``host_id``). Owners are recorded as they are
        #: outside (the caller's files are 0:0 inside); an owner it does not map shows
        #: as the overflow id, and is counted.
        self.outside_ids = outside_ids
        self.unseen_owners = 0
        self.unseen_acl_ids = 0  # named ACL entries the user namespace shows as no one
        #: "dev:ino" of the file being written -> the base name it will have (None: its
        #: own): GNU tar's "file is the archive".
        self.archive_files = {key: name or None for key, _, name in
                              (item.partition("/") for item in options.archive_files)}
        self._archive_warned: set[str] = set()

    # -- naming and owners ----------------------------------------------------------

    def _where(self, rel: str) -> str:
        return self.src if rel == "." else posixpath.join(self.src, rel)

    def _archive_left_out(self, rel: str, final_name: str | None) -> None:
        """Warn, once a name, that the archive being written was found in the source
        (under its temporary name, the name it will have: the old file it replaces
        is found there too)."""
        if final_name is not None:
            rel = posixpath.join(posixpath.dirname(rel), final_name)
        if rel not in self._archive_warned:
            self._archive_warned.add(rel)
            self.warn(f"{self._where(rel)}: file is the archive; not dumped")

    def _rebased(self, rel: str) -> str:
        for old, new in self.rebase:
            if old == ".":
                if not new:
                    return rel
                return new if rel == "." else f"{new}/{rel}"
            if rel == old:
                return new or "."
            if rel.startswith(old + "/"):
                return new + rel[len(old) :] if new else rel[len(old) + 1 :]
        return rel

    def _archive_name(self, rel: str, is_dir: bool, single: str = "") -> bytes:
        name = self._rebased(rel)
        if name == "." and single:
            name = single
        raw = os.fsencode(name)
        if is_dir:
            raw = b"./" if raw == b"." else raw + b"/"
        return raw

    def _outside(self, uid: int, gid: int) -> tuple[int, int]:
        """The owner outside the jail's user namespace; one it does not map (seen as
        the overflow id) is kept as seen, and counted."""
        assert self.outside_ids is not None
        found = []
        for inside, ranges in ((uid, self.outside_ids[0]), (gid, self.outside_ids[1])):
            outside = idmap.to_host(inside, ranges)
            if outside is None:
                outside = inside
                self.unseen_owners += 1
            found.append(outside)
        return found[0], found[1]

    def _owner(self, st: os.stat_result, rel: str) -> tuple[int, int]:
        if self.options.chown is not None:
            return self.options.chown
        host_uid, host_gid = st.st_uid, st.st_gid
        if self.outside_ids is not None:
            host_uid, host_gid = self._outside(host_uid, host_gid)
        uid = idmap.to_container(host_uid, self.options.uid_maps)
        gid = idmap.to_container(host_gid, self.options.gid_maps)
        for kind, host, mapped in (("uid", host_uid, uid), ("gid", host_gid, gid)):
            if mapped is None:
                raise SourceError(
                    f"host {kind} {host} cannot be mapped to a container {kind}",
                    self._where(rel))
        assert uid is not None and gid is not None
        return uid, gid

    def _emit(
        self,
        name: bytes,
        typeflag: int,
        st: os.stat_result,
        rel: str,
        *,
        size: int = 0,
        linkname: bytes = b"",
        xattrs: dict[str, bytes] | None = None,
        records: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        uid, gid = self._owner(st, rel)
        mtime_ns = st.st_mtime_ns
        if self.options.whole_second_mtimes:
            mtime_ns -= mtime_ns % NS
        devmajor = devminor = 0
        if typeflag in (CHRTYPE, BLKTYPE):
            devmajor, devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        self.out.write(header(
            name, typeflag, mode=stat.S_IMODE(st.st_mode), uid=uid, gid=gid,
            mtime_ns=mtime_ns, size=size, linkname=linkname,
            uname=self.options.user_names.get(str(uid), ""),
            gname=self.options.group_names.get(str(gid), ""),
            devmajor=devmajor, devminor=devminor, xattrs=xattrs, records=records,
        ))
        self.entries += 1

    def _sparse(self, fd: int, archived: bytes, st: os.stat_result, rel: str,
                regions: list[tuple[int, int]]) -> None:
        """A file with holes, as GNU tar's ``--sparse`` writes it (PAX, sparse format
        1.0): the real name in ``GNU.sparse.name``, then the map of data regions in
        the first blocks of the data, then the regions' bytes."""
        lines = [b"%d\n" % len(regions)]
        lines += [b"%d\n%d\n" % region for region in regions]
        sparse_map = b"".join(lines)
        sparse_map += bytes(-len(sparse_map) % BLOCK)
        stored = sum(length for _, length in regions)
        base = posixpath.basename(archived) or b"entry"
        placeholder = (posixpath.dirname(archived) + b"/" if b"/" in archived else b"") + \
            b"GNUSparseFile.0/" + base
        self._emit(placeholder, REGTYPE, st, rel, size=len(sparse_map) + stored,
                   xattrs=self._fd_xattrs(fd, rel), records=(
                       (b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                       (b"GNU.sparse.name", archived),
                       (b"GNU.sparse.realsize", b"%d" % st.st_size)))
        self.out.write(sparse_map)
        lost = 0
        for offset, length in regions:
            lost += self._copy_data(fd, rel, length, offset)
        self._shrank(rel, lost)
        self.out.zeros(-stored % BLOCK)
        self.size += stored

    def _copy_data(self, fd: int, rel: str, length: int, offset: int = 0) -> int:
        """``length`` bytes of the file from ``offset`` into the stream: as many as its
        header said, zeros for what it lost while being packed; returns how many were
        lost (the caller warns once a file: :meth:`_shrank`)."""
        try:
            copied = self.out.copy_from(fd, length, offset)
        except BrokenPipeError:
            raise
        except OSError as err:
            raise _source_error(err, self._where(rel)) from err
        if copied < length:
            self.out.zeros(length - copied)
        return length - copied

    def _shrank(self, rel: str, lost: int) -> None:
        if lost:
            self.warn(f"{self._where(rel)}: file shrank by {lost} bytes while being packed; "
                      "padded with zeros")

    def _first_link(self, st: os.stat_result, name: bytes) -> bytes | None:
        """The name this inode was already packed under (a hardlink), or None.

        An inode is remembered until its last link is seen (as GNU tar does), and at
        most :data:`_MAX_LINKS` at a time: past that, a new one is packed as a regular
        file each time it is met (its content repeated), with one warning.
        """
        if st.st_nlink < 2:
            return None
        key = (st.st_dev, st.st_ino)
        known = self.links.get(key)
        if known is None:
            if len(self.links) < _MAX_LINKS:
                self.links[key] = (name, st.st_nlink - 1)
            elif not self.links_full:
                self.links_full = True
                self.warn(f"{self._where('.')}: more than {_MAX_LINKS:,} files with links "
                          "still to come; further ones are packed as separate files")
            return None
        first, left = known
        if left <= 1:
            del self.links[key]
        else:
            self.links[key] = (first, left - 1)
        return first

    # -- xattrs ---------------------------------------------------------------------

    def _collect(
        self, names: list[str], get: Callable[[str], bytes], rel: str
    ) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key in sorted(names):
            if key in _SKIPPED_XATTRS or key.startswith(_SKIPPED_PREFIX):
                continue
            try:
                value = get(key)
            except OSError as err:
                if err.errno in (errno.ENODATA, *_NO_XATTRS):
                    continue
                raise
            if key in acl.ACL_XATTRS and (
                    self.outside_ids is not None
                    or (self.options.chown is None
                        and (self.options.uid_maps or self.options.gid_maps))):
                value = self._acl_ids(value, rel)
            out[key] = value
        return out

    def _acl_ids(self, value: bytes, rel: str) -> bytes:
        """An ACL with its named ids recorded as owners are, since untar maps them back
        as owners: as they are outside the jail's user namespace (one it shows as no
        one is left out, and counted), then host to container through the id maps."""
        entries = acl.parse(value)
        if entries is None:
            return value  # not an ACL the kernel would give: kept as it is
        kept: list[acl.Entry] = []
        for tag, perm, ident in entries:
            if tag in (acl.USER, acl.GROUP):
                user = tag == acl.USER
                if self.outside_ids is not None:
                    outside = idmap.to_host(ident, self.outside_ids[0 if user else 1])
                    if outside is None:
                        self.unseen_acl_ids += 1
                        continue
                    ident = outside
                if self.options.chown is None:
                    kind = "uid" if user else "gid"
                    mapped = idmap.to_container(
                        ident, self.options.uid_maps if user else self.options.gid_maps)
                    if mapped is None:
                        raise SourceError(
                            f"host {kind} {ident} (in an ACL) cannot be mapped to a "
                            f"container {kind}", self._where(rel))
                    ident = mapped
            kept.append((tag, perm, ident))
        return acl.build(kept)

    def _fd_xattrs(self, fd: int, rel: str) -> dict[str, bytes]:
        if not self.options.xattrs:
            return {}
        try:
            return self._collect(os.listxattr(fd), lambda key: os.getxattr(fd, key), rel)
        except ChrootArchiveError:
            raise  # an ACL id the maps do not hold
        except OSError as err:
            if err.errno in _NO_XATTRS:
                return {}
            raise _source_error(err, self._where(rel)) from err

    def _path_xattrs(self, parent_fd: int, name: str, rel: str) -> dict[str, bytes]:
        """Xattrs of a symlink or special file (which cannot be opened for reading)."""
        if not self.options.xattrs:
            return {}
        opath = -1
        try:
            if self.jailed:
                # One component from the pinned directory, the symlink not followed.
                os.fchdir(parent_fd)
                target, follow = name, False
            else:
                # The magic link leads to the pinned object itself.
                opath = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=parent_fd)
                target, follow = f"/proc/self/fd/{opath}", True
            return self._collect(
                os.listxattr(target, follow_symlinks=follow),
                lambda key: os.getxattr(target, key, follow_symlinks=follow),
                rel,
            )
        except ChrootArchiveError:
            raise  # an ACL id the maps do not hold
        except FileNotFoundError:
            return {}
        except OSError as err:
            if err.errno in _NO_XATTRS:
                return {}
            raise _source_error(err, self._where(rel)) from err
        finally:
            if opath >= 0:
                os.close(opath)

    # -- the source -----------------------------------------------------------------

    def pack(self, open_dir: Opener, src: str) -> None:
        """Pack ``src`` (a path below the root); ``open_dir`` resolves it inside the root."""
        if not self.jailed:
            try:
                self.fds = proc_fds()
            except OSError as err:
                raise ConfinementError(
                    "/proc/self/fd cannot be opened (is /proc mounted?): files are read "
                    f"through it so that no device is ever opened ({err.strerror})") from err
        try:
            self._pack(open_dir, src)
        finally:
            if self.fds >= 0:
                os.close(self.fds)
                self.fds = -1
        if self.unseen_owners:
            self.warn(f"{self.unseen_owners} owners (uids and gids) are not mapped in the "
                      "user namespace (--confine userns) and were recorded as it shows "
                      "them (the overflow id, 65534): openat2, or subordinate ids "
                      "(/etc/subuid), record them as they are")
        if self.unseen_acl_ids:
            self.warn(f"{self.unseen_acl_ids} named ACL entries (users and groups) are not "
                      "mapped in the user namespace (--confine userns), which shows them as "
                      "no one: they were left out; openat2, or subordinate ids "
                      "(/etc/subuid), record them")

    def _pack(self, open_dir: Opener, src: str) -> None:
        norm = posixpath.normpath("/" + src)
        follow = norm == "/" or src.endswith("/") or src.endswith("/.")
        if follow:
            self._tree(self._open_source(open_dir, norm))
        else:
            parent = self._open_source(open_dir, posixpath.dirname(norm))
            try:
                base = posixpath.basename(norm)
                try:
                    st = os.stat(base, dir_fd=parent, follow_symlinks=False)
                except OSError as err:
                    raise _source_error(err, self.src) from err
                if stat.S_ISDIR(st.st_mode):
                    try:
                        top = os.open(base, _DIR_FLAGS, dir_fd=parent)
                    except OSError as err:
                        raise _source_error(err, self.src) from err
                    self._tree(top)
                else:
                    self._single(parent, base, st)
            finally:
                os.close(parent)
        self.out.finish()

    def _open_source(self, open_dir: Opener, path: str) -> int:
        try:
            fd = open_dir(path)
        except OSError as err:
            raise _source_error(err, self.src) from err
        kind = self._kind_of(fd, os.fstat(fd))
        if kind is not None:
            os.close(fd)
            raise SourceError(f"on a {kind} (the kernel's files are never packed)", self.src)
        return fd

    # -- the kernel's file systems ----------------------------------------------------
    # A procfs or sysfs mounted below the source is never walked or read (under
    # ``openat2`` nothing detaches it): each entry's device is looked up (a dict), and
    # a device seen for the first time is asked its file system type once.

    def _kind_of(self, fd: int, st: os.stat_result) -> str | None:
        """The kernel file system that ``fd`` (``st`` is its fstat) is on, or None."""
        kinds = self.kinds
        dev = st.st_dev
        if dev not in kinds:
            kinds[dev] = fsops.kernel_filesystem(fd)
        return kinds[dev]

    def _kind_at(self, parent_fd: int, name: str, st: os.stat_result) -> str | None:
        """The same for ``name`` (``st`` its lstat) before it is opened."""
        kinds = self.kinds
        if st.st_dev in kinds:
            return kinds[st.st_dev]
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError:
            return None  # gone or changed: opening it for real says so
        try:
            self._kind_of(fd, os.fstat(fd))
        finally:
            os.close(fd)
        return kinds.get(st.st_dev)  # None if it changed: what is opened is checked

    def _on_kernel_fs(self, parent_fd: int, name: str, rel: str, st: os.stat_result) -> bool:
        """Whether ``name`` (``st`` its lstat) is on a kernel file system: then it is
        skipped with a warning."""
        kinds = self.kinds
        kind = kinds[st.st_dev] if st.st_dev in kinds else self._kind_at(parent_fd, name, st)
        if kind is None:
            return False
        self._skip_kernel(kind, rel)
        return True

    def _skip_kernel(self, kind: str, rel: str) -> None:
        self.warn(f"{self._where(rel)}: a {kind} mounted in the source, skipped "
                  "(the kernel's files are never packed)")

    def _single(self, parent_fd: int, base: str, st: os.stat_result) -> None:
        """A source that is not a directory: one entry, named after it (or rebased)."""
        self._one(parent_fd, base, ".", st, single=base)

    def _tree(self, top_fd: int) -> None:
        """The source directory (``top_fd``, closed here) and the included paths below."""
        try:
            for include in self.options.include_files or (".",):
                if include == ".":
                    if self.options.include_source_dir:
                        st = os.fstat(top_fd)
                        self._emit(self._archive_name(".", True), DIRTYPE, st, ".",
                                   xattrs=self._fd_xattrs(top_fd, "."))
                    self._walk(os.dup(top_fd), ".")
                    continue
                reached = self._reach(top_fd, include)
                if reached is None:
                    continue
                parent_fd, name = reached
                try:
                    child = self._entry(parent_fd, name, include, include=include)
                finally:
                    if parent_fd != top_fd:
                        os.close(parent_fd)
                if child is not None:
                    self._walk(child, include)
        finally:
            os.close(top_fd)

    def _reach(self, top_fd: int, include: str) -> tuple[int, str] | None:
        """The directory holding ``include`` (below the source, no symlink followed)."""
        *dirs, name = include.split("/")
        fd = top_fd
        for part in dirs:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if fd != top_fd:
                    os.close(fd)
                if err.errno in (errno.ENOENT, *_CHANGED):
                    self.warn(f"{self._where(include)}: not found below the source "
                              "(symlinks are not followed), skipped")
                    return None
                raise _source_error(err, self._where(include)) from err
            if fd != top_fd:
                os.close(fd)
            fd = nxt
            kind = self._kind_of(fd, os.fstat(fd))
            if kind is not None:
                os.close(fd)
                self._skip_kernel(kind, include)
                return None
        return fd, name

    def _walk(self, dir_fd: int, rel: str) -> None:
        """Everything below the directory ``dir_fd`` (closed here), depth first, sorted."""
        stack: list[tuple[int, str, list[str], bytearray]] = []
        try:
            names, kinds = self._listing(dir_fd, rel)
            stack.append((dir_fd, rel, names, kinds))
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            while stack:
                fd, here, names, kinds = stack[-1]
                if not names:
                    stack.pop()
                    os.close(fd)
                    continue
                name = names.pop()
                child_rel = name if here == "." else f"{here}/{name}"
                child = self._entry(fd, name, child_rel, kind=kinds.pop())
                if child is not None:
                    try:
                        names, kinds = self._listing(child, child_rel)
                    except BaseException:
                        os.close(child)
                        raise
                    stack.append((child, child_rel, names, kinds))
        finally:
            for fd, _, _, _ in stack:
                os.close(fd)

    def _listing(self, fd: int, rel: str) -> tuple[list[str], bytearray]:
        """The names in a directory, in reverse order (popped from the end), and what
        the listing says each is (``_FILE``, ``_DIR``, ``_OTHER``; one byte a name)."""
        try:
            with os.scandir(fd) as it:
                listed = [(entry.name, _FILE if entry.is_file(follow_symlinks=False)
                           else _DIR if entry.is_dir(follow_symlinks=False) else _OTHER)
                          for entry in it]
        except OSError as err:
            raise _source_error(err, self._where(rel)) from err
        # In the names' bytes' order, as GNU tar's --sort=name and Go's (Docker's) walk:
        # str order is the same but for bytes that are not UTF-8 (surrogate escapes
        # sorted after U+DBFF: b"\xff" came before "日").
        if all(name.isascii() for name, _ in listed):
            listed.sort(reverse=True)
        else:
            listed.sort(key=_name_bytes, reverse=True)
        return [name for name, _ in listed], bytearray(kind for _, kind in listed)

    def _lstat(self, parent_fd: int, name: str, rel: str, include: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            if include:
                self.warn(f"{self._where(rel)}: not found below the source, skipped")
            else:
                self.warn(f"{self._where(rel)}: removed while being packed, skipped")
            return None
        except OSError as err:
            raise _source_error(err, self._where(rel)) from err

    def _entry(
        self, parent_fd: int, name: str, rel: str, include: str = "", kind: int = _OTHER
    ) -> int | None:
        """Pack one entry; returns the descriptor of a directory to descend into.

        ``kind`` is what the listing said (``d_type``): a file or a directory is opened
        at once, without a ``stat`` first; what the descriptor shows decides, and a
        listing that is no longer true costs one ``stat`` more.
        """
        st: os.stat_result | None = None
        if kind == _OTHER:
            st = self._lstat(parent_fd, name, rel, include)
            if st is None or self._on_kernel_fs(parent_fd, name, rel, st):
                return None
            kind = (_DIR if stat.S_ISDIR(st.st_mode)
                    else _FILE if stat.S_ISREG(st.st_mode) else _OTHER)
        if rel != include and self.excludes and self.excludes.matches(rel):
            if kind == _DIR and self.has_exceptions:
                return self._open_dir(parent_fd, name, rel)  # an exception may match below
            return None
        if self.seen is not None:  # overlapping includes: each path once
            if rel in self.seen:
                return None
            self.seen.add(rel)
        if kind == _FILE:
            other = self._file(parent_fd, name, rel)
            if other is None or self._on_kernel_fs(parent_fd, name, rel, other):
                return None
            if not stat.S_ISDIR(other.st_mode):
                self._one(parent_fd, name, rel, other)  # what is there now (not opened)
                return None
            kind = _DIR
        if kind == _DIR:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                self.warn(f"{self._where(rel)}: removed while being packed, skipped")
                return None
            except OSError as err:
                if err.errno not in _CHANGED:
                    raise _source_error(err, self._where(rel)) from err
                now = self._lstat(parent_fd, name, rel, "")
                if now is None or self._on_kernel_fs(parent_fd, name, rel, now):
                    return None
                if stat.S_ISDIR(now.st_mode):
                    self.warn(f"{self._where(rel)}: no longer a directory (changed while "
                              "being packed), skipped")
                    return None
                self._one(parent_fd, name, rel, now)  # what is there now
                return None
            try:
                st = os.fstat(fd)
                found = self._kind_of(fd, st)
                if found is None:
                    self._emit(self._archive_name(rel, True), DIRTYPE, st, rel,
                               xattrs=self._fd_xattrs(fd, rel))
            except BaseException:
                os.close(fd)
                raise
            if found is not None:  # a kernel file system's directory: never listed
                os.close(fd)
                self._skip_kernel(found, rel)
                return None
            return fd
        assert st is not None
        self._one(parent_fd, name, rel, st)
        return None

    def _open_dir(self, parent_fd: int, name: str, rel: str) -> int | None:
        where = self._where  # computed only for a message
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            self.warn(f"{where(rel)}: removed while being packed, skipped")
        except OSError as err:
            if err.errno not in _CHANGED:
                raise _source_error(err, where(rel)) from err
            self.warn(f"{where(rel)}: no longer a directory (changed while being packed), "
                      "skipped")
        return None

    def _one(
        self, parent_fd: int, name: str, rel: str, st: os.stat_result, single: str = ""
    ) -> None:
        """Pack a non-directory."""
        where = self._where  # computed only for a message
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if self._file(parent_fd, name, rel, single) is not None:
                self.warn(f"{where(rel)}: no longer a regular file (changed while being "
                          "packed), skipped")
            return
        if stat.S_ISSOCK(mode):
            self.warn(f"{where(rel)}: socket skipped (tar cannot hold sockets)")
            return
        if stat.S_ISLNK(mode):
            typeflag = SYMTYPE
            try:
                target = os.readlink(os.fsencode(name), dir_fd=parent_fd)
            except FileNotFoundError:
                self.warn(f"{where(rel)}: removed while being packed, skipped")
                return
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise _source_error(err, where(rel)) from err
                self.warn(f"{where(rel)}: no longer a symlink (changed while being packed), "
                          "skipped")
                return
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            typeflag = (CHRTYPE if stat.S_ISCHR(mode)
                        else BLKTYPE if stat.S_ISBLK(mode) else FIFOTYPE)
            target = b""
        else:
            self.warn(f"{where(rel)}: unknown file type {stat.S_IFMT(mode):#o} skipped")
            return
        archived = self._archive_name(rel, False, single)
        first = self._first_link(st, archived)
        if first is not None:
            self._emit(archived, LNKTYPE, st, rel, linkname=first)
            return
        self._emit(archived, typeflag, st, rel, linkname=target,
                   xattrs=self._path_xattrs(parent_fd, name, rel))

    def _file(
        self, parent_fd: int, name: str, rel: str, single: str = ""
    ) -> os.stat_result | None:
        """Pack a regular file. Returns None when done (or skipped with a warning), or
        the ``stat`` of what is there if it is not a regular file (nothing was opened).

        In the caller's process the file is pinned (``O_PATH``), its type and file
        system checked on the pin, and only then opened; in a jail (``nodev``) it is
        opened and checked on the descriptor (:mod:`chrootarchive._fdio`).
        """
        where = self._where  # computed only for a message
        pinned = fd = -1
        try:
            if self.jailed:
                while True:
                    try:
                        fd, st = open_regular_in_jail(name, parent_fd, READ_FLAGS | self.noatime)
                        break
                    except PermissionError:
                        if not self.noatime:
                            raise
                        self.noatime = 0  # O_NOATIME needs ownership or CAP_FOWNER
                if fd < 0:
                    return st
            else:
                pinned, st = pin_regular(name, parent_fd)
                if pinned < 0:
                    return st
        except FileNotFoundError:
            self.warn(f"{where(rel)}: removed while being packed, skipped")
            return None
        except OSError as err:
            if err.errno not in _CHANGED:
                raise _source_error(err, where(rel)) from err
            self.warn(f"{where(rel)}: no longer a regular file (changed while being packed), "
                      "skipped")
            return None
        try:
            kind = self._kind_of(fd if fd >= 0 else pinned, st)
            if kind is not None:  # never opened under openat2; in a jail, closed unread
                self._skip_kernel(kind, rel)
                return None
            while fd < 0:
                try:
                    fd = reopen(pinned, READ_FLAGS | self.noatime, self.fds)
                except PermissionError as err:
                    if not self.noatime:
                        raise _source_error(err, where(rel)) from err
                    self.noatime = 0
                except OSError as err:
                    raise _source_error(err, where(rel)) from err
            if self.archive_files and f"{st.st_dev}:{st.st_ino}" in self.archive_files:
                self._archive_left_out(rel, self.archive_files[f"{st.st_dev}:{st.st_ino}"])
                return None
            archived = self._archive_name(rel, False, single)
            first = self._first_link(st, archived)
            if first is not None:
                self._emit(archived, LNKTYPE, st, rel, linkname=first)
                return None
            size = st.st_size
            if self.options.sparse and st.st_blocks * 512 < size:
                regions = _data_regions(fd, size)
                if regions is not None:
                    self._sparse(fd, archived, st, rel, regions)
                    return None
            self._emit(archived, REGTYPE, st, rel, size=size,
                       xattrs=self._fd_xattrs(fd, rel))
            self._shrank(rel, self._copy_data(fd, rel, size))
            self.out.zeros(-size % BLOCK)
            self.size += size
        finally:
            close_pair(fd, pinned)
        return None
