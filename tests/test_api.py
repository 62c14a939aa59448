"""One API: source before destination, keyword shortcuts beside an options object,
bytes as a source, one result type, cumulative progress, and the calls a Python
developer knows (``extractall`` like tarfile's, ``shutil.unpack_archive``)."""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import BreakoutError, LimitExceededError, Limits, UnpackOptions
from helpers import pep706
from helpers import tarbuild as tb


def small() -> bytes:
    return (tb.TarBuilder().file("keep/a.txt", b"a" * 3000, mode=0o4755)
            .file("skip/b.txt", b"b").build())


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like_sources(tmp_path: Path, kind: type) -> None:
    result = chrootarchive.untar(kind(tb.compress(small(), "gzip")), tmp_path / "d")
    assert result.entries == 2
    assert (tmp_path / "d" / "keep" / "a.txt").read_bytes() == b"a" * 3000


class _Digesting(io.RawIOBase):
    """A caller's reader that counts (as it might hash) what it gives, and passes its
    file's ``fileno`` and ``tell`` on, as thin wrappers do."""

    def __init__(self, inner: io.BufferedReader) -> None:
        self.inner, self.given = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = self.inner.readinto(buffer)
        self.given += count
        return count

    def fileno(self) -> int:
        return self.inner.fileno()

    def tell(self) -> int:
        return self.inner.tell()


@pytest.mark.parametrize("call", ["untar", "list_entries"])
def test_a_file_object_that_is_not_a_plain_file_is_read_through(tmp_path: Path,
                                                                call: str) -> None:
    """Only a file the standard library opened is read by its descriptor (the worker's
    own reads, a listing's lseek): another object's ``fileno`` may be that of what it
    reads from (``gzip.open``'s: the compressed file), and a caller's wrapper must see
    every byte it checks. Both were read by descriptor, the wrapper bypassed."""
    archive = tmp_path / "a.tar"
    archive.write_bytes(small())
    (tmp_path / "a.tar.gz").write_bytes(tb.compress(small(), "gzip"))

    def run(source: object, name: str, **kw: object) -> list[str]:
        if call == "untar":
            chrootarchive.untar(source, tmp_path / name, **kw)  # type: ignore[arg-type]
            return sorted(str(p.relative_to(tmp_path / name))
                          for p in (tmp_path / name).rglob("*.txt"))
        return sorted(e.name for e in chrootarchive.list_entries(source, **kw))  # type: ignore[arg-type]

    import gzip

    with gzip.open(tmp_path / "a.tar.gz") as unzipped:
        assert run(unzipped, "g", detect_compression=False) == ["keep/a.txt", "skip/b.txt"]
    with open(archive, "rb") as plain:
        wrapper = _Digesting(plain)
        assert run(wrapper, "w") == ["keep/a.txt", "skip/b.txt"]
    assert wrapper.given == archive.stat().st_size


@pytest.mark.parametrize("call", ["untar", "extractall"])
def test_a_path_given_as_bytes_is_told_from_an_archive(tmp_path: Path, call: str) -> None:
    """``tarfile.open(b"/srv/upload.tar")`` opens that path; here bytes are the archive
    itself. Bytes that name a file got "not a tar archive" and nothing more: the error
    says that they are a path, and how to give one."""
    archive = tmp_path / "upload.tar"
    archive.write_bytes(small())
    with pytest.raises(chrootarchive.MalformedArchiveError) as caught:
        getattr(chrootarchive, call)(os.fsencode(archive), tmp_path / "dest")
    assert str(caught.value).startswith("not a tar archive; the bytes given are the archive "
                                        "itself, and these name a file"), caught.value
    assert "os.fsdecode(path)" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "dest").exists()
    with pytest.raises(chrootarchive.MalformedArchiveError) as other:  # not a path: as before
        chrootarchive.untar(b"no such file" * 50, tmp_path / "dest")
    assert str(other.value) == "not a tar archive"


