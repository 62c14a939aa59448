"""The exception hierarchy.

Every error the package raises derives from :class:`ChrootArchiveError`. Errors raised in
the confined worker travel to the parent as ``(class name, message, entry)`` and are
raised there again as the same class, so callers can catch them by type. All classes are
picklable (their constructor arguments are ``(message, entry)``, and the errno for the
two that are also :class:`OSError`: :class:`SourceError`, :class:`DestinationError`),
and so are the classes themselves, the per-errno variants of those two included.
"""

from __future__ import annotations

import copyreg
import errno

__all__ = [
    "MAX_WARNINGS",
    "NOT_A_TAR",
    "NO_ROOM_ERRNOS",
    "ArchiveError",
    "BreakoutError",
    "ChrootArchiveError",
    "CompressionError",
    "ConfinementError",
    "DestinationError",
    "DigestMismatchError",
    "ImageError",
    "InternalError",
    "LimitExceededError",
    "MalformedArchiveError",
    "MechanismUnavailableError",
    "RegistryError",
    "SourceError",
    "WorkerError",
    "counted",
    "error_class",
    "from_os_error",
    "os_reason",
    "printable",
    "quoted",
]

#: Warnings kept for one operation (one line each): a hostile archive can make millions.
MAX_WARNINGS = 1000

#: errno values that mean the destination cannot take more, whatever was being done:
#: these are always a :class:`DestinationError`.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


#: How a message says that the input is no tar archive at all (the start of the message):
#: ``shutil``'s unpackers (``operations.pythonic``) raise its ``ReadError`` for it.
NOT_A_TAR = "not a tar archive"


#: Characters of a name kept at each end when a message shortens it in the middle.
NAME_KEEP = 60


def printable(name: str, keep: int = NAME_KEEP, *, backslash: bool = False) -> str:
    """NAME safe for a terminal: a hostile entry name can hold escape sequences.

    C0 and C1 controls, DEL and undecodable bytes (surrogate-escaped) become ``\\xNN``;
    printable Unicode is kept. A name longer than ``2 * keep + 1`` characters keeps its
    first and last ``keep`` characters around an ellipsis, so the message still shows.
    ``backslash``: a backslash becomes ``\\\\``, as GNU tar lists it, so that a name
    holding ``\\x1b`` is told from one holding ESC (for a name shown alone; a message
    whose names are already escaped is not escaped twice).
    """
    if keep > 0 and len(name) > 2 * keep + 1:
        name = name[:keep] + "\u2026" + name[-keep:]
    if name.isascii() and name.isprintable() and not (backslash and "\\" in name):
        return str(name)  # nothing to escape: most names (listing 200k: 0.5 s less)
    out = []
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif char == "\\" and backslash:
            out.append("\\\\")
        else:
            out.append(char)
    return "".join(out)


def counted(count: int, one: str, many: str | None = None) -> str:
    """``"1 device node"``, ``"2 device nodes"``: ``many`` is the plural when it is not
    ``one`` with an ``s``."""
    return f"{count} {one if count == 1 else many or one + 's'}"


def quoted(name: str) -> str:
    """``'NAME'`` for a message, escaped as :func:`printable` escapes it: ``repr()``
    wrote an undecodable byte as ``\\udcff`` where the entry's own name shows
    ``\\xff``, and a quote inside as ``\\'``."""
    return "'" + printable(name, backslash=True) + "'"


class ChrootArchiveError(Exception):
    """Base class of every error raised by chrootarchive.

    Attributes:
        message: what went wrong, one line.
        entry: the archive entry (or path) concerned, when there is one.
    """

    exit_status = 70

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(message, entry)
        self.message = message
        self.entry = entry

    def __str__(self) -> str:
        if self.entry:
            return f"{printable(self.entry, backslash=True)}: {printable(self.message, 0)}"
        return printable(self.message, 0)


class ArchiveError(ChrootArchiveError):
    """The archive itself is bad or hostile; nothing outside the destination was touched.

    Fix the archive, or do not trust its source. Exit status 1.
    """

    exit_status = 1


