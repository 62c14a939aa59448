"""Code written for ``tarfile`` and ``shutil``, ported to chrootarchive: ``extractall``'s
``members=`` and ``numeric_owner=`` against CPython's own, ``except tarfile.TarError``,
and three programs ported by following the README and docs alone."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chrootarchive
from helpers import pep706
from helpers import tarbuild as tb
from helpers.victim import Victim

needs_filters = pytest.mark.skipif(not pep706.HAS_FILTERS,
                                   reason="tarfile without filters (Python < 3.11.4)")


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """name -> (type, mode, uid, gid, link target or content digest) below ``root``."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            what: tuple[Any, ...] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            what = ("dir", stat.S_IMODE(st.st_mode))
        else:
            what = ("file", stat.S_IMODE(st.st_mode),
                    hashlib.sha256(path.read_bytes()).hexdigest()[:12])
        out[str(path.relative_to(root))] = (*what, st.st_uid, st.st_gid)
    return out


def archive() -> bytes:
    """Files, directories, links and a ``./`` name, with owners by id and by a name the
    host knows (``root``, ``daemon``) under other ids."""
    return (tb.TarBuilder()
            .dir("d", mode=0o750, uid=1001, gid=1002)
            .file("d/a.txt", b"a", mode=0o640, uid=1003, gid=1004, uname="root", gname="root")
            .file("d/b.txt", b"bb", mode=0o604, uid=1005, gid=1006)
            .dir("d/sub", mode=0o700, uid=1007, gid=1008)
            .file("d/sub/c.txt", b"ccc", mode=0o600, uid=1009, gid=1010,
                  uname="daemon", gname="daemon")
            .file("./top.txt", b"top", mode=0o644, uid=1011, gid=1012)
            .symlink("d/link", "b.txt", uid=1013, gid=1014)
            .hardlink("d/hard", "d/b.txt", mode=0o604, uid=1005, gid=1006)
            .build())


def theirs(data: bytes, dest: Path, **kwargs: Any) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as opened:
        members = kwargs.pop("members", None)
        if callable(members):
            members = members(opened)
        opened.extractall(dest, members, **kwargs)


def _some(opened: tarfile.TarFile) -> list[tarfile.TarInfo]:
    return [m for m in opened.getmembers() if m.name in ("d/b.txt", "./top.txt", "d/link",
                                                          "d/sub/c.txt", "d/hard")]


@needs_filters
@pytest.mark.parametrize("filter", ["data", "tar", "fully_trusted"])
@pytest.mark.parametrize("given", ["TarInfo", "names", "generator"])
def test_members_unpack_what_tarfiles_members_do(tmp_path: Path, filter: str,
                                                 given: str) -> None:
    """The same archive and members through ``tarfile`` and ours: the same tree (the
    parents of a member not listed are made, its directory's other entries are not)."""
    data = archive()
    with tarfile.open(fileobj=io.BytesIO(data)) as opened:
        chosen = _some(opened)
    members: Any = {"TarInfo": chosen, "names": [m.name for m in chosen],
                    "generator": (m for m in chosen)}[given]
    theirs(data, tmp_path / "theirs", members=_some, filter=filter, numeric_owner=True)
    result = chrootarchive.extractall(data, tmp_path / "ours", members, filter=filter)
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    assert sorted(tree(tmp_path / "ours")) == ["d", "d/b.txt", "d/hard", "d/link", "d/sub",
                                               "d/sub/c.txt", "top.txt"]
    assert result.warnings == ()


