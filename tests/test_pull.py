"""``chrootarchive pull`` against a real registry: Debian's ``docker-registry`` (the CNCF
distribution server, 2.8) started here on 127.0.0.1 with TLS (a CA made by the test)
and htpasswd authentication; images pushed to it by ``skopeo`` from layouts built by
``umoci``. The pulled root filesystem must equal ``umoci unpack`` of the same layout.

Fault tests: the registry killed mid-blob and restarted on the same port and storage
(the pull resumes with a range request), and a small stub registry that serves a
layer whose bytes do not match its digest (``--atomic`` leaves nothing at DEST).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive.errors import RegistryError
from helpers.cli import CLIResult, assert_one_line_error, run_cli
from helpers.fake_registry import CA, FakeServer, Handler, make_ca
from helpers.oci_images import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Entry,
    OCIBuilder,
    UmociImage,
    build_umoci_image,
    canonical,
    make_tar,
    platform_of,
    sha256,
)
from helpers.unpriv import NOBODY, cli_as, make_package_copy, world_dir
from test_image import assert_same_rootfs

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.kernel]

USER, PASSWORD = "puller", "s3cret-pass"

for _tool in ("docker-registry", "skopeo", "htpasswd", "umoci", "openssl"):
    if shutil.which(_tool) is None:
        pytestmark.append(pytest.mark.skip(reason=f"{_tool} is not installed "
                                           "(scripts/install-test-deps)"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Registry:
    """A running ``docker-registry serve``: its address, CA, and the files to reach it."""

    root: Path
    ca: CA
    port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def certs_d(self) -> Path:
        """A certs.d base: ``127.0.0.1:PORT/ca.crt``."""
        return self.root / "certs.d"

    @property
    def skopeo_certs(self) -> Path:
        """skopeo's --dest-cert-dir: the CA file directly in it."""
        return self.certs_d / self.netloc

    @property
    def authfile(self) -> Path:
        return self.root / "auth.json"

    def start(self) -> None:
        log = (self.root / "registry.log").open("ab")
        self.process = subprocess.Popen(["docker-registry", "serve", str(self.config)],
                                        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        context = ssl.create_default_context(cafile=str(self.ca.ca_crt))
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"https://{self.netloc}/v2/", context=context,
                                       timeout=2)
            except urllib.error.HTTPError as err:
                if err.code == 401:  # up, and asking for credentials
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("docker-registry did not start: "
                                     + (self.root / "registry.log").read_text()[-2000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def push(self, source: str, name: str, *, all_images: bool = False,
             fmt: str | None = None) -> str:
        """``skopeo copy SOURCE docker://REGISTRY/NAME``; returns the pushed reference.
        ``fmt``: skopeo's ``--format`` (``v2s2``: Docker's media types)."""
        dest = f"{self.netloc}/{name}"
        subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "--quiet",
             *(["--all"] if all_images else []), *(["--format", fmt] if fmt else []),
             "--dest-cert-dir", str(self.skopeo_certs),
             "--dest-creds", f"{USER}:{PASSWORD}", source, f"docker://{dest}"],
            check=True, capture_output=True, timeout=120)
        return dest


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("registry")
    ca = make_ca(root / "ca")
    port = _free_port()
    htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                              capture_output=True).stdout
    (root / "htpasswd").write_bytes(htpasswd)
    config = root / "config.yml"
    config.write_text(f"""\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root / "storage"}
http:
  addr: 127.0.0.1:{port}
  tls:
    certificate: {ca.cert}
    key: {ca.key}
auth:
  htpasswd:
    realm: chrootarchive-test
    path: {root / "htpasswd"}
""")
    reg = Registry(root, ca, port, config)
    reg.skopeo_certs.mkdir(parents=True)
    shutil.copy(ca.ca_crt, reg.skopeo_certs / "ca.crt")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    reg.authfile.write_text(json.dumps({"auths": {reg.netloc: {"auth": token}}}))
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def _pull(reg: Registry, ref: str, dest: Path, *args: str) -> CLIResult:
    return run_cli("pull", "--authfile", reg.authfile, "--cert-dir", reg.certs_d,
                   *args, ref, dest, timeout=120)


