"""JSON documents of an image: read within a size limit, checked against their digest,
and validated field by field (descriptors included) before anything uses them."""

from __future__ import annotations

import json
from collections.abc import Callable

from chrootarchive._record import record as dataclass
from chrootarchive.errors import DigestMismatchError, ImageError, from_os_error
from chrootarchive.image.digests import Hasher, blob_name, check_digest, clip
from chrootarchive.image.layout import Layout
from chrootarchive.image.mediatypes import CONTAINERD_NAME, REF_NAME
from chrootarchive.image.platforms import Platform, normalize_platform
from chrootarchive.operations import compression

TYPE_CHECKING = False  # no typing, no dataclasses at run time: the start (issue 16)
if TYPE_CHECKING:
    from typing import Any

    from chrootarchive.image.layout import Reader

MAX_JSON_SIZE = 4 << 20
"""The largest JSON document (index, manifest, config, ``manifest.json``) read."""
MAX_JSON_VALUES = 200_000
"""The most values (objects, arrays, and what commas separate) in one JSON document:
parsed, each is a Python object of 30 to 100 bytes, so 4 MiB of ``[{},{},...]`` would
take 118 MB of the parent's memory. Counted on the bytes before parsing (commas and
brackets inside strings count too: the bound is conservative)."""

_MAX_SIZE = (1 << 63) - 1
_CHUNK = compression.CHUNK

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_all(reader: Reader, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes (one more than allowed tells "too long")."""
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        try:
            data = reader.read(min(_CHUNK, limit + 1 - got))
        except OSError as err:
            raise from_os_error(err, kind=ImageError, action="cannot read the image") from err
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def parse_json(data: bytes, what: str, where: str) -> Any:
    values = data.count(b",") + data.count(b"{") + data.count(b"[")
    if values > MAX_JSON_VALUES:
        raise ImageError(f"{what} holds too many values (more than {MAX_JSON_VALUES:,}: "
                         f"parsed, they would not fit the memory limit)", where)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        reason = err.args[0] if isinstance(err, ValueError) and err.args else type(err).__name__
        if isinstance(err, RecursionError):
            reason = "nested too deeply"
        elif isinstance(err, UnicodeDecodeError):
            reason = "not UTF-8"
        subject = "not valid JSON" if what == where else f"{what} is not valid JSON"
        raise ImageError(f"{subject}: {reason}", where) from None


def read_root_json(layout: Layout, name: str, what: str) -> Any:
    """A document without a digest (``index.json``, ``manifest.json``, ``oci-layout``)."""
    return parse_json(read_root_document(layout, name, what), what, name)


def read_root_document(layout: Layout, name: str, what: str) -> bytes:
    """The bytes of a document without a digest, bounded (:func:`read_root_json`)."""
    reader = layout.open(name, what)
    try:
        if reader.size > MAX_JSON_SIZE:
            raise ImageError(f"{what} is too large ({reader.size} bytes, limit "
                             f"{MAX_JSON_SIZE})", name)
        data = read_all(reader, MAX_JSON_SIZE)
    finally:
        reader.close()
    if len(data) > MAX_JSON_SIZE:
        raise ImageError(f"{what} is too large (limit {MAX_JSON_SIZE} bytes)", name)
    return data


#: Fetches the bytes of a document named by a descriptor: from a layout's blobs, or a
#: registry's manifests and blobs. ``fetch(desc, what)`` returns at most ``desc.size + 1``
#: bytes (one more tells "too long"); :func:`fetch_json` checks size and digest.
Fetch = Callable[["Descriptor", str], bytes]


def layout_fetch(layout: Layout, name_of: Callable[[str], str] = blob_name) -> Fetch:
    """A :data:`Fetch` reading the blobs of ``layout`` (a digest's file: ``name_of``)."""

    def fetch(desc: Descriptor, what: str) -> bytes:
        reader = layout.open(name_of(desc.digest), f"blob of the {what}")
        try:
            if reader.size != desc.size:  # known before reading (a large one is not spooled)
                raise DigestMismatchError(
                    f"size mismatch: declared {desc.size} bytes, the blob has {reader.size}",
                    f"{what} {desc.digest}")
            return read_all(reader, desc.size)
        finally:
            reader.close()

    return fetch


def fetch_json(fetch: Fetch, desc: Descriptor, what: str) -> Any:
    """A document named by a descriptor: size and digest checked before parsing."""
    where = f"{what} {desc.digest}"
    if desc.size > MAX_JSON_SIZE:
        raise ImageError(f"declared size {desc.size} exceeds the limit for a JSON document "
                         f"({MAX_JSON_SIZE} bytes)", where)
    data = fetch(desc, what)
    verify_blob(data, desc, what)
    return parse_json(data, what, where)


def read_blob_json(layout: Layout, desc: Descriptor, what: str) -> Any:
    """A document of ``layout`` named by a descriptor (:func:`fetch_json`)."""
    return fetch_json(layout_fetch(layout), desc, what)


def verify_blob(data: bytes, desc: Descriptor, what: str) -> None:
    if len(data) != desc.size:
        raise DigestMismatchError(
            f"size mismatch: declared {desc.size} bytes, the blob has "
            f"{'more' if len(data) > desc.size else len(data)}", f"{what} {desc.digest}")
    hasher = Hasher(desc.digest)
    hasher.update(data)
    if not hasher.matches():
        raise DigestMismatchError(
            f"digest mismatch: expected {desc.digest}, got {hasher.actual}", what)


def as_object(value: Any, what: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(f"{what} must be a JSON object, not {type(value).__name__}", where)
    return value


def string_field(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ImageError(f"field {key!r} must be a string", where)
    return value


def list_field(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> list[Any]:
    value = obj.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ImageError(f"field {key!r} must be a list", where)
    return value


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]
    platform: Platform | None
    urls: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [self.annotations[k] for k in (REF_NAME, CONTAINERD_NAME)
                if k in self.annotations]


def parse_descriptor(value: Any, where: str) -> Descriptor:
    obj = as_object(value, "a descriptor", where)
    media_type = string_field(obj, "mediaType", where)
    digest = check_digest(obj.get("digest"), where)
    size = obj.get("size")
    if type(size) is not int or not 0 <= size <= _MAX_SIZE:
        raise ImageError(f"invalid size {clip(size)} for {digest}", where)
    raw_annotations = obj.get("annotations") or {}
    if not isinstance(raw_annotations, dict) or not all(
        isinstance(v, str) for v in raw_annotations.values()
    ):
        raise ImageError("annotations must map strings to strings", where)
    platform = None
    raw_platform = obj.get("platform")
    if raw_platform is not None:
        p = as_object(raw_platform, "a platform", where)
        platform = normalize_platform(string_field(p, "os", where),
                                      string_field(p, "architecture", where),
                                      string_field(p, "variant", where, required=False))
    urls = obj.get("urls") or []
    if not isinstance(urls, list):
        raise ImageError("urls must be a list", where)
    return Descriptor(media_type, digest, size, dict(raw_annotations), platform,
                      tuple(str(u) for u in urls))


def check_media_type(doc: dict[str, Any], desc: Descriptor, what: str) -> None:
    """A document's own ``mediaType``, when present, must be its descriptor's."""
    own = doc.get("mediaType")
    if own is not None and own != desc.media_type:
        raise ImageError(f"the {what} says it is {clip(own)} but its descriptor says "
                         f"{desc.media_type!r}", desc.digest)
