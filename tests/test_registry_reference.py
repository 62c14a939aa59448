"""Image references read as ``docker pull`` reads them (the distribution grammar)."""

from __future__ import annotations

import pytest

from chrootarchive.registry.reference import Reference, parse_reference

D64 = "sha256:" + "0123456789abcdef" * 4
D128 = "sha512:" + "0123456789abcdef" * 8

GOOD = [
    # text, registry, repository, tag, digest, canonical
    ("debian", "docker.io", "library/debian", "latest", None,
     "docker.io/library/debian:latest"),
    ("debian:12", "docker.io", "library/debian", "12", None, "docker.io/library/debian:12"),
    ("team/app", "docker.io", "team/app", "latest", None, "docker.io/team/app:latest"),
    ("docker.io/debian", "docker.io", "library/debian", "latest", None,
     "docker.io/library/debian:latest"),
    ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12", None,
     "docker.io/library/debian:12"),
    ("registry.example.org/team/app:1.4", "registry.example.org", "team/app", "1.4", None,
     "registry.example.org/team/app:1.4"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("localhost:5000/a/b/c:v_1.0-rc", "localhost:5000", "a/b/c", "v_1.0-rc", None,
     "localhost:5000/a/b/c:v_1.0-rc"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest"),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000/x:y"),
    ("My-Registry.example:443/app", "My-Registry.example:443", "app", "latest", None,
     "My-Registry.example:443/app:latest"),
    (f"debian@{D64}", "docker.io", "library/debian", None, D64,
     f"docker.io/library/debian@{D64}"),
    (f"debian:12@{D64}", "docker.io", "library/debian", "12", D64,
     f"docker.io/library/debian:12@{D64}"),
    (f"quay.io/a/b@{D128}", "quay.io", "a/b", None, D128, f"quay.io/a/b@{D128}"),
    ("x/a.b_c__d-e--f/g", "docker.io", "x/a.b_c__d-e--f/g", "latest", None,
     "docker.io/x/a.b_c__d-e--f/g:latest"),
    ("x:" + "T" * 128, "docker.io", "library/x", "T" * 128, None,
     "docker.io/library/x:" + "T" * 128),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest", "canonical"),
                         GOOD, ids=[g[0][:40] for g in GOOD])
def test_good_references(text: str, registry: str, repository: str, tag: str | None,
                         digest: str | None, canonical: str) -> None:
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)
    assert str(ref) == canonical
    # The canonical form reads back as itself.
    assert parse_reference(str(ref)) == ref


BAD = [
    ("", "empty"),
    ("Debian", "lowercase"),
    ("team/App", "lowercase"),
    ("Foo/bar", "lowercase"),  # not a domain: no '.', ':' or localhost
    ("debian:", "tag"),
    ("debian:-x", "tag"),
    ("debian:" + "t" * 129, "tag"),
    ("debian@sha256:abc", "digest"),
    ("debian@sha256:" + "A" * 64, "lowercase hex"),
    ("debian@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("debian@sha512:" + "a" * 64, "128"),
    ("a//b", "repository name"),
    ("a/b/", "repository name"),
    ("/a", "repository name"),
    ("a..b", "repository name"),
    ("a_-b", "repository name"),
    ("-a", "repository name"),
    ("a/-b", "repository name"),
    ("ex ample/a", "spaces"),
    ("debian\n", "spaces"),
    ("debian\x1b[31m", "control"),
    ("host:port/a", "HOST[:PORT]"),
    ("-host.example/a", "HOST[:PORT]"),
    ("a.b_c/x", "HOST[:PORT]"),  # a '.' makes the first component a domain
    ("a" * 64, "image ID"),
    ("x/" + "a" * 254, "longer than 255"),
]


@pytest.mark.parametrize(("text", "why"), BAD, ids=[repr(b[0])[:40] for b in BAD])
def test_bad_references(text: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert why in message


def test_an_image_id_is_not_a_name() -> None:
    with pytest.raises(ValueError, match="image ID"):
        parse_reference("0123456789abcdef" * 4)


def test_name_length_bound() -> None:
    ok = "x/" + "a" * 253  # 255 characters
    assert parse_reference(ok).repository == ok
    with pytest.raises(ValueError, match="longer than 255"):
        parse_reference("x/" + "a" * 254)


def test_host_without_path_is_a_name_with_a_tag() -> None:
    # As Docker: "localhost:5000" is the image "library/localhost" with tag "5000".
    assert parse_reference("localhost:5000") == Reference(
        "docker.io", "library/localhost", "5000", None)


def test_endpoint_of_docker_hub() -> None:
    assert parse_reference("debian").endpoint == "registry-1.docker.io"
    assert parse_reference("localhost:5000/x").endpoint == "localhost:5000"
    assert parse_reference(f"debian:12@{D64}").object == D64
    assert parse_reference("debian:12").object == "12"