# -- images ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def umoci_image(tmp_path_factory: pytest.TempPathFactory) -> UmociImage:
    """Four layers built by umoci: deletions, a replaced directory, opaque whiteouts."""
    return build_umoci_image(tmp_path_factory.mktemp("umoci"))


@pytest.fixture(scope="module")
def pushed_umoci(registry: Registry, umoci_image: UmociImage) -> str:
    return registry.push(f"oci:{umoci_image.layout}:{umoci_image.ref}", "team/whiteouts:4")


@pytest.fixture(scope="module")
def multi_platform(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An index with a linux/amd64 and a linux/arm64/v8 image, each one file saying
    which it is, pushed with ``skopeo copy --all``."""
    root = tmp_path_factory.mktemp("multi")
    oci = OCIBuilder(root / "layout")
    manifests = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        tar = make_tar([Entry("etc/", "dir", mode=0o755),
                        Entry("etc/arch", data=f"{arch}\n".encode())])
        desc = oci.image([tar], "gzip", arch=arch, variant=variant)
        desc["platform"] = platform_of("linux", arch, variant)
        manifests.append(desc)
    oci.tag(oci.index(manifests), "multi")
    return registry.push(f"oci:{root / 'layout'}:multi", "multi/arch:1", all_images=True)


# -- the tests -------------------------------------------------------------------------


def test_pull_equals_umoci_unpack(registry: Registry, pushed_umoci: str,
                                  umoci_image: UmociImage, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    result = _pull(registry, pushed_umoci, dest, "--json")
    assert result.rc == 0, result.err
    assert_same_rootfs(umoci_image.rootfs, dest)
    doc = json.loads(result.out)
    assert doc["format"] == "registry"
    assert doc["ref"] == pushed_umoci
    assert len(doc["layers"]) == umoci_image.layer_count
    assert PASSWORD not in result.out and PASSWORD not in result.err


def test_pull_of_docker_media_types(registry: Registry, umoci_image: UmociImage,
                                    tmp_path: Path) -> None:
    """The same image pushed as Docker's v2 schema 2 (skopeo --format v2s2): Docker's
    manifest, config and layer media types."""
    ref = registry.push(f"oci:{umoci_image.layout}:{umoci_image.ref}", "team/docker:4",
                        fmt="v2s2")
    result = _pull(registry, ref, tmp_path / "rootfs", "--json")
    assert result.rc == 0, result.err
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")
    doc = json.loads(result.out)
    assert {layer["media_type"] for layer in doc["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"}


def test_pull_by_digest_with_the_api(registry: Registry, pushed_umoci: str,
                                     umoci_image: UmociImage, tmp_path: Path) -> None:
    first = chrootarchive.pull(pushed_umoci, tmp_path / "a", authfile=str(registry.authfile),
                               certs_dirs=[str(registry.certs_d)])
    assert first.manifest_digest is not None
    pinned = pushed_umoci.rsplit(":", 1)[0] + "@" + first.manifest_digest
    second = chrootarchive.pull(pinned, tmp_path / "b", authfile=str(registry.authfile),
                                certs_dirs=[str(registry.certs_d)], atomic=True)
    assert second.manifest_digest == first.manifest_digest
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "b")


def test_pull_chooses_the_platform_of_an_index(registry: Registry, multi_platform: str,
                                               tmp_path: Path) -> None:
    arm = _pull(registry, multi_platform, tmp_path / "arm", "--platform", "linux/arm64", "-q")
    assert arm.rc == 0, arm.err
    assert (tmp_path / "arm/etc/arch").read_text() == "arm64\n"
    amd = _pull(registry, multi_platform, tmp_path / "amd", "--platform", "linux/amd64", "-q")
    assert amd.rc == 0, amd.err
    assert (tmp_path / "amd/etc/arch").read_text() == "amd64\n"
    none = _pull(registry, multi_platform, tmp_path / "none", "--platform", "linux/s390x")
    line = assert_one_line_error(none, rc=1, mentions=("s390x", "linux/arm64"))
    assert "linux/amd64" in line
    assert not (tmp_path / "none").exists()


def test_without_credentials_the_registry_refuses(registry: Registry, pushed_umoci: str,
                                                  tmp_path: Path) -> None:
    empty = tmp_path / "empty-auth.json"
    empty.write_text('{"auths": {}}')
    result = run_cli("pull", "--authfile", empty, "--cert-dir", registry.certs_d,
                     pushed_umoci, tmp_path / "dest", env={"HOME": str(tmp_path)})
    assert_one_line_error(result, rc=1, mentions=(registry.netloc,))
    assert not (tmp_path / "dest").exists()


def test_credentials_from_docker_config_in_home(registry: Registry, pushed_umoci: str,
                                                tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    shutil.copy(registry.authfile, home / ".docker/config.json")
    env = {"HOME": str(home), "REGISTRY_AUTH_FILE": "", "XDG_RUNTIME_DIR": str(tmp_path)}
    result = run_cli("pull", "--cert-dir", registry.certs_d, "-q", pushed_umoci,
                     tmp_path / "dest", env=env, timeout=120)
    assert result.rc == 0, result.err
    assert (tmp_path / "dest/opq/new").exists()


def test_tls_is_verified_without_the_ca(registry: Registry, pushed_umoci: str,
                                        tmp_path: Path) -> None:
    result = run_cli("pull", "--authfile", registry.authfile, "--cert-dir", tmp_path,
                     pushed_umoci, tmp_path / "dest")
    assert_one_line_error(result, rc=1, mentions=(registry.netloc,))
    assert not (tmp_path / "dest").exists()
    # --insecure for this registry only: the unverified certificate is accepted.
    ok = run_cli("pull", "--authfile", registry.authfile, "--cert-dir", tmp_path,
                 "--insecure", registry.netloc, "-q", pushed_umoci, tmp_path / "ok",
                 timeout=120)
    assert ok.rc == 0, ok.err


def test_a_bad_reference_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("pull", "Not/A:Good:Ref", tmp_path / "dest")
    assert_one_line_error(result, rc=2)
    assert not (tmp_path / "dest").exists()


# -- faults ----------------------------------------------------------------------------


def test_registry_killed_mid_blob_and_restarted_resumes(
        registry: Registry, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The registry dies after the first MiB of a 24 MiB layer and comes back on the
    same port and storage: the pull resumes with a range request and the layer is
    whole (its digest and DiffID checked)."""
    root = tmp_path_factory.mktemp("big")
    oci = OCIBuilder(root / "layout")
    payload = os.urandom(24 << 20)
    tar = make_tar([Entry("big.bin", data=payload)])
    oci.tag(oci.image([tar], "none"), "big")
    ref = registry.push(f"oci:{root / 'layout'}:big", "faults/big:1")
    killed: list[int] = []

    def progress(p: chrootarchive.LayerProgress) -> None:
        if not killed and not p.finished and p.done >= 1 << 20:
            killed.append(p.done)
            registry.stop()
            registry.start()

    try:
        result = chrootarchive.pull(ref, tmp_path / "dest", authfile=str(registry.authfile),
                                    certs_dirs=[str(registry.certs_d)], progress=progress)
    finally:
        if registry.process is None:
            registry.start()
    # skopeo compressed the layer on its way (gzip): the blob is about 24 MiB still.
    blob_size = result.layers[0].blob_size
    assert killed and killed[0] < blob_size - (8 << 20), "not stopped mid-blob"
    got = hashlib.sha256((tmp_path / "dest/big.bin").read_bytes()).hexdigest()
    assert got == hashlib.sha256(payload).hexdigest()


def _stub_registry(layer_served: bytes, layer_declared: bytes) -> tuple[FakeServer, str]:
    """A registry stub serving one image whose layer blob is ``layer_served`` while its
    manifest declares the digest of ``layer_declared`` (same size)."""
    tar = make_tar([Entry("etc/", "dir", mode=0o755), Entry("etc/f", data=b"f\n")])
    config = canonical({"architecture": "amd64", "os": "linux", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}})
    layer_digest = sha256(layer_declared)
    manifest = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer_declared)}]})
    blobs = {sha256(config): config, layer_digest: layer_served}

    def app(h: Handler) -> None:
        path = h.path
        if path == "/v2/":
            h.reply(200, b"{}", {"Content-Type": "application/json"})
        elif path.startswith("/v2/stub/img/manifests/"):
            h.reply(200, manifest, {"Content-Type": OCI_MANIFEST,
                                    "Docker-Content-Digest": sha256(manifest)})
        elif path.startswith("/v2/stub/img/blobs/"):
            digest = path.rsplit("/", 1)[1]
            if digest in blobs:
                h.reply(200, blobs[digest], {"Content-Type": "application/octet-stream"})
            else:
                h.reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        else:
            h.reply(404)

    return FakeServer(app), sha256(manifest)