@pytest.mark.parametrize("members", [["esc", "esc/hello"], ["esc/hello"]])
def test_members_under_every_mechanism_keep_the_jail(
    mechanism: str, work: Path, dest: Path, victim: Victim, members: list[str]
) -> None:
    """Selecting entries changes none of the confinement: a member written through a
    symlink to the victim (selected or not) stays in the destination."""
    hostile = (tb.TarBuilder().symlink("esc", str(victim.root)).file("esc/hello", b"pwned")
               .file("other", b"o").build())
    if "esc" in members:  # the symlink made, then a file through it: refused
        with pytest.raises(chrootarchive.ArchiveError) as caught:
            chrootarchive.extractall(hostile, dest, members, filter="tar", confine=mechanism)
        assert caught.value.entry == "esc/hello" and isinstance(caught.value, tarfile.TarError)
        assert os.readlink(dest / "esc") == str(victim.root)
    else:  # the symlink left out: a directory is made in its place
        chrootarchive.extractall(hostile, dest, members, filter="tar", confine=mechanism)
        assert (dest / "esc" / "hello").read_bytes() == b"pwned"
    victim.assert_untouched()
    assert not (dest / "other").exists()


def test_members_select_a_directory_alone(tmp_path: Path) -> None:
    """As ``tarfile``: a directory named is made, what the archive has below it is not
    (``excludes=`` leaves out a tree; ``members=`` picks entries)."""
    chrootarchive.extractall(archive(), tmp_path / "ours", ["d/sub"])
    assert sorted(tree(tmp_path / "ours")) == ["d", "d/sub"]


def test_members_take_only_the_name_of_a_tarinfo(tmp_path: Path) -> None:
    """A ``TarInfo`` changed by the caller (or forged) selects by its name and nothing
    else: the entry is the archive's, and a name that leaves is refused before any
    work."""
    outside = tmp_path / "victim"
    outside.write_bytes(b"victim")
    forged = tarfile.TarInfo("d/b.txt")
    forged.type = tarfile.SYMTYPE
    forged.linkname = str(outside)
    forged.mode = 0o4777
    chrootarchive.extractall(archive(), tmp_path / "ours", [forged])
    assert tree(tmp_path / "ours")["d/b.txt"][:2] == ("file", 0o604)
    assert (tmp_path / "ours" / "d" / "b.txt").read_bytes() == b"bb"
    climbing = tarfile.TarInfo("../victim")
    with pytest.raises(ValueError, match=r"UnpackOptions.members: '\.\./victim' leaves"):
        chrootarchive.extractall(archive(), tmp_path / "ours2", [climbing])
    assert outside.read_bytes() == b"victim" and not (tmp_path / "ours2").exists()
    with pytest.raises(TypeError, match="members must be an iterable of names"):
        chrootarchive.extractall(archive(), tmp_path / "ours3", "d/b.txt")
    with pytest.raises(TypeError, match="members must hold names"):
        chrootarchive.extractall(archive(), tmp_path / "ours3", [b"d/b.txt"])  # type: ignore[list-item]


def test_a_member_not_in_the_archive_is_an_error_after_the_rest(tmp_path: Path) -> None:
    """``tarfile`` raises ``KeyError`` for a name it does not have; here the worker
    meets the names as it reads, so the error comes at the end, naming the first."""
    with pytest.raises(chrootarchive.ArchiveError) as caught:
        chrootarchive.extractall(archive(), tmp_path / "ours", ["top.txt", "zz/x", "nope"])
    assert caught.value.entry == "zz/x"  # the first given
    assert caught.value.message.startswith(
        "no entry of this name in the archive (members=); 1 more not found; the rest "
        "was unpacked"), caught.value.message
    assert sorted(tree(tmp_path / "ours")) == ["top.txt"]
    with pytest.raises(chrootarchive.ArchiveError):
        chrootarchive.extractall(archive(), tmp_path / "atomic", ["nope"], atomic=True)
    assert not (tmp_path / "atomic").exists()


def test_a_hardlink_to_a_member_left_out_is_left_out(tmp_path: Path) -> None:
    """``tarfile`` copies the target's data to the link's name; the worker has read
    past it by then, so the link is left out, with a warning."""
    result = chrootarchive.extractall(archive(), tmp_path / "ours", ["d/hard", "top.txt"])
    assert sorted(tree(tmp_path / "ours")) == ["d", "top.txt"]
    assert result.warnings == ("1 hardlink left out: the target is not among members= (or "
                               "excluded); tarfile would copy its data there",), result.warnings


