"""Credentials and challenges: the files Docker and podman write, and ``WWW-Authenticate``.

Credentials are found the way podman (containers/image) finds them: ``--authfile`` or
``REGISTRY_AUTH_FILE`` alone when given; else the first of
``${XDG_RUNTIME_DIR}/containers/auth.json``, ``~/.config/containers/auth.json`` and
``~/.docker/config.json`` that has an entry for the registry. Credential helpers
(``credHelpers``, ``credsStore``) and identity tokens are not run or used: such an
entry is ignored, as if absent.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from chrootarchive.errors import RegistryError

__all__ = ["Credentials", "auth_files", "find_credentials", "parse_challenges"]

#: An auth file bigger than this is not one (it is read whole).
AUTH_FILE_MAX = 1 << 20
#: The names Docker Hub's entries go by in auth files.
_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Credentials:
    """A user name and password; the password never shows in ``repr``."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The ``Authorization`` header's value for basic authentication."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def auth_files(authfile: str | None = None,
               environ: Mapping[str, str] | None = None) -> tuple[list[str], bool]:
    """The files to look in, in order, and whether they were named explicitly (then the
    file must exist)."""
    env = os.environ if environ is None else environ
    explicit = authfile or env.get("REGISTRY_AUTH_FILE")
    if explicit:
        return [explicit], True
    files = []
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        files.append(os.path.join(runtime, "containers", "auth.json"))
    home = env.get("HOME") or os.path.expanduser("~")
    files.append(os.path.join(home, ".config", "containers", "auth.json"))
    files.append(os.path.join(home, ".docker", "config.json"))
    return files, False


def _key_matches(key: str, registry: str, repository: str) -> int:
    """How well an ``auths`` key names ``registry/repository``: 0 not at all, more is
    more specific (``host/namespace`` keys, as podman allows, beat ``host``)."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
            break
    host, _, path = key.partition("/")
    path = path.strip("/")
    if path in ("v1", "v2"):
        path = ""
    if not (host == registry or (registry == "docker.io" and host in _DOCKER_HUB)):
        return 0
    if not path:
        return 1
    if repository == path or repository.startswith(path + "/"):
        return 1 + len(path)
    return 0


def _entry_credentials(value: object) -> Credentials | None:
    if not isinstance(value, dict):
        return None
    auth = value.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        name, sep, secret = decoded.partition(":")
        return Credentials(name, secret) if sep and name else None
    user, password = value.get("username"), value.get("password")
    if isinstance(user, str) and user and isinstance(password, str):
        return Credentials(user, password)
    return None  # identitytoken only, or empty: ignored


def _read_auths(path: str, entry: str | None) -> dict[str, object] | None:
    try:
        with open(path, "rb") as file:
            data = file.read(AUTH_FILE_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RegistryError(f"cannot read {path}: {err.strerror}", entry) from err
    if len(data) > AUTH_FILE_MAX:
        raise RegistryError(f"{path} is not an auth file: over {AUTH_FILE_MAX} bytes", entry)
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        # Not the parser's message: it may quote the file, which holds secrets.
        raise RegistryError(f"{path} is not valid JSON", entry) from err
    if not isinstance(document, dict):
        raise RegistryError(f"{path} is not a JSON object", entry)
    auths = document.get("auths", {})
    return auths if isinstance(auths, dict) else {}


def check_auth_file(authfile: str | None = None, environ: Mapping[str, str] | None = None,
                    entry: str | None = None) -> None:
    """An auth file named explicitly must exist and be one, checked before the first
    request (as podman does): a mistyped ``--authfile`` went unnoticed until a
    registry asked for credentials, and a pull from one that never asks succeeded."""
    files, explicit = auth_files(authfile, environ)
    if explicit and _read_auths(files[0], entry) is None:
        raise RegistryError(f"auth file {files[0]} does not exist", entry)


def find_credentials(registry: str, repository: str = "", *, authfile: str | None = None,
                     environ: Mapping[str, str] | None = None,
                     entry: str | None = None) -> Credentials | None:
    """The credentials for ``registry`` (as written in the reference: ``docker.io``,
    ``HOST[:PORT]``), or None for anonymous access."""
    files, explicit = auth_files(authfile, environ)
    for path in files:
        auths = _read_auths(path, entry)
        if auths is None:
            if explicit:
                raise RegistryError(f"auth file {path} does not exist", entry)
            continue
        best: tuple[int, Credentials] | None = None
        for key, value in auths.items():
            score = _key_matches(str(key), registry, repository)
            if score and (best is None or score > best[0]):
                found = _entry_credentials(value)
                if found is not None:
                    best = (score, found)
        if best is not None:
            return best[1]
    return None


def _token68_or_params(text: str, pos: int) -> tuple[dict[str, str], int]:
    """Parse ``name=value`` pairs (value a token or a quoted-string) from ``pos``, up to
    the next scheme; return them and where parsing stopped."""
    params: dict[str, str] = {}
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in " \t,":
            pos += 1
        start = pos
        while pos < n and text[pos] not in "= \t,":
            pos += 1
        name = text[start:pos]
        look = pos
        while look < n and text[look] in " \t":
            look += 1
        if not name or look >= n or text[look] != "=":
            # Not a parameter: the next challenge's scheme starts here.
            return params, start
        pos = look + 1
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] == '"':
            pos += 1
            value = []
            while pos < n and text[pos] != '"':
                if text[pos] == "\\" and pos + 1 < n:
                    pos += 1
                value.append(text[pos])
                pos += 1
            pos += 1  # the closing quote (or the end)
            params[name.lower()] = "".join(value)
        else:
            start = pos
            while pos < n and text[pos] not in " \t,":
                pos += 1
            params[name.lower()] = text[start:pos]
    return params, pos


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """``WWW-Authenticate`` (RFC 9110 section 11.6.1): ``[(scheme, {param: value})]``,
    scheme in lower case; quoted strings may hold commas, spaces and escapes."""
    challenges: list[tuple[str, dict[str, str]]] = []
    pos, n = 0, len(header)
    while pos < n:
        while pos < n and header[pos] in " \t,":
            pos += 1
        start = pos
        while pos < n and header[pos] not in " \t,":
            pos += 1
        scheme = header[start:pos]
        if not scheme:
            break
        params, pos = _token68_or_params(header, pos)
        challenges.append((scheme.lower(), params))
    return challenges