@pytest.mark.parametrize("how", ["--authfile", "REGISTRY_AUTH_FILE"])
def test_a_missing_auth_file_is_an_error_before_any_request(tmp_path: Path, how: str) -> None:
    """A mistyped ``--authfile`` (or ``$REGISTRY_AUTH_FILE``) against a registry that
    never asks for credentials: the pull succeeded, anonymous; podman refuses it up
    front, and so do we: before the first request, DEST untouched."""
    tar = make_tar([Entry("etc/", "dir", mode=0o755), Entry("etc/f", data=b"f\n")])
    good = gzip.compress(tar, mtime=0)
    server, _ = _stub_registry(layer_served=good, layer_declared=good)
    missing = tmp_path / "auth.jsno"
    given = ["--authfile", str(missing)] if how == "--authfile" else []
    env = {"REGISTRY_AUTH_FILE": str(missing)} if how == "REGISTRY_AUTH_FILE" else None
    with server.running():
        result = run_cli("pull", "--insecure", server.netloc, *given,
                         f"{server.netloc}/stub/img:1", tmp_path / "dest", env=env)
        assert_one_line_error(result, rc=1, mentions=(f"auth file {missing} does not exist",))
        assert server.seen == []
        assert not (tmp_path / "dest").exists()
        with pytest.raises(RegistryError, match="does not exist"):
            chrootarchive.pull(f"{server.netloc}/stub/img:1", tmp_path / "dest",
                               insecure=True, authfile=str(missing))
        assert server.seen == []