@needs_filters
@pytest.mark.skipif(os.geteuid() != 0, reason="owners are set as root only")
@pytest.mark.parametrize("filter", ["tar", "fully_trusted"])
def test_numeric_owner_is_tarfiles_true(tmp_path: Path, filter: str) -> None:
    """Owners are the archive's ids, as ``tarfile``'s ``numeric_owner=True``; its
    ``False`` gives ``d/a.txt`` root's id (the name ``root``): refused here, not
    silently different."""
    data = archive()
    theirs(data, tmp_path / "numeric", filter=filter, numeric_owner=True)
    theirs(data, tmp_path / "by-name", filter=filter, numeric_owner=False)
    chrootarchive.extractall(data, tmp_path / "ours", filter=filter)
    chrootarchive.extractall(data, tmp_path / "ours-true", filter=filter, numeric_owner=True)
    assert tree(tmp_path / "ours") == tree(tmp_path / "numeric") == tree(tmp_path / "ours-true")
    assert tree(tmp_path / "ours")["d/a.txt"][-2:] == (1003, 1004)
    assert tree(tmp_path / "by-name")["d/a.txt"][-2:] == (0, 0)
    with pytest.raises(ValueError, match=r"numeric_owner=False with filter '\w+': "
                                         "chrootarchive sets owners by the archive's numeric"):
        chrootarchive.extractall(data, tmp_path / "refused", filter=filter,
                                 numeric_owner=False)
    assert not (tmp_path / "refused").exists()


@needs_filters
@pytest.mark.parametrize("numeric_owner", [True, False])
def test_numeric_owner_changes_nothing_under_data(tmp_path: Path, numeric_owner: bool) -> None:
    """Under ``data`` no owner is set, by ``tarfile`` or here: either value is taken."""
    data = archive()
    theirs(data, tmp_path / "theirs", filter="data", numeric_owner=numeric_owner)
    chrootarchive.extractall(data, tmp_path / "ours", numeric_owner=numeric_owner)
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")


