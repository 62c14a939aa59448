"""The layer channel: how the layers of one image reach one job, one after another.

A job that applies a stack of layers (``JobRequest.stack``) gets, besides its usual
descriptors, one end of a Unix stream socket. On it the parent sends, for each layer, one
byte with the descriptors (SCM_RIGHTS) that carry that layer's uncompressed tar stream:
``R`` with a fresh ring and its two pipes (:mod:`chrootarchive._ring`, of
``JobRequest.ring`` bytes: a worker process), or ``L`` with the read end of a fresh pipe
(the in-process job); and at last one byte ``E``. The layer ends where its stream ends:
a hostile layer without end-of-archive blocks, or with data after them, cannot run into
the next one. After each layer the job answers with its result (a length, then one JSON
document) and waits: the parent sends the next layer only once it has checked this
one's digest and DiffID, so a mismatch stops the job before anything more is applied
(the parent then closes the channel, which ends the job).

Shared by both sides: the parent's runner and the job (in a worker, or in-process).
"""

from __future__ import annotations

import _socket
import os
import sys

from chrootarchive import _wire

__all__ = ["END", "LAYER", "MAX_RESULT", "RING", "receive_layer", "receive_result",
           "send_end", "send_layer", "send_result"]

LAYER = b"L"  # one descriptor: a pipe
RING = b"R"  # three: a ring, the pipe of what was written, the pipe of what was freed
END = b"E"
MAX_RESULT = 16 << 20  # bytes of one layer's result, at most (warnings are capped)
_LENGTH = 4


def send_layer(sock: _socket.socket, fds: tuple[int, ...]) -> None:
    """Hand the job the next layer's stream: a pipe ``(fd,)`` it reads to its end, or a
    ring ``(ring, written, freed)`` (the worker's ends, :meth:`RingWriter.child_fds`)."""
    kind = LAYER if len(fds) == 1 else RING
    rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
    sock.sendmsg([kind], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)],
                 _socket.MSG_NOSIGNAL)


def send_end(sock: _socket.socket) -> None:
    """No more layers: the job finishes and sends its reply."""
    sock.sendall(END, _socket.MSG_NOSIGNAL)


def receive_layer(sock: _socket.socket) -> tuple[int, ...] | None:
    """The job's side: the next layer's descriptors (``(pipe,)`` or ``(ring, written,
    freed)``, as sent), or None at the end of the stack.

    Raises EOFError when the parent closed the channel without ``E`` (it stopped the
    image: a digest mismatch, an error, an interrupt) and ValueError on anything that
    is not the parent's protocol.
    """
    data, ancillary, flags, _addr = sock.recvmsg(
        1, _socket.CMSG_SPACE(3 * 4), _socket.MSG_CMSG_CLOEXEC)
    passed: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            passed += [int.from_bytes(payload[i:i + 4], sys.byteorder, signed=True)
                       for i in range(0, len(payload) - 3, 4)]
    if not flags & _socket.MSG_CTRUNC and (
            (data == LAYER and len(passed) == 1) or (data == RING and len(passed) == 3)):
        return tuple(passed)
    for fd in passed:
        os.close(fd)
    if not data:
        raise EOFError("the caller stopped before the end of the layers")
    if data == END and not passed:
        return None
    raise ValueError("not a message of the layer channel")


def send_result(sock: _socket.socket, document: object) -> None:
    """The job's side: one layer's result (a JSON-able document)."""
    data = _wire.dumps(document)
    sock.sendall(len(data).to_bytes(_LENGTH, "big") + data, _socket.MSG_NOSIGNAL)


def receive_result(sock: _socket.socket) -> object | None:
    """One layer's result document, or None when the job closed the channel (it
    failed, or was stopped: its reply says why)."""
    head = _receive_exactly(sock, _LENGTH)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_RESULT:
        raise ValueError(f"a layer result of {size} bytes (at most {MAX_RESULT})")
    body = _receive_exactly(sock, size)
    if body is None:
        return None
    return _wire.loads(body)


def _receive_exactly(sock: _socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
