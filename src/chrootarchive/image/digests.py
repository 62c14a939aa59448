"""Digests: their form is checked before a digest names a file, and data is hashed to match one."""

from __future__ import annotations

import hashlib
import re

from chrootarchive.errors import ImageError

_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_ENCODED_RE = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
_DIGEST_REF_RE = re.compile(r"(?:[^@]+@)?((?:sha256:[a-f0-9]{64})|(?:sha512:[a-f0-9]{128}))")


def short_digest(digest: str | None) -> str:
    """``sha256:0123456789ab``: enough to tell digests apart in a message."""
    if not digest:
        return "?"
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:12]}"


def check_digest(value: object, where: str) -> str:
    """Return ``value`` if it is a digest we can verify (sha256 or sha512), else raise.

    The check happens before the digest names a file: ``..``, ``/`` and anything but
    lower-case hex digits of the right length are refused.
    """
    if not isinstance(value, str):
        raise ImageError(f"digest is not a string: {clip(value)}", where)
    if not _DIGEST_RE.fullmatch(value):
        raise ImageError(f"invalid digest {clip(value)}", where)
    alg, _, encoded = value.partition(":")
    pattern = _ENCODED_RE.get(alg)
    if pattern is None:
        raise ImageError(f"unsupported digest algorithm {alg!r} (sha256, sha512)", where)
    if not pattern.fullmatch(encoded):
        raise ImageError(f"invalid {alg} digest {clip(value)}", where)
    return value


def clip(value: object, limit: int = 100) -> str:
    """An untrusted value quoted for an error message, never longer than ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def blob_name(digest: str) -> str:
    """The file of a blob in an OCI layout (``digest`` must have been checked)."""
    alg, _, encoded = digest.partition(":")
    return f"blobs/{alg}/{encoded}"


class Hasher:
    """Hashes data with the algorithm of ``digest``, to compare the result with it."""

    def __init__(self, digest: str) -> None:
        self.expected = digest
        self.alg = digest.partition(":")[0]
        self._h = hashlib.new(self.alg)

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)

    @property
    def actual(self) -> str:
        return f"{self.alg}:{self._h.hexdigest()}"

    def matches(self) -> bool:
        return self.actual == self.expected


def digest_ref(ref: str) -> str | None:
    """The digest that ``ref`` pins (``sha256:...`` or ``name@sha256:...``), if any."""
    match = _DIGEST_REF_RE.fullmatch(ref)
    return match.group(1) if match else None
