"""Where a symlink leads when it is followed, for the ``data`` filter's promise.

Every filter refuses a symlink whose target climbs out lexically (``names``). The
``data`` filter promises more, as PEP 706's does: that a later reader who follows a
symlink the archive made stays in the destination. A lexical check cannot keep that
promise: ``a -> .`` then ``a/e -> ../x`` puts ``e -> ../x`` at the top; ``d -> .``
after ``l -> d/../x`` turns an innocent ``l`` into one that leads out. ``tarfile``
resolves each link's real path as it extracts it, and so misses the second.

So the unpacker checks, once the archive is all written, every symlink it made under
``data``: :class:`LinkWalk` follows it as the kernel would, through the symlinks now in
the destination, and says whether it climbs above the destination or meets an absolute
symlink (which a reader outside the jail would follow to the host's own files).
"""

from __future__ import annotations

import stat

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    import os

    from chrootarchive.engine.fsops import FileOps

__all__ = ["LinkWalk", "TooManyLookups"]

#: Symlinks one lookup follows before the kernel gives up with ELOOP (MAXSYMLINKS).
MAX_SYMLINKS = 40


class TooManyLookups(Exception):
    """The walks used up their budget of lookups (a hostile tangle of symlinks)."""


class LinkWalk:
    """Follows symlinks below the destination (``fs``'s root), ``lookups`` at most in all.

    The budget bounds the time an archive can make the check take: each ``lstat`` is
    one lookup, and a target of 4 KiB can ask for a thousand of them.
    """

    __slots__ = ("fs", "lookups_left")

    def __init__(self, fs: FileOps, lookups: int) -> None:
        self.fs = fs
        self.lookups_left = lookups

    def leaves(self, name: str) -> str | None:
        """How the symlink at ``name`` leads out of the destination (its target, for the
        message), or None: it stays inside, dangles, loops, or is no symlink now.

        Raises:
            TooManyLookups: the budget is spent.
            OSError: a lookup failed other than by a missing component.
        """
        st = self._lstat(name)
        if st is None or not stat.S_ISLNK(st.st_mode):
            return None  # replaced since by something else (checked itself, if a link)
        target = self.fs.readlink(name)
        if self._climbs_out(name.rpartition("/")[0], target):
            return target
        return None

    def _lstat(self, path: str) -> os.stat_result | None:
        if self.lookups_left <= 0:
            raise TooManyLookups
        self.lookups_left -= 1
        return self.fs.lstat(path)

    def _climbs_out(self, parent: str, target: str) -> bool:
        """Resolve ``parent/target`` component by component, from the destination.

        A missing component (or one that is not a directory) ends the real lookups
        until a ``..`` climbs back over it: from there on the path is read lexically,
        as :func:`os.path.realpath` reads it. Nothing can be reached through it now,
        and climbing above the destination lexically is refused all the same.
        """
        if target.startswith("/"):
            return True  # outside the jail, the host's root
        todo = target.split("/")[::-1] + parent.split("/")[::-1]
        resolved: list[str] = []
        missing_at = -1  # len(resolved) at the first component not there; -1: none
        links = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    return True
                resolved.pop()
                if len(resolved) < missing_at:
                    missing_at = -1  # back over the missing component: real again
                continue
            resolved.append(part)
            if missing_at >= 0:
                continue
            path = "/".join(resolved)
            st = self._lstat(path)
            if st is None:
                missing_at = len(resolved)
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                links += 1
                if links > MAX_SYMLINKS:
                    return False  # ELOOP: the kernel never follows it
                link = self.fs.readlink(path)
                resolved.pop()
                if link.startswith("/"):
                    return True
                todo.extend(link.split("/")[::-1])
            elif not stat.S_ISDIR(mode) and todo:
                missing_at = len(resolved)  # ENOTDIR: nothing is reached below it
        return False
