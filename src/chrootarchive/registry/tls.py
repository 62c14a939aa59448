"""TLS for one registry host: the system's authorities plus the host's own directory.

Docker and podman read ``/etc/docker/certs.d/HOST[:PORT]/`` and
``/etc/containers/certs.d/HOST[:PORT]/``: ``*.crt`` files are extra certificate
authorities, ``NAME.cert`` with ``NAME.key`` a client certificate. The same files work
here, so a private registry that works with ``docker pull`` works with ``pull``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence

from chrootarchive.errors import RegistryError

__all__ = ["DEFAULT_CERTS_DIRS", "certs_directories", "ssl_context"]

#: Where the per-host directories are, first to last (all that exist are read).
DEFAULT_CERTS_DIRS: tuple[str, ...] = ("/etc/containers/certs.d", "/etc/docker/certs.d")


def certs_directories(host: str, certs_dirs: Sequence[str] | None = None) -> list[str]:
    """The existing per-host directories for ``host`` (``HOST[:PORT]``), in order."""
    bases = DEFAULT_CERTS_DIRS if certs_dirs is None else certs_dirs
    found = []
    for base in bases:
        # A host name never holds '/': no path can be built out of the base from it.
        if not host or "/" in host or host in (".", ".."):
            continue
        path = os.path.join(base, host)
        if os.path.isdir(path):
            found.append(path)
    return found


def ssl_context(host: str, *, certs_dirs: Sequence[str] | None = None,
                insecure: bool = False, entry: str | None = None) -> ssl.SSLContext:
    """The context to connect to ``host`` (``HOST[:PORT]``) with.

    ``insecure`` accepts any certificate (``--insecure``, for that registry only). A
    certificate file that cannot be loaded is a :class:`RegistryError` naming the file.
    """
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for directory in certs_directories(host, certs_dirs):
        try:
            names = sorted(os.listdir(directory))
        except OSError as err:
            raise RegistryError(f"cannot list {directory}: {err.strerror}", entry) from err
        for name in names:
            path = os.path.join(directory, name)
            try:
                if name.endswith(".crt"):
                    context.load_verify_locations(cafile=path)
                elif name.endswith(".cert"):
                    key = path[: -len(".cert")] + ".key"
                    if not os.path.exists(key):
                        raise RegistryError(f"client certificate {path} has no {key}", entry)
                    context.load_cert_chain(certfile=path, keyfile=key)
                elif name.endswith(".key") and not os.path.exists(path[: -len(".key")] + ".cert"):
                    raise RegistryError(f"client key {path} has no certificate (.cert)", entry)
            except (OSError, ssl.SSLError) as err:
                # The reason only, never the file's content.
                reason = getattr(err, "strerror", None) or getattr(err, "reason", None) or "bad"
                raise RegistryError(f"cannot load {path}: {reason}", entry) from err
    return context
