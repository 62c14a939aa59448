"""Where a symlink leads when it is followed, for the ``data`` filter's promise.

Every filter refuses a symlink whose target climbs out lexically (``names``). The
``data`` filter promises more, as PEP 706's does: that a later reader who follows a
symlink the archive made stays in the destination. A lexical check cannot keep that
promise: ``a -> .`` then ``a/e -> ../x`` puts ``e -> ../x`` at the top; ``d -> .``
after ``l -> d/../x`` turns an innocent ``l`` into one that leads out. ``tarfile``
resolves each link's real path as it extracts it, and so misses the second.

So the unpacker notes where each symlink it makes under ``data`` really is (its parent
resolved through the symlinks on the way: :meth:`LinkWalk.real_parent`) and, once the
archive is all written, follows each one from there (:meth:`LinkWalk.leads_out`), as a
reader would: through the symlinks now in the destination. It leads out when it climbs
above the destination or meets an absolute symlink (which a reader outside the jail
follows to the host's own files). It is followed as :func:`os.path.realpath` follows
it, not as the kernel does: with no limit of 40 symlinks (Go's ``EvalSymlinks``
follows 255), and a loop read both ways ``realpath`` has read one (:meth:`_walk`).

A layer's whiteouts need the other reading, the kernel's in the jail
(:meth:`LinkWalk.in_root`): where a directory that the unpacker reached through a
symlink really is, so that a marker hides only what lower layers left there, whatever
name the layer used for it (umoci's ``upperPaths`` are resolved paths too).
"""

from __future__ import annotations

import errno
import stat

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    import os

    from chrootarchive.engine.fsops import FileOps

__all__ = ["LinkWalk", "TooManyLookups"]

#: The longest path below the destination that is followed: beyond it, the host's
#: ``realpath`` (the destination's own path first) meets ENAMETOOLONG where the jail
#: did not, and reads the rest differently. PATH_MAX is 4096.
MAX_FOLLOWED = 2048
#: The symlinks the kernel follows in one lookup before ELOOP.
_KERNEL_MAX_LINKS = 40
#: What a lookup can fail with when nothing is there to be reached.
_NOTHING_THERE = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP)


class TooManyLookups(Exception):
    """The walks used up their budget (a hostile tangle of symlinks)."""


class LeadsOut(Exception):
    """The path climbs above the destination, or through an absolute symlink."""


class LinkWalk:
    """Follows paths below the destination (``fs``'s root), ``budget`` steps in all.

    Every component is a step, and so is every symlink read: the budget bounds the
    time an archive can make the walks take.
    """

    __slots__ = ("budget", "fs")

    def __init__(self, fs: FileOps, budget: int) -> None:
        self.fs = fs
        self.budget = budget

    def real_parent(self, parent: str) -> list[str] | None:
        """The components of the directory ``parent`` really is (no symlink among
        them), or None when it leads out of the destination."""
        try:
            return self._walk([], parent)
        except LeadsOut:
            return None

    def in_root(self, path: str) -> list[str] | None:
        """The components of the directory ``path`` as the kernel finds it in the
        jail (a chroot, or ``RESOLVE_IN_ROOT``): an absolute symlink starts again at
        the root and ``..`` stops there. None when a component is missing or not a
        directory, past the kernel's 40 symlinks, or too long to follow."""
        resolved: list[str] = []
        todo = path.split("/")[::-1]
        self._spend(len(todo))
        links = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            resolved.append(part)
            where = "/".join(resolved)
            if len(where) > MAX_FOLLOWED:
                return None
            self._spend(1)
            st = self._lstat(where)
            if st is None:
                return None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _KERNEL_MAX_LINKS:
                    return None
                self._spend(1)
                link = self.fs.readlink(where)
                resolved.pop()
                if link.startswith("/"):
                    resolved.clear()
                more = link.split("/")[::-1]
                self._spend(len(more))
                todo.extend(more)
            elif not stat.S_ISDIR(st.st_mode):
                return None
        return resolved

    def leads_out(self, parent: list[str], name: str) -> bool:
        """Whether the symlink ``name`` in ``parent`` (real components) leads out of
        the destination, followed now."""
        try:
            self._walk(list(parent), name)
        except LeadsOut:
            return True
        return False

    def _spend(self, steps: int) -> None:
        self.budget -= steps
        if self.budget < 0:
            raise TooManyLookups

    def _lstat(self, path: str) -> os.stat_result | None:
        try:
            return self.fs.lstat(path)
        except OSError as err:
            if err.errno in _NOTHING_THERE:
                return None
            raise

    def _walk(self, resolved: list[str], path: str) -> list[str]:
        """Resolve ``path`` from ``resolved``, component by component, as
        :func:`os.path.realpath` does.

        A missing component (or one that is not a directory) ends the real lookups
        until a ``..`` climbs back over it: from there on the path is read lexically.
        Nothing can be reached through it now, and climbing above the destination
        lexically leads out all the same. A loop is read both ways ``realpath`` has
        read it: Python 3.13 as a missing name, 3.11 and 3.12 by reading all the rest
        of the path lexically. A path too long to look up the same way on the host
        (where the destination's own path comes before it) cannot be followed.
        """
        if path.startswith("/"):
            raise LeadsOut
        todo = path.split("/")[::-1]
        self._spend(len(todo))
        missing_at = -1  # len(resolved) at the first component not there; -1: none
        expanding: set[str] = set()  # the symlinks being followed (a loop meets one)
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part[0] == "\0":  # a symlink's components are all read
                expanding.discard(part[1:])
                continue
            if part == "..":
                if not resolved:
                    raise LeadsOut
                resolved.pop()
                if len(resolved) < missing_at:
                    missing_at = -1  # back over the missing component: real again
                continue
            resolved.append(part)
            if missing_at >= 0:
                continue
            where = "/".join(resolved)
            if len(where) > MAX_FOLLOWED:
                raise LeadsOut
            if where in expanding:  # a loop
                _read_lexically(resolved, todo)
                missing_at = len(resolved)
                continue
            self._spend(1)
            st = self._lstat(where)
            if st is None:
                missing_at = len(resolved)
                continue
            if stat.S_ISLNK(st.st_mode):
                self._spend(1)
                link = self.fs.readlink(where)
                if link.startswith("/"):
                    raise LeadsOut
                resolved.pop()
                expanding.add(where)
                more = link.split("/")[::-1]
                self._spend(len(more))
                todo.append("\0" + where)
                todo.extend(more)
            elif not stat.S_ISDIR(st.st_mode) and todo:
                missing_at = len(resolved)  # ENOTDIR: nothing is reached below it
        return resolved


def _read_lexically(resolved: list[str], todo: list[str]) -> None:
    """Raise :class:`LeadsOut` when the rest of the path, read as text after
    ``resolved``, climbs above the destination (``realpath`` of Python 3.11 and 3.12,
    once it meets a loop)."""
    depth = len(resolved)
    for part in reversed(todo):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise LeadsOut
        elif part not in ("", ".") and part[0] != "\0":
            depth += 1
