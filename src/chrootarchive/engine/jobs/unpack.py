"""The job ``unpack``: read a tar stream and unpack it below the root.

:func:`run` runs in the jailed worker; :func:`run_in_process` runs the same job in the
caller's process for the ``openat2`` mechanism.
"""

from __future__ import annotations

import os

from chrootarchive.engine import fsops
from chrootarchive.engine import unpacker as unpack
from chrootarchive.errors import ChrootArchiveError, DestinationError, LimitExceededError
from chrootarchive.tarformat import reader as tarreader

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = ["prepare", "run", "run_in_process"]


#: Raised only around setting ``trusted.*`` xattrs (see ``child._lock_down``).
dormant_capabilities = frozenset({"CAP_SYS_ADMIN"})


def _alarm(signum: int, frame: object) -> None:
    raise LimitExceededError("limit timeout exceeded (the worker was stopped)")


class _Fields:
    """Attribute access to a JSON object (options as the parent validated and sent them)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)


def _wire_options(data: dict[str, Any]) -> Any:
    """The :class:`~chrootarchive.options.UnpackOptions` the parent sent, duck-typed.

    The worker does not import ``options``: its dataclasses (and ``dataclasses`` itself)
    cost milliseconds of start-up, most of the time a small archive takes.
    """
    fields = dict(data)
    fields["uid_maps"] = tuple(_Fields(m) for m in data.get("uid_maps", ()))
    fields["gid_maps"] = tuple(_Fields(m) for m in data.get("gid_maps", ()))
    fields["excludes"] = tuple(data.get("excludes", ()))
    chown = data.get("chown")
    fields["chown"] = None if chown is None else (int(chown[0]), int(chown[1]))
    fields["limits"] = _Fields(data["limits"])
    return _Fields(fields)


def prepare(request: dict[str, Any]) -> None:
    """Before the jail: import what this request needs and nothing else."""
    if request["options"]["limits"].get("timeout") is not None:
        import signal  # noqa: F401 - used by run()
    if request.get("helper"):
        import chrootarchive.engine.finisher  # noqa: F401 - forked by the unpacker (socketpair)


def run(request: dict[str, Any], warn: Callable[[str], None]) -> dict[str, Any]:
    options = _wire_options(request["options"])
    if options.limits.timeout is not None:
        import signal  # imported by prepare(), before the jail

        # Entry-by-entry checks stop a busy worker; the alarm also stops a worker
        # blocked on a slow (trickling) input.
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, options.limits.timeout + 0.2)
    unpacker = unpack.Unpacker(
        fsops.JailedFileOps(),
        options,
        warn,
        layer_mode=bool(request.get("layer")),
        in_user_namespace=bool(request.get("in_user_namespace")),
    )
    if request.get("helper"):
        unpacker.finisher_countdown = unpack.FINISHER_AFTER
    reader = tarreader.TarReader(0)
    stats = unpacker.run(reader)
    # Archives may be zero-padded: read the input to its end. Only on success: after
    # an error (a bomb stopped by a limit) the worker exits and the parent stops.
    reader.drain()
    return {"entries": stats.entries, "size": stats.size}


def run_in_process(
    root_fd: int, request: dict[str, Any], data: int | Iterable[bytes]
) -> dict[str, Any]:
    """The ``openat2`` mechanism: the same job in the caller's process, no jail.

    Every path is resolved with ``openat2(RESOLVE_IN_ROOT)`` under ``root_fd``. Compressed
    or chunked input is fed through a pipe by a thread, as the parent feeds a worker.
    """
    import threading

    from chrootarchive.options import UnpackOptions
    from chrootarchive.runner import worker

    options = UnpackOptions.from_json(request["options"])
    dest = str(request.get("dest", "."))
    if dest not in ("", ".", "/"):
        try:
            fsops.Openat2FileOps(root_fd).make_dirs(dest)
        except OSError as err:
            raise DestinationError(err.strerror or str(err), dest) from err
    warnings: list[str] = []
    unpacker = unpack.Unpacker(
        fsops.Openat2FileOps(root_fd, dest), options, warnings.append,
        layer_mode=bool(request.get("layer")),
        in_user_namespace=os.geteuid() != 0,  # unprivileged: user.overlay.opaque
    )
    feeder: threading.Thread | None = None
    feed_error: list[BaseException] = []
    if isinstance(data, int):
        read_fd = data
    else:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        chunks = data

        def feed() -> None:
            try:
                worker.feed(write_fd, chunks, None)
            except BaseException as err:
                feed_error.append(err)
            finally:
                os.close(write_fd)

        feeder = threading.Thread(target=feed, name="chrootarchive-feed", daemon=True)
        feeder.start()
    try:
        reader = tarreader.TarReader(read_fd)
        try:
            stats = unpacker.run(reader)
            reader.drain()
        except ChrootArchiveError:
            if feed_error:
                raise feed_error[0] from None
            raise
    finally:
        if feeder is not None:
            os.close(read_fd)
            feeder.join()
    if feed_error:
        raise feed_error[0]
    return {"entries": stats.entries, "size": stats.size, "confinement": "openat2",
            "warnings": warnings[:1000]}
