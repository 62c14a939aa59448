"""unpack_image and ``chrootarchive unpack-image``: OCI image layouts and docker save.

Real images come from Debian's ``umoci`` (see ``helpers/oci_images.py``); the result is
compared with ``umoci unpack``'s root filesystem, and the same layers repackaged (other
compressions and media types, a tar of the layout, ``docker save`` in both layouts)
must give the same tree. Hostile images must end in one clear error, with nothing
written outside the destination (a victim tree beside it is compared byte for byte)
and, for everything that can be checked before a layer is read, nothing written at
all.
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import chrootarchive
from chrootarchive import (
    BreakoutError,
    DigestMismatchError,
    ImageError,
    LimitExceededError,
    UnpackOptions,
    unpack_image,
)
from chrootarchive import image as image_module
from chrootarchive.image import documents as image_documents
from chrootarchive.options import Limits
from helpers import pep706, tree
from helpers import tarbuild as tb
from helpers.cli import CLI, CLIResult, assert_one_line_error, run_cli
from helpers.oci_images import (
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    Entry,
    ImageParts,
    OCIBuilder,
    UmociImage,
    build_umoci_dir_to_file_image,
    build_umoci_image,
    canonical,
    make_tar,
    platform_of,
    read_image,
    sha256,
    skopeo,
    tar_directory,
    umoci,
    write_docker_save,
)
from helpers.unpriv import NOBODY, cli_as, make_package_copy, run_as, world_dir
from helpers.victim import Victim

pytestmark = pytest.mark.kernel


# -- comparing root filesystems -------------------------------------------------------


def assert_same_rootfs(expected: Path, actual: Path) -> None:
    """The two trees hold the same names, types, modes (setuid/sticky included), owners,
    sizes, contents, symlink targets, hardlink groups, device numbers, xattrs and
    modification times, with one documented exception:

    **Directory modification times.** umoci restores a directory's metadata after it
    adds or removes an entry below it when the layer does not list that directory
    (``restoreMetadata`` of the parent in its ``UnpackEntry``), so a directory keeps the
    time of the last layer that listed it. chrootarchive does what Docker and
    containerd do: directories listed in a layer get their times from the layer (set
    after all its entries), while a directory that a layer changes without listing it
    (a child added or whited out) keeps the time of that change. The destination root
    is such a directory for every layer: the pivot_root jail puts its temporary
    ``.pivot_root*`` directory there and removes it, as Docker's does. Directory mtimes
    are not part of an image's content (the OCI spec leaves them to the implementation),
    so they are left out; every other attribute must match.
    """
    exp = tree.snapshot(expected)
    act = tree.snapshot(actual)

    def ignore(path: str, key: str) -> bool:
        return key == "mtime_ns" and exp.get(path, {}).get("type") == "dir"

    tree.assert_same(exp, act, "the unpacked image differs from the reference", ignore=ignore)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def umoci_image(tmp_path_factory: pytest.TempPathFactory) -> UmociImage:
    """A four-layer OCI image built with umoci, and umoci's own unpacking of it."""
    return build_umoci_image(tmp_path_factory.mktemp("umoci"))


@pytest.fixture(scope="session")
def parts(umoci_image: UmociImage) -> ImageParts:
    """Its config and uncompressed layers."""
    return read_image(umoci_image.layout, umoci_image.ref)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Where a test writes its images: outside ``work`` (the victim's snapshot)."""
    d = tmp_path / "images"
    d.mkdir()
    return d


# -- real images: umoci ---------------------------------------------------------------


def test_umoci_image_matches_umoci_unpack(umoci_image: UmociImage, tmp_path: Path,
                                          no_leaks: None) -> None:
    dest = tmp_path / "rootfs"
    result = unpack_image(umoci_image.layout, dest, ref=umoci_image.ref)
    assert_same_rootfs(umoci_image.rootfs, dest)

    index = json.loads((umoci_image.layout / "index.json").read_bytes())
    latest = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == "latest")
    assert result.format == "oci"
    assert result.manifest_digest == latest["digest"]
    assert result.ref == "latest"
    assert result.platform == image_module.default_platform()
    assert len(result.layers) == umoci_image.layer_count
    assert [layer.index for layer in result.layers] == list(range(umoci_image.layer_count))
    assert all(layer.compression == "gzip" for layer in result.layers)
    assert result.size == sum(layer.size for layer in result.layers) > 0
    assert result.confinement
    json.dumps(result.to_json())


def test_umoci_directory_replaced_by_file(tmp_path: Path) -> None:
    """umoci's layer for a directory replaced by a file holds whiteouts below the new
    file (``becomes-file/.wh.q``): nothing is there to remove, so they are no-ops, as in
    ``umoci unpack``."""
    image = build_umoci_dir_to_file_image(tmp_path / "umoci")
    with tarfile.open(fileobj=io.BytesIO(read_image(image.layout, "latest").tars[1])) as tf:
        names = tf.getnames()
    assert names.index("becomes-file") < names.index("becomes-file/.wh.q")
    unpack_image(image.layout, tmp_path / "rootfs", ref="latest")
    assert_same_rootfs(image.rootfs, tmp_path / "rootfs")


def test_umoci_intermediate_tag_by_name_and_digest(umoci_image: UmociImage,
                                                   tmp_path: Path) -> None:
    """Another tag of the same layout, chosen by name and by manifest digest."""
    reference = tmp_path / "reference"
    umoci("unpack", "--image", f"{umoci_image.layout}:step2", reference)
    by_name = unpack_image(umoci_image.layout, tmp_path / "a", ref="step2")
    assert len(by_name.layers) == 2
    assert_same_rootfs(reference / "rootfs", tmp_path / "a")
    assert by_name.manifest_digest is not None
    by_digest = unpack_image(umoci_image.layout, tmp_path / "b", ref=by_name.manifest_digest)
    assert by_digest.manifest_digest == by_name.manifest_digest
    assert_same_rootfs(reference / "rootfs", tmp_path / "b")


def test_several_tags_need_a_ref(umoci_image: UmociImage, tmp_path: Path) -> None:
    with pytest.raises(ImageError) as info:
        unpack_image(umoci_image.layout, tmp_path / "dest")
    message = str(info.value)
    assert "choose one" in message and "latest" in message and "step1" in message
    with pytest.raises(ImageError, match="no image named 'nope'"):
        unpack_image(umoci_image.layout, tmp_path / "dest", ref="nope")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("form", ["tar", "tar-with-top-directory", "tar.gz"])
def test_layout_as_tar(umoci_image: UmociImage, images: Path, tmp_path: Path,
                       form: str) -> None:
    """A tar of the layout is read in place (members by offset), not extracted."""
    archive = images / "layout.tar"
    tar_directory(umoci_image.layout, archive,
                  prefix="image/" if form == "tar-with-top-directory" else "")
    if form == "tar.gz":
        gz = images / "layout.tar.gz"
        gz.write_bytes(gzip.compress(archive.read_bytes()))
        archive = gz
    before = sorted(p.name for p in images.iterdir())
    unpack_image(archive, tmp_path / "rootfs", ref="latest")
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")
    assert sorted(p.name for p in images.iterdir()) == before


# -- the same layers, repackaged ------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain-and-zstd", "docker-media-types",
                                     "non-distributable", "nested-index"])
def test_repackaged_layers_give_the_same_tree(umoci_image: UmociImage, parts: ImageParts,
                                              images: Path, tmp_path: Path,
                                              variant: str) -> None:
    b = OCIBuilder(images / "layout")
    config = json.loads(parts.config)
    diff_ids = config["rootfs"]["diff_ids"]
    assert diff_ids == [sha256(t) for t in parts.tars]
    kinds = ["none", "zstd", "gzip", "zstd"]
    if variant == "docker-media-types":
        types = {"none": "application/vnd.docker.image.rootfs.diff.tar",
                 "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd"}
        layers = [b.layer(t, k, types[k]) for t, k in zip(parts.tars, kinds, strict=True)]
        config_desc = b.blob(parts.config, "application/vnd.docker.container.image.v1+json")
        doc = {"schemaVersion": 2,
               "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
               "config": config_desc, "layers": layers}
        desc = b.blob(canonical(doc), "application/vnd.docker.distribution.manifest.v2+json")
    else:
        if variant == "non-distributable":
            types = {k: f"application/vnd.oci.image.layer.nondistributable.v1.tar{s}"
                     for k, s in (("none", ""), ("gzip", "+gzip"), ("zstd", "+zstd"))}
            layers = [b.layer(t, k, types[k]) for t, k in zip(parts.tars, kinds, strict=True)]
        else:
            layers = [b.layer(t, k) for t, k in zip(parts.tars, kinds, strict=True)]
        desc = b.manifest(b.blob(parts.config, "application/vnd.oci.image.config.v1+json"),
                          layers)
    if variant == "nested-index":
        other = b.image([make_tar([Entry("arm-only", data=b"arm\n")])], arch="arm64")
        inner = b.index([{**desc, "platform": platform_of("linux", "amd64")},
                         {**other, "platform": platform_of("linux", "arm64", "v8")}])
        desc = b.index([inner])
    b.tag(desc, "v1")
    result = unpack_image(b.root, tmp_path / "rootfs", platform="linux/amd64")
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")
    assert [layer.compression for layer in result.layers] == kinds