def test_a_wrong_layer_digest_with_atomic_leaves_nothing(tmp_path: Path) -> None:
    tar = make_tar([Entry("etc/", "dir", mode=0o755), Entry("etc/f", data=b"f\n")])
    good = gzip.compress(tar, mtime=0)
    bad = gzip.compress(tar, compresslevel=1, mtime=1)  # same content, other bytes
    bad = bad[: len(good)].ljust(len(good), b"\0")
    assert bad != good
    server, _ = _stub_registry(layer_served=bad, layer_declared=good)
    with server.running():
        dest = tmp_path / "dest"
        result = run_cli("pull", "--insecure", server.netloc, "--atomic",
                         f"{server.netloc}/stub/img:1", dest)
        line = assert_one_line_error(result, rc=1, mentions=("layer 0",))
        assert "mismatch" in line
        assert not dest.exists()
        assert os.listdir(tmp_path) == []  # no staging directory left beside it
        # Without --atomic the same pull says the layer was (partly) applied.
        plain = run_cli("pull", "--insecure", server.netloc, f"{server.netloc}/stub/img:1",
                        tmp_path / "plain")
        assert_one_line_error(plain, rc=1, mentions=("mismatch",))


def test_the_stub_image_pulls_when_its_digest_matches(tmp_path: Path) -> None:
    """The stub of the previous test is a good registry when the bytes match: what
    fails there is the digest alone."""
    tar = make_tar([Entry("etc/", "dir", mode=0o755), Entry("etc/f", data=b"f\n")])
    good = gzip.compress(tar, mtime=0)
    server, manifest_digest = _stub_registry(layer_served=good, layer_declared=good)
    with server.running():
        result = chrootarchive.pull(f"{server.netloc}/stub/img:1", tmp_path / "dest",
                                    insecure=True, atomic=True)
    assert result.manifest_digest == manifest_digest
    assert (tmp_path / "dest/etc/f").read_bytes() == b"f\n"


_GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _documents(tars: list[bytes], blobs: list[bytes], media_types: list[str]
               ) -> tuple[bytes, bytes]:
    """The config and the manifest of an image of ``blobs`` (the layers ``tars``,
    each stored as its media type says)."""
    config = canonical({"architecture": "amd64", "os": "linux", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]}})
    manifest = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": kind, "digest": sha256(blob), "size": len(blob)}
                   for blob, kind in zip(blobs, media_types, strict=True)]})
    return config, manifest


def test_registry_error_is_an_image_error() -> None:
    assert issubclass(RegistryError, chrootarchive.ImageError)
    assert RegistryError("x").exit_status == 1


def test_the_next_layer_downloads_while_one_is_applied(tmp_path: Path) -> None:
    """When layer 0 is applied, the request for layer 1's blob has already been made
    (the read-ahead): waited for in layer 0's last progress call, which comes before
    the job is handed layer 1."""
    tars = [make_tar([Entry(f"l{i}/", "dir", mode=0o755), Entry(f"l{i}/f", data=b"x" * 1000)])
            for i in range(2)]
    layers = [gzip.compress(t, mtime=0) for t in tars]
    config, manifest = _documents(tars, layers, [_GZIP_LAYER] * 2)
    blobs = {sha256(config): config, **{sha256(b): b for b in layers}}

    def app(h: Handler) -> None:
        if h.path.startswith("/v2/two/layers/manifests/"):
            h.reply(200, manifest, {"Content-Type": OCI_MANIFEST})
        elif h.path.startswith("/v2/two/layers/blobs/"):
            h.reply(200, blobs[h.path.rsplit("/", 1)[1]])
        else:
            h.reply(200, b"{}")

    server = FakeServer(app)
    second = f"/v2/two/layers/blobs/{sha256(layers[1])}"
    seen_early: list[bool] = []

    def progress(p: chrootarchive.LayerProgress) -> None:
        if p.index == 0 and p.finished:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(
                    s.path == second for s in server.seen):
                time.sleep(0.01)
            seen_early.append(any(s.path == second for s in server.seen))

    with server.running():
        chrootarchive.pull(f"{server.netloc}/two/layers:1", tmp_path / "dest", insecure=True,
                           progress=progress)
    assert seen_early == [True]
    assert (tmp_path / "dest/l1/f").exists()


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("chrootarchive-prefetch")]


def test_a_failed_pull_leaves_no_read_ahead_waiting_on_the_registry(tmp_path: Path) -> None:
    """Layer 0 is not a tar while layer 1's blob is read ahead from a registry that
    stops sending: the read-ahead thread waited on its socket for the read timeout
    (30 s) after ``pull`` had raised, in the caller's process; it is cut short now."""
    tars = [b"not a tar archive\n" * 64, make_tar([Entry("b", data=os.urandom(300_000))])]
    layers = [gzip.compress(t, mtime=0) for t in tars]
    config, manifest = _documents(tars, layers, [_GZIP_LAYER] * 2)
    layer_1_sent = threading.Event()
    stop = threading.Event()

    def app(h: Handler) -> None:
        if "/manifests/" in h.path:
            h.reply(200, manifest, {"Content-Type": OCI_MANIFEST})
        elif h.path.endswith(sha256(config)):
            h.reply(200, config)
        elif h.path.endswith(sha256(layers[0])):
            layer_1_sent.wait(10)  # fails once layer 1 is being read ahead
            time.sleep(0.2)
            h.reply(200, layers[0])
        else:
            h.send_response(200)
            h.send_header("Content-Length", str(len(layers[1])))
            h.end_headers()
            h.wfile.write(layers[1][:1000])
            h.wfile.flush()
            layer_1_sent.set()
            stop.wait(60)  # then nothing more

    assert not _prefetch_threads()
    with FakeServer(app).running() as server:
        try:
            with pytest.raises(chrootarchive.ArchiveError):
                chrootarchive.pull(f"{server.netloc}/two/layers:1", tmp_path / "dest",
                                   insecure=True)
            assert layer_1_sent.is_set()
            deadline = time.monotonic() + 3
            while _prefetch_threads() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _prefetch_threads()
        finally:
            stop.set()