class MalformedArchiveError(ArchiveError):
    """The input is not a valid tar archive: corrupt header, bad PAX record, truncated data."""


class CompressionError(MalformedArchiveError):
    """The compressed stream is corrupt or truncated."""


class BreakoutError(ArchiveError):
    """An entry's name or hardlink target would leave the destination.

    Raised for the whole extraction, as Docker does: such an archive is hostile.
    """


class LimitExceededError(ArchiveError):
    """A resource limit (bytes, entries, path depth, time...) was crossed; work was stopped."""


class ImageError(ArchiveError):
    """A container image is malformed, incomplete, or its digests do not match."""


class DigestMismatchError(ImageError):
    """A blob's digest or size, or a layer's DiffID, is not what the image declares.

    The content was corrupted or tampered with. The message names the layer (or
    document) and both digests.
    """


class RegistryError(ImageError):
    """A registry refused, failed or misbehaved: an HTTP error, a timeout, a TLS failure,
    a redirect loop, a document over its bound, a digest that does not match.

    The entry is ``REGISTRY/REPOSITORY:REFERENCE``; the message is the problem, one line,
    never a credential.
    """


#: errno -> the built-in subclass of OSError that Python raises for it.
_BUILTIN_OSERRORS: dict[int, type[OSError]] = {
    errno.ENOENT: FileNotFoundError,
    errno.EACCES: PermissionError,
    errno.EPERM: PermissionError,
    errno.EEXIST: FileExistsError,
    errno.ENOTDIR: NotADirectoryError,
    errno.EISDIR: IsADirectoryError,
}


class _ErrnoVariant(type):
    """The metaclass of the classes :class:`_OSLevelError` makes per built-in class:
    they bear their base's name, which pickle would find to be the base, so a class is
    pickled as its base and its built-in class (:func:`_reduce_variant`)."""


_BUILTIN_BY_NAME = {builtin.__name__: builtin for builtin in _BUILTIN_OSERRORS.values()}


def _errno_variant(base: type[_OSLevelError], builtin: str) -> type[_OSLevelError]:
    """The variant of ``base`` that is also the built-in class named ``builtin``
    (unpickling a class)."""
    return base.variant(_BUILTIN_BY_NAME[builtin])


def _reduce_variant(cls: _ErrnoVariant) -> tuple[object, tuple[type, str]]:
    # The built-in class by its name: pickle's protocols 0-2 write FileNotFoundError
    # as Python 2's OSError.
    base, builtin = cls.__bases__
    return _errno_variant, (base, builtin.__name__)


copyreg.pickle(_ErrnoVariant, _reduce_variant)  # type: ignore[arg-type]


class _OSLevelError(ChrootArchiveError, OSError):
    """An error that is also an :class:`OSError`, with the kernel's ``errno`` when one was
    the cause, so ``except FileNotFoundError`` or ``except PermissionError`` work as
    they do around :func:`open`.

    Like ``OSError(errno.ENOENT, ...)``, which makes a :class:`FileNotFoundError`, the
    constructor picks the subclass that is also the built-in class for ``code``.
    """

    _variants: dict[type[OSError], type[_OSLevelError]]  # built-in class -> variant

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("_errno_variant"):
            cls._variants = {}  # filled by variant(), as each is first needed

    @classmethod
    def variant(cls, builtin: type[OSError]) -> type[_OSLevelError]:
        """The subclass of this class (of its base, for a variant) that is also
        ``builtin``, named like it (the name is what crosses the process boundary; the
        errno travels beside it). Made when first needed, once: making them all as
        the module loaded was a quarter of a millisecond of every process's start."""
        base: type[_OSLevelError] = (
            cls.__bases__[0] if cls.__dict__.get("_errno_variant") else cls)
        made = base._variants.get(builtin)
        if made is None:
            new: type[_OSLevelError] = _ErrnoVariant(  # type: ignore[assignment]
                base.__name__, (base, builtin), {
                    "_errno_variant": True, "__module__": base.__module__,
                    "__qualname__": base.__qualname__, "__doc__": base.__doc__,
                })
            made = base._variants.setdefault(builtin, new)  # one, whatever the threads
        return made

    def __new__(cls, message: str, entry: str | None = None,
                code: int | None = None) -> _OSLevelError:
        builtin = _BUILTIN_OSERRORS.get(code) if code is not None else None
        variant = cls.variant(builtin) if builtin is not None else cls
        # OSError.__new__ sets errno, strerror and filename when __new__ is overridden.
        return OSError.__new__(variant, code, message, entry)

    def __init__(self, message: str, entry: str | None = None,
                 code: int | None = None) -> None:
        self.args = (message, entry) if code is None else (message, entry, code)
        self.message = message
        self.entry = entry

    def __str__(self) -> str:
        return ChrootArchiveError.__str__(self)

    def __reduce__(self) -> tuple[object, tuple[str, str | None, int | None]]:
        base = type(self).__mro__[1] if type(self).__dict__.get("_errno_variant") else type(self)
        return (base, (self.message, self.entry, self.errno))