@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_docker_save_gives_the_same_tree(umoci_image: UmociImage, parts: ImageParts,
                                         images: Path, tmp_path: Path, layout: str) -> None:
    archive = write_docker_save(images / "save.tar", parts.config, parts.tars, layout=layout,
                                repo_tags=["example/app:1.0", "example/app:latest"])
    result = unpack_image(archive, tmp_path / "rootfs")
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")
    assert result.format == "docker-save"
    assert result.config_digest == sha256(parts.config)
    assert result.ref == "example/app:1.0"
    # Chosen by tag (Docker's short forms too) and by image ID.
    for ref in ("example/app:latest", "docker.io/example/app", result.config_digest):
        dest = tmp_path / f"by-{len(ref)}"
        assert unpack_image(archive, dest, ref=ref).config_digest == result.config_digest
    # The Docker 25+ archive is also a plain OCI layout (without manifest.json).
    if layout == "oci":
        plain = images / "plain"
        with tarfile.open(archive) as tf:
            pep706.extract_own(tf, plain, "data")  # our own fixture, trusted
        (plain / "manifest.json").unlink()
        unpack_image(plain, tmp_path / "via-index")
        assert_same_rootfs(umoci_image.rootfs, tmp_path / "via-index")


@pytest.mark.parametrize("form", ["oci-gzip", "oci-zstd", "oci-zstd-chunked",
                                  "oci-uncompressed", "oci-archive", "docker-archive",
                                  "dir-v2s2", "dir-oci", "dir-uncompressed"])
def test_skopeo_transports_give_the_same_tree(umoci_image: UmociImage, images: Path,
                                              tmp_path: Path, form: str) -> None:
    """What skopeo (containers/image) writes from umoci's layout (``oci:``,
    ``oci-archive:``, ``docker-archive:``, ``dir:``) unpacks to umoci's tree, whiteouts
    and opaque markers included. zstd:chunked layers are zstd with a TOC in skippable
    frames and annotations, and end with a frame that declares a 32 MiB window for a few
    KiB (refused at the default limit before)."""
    ref = "latest"
    source = f"oci:{umoci_image.layout}:{ref}"
    copy = ["copy", "--quiet"]
    if form.startswith("oci-") and form != "oci-archive":
        image = images / "layout"
        if form == "oci-uncompressed":
            skopeo(*copy, "--dest-decompress", source, f"dir:{images / 'plain'}")
            skopeo(*copy, "--dest-oci-accept-uncompressed-layers", f"dir:{images / 'plain'}",
                   f"oci:{image}:{ref}")
        else:
            skopeo(*copy, "--dest-compress-format", form.removeprefix("oci-").replace(
                "zstd-chunked", "zstd:chunked"), source, f"oci:{image}:{ref}")
    elif form.startswith("dir-"):
        image = images / "dir"
        how = {"dir-v2s2": ["--format", "v2s2"], "dir-oci": ["--format", "oci"],
               "dir-uncompressed": ["--dest-decompress"]}[form]
        skopeo(*copy, *how, source, f"dir:{image}")
    elif form == "oci-archive":
        image = images / "image.tar"
        skopeo(*copy, "--dest-compress-format", "zstd", source, f"oci-archive:{image}:{ref}")
    else:
        image = images / "image.tar"
        skopeo(*copy, source, f"docker-archive:{image}:example/app:1.0")
    result = unpack_image(image, tmp_path / "rootfs", ref=None)
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")
    if form == "oci-zstd-chunked":
        assert result.manifest_digest is not None
        manifest = json.loads((image / "blobs" / "sha256" / result.manifest_digest
                               .partition(":")[2]).read_bytes())
        for layer, done in zip(manifest["layers"], result.layers, strict=True):
            assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
            assert "io.containers.zstd-chunked.manifest-position" in layer["annotations"]
            assert (done.digest, done.compression) == (layer["digest"], "zstd")


def test_docker_save_directory_and_repeated_layer(parts: ImageParts, images: Path,
                                                  tmp_path: Path) -> None:
    """A repeated layer is a symlink to the first ``layer.tar`` in a classic archive
    (as Docker writes it); the same archive unpacked as a directory gives the same."""
    tars = [parts.tars[0], parts.tars[1], parts.tars[0]]
    config = json.loads(parts.config)
    config["rootfs"]["diff_ids"] = [sha256(t) for t in tars]
    config_bytes = canonical(config)
    archive = write_docker_save(images / "save.tar", config_bytes, tars, layout="classic")
    with tarfile.open(archive) as tf:
        assert sum(m.issym() for m in tf.getmembers()) == 1
        pep706.extract_own(tf, images / "dir")  # our own fixture
    oci = OCIBuilder(images / "oci")
    oci.tag(oci.image(tars, "gzip"), "x")
    unpack_image(oci.root, tmp_path / "expected")
    unpack_image(archive, tmp_path / "from-tar")
    unpack_image(images / "dir", tmp_path / "from-dir")
    assert_same_rootfs(tmp_path / "expected", tmp_path / "from-tar")
    assert_same_rootfs(tmp_path / "expected", tmp_path / "from-dir")


def test_compressed_docker_save_from_stdin(parts: ImageParts, images: Path, tmp_path: Path,
                                           run_cli: Callable[..., CLIResult],
                                           umoci_image: UmociImage) -> None:
    archive = write_docker_save(images / "save.tar", parts.config, parts.tars,
                                layout="classic")
    data = gzip.compress(archive.read_bytes())
    rc, out, err = run_cli("unpack-image", "--json", "-", tmp_path / "rootfs", input=data)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["format"] == "docker-save" and len(doc["layers"]) == len(parts.tars)
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")


# -- selection: platforms, refs ---------------------------------------------------------


def _marker_image(b: OCIBuilder, name: str, **config_kw: str) -> dict[str, object]:
    return b.image([make_tar([Entry(name, data=name.encode())])], **config_kw)


@pytest.fixture
def multiarch(images: Path) -> OCIBuilder:
    """An index: linux/amd64, linux/arm64/v8, linux/arm/v7, and an attestation
    manifest (unknown/unknown), as buildx writes them."""
    b = OCIBuilder(images / "multi")
    entries = [
        {**_marker_image(b, "amd64"), "platform": platform_of("linux", "amd64")},
        {**_marker_image(b, "arm64", arch="arm64", variant="v8"),
         "platform": platform_of("linux", "arm64", "v8")},
        {**_marker_image(b, "armv7", arch="arm", variant="v7"),
         "platform": platform_of("linux", "arm", "v7")},
        {**_marker_image(b, "attestation", os_name="unknown", arch="unknown"),
         "platform": platform_of("unknown", "unknown")},
    ]
    b.tag(b.index(entries), "multi")
    return b


@pytest.mark.parametrize(("platform", "marker"), [
    (None, "amd64"), ("linux/amd64", "amd64"), ("linux/x86_64", "amd64"),
    ("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64"), ("linux/aarch64", "arm64"),
    ("linux/arm/v7", "armv7"), ("linux/arm", "armv7"),
])
def test_platform_selection(multiarch: OCIBuilder, tmp_path: Path, platform: str | None,
                            marker: str) -> None:
    if platform is None and image_module.default_platform() != "linux/amd64":
        marker = {"linux/arm64": "arm64", "linux/arm/v7": "armv7"}[
            image_module.default_platform()]
    result = unpack_image(multiarch.root, tmp_path / "root", platform=platform)
    assert sorted(os.listdir(tmp_path / "root")) == [marker]
    assert result.platform == image_module.parse_platform(platform or
                                                          image_module.default_platform())


def test_platform_not_available(multiarch: OCIBuilder, tmp_path: Path) -> None:
    with pytest.raises(ImageError) as info:
        unpack_image(multiarch.root, tmp_path / "root", platform="linux/s390x")
    assert "linux/s390x" in str(info.value) and "linux/arm64" in str(info.value)
    with pytest.raises(ValueError, match="OS/ARCH"):
        unpack_image(multiarch.root, tmp_path / "root", platform="linux")
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("field", ["mediaType", "platform"])
def test_an_index_of_long_names_makes_a_short_error(tmp_path: Path, field: str) -> None:
    """An index's 1,000 entries, each naming a media type or an OS of 3,900 characters
    that nothing can use: the error lists twenty, each clipped (it was a line of 3.9 MB,
    all of the index)."""
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    entries = []
    for i in range(1000):
        entry: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": f"sha256:{i:064x}",
                                 "size": 1}
        if field == "mediaType":
            entry["mediaType"] = f"application/x-{'y' * 3900}{i}"
        else:
            entry["platform"] = {"os": f"linux{'z' * 3900}{i}", "architecture": "amd64"}
        entries.append(entry)
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    (layout / "blobs/sha256" / sha256(index).split(":")[1]).write_bytes(index)
    (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index)}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    result = run_cli("unpack-image", layout, tmp_path / "dest")
    line = assert_one_line_error(result, rc=1, mentions=(
        "media types" if field == "mediaType" else "available",))
    assert len(line) < 4096, len(line)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("with_platforms", [False, True])
