"""Selecting one image manifest in an OCI layout: by reference, digest and platform,
through nested image indexes (bounded in depth and number, cycles refused)."""

from __future__ import annotations

from chrootarchive.errors import ImageError
from chrootarchive.image.digests import clip, short_digest
from chrootarchive.image.documents import (
    Descriptor,
    Fetch,
    as_object,
    check_media_type,
    fetch_json,
    list_field,
    parse_descriptor,
)
from chrootarchive.image.mediatypes import INDEX_TYPES, MANIFEST_TYPES, SCHEMA1_TYPES
from chrootarchive.image.platforms import Platform, platform_rank

MAX_INDEX_DEPTH = 8
"""How deeply image indexes may nest below ``index.json``."""

MAX_DOCUMENTS = 1000
"""Index documents read while looking for a digest given as ``ref``."""

MAX_INDEX_ENTRIES = 1000
"""Manifests (platforms) one image index below ``index.json`` may list: a registry's
index for a tag is one of these (Docker Hub's largest list a dozen or two)."""

class Selection:
    """The platform wanted (``explicit``: the caller named it), and what choosing met on
    the way: ``warnings``, and the index ``documents`` read so far."""

    __slots__ = ("documents", "explicit", "want", "warnings")

    def __init__(self, want: Platform, explicit: bool, warnings: list[str],
                 documents: int = 0) -> None:
        self.want = want
        self.explicit = explicit
        self.warnings = warnings
        self.documents = documents


def _index_children(fetch: Fetch, desc: Descriptor, sel: Selection,
                    chain: tuple[str, ...]) -> list[Descriptor]:
    if len(chain) >= MAX_INDEX_DEPTH:
        raise ImageError(f"image indexes are nested more than {MAX_INDEX_DEPTH} levels deep",
                         f"image index {desc.digest}")
    if desc.digest in chain:
        raise ImageError("image index cycle: the index refers to itself "
                         f"({' -> '.join(short_digest(d) for d in (*chain, desc.digest))})",
                         desc.digest)
    sel.documents += 1
    if sel.documents > MAX_DOCUMENTS:
        raise ImageError(f"more than {MAX_DOCUMENTS} image indexes", desc.digest)
    doc = as_object(fetch_json(fetch, desc, "image index"), "an image index", desc.digest)
    check_media_type(doc, desc, "image index")
    where = f"image index {desc.digest}"
    entries = list_field(doc, "manifests", where)
    if len(entries) > MAX_INDEX_ENTRIES:
        raise ImageError(f"the index lists {len(entries):,} manifests (limit "
                         f"{MAX_INDEX_ENTRIES:,})", where)
    return [parse_descriptor(d, where) for d in entries]


def refuse_several_named_images(top: list[Descriptor], where: str) -> None:
    """A layout's index that names two images (entries with no name in common) is
    not one image for several platforms: the platform must not choose between them
    (the first would be unpacked, with nothing said); a reference must."""
    named = [(d, set(d.names())) for d in top if d.names()]
    if any(not names & named[0][1] for _, names in named[1:]):
        raise _several_images([d for d, _ in named], len({d.digest for d in top}), where)


def _several_images(listed: list[Descriptor], count: int, where: str) -> ImageError:
    names = sorted({n for d in listed for n in d.names()})
    return ImageError(f"the layout holds {count} images; choose one by reference "
                      f"(ref=NAME; names: {listed_names(names, 'unnamed')})", where)


def listed_names(names: list[str], none: str = "none") -> str:
    """Names or tags from an image's documents, for a message: each quoted and clipped,
    twenty at most (an index can hold thousands, each as long as it likes)."""
    shown = ", ".join(clip(name, 60) for name in names[:20])
    return (shown + (", ..." if len(names) > 20 else "")) or none


def pick(candidates: list[Descriptor], sel: Selection, where: str,
         top: bool) -> Descriptor:
    """Choose among an index's entries by platform (containerd's rules)."""
    usable = [d for d in candidates if d.media_type in MANIFEST_TYPES | INDEX_TYPES]
    unique = {d.digest: d for d in usable}
    if not usable:
        types = sorted({d.media_type for d in candidates})
        if not candidates:
            raise ImageError("the index lists no manifests", where)
        if any(t in SCHEMA1_TYPES for t in types):
            raise ImageError("Docker schema 1 manifests are not supported", where)
        raise ImageError(f"no image manifest in the index (media types: "
                         f"{listed_names(types)})", where)
    if len(unique) == 1:
        return usable[0]
    ranked = []
    for position, d in enumerate(usable):
        if d.platform is None:
            continue
        rank = platform_rank(d.platform, sel.want)
        if rank is not None:
            ranked.append((rank, position, d))
    if ranked:
        return min(ranked, key=lambda r: (r[0], r[1]))[2]
    unplatformed = [d for d in usable if d.platform is None]
    if top and len(unplatformed) > 1:
        raise _several_images(unplatformed, len(unique), where)
    if len(unplatformed) == 1:
        return unplatformed[0]
    available = sorted({str(d.platform) for d in usable if d.platform is not None})
    raise ImageError(f"no manifest for platform {sel.want} (available: "
                     f"{listed_names(available)})", where)


def resolve_manifest(fetch: Fetch, desc: Descriptor, sel: Selection,
                     chain: tuple[str, ...]) -> Descriptor:
    while desc.media_type in INDEX_TYPES:
        children = _index_children(fetch, desc, sel, chain)
        chain = (*chain, desc.digest)
        desc = pick(children, sel, f"image index {desc.digest}", top=False)
    if desc.media_type in SCHEMA1_TYPES:
        raise ImageError("Docker schema 1 manifests are not supported", desc.digest)
    if desc.media_type not in MANIFEST_TYPES:
        raise ImageError(f"not an image manifest: media type {clip(desc.media_type)}",
                         desc.digest)
    return desc


def find_digest(fetch: Fetch, top: list[Descriptor], digest: str,
                sel: Selection) -> Descriptor | None:
    """Breadth-first search of the index tree for a descriptor with ``digest``."""
    level: list[tuple[Descriptor, tuple[str, ...]]] = [(d, ()) for d in top]
    while level:
        for d, _chain in level:
            if d.digest == digest:
                return d
        following: list[tuple[Descriptor, tuple[str, ...]]] = []
        for d, chain in level:
            if d.media_type in INDEX_TYPES:
                children = _index_children(fetch, d, sel, chain)
                following += [(c, (*chain, d.digest)) for c in children]
        level = following
    return None


def normalize_name(name: str) -> str:
    """Docker's short form of a name: ``docker.io/library/x:latest`` -> ``x:latest``."""
    base, at, digest = name.partition("@")
    last = base.rsplit("/", 1)[-1]
    if ":" not in last and not at:
        base += ":latest"
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if base.startswith(prefix):
            base = base[len(prefix):]
            break
    if base.startswith("library/") and base.count("/") == 1:
        base = base[len("library/"):]
    return base + at + digest
