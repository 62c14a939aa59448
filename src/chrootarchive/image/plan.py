"""The plan: everything that can be checked without reading layer data, checked before
the destination is touched (documents, digests, media types, every layer blob's
presence and size, the number of layers, the DiffIDs' form)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from chrootarchive._record import record as dataclass
from chrootarchive.errors import DigestMismatchError, ImageError
from chrootarchive.image.digests import blob_name, check_digest, clip, digest_ref
from chrootarchive.image.documents import (
    MAX_JSON_SIZE,
    Descriptor,
    Fetch,
    as_object,
    check_media_type,
    fetch_json,
    layout_fetch,
    list_field,
    parse_descriptor,
    parse_json,
    read_all,
    read_root_document,
    read_root_json,
    string_field,
    verify_blob,
)
from chrootarchive.image.layout import Layout
from chrootarchive.image.mediatypes import (
    CONFIG_TYPES,
    CONTAINERD_NAME,
    DOCKER_CONFIG,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from chrootarchive.image.platforms import normalize_platform, platform_rank
from chrootarchive.image.selection import (
    Selection,
    find_digest,
    listed_names,
    normalize_name,
    pick,
    refuse_several_named_images,
    resolve_manifest,
)

TYPE_CHECKING = False  # no typing, no dataclasses at run time: the start (issue 16)
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True)
class LayerPlan:
    index: int
    name: str  # the file in the layout
    digest: str | None
    size: int | None
    media_type: str
    compression: str  # none, gzip, zstd, or auto (docker save: detect)
    diff_id: str
    blob_size: int


class Plan:
    """The image chosen, and its layers, checked; ``warnings`` grows as it is made."""

    __slots__ = ("config_digest", "format", "layers", "manifest_digest", "platform", "ref",
                 "warnings")

    def __init__(self, format: str, manifest_digest: str | None, config_digest: str,
                 ref: str | None, platform: str, layers: list[LayerPlan],
                 warnings: list[str]) -> None:
        self.format = format
        self.manifest_digest = manifest_digest
        self.config_digest = config_digest
        self.ref = ref
        self.platform = platform
        self.layers = layers
        self.warnings = warnings


def _config_info(config: Any, where: str, layer_count: int,
                 sel: Selection) -> tuple[list[str], str]:
    """The config's DiffIDs (checked against the layer count) and its platform, which
    must suit the one asked for (an index's platform fields are only hints: the config
    is what the image is)."""
    doc = as_object(config, "the image config", where)
    rootfs = as_object(doc.get("rootfs"), "rootfs", where)
    if rootfs.get("type") != "layers":
        raise ImageError(f"rootfs.type must be 'layers', not {clip(rootfs.get('type'))}",
                         where)
    diff_ids = list_field(rootfs, "diff_ids", where)
    if len(diff_ids) != layer_count:
        raise ImageError(f"the manifest has {layer_count} layers but the config lists "
                         f"{len(diff_ids)} diff_ids", where)
    checked = [check_digest(d, f"{where}: rootfs.diff_ids[{i}]")
               for i, d in enumerate(diff_ids)]
    os_name = doc.get("os")
    arch = doc.get("architecture")
    variant = doc.get("variant") or ""
    if not (isinstance(os_name, str) and isinstance(arch, str) and isinstance(variant, str)):
        return checked, "unknown"
    image_platform = normalize_platform(os_name, arch, variant)
    if platform_rank(image_platform, sel.want) is None:
        message = f"the image is for {image_platform}, not {sel.want}"
        if sel.explicit:
            raise ImageError(message, where)
        sel.warnings.append(message + " (the running machine's platform)")
    return checked, str(image_platform)


def _check_count(count: int, max_layers: int, where: str) -> None:
    if count > max_layers:
        raise ImageError(f"too many layers: {count:,} (limit {max_layers:,})", where)


def _blob_size(layout: Layout, name: str, what: str) -> int:
    reader = layout.open(name, what)
    try:
        return reader.size
    finally:
        reader.close()


def _plan_oci(layout: Layout, ref: str | None, sel: Selection, max_layers: int) -> Plan:
    marker = as_object(read_root_json(layout, "oci-layout", "oci-layout"), "oci-layout",
                       "oci-layout")
    version = marker.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(f"unsupported image layout version {clip(version)}", "oci-layout")
    index = as_object(read_root_json(layout, "index.json", "index.json"), "index.json",
                      "index.json")
    top = [parse_descriptor(d, "index.json") for d in list_field(index, "manifests", "index.json")]
    chosen_ref: str | None = None
    if ref is not None:
        digest = digest_ref(ref)
        if digest is not None:
            found = find_digest(layout_fetch(layout), top, digest, sel)
            if found is None:
                raise ImageError(f"no manifest or index with digest {digest} in the layout",
                                 "index.json")
            candidates = [found]
        else:
            short = normalize_name(ref)
            candidates = [d for d in top if ref in d.names()
                          or normalize_name(d.annotations.get(CONTAINERD_NAME, "")) == short]
            if not candidates:
                names = sorted({n for d in top for n in d.names()})
                raise ImageError(f"no image named {clip(ref)} in the layout (names: "
                                 f"{listed_names(names)})", "index.json")
        chosen_ref = ref
        desc = pick(candidates, sel, "index.json", top=True)
    else:
        refuse_several_named_images(top, "index.json")
        desc = pick(top, sel, "index.json", top=True)
        names = desc.names()
        chosen_ref = names[0] if names else None
    desc = resolve_manifest(layout_fetch(layout), desc, sel, ())
    return plan_manifest(layout_fetch(layout), desc, chosen_ref, sel, max_layers,
                         _blob_check(layout, blob_name), "oci")


#: Checks a layer's blob before anything is applied and returns its name (for the
#: opener) and size: ``check_blob(index, descriptor)``.
BlobCheck = Callable[[int, Descriptor], tuple[str, int]]


def _blob_check(layout: Layout, name_of: Callable[[str], str]) -> BlobCheck:
    """A :data:`BlobCheck` for the blobs of ``layout`` (a digest's file: ``name_of``)."""

    def check_blob(index: int, d: Descriptor) -> tuple[str, int]:
        name = name_of(d.digest)
        what = f"blob of layer {index} ({d.digest})"
        if not layout.exists(name):
            hint = " (a non-distributable layer: its urls are not fetched)" if d.urls else ""
            raise ImageError(f"{what} is missing from the {layout.description}{hint}", name)
        actual = _blob_size(layout, name, what)
        if actual != d.size:
            raise DigestMismatchError(f"size mismatch: declared {d.size} bytes, the blob has "
                                      f"{actual}", f"layer {index} ({d.digest})")
        return name, actual

    return check_blob


def _dir_blob(digest: str) -> str:
    """A blob's file in containers/image's ``dir:`` layout: its sha256 in hex, or
    ``ALG-HEX`` for another algorithm (``digest`` must have been checked)."""
    alg, _, encoded = digest.partition(":")
    return encoded if alg == "sha256" else f"{alg}-{encoded}"


def _plan_dir(layout: Layout, data: bytes, doc: Any, ref: str | None, sel: Selection,
              max_layers: int) -> Plan:
    """containers/image's ``dir:`` layout (skopeo copy dir:, podman save --format
    docker-dir or oci-dir): ``manifest.json`` is one image manifest or index (``skopeo
    copy --all``), the root of trust as ``index.json`` is in an OCI layout (its digest is
    that of the bytes read here); the blobs beside it are named by their digests, an
    index's manifests ``DIGEST.manifest.json``. ``data``: its bytes as read once,
    ``doc`` parsed."""
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise _single_manifest(layout, doc)
    media = doc.get("mediaType") or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    if not isinstance(media, str) or media not in MANIFEST_TYPES | INDEX_TYPES:
        raise _single_manifest(layout, doc)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if ref is not None and digest_ref(ref) != digest:
        raise ImageError(f"no image {clip(ref)}: a 'dir' layout has no names (the digest "
                         f"of its manifest.json: {digest}); leave out --ref",
                         "manifest.json")
    blobs = layout_fetch(layout, _dir_blob)
    documents = layout_fetch(layout, lambda d: _dir_blob(d) + ".manifest.json")

    def fetch(desc: Descriptor, what: str) -> bytes:
        if desc.digest == digest:
            return data
        listed = desc.media_type in MANIFEST_TYPES | INDEX_TYPES
        return (documents if listed else blobs)(desc, what)

    desc = resolve_manifest(fetch, Descriptor(media, digest, len(data), {}, None), sel, ())
    return plan_manifest(fetch, desc, ref, sel, max_layers, _blob_check(layout, _dir_blob),
                         "dir")


def plan_manifest(fetch: Fetch, desc: Descriptor, ref: str | None, sel: Selection,
                  max_layers: int, check_blob: BlobCheck, fmt: str) -> Plan:
    """The plan of the image manifest ``desc`` (chosen, its digest known), its documents
    read by ``fetch``: from a layout or a registry, the same checks."""
    manifest = as_object(fetch_json(fetch, desc, "image manifest"), "an image manifest",
                         desc.digest)
    check_media_type(manifest, desc, "image manifest")
    where = f"image manifest {desc.digest}"
    if manifest.get("schemaVersion") != 2:
        raise ImageError(f"unsupported schemaVersion {clip(manifest.get('schemaVersion'))}",
                         where)
    raw_layers = list_field(manifest, "layers", where)
    _check_count(len(raw_layers), max_layers, where)
    config_desc = parse_descriptor(manifest.get("config"), f"{where}: config")
    if config_desc.media_type not in CONFIG_TYPES:
        raise ImageError(f"not a container image: config media type "
                         f"{clip(config_desc.media_type)}", where)
    layer_descs = [parse_descriptor(d, f"{where}: layers[{i}]") for i, d in enumerate(raw_layers)]
    for i, d in enumerate(layer_descs):
        if d.media_type not in LAYER_TYPES:
            raise ImageError(f"layer {i} ({d.digest}): unsupported media type "
                             f"{clip(d.media_type)}", where)
    config = fetch_json(fetch, config_desc, "image config")
    diff_ids, image_platform = _config_info(config, f"image config {config_desc.digest}",
                                            len(layer_descs), sel)
    layers = []
    for i, d in enumerate(layer_descs):
        name, actual = check_blob(i, d)
        layers.append(LayerPlan(i, name, d.digest, d.size, d.media_type,
                                LAYER_TYPES[d.media_type], diff_ids[i], actual))
    return Plan(fmt, desc.digest, config_desc.digest, ref, image_platform, layers,
                sel.warnings)


_DOCKER_CONFIG_NAME = re.compile(r"(?:.*/)?([a-f0-9]{64})(?:\.json)?")
_BLOB_PATH = re.compile(r"(?:\./)?blobs/(sha256|sha512)/([a-f0-9]+)")


def _plan_docker(layout: Layout, doc: list[Any], ref: str | None, sel: Selection,
                 max_layers: int) -> Plan:
    if not doc:
        raise ImageError("manifest.json must be a non-empty list", "manifest.json")
    entries = [as_object(e, "an entry of manifest.json", "manifest.json") for e in doc]
    configs: list[tuple[dict[str, Any], str, str | None]] = []
    for i, e in enumerate(entries):
        where = f"manifest.json[{i}]"
        config_name = string_field(e, "Config", where)
        match = _DOCKER_CONFIG_NAME.fullmatch(config_name)
        blob = _BLOB_PATH.fullmatch(config_name)
        if blob is not None:
            config_digest: str | None = check_digest(f"{blob.group(1)}:{blob.group(2)}", where)
        elif match is not None:
            config_digest = f"sha256:{match.group(1)}"
        else:
            config_digest = None
        configs.append((e, config_name, config_digest))
    chosen_ref: str | None = None
    if ref is not None:
        digest = digest_ref(ref)
        short = normalize_name(ref)
        picked: list[tuple[dict[str, Any], str, str | None]] = []
        for e, name, config_digest in configs:
            tags = e.get("RepoTags") or []
            if not isinstance(tags, list):
                raise ImageError("RepoTags must be a list", "manifest.json")
            if digest is not None:
                if digest == config_digest:
                    picked.append((e, name, config_digest))
            elif ref in tags or short in (normalize_name(str(t)) for t in tags):
                picked.append((e, name, config_digest))
        if not picked:
            tags = sorted({str(t) for e, _, _ in configs for t in (e.get("RepoTags") or [])})
            raise ImageError(f"no image tagged {clip(ref)} in the archive (tags: "
                             f"{listed_names(tags)})", "manifest.json")
        entry, config_name, config_digest = picked[0]
        chosen_ref = ref
    else:
        if len(configs) > 1:
            tags = sorted({str(t) for e, _, _ in configs for t in (e.get("RepoTags") or [])})
            raise ImageError(f"the archive holds {len(configs)} images; choose one by tag "
                             f"(ref=NAME; tags: {listed_names(tags)})", "manifest.json")
        entry, config_name, config_digest = configs[0]
        tags = entry.get("RepoTags") or []
        chosen_ref = str(tags[0]) if isinstance(tags, list) and tags else None
    where = "manifest.json"
    layer_names = list_field(entry, "Layers", where)
    _check_count(len(layer_names), max_layers, where)
    if not all(isinstance(n, str) for n in layer_names):
        raise ImageError("Layers must list file names", where)
    # The config: its name is its digest in both layouts.
    reader = layout.open(config_name, "image config")
    try:
        if reader.size > MAX_JSON_SIZE:
            raise ImageError(f"image config is too large ({reader.size} bytes)", config_name)
        data = read_all(reader, MAX_JSON_SIZE)
    finally:
        reader.close()
    if config_digest is None:
        config_digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sel.warnings.append(f"the config {config_name!r} is not named by its digest: "
                            "not verified")
    else:
        verify_blob(data, Descriptor(DOCKER_CONFIG, config_digest, len(data), {}, None),
                    "image config")
    config = parse_json(data, "image config", config_name)
    diff_ids, image_platform = _config_info(config, f"image config {config_digest}",
                                            len(layer_names), sel)
    layers = []
    for i, name in enumerate(layer_names):
        what = f"layer {i} ({name})"
        blob = _BLOB_PATH.fullmatch(name)
        digest = check_digest(f"{blob.group(1)}:{blob.group(2)}", what) if blob else None
        if not layout.exists(name):
            raise ImageError(f"{what} is missing from the {layout.description}", name)
        size = _blob_size(layout, name, what)
        layers.append(LayerPlan(i, name, digest, size if digest else None, "", "auto",
                                diff_ids[i], size))
    return Plan("docker-save", None, config_digest, chosen_ref, image_platform, layers,
                sel.warnings)


#: What unpack_image reads: said whenever an image is in another format.
SUPPORTED_FORMATS = (
    "supported formats: an OCI image layout (oci-layout, index.json, blobs/), as a "
    "directory or a tar (podman save --format oci-archive, skopeo copy oci: or "
    "oci-archive:, docker save of Docker 25 and later), a docker save archive "
    "(manifest.json listing the images, a directory or a tar: docker save, podman save "
    "--format docker-archive), and containers/image's 'dir' layout (manifest.json holding "
    "one image manifest or index: skopeo copy dir:, podman save --format docker-dir or "
    "oci-dir)"
)


def _not_supported(what: str, where: str) -> ImageError:
    return ImageError(f"{what} is not supported; {SUPPORTED_FORMATS}", where)


def _single_manifest(layout: Layout, doc: Any) -> ImageError:
    """manifest.json is neither docker save's list nor an image manifest or index of a
    ``dir:`` layout (``_plan_dir``)."""
    if isinstance(doc, dict) and "schemaVersion" in doc:
        media = doc.get("mediaType")
        kind = ("a Docker schema 1 image manifest" if doc.get("schemaVersion") == 1
                else f"a document of media type {clip(media)}")
        dir_transport = " of a containers/image 'dir' layout" if layout.exists("version") else ""
        return _not_supported(f"{kind} as the manifest.json{dir_transport}", "manifest.json")
    return _not_supported("a manifest.json that is not docker save's list of images",
                          "manifest.json")


def make_plan(layout: Layout, ref: str | None, sel: Selection, max_layers: int) -> Plan:
    if layout.exists("manifest.json"):
        data = read_root_document(layout, "manifest.json", "manifest.json")
        doc = parse_json(data, "manifest.json", "manifest.json")
        if isinstance(doc, list):
            return _plan_docker(layout, doc, ref, sel, max_layers)
        if not layout.exists("index.json"):
            return _plan_dir(layout, data, doc, ref, sel, max_layers)
    if layout.exists("index.json"):
        return _plan_oci(layout, ref, sel, max_layers)
    if layout.exists("repositories"):
        raise _not_supported("a docker save archive of Docker before 1.10 ('repositories' "
                             "and per-layer directories, no manifest.json)", "repositories")
    raise ImageError("not an image: no index.json (OCI image layout) and no manifest.json "
                     f"(docker save); {SUPPORTED_FORMATS}", layout.where)