def test_two_named_images_need_a_ref_even_with_platforms(images: Path, tmp_path: Path,
                                                        with_platforms: bool) -> None:
    """index.json names two images: without a reference it is refused, also when both
    entries carry a platform that matches (the first was unpacked, with nothing said:
    differential fuzzing, issue 16, twentieth round); with one, that image."""
    b = OCIBuilder(images / "two")
    for name in ("first", "second"):
        extra = {"platform": platform_of("linux", "amd64")} if with_platforms else {}
        b.tag({**_marker_image(b, name), **extra}, name)
    with pytest.raises(ImageError, match="choose one by reference"):
        unpack_image(b.root, tmp_path / "none", platform="linux/amd64")
    assert not (tmp_path / "none").exists()
    unpack_image(b.root, tmp_path / "second", platform="linux/amd64", ref="second")
    assert sorted(os.listdir(tmp_path / "second")) == ["second"]


def test_single_image_for_another_platform(images: Path, tmp_path: Path) -> None:
    """Without an index, the config says what the image is: another platform is an
    error when one was asked for, a warning otherwise."""
    b = OCIBuilder(images / "one")
    b.tag(_marker_image(b, "s390x", arch="s390x"), "x")
    with pytest.raises(ImageError, match="is for linux/s390x"):
        unpack_image(b.root, tmp_path / "a", platform="linux/amd64")
    result = unpack_image(b.root, tmp_path / "b", platform="linux/s390x")
    assert result.platform == "linux/s390x" and not result.warnings
    if image_module.default_platform() != "linux/s390x":
        result = unpack_image(b.root, tmp_path / "c")
        assert any("linux/s390x" in w for w in result.warnings)


def test_empty_image_creates_dest(images: Path, tmp_path: Path) -> None:
    b = OCIBuilder(images / "empty")
    b.tag(b.image([]), "empty")
    result = unpack_image(b.root, tmp_path / "a" / "root")
    assert result.layers == () and os.listdir(tmp_path / "a" / "root") == []


def test_progress_reports(images: Path, tmp_path: Path) -> None:
    b = OCIBuilder(images / "p")
    tars = [make_tar([Entry(f"f{i}", data=os.urandom(3 << 20))]) for i in range(3)]
    b.tag(b.image(tars, "none"), "p")
    events: list[chrootarchive.LayerProgress] = []
    unpack_image(b.root, tmp_path / "root", progress=events.append)
    for i in range(3):
        mine = [e for e in events if e.index == i]
        assert mine[0].done == 0 and not mine[0].finished
        assert mine[-1].finished and mine[-1].done == mine[-1].total == len(tars[i])
        assert all(e.count == 3 for e in mine)
        assert [e.done for e in mine] == sorted(e.done for e in mine)
    assert [e.index for e in events] == sorted(e.index for e in events)


def test_limits_hold_for_the_whole_image(images: Path, tmp_path: Path) -> None:
    b = OCIBuilder(images / "l")
    tars = [make_tar([Entry(f"d{i}/", "dir"), *(Entry(f"d{i}/{n}") for n in range(30))])
            for i in range(3)]
    b.tag(b.image(tars), "l")
    options = UnpackOptions(limits=Limits(max_entries=70))
    with pytest.raises(LimitExceededError) as info:
        unpack_image(b.root, tmp_path / "root", options=options)
    assert "layer 2" in str(info.value)


def _cut_after_last_data(tar: bytes, last_size: int) -> bytes:
    """``tar`` up to the end of its last member's data: no padding, no end-of-archive
    blocks (as umoci 0.4.7 wrote some layers)."""
    end = len(tar.rstrip(b"\0"))  # the data's last byte is not NUL here
    assert end % 512 == last_size % 512
    return tar[:end]


def test_a_layer_cut_in_its_last_padding_is_read_as_go_reads_it(images: Path,
                                                                  tmp_path: Path) -> None:
    """A layer that ends right after its last file's data (umoci 0.4.7 wrote such
    layers: Docker, containerd and umoci read them, as Go's archive/tar ends the archive
    there) is applied, with a warning; its DiffID is of the stream as it is. A download
    cut there instead fails the DiffID check; and a lone layer file, whose end no
    digest checks, is still refused."""
    last = b"y" * 700
    whole = make_tar([Entry("dir", kind="dir", mode=0o755), Entry("dir/a", data=b"first"),
                      Entry("dir/b", data=last)])
    cut = _cut_after_last_data(whole, len(last))
    b = OCIBuilder(images / "cut")
    b.tag(b.image([cut]), "cut")
    result = unpack_image(b.root, tmp_path / "root")
    assert (tmp_path / "root" / "dir" / "b").read_bytes() == last
    assert (tmp_path / "root" / "dir" / "a").read_bytes() == b"first"
    assert any("ends in the padding after dir/b's data" in w for w in result.warnings), \
        result.warnings
    b2 = OCIBuilder(images / "cut-download")
    layer = b2.layer(cut)  # the blob holds the cut stream; the config, the whole one's
    b2.tag(b2.manifest(b2.config([sha256(whole)]), [layer]), "d")
    with pytest.raises(DigestMismatchError, match="DiffID mismatch"):
        unpack_image(b2.root, tmp_path / "download")
    (tmp_path / "layer.tar").write_bytes(cut)
    with pytest.raises(chrootarchive.MalformedArchiveError, match="truncated padding"):
        chrootarchive.apply_layer(tmp_path / "layer.tar", tmp_path / "lone")


def test_atomic_leaves_nothing_on_a_diffid_mismatch(images: Path, tmp_path: Path) -> None:
    b = OCIBuilder(images / "a")
    good = make_tar([Entry("good", data=b"good")])
    bad = make_tar([Entry("bad", data=b"bad")])
    layers = [b.layer(good), b.layer(bad)]
    config = b.config([sha256(good), sha256(good)])  # the second DiffID is wrong
    b.tag(b.manifest(config, layers), "a")
    dest = tmp_path / "root"
    with pytest.raises(DigestMismatchError, match="DiffID mismatch"):
        unpack_image(b.root, dest, options=UnpackOptions(atomic=True))
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".chrootarchive")]
    # Without atomic, the mismatching layer was written (documented).
    with pytest.raises(DigestMismatchError):
        unpack_image(b.root, dest)
    assert sorted(os.listdir(dest)) == ["bad", "good"]
    shutil.rmtree(dest)
    b2 = OCIBuilder(images / "ok")
    b2.tag(b2.image([good, bad]), "ok")
    unpack_image(b2.root, dest, options=UnpackOptions(atomic=True))
    assert sorted(os.listdir(dest)) == ["bad", "good"]


def test_overlay_format_is_refused(images: Path, tmp_path: Path) -> None:
    b = OCIBuilder(images / "o")
    b.tag(b.image([]), "o")
    with pytest.raises(ValueError, match="aufs"):
        unpack_image(b.root, tmp_path / "r", options=UnpackOptions(whiteout_format="overlay"))


@pytest.mark.parametrize("mechanism", ["pivot", "chroot", "userns", "openat2"])
def test_every_mechanism(mechanism: str, umoci_image: UmociImage, parts: ImageParts,
                         images: Path, tmp_path: Path, no_leaks: None) -> None:
    """The layers go through the worker (or, for openat2, a feeder thread) as chunks:
    the same tree, and a DiffID mismatch found at the end of a layer, everywhere."""
    options = UnpackOptions(confine=mechanism)
    result = unpack_image(umoci_image.layout, tmp_path / "rootfs", ref="latest",
                          options=options)
    assert result.confinement == mechanism
    if mechanism == "userns":
        # Only the caller is mapped (no subordinate ranges here): other owners and
        # device nodes cannot be made, and are reported, never faked.
        warnings = " ".join(result.warnings)
        assert "ownership" in warnings and "device" in warnings
        exp = tree.snapshot(umoci_image.rootfs)
        act = tree.snapshot(tmp_path / "rootfs")
        assert exp.pop("var/null")["type"] == "chardev"
        tree.assert_same(exp, act, "userns unpack differs", ignore=lambda path, key: (
            key in ("uid", "gid") or (key == "mtime_ns" and exp[path]["type"] == "dir")))
    else:
        assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")
    b = OCIBuilder(images / "bad")
    layers = [b.layer(t) for t in parts.tars[:2]]
    b.tag(b.manifest(b.config([sha256(parts.tars[0])] * 2), layers), "bad")
    with pytest.raises(DigestMismatchError, match="layer 1"):
        unpack_image(b.root, tmp_path / "bad", options=options)


# -- the command line ---------------------------------------------------------------


