""":func:`pull`: an image reference to a root filesystem, in one confined, streaming,
verified step (the network here, in the parent; the layers applied by the jailed
worker of :mod:`chrootarchive.image.remote`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

from chrootarchive.image.remote import unpack_remote
from chrootarchive.image.results import ImageResult, ProgressCallback
from chrootarchive.operations.untar import with_changes
from chrootarchive.options import DEFAULT_MAX_LAYERS, Limits, UnpackOptions
from chrootarchive.registry.auth import check_auth_file
from chrootarchive.registry.client import Client
from chrootarchive.registry.reference import parse_reference

__all__ = ["REQUEST_TIMEOUT", "pull"]

REQUEST_TIMEOUT = 30.0
"""Seconds a request may wait to connect, or for its next bytes (a stalled registry)."""


def pull(
    ref: str,
    dest: str | os.PathLike[str],
    options: UnpackOptions | None = None,
    *,
    platform: str | None = None,
    filter: str | None = None,  # tarfile's name (PEP 706)
    excludes: Iterable[str] | None = None,
    atomic: bool | None = None,
    confine: str | None = None,
    limits: Limits | None = None,
    progress: ProgressCallback | None = None,
    on_entry: Callable[[str], None] | None = None,
    max_layers: int = DEFAULT_MAX_LAYERS,
    insecure: bool = False,
    authfile: str | None = None,
    certs_dirs: Sequence[str] | None = None,
) -> ImageResult:
    """Pull an image from a registry and unpack its root filesystem into ``dest``,
    every layer streamed from the network into a confined worker.

    Args:
        ref: the image reference, as Docker reads it: ``debian:12`` (Docker Hub,
            ``library/``), ``registry.example.org/team/app:1.4``, ``name@sha256:...``
            (pinned by manifest or index digest), ``name:tag@sha256:...`` (the digest
            wins).
        dest: the root filesystem directory; created (0755) if missing. Layers are
            applied onto what it holds.
        platform: ``OS/ARCH[/VARIANT]`` to choose in an image index; default: the
            running machine's. When given, an image whose config names another
            platform is an error; by default, a warning.
        options, filter, excludes, atomic, confine, limits: as for
            :func:`chrootarchive.unpack_image`; the limits hold for the whole image.
        progress: called with a :class:`LayerProgress` as each layer starts, as its
            blob is downloaded, and when it is applied.
        on_entry: called with each entry's name once it is unpacked.
        max_layers: the most layers a manifest may have (checked before unpacking).
        insecure: allow plain HTTP, or HTTPS with an unverified certificate, for this
            reference's registry.
        authfile: the credentials file to read (Docker's ``config.json`` format)
            instead of ``REGISTRY_AUTH_FILE``, ``${XDG_RUNTIME_DIR}/containers/auth.json``
            and ``~/.docker/config.json``.
        certs_dirs: base directories holding one ``HOST[:PORT]/`` directory of CA
            certificates (``*.crt``) and client certificates (``*.cert``/``*.key``) per
            registry, instead of ``/etc/containers/certs.d`` and ``/etc/docker/certs.d``.

    Returns:
        What was applied: manifest and config digests, the layers, sizes, warnings
        (``format`` is ``registry``, ``ref`` the full reference).

    Raises:
        ValueError: a malformed reference or ``platform``.
        RegistryError: the registry cannot be reached, refuses (authentication, not
            found), stalls, redirects in a loop, or sends a document over its bound.
        ImageError: a malformed image; a :class:`DigestMismatchError` when a document,
            a blob or a layer's DiffID does not match. Documents are all checked before
            ``dest`` is touched; a layer is checked as it streams, so it has been
            (partly) applied when its mismatch is raised: ``atomic`` leaves nothing.
        ArchiveError, DestinationError, ConfinementError: as for
            :func:`chrootarchive.unpack_image`.
    """
    reference = parse_reference(ref)
    options = with_changes(options, filter=filter, excludes=excludes, atomic=atomic,
                           confine=confine, limits=limits)
    # Each request waits at most REQUEST_TIMEOUT for a byte, and never past the limit.
    timeout = REQUEST_TIMEOUT
    if options.limits.timeout is not None:
        timeout = max(min(timeout, options.limits.timeout), 0.001)
    check_auth_file(authfile, entry=str(reference))
    client = Client(reference, insecure=insecure, authfile=authfile, certs_dirs=certs_dirs,
                    timeout=timeout, time_limit=options.limits.timeout)
    try:
        return unpack_remote(
            client, reference.object, str(reference), dest, options, platform=platform,
            progress=progress, on_entry=on_entry, max_layers=max_layers)
    finally:
        client.close()
