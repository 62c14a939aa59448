"""Whiteouts and opaque directories: what an entry means in a container image layer.

AUFS-style markers in the stream (``.wh.NAME``, ``.wh..wh..opq``, other ``.wh..wh.*``
metadata) are applied to what lower layers left, or, with the ``overlay`` output
format, turned into overlayfs whiteouts (a 0/0 character device) and opaque xattrs.

Following the OCI image spec, a whiteout hides only what lower layers left: the layer
remembers every path it wrote (and their parents), so that a later marker in the same
layer cannot remove them (umoci's ``upperPaths``). Paths are where the files really
are: the unpacker resolves a name whose directory it reached through a symlink before
it notes it or applies a marker there (``Unpacker._layer_name``). It remembers them as
64-bit hashes, 8 bytes a name once packed (:class:`NameSet`), not as strings (about
120 bytes each: a layer of 200,000 files took 24 MiB of the worker's memory).
"""

from __future__ import annotations

import os
import posixpath
import stat
import struct
from bisect import bisect_left

from chrootarchive.engine import fsops
from chrootarchive.errors import MalformedArchiveError, quoted
from chrootarchive.tarformat import reader as tarreader
from chrootarchive.tarformat.reader import TarEntry

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["OPAQUE", "WHITEOUT_PREFIX", "LayerRules"]

WHITEOUT_PREFIX = ".wh."
META_PREFIX = ".wh..wh."
OPAQUE = ".wh..wh..opq"
LINK_DIR = ".wh..wh.plnk"

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RUN = 1 << 14  # hashes gathered in a set (about 1 MiB) before they are packed
_KNOWN_PARENTS = 4096  # parents known to be noted, a cache of names (then cleared)


class NameSet:
    """A set of names kept as 64-bit hashes: the newest in a set, the rest packed in
    sorted runs of 8 bytes each, searched by bisection (looked up only by markers).

    The hashes are Python's, salted per process (``PYTHONHASHSEED``): two names that
    collide (about one chance in 2**64 per pair) count as one, which can keep a lower
    file that a whiteout meant to remove, and nothing else.
    """

    __slots__ = ("_runs", "recent")

    def __init__(self) -> None:
        self.recent: set[int] = set()
        self._runs: list[memoryview] = []

    def add(self, name: str) -> None:
        recent = self.recent
        recent.add(hash(name))
        if len(recent) >= _RUN:
            self.pack()

    def pack(self) -> None:
        """Move the newest hashes into a sorted run (signed 64-bit, as ``hash`` gives)."""
        recent = self.recent
        packed = struct.pack(f"={len(recent)}q", *sorted(recent))
        self._runs.append(memoryview(packed).cast("q"))
        recent.clear()

    def __contains__(self, name: str) -> bool:
        key = hash(name)
        if key in self.recent:
            return True
        for run in self._runs:
            i = bisect_left(run, key)
            if i < len(run) and run[i] == key:
                return True
        return False