class DestinationError(_OSLevelError):
    """The destination cannot be written: missing permission, no space, not a directory.

    Also an :class:`OSError` (``errno`` set when the kernel gave one). Exit status 4.
    """

    exit_status = 4


class SourceError(_OSLevelError):
    """What is to be read cannot be: the archive or what is to be packed or copied is
    missing, access is denied, it is not a directory where one is needed, or an owner
    cannot be mapped with the id maps given. A stream being read ends with this error.

    Also an :class:`OSError` (``errno`` set when the kernel gave one): a missing
    archive is a :class:`FileNotFoundError` too. Exit status 4.
    """

    exit_status = 4


class ConfinementError(ChrootArchiveError):
    """No confinement mechanism is available; nothing was unpacked (never unconfined).

    The message lists each mechanism and why it could not be used. Exit status 3.
    """

    exit_status = 3


class MechanismUnavailableError(ConfinementError):
    """One confinement mechanism is not supported here (the kernel or a filter said no).

    In ``auto`` mode the next mechanism of the ladder is tried; a forced mechanism
    fails with this error (exit status 3).
    """


class InternalError(ChrootArchiveError):
    """A bug in chrootarchive: please report it with the message and ``--debug`` output."""


class WorkerError(InternalError):
    """The confined worker process died or broke the protocol (killed, crashed)."""


_CLASSES: dict[str, type[ChrootArchiveError]] = {
    cls.__name__: cls
    for cls in (
        ChrootArchiveError,
        ArchiveError,
        MalformedArchiveError,
        CompressionError,
        BreakoutError,
        LimitExceededError,
        ImageError,
        DigestMismatchError,
        RegistryError,
        DestinationError,
        SourceError,
        ConfinementError,
        MechanismUnavailableError,
        InternalError,
        WorkerError,
    )
}


def error_class(name: str) -> type[ChrootArchiveError]:
    """Map a class name sent by the worker back to the class (unknown names: InternalError)."""
    return _CLASSES.get(name, InternalError)


def os_reason(err: OSError) -> str:
    """The kernel's reason for ``err``, as a message goes on: ``"no such file or directory"``."""
    reason = err.strerror or str(err)
    return reason[:1].lower() + reason[1:]


def from_os_error(
    err: OSError,
    entry: str | None = None,
    *,
    kind: type[ChrootArchiveError] = InternalError,
    action: str = "",
) -> ChrootArchiveError:
    """The library error for an ``OSError``: the one place where one becomes the other.

    Raise it ``from err``. A full or read-only destination (:data:`NO_ROOM_ERRNOS`) is
    always a :class:`DestinationError`; anything else is ``kind``.

    Args:
        entry: the path or archive entry concerned.
        kind: the class for other errors (what the caller was working on: the source,
            the destination, the archive).
        action: what failed, e.g. ``"cannot open"``: the message is then
            ``"cannot open: No such file or directory"``; without it, the reason alone,
            ``"no such file or directory"``.
    """
    message = f"{action}: {err.strerror or err}" if action else os_reason(err)
    cls = DestinationError if err.errno in NO_ROOM_ERRNOS else kind
    if issubclass(cls, _OSLevelError):
        return cls(message, entry, err.errno)
    return cls(message, entry)