def test_an_index_with_too_many_platforms_is_refused(tmp_path: Path) -> None:
    from chrootarchive.image.selection import MAX_INDEX_ENTRIES

    entry = {"mediaType": OCI_MANIFEST, "digest": sha256(b"x"), "size": 1,
             "platform": {"os": "linux", "architecture": "riscv64"}}
    index = canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [entry] * (MAX_INDEX_ENTRIES + 1)})

    def app(h: Handler) -> None:
        if "/manifests/" in h.path:
            h.reply(200, index, {"Content-Type": "application/vnd.oci.image.index.v1+json"})
        else:
            h.reply(200, b"{}")

    with FakeServer(app).running() as server:
        result = run_cli("pull", "--insecure", server.netloc, f"{server.netloc}/many/p:1",
                         tmp_path / "dest")
    assert_one_line_error(result, rc=1, mentions=("manifests", f"{MAX_INDEX_ENTRIES:,}"))
    assert not (tmp_path / "dest").exists()


def _pull_timed(server: FakeServer, name: str, timeout: str, dest: Path,
                release: threading.Event) -> tuple[CLIResult, float]:
    """``pull --timeout TIMEOUT`` of ``name`` from ``server``: its result and how long
    it took; ``release`` is set once it ended (the server's handler waits on it)."""
    started = time.monotonic()
    try:
        result = run_cli("pull", "--insecure", server.netloc, "--timeout", timeout,
                         f"{server.netloc}/{name}", dest)
    finally:
        release.set()
    return result, time.monotonic() - started


def test_timeout_bounds_a_stalled_registry(tmp_path: Path) -> None:
    """--timeout is also the longest wait for a registry's next bytes."""
    release = threading.Event()

    def app(h: Handler) -> None:
        if "/manifests/" in h.path:
            release.wait(30)  # never answers while the pull waits
        h.reply(200, b"{}")

    with FakeServer(app).running() as server:
        result, elapsed = _pull_timed(server, "stalled/img:1", "1", tmp_path / "dest", release)
    assert_one_line_error(result, rc=1, mentions=(server.netloc,))
    assert elapsed < 15, elapsed


def test_pull_help_teaches_with_examples(tmp_path: Path) -> None:
    result = run_cli("pull", "--help")
    assert result.rc == 0
    for text in ("chrootarchive pull --platform linux/arm64 --atomic debian:12 ./rootfs",
                 "--authfile", "--cert-dir", "--insecure", "exit status"):
        assert text in result.out


