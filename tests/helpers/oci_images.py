"""Container images for the tests: real ones made by umoci, and hand-made ones.

- :func:`build_umoci_image` makes an OCI image layout with several layers using
  Debian's ``umoci`` (``init``, ``new``, ``unpack``, changes to the root filesystem,
  ``repack``; a last layer added with ``umoci raw add-layer`` carries opaque markers,
  which ``repack`` never writes), and unpacks it with ``umoci unpack`` for reference.
- :class:`OCIBuilder` writes OCI layouts blob by blob, so that a test can make any
  image, well-formed or hostile (wrong digests, sizes, media types, nesting...).
- :func:`skopeo` converts them between containers/image's transports (``oci:``,
  ``oci-archive:``, ``docker-archive:``, ``dir:``) and layer compressions.
- :func:`write_docker_save` writes ``docker save`` archives in both layouts: classic
  (``<id>/layer.tar``, ``<id>.json``, ``manifest.json``) and the one Docker 25+ writes
  (an OCI layout whose ``manifest.json`` names ``blobs/sha256/...``).

Tools that are missing make the tests fail (CI has them), never skip.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "none":
        return data
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(kind)


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


# -- tar layers --------------------------------------------------------------------


@dataclass
class Entry:
    """One tar member of a hand-made layer."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, fifo
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 1_600_000_000


def make_tar(entries: list[Entry], *, pad_to: int | None = None) -> bytes:
    """A PAX tar of ``entries`` (``pad_to``: append zero blocks up to that size)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            if e.kind == "file":
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[e.kind]
            info.linkname = e.target
            tf.addfile(info)
    data = buf.getvalue()
    if pad_to is not None:
        assert len(data) <= pad_to and pad_to % 512 == 0, (len(data), pad_to)
        data += bytes(pad_to - len(data))
    return data


# -- OCI layouts, blob by blob ------------------------------------------------------


@dataclass
class OCIBuilder:
    """Writes an OCI image layout under ``root``; every method returns a descriptor."""

    root: Path
    index_manifests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_bytes(OCI_LAYOUT)

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def layer(self, tar_bytes: bytes, compression: str = "gzip",
              media_type: str | None = None) -> dict[str, Any]:
        return self.blob(compress(tar_bytes, compression),
                         media_type or LAYER_TYPES[compression])

    def config(self, diff_ids: list[str], *, os_name: str = "linux",
               arch: str = "amd64", variant: str | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "architecture": arch, "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
        if variant:
            doc["variant"] = variant
        doc.update(extra or {})
        return self.blob(canonical(doc), OCI_CONFIG)

    def manifest(self, config: dict[str, Any], layers: list[dict[str, Any]],
                 **extra: Any) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
               "layers": layers}
        return self.blob(canonical(doc), OCI_MANIFEST, **extra)

    def image(self, tars: list[bytes], compressions: list[str] | str = "gzip",
              **config_kw: Any) -> dict[str, Any]:
        """Layers, config and manifest for these uncompressed layer tars."""
        if isinstance(compressions, str):
            compressions = [compressions] * len(tars)
        layers = [self.layer(t, c) for t, c in zip(tars, compressions, strict=True)]
        config = self.config([sha256(t) for t in tars], **config_kw)
        return self.manifest(config, layers)

    def index(self, manifests: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(canonical(doc), OCI_INDEX, **extra)

    def tag(self, desc: dict[str, Any], name: str | None) -> dict[str, Any]:
        """Add ``desc`` to ``index.json`` (named ``name``) and write it."""
        entry = dict(desc)
        if name is not None:
            entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: name}
        self.index_manifests.append(entry)
        self.write_index()
        return entry

    def write_index(self, raw: bytes | None = None) -> None:
        doc = {"schemaVersion": 2, "manifests": self.index_manifests}
        (self.root / "index.json").write_bytes(raw if raw is not None else canonical(doc))

    def path(self, desc: dict[str, Any] | str) -> Path:
        digest = desc if isinstance(desc, str) else desc["digest"]
        alg, _, hexpart = digest.partition(":")
        return self.root / "blobs" / alg / hexpart


def platform_of(os_name: str, arch: str, variant: str | None = None) -> dict[str, str]:
    p = {"os": os_name, "architecture": arch}
    if variant:
        p["variant"] = variant
    return p


# -- reading an image (trusted: our own fixtures) -----------------------------------


@dataclass
class ImageParts:
    """An image's config and uncompressed layers, read back from a layout."""

    config: bytes
    tars: list[bytes]
    manifest_digest: str