class LayerRules:
    """Decides, entry by entry, what a whiteout marker does.

    Args:
        fs: the file operations of the unpacker.
        apply_whiteouts: layer mode: markers remove lower content. Without it (plain
            untar), AUFS markers are ordinary files unless ``overlay`` is asked.
        overlay: write overlayfs whiteouts instead of applying them.
        in_user_namespace: use ``user.overlay.opaque`` (``trusted.*`` needs real root).
        forget: tell the unpacker that a path (and what was below it) is gone.
    """

    def __init__(
        self,
        fs: fsops.FileOps,
        *,
        apply_whiteouts: bool,
        overlay: bool,
        in_user_namespace: bool,
        forget: Callable[[str], None],
    ) -> None:
        self.fs = fs
        self.active = apply_whiteouts or overlay
        self.apply_whiteouts = apply_whiteouts and not overlay
        self.overlay = overlay
        self.opaque_xattr = ("user" if in_user_namespace else "trusted") + ".overlay.opaque"
        self.forget = forget
        self.written = NameSet()
        self.written_recent = self.written.recent
        self.written_parents = NameSet()
        self.written_parents.add(".")
        self.last_parent = "."  # of the last name written: most names share it
        self.known_parents: set[str] = set()  # parents already in written_parents
        self.link_dir: str | None = None
        self.whited_out = NameSet()  # overlay: names whited out by this layer

    # -- bookkeeping ---------------------------------------------------------------

    def note_written(self, name: str) -> None:
        """Remember that this layer wrote ``name`` (and so, implicitly, its parents)."""
        if not self.active:
            return
        written = self.written_recent  # NameSet.add, inlined: once per entry
        written.add(hash(name))
        if len(written) >= _RUN:
            self.written.pack()
        parent = name.rpartition("/")[0] or "."
        if parent == self.last_parent:
            return
        self.last_parent = parent
        known = self.known_parents
        if parent in known:
            return
        if len(known) >= _KNOWN_PARENTS:
            known.clear()
        known.add(parent)
        while parent not in self.written_parents:
            self.written_parents.add(parent)
            parent = parent.rpartition("/")[0] or "."

    def _kept(self, path: str) -> bool:
        return path in self.written or path in self.written_parents

    # -- markers -------------------------------------------------------------------

    def is_marker(self, name: str) -> bool:
        """True when ``name`` is a whiteout marker or AUFS metadata to handle here."""
        if not self.active:
            return False
        base = posixpath.basename(name)
        return base.startswith(WHITEOUT_PREFIX) or name == LINK_DIR or name.startswith(
            LINK_DIR + "/"
        )

    def aufs_link_file(self, name: str, entry: TarEntry) -> str | None:
        """Where a regular file of the AUFS hardlink directory is kept, or None to skip.

        Files in ``/.wh..wh.plnk`` back hardlinks elsewhere in the layer: they are
        unpacked into a hidden directory that :meth:`finish` removes.
        """
        if not (name.startswith(LINK_DIR + "/") and entry.kind == tarreader.REGULAR):
            return None
        if self.link_dir is None:
            self.link_dir = self.fs.make_temp_dir(".chrootarchive-plnk-")
        return f"{self.link_dir}/{posixpath.basename(name)}"

    def hardlink_target(self, target: str) -> str:
        """Redirect a hardlink into the AUFS link directory to its kept copy."""
        if self.link_dir is not None and target.startswith(LINK_DIR + "/"):
            return f"{self.link_dir}/{posixpath.basename(target)}"
        return target

    def apply_marker(
        self, name: str, entry: TarEntry, make_whiteout: Callable[[str], None]
    ) -> None:
        """Act on a marker entry (never extracted as itself)."""
        base = posixpath.basename(name)
        parent = posixpath.dirname(name) or "."
        if base == OPAQUE:
            if self.overlay:
                self._make_opaque(self.fs.open_dir(parent))
            elif self.apply_whiteouts:
                self._empty_lower(parent)
            return
        if base.startswith(META_PREFIX) or name == LINK_DIR or name.startswith(LINK_DIR + "/"):
            return  # AUFS metadata: never extracted
        original = base[len(WHITEOUT_PREFIX):]
        if original in ("", ".", "..") or "/" in original:
            raise MalformedArchiveError(f"invalid whiteout name {quoted(base)}", entry.name)
        target = original if parent == "." else f"{parent}/{original}"
        if self._kept(target):
            # This layer wrote it, or below it: the whiteout hides the lower layers'
            # content only (the OCI spec; umoci). A directory of this layer's keeps
            # what the layer put in it, as if opaque; a file of its own already hides
            # whatever was below it.
            self._own_directory_whited_out(target)
        elif self.overlay:
            make_whiteout(target)
            self.whited_out.add(target)
        elif self.apply_whiteouts:
            self._remove(target)

    def _own_directory_whited_out(self, path: str) -> None:
        """Not a directory (opened never through a symlink): nothing lower shows
        through it, and nothing is done."""
        if self.apply_whiteouts:
            self._empty_lower(path)
            return
        try:
            fd = self.fs.open_dir(path)
        except OSError:
            return
        self._make_opaque(fd)

    def replaces_whiteout(self, path: str) -> bool:
        """Overlay: ``path`` is a whiteout this layer made, which a directory of the
        same layer (one it only implies, as a parent) is to replace."""
        return self.overlay and path in self.whited_out

    def directory_made(self, name: str, fd: int) -> None:
        """Overlay: a directory re-created where this layer whited one out hides the
        lower one entirely, so it must be opaque (else lower content shows through)."""
        if self.overlay and name in self.whited_out:
            fsops.with_privilege(lambda: os.setxattr(fd, self.opaque_xattr, b"y"))

    def _make_opaque(self, fd: int) -> None:
        """Overlay: mark the directory ``fd`` opaque; closes ``fd``."""
        try:
            fsops.with_privilege(lambda: os.setxattr(fd, self.opaque_xattr, b"y"))
        finally:
            os.close(fd)

    # -- removal -------------------------------------------------------------------

    def _remove(self, path: str) -> None:
        st = self.fs.lstat(path)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self.fs.remove_tree(path)
        else:
            self.fs.unlink(path)
        self.forget(path)

    def _empty_lower(self, directory: str) -> None:
        """Remove from ``directory`` everything that this layer did not write."""
        try:
            top = self.fs.open_dir(directory)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return
        stack = [(top, directory)]
        try:
            while stack:
                fd, path = stack.pop()
                try:
                    with os.scandir(fd) as it:
                        children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                    for child, child_is_dir in children:
                        child_path = child if path == "." else f"{path}/{child}"
                        if self._kept(child_path):
                            # Kept, but lower content below it is hidden too.
                            if child_is_dir:
                                sub = os.open(child, _OPEN_DIR, dir_fd=fd)
                                fsops.refuse_kernel_filesystem(sub, child_path)
                                stack.append((sub, child_path))
                            continue
                        if child_is_dir:
                            fsops.remove_tree_at(fd, child, child_path)
                        else:
                            os.unlink(child, dir_fd=fd)
                        self.forget(child_path)
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def finish(self) -> None:
        """Remove the AUFS hardlink directory, if one was made."""
        if self.link_dir is not None:
            try:
                self.fs.remove_tree(self.link_dir)
            except FileNotFoundError:
                pass
            self.link_dir = None