def test_an_unprivileged_user_pulls(tmp_path: Path) -> None:
    """As nobody (a user namespace jail): the network side needs no privilege, and the
    layers are applied as by ``unpack-image``."""
    import urllib3

    tar = make_tar([Entry("etc/", "dir", mode=0o755), Entry("etc/f", data=b"f\n")])
    good = gzip.compress(tar, mtime=0)
    server, _ = _stub_registry(layer_served=good, layer_declared=good)
    with world_dir("pull") as base, server.running():
        pythonpath = make_package_copy(base)
        # The system Python runs the command line: urllib3 beside the package.
        shutil.copytree(Path(urllib3.__file__).parent, pythonpath / "urllib3",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, _dirs, files in os.walk(pythonpath / "urllib3"):
            os.chmod(dirpath, 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o644)
        (base / "out").mkdir()
        os.chown(base / "out", NOBODY, NOBODY)
        result = cli_as(pythonpath, "pull", "--insecure", server.netloc, "--atomic",
                        f"{server.netloc}/stub/img:1", base / "out" / "rootfs")
        assert result.rc == 0, result.err
        assert (base / "out/rootfs/etc/f").read_bytes() == b"f\n"


@pytest.mark.parametrize("headers", [
    {"Location": "http://[::1/x"}, {"WWW-Authenticate": 'Bearer realm="http://[::1/token"'}])
def test_a_header_no_parser_expects_is_a_registry_error(tmp_path: Path,
                                                        headers: dict[str, str]) -> None:
    """Not "this is a bug" (exit status 70): the registry chose the header's text."""
    status = 302 if "Location" in headers else 401

    def app(h: Handler) -> None:
        h.reply(status, b"", headers)

    with FakeServer(app).running() as server:
        result = run_cli("pull", "--insecure", server.netloc, f"{server.netloc}/odd/h:1",
                         tmp_path / "dest")
    assert_one_line_error(result, rc=1, mentions=(server.netloc,))
    assert not (tmp_path / "dest").exists()


def _endless_registry(head: bytes, filler: bytes, media_type: str) -> tuple[FakeServer,
                                                                            list[int]]:
    """A registry whose one layer declares 2**50 bytes: ``head``, then ``filler`` over
    and over until the client hangs up, or 1 GiB (the bytes it sent go to the list)."""
    tar = make_tar([Entry("f", data=b"f\n")])
    config = canonical({"architecture": "amd64", "os": "linux", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}})
    layer_digest = "sha256:" + "ab" * 32
    manifest = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": 1 << 50}]})
    sent: list[int] = []

    def app(h: Handler) -> None:
        if "/manifests/" in h.path:
            h.reply(200, manifest, {"Content-Type": OCI_MANIFEST})
        elif h.path.endswith(sha256(config)):
            h.reply(200, config)
        elif h.path.endswith(layer_digest):
            h.send_response(200)
            h.send_header("Content-Length", str(1 << 50))
            h.end_headers()
            count = 0
            try:
                h.wfile.write(head)
                block = filler * ((1 << 20) // len(filler))
                while count < 1 << 30:  # then hang up: an unbounded client fails too
                    h.wfile.write(block)
                    count += len(block)
            except OSError:
                pass
            sent.append(count)
        else:
            h.reply(200, b"{}")

    return FakeServer(app), sent


@pytest.mark.parametrize("case", ["zeros after the archive", "empty gzip members",
                                  "an error, then more"])
def test_a_layer_declared_endless_is_not_read_for_days(tmp_path: Path, case: str) -> None:
    """A blob of 2**50 bytes: past the archive's end (uncompressed), in gzip members that
    hold nothing, or after the error that stops the job, at most some MiB are read."""
    gz = "application/vnd.oci.image.layer.v1.tar+gzip"
    if case == "zeros after the archive":
        args = (make_tar([Entry("f", data=b"f\n")]), bytes(4096),
                "application/vnd.oci.image.layer.v1.tar")
        expected = "follow the end of the archive"
    elif case == "empty gzip members":
        args = (gzip.compress(make_tar([Entry("f", data=b"f\n")]), mtime=0),
                gzip.compress(b"", mtime=0), gz)
        expected = "not a layer's compressed tar"
    else:
        args = (make_tar([Entry("../../evil", data=b"x")]), bytes(4096),
                "application/vnd.oci.image.layer.v1.tar")
        expected = "would leave the destination"
    server, sent = _endless_registry(*args)
    with server.running():
        started = time.monotonic()
        result = run_cli("pull", "--insecure", server.netloc, "--atomic",
                         f"{server.netloc}/endless/img:1", tmp_path / "dest")
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.05)
    assert_one_line_error(result, rc=1, mentions=(expected,))
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path.parent / "evil").exists()
    assert sent and sent[0] < 256 << 20, sent
    assert elapsed < 60, elapsed


