"""Container images to a root filesystem: OCI image layouts, ``docker save`` archives
and containers/image's ``dir:`` layout.

:func:`unpack_image` reads an image from a directory or a tar file, without a daemon
and without extracting the image tar to disk: a tar is indexed once (with the
package's bounded tar reader) and its members are read as byte ranges. It selects one
image manifest by reference and platform, checks every document and blob it reads
against its digest and size, and applies the layers in order, each in its own confined
worker (see :mod:`chrootarchive.operations.untar`), checking each layer's DiffID (the config's
``rootfs.diff_ids``) against the sha256 of the uncompressed stream.

Everything in the image is untrusted:

- A digest is checked against ``algorithm:encoded`` (sha256: 64, sha512: 128 lower-case
  hex digits) before it is used to name a file, so ``..`` or ``/`` in a digest is an
  error before anything is opened. Paths named by a ``docker save`` manifest are
  resolved inside the image (symlinks and hardlinks of the image tar included, as
  ``docker save`` writes them for repeated layers); one that leaves it is an error.
  In a directory, symlinks are resolved by us, never by the kernel, and only regular
  files are read.
- JSON documents (indexes, manifests, configs, ``manifest.json``) are at most 4 MiB;
  a larger declared size is an error before anything is read. Layer blobs are
  streamed: a declared size is compared with the blob's real size before the first
  layer is applied, and memory never depends on it.
- Indexes may nest up to :data:`MAX_INDEX_DEPTH` levels; a descriptor that leads back
  to an index on the current path is a cycle, reported as such.
- A manifest may have at most ``max_layers`` layers (1,000 by default), checked before
  anything is unpacked.

Where the checks happen: everything that can be checked without reading layer data
(documents, digests of documents, media types, presence and sizes of every layer blob,
the number of layers, DiffIDs' form) is checked before the destination is touched. A
layer blob's digest and its DiffID are known only at the end of its stream, so a layer
whose digest does not match has been written into the destination when the error is
raised (the error says so). With ``options.atomic`` the whole image is unpacked beside
the destination and renamed into place only when every layer was verified, so a
mismatch leaves nothing behind.

A ``docker save`` archive from Docker 25 or later is also an OCI layout; it is read
through its ``manifest.json`` (tags as ``RepoTags``), whose layer and config names are
``blobs/sha256/...`` and so are checked against their digests too. Without
``manifest.json``, the same archive is read as the OCI layout it holds.

containers/image's ``dir:`` layout (``podman save --format docker-dir`` or ``oci-dir``,
``skopeo copy dir:``) is one image manifest (or, with ``skopeo copy --all``, an index)
as ``manifest.json`` and its blobs beside it, named by their digests (an index's
manifests as ``DIGEST.manifest.json``): its ``manifest.json`` is the root of trust (its
digest is that of the bytes read), and everything it names is checked as in an OCI
layout.

Other formats are refused with a message that names them and lists those read: a
``dir:`` layout of a Docker schema 1 manifest, and the ``docker save`` of Docker before
1.10 (``repositories``, no ``manifest.json``).

Docker's ``docker save`` has no digest for its ``manifest.json`` (nor an OCI layout for
its ``index.json``): the chain of trust starts there. Pass a digest as ``ref`` to pin
an OCI image by its manifest digest, or a ``docker save`` image by its image ID (its
config digest).

The package's modules, bottom up: :mod:`.mediatypes`, :mod:`.digests`, :mod:`.platforms`
and :mod:`.results` (no dependencies inside the package); :mod:`.layout` (reading the
image's files); :mod:`.documents` (its JSON documents and descriptors); :mod:`.selection`
(choosing a manifest); :mod:`.plan` (everything checked before the destination is
touched); :mod:`.apply` (applying the layers, :func:`unpack_image`). None imports one
above it.
"""

from __future__ import annotations

from chrootarchive.image.apply import unpack_image
from chrootarchive.image.digests import check_digest
from chrootarchive.image.documents import MAX_JSON_SIZE
from chrootarchive.image.layout import MAX_TAR_MEMBERS
from chrootarchive.image.platforms import default_platform, parse_platform
from chrootarchive.image.results import ImageResult, LayerProgress, LayerResult, ProgressCallback
from chrootarchive.image.selection import MAX_DOCUMENTS, MAX_INDEX_DEPTH
from chrootarchive.options import DEFAULT_MAX_LAYERS

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "MAX_DOCUMENTS",
    "MAX_INDEX_DEPTH",
    "MAX_JSON_SIZE",
    "MAX_TAR_MEMBERS",
    "ImageResult",
    "LayerProgress",
    "LayerResult",
    "ProgressCallback",
    "check_digest",
    "default_platform",
    "parse_platform",
    "unpack_image",
]