def read_image(layout: Path, ref: str) -> ImageParts:
    index = json.loads((layout / "index.json").read_bytes())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get(REF_NAME) == ref)

    def blob(d: dict[str, Any]) -> bytes:
        digest: str = d["digest"]
        alg, _, hexpart = digest.partition(":")
        return (layout / "blobs" / alg / hexpart).read_bytes()

    manifest = json.loads(blob(desc))
    tars = []
    for layer in manifest["layers"]:
        data = blob(layer)
        if layer["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        elif layer["mediaType"].endswith("zstd"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        tars.append(data)
    return ImageParts(blob(manifest["config"]), tars, desc["digest"])


# -- docker save ---------------------------------------------------------------------


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *,
             symlink: str | None = None, directory: bool = False) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1_600_000_000
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
    elif symlink is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = symlink
        info.mode = 0o777
        tf.addfile(info)
    else:
        assert data is not None
        info.size = len(data)
        info.mode = 0o644
        tf.addfile(info, io.BytesIO(data))


def write_docker_save(out: Path, config: bytes, tars: list[bytes], *, layout: str,
                      repo_tags: list[str] | None = None,
                      link_repeated: bool = True) -> Path:
    """Write a ``docker save`` archive of one image.

    Args:
        layout: ``classic`` (Docker before 25: ``<id>/layer.tar``; a layer repeated in
            the image is a symlink to the first copy, as Docker writes it) or ``oci``
            (Docker 25+: an OCI layout with ``manifest.json`` naming its blobs).
    """
    tags = repo_tags if repo_tags is not None else ["example/app:1.0"]
    config_hex = hashlib.sha256(config).hexdigest()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        if layout == "classic":
            names: list[str] = []
            seen: dict[str, str] = {}
            parent = ""
            for i, t in enumerate(tars):
                layer_id = hashlib.sha256(f"{parent}{sha256(t)}{i}".encode()).hexdigest()
                parent = layer_id
                _tar_add(tf, f"{layer_id}/", directory=True)
                _tar_add(tf, f"{layer_id}/VERSION", b"1.0")
                _tar_add(tf, f"{layer_id}/json", canonical({"id": layer_id}))
                diff = sha256(t)
                if link_repeated and diff in seen:
                    _tar_add(tf, f"{layer_id}/layer.tar",
                             symlink=f"../{seen[diff]}/layer.tar")
                else:
                    _tar_add(tf, f"{layer_id}/layer.tar", t)
                    seen[diff] = layer_id
                names.append(f"{layer_id}/layer.tar")
            _tar_add(tf, f"{config_hex}.json", config)
            manifest = [{"Config": f"{config_hex}.json", "RepoTags": tags, "Layers": names}]
            _tar_add(tf, "manifest.json", canonical(manifest))
            if tags:
                repo, _, tag = tags[0].rpartition(":")
                _tar_add(tf, "repositories", canonical({repo: {tag: parent}}))
        elif layout == "oci":
            blobs: dict[str, bytes] = {}
            layer_descs = []
            for t in tars:
                blobs[sha256(t)] = t
                layer_descs.append({"mediaType": LAYER_TYPES["none"], "digest": sha256(t),
                                    "size": len(t)})
            blobs[sha256(config)] = config
            manifest_doc = canonical({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(config),
                           "size": len(config)},
                "layers": layer_descs,
            })
            blobs[sha256(manifest_doc)] = manifest_doc
            _tar_add(tf, "blobs/", directory=True)
            _tar_add(tf, "blobs/sha256/", directory=True)
            for digest, data in blobs.items():
                _tar_add(tf, f"blobs/sha256/{digest.split(':')[1]}", data)
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
                "mediaType": OCI_MANIFEST, "digest": sha256(manifest_doc),
                "size": len(manifest_doc),
                "annotations": {"io.containerd.image.name": f"docker.io/{tags[0]}",
                                REF_NAME: tags[0].rpartition(":")[2]},
            }]}
            _tar_add(tf, "index.json", canonical(index))
            _tar_add(tf, "oci-layout", OCI_LAYOUT)
            manifest = [{"Config": f"blobs/sha256/{config_hex}", "RepoTags": tags,
                         "Layers": [f"blobs/sha256/{sha256(t).split(':')[1]}"
                                    for t in tars]}]
            _tar_add(tf, "manifest.json", canonical(manifest))
        else:
            raise ValueError(layout)
    return out


