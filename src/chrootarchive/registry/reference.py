"""Image references: ``[DOMAIN/]PATH[:TAG][@DIGEST]``, as Docker and the distribution
reference grammar read them (docker/distribution ``reference/regexp.go`` and
``normalize.go``), so that a name means here what it means to ``docker pull``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_REGISTRY", "Reference", "parse_reference"]

#: The registry of a name without a domain.
DEFAULT_REGISTRY = "docker.io"
#: Where Docker Hub's registry API is actually served.
DEFAULT_ENDPOINT = "registry-1.docker.io"
#: A tag when neither a tag nor a digest is given.
DEFAULT_TAG = "latest"
#: The longest name (domain and path) the grammar allows.
NAME_MAX = 255

# The grammar of regexp.go, piece by piece.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HEX64 = re.compile(r"[a-f0-9]{64}")
#: The digest algorithms this client can verify, and their hex lengths.
_DIGEST_HEX = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class Reference:
    """A parsed, normalized image reference.

    Attributes:
        registry: the registry's name as written (``docker.io`` for Docker Hub), with
            its port if one was given.
        repository: the path in that registry (``library/debian``).
        tag: the tag, or None when only a digest was given.
        digest: ``ALGORITHM:HEX``, or None.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def endpoint(self) -> str:
        """The ``HOST[:PORT]`` to connect to (Docker Hub serves its API elsewhere)."""
        return DEFAULT_ENDPOINT if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def name(self) -> str:
        """``REGISTRY/REPOSITORY``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _bad(text: str, why: str) -> ValueError:
    # Short and one line: the text may be long or hold control characters.
    shown = text if len(text) <= 300 else text[:300] + "\u2026"
    return ValueError(f"invalid reference {shown!r}: {why}")


def parse_reference(text: str) -> Reference:
    """Parse ``text`` as ``docker pull`` does; ValueError (one line) when it is not one."""
    if not text:
        raise _bad(text, "empty")
    if text != text.strip() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise _bad(text, "spaces or control characters")
    rest, at, digest = text.partition("@")
    digest_value: str | None = None
    if at:
        if not _DIGEST.fullmatch(digest):
            raise _bad(text, "the digest is not ALGORITHM:HEX")
        algorithm, _, hexpart = digest.partition(":")
        want = _DIGEST_HEX.get(algorithm)
        if want is None:
            raise _bad(text, f"unsupported digest algorithm {algorithm!r} (sha256, sha512)")
        if len(hexpart) != want or hexpart != hexpart.lower():
            raise _bad(text, f"a {algorithm} digest is {want} lowercase hex digits")
        digest_value = digest
    # The tag is after the last ':' that follows the last '/' (a port is before one).
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    name = rest
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise _bad(text, "the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
    if not name:
        raise _bad(text, "no repository name")
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
        if not _DOMAIN.fullmatch(registry):
            raise _bad(text, "the registry is not HOST[:PORT]")
        if registry == "index.docker.io":
            registry = DEFAULT_REGISTRY
    else:
        registry, path = DEFAULT_REGISTRY, name
    if not path:
        raise _bad(text, "no repository name")
    if path != path.lower() and _PATH.fullmatch(path.lower()):
        raise _bad(text, "the repository name must be lowercase")
    if not _PATH.fullmatch(path):
        raise _bad(text, "the repository name is not lowercase components "
                         "[a-z0-9] joined by '.', '_', '__' or '-', separated by '/'")
    if registry == DEFAULT_REGISTRY and "/" not in path:
        if _HEX64.fullmatch(path):
            raise _bad(text, "a 64-digit hex string is an image ID, not a repository name")
        path = f"library/{path}"
    if len(name) > NAME_MAX:
        raise _bad(text, f"the name is longer than {NAME_MAX} characters")
    if tag is None and digest_value is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest_value)
