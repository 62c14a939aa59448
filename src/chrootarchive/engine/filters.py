"""PEP 706's extraction filters on our entries: ``fully_trusted``, ``tar`` and ``data``.

Python's :mod:`tarfile` names three levels of trust; a Python developer already knows
them, so chrootarchive takes the same names and, where they apply to a confined unpack,
the same rules (docs/filters.md has the table beside tarfile's):

- ``fully_trusted``: the archive's full fidelity (a root filesystem: owners, device
  nodes, setuid files, file capabilities). What it created that only a root filesystem
  needs is counted (:attr:`EntryFilter.privileged`), so a user who unpacked an upload
  with it learns that it did.
- ``tar``: no setuid, setgid or sticky bit, no group or other write permission (and no
  file capability, their xattr twin).
- ``data``: ``tar``'s rules; no device node or FIFO (dropped and counted: tarfile
  refuses them); no symlink to an absolute path (refused, as tarfile does: whoever
  reads the tree later would follow it), nor one that leads out through the symlinks
  on its way (the unpacker follows them once all is written: :mod:`.linkwalk`);
  regular files get owner read and write, and lose group and other execute where the
  owner has none; directories get the caller's default mode (``0777 & ~umask``);
  only ``user.*`` xattrs; the owners are the caller's.

Names, hardlinks and symlinks that climb out of the destination are refused under
every filter (Docker's rule).
"""

from __future__ import annotations

from chrootarchive.contract import FILTERS
from chrootarchive.errors import BreakoutError, counted, printable
from chrootarchive.tarformat import reader as tarreader

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from chrootarchive.tarformat.reader import TarEntry

__all__ = ["FILTERS", "EntryFilter"]


_SPECIAL_BITS = 0o7000
_GROUP_OTHER_WRITE = 0o022
_CAPABILITY = "security.capability"
_NODES = (tarreader.CHARDEV, tarreader.BLOCKDEV)
_LINK_OR_DIR = (tarreader.HARDLINK, tarreader.DIRECTORY)  # setgid on a dir: inheritance


class EntryFilter:
    """One extraction's filter: rewrites an entry, or says to drop it, and counts."""

    __slots__ = ("dir_mode", "dropped", "name", "privileged")

    def __init__(self, name: str, umask: int = 0o022) -> None:
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}")
        self.name = name
        self.dir_mode = 0o777 & ~umask
        #: What ``tar`` and ``data`` removed (warnings).
        self.dropped: dict[str, int] = {
            "device nodes and FIFOs": 0, "setuid/setgid/sticky bits": 0,
            "group/other write bits": 0, "file capabilities": 0,
            "security/trusted xattrs": 0,
        }
        #: What ``fully_trusted`` created that only a root filesystem needs.
        self.privileged: dict[str, int] = {
            "device nodes": 0, "setuid/setgid files": 0, "file capabilities": 0,
        }

    def note(self, entry: TarEntry) -> None:
        """``fully_trusted``: count a setuid or setgid file (called only for entries
        with those bits). Device nodes and file capabilities are counted by
        :meth:`made` where they are made: without privilege they are skipped."""
        if entry.kind not in _LINK_OR_DIR:
            self.privileged["setuid/setgid files"] += 1

    def unnote(self, entry: TarEntry) -> None:
        """``fully_trusted``: an entry :meth:`note` counted was not made after all (an
        existing file kept: ``old_files``), so the count says what was created."""
        if entry.mode & 0o6000 and entry.kind not in _LINK_OR_DIR:
            self.privileged["setuid/setgid files"] -= 1

    def made(self, what: str) -> None:
        """``fully_trusted``: a ``device nodes`` or ``file capabilities`` was made."""
        if self.name == "fully_trusted":
            self.privileged[what] += 1

    def keep(self, entry: TarEntry) -> bool:
        """``tar`` or ``data``: rewrite ``entry``; False when it is dropped.

        Raises:
            BreakoutError: under ``data``, a symlink to an absolute path or out of the
                destination.
        """
        kind = entry.kind
        data = self.name == "data"
        if data:
            if kind in _NODES or kind == tarreader.FIFO:
                self.dropped["device nodes and FIFOs"] += 1
                return False
            if kind == tarreader.SYMLINK:
                _check_symlink(entry)
        if kind != tarreader.HARDLINK:  # a hardlink's mode is its target's
            mode = entry.mode
            if mode & _SPECIAL_BITS:
                self.dropped["setuid/setgid/sticky bits"] += 1
            if mode & _GROUP_OTHER_WRITE and kind != tarreader.SYMLINK:
                self.dropped["group/other write bits"] += 1
            mode &= ~(_SPECIAL_BITS | _GROUP_OTHER_WRITE)
            if data:
                if kind == tarreader.DIRECTORY:
                    mode = self.dir_mode
                elif kind == tarreader.REGULAR:
                    mode |= 0o600
                    if not mode & 0o100:
                        mode &= ~0o011
            entry.mode = mode
        if entry.xattrs:
            self._xattrs(entry, data)
        return True

    def _xattrs(self, entry: TarEntry, data: bool) -> None:
        xattrs = entry.xattrs
        if data:
            kept = {key: value for key, value in xattrs.items() if key.startswith("user.")}
            if _CAPABILITY in xattrs:
                self.dropped["file capabilities"] += 1
            others = len(xattrs) - len(kept) - (_CAPABILITY in xattrs)
            if others:
                self.dropped["security/trusted xattrs"] += others
            entry.xattrs = kept
        elif _CAPABILITY in xattrs:
            self.dropped["file capabilities"] += 1
            entry.xattrs = {k: v for k, v in xattrs.items() if k != _CAPABILITY}

    def warnings(self) -> list[str]:
        """One line per kind of thing removed, for the result's warnings."""
        return [f"filter {self.name}: dropped {counted(count, _ONE[what], what)}"
                for what, count in self.dropped.items() if count]


#: Each kind of :attr:`EntryFilter.dropped`, counted once.
_ONE = {"device nodes and FIFOs": "device node or FIFO",
        "setuid/setgid/sticky bits": "setuid/setgid/sticky bit",
        "group/other write bits": "group/other write bit",
        "file capabilities": "file capability", "security/trusted xattrs": "security/trusted xattr"}


def _check_symlink(entry: TarEntry) -> None:
    """tarfile's ``data`` rule: no symlink to an absolute path. (One that climbs out of
    the tree is refused under every filter: Docker's rule, ``names.check_symlink``.)"""
    if entry.linkname.startswith("/"):
        raise BreakoutError(
            f"symlink to an absolute path ({printable(entry.linkname)}) refused by the "
            f"data filter", entry.name)