def test_a_layer_in_1_byte_chunks_is_read_ahead_in_linear_time(tmp_path: Path) -> None:
    """The next layer's blob, read ahead while one is applied, in a chunked body of
    1-byte chunks: each read gives a byte. Kept as a list popped from its front, 1 MiB
    took minutes (the quadratic moves) and 40 bytes of memory each; one buffer now."""
    tars = [make_tar([Entry("a", data=b"a" * 1000)]),
            make_tar([Entry("b", data=os.urandom(1 << 20))])]
    blobs = [gzip.compress(tars[0], mtime=0), tars[1]]
    config, manifest = _documents(tars, blobs, [_GZIP_LAYER, _GZIP_LAYER.removesuffix("+gzip")])
    by_digest = {sha256(config): config, sha256(blobs[0]): blobs[0]}

    def app(h: Handler) -> None:
        if "/manifests/" in h.path:
            h.reply(200, manifest, {"Content-Type": OCI_MANIFEST})
        elif h.path.endswith(sha256(blobs[1])):
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            out = bytearray()
            for i in range(len(blobs[1])):
                out += b"1\r\n" + blobs[1][i:i + 1] + b"\r\n"
                if len(out) >= 1 << 16:
                    h.wfile.write(out)
                    out.clear()
            h.wfile.write(out + b"0\r\n\r\n")
        else:
            h.reply(200, by_digest[h.path.rsplit("/", 1)[1]])

    with FakeServer(app).running() as server:
        started = time.monotonic()
        result = run_cli("pull", "--insecure", server.netloc, f"{server.netloc}/bytes/img:1",
                         tmp_path / "dest", timeout=120)
        elapsed = time.monotonic() - started
    assert result.rc == 0, result.err
    assert (tmp_path / "dest/b").read_bytes() == tars[1][512:512 + (1 << 20)]
    assert elapsed < 60, elapsed


def test_timeout_bounds_a_trickled_layer_blob(tmp_path: Path) -> None:
    """A layer's blob a byte every 0.3 s (each read in time): --timeout 2 ended a
    request, a retry, a manifest, but not the blob's body, read for hours (100 KB);
    and the registry's error, once there was one, was reported as a short blob."""
    stop = __import__("threading").Event()
    tar = make_tar([Entry("a", data=b"a" * 100_000)])
    config = canonical({"architecture": "amd64", "os": "linux", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}})
    manifest = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(tar), "size": len(tar)}]})

    def app(h: Handler) -> None:
        if "/manifests/" in h.path:
            h.reply(200, manifest, {"Content-Type": OCI_MANIFEST})
        elif h.path.endswith(sha256(config)):
            h.reply(200, config)
        else:
            h.send_response(200)
            h.send_header("Content-Length", str(len(tar)))
            h.end_headers()
            try:
                for i in range(len(tar)):
                    if stop.wait(0.3):
                        break
                    h.wfile.write(tar[i:i + 1])
                    h.wfile.flush()
            except OSError:
                pass

    with FakeServer(app).running() as server:
        started = time.monotonic()
        try:
            result = run_cli("pull", "--insecure", server.netloc, "--timeout", "2",
                             f"{server.netloc}/slow/img:1", tmp_path / "dest", timeout=60)
        finally:
            stop.set()
        elapsed = time.monotonic() - started
    assert_one_line_error(result, rc=1, mentions=("limit --timeout (2 seconds) exceeded",
                                                  "blob, after"))
    assert elapsed < 10, elapsed


@pytest.mark.parametrize("registry_is", ["busy", "trickling"])
def test_timeout_bounds_a_busy_or_trickling_registry(tmp_path: Path, registry_is: str) -> None:
    """--timeout is the whole pull's: four retries 10 s apart took 40 s of a --timeout
    of 2, and a manifest trickled a byte at a time ten times the timeout."""
    stop = threading.Event()

    def app(h: Handler) -> None:
        if registry_is == "busy":
            h.reply(429, b"", {"Retry-After": "10"})
            return
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        try:
            while not stop.wait(0.2):
                h.wfile.write(b" ")
                h.wfile.flush()
        except OSError:
            pass

    with FakeServer(app).running() as server:
        result, elapsed = _pull_timed(server, "slow/img:1", "2", tmp_path / "dest", stop)
    assert_one_line_error(result, rc=1, mentions=("limit --timeout (2 seconds) exceeded",))
    assert elapsed < 10, elapsed
    assert not (tmp_path / "dest").exists()
