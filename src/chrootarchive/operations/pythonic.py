"""The calls a Python developer already knows: ``tarfile``'s ``extractall`` and
``shutil.unpack_archive``, with the confined engine behind them.

Both default to PEP 706's ``data`` filter (the default of :mod:`tarfile` from Python
3.14): code that unpacks what it did not write gets data, not a root filesystem.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from chrootarchive._record import replace
from chrootarchive.errors import NOT_A_TAR, ArchiveError, MalformedArchiveError
from chrootarchive.operations import untar as api
from chrootarchive.options import Limits, UnpackOptions, UnpackResult

__all__ = ["SHUTIL_FORMATS", "ShutilReadError", "extractall", "register_unpack_formats"]

#: shutil's format names and extensions, and zstd's (Python 3.14's name for it).
SHUTIL_FORMATS = {
    "tar": ([".tar"], "uncompressed tar file, unpacked confined (chrootarchive)"),
    "gztar": ([".tar.gz", ".tgz"], "gzip'ed tar file, unpacked confined (chrootarchive)"),
    "bztar": ([".tar.bz2", ".tbz2"], "bzip2'ed tar file, unpacked confined (chrootarchive)"),
    "xztar": ([".tar.xz", ".txz"], "xz'ed tar file, unpacked confined (chrootarchive)"),
    "zstdtar": ([".tar.zst", ".tzst"], "zstd'ed tar file, unpacked confined (chrootarchive)"),
}


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Named(Protocol):
        """What ``members=`` reads of a ``tarfile.TarInfo``: its name, nothing else."""

        @property
        def name(self) -> str: ...


def extractall(
    source: api.Source,
    path: str | os.PathLike[str] = ".",
    members: Iterable[str | Named] | None = None,
    *,
    numeric_owner: bool = True,
    filter: str | None = None,  # tarfile's name (PEP 706); None: the default
    options: UnpackOptions | None = None,
    excludes: Iterable[str] | None = None,
    atomic: bool | None = None,
    confine: str | None = None,
    limits: Limits | None = None,
    progress: api.Progress | None = None,
    no_overwrite_dir_nondir: bool | None = None,
) -> UnpackResult:
    """Unpack ``source`` into ``path`` as ``tarfile.open(source).extractall(path,
    filter=...)`` would, but confined by the kernel.

    ``filter`` takes PEP 706's names (``data``, the default; ``tar``;
    ``fully_trusted``), not a callable. ``None`` is the default, as in ``tarfile`` from
    Python 3.14: ``data``, or the filter of ``options`` when they chose another than
    their default (``fully_trusted``, Docker's, which cannot be told from a choice:
    ``options=UnpackOptions(limits=...)`` alone gave a root filesystem's rules to an
    upload). For ``fully_trusted``, pass ``filter="fully_trusted"``.
    ``source`` is a path, a binary file object, or the archive as bytes; compression is
    detected.

    A file (or symlink) of the archive that meets a directory in ``path``, or a
    directory that meets a file, is an error naming the entry, as in ``tarfile`` and
    GNU tar: the directory and what it holds are kept. The error is a
    :class:`~chrootarchive.DestinationError` that is also ``tarfile``'s
    ``IsADirectoryError`` (``FileExistsError`` for a directory meeting a file).
    :func:`chrootarchive.untar` replaces it instead, as Docker does;
    ``no_overwrite_dir_nondir=False`` asks for that here (the ``options`` cannot: their
    ``False`` is also their default).

    ``members``, as ``tarfile``'s: the entries to unpack, the others left out, given as
    names or as ``TarInfo`` objects (of which only the name is read: the jailed worker
    selects the entries by name, as it reads them). A name no entry has is an
    :class:`~chrootarchive.ArchiveError` once the rest is unpacked (``tarfile``: a
    ``KeyError``). A hardlink whose target is left out is left out too (``tarfile``
    copies the target's data there).

    ``numeric_owner``: owners are always the archive's numeric ids (``tarfile``'s
    ``numeric_owner=True``, and Docker's rule): the archive's user and group names are
    not looked up. ``False`` is refused where owners are set (filters ``tar`` and
    ``fully_trusted``); under ``data`` no owner is set, so it changes nothing, as in
    ``tarfile``.
    """
    base = api.with_changes(options)  # an options of the wrong type: a TypeError
    _check_filter(filter)
    if filter is None:  # the options' filter where it is not their (Docker's) default
        filter = base.filter if base.filter != UnpackOptions().filter else "data"
    if not numeric_owner and filter != "data":
        raise ValueError(f"numeric_owner=False with filter {filter!r}: chrootarchive sets "
                         "owners by the archive's numeric ids only (the jail has no user "
                         "database to look names up in); pass numeric_owner=True, or "
                         "options=UnpackOptions(uid_maps=..., gid_maps=...) to map ids")
    chosen = replace(base, no_overwrite_dir_nondir=(
        True if no_overwrite_dir_nondir is None else no_overwrite_dir_nondir))
    if members is not None:
        chosen = replace(chosen, members=tuple(_member_names(members)))
    try:
        return api.untar(source, path, chosen, filter=filter, excludes=excludes,
                         atomic=atomic, confine=confine, limits=limits, progress=progress)
    except ArchiveError as err:
        raise as_tar_error(err) from err.__cause__


def as_tar_error(err: ArchiveError) -> ArchiveError:
    """``err`` as an instance of a subclass of both its class and ``tarfile.TarError``,
    so that ``except tarfile.TarError`` in code ported from ``tarfile`` catches it.

    ``tarfile`` is imported here, on the way out of a failed call only: importing it
    costs the command line and the worker milliseconds they never pay.
    """
    import tarfile

    if isinstance(err, tarfile.TarError):
        return err
    cls = type(err)
    made = _TAR_ERRORS.get(cls)
    if made is None:  # two threads may both make one: the first kept is the one used
        made = _TAR_ERRORS.setdefault(cls, type(cls.__name__, (cls, tarfile.TarError), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, "__reduce__": _reduce_to_base}))
    twin = made(err.message, err.entry)
    twin.__dict__.update(err.__dict__)  # what the call added (notes included)
    twin.__traceback__ = err.__traceback__
    return twin


#: The classes :func:`as_tar_error` made, one per class of ours.
_TAR_ERRORS: dict[type[ArchiveError], type[ArchiveError]] = {}


def _reduce_to_base(self: ArchiveError) -> tuple[object, tuple[str, str | None]]:
    """Pickled as the class of ours it was made from: the made one has no importable
    name (a ``TarError`` no more once unpickled)."""
    return (type(self).__mro__[1], (self.message, self.entry))


class ShutilReadError(MalformedArchiveError, shutil.ReadError):
    """What ``shutil.unpack_archive`` raises, after :func:`register_unpack_formats`, for
    a file that is no (compressed) tar archive at all: ``shutil``'s own unpackers raise
    ``shutil.ReadError`` there, and code written for them catches that; code written
    for chrootarchive catches :class:`MalformedArchiveError`. Both work.

    Its ``__cause__`` is the :class:`MalformedArchiveError` the unpack raised.
    """

    def __new__(cls, message: str, entry: str | None = None) -> ShutilReadError:
        # As errors._OSLevelError: OSError.__new__ takes the arguments, not __init__.
        return OSError.__new__(cls, None, message, entry)

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(message, entry)
        self.args = (message, entry)

    def __reduce__(self) -> tuple[object, tuple[str, str | None]]:
        # OSError's would rebuild it from (errno, strerror, filename).
        return (type(self), (self.message, self.entry))


def _member_names(members: object) -> list[str]:
    """The names of ``members=``: strings, or ``tarfile.TarInfo``-like objects' names
    (``str`` only: the worker matches text)."""
    if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
        raise TypeError("extractall: members must be an iterable of names or TarInfo "
                        f"objects, not {type(members).__name__}")
    names = []
    for member in members:
        name = member if isinstance(member, str) else getattr(member, "name", None)
        if not isinstance(name, str):
            raise TypeError("extractall: members must hold names (str) or TarInfo objects, "
                            f"not {type(member).__name__}")
        names.append(name)
    return names


def _check_filter(filter: object) -> None:
    """A callable filter (``tarfile``'s ``tarfile.data_filter``, or one of the caller's)
    is refused with the reason: the filter runs in the jailed worker, which runs no
    caller code."""
    if callable(filter):
        name = getattr(filter, "__qualname__", type(filter).__name__)
        raise TypeError("chrootarchive takes a filter's name (data, tar, fully_trusted), "
                        f"not a callable ({name}): the filter runs in the jailed worker, "
                        "which runs no code of the caller's (to pick entries: members=; to "
                        "leave them out: excludes=)")


def _shutil_unpack(filename: str, extract_dir: str, *, filter: str | None = None) -> None:
    """What ``shutil.unpack_archive`` calls for the formats registered below."""
    _check_filter(filter)
    try:  # a directory in the way is kept (an error), as shutil's tarfile keeps it
        api.untar(filename, extract_dir, UnpackOptions(no_overwrite_dir_nondir=True),
                  filter=filter or "data")
    except ArchiveError as err:
        if isinstance(err, MalformedArchiveError) and err.message.startswith(NOT_A_TAR):
            raise ShutilReadError(err.message, err.entry) from err
        raise as_tar_error(err) from err.__cause__


def register_unpack_formats() -> None:
    """Make ``shutil.unpack_archive`` unpack tar archives with chrootarchive.

    Replaces shutil's own ``tar``, ``gztar``, ``bztar`` and ``xztar`` unpackers (and
    adds ``zstdtar``): ``shutil.unpack_archive("upload.tar.gz", dest, filter="data")``
    then runs confined. Without ``filter=``, ``data`` applies. A file of the archive
    that meets a directory (or the reverse) is an error, as with ``shutil``'s own
    unpackers: :func:`extractall`'s rule. Calling it again does nothing more.

    A file that is no (compressed) tar archive raises :class:`ShutilReadError`, both
    ``shutil.ReadError`` (as ``shutil``'s own unpackers) and
    :class:`MalformedArchiveError`; other errors are chrootarchive's, as from
    :func:`chrootarchive.untar`.
    """
    for name, (extensions, description) in SHUTIL_FORMATS.items():
        for registered, known, _ in shutil.get_unpack_formats():
            if registered == name or set(known) & set(extensions):
                shutil.unregister_unpack_format(registered)
        shutil.register_unpack_format(name, extensions, _shutil_unpack,
                                      description=description)