def test_cli_json_and_help(umoci_image: UmociImage, tmp_path: Path,
                           run_cli: Callable[..., CLIResult]) -> None:
    rc, out, err = run_cli("unpack-image", "--ref", "latest", "--json", umoci_image.layout,
                           tmp_path / "rootfs")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ref"] == "latest" and len(doc["layers"]) == umoci_image.layer_count
    assert doc["manifest_digest"].startswith("sha256:")
    assert_same_rootfs(umoci_image.rootfs, tmp_path / "rootfs")
    rc, out, err = run_cli("unpack-image", "--help")
    assert rc == 0 and "examples:" in out and "--platform" in out and "--ref" in out
    rc, out, err = run_cli("unpack-image", "--platform", "linux", umoci_image.layout,
                           tmp_path / "x")
    assert rc == 2 and "OS/ARCH" in err
    line = assert_one_line_error(run_cli("unpack-image", "-q", umoci_image.layout,
                                         tmp_path / "y"), rc=1, mentions=("choose one",))
    assert "latest" in line


def test_an_image_path_with_a_tag_says_how_to_choose_by_tag(
        images: Path, tmp_path: Path, run_cli: Callable[..., CLIResult]) -> None:
    """umoci's ``--image LAYOUT:TAG`` habit: ``unpack-image layout:latest DEST`` said only
    "No such file or directory". When LAYOUT exists, the error says how to choose the
    tag: ``--ref`` on the command line, ``ref=`` in Python."""
    b = OCIBuilder(images / "layout")
    b.tag(_marker_image(b, "tagged"), "latest")
    line = assert_one_line_error(run_cli("unpack-image", f"{b.root}:latest", tmp_path / "d"),
                                 rc=4)
    assert line == (f"chrootarchive: error: {b.root}:latest: cannot open the image: No such "
                    f"file or directory; to choose an image in a layout by its tag, use --ref "
                    f"latest with the image '{b.root}'"), line
    with pytest.raises(FileNotFoundError) as caught:
        unpack_image(f"{b.root}:latest", tmp_path / "d")
    assert isinstance(caught.value, chrootarchive.SourceError)
    assert caught.value.message.endswith(f"use ref='latest' with the image '{b.root}'")
    # No such layout: nothing to hint at.
    line = assert_one_line_error(run_cli("unpack-image", f"{images}/nope:latest",
                                         tmp_path / "d"), rc=4)
    assert line.endswith("cannot open the image: No such file or directory"), line
    assert not (tmp_path / "d").exists()
    assert run_cli("unpack-image", "--ref", "latest", b.root, tmp_path / "d").rc == 0


def test_several_images_name_the_option_that_chooses(
        images: Path, tmp_path: Path, run_cli: Callable[..., CLIResult]) -> None:
    """"choose one by reference" said how in neither word: ``--ref NAME`` on the
    command line, ``ref=NAME`` in Python; the same for a docker save of several."""
    b = OCIBuilder(images / "two")
    for name in ("first", "second"):
        b.tag(_marker_image(b, name), name)
    docker = images / "docker-dir"
    docker.mkdir()
    (docker / "manifest.json").write_text(json.dumps([
        {"Config": "a.json", "RepoTags": ["example/a:1"], "Layers": []},
        {"Config": "b.json", "RepoTags": ["example/b:2"], "Layers": []}]))
    for root, names in ((b.root, "names: 'first', 'second'"),
                        (docker, "tags: 'example/a:1', 'example/b:2'")):
        line = assert_one_line_error(run_cli("unpack-image", root, tmp_path / "d"), rc=1)
        assert f"(--ref NAME; {names})" in line, line
        with pytest.raises(ImageError) as caught:
            unpack_image(root, tmp_path / "d")
        assert f"(ref=NAME; {names})" in caught.value.message
    assert not (tmp_path / "d").exists()


def test_hostile_image_names_are_shown_clipped_and_never_rewritten(
        images: Path, tmp_path: Path, run_cli: Callable[..., CLIResult]) -> None:
    """Names from an image's index are the image's, not the library's words: a name
    "Limits.max_bytes" is not shown as "--max-bytes", and names of 21,000 characters
    ("--a--a...", which made the command line's word translation backtrack for
    seconds, and hours for longer ones) are clipped."""
    b = OCIBuilder(images / "hostile")
    for name in ("Limits.max_bytes", "0" + "--a" * 7000, "1" + "--a" * 7000):
        b.tag(_marker_image(b, name), name)
    started = time.monotonic()
    line = assert_one_line_error(run_cli("unpack-image", b.root, tmp_path / "d"), rc=1)
    assert time.monotonic() - started < 10
    assert "'Limits.max_bytes'" in line and "--max-bytes" not in line, line
    assert len(line) < 1000, len(line)


def test_what_is_not_an_image_is_named_by_its_path(
        images: Path, tmp_path: Path, run_cli: Callable[..., CLIResult]) -> None:
    """The error named "image directory" or "image archive", or nothing, not the path."""
    empty = images / "empty"
    empty.mkdir()
    text = images / "text.tar"
    text.write_bytes(b"no tar at all\n" * 100)
    plain = images / "plain.tar"
    plain.write_bytes(tb.TarBuilder().file("README", b"hello").build())
    for path, problem in ((empty, "not an image: no index.json"),
                          (text, "not an image archive (OCI layout or docker save tar): "
                                 "not a tar archive"),
                          (plain, "not an image: no index.json")):
        line = assert_one_line_error(run_cli("unpack-image", path, tmp_path / "d"), rc=1)
        assert line.startswith(f"chrootarchive: error: {path}: {problem}"), line
    line = assert_one_line_error(run_cli("unpack-image", "-", tmp_path / "d",
                                         input=b"no tar at all\n" * 100), rc=1)
    assert line.startswith("chrootarchive: error: standard input: not an image archive"), line
    assert not (tmp_path / "d").exists()


# -- hostile images -------------------------------------------------------------------

GOOD = [
    make_tar([Entry("etc/", "dir", mode=0o755), Entry("etc/a", data=b"a\n"),
              Entry("etc/b", data=b"b\n")]),
    make_tar([Entry("etc/.wh.a"), Entry("etc/c", data=b"c\n")]),
]
ZERO = "sha256:" + "0" * 64


@dataclass
class Case:
    """A hostile image, the error it must give, and whether a layer was applied
    before the error could be known (a blob's digest, a DiffID)."""

    build: Callable[[Path, Victim], Path]
    mentions: tuple[str, ...]
    error: type[Exception] = ImageError
    written: bool = False


def _good(root: Path) -> tuple[OCIBuilder, list[dict[str, Any]], dict[str, Any]]:
    b = OCIBuilder(root)
    layers = [b.layer(t, "none") for t in GOOD]
    config = b.config([sha256(t) for t in GOOD])
    return b, layers, config


def _with_manifest(
    root: Path, change: Callable[[OCIBuilder, list[dict[str, Any]], dict[str, Any]], None]
) -> Path:
    b, layers, config = _good(root)
    change(b, layers, config)
    b.tag(b.manifest(config, layers), "x")
    return root


def case_dotdot_digest_in_index(root: Path, victim: Victim) -> Path:
    b, layers, config = _good(root)
    b.manifest(config, layers)
    evil = "sha256:../../../../" + os.path.relpath(victim.secret, "/")
    b.index_manifests.append({"mediaType": OCI_MANIFEST, "digest": evil, "size": 10})
    b.write_index()
    return root


def case_slash_digest_in_layer(root: Path, victim: Victim) -> Path:
    def change(b: OCIBuilder, layers: list[dict[str, Any]], config: dict[str, Any]) -> None:
        layers[1] = {**layers[1], "digest": "sha256:abc/../../../victim/secret"}
    return _with_manifest(root, change)


def case_dotdot_algorithm(root: Path, victim: Victim) -> Path:
    def change(
        b: OCIBuilder, layers: list[dict[str, Any]], config: dict[str, Any]
    ) -> None:
        hexpart = layers[0]["digest"].split(":")[1]
        layers[0] = {**layers[0], "digest": f"..:{hexpart}"}
    return _with_manifest(root, change)


def case_uppercase_digest(root: Path, victim: Victim) -> Path:
    def change(b: OCIBuilder, layers: list[dict[str, Any]], config: dict[str, Any]) -> None:
        layers[0] = {**layers[0], "digest": layers[0]["digest"].upper().replace("SHA", "sha")}
    return _with_manifest(root, change)


def case_layer_digest_mismatch(root: Path, victim: Victim) -> Path:
    """Another tar of the same size under the layer's digest: found at its end."""
    b, layers, config = _good(root)
    evil = make_tar([Entry("evil", data=b"substituted\n")], pad_to=len(GOOD[1]))
    b.path(layers[1]).write_bytes(evil)
    b.tag(b.manifest(config, layers), "x")
    return root


