"""The confined worker process and the parent/child protocol.

The parent spawns a fresh interpreter (``python -I -S``: no site, no environment, no
user paths; spawned, not forked, so it is cheap and inherits no threads or locks) with
three pipes:

* options: one JSON document, parent to child, on a pipe of its own;
* data: the uncompressed tar stream on the child's stdin;
* result: one JSON document, child to parent: the result, or an error given as
  (class name, message, entry) and raised again in the parent as the same class.

The child asks to be killed when its parent dies, imports everything it needs, enters
the jail, then makes every further import fail. It reads its input to the end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .errors import (
    ChrootArchiveError,
    DestinationError,
    WorkerError,
    error_class,
)
from .options import UnpackOptions, UnpackResult

__all__ = ["run_worker"]

_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
_MAX_RESULT = 16 << 20
_MAX_WARNINGS = 1000

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from chrootarchive.worker import child_main; child_main(sys.argv[2:])"
)


# -- parent side ---------------------------------------------------------------------


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker(
    *,
    root_fd: int,
    dest: str,
    mechanism: str,
    options: UnpackOptions,
    data: Iterable[bytes] | int,
    on_progress: Callable[[int], None] | None = None,
    debug: bool = False,
) -> UnpackResult:
    """Unpack ``data`` (chunks, or a readable fd of plain tar) in a confined worker.

    Args:
        root_fd: directory descriptor of the jail's root, pinned by the caller.
        dest: where to unpack, relative to the root (``.`` for the root itself).
        mechanism: the confinement mechanism chosen by :func:`confine.choose`.
        options: unpack options.
        data: the uncompressed tar stream.
        on_progress: called with the number of bytes handed to the worker.
    """
    opts_r, opts_w = os.pipe2(os.O_CLOEXEC)
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    data_w = -1
    if isinstance(data, int):
        stdin_fd = data
    else:
        stdin_fd, data_w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(data_w, _F_SETPIPE_SZ, _PIPE_SIZE)
    document = json.dumps(
        {"options": options.to_json(), "mechanism": mechanism, "dest": dest,
         "debug": debug}
    ).encode()
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOT, _package_parent(),
             str(opts_r), str(res_w), str(root_fd), str(os.getpid())],
            stdin=stdin_fd,
            stdout=subprocess.DEVNULL,
            pass_fds=(opts_r, res_w, root_fd),
            env={"LC_ALL": "C.UTF-8"},
        )
        for fd in (opts_r, res_w):
            os.close(fd)
        opts_r = res_w = -1
        if data_w >= 0:
            os.close(stdin_fd)
        _write_all(opts_w, document)
        os.close(opts_w)
        opts_w = -1
        reply = bytearray()
        reader = threading.Thread(target=_read_result, args=(res_r, reply), daemon=True)
        reader.start()
        feed_error: BaseException | None = None
        if data_w >= 0:
            assert not isinstance(data, int)
            try:
                _feed(data_w, data, on_progress)
            except BaseException as err:
                feed_error = err
            finally:
                os.close(data_w)
                data_w = -1
        if feed_error is not None and not isinstance(feed_error, ChrootArchiveError):
            proc.kill()
        proc.wait()
        reader.join()
        if feed_error is not None:
            raise feed_error
        return _decode_reply(bytes(reply), proc.returncode)
    finally:
        for fd in (opts_r, opts_w, res_w, data_w):
            if fd >= 0:
                os.close(fd)
        os.close(res_r)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _feed(fd: int, chunks: Iterable[bytes], on_progress: Callable[[int], None] | None) -> None:
    """Write the stream to the worker; stop quietly if the worker stopped reading."""
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
            if on_progress is not None:
                on_progress(len(chunk))
    except BrokenPipeError:
        return  # the worker ended (its reply says why)


def _read_result(fd: int, out: bytearray) -> None:
    while len(out) <= _MAX_RESULT:
        data = os.read(fd, 65536)
        if not data:
            return
        out += data


def _decode_reply(reply: bytes, returncode: int) -> UnpackResult:
    if not reply:
        if returncode < 0:
            name = signal.Signals(-returncode).name
            raise WorkerError(f"the worker was killed by {name} before it finished")
        raise WorkerError(f"the worker exited with status {returncode} without a result")
    try:
        message = json.loads(reply)
    except ValueError as err:
        raise WorkerError(f"the worker sent an unreadable reply: {err}") from None
    if "error" in message:
        detail = message["error"]
        raise error_class(str(detail["type"]))(str(detail["message"]), detail.get("entry"))
    if returncode != 0:
        raise WorkerError(f"the worker exited with status {returncode}")
    return UnpackResult.from_json(message["result"])


# -- child side ----------------------------------------------------------------------


class _ImportsForbidden:
    """A meta path finder that fails every import after confinement, loudly."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        raise ImportError(f"import of {name!r} attempted inside the jail (refused)")