def tar_directory(src: Path, out: Path, *, prefix: str = "") -> Path:
    """A tar of the files under ``src`` (names relative to it, under ``prefix``)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            tf.add(path, arcname=prefix + rel, recursive=False)
    return out


# -- umoci ---------------------------------------------------------------------------


def umoci(*args: str | os.PathLike[str]) -> str:
    """Run umoci; a missing umoci or a failure fails the test."""
    exe = shutil.which("umoci")
    assert exe is not None, "umoci is not installed (Debian package 'umoci')"
    proc = subprocess.run([exe, *(os.fspath(a) for a in args)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"umoci {' '.join(map(str, args))}: {proc.stderr}"
    return proc.stdout


def skopeo(*args: str | os.PathLike[str]) -> str:
    """Run ``skopeo --insecure-policy``; a missing skopeo or a failure fails the test."""
    exe = shutil.which("skopeo")
    assert exe is not None, "skopeo is not installed (Debian package 'skopeo')"
    proc = subprocess.run([exe, "--insecure-policy", *(os.fspath(a) for a in args)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"skopeo {' '.join(map(str, args))}: {proc.stderr}"
    return proc.stdout


def _rootless() -> list[str]:
    return [] if os.geteuid() == 0 else ["--rootless"]


@dataclass
class UmociImage:
    layout: Path  # the OCI image layout
    ref: str  # the tag of the final image
    rootfs: Path  # umoci unpack's root filesystem of it
    layer_count: int


def _step_base(r: Path) -> None:
    """Layer 1: a small root filesystem with every kind of entry umoci handles."""
    for d in ("etc/conf.d", "usr/bin", "usr/lib/pkg/deep/er", "data/sub", "olddir/inner",
              "var/empty", "opq/lower-dir", "home/user"):
        (r / d).mkdir(parents=True)
    (r / "etc/hello").write_bytes(b"hello\n")
    os.setxattr(r / "etc/hello", "user.note", b"greeting")
    (r / "etc/conf.d/a.conf").write_bytes(b"a=1\n")
    (r / "etc/.hidden").write_bytes(b"dotfile\n")
    (r / "etc/deleted-file").write_bytes(b"goes away in layer 2\n")
    os.link(r / "etc/hello", r / "etc/hello-hard")
    (r / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (r / "usr/bin/tool").chmod(0o755)
    (r / "usr/bin/suid").write_bytes(b"setuid\n")
    (r / "usr/bin/suid").chmod(0o4755)
    os.symlink("tool", r / "usr/bin/tool-link")
    os.symlink("/etc/hello", r / "usr/bin/abs-link")
    (r / "usr/lib/pkg/deep/er/file").write_bytes(b"deep\n" * 1000)
    (r / "data/sub/f").write_bytes(b"x" * 100_000)
    os.chown(r / "data/sub/f", 1000, 1000)
    os.chown(r / "home/user", 1000, 100)
    (r / "home/user").chmod(0o750)
    (r / "olddir/inner/g").write_bytes(b"g\n")
    (r / "olddir/top").write_bytes(b"top\n")
    (r / "becomes-dir").write_bytes(b"a file first\n")
    (r / "opq/lower-file").write_bytes(b"from layer 1\n")
    (r / "opq/lower-dir/x").write_bytes(b"x\n")
    (r / "opq/kept").write_bytes(b"lower version\n")
    (r / "var/empty").chmod(0o1777)
    os.mkfifo(r / "var/fifo")
    if os.geteuid() == 0:
        os.mknod(r / "var/null", 0o666 | 0o020000, os.makedev(1, 3))


def _step_changes(r: Path) -> None:
    """Layer 2: deletions and replacements."""
    (r / "etc/deleted-file").unlink()  # a deleted file
    (r / "etc/hello-hard").unlink()  # a deleted hardlink
    shutil.rmtree(r / "olddir")  # a deleted directory
    (r / "becomes-dir").unlink()  # a file replaced by a directory
    (r / "becomes-dir").mkdir()
    (r / "becomes-dir/in").write_bytes(b"in\n")
    (r / "etc/new").write_bytes(b"new in layer 2\n")
    (r / "etc/hello").write_bytes(b"hello, changed\n")  # content change
    (r / "etc/.hidden").unlink()  # a dotfile deleted (whiteout '.wh..hidden')
    os.chown(r / "etc/new", 5, 6)
    (r / "usr/bin/tool").chmod(0o700)  # metadata change only
    (r / "usr/bin/tool-link").unlink()
    os.symlink("/etc/new", r / "usr/bin/tool-link")  # symlink retargeted


def _step_recreate(r: Path) -> None:
    """Layer 3: a directory deleted and re-created with other content."""
    shutil.rmtree(r / "data")
    (r / "data/other").mkdir(parents=True)
    (r / "data/other/o").write_bytes(b"o\n")
    (r / "usr/lib/pkg").chmod(0o700)
    shutil.rmtree(r / "usr/lib/pkg/deep/er")


def opaque_layer() -> bytes:
    """Layer 4 (``umoci raw add-layer``): opaque markers, which repack never writes.

    - ``opq/kept`` is written before the opaque marker of ``opq``: it survives;
    - ``opq/.wh..wh..opq`` removes ``lower-file`` and ``lower-dir`` of layer 1;
    - ``etc/conf.d/.wh..wh..opq`` comes first, then a new file in that directory;
    - ``usr/.wh.lib`` removes a whole directory tree.

    It ends as Go's tar writer ends one (two zero blocks, no 10 KiB record): skopeo's
    zstd:chunked writer drops the rest, which would change the layer's DiffID.
    """
    data = make_tar([
        Entry("opq/", "dir", mode=0o755),
        Entry("opq/kept", data=b"upper version\n"),
        Entry("opq/.wh..wh..opq", mode=0),
        Entry("opq/new", data=b"new next to the marker\n"),
        Entry("etc/", "dir", mode=0o755),
        Entry("etc/conf.d/", "dir", mode=0o755),
        Entry("etc/conf.d/.wh..wh..opq", mode=0),
        Entry("etc/conf.d/b.conf", data=b"b=2\n"),
        Entry("usr/", "dir", mode=0o755),
        Entry("usr/.wh.lib", mode=0),
    ])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    return data[:last.offset_data + -(-last.size // 512) * 512] + bytes(1024)


def _build(root: Path, steps: list[Callable[[Path], None]],
           raw_layers: list[bytes]) -> UmociImage:
    """``umoci repack`` after each step (tags ``step1``...), then ``umoci raw add-layer``
    for each raw layer; the last image is tagged ``latest`` and unpacked by umoci."""
    layout = root / "layout"
    bundle = root / "bundle"
    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:base")
    umoci("unpack", *_rootless(), "--image", f"{layout}:base", bundle)
    tag = "base"
    for n, step in enumerate(steps, 1):
        step(bundle / "rootfs")
        tag = f"step{n}"
        umoci("repack", "--refresh-bundle", "--history.created_by", f"step {n}",
              "--image", f"{layout}:{tag}", bundle)
    for n, data in enumerate(raw_layers, 1):
        layer = root / f"raw-layer-{n}.tar"
        layer.write_bytes(data)
        umoci("raw", "add-layer", "--image", f"{layout}:{tag}", "--tag", f"raw{n}", layer)
        tag = f"raw{n}"
    umoci("tag", "--image", f"{layout}:{tag}", "latest")
    reference = root / "reference"
    umoci("unpack", *_rootless(), "--image", f"{layout}:latest", reference)
    return UmociImage(layout, "latest", reference / "rootfs", len(steps) + len(raw_layers))


def build_umoci_image(root: Path) -> UmociImage:
    """An OCI layout with four layers, built by umoci, and umoci's unpacking of it."""
    return _build(root, [_step_base, _step_changes, _step_recreate], [opaque_layer()])


def _dir_base(r: Path) -> None:
    (r / "becomes-file/sub").mkdir(parents=True)
    (r / "becomes-file/q").write_bytes(b"q\n")
    (r / "becomes-file/sub/deeper").write_bytes(b"deeper\n")
    (r / "stays").write_bytes(b"stays\n")


def _dir_to_file(r: Path) -> None:
    shutil.rmtree(r / "becomes-file")
    (r / "becomes-file").write_bytes(b"now a file\n")


def build_umoci_dir_to_file_image(root: Path) -> UmociImage:
    """A directory replaced by a regular file. ``umoci repack`` writes the new file and
    then whiteouts for what the directory held (``becomes-file/.wh.q``, ...), that is,
    whiteouts below a path that is now a regular file; ``umoci unpack`` treats them as
    no-ops."""
    return _build(root, [_dir_base, _dir_to_file], [])