def case_corrupt_gzip_layer(root: Path, victim: Victim) -> Path:
    """A flipped byte: reported as the digest mismatch it is, not as bad gzip."""
    b = OCIBuilder(root)
    layer = b.layer(GOOD[0], "gzip")
    data = bytearray(b.path(layer).read_bytes())
    data[len(data) // 2] ^= 0xFF
    b.path(layer).write_bytes(bytes(data))
    b.tag(b.manifest(b.config([sha256(GOOD[0])]), [layer]), "x")
    return root


def case_size_mismatch(root: Path, victim: Victim) -> Path:
    def change(b: OCIBuilder, layers: list[dict[str, Any]], config: dict[str, Any]) -> None:
        layers[1] = {**layers[1], "size": layers[1]["size"] + 1}
    return _with_manifest(root, change)


def case_diffid_mismatch(root: Path, victim: Victim) -> Path:
    b, layers, _ = _good(root)
    config = b.config([sha256(GOOD[0]), ZERO])
    b.tag(b.manifest(config, layers), "x")
    return root


def case_missing_blob(root: Path, victim: Victim) -> Path:
    b, layers, config = _good(root)
    b.path(layers[1]).unlink()
    b.tag(b.manifest(config, layers), "x")
    return root


def case_missing_config(root: Path, victim: Victim) -> Path:
    b, layers, config = _good(root)
    b.path(config).unlink()
    b.tag(b.manifest(config, layers), "x")
    return root


def _self_index(b: OCIBuilder) -> str:
    """A blob that claims to be the index with digest D and lists D itself."""
    digest = sha256(b"this is not the content")
    size = 0
    for _ in range(3):
        doc = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_INDEX, "digest": digest, "size": size}]})
        size = len(doc)
    b.path(digest).write_bytes(doc)
    b.index_manifests.append({"mediaType": OCI_INDEX, "digest": digest, "size": size})
    b.write_index()
    return digest


def case_index_points_to_itself(root: Path, victim: Victim) -> Path:
    _self_index(OCIBuilder(root))
    return root


def case_indexes_nested_too_deeply(root: Path, victim: Victim) -> Path:
    b, layers, config = _good(root)
    desc = b.manifest(config, layers)
    for _ in range(image_module.MAX_INDEX_DEPTH + 1):
        desc = b.index([desc])
    b.tag(desc, "x")
    return root


def case_index_json_not_json(root: Path, victim: Victim) -> Path:
    b = OCIBuilder(root)
    b.write_index(b"\x00\xffthis is not JSON{")
    return root


def case_manifest_not_json(root: Path, victim: Victim) -> Path:
    b = OCIBuilder(root)
    b.tag(b.blob(b"<html>not json</html>", OCI_MANIFEST), "x")
    return root


def case_deeply_nested_json(root: Path, victim: Victim) -> Path:
    b = OCIBuilder(root)
    b.tag(b.blob(b"[" * 200_000 + b"]" * 200_000, OCI_MANIFEST), "x")
    return root


def case_manifest_wrong_shape(root: Path, victim: Victim) -> Path:
    b = OCIBuilder(root)
    b.tag(b.blob(canonical({"schemaVersion": 2, "layers": "all of them"}), OCI_MANIFEST), "x")
    return root


def case_ten_thousand_layers(root: Path, victim: Victim) -> Path:
    b, layers, _ = _good(root)
    many = [layers[0]] * 10_000
    config = b.config([layers[0]["digest"]] * 10_000)
    b.tag(b.manifest(config, many), "x")
    return root


def case_huge_layer_size(root: Path, victim: Victim) -> Path:
    def change(b: OCIBuilder, layers: list[dict[str, Any]], config: dict[str, Any]) -> None:
        layers[1] = {**layers[1], "size": 1 << 62}
    return _with_manifest(root, change)


def case_huge_manifest_size(root: Path, victim: Victim) -> Path:
    b, layers, config = _good(root)
    desc = b.manifest(config, layers)
    b.tag({**desc, "size": 1 << 62}, "x")
    return root


def case_size_beyond_64_bits(root: Path, victim: Victim) -> Path:
    def change(b: OCIBuilder, layers: list[dict[str, Any]], config: dict[str, Any]) -> None:
        layers[0] = {**layers[0], "size": 1 << 70}
    return _with_manifest(root, change)


def case_unknown_media_type(root: Path, victim: Victim) -> Path:
    def change(b: OCIBuilder, layers: list[dict[str, Any]], config: dict[str, Any]) -> None:
        layers[1] = {**layers[1], "mediaType": "application/vnd.example.evil.tar"}
    return _with_manifest(root, change)


def case_media_type_lies(root: Path, victim: Victim) -> Path:
    """Declared gzip, stored as zstd."""
    b = OCIBuilder(root)
    layer = b.layer(GOOD[0], "zstd", "application/vnd.oci.image.layer.v1.tar+gzip")
    b.tag(b.manifest(b.config([sha256(GOOD[0])]), [layer]), "x")
    return root


def case_not_an_image(root: Path, victim: Victim) -> Path:
    root.mkdir()
    (root / "README").write_text("hello\n")
    return root


def case_breakout_in_layer(root: Path, victim: Victim) -> Path:
    b = OCIBuilder(root)
    evil = make_tar([Entry("../victim/evil", data=b"pwned\n")])
    b.tag(b.image([GOOD[0], evil]), "x")
    return root


def case_blob_symlink_out_of_layout(root: Path, victim: Victim) -> Path:
    """A blob that is a symlink to a victim file whose digest the attacker knows."""
    b = OCIBuilder(root)
    secret = victim.secret.read_bytes()
    layer = b.blob(secret, "application/vnd.oci.image.layer.v1.tar")
    b.path(layer).unlink()
    b.path(layer).symlink_to(os.path.relpath(victim.secret, b.path(layer).parent))
    b.tag(b.manifest(b.config([sha256(secret)]), [layer]), "x")
    return root


def case_blob_absolute_symlink(root: Path, victim: Victim) -> Path:
    b = OCIBuilder(root)
    secret = victim.secret.read_bytes()
    layer = b.blob(secret, "application/vnd.oci.image.layer.v1.tar")
    b.path(layer).unlink()
    b.path(layer).symlink_to(victim.secret)
    b.tag(b.manifest(b.config([sha256(secret)]), [layer]), "x")
    return root


def _dir_layout_stealing(root: Path, victim: Victim, *, index: bool) -> Path:
    """A ``dir:`` layout whose layer blob (``index``: whose image manifest, named by an
    index) is a symlink to a victim file whose digest the attacker knows."""
    root.mkdir()
    secret = victim.secret.read_bytes()
    stolen = {"mediaType": OCI_MANIFEST if index else "application/vnd.oci.image.layer.v1.tar",
              "digest": sha256(secret), "size": len(secret)}
    name = sha256(secret).partition(":")[2] + (".manifest.json" if index else "")
    (root / name).symlink_to(os.path.relpath(victim.secret, root))
    if index:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                               "manifests": [stolen]}
    else:
        config = canonical({"architecture": "amd64", "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": [sha256(secret)]}})
        (root / sha256(config).partition(":")[2]).write_bytes(config)
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [stolen],
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": sha256(config), "size": len(config)}}
    (root / "manifest.json").write_bytes(canonical(doc))
    return root


def case_dir_blob_symlink_out_of_layout(root: Path, victim: Victim) -> Path:
    return _dir_layout_stealing(root, victim, index=False)


def case_dir_manifest_symlink_out_of_layout(root: Path, victim: Victim) -> Path:
    return _dir_layout_stealing(root, victim, index=True)


def _docker_archive(root: Path, layers: list[str], members: dict[str, bytes | str],
                    config: bytes | None = None) -> Path:
    """A docker save tar: ``members`` maps names to data, or to a symlink target."""
    config = config or canonical({"os": "linux", "architecture": "amd64",
                                  "rootfs": {"type": "layers",
                                             "diff_ids": [sha256(GOOD[0])] * len(layers)}})
    config_name = sha256(config).split(":")[1] + ".json"
    root.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root, "w") as tf:
        def add(name: str, value: bytes | str) -> None:
            info = tarfile.TarInfo(name)
            if isinstance(value, str):
                info.type = tarfile.SYMTYPE
                info.linkname = value
                tf.addfile(info)
            else:
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
        add(config_name, config)
        for name, value in members.items():
            add(name, value)
        add("manifest.json", canonical([{"Config": config_name, "RepoTags": ["x:1"],
                                          "Layers": layers}]))
    return root


def case_docker_layer_path_leaves(root: Path, victim: Victim) -> Path:
    return _docker_archive(root.with_suffix(".tar"), ["../../victim/secret"], {})


def case_docker_layer_symlink_absolute(root: Path, victim: Victim) -> Path:
    return _docker_archive(root.with_suffix(".tar"), ["abc/layer.tar"],
                           {"abc/layer.tar": str(victim.secret)})


def case_docker_layer_symlink_loop(root: Path, victim: Victim) -> Path:
    return _docker_archive(root.with_suffix(".tar"), ["a/layer.tar"],
                           {"a/layer.tar": "../b/layer.tar", "b/layer.tar": "../a/layer.tar"})