def _forbid_imports() -> None:
    sys.meta_path[:] = [_ImportsForbidden()]
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()
    sys.path[:] = []


def _send(fd: int, message: dict[str, Any]) -> None:
    _write_all(fd, json.dumps(message).encode())


def _error_message(err: BaseException) -> dict[str, Any]:
    if isinstance(err, ChrootArchiveError):
        return {"error": {"type": type(err).__name__, "message": err.message,
                          "entry": err.entry}}
    return {"error": {"type": "InternalError",
                      "message": f"{type(err).__name__}: {err}", "entry": None}}


def child_main(argv: list[str]) -> None:
    """Entry point of the worker: ``OPTS_FD RESULT_FD ROOT_FD PARENT_PID``."""
    opts_fd, result_fd, root_fd, parent_pid = (int(a) for a in argv)
    from . import _linux

    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent is already gone
    request: dict[str, Any] = {}
    try:
        result = _child_work(opts_fd, root_fd, request)
        _send(result_fd, {"result": result.to_json()})
        code = 0
    except BaseException as err:
        if request.get("debug"):
            _print_traceback(err)
        with contextlib.suppress(OSError):
            _send(result_fd, _error_message(err))
        code = 1
    os.close(result_fd)
    sys.stdout.flush()
    os._exit(code)


def _print_traceback(err: BaseException) -> None:
    """--debug: the traceback, printed with what was imported before the jail."""
    tb = err.__traceback__
    lines = []
    while tb is not None:
        code = tb.tb_frame.f_code
        lines.append(f"  {code.co_filename}:{tb.tb_lineno} in {code.co_name}")
        tb = tb.tb_next
    sys.stderr.write("worker traceback:\n" + "\n".join(lines)
                     + f"\n{type(err).__name__}: {err}\n")


def _child_work(opts_fd: int, root_fd: int, request: dict[str, Any]) -> UnpackResult:
    # Everything the worker will ever need is imported here, before confinement.
    from . import _linux, confine, fsops, tarreader, unpack

    document = bytearray()
    while True:
        chunk = os.read(opts_fd, 65536)
        if not chunk:
            break
        document += chunk
    os.close(opts_fd)
    request.update(json.loads(document))
    options = UnpackOptions.from_json(request["options"])
    dest = str(request["dest"])
    _linux.preload_library("libgcc_s.so.1")
    os.umask(0)

    used = confine.enter(str(request["mechanism"]), root_fd)
    os.close(root_fd)
    _forbid_imports()

    warnings: list[str] = []

    def warn(text: str) -> None:
        if len(warnings) < _MAX_WARNINGS:
            warnings.append(text)

    fs = fsops.JailedFileOps()
    if dest not in ("", ".", "/"):
        _enter_dest(dest)
    unpacker = unpack.Unpacker(fs, options, warn)
    reader = tarreader.TarReader(0)
    try:
        stats = unpacker.run(reader)
    finally:
        with contextlib.suppress(Exception):
            reader.drain()
    return UnpackResult(
        entries=stats.entries, size=stats.size, confinement=used, warnings=tuple(warnings)
    )


def _enter_dest(dest: str) -> None:
    """Create ``dest`` inside the jail if needed (following in-root symlinks) and enter it.

    CVE-2021-41089: the destination below the root is never made from outside the jail.
    """
    try:
        os.makedirs(dest, 0o755, exist_ok=True)
        os.chdir(dest)
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.EEXIST):
            raise DestinationError("not a directory", dest) from err
        raise DestinationError(err.strerror or str(err), dest) from err