def test_keyword_shortcuts_change_the_options(tmp_path: Path) -> None:
    base = UnpackOptions(excludes=("nothing",))
    result = chrootarchive.untar(small(), tmp_path / "d", base, filter="tar",
                                 excludes=["skip"])
    assert result.entries == 2  # excluded entries are counted, as Docker counts them
    assert not (tmp_path / "d" / "skip").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "keep" / "a.txt").st_mode) == 0o755
    assert base.excludes == ("nothing",)  # the caller's object is not changed
    with pytest.raises(LimitExceededError):
        chrootarchive.untar(small(), tmp_path / "e", limits=Limits(max_entries=1))
    with pytest.raises(ValueError, match="filter"):
        chrootarchive.untar(small(), tmp_path / "f", filter="trusting")
    with pytest.raises(TypeError, match="excludes"):
        chrootarchive.untar(small(), tmp_path / "f", excludes="skip")  # a lone string
    assert not (tmp_path / "f").exists()


def test_apply_layer_takes_source_first_and_returns_the_result(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    chrootarchive.untar(tb.TarBuilder().file("gone", b"x").build(), dest)
    layer = tb.TarBuilder().file(".wh.gone").file("new", b"12345").build()
    result = chrootarchive.apply_layer(layer, dest)
    assert isinstance(result, chrootarchive.UnpackResult)
    assert result.size == 5 and result.entries == 2
    assert sorted(os.listdir(dest)) == ["new"]
    same = chrootarchive.apply_uncompressed_layer(layer, tmp_path / "other")
    assert same.size == 5


def test_one_result_type() -> None:
    """Every operation's result is a Result; an image's is an UnpackResult over all of
    its layers, with what an image adds."""
    assert issubclass(chrootarchive.UnpackResult, chrootarchive.Result)
    assert issubclass(chrootarchive.PackResult, chrootarchive.Result)
    assert issubclass(chrootarchive.ImageResult, chrootarchive.UnpackResult)
    image = chrootarchive.ImageResult(
        format="oci", manifest_digest=None, config_digest="sha256:0", ref=None,
        platform="linux/amd64", layers=(), entries=3)
    document = image.to_json()
    assert document["entries"] == 3 and document["privileged"] == {}
    assert document["layers"] == [] and document["format"] == "oci"


def test_progress_is_cumulative(tmp_path: Path) -> None:
    data = tb.TarBuilder().file("big", os.urandom(3 << 20)).build()
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(tb.compress(data, "gzip"))
    seen: list[int] = []
    chrootarchive.untar(archive, tmp_path / "d", progress=seen.append)
    assert seen and seen == sorted(seen)
    assert seen[-1] == archive.stat().st_size
    seen.clear()
    with chrootarchive.tar(tmp_path / "d", progress=seen.append) as stream:
        total = len(stream.read())
    assert seen == sorted(seen) and seen[-1] == total


def test_extractall_reads_like_tarfile(tmp_path: Path) -> None:
    """The defaults of tarfile's extractall from Python 3.14: filter "data"."""
    data = modes = (tb.TarBuilder().file("bin/su", b"su", mode=0o4755, uid=1000)
                    .dir("shared", mode=0o2777).file("f", b"f", mode=0o070).build())
    ours = tmp_path / "ours"
    chrootarchive.extractall(data, ours)
    theirs = tmp_path / "tarfile"
    if pep706.HAS_FILTERS:  # Python 3.11.4 and later
        with tarfile.open(fileobj=io.BytesIO(modes)) as archive:
            archive.extractall(theirs, filter="data")
        for name in ("bin/su", "shared", "f"):
            a, b = os.lstat(ours / name), os.lstat(theirs / name)
            assert (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid), name
    link = tb.TarBuilder().symlink("l", "/etc/passwd").build()
    with pytest.raises(BreakoutError):
        chrootarchive.extractall(link, tmp_path / "link")
    chrootarchive.extractall(link, tmp_path / "trusted", filter="fully_trusted")
    assert os.readlink(tmp_path / "trusted" / "l") == "/etc/passwd"
    # filter=None is the default, as in tarfile 3.14 (it was fully_trusted, silently);
    # with options, theirs (the keyword's default overrode them: fuzzing, issue 16).
    with pytest.raises(BreakoutError):
        chrootarchive.extractall(link, tmp_path / "none", filter=None)
    chrootarchive.extractall(link, tmp_path / "options",
                             options=chrootarchive.UnpackOptions(filter="tar"))
    assert os.readlink(tmp_path / "options" / "l") == "/etc/passwd"
    # Options given for something else leave the filter at their default, Docker's
    # fully_trusted, which cannot be told from a choice: data still (it was
    # fully_trusted, so the absolute symlink and a setuid bit were kept).
    for unrelated in (UnpackOptions(limits=Limits.strict()), UnpackOptions()):
        with pytest.raises(BreakoutError):
            chrootarchive.extractall(link, tmp_path / "unrelated", options=unrelated)
    chrootarchive.extractall(data, tmp_path / "strict", options=UnpackOptions(
        limits=Limits.strict()))
    assert stat.S_IMODE(os.lstat(tmp_path / "strict" / "bin" / "su").st_mode) == 0o755


def directory_then_file() -> tuple[bytes, bytes]:
    """An archive that makes ``d/keep.txt``, and one whose file ``d`` meets it."""
    return (tb.TarBuilder().dir("d").file("d/keep.txt", b"precious").build(),
            tb.TarBuilder().file("d", b"now a file").build())


def test_extractall_keeps_a_directory_a_file_meets(tmp_path: Path) -> None:
    """tarfile's extractall (3.11 to 3.13, filter "data") raises IsADirectoryError and
    GNU tar "Cannot open: File exists" where a file of the archive meets a directory:
    extractall fails too, with an error that is also an IsADirectoryError (code that
    caught tarfile's still does), and keeps the directory with what it holds (untar
    replaces it, as Docker). The keyword asks for Docker's way; options cannot, by
    accident."""
    first, second = directory_then_file()
    theirs = tmp_path / "tarfile"
    if pep706.HAS_FILTERS:  # Python 3.11.4 and later
        with tarfile.open(fileobj=io.BytesIO(first)) as opened:
            opened.extractall(theirs, filter="data")
        with (tarfile.open(fileobj=io.BytesIO(second)) as opened,
              pytest.raises(IsADirectoryError)):
            opened.extractall(theirs, filter="data")
        assert (theirs / "d" / "keep.txt").read_bytes() == b"precious"
    dest = tmp_path / "ours"
    chrootarchive.extractall(first, dest)
    with pytest.raises(IsADirectoryError) as caught:
        chrootarchive.extractall(second, dest)
    err = caught.value
    assert isinstance(err, chrootarchive.DestinationError) and err.errno == errno.EISDIR
    assert (err.entry, err.message) == (
        "d", "cannot replace existing directory (no_overwrite_dir_nondir=True)")
    with pytest.raises(IsADirectoryError):
        chrootarchive.extractall(second, dest, options=UnpackOptions(strip_components=0))
    assert (dest / "d" / "keep.txt").read_bytes() == b"precious"
    # The reverse: a directory of the archive meets a file (os.mkdir's error).
    with pytest.raises(FileExistsError, match="existing non-directory"):
        chrootarchive.extractall(tb.TarBuilder().dir("keep.txt").build(), dest / "d")
    assert (dest / "d" / "keep.txt").read_bytes() == b"precious"
    # Asked for: Docker's way, as untar does by default.
    chrootarchive.extractall(second, dest, no_overwrite_dir_nondir=False)
    assert (dest / "d").read_bytes() == b"now a file"
    chrootarchive.untar(first, dest)
    chrootarchive.untar(second, dest)
    assert (dest / "d").read_bytes() == b"now a file"


def test_arguments_of_the_wrong_kind_are_type_errors_before_anything_is_made(
        tmp_path: Path) -> None:
    """What a tarfile user passes first (an open TarFile, a file opened in text mode,
    tarfile's callable filter, untar's third argument read as the filter) is a
    TypeError that says what to pass, and no destination is made: they were
    AttributeError or UnicodeDecodeError from deep inside, after DEST was created."""
    archive = tmp_path / "a.tar"
    archive.write_bytes(small())
    dest = tmp_path / "dest"
    with tarfile.open(archive) as opened, pytest.raises(TypeError, match=r"tarfile\.TarFile"):
        chrootarchive.extractall(opened, dest)  # type: ignore[arg-type]
    with open(archive) as text, pytest.raises(TypeError, match="open it with 'rb'"):
        chrootarchive.untar(text, dest)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="binary file object"):
        chrootarchive.apply_layers([small(), 5], dest)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="options must be an UnpackOptions or None, not str"):
        chrootarchive.untar(small(), dest, "data")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not dict"):
        chrootarchive.extractall(small(), dest, options={"atomic": True})  # type: ignore[arg-type]
    if pep706.HAS_FILTERS:  # Python 3.11.4 and later
        with pytest.raises(TypeError, match=r"not a callable \(data_filter\).*jailed worker"):
            chrootarchive.extractall(small(), dest, filter=tarfile.data_filter)  # type: ignore[arg-type]
    # Packing and copying too (an empty dict passed unnoticed).
    with pytest.raises(TypeError, match="options must be a PackOptions or None, not dict"):
        chrootarchive.tar(tmp_path, options={"compression": "gzip"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be an UnpackOptions or None, not dict"):
        chrootarchive.copy_path(archive, dest, options={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pack_options must be a PackOptions or None"):
        chrootarchive.copy_path(archive, dest, pack_options={})  # type: ignore[arg-type]
    assert not dest.exists()


@pytest.fixture
def shutil_formats() -> Iterator[None]:
    """The registry of shutil's unpack formats, restored after the test."""
    saved = {name: (exts, desc) for name, exts, desc in shutil.get_unpack_formats()}
    functions = dict(shutil._UNPACK_FORMATS)  # type: ignore[attr-defined]
    yield
    shutil._UNPACK_FORMATS.clear()  # type: ignore[attr-defined]
    shutil._UNPACK_FORMATS.update(functions)  # type: ignore[attr-defined]
    assert {n for n, _, _ in shutil.get_unpack_formats()} == set(saved)


def rootfs_with_device() -> bytes:
    return (tb.TarBuilder().chardev("dev/null", 1, 3).file("etc/hostname", b"box\n")
            .build())


def test_shutil_unpack_archive_uses_the_confined_engine(tmp_path: Path,
                                                        shutil_formats: None) -> None:
    """tarfile's data filter refuses a device node; ours drops it (counted). The same
    call through shutil tells which engine ran. Before Python 3.11.4, shutil takes no
    ``filter=``, and its own tarfile would make the device node as root: ours drops it."""
    archive = tmp_path / "upload.tar.gz"
    archive.write_bytes(tb.compress(rootfs_with_device(), "gzip"))
    if pep706.HAS_FILTERS:
        with pytest.raises(tarfile.SpecialFileError):
            shutil.unpack_archive(archive, tmp_path / "before", filter="data")
    chrootarchive.register_unpack_formats()
    chrootarchive.register_unpack_formats()  # twice: no error
    # No filter given: data, as tarfile's default from Python 3.14.
    shutil.unpack_archive(archive, tmp_path / "default")
    assert (tmp_path / "default" / "etc" / "hostname").read_bytes() == b"box\n"
    assert not (tmp_path / "default" / "dev" / "null").exists()
    if pep706.HAS_FILTERS:
        shutil.unpack_archive(archive, tmp_path / "after", filter="data")
        assert (tmp_path / "after" / "etc" / "hostname").read_bytes() == b"box\n"
        assert not (tmp_path / "after" / "dev" / "null").exists()
        # fully_trusted: the device node is made (as root).
        shutil.unpack_archive(archive, tmp_path / "trusted", filter="fully_trusted")
        assert stat.S_ISCHR(os.lstat(tmp_path / "trusted" / "dev" / "null").st_mode)
    # zstd, which shutil did not know before Python 3.14.
    zst = tmp_path / "upload.tar.zst"
    zst.write_bytes(tb.compress(rootfs_with_device(), "zstd"))
    shutil.unpack_archive(zst, tmp_path / "zst")
    assert (tmp_path / "zst" / "etc" / "hostname").exists()
    names = {name for name, _, _ in shutil.get_unpack_formats()}
    assert {"tar", "gztar", "bztar", "xztar", "zstdtar"} <= names


# shutil's own unpacker, called without a filter on purpose (its default is compared):
# Python 3.12 and 3.13 warn that 3.14 will filter.
@pytest.mark.filterwarnings("ignore:Python 3.14 will:DeprecationWarning")
def test_shutil_keeps_a_directory_a_file_meets(tmp_path: Path,
                                              shutil_formats: None) -> None:
    """shutil's own unpacker (tarfile) raises IsADirectoryError there: so does ours, an
    error that keeps the directory, not a replacement that deletes what it holds."""
    first, second = directory_then_file()
    archives = tmp_path / "first.tar", tmp_path / "second.tar"
    archives[0].write_bytes(first)
    archives[1].write_bytes(second)
    shutil.unpack_archive(archives[0], tmp_path / "theirs")
    with pytest.raises(IsADirectoryError):
        shutil.unpack_archive(archives[1], tmp_path / "theirs")
    chrootarchive.register_unpack_formats()
    shutil.unpack_archive(archives[0], tmp_path / "ours")
    with pytest.raises(IsADirectoryError, match="cannot replace existing directory"):
        shutil.unpack_archive(archives[1], tmp_path / "ours")
    assert (tmp_path / "ours" / "d" / "keep.txt").read_bytes() == b"precious"


@pytest.mark.parametrize("data", [b"", b"plain text, no tar at all\n" * 40,
                                  tb.compress(b"gzip'ed text, no tar\n" * 40, "gzip")],
                         ids=["empty", "text", "gzip-text"])
def test_shutil_not_a_tar_archive_is_a_read_error(tmp_path: Path, shutil_formats: None,
                                                  data: bytes) -> None:
    """shutil's own unpackers raise ReadError for a file that is no tar archive: code
    catches that. Ours raise one error that is both theirs and chrootarchive's."""
    archive = tmp_path / "upload.tar"
    archive.write_bytes(data)
    chrootarchive.register_unpack_formats()
    with pytest.raises(shutil.ReadError) as caught:
        shutil.unpack_archive(archive, tmp_path / "d")
    err = caught.value
    assert isinstance(err, chrootarchive.MalformedArchiveError)
    assert "not a tar archive" in str(err)
    assert type(err.__cause__) is chrootarchive.MalformedArchiveError
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err)
    # Other errors stay chrootarchive's alone.
    archive.write_bytes(tb.TarBuilder().file("a", b"x" * 3000).build()[:1500])
    with pytest.raises(chrootarchive.MalformedArchiveError) as malformed:
        shutil.unpack_archive(archive, tmp_path / "e")
    assert not isinstance(malformed.value, shutil.ReadError)
    archive.write_bytes(tb.TarBuilder().file("../x", b"x").build())
    with pytest.raises(BreakoutError) as broke:
        shutil.unpack_archive(archive, tmp_path / "f")
    assert not isinstance(broke.value, shutil.ReadError)


@pytest.mark.parametrize("where", ["dest", "atomic", "root", "dest-in-root"])
def test_a_file_as_the_destination_is_a_not_a_directory_error(tmp_path: Path,
                                                              where: str) -> None:
    """As ``os.mkdir``'s error would be: the other destination errors carry their errno
    (the CHANGELOG's promise), and this one had none (``except NotADirectoryError``
    missed it)."""
    regular = tmp_path / "file"
    regular.write_bytes(b"not a directory")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "inside").write_bytes(b"not a directory")
    call: Callable[[], object] = {
        "dest": lambda: chrootarchive.extractall(small(), regular),
        "atomic": lambda: chrootarchive.extractall(small(), regular, atomic=True),
        "root": lambda: chrootarchive.untar(small(), "d", root=regular),
        "dest-in-root": lambda: chrootarchive.untar(small(), "inside",
                                                    root=tmp_path / "root"),
    }[where]
    with pytest.raises(NotADirectoryError) as caught:
        call()
    err = caught.value
    assert isinstance(err, chrootarchive.DestinationError)
    assert err.errno == errno.ENOTDIR and err.message == "not a directory", err
    assert regular.read_bytes() == b"not a directory"


def test_atomic_with_root_is_a_value_error(tmp_path: Path) -> None:
    """Arguments that do not go together raise ValueError (as ``apply_layers([])`` or a
    limit out of its range), before anything is read or created: it was a
    DestinationError (an OSError, exit status 4's class) raised after the checks."""
    root = tmp_path / "root"
    root.mkdir()
    archive = tb.TarBuilder().file("a", b"x").build()
    calls: list[Callable[[], object]] = [
        lambda: chrootarchive.untar(archive, "dest", atomic=True, root=root),
        lambda: chrootarchive.untar_with_root(archive, "dest", root,
                                              UnpackOptions(atomic=True)),
        lambda: chrootarchive.untar(str(tmp_path / "missing.tar"), "dest", atomic=True,
                                    root=root),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="atomic=True is not available with root=") \
                as caught:
            call()
        assert not isinstance(caught.value, chrootarchive.ChrootArchiveError)
    assert os.listdir(root) == []