def _member_data(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(member)
    assert f is not None
    return f.read()


def case_docker_config_tampered(root: Path, victim: Victim) -> Path:
    archive = _docker_archive(root.with_suffix(".tar"), ["l/layer.tar"],
                              {"l/layer.tar": GOOD[0]})
    # Rewrite the config member with other bytes under the same (digest) name.
    with tarfile.open(archive) as tf:
        members = [(m, _member_data(tf, m) if m.isfile() else None)
                   for m in tf.getmembers()]
    with tarfile.open(archive, "w") as tf:
        for m, data in members:
            if m.name.endswith(".json") and m.name != "manifest.json":
                assert data is not None
                data = data.replace(b"amd64", b"AMD64")
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    return archive


def case_docker_diffid_mismatch(root: Path, victim: Victim) -> Path:
    return _docker_archive(root.with_suffix(".tar"), ["l/layer.tar"],
                           {"l/layer.tar": GOOD[1]})


def case_docker_not_a_tar(root: Path, victim: Victim) -> Path:
    path = root.with_suffix(".tar")
    path.write_bytes(os.urandom(4096))
    return path


CASES = {
    "dotdot-digest-in-index": Case(case_dotdot_digest_in_index, ("invalid", "digest")),
    "slash-digest-in-layer": Case(case_slash_digest_in_layer, ("invalid", "digest")),
    "dotdot-algorithm": Case(case_dotdot_algorithm, ("invalid digest",)),
    "uppercase-digest": Case(case_uppercase_digest, ("invalid sha256 digest",)),
    "layer-digest-mismatch": Case(case_layer_digest_mismatch,
                                  ("digest mismatch", "layer 1", "expected sha256:"),
                                  DigestMismatchError, written=True),
    "corrupt-gzip-layer": Case(case_corrupt_gzip_layer, ("digest mismatch", "layer 0"),
                               DigestMismatchError, written=True),
    "size-mismatch": Case(case_size_mismatch, ("size mismatch", "layer 1"),
                          DigestMismatchError),
    "diffid-mismatch": Case(case_diffid_mismatch,
                            ("diffid mismatch", "layer 1", ZERO), DigestMismatchError,
                            written=True),
    "missing-blob": Case(case_missing_blob, ("missing", "layer 1")),
    "missing-config": Case(case_missing_config, ("missing", "config")),
    "index-points-to-itself": Case(case_index_points_to_itself,
                                   ("image index", "digest mismatch"), DigestMismatchError),
    "indexes-nested-too-deeply": Case(case_indexes_nested_too_deeply, ("nested",)),
    "index-json-not-json": Case(case_index_json_not_json, ("index.json", "not valid json")),
    "manifest-not-json": Case(case_manifest_not_json, ("manifest", "not valid json")),
    "deeply-nested-json": Case(case_deeply_nested_json, ("not valid json",)),
    "manifest-wrong-shape": Case(case_manifest_wrong_shape, ("must be a list",)),
    "ten-thousand-layers": Case(case_ten_thousand_layers, ("too many layers", "10,000")),
    "huge-layer-size": Case(case_huge_layer_size, ("size mismatch", str(1 << 62)),
                            DigestMismatchError),
    "huge-manifest-size": Case(case_huge_manifest_size, ("declared size", "limit")),
    "size-beyond-64-bits": Case(case_size_beyond_64_bits, ("invalid size",)),
    "unknown-media-type": Case(case_unknown_media_type,
                               ("unsupported media type", "application/vnd.example.evil.tar",
                                "layer 1")),
    "media-type-lies": Case(case_media_type_lies, ("says gzip", "zstd"), written=False),
    "not-an-image": Case(case_not_an_image, ("not an image", "supported formats")),
    "breakout-in-layer": Case(case_breakout_in_layer, ("layer 1",), BreakoutError,
                              written=True),
    "blob-symlink-out-of-layout": Case(case_blob_symlink_out_of_layout, ("leaves the image",)),
    "blob-absolute-symlink": Case(case_blob_absolute_symlink, ("outside the image",)),
    "dir-blob-symlink-out-of-layout": Case(case_dir_blob_symlink_out_of_layout,
                                           ("leaves the image",)),
    "dir-manifest-symlink-out-of-layout": Case(case_dir_manifest_symlink_out_of_layout,
                                               ("leaves the image",)),
    "docker-layer-path-leaves": Case(case_docker_layer_path_leaves, ("leaves the image",)),
    "docker-layer-symlink-absolute": Case(case_docker_layer_symlink_absolute,
                                          ("outside the image",)),
    "docker-layer-symlink-loop": Case(case_docker_layer_symlink_loop, ("too many levels",)),
    "docker-config-tampered": Case(case_docker_config_tampered,
                                   ("image config", "digest mismatch"), DigestMismatchError),
    "docker-diffid-mismatch": Case(case_docker_diffid_mismatch, ("diffid mismatch", "layer 0"),
                                   DigestMismatchError, written=True),
    "docker-not-a-tar": Case(case_docker_not_a_tar, ("not an image archive",)),
}


def _check_dest(dest: Path, case: Case) -> None:
    if not case.written:
        assert not dest.exists() or os.listdir(dest) == [], (
            f"something was written before the error: {os.listdir(dest)}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_image_api(name: str, images: Path, work: Path, dest: Path,
                           victim: Victim, no_leaks: None) -> None:
    case = CASES[name]
    image = case.build(images / name, victim)
    victim.snap()  # the builders read the victim (for its digest) but change nothing
    started = time.monotonic()
    with pytest.raises(case.error) as info:
        unpack_image(image, dest, platform="linux/amd64")
    elapsed = time.monotonic() - started
    assert isinstance(info.value, ImageError | BreakoutError)
    message = str(info.value).lower()
    for word in case.mentions:
        assert word.lower() in message, f"{word!r} not in {message!r}"
    assert "\n" not in message and len(message) < 2000
    victim.assert_untouched()
    victim.assert_not_read_into(dest)
    _check_dest(dest, case)
    if name == "ten-thousand-layers":
        assert elapsed < 5, f"took {elapsed:.1f}s to refuse"


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_image_cli(name: str, images: Path, work: Path, dest: Path,
                           victim: Victim,
                           run_cli: Callable[..., CLIResult]) -> None:
    case = CASES[name]
    image = case.build(images / name, victim)
    victim.snap()
    result = run_cli("unpack-image", "--platform", "linux/amd64", image, dest)
    assert_one_line_error(result, rc=1, mentions=case.mentions)
    victim.assert_untouched()
    victim.assert_not_read_into(dest)
    _check_dest(dest, case)


def test_index_cycle_is_detected_even_without_digests(images: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A self-referencing index cannot have a correct digest; should verification ever
    let one through, the walk still stops with a cycle error, not a loop."""
    b = OCIBuilder(images / "cycle")
    digest = _self_index(b)
    monkeypatch.setattr(image_documents, "verify_blob", lambda data, desc, what: None)
    with pytest.raises(ImageError, match="cycle") as info:
        unpack_image(b.root, tmp_path / "dest")
    assert digest in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_nesting_up_to_the_limit_is_fine(images: Path, tmp_path: Path) -> None:
    b, layers, config = _good(images / "deep")
    desc = b.manifest(config, layers)
    for _ in range(image_module.MAX_INDEX_DEPTH):
        desc = b.index([desc])
    b.tag(desc, "x")
    unpack_image(b.root, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path / "dest" / "etc")) == ["b", "c"]


def _dir_transport(root: Path, media_type: str, *, schema: int = 2) -> Path:
    """containers/image's ``dir:`` layout (podman save --format docker-dir or oci-dir,
    skopeo copy dir:): one image manifest as manifest.json, a version file, and the
    blobs named by their hex digests."""
    root.mkdir()
    layer = GOOD[0]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    for blob in (layer, config):
        (root / sha256(blob).partition(":")[2]).write_bytes(blob)
    manifest = {"schemaVersion": schema, "mediaType": media_type,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": sha256(config), "size": len(config)},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                            "digest": sha256(layer), "size": len(layer)}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "version").write_text("Directory Transport Version: 1.1\n")
    return root


def _docker_v1(root: Path) -> Path:
    """``docker save`` of Docker before 1.10: 'repositories' and a directory per layer."""
    root.mkdir()
    layer_id = "a" * 64
    (root / layer_id).mkdir()
    (root / layer_id / "layer.tar").write_bytes(GOOD[0])
    (root / layer_id / "json").write_text(json.dumps({"id": layer_id}))
    (root / layer_id / "VERSION").write_text("1.0")
    (root / "repositories").write_text(json.dumps({"example": {"latest": layer_id}}))
    return root


@pytest.mark.parametrize(("kind", "mentions"), [
    ("dir-schema1", ("Docker schema 1", "'dir' layout")),
    ("dir-unknown", ("media type 'application/x-unknown'", "'dir' layout")),
    ("dir-media-type-list", ("media type", "'dir' layout")),
    ("docker-v1", ("Docker before 1.10", "repositories")),
    ("docker-v1-tar", ("Docker before 1.10",)),
    ("empty", ("not an image", "no index.json")),
])
def test_unsupported_format_says_what_is_supported(
        kind: str, mentions: tuple[str, ...], images: Path, tmp_path: Path,
        run_cli: Callable[..., CLIResult]) -> None:
    """An image in a format we do not read gets one line that names it and lists the
    formats that are read, not a parse error (podman save --format docker-dir gave
    "manifest.json must be a non-empty list")."""
    if kind == "dir-schema1":
        image = _dir_transport(images / kind, "application/vnd.docker.distribution."
                                              "manifest.v1+prettyjws", schema=1)
    elif kind == "dir-unknown":
        image = _dir_transport(images / kind, "application/x-unknown")
    elif kind == "dir-media-type-list":
        image = _dir_transport(images / kind, "")
        doc = json.loads((image / "manifest.json").read_bytes())
        (image / "manifest.json").write_text(json.dumps({**doc, "mediaType": [OCI_MANIFEST]}))
    elif kind.startswith("docker-v1"):
        image = _docker_v1(images / "v1")
        if kind.endswith("tar"):
            image = tar_directory(image, images / "v1.tar")
    else:
        image = images / kind
        image.mkdir()
    dest = tmp_path / "dest"
    line = assert_one_line_error(run_cli("unpack-image", image, dest), rc=1,
                                 mentions=("not supported" if kind != "empty" else "",
                                           "supported formats", "OCI image layout",
                                           "docker save", *mentions))
    assert "non-empty list" not in line
    assert not dest.exists()


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, "application/vnd.docker."
                                        "distribution.manifest.v2+json"])
def test_a_dir_layout_is_read(media_type: str, images: Path, tmp_path: Path,
                              run_cli: Callable[..., CLIResult]) -> None:
    """containers/image's ``dir:`` layout (skopeo copy dir:, podman save --format
    docker-dir or oci-dir): one image manifest as manifest.json, its blobs beside it
    named by their digests, read as an OCI layout's are (it was refused). Its manifest
    has no name; its digest is that of manifest.json."""
    image = _dir_transport(images / "dir", media_type)
    digest = sha256((image / "manifest.json").read_bytes())
    rc, out, err = run_cli("unpack-image", "--json", image, tmp_path / "a")
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["format"], doc["manifest_digest"]) == ("dir", digest)
    unpack_image(image, tmp_path / "b", ref=digest)
    assert_same_rootfs(tmp_path / "a", tmp_path / "b")
    line = assert_one_line_error(run_cli("unpack-image", "--ref", "latest", image,
                                         tmp_path / "c"), rc=1,
                                 mentions=("has no names", digest, "leave out --ref"))
    assert "Traceback" not in line
    # A blob that is not what its name says is found as in an OCI layout.
    layer = json.loads((image / "manifest.json").read_bytes())["layers"][0]["digest"]
    blob = image / layer.partition(":")[2]
    blob.write_bytes(blob.read_bytes()[:-1] + b"\1")
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        unpack_image(image, tmp_path / "d")


@pytest.mark.parametrize(("platform", "marker"), [(None, "amd64"), ("linux/arm/v7", "armv7")])
def test_a_dir_layout_of_an_index_chooses_the_platform(
        multiarch: OCIBuilder, images: Path, tmp_path: Path, platform: str | None,
        marker: str) -> None:
    """``skopeo copy --all`` to ``dir:`` writes the index as manifest.json and each image
    manifest as ``DIGEST.manifest.json``: the platform is chosen as in an OCI layout."""
    image = images / "dir"
    skopeo("copy", "--quiet", "--all", f"oci:{multiarch.root}:multi", f"dir:{image}")
    assert "manifests" in json.loads((image / "manifest.json").read_bytes())
    unpack_image(image, tmp_path / "root", platform=platform)
    assert os.listdir(tmp_path / "root") == [marker]
    with pytest.raises(ImageError, match=r"no manifest for platform linux/s390x .*linux/arm64"):
        unpack_image(image, tmp_path / "none", platform="linux/s390x")


def test_digest_check_refuses_names_before_opening() -> None:
    good = "sha256:" + "a" * 64
    assert image_module.check_digest(good, "x") == good
    assert image_module.check_digest("sha512:" + "b" * 128, "x")
    for bad in ("sha256:../../etc/passwd", "sha256:" + "a" * 63, "sha256:" + "A" * 64,
                "sha256:" + "a" * 64 + "\n", "sha256/../x:" + "a" * 64, "md5:" + "a" * 32,
                "sha256:" + "a" * 64 + "/..", "", 42, None, ".." + ":" + "a" * 64):
        with pytest.raises(ImageError):
            image_module.check_digest(bad, "x")


def test_cli_progress_on_a_terminal(images: Path, tmp_path: Path) -> None:
    """On a terminal, one progress line per layer on stderr (tqdm), and a summary; the
    image's ref in it is escaped (a tag with an escape sequence prints no raw ESC)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    b = OCIBuilder(images / "tty")
    tars = [make_tar([Entry(f"f{i}", data=os.urandom(1 << 20))]) for i in range(2)]
    b.tag(b.image(tars, "gzip"), "tty\x1b[32m OK")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "chrootarchive", "unpack-image", b.root, tmp_path / "r"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, timeout=120,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    err = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "layer 1/2" in err and "layer 2/2" in err
    assert "unpacked tty\\x1b[32m OK (" in err and "2 layers" in err
    assert "\x1b[32m" not in err
    assert proc.stdout == b""