@pytest.mark.parametrize("via", ["extractall", "shutil"])
def test_archive_errors_are_tarfiles_errors_too(tmp_path: Path, via: str,
                                                shutil_formats: None) -> None:
    """``except tarfile.TarError`` in ported code catches what the archive did wrong,
    still as chrootarchive's class (entry, message, pickling)."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    hostile = tb.TarBuilder().file("ok", b"ok").file("../victim", b"owned").build()
    source = tmp_path / "upload.tar"
    source.write_bytes(hostile)
    if via == "shutil":
        chrootarchive.register_unpack_formats()
    with pytest.raises(tarfile.TarError) as caught:
        if via == "shutil":
            shutil.unpack_archive(source, tmp_path / "dest")
        else:
            chrootarchive.extractall(source, tmp_path / "dest")
    err = caught.value
    assert isinstance(err, chrootarchive.BreakoutError)
    assert err.entry == "../victim"
    assert err.message.startswith("name would leave the destination (what was unpacked")
    assert str(err) == f"../victim: {err.message}"
    assert type(err).__name__ == "BreakoutError"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is chrootarchive.BreakoutError and again.entry == "../victim"
    assert victim.read_bytes() == b"victim"
    # untar is not tarfile's: its errors stay chrootarchive's alone.
    with pytest.raises(chrootarchive.BreakoutError) as plain:
        chrootarchive.untar(source, tmp_path / "untar")
    assert not isinstance(plain.value, tarfile.TarError)


def test_tarfile_is_imported_only_when_an_error_is(tmp_path: Path) -> None:
    """The classes that are also ``TarError`` are made on the way out of a failed
    call: a call that succeeds never imports ``tarfile`` (milliseconds)."""
    good = tmp_path / "good.tar"
    good.write_bytes(tb.TarBuilder().file("a", b"a").build())
    bad = tmp_path / "bad.tar"
    bad.write_bytes(tb.TarBuilder().file("../a", b"a").build())
    code = (
        "import sys, chrootarchive\n"
        f"chrootarchive.extractall({str(good)!r}, {str(tmp_path / 'd1')!r})\n"
        "print('tarfile' in sys.modules)\n"
        f"try: chrootarchive.extractall({str(bad)!r}, {str(tmp_path / 'd2')!r})\n"
        "except chrootarchive.BreakoutError: print('tarfile' in sys.modules)\n")
    env = {**os.environ, "CHROOTARCHIVE_STANDBY": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout
    assert out.split() == ["False", "True"], out


def test_what_a_tarfile_user_passes_first_says_what_to_pass(tmp_path: Path) -> None:
    """An open ``TarFile`` as the source, or a callable filter that picks entries: the
    message names the argument to pass instead."""
    path = tmp_path / "a.tar"
    path.write_bytes(archive())
    with tarfile.open(path) as opened, pytest.raises(
            TypeError, match=r"source must be what tarfile.open\(\) was given \(a path, bytes "
                             r"or a binary file object\), not a tarfile.TarFile"):
        chrootarchive.extractall(opened, tmp_path / "d")  # type: ignore[arg-type]

    def only_text(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        return member if member.name.endswith(".txt") else None

    with pytest.raises(TypeError, match="to pick entries: members=; to leave them out: "
                                        "excludes="):
        chrootarchive.extractall(path, tmp_path / "d", filter=only_text)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()


def is_tar_archive(source: bytes) -> bool:
    """``tarfile.is_tarfile`` as docs/filters.md ports it: the first entry read (or
    none, of an empty archive), or the error that it is none."""
    try:
        next(chrootarchive.list_entries(source), None)
    except chrootarchive.MalformedArchiveError:
        return False
    return True


@pytest.mark.parametrize("name", ["tar", "gzip", "xz", "empty archive", "html", "nothing"])
def test_is_tarfile_ported(tmp_path: Path, name: str) -> None:
    plain = tb.TarBuilder().file("a", b"a" * 5000).build()
    data = {"tar": plain, "gzip": tb.compress(plain, "gzip"), "xz": tb.compress(plain, "xz"),
            "empty archive": b"\0" * 10240, "html": b"<html>" * 200, "nothing": b""}[name]
    path = tmp_path / "x"
    path.write_bytes(data)
    assert is_tar_archive(data) == tarfile.is_tarfile(path) == (name not in ("html", "nothing"))


# -- Three programs, ported -------------------------------------------------------------


def _upload() -> bytes:
    return tb.compress(tb.TarBuilder().dir("site").file("site/index.html", b"<html>")
                       .file("site/run.sh", b"#!/bin/sh", mode=0o4755)
                       .symlink("site/home", "index.html").build(), "gzip")


class UploadRejected(Exception):
    pass


def handle_upload_with_tarfile(body: bytes, dest: Path) -> list[str]:
    """A web upload handler as written today."""
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tf:
            tf.extractall(dest, filter="data")
    except tarfile.TarError as err:
        raise UploadRejected(str(err)) from err
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))


def handle_upload_with_chrootarchive(body: bytes, dest: Path) -> list[str]:
    """The same handler ported by the README: the body is the source (bytes), the
    ``except`` clause is unchanged."""
    try:
        chrootarchive.extractall(body, dest, filter="data",
                                 limits=chrootarchive.Limits.strict())
    except tarfile.TarError as err:
        raise UploadRejected(str(err)) from err
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))


@needs_filters
def test_ported_upload_handler(tmp_path: Path) -> None:
    listed = handle_upload_with_chrootarchive(_upload(), tmp_path / "ours")
    assert listed == handle_upload_with_tarfile(_upload(), tmp_path / "theirs")
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    victim = tmp_path / "etc-passwd"
    victim.write_bytes(b"root:x:0:0")
    hostile = tb.compress(tb.TarBuilder().symlink("p", str(victim)).file("p", b"owned")
                          .build(), "gzip")
    for handler in (handle_upload_with_tarfile, handle_upload_with_chrootarchive):
        with pytest.raises(UploadRejected):
            handler(hostile, tmp_path / handler.__name__)
    assert victim.read_bytes() == b"root:x:0:0"
    with pytest.raises(UploadRejected, match="not a tar archive"):
        handle_upload_with_chrootarchive(b"<html>not an archive</html>", tmp_path / "x")


@pytest.fixture
def shutil_formats() -> Iterator[None]:
    """The registry of shutil's unpack formats, restored after the test."""
    functions = dict(shutil._UNPACK_FORMATS)  # type: ignore[attr-defined]
    yield
    shutil._UNPACK_FORMATS.clear()  # type: ignore[attr-defined]
    shutil._UNPACK_FORMATS.update(functions)  # type: ignore[attr-defined]