def test_the_summary_of_one_layer_says_1_layer(images: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, the line after the bars said "1 layers"."""
    from chrootarchive.cli.main import main

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    b = OCIBuilder(images / "one")
    b.tag(_marker_image(b, "only"), "latest")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["unpack-image", str(b.root), str(tmp_path / "r")]) == 0
    assert "unpacked latest (linux/amd64, 1 layer, " in terminal.getvalue(), terminal.getvalue()


# -- unprivileged ---------------------------------------------------------------------


@pytest.fixture
def nobody_image(umoci_image: UmociImage) -> Iterator[tuple[Path, Path]]:
    """(world-readable copy of the umoci layout, PYTHONPATH for uid 65534)."""
    with world_dir("image") as base:
        layout = base / "layout"
        shutil.copytree(umoci_image.layout, layout)
        for dirpath, _, filenames in os.walk(layout):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        yield layout, make_package_copy(base)


def _as_nobody_mkdir(path: Path) -> None:
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)


def test_unprivileged_matches_umoci_rootless(nobody_image: tuple[Path, Path]) -> None:
    """As uid 65534, ``unpack-image --rootless-xattr`` against ``umoci unpack
    --rootless``: owners that cannot be applied stay the user's and are recorded in
    ``user.rootlesscontainers`` by both, identically. One documented difference: umoci
    writes an empty regular file in place of a device node (``var/null``), chrootarchive
    skips device nodes with a warning, as Docker does in a user namespace. Directory
    mtimes are left out as in :func:`assert_same_rootfs`."""
    layout, pythonpath = nobody_image
    out = layout.parent / "out"
    _as_nobody_mkdir(out)
    result = run_as(["umoci", "unpack", "--rootless", "--image", f"{layout}:latest",
                     out / "umoci"], pythonpath)
    assert result.rc == 0, result.err
    _as_nobody_mkdir(out / "ours")
    result = cli_as(pythonpath, "unpack-image", "--rootless-xattr", "--ref", "latest",
                    layout, out / "ours")
    assert result.rc == 0, result.err
    assert "skipped: creating devices needs real root" in result.err
    expected = tree.snapshot(out / "umoci" / "rootfs")
    actual = tree.snapshot(out / "ours")
    assert expected.pop("var/null")["type"] == "file"
    assert any(info.get("xattrs", {}).get("user.rootlesscontainers")
               for info in actual.values())
    tree.assert_same(expected, actual, "unprivileged unpack differs from umoci --rootless",
                     ignore=lambda path, key: key == "mtime_ns"
                     and expected.get(path, {}).get("type") == "dir")


def test_unprivileged_creates_missing_dest(nobody_image: tuple[Path, Path]) -> None:
    """The destination is created when missing, by an unprivileged user too."""
    layout, pythonpath = nobody_image
    out = layout.parent / "out"
    _as_nobody_mkdir(out)
    result = cli_as(pythonpath, "unpack-image", "-q", "--ref", "latest", layout,
                    out / "new" / "rootfs")
    assert result.rc == 0, result.err
    assert (out / "new" / "rootfs" / "etc" / "hello").read_bytes() == b"hello, changed\n"


# -- the spool: nothing outside the destination grows -----------------------------------
#
# A compressed image archive is read twice (indexed, then the chosen layers spooled)
# and what is spooled goes to an unnamed file on the destination's filesystem, counted
# against max_bytes and under the reserve. Each test mounts a 1 MiB tmpfs as TMPDIR and
# a small tmpfs as the destination's parent, in a private mount namespace of a child.

SPOOL_RUN = """
mount -t tmpfs -o size=1m chrootarchive-tmp "$T" || exit 99
mount -t tmpfs -o "$DOPTS" chrootarchive-dest "$D" || exit 99
if [ -n "$INPUT" ]; then TMPDIR="$T" "$@" <"$INPUT" 2>"$ERR"; rc=$?
else TMPDIR="$T" "$@" 2>"$ERR"; rc=$?; fi
echo "rc=$rc"
echo "tmp_used=$(df -k --output=used "$T" | tail -1 | tr -d ' ')"
echo "dest_used=$(df -k --output=used "$D" | tail -1 | tr -d ' ')"
echo "listing=$(ls -A "$D" | tr '\\n' ' ')"
echo "content=$(cat "$D/rootfs/hello" 2>/dev/null)"
"""


def _spool_run(tmp_path: Path, dest_options: str, *args: str,
               stdin: Path | None = None) -> dict[str, str]:
    """``chrootarchive unpack-image ARGS`` (``D`` stands for the destination's parent)."""
    t, d = tmp_path / "tmpdir", tmp_path / "destfs"
    t.mkdir()
    d.mkdir()
    err = tmp_path / "err"
    argv = [a.replace("@D", str(d)) for a in args]
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", SPOOL_RUN, "sh",
         *CLI, "unpack-image", *argv],
        env={**os.environ, "T": str(t), "D": str(d), "DOPTS": dest_options,
             "ERR": str(err), "INPUT": str(stdin or "")},
        capture_output=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = dict(line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line)
    out["err"] = err.read_text()
    t.rmdir()
    d.rmdir()  # the mounts were the child's: nothing below either
    return out


def _streamed_docker_save(out: Path, layer_file_size: int, *, junk: int = 0,
                          good_digests: bool = True) -> None:
    """A zstd-compressed classic ``docker save`` archive of one layer holding ``hello``
    and ``zeros`` (``layer_file_size`` zero bytes), written as a stream (the layer can
    be far larger than memory should hold); ``junk``: a member of that many zeros that
    no manifest names, before the rest."""
    import zstandard

    layer_head = tb.member("hello", b"hi\n") + tb.header("zeros", size=layer_file_size)
    layer_tail = bytes(-layer_file_size % 512) + bytes(1024)
    layer_size = len(layer_head) + layer_file_size + len(layer_tail)
    if good_digests:
        h = hashlib.sha256(layer_head)
        zeros = bytes(1 << 20)
        left = layer_file_size
        while left:
            h.update(zeros[:min(left, len(zeros))])
            left -= min(left, len(zeros))
        h.update(layer_tail)
        diff_id = "sha256:" + h.hexdigest()
    else:
        diff_id = "sha256:" + "0" * 64  # never reached: refused before
    config = canonical({"architecture": "amd64", "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = canonical([{"Config": config_name, "RepoTags": ["x:1"],
                           "Layers": ["l1/layer.tar"]}])

    def zeros_to(writer: Any, count: int) -> None:
        block = bytes(1 << 20)
        while count:
            writer.write(block[:min(count, len(block))])
            count -= min(count, len(block))

    with out.open("wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as w:
        if junk:
            w.write(tb.header("junk.bin", size=junk))
            zeros_to(w, junk + (-junk % 512))
        w.write(tb.header("l1/layer.tar", size=layer_size))
        w.write(layer_head)
        zeros_to(w, layer_file_size)
        w.write(layer_tail + bytes(-layer_size % 512))
        w.write(tb.member(config_name, config) + tb.member("manifest.json", manifest))
        w.write(bytes(1024))


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_compressed_image_spools_beside_the_destination_not_in_tmpdir(
        tmp_path: Path, source: str) -> None:
    """A compressed image whose layer holds 16 MiB, with a 1 MiB TMPDIR: it unpacks (the
    spool is beside the destination, not in TMPDIR, which stays empty) and the spool is
    gone afterwards (O_TMPFILE)."""
    archive = tmp_path / "image.tar.zst"
    _streamed_docker_save(archive, 16 << 20)
    args = ["-" if source == "stdin" else str(archive), "@D/rootfs"]
    out = _spool_run(tmp_path, "size=128m", *args,
                     stdin=archive if source == "stdin" else None)
    assert out["rc"] == "0", out
    assert out["content"] == "hi", out
    assert out["tmp_used"] == "0", out
    assert out["listing"].split() == ["rootfs"], out
    assert int(out["dest_used"]) < (16 << 10) + 1024, out  # the rootfs alone (KiB)


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_image_bomb_is_refused_before_the_bulk(tmp_path: Path, source: str) -> None:
    """A 30 KB compressed image whose layer is 256 MiB, for a destination on a 64 MiB
    filesystem: the layer's size is checked against the reserve before it is spooled
    (a limit error naming it), TMPDIR stays empty and nothing is left behind; with
    ``--max-bytes`` it is that limit, which the spool counts against."""
    archive = tmp_path / "bomb.tar.zst"
    _streamed_docker_save(archive, 256 << 20, good_digests=False)
    assert archive.stat().st_size < 100_000
    stdin = archive if source == "stdin" else None
    image = "-" if source == "stdin" else str(archive)
    out = _spool_run(tmp_path, "size=64m", image, "@D/rootfs", stdin=stdin)
    assert_one_line_error(CLIResult((int(out["rc"]), "", out["err"])), rc=1,
                          mentions=("limit --reserve", "l1/layer.tar"))
    assert out["tmp_used"] == "0" and out["listing"] == "" and out["dest_used"] == "0", out
    out = _spool_run(tmp_path, "size=1g", "--max-bytes", "100M", image, "@D/rootfs",
                     stdin=stdin)
    assert_one_line_error(CLIResult((int(out["rc"]), "", out["err"])), rc=1,
                          mentions=("limit --max-bytes", "spooled", "l1/layer.tar"))
    assert out["tmp_used"] == "0" and out["listing"] == "" and out["dest_used"] == "0", out


def test_members_no_layer_needs_are_not_spooled(tmp_path: Path) -> None:
    """256 MiB of zeros in a member that no manifest names, then a small image, for a
    destination on a 64 MiB filesystem: only what the plan reads is spooled."""
    archive = tmp_path / "junk.tar.zst"
    _streamed_docker_save(archive, 1 << 20, junk=256 << 20)
    out = _spool_run(tmp_path, "size=64m", str(archive), "@D/rootfs")
    assert out["rc"] == "0", out
    assert out["content"] == "hi" and out["listing"].split() == ["rootfs"], out



def test_a_member_read_through_is_bounded_as_if_spooled(tmp_path: Path) -> None:
    """1.8 MB of bzip2 (128 MiB of zeros in 112 bytes, 16,384 times) hold a member of
    2 TiB that no manifest names: reading through it took hours. Beyond what gzip's
    ratio explains it counts as if spooled, and the limits refuse it at once."""
    import bz2

    info = tarfile.TarInfo("blobs/sha256/" + "cd" * 32)
    info.size = 2 << 40
    zeros = bz2.compress(bytes(128 << 20), 9)
    archive = tmp_path / "bomb.tar.bz2"
    with archive.open("wb") as f:
        f.write(bz2.compress(info.tobuf(format=tarfile.PAX_FORMAT)))
        for _ in range(info.size // (128 << 20)):
            f.write(zeros)
    assert archive.stat().st_size < 2 << 20
    started = time.monotonic()
    result = run_cli("unpack-image", archive, tmp_path / "dest", timeout=120)
    assert_one_line_error(result, rc=1, mentions=("limit --", "blobs/sha256/cdcd"))
    assert time.monotonic() - started < 30
    assert sorted(os.listdir(tmp_path)) == ["bomb.tar.bz2"]  # no spool, no destination


_IMAGE_PEAK = """
import json, resource, sys
import chrootarchive
try:
    chrootarchive.unpack_image(sys.argv[1], sys.argv[2])
    error = None
except chrootarchive.ChrootArchiveError as err:
    error = f"{type(err).__name__}: {err}"
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"error": error, "self": int(hwm[0].split()[1]),
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def test_json_documents_with_too_many_values_are_refused(tmp_path: Path) -> None:
    """A 4 MiB ``manifest.json`` of empty objects (1.4 million values, 118 MB once
    parsed) in a 12 KB archive: refused before it is parsed, within the memory limit."""
    doc = b"[" + b",".join([b"{}"] * ((4 << 20) // 3 - 2)) + b"]"
    assert len(doc) <= image_documents.MAX_JSON_SIZE
    archive = tmp_path / "image.tar.gz"
    archive.write_bytes(gzip.compress(tb.member("manifest.json", doc) + bytes(1024)))
    proc = subprocess.run(
        [CLI[0], "-c", _IMAGE_PEAK, str(archive), str(tmp_path / "rootfs")],
        capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(proc.stdout)
    assert seen["error"].startswith("ImageError") and "too many values" in seen["error"], seen
    assert seen["self"] < 64 * 1024, seen  # KiB
    assert not (tmp_path / "rootfs").exists()