def ci_step_fetch_toolchain(archive: Path, dest: Path) -> None:
    """A CI step: unpack a downloaded tool chain, fail the job on a bad download."""
    try:
        shutil.unpack_archive(archive, dest)
    except shutil.ReadError as err:
        raise SystemExit(f"bad download: {err}") from err


@needs_filters
@pytest.mark.filterwarnings("ignore:Python 3.14 will:DeprecationWarning")  # shutil's own
def test_ported_ci_step(tmp_path: Path, shutil_formats: None) -> None:
    """Ported by one line (``register_unpack_formats()``); the step itself unchanged."""
    download = tmp_path / "toolchain.tar.gz"
    download.write_bytes(tb.compress(tb.TarBuilder().file("bin/cc", b"cc", mode=0o755)
                                     .symlink("bin/gcc", "cc").build(), "gzip"))
    ci_step_fetch_toolchain(download, tmp_path / "theirs")  # shutil's own (a warning on 3.14)
    chrootarchive.register_unpack_formats()
    ci_step_fetch_toolchain(download, tmp_path / "ours")
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"<html>404</html>")
    with pytest.raises(SystemExit, match=r"bad download: .*not a tar archive"):
        ci_step_fetch_toolchain(broken, tmp_path / "none")


def read_one_file_with_tarfile(archive: bytes, wanted: str) -> bytes:
    """A script that reads one file out of an archive, unpacking nothing."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        for member in tf.getmembers():
            if member.isfile() and member.name == wanted:
                handle = tf.extractfile(member)
                assert handle is not None
                return handle.read()
    raise KeyError(wanted)


def read_one_file_with_chrootarchive(archive: bytes, wanted: str, scratch: Path) -> bytes:
    """Ported by the docs: ``list_entries`` for ``getmembers()``, then ``members=``
    to unpack the one entry confined into a scratch directory and read it there."""
    for entry in chrootarchive.list_entries(archive):
        if entry.kind == "file" and entry.name == wanted:
            chrootarchive.extractall(archive, scratch, [entry.name])
            return (scratch / wanted).read_bytes()
    raise KeyError(wanted)


def test_ported_member_reader(tmp_path: Path) -> None:
    data = tb.compress(tb.TarBuilder().file("README", b"read me").file("pkg/setup.cfg", b"[x]")
                       .file("pkg/big.bin", b"\0" * 100_000).build(), "xz")
    assert read_one_file_with_chrootarchive(data, "pkg/setup.cfg", tmp_path / "s") == \
        read_one_file_with_tarfile(data, "pkg/setup.cfg") == b"[x]"
    assert sorted(tree(tmp_path / "s")) == ["pkg", "pkg/setup.cfg"]
    with pytest.raises(KeyError):
        read_one_file_with_chrootarchive(data, "nope", tmp_path / "n")
