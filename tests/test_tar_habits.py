"""tar's habits on the command line, compared with GNU tar where it defines them:
``-C DIR``, ``--strip-components``, ``--keep-old-files``/``--skip-old-files``, and
``chrootarchive list`` (``tar -t``, ``tar -tv``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import UnpackOptions
from helpers import tarbuild as tb
from helpers.cli import assert_one_line_error, run_cli


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """name -> (kind, content or target, mode), plus which names share an inode."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[name] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[name] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
            inodes.setdefault(st.st_ino, []).append(name)
    out["<hardlinks>"] = tuple(sorted(tuple(v) for v in inodes.values() if len(v) > 1))
    return out


def strip_archive() -> bytes:
    b = tb.TarBuilder()
    b.dir("./")
    b.dir("./top/")
    b.file("./top/a", b"a")
    b.dir("./top/sub/")
    b.file("./top/sub/deep", b"deep", mode=0o600)
    b.dir("./top/sub/more/")
    b.file("./top/sub/more/deepest", b"deepest")
    b.file("shallow", b"shallow")
    b.file("plain/x", b"x")
    b.file("/abs/y", b"y")
    b.hardlink("./top/hard-deep", "./top/sub/deep")
    b.hardlink("plain/hard-x", "plain/x")
    b.symlink("./top/sub/more/rel", "../deep")  # stays inside up to 3 stripped
    b.symlink("./top/abs", "/etc/passwd")
    return b.build()


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_strip_components_as_gnu_tar(tmp_path: Path, count: int) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(strip_archive())
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(gnu),
                    f"--strip-components={count}"], check=True, capture_output=True)
    ours = tmp_path / "ours"
    result = run_cli("untar", "--strip-components", str(count), archive, ours)
    assert result.rc == 0, result.err
    ours.mkdir(exist_ok=True)
    mine, theirs = snapshot(ours), snapshot(gnu)
    assert mine == theirs


@pytest.mark.parametrize("pattern", ["top/sub", "sub", "more/rel", "top/*", "./top/a*"])
def test_tar_style_excludes_see_the_name_before_stripping(tmp_path: Path, pattern: str) -> None:
    """GNU tar matches ``--exclude`` against the name as stored, before
    ``--strip-components`` (and, unanchored, any tail of it): ``top/sub`` still
    excludes what ``--strip-components 1`` writes as ``sub``. It matched nothing."""
    archive = tmp_path / "a.tar"
    archive.write_bytes(strip_archive())
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    # GNU tar exits 2 where a hardlink's target was left out (we warn): the trees agree.
    subprocess.run(["tar", "-xf", str(archive), "-C", str(gnu), "--strip-components=1",
                    f"--exclude={pattern}"], check=False, capture_output=True)
    ours = tmp_path / "ours"
    result = run_cli("untar", "--strip-components", "1", "--exclude-style", "tar",
                     "--exclude", pattern, archive, ours)
    assert result.rc == 0, result.err
    ours.mkdir(exist_ok=True)
    assert snapshot(ours) == snapshot(gnu)
    whole = tmp_path / "whole"
    whole.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(whole), "--strip-components=1"],
                   check=True, capture_output=True)
    assert snapshot(gnu) != snapshot(whole)  # the pattern left something out


def test_strip_components_never_makes_a_name_absolute(tmp_path: Path) -> None:
    """GNU tar 1.34 strips ``a//b/c`` of one component to ``/b/c`` and writes it at the
    filesystem's root, outside -C (seen while writing this test). Here a run of
    slashes is one separator, the name stays inside DEST, and the jail would hold it
    anyway."""
    unique = f"chrootarchive-strip-{os.getpid()}"
    data = tb.TarBuilder().file(f"top//{unique}/z", b"z").build()
    result = chrootarchive.untar(data, tmp_path / "d", UnpackOptions(strip_components=1))
    assert result.entries == 1
    assert (tmp_path / "d" / unique / "z").read_bytes() == b"z"
    assert not os.path.lexists(f"/{unique}")


def test_strip_components_hardlink_to_a_stripped_name(tmp_path: Path) -> None:
    """GNU tar cannot make it either ("Cannot hard link to ''", status 2)."""
    data = tb.TarBuilder().file("top/f", b"f").file("shallow", b"s") \
        .hardlink("top/h", "shallow").build()
    archive = tmp_path / "a.tar"
    archive.write_bytes(data)
    (tmp_path / "gnu").mkdir()
    gnu = subprocess.run(["tar", "-xf", str(archive), "-C", str(tmp_path / "gnu"),
                          "--strip-components=1"], capture_output=True, check=False)
    assert gnu.returncode == 2 and b"Cannot hard link" in gnu.stderr
    result = run_cli("untar", "--strip-components", "1", archive, tmp_path / "ours")
    assert result.rc == 1
    assert result.err.strip().startswith(
        "chrootarchive: error: top/h: hardlink target shallow has no more than 1 "
        "components (--strip-components)")


def test_strip_components_through_the_api(tmp_path: Path) -> None:
    result = chrootarchive.untar(strip_archive(), tmp_path / "d",
                                 UnpackOptions(strip_components=2))
    assert (tmp_path / "d" / "sub" / "deep").read_bytes() == b"deep"
    assert result.entries == 14  # every entry is read, stripped or not
    with pytest.raises(ValueError, match="strip_components"):
        UnpackOptions(strip_components=-1)


def test_dash_c_is_the_destination(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    archive = write_archive(tb.TarBuilder().file("f", b"1").build())
    assert run_cli("untar", "-C", tmp_path / "c", archive).rc == 0
    assert run_cli("untar", archive, tmp_path / "p").rc == 0
    assert snapshot(tmp_path / "c") == snapshot(tmp_path / "p")
    for argv in (["-C", tmp_path / "x", archive, tmp_path / "y"], [archive]):
        result = run_cli("untar", *argv)
        assert result.rc == 2, result
        assert "give the destination once: as DEST or with -C DIR" in result.err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def existing(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    (dest / "dir").mkdir(parents=True)
    (dest / "dir" / "old").write_bytes(b"mine")
    return dest


def new_archive() -> bytes:
    return (tb.TarBuilder().dir("dir", mode=0o700).file("dir/old", b"theirs")
            .file("dir/new", b"new").build())


def test_keep_old_files_refuses_to_replace(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    """As GNU tar's -k: an existing file is kept and is an error, and the rest of the
    archive is unpacked all the same (it stopped at the first)."""
    dest = existing(tmp_path)
    (dest / "also").write_bytes(b"mine too")
    archive = write_archive(tb.TarBuilder().dir("dir", mode=0o700).file("dir/old", b"theirs")
                            .file("dir/new", b"new").file("also", b"theirs")
                            .file("last", b"last").build())
    result = run_cli("untar", "--keep-old-files", archive, dest)
    assert result.rc == 4, result
    assert result.err.strip() == ("chrootarchive: error: dir/old: exists, and old files "
                                  "are kept (--keep-old-files; 1 more kept); the rest was "
                                  "unpacked")
    assert (dest / "dir" / "old").read_bytes() == b"mine"
    assert (dest / "also").read_bytes() == b"mine too"
    assert (dest / "dir" / "new").read_bytes() == b"new"
    assert (dest / "last").read_bytes() == b"last"
    gnu = existing(tmp_path / "gnu")
    (gnu / "also").write_bytes(b"mine too")
    proc = subprocess.run(["tar", "-xkf", str(archive), "-C", str(gnu)],
                          capture_output=True, check=False)
    assert proc.returncode == 2
    assert snapshot(dest) == snapshot(gnu)
    with pytest.raises(FileExistsError):
        chrootarchive.untar(new_archive(), dest, UnpackOptions(old_files="keep"))


def test_skip_old_files_as_gnu_tar(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    archive = write_archive(new_archive())
    ours = existing(tmp_path / "ours")
    result = run_cli("untar", "--skip-old-files", archive, ours)
    assert result.rc == 0 and result.err == "", result
    gnu = existing(tmp_path / "gnu")
    subprocess.run(["tar", "-xf", str(archive), "--skip-old-files", "-C", str(gnu)],
                   check=True)
    assert snapshot(ours) == snapshot(gnu)
    assert (ours / "dir" / "old").read_bytes() == b"mine"
    assert (ours / "dir" / "new").read_bytes() == b"new"


def test_keep_and_skip_exclude_each_other(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(new_archive())
    result = run_cli("untar", "-k", "--skip-old-files", archive, tmp_path / "d")
    assert result.rc == 2 and "not allowed with argument" in result.err


# -- list -------------------------------------------------------------------------------


def listing_archive() -> bytes:
    b = tb.TarBuilder()
    b.dir("d/", mode=0o750, uid=1000, gid=100)
    b.file("d/f", b"12345", mode=0o4755, uid=0, gid=0, mtime=1_600_000_000)
    b.symlink("d/s", "f")
    b.hardlink("d/h", "d/f")
    b.chardev("dev/null", 1, 3)
    b.fifo("p")
    b.file("evil\x1b[32mOK\x1b[0m", b"")
    return b.build()


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_list_names_as_gnu_tar(
    tmp_path: Path, compression: str, write_archive: Callable[..., Path]
) -> None:
    data = listing_archive()
    archive = write_archive(data if compression == "none" else tb.compress(data, compression))
    result = run_cli("list", archive)
    assert result.rc == 0, result.err
    gnu = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, check=True,
                         env={**os.environ, "LC_ALL": "C"})
    expected = gnu.stdout.decode().splitlines()
    # GNU tar escapes the control characters its own way (\033); ours as \x1b.
    assert result.out.splitlines()[:-1] == expected[:-1]
    assert result.out.splitlines()[-1] == "evil\\x1b[32mOK\\x1b[0m"
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_list_verbose(write_archive: Callable[..., Path]) -> None:
    archive = write_archive(listing_archive())
    lines = run_cli("list", "-v", archive).out.splitlines()
    assert lines[0].startswith("drwxr-x--- 1000/100 ")
    assert lines[1].startswith("-rwsr-xr-x 0/0 ") and " 5 " in lines[1]
    assert lines[1].endswith(" d/f")
    assert lines[2].startswith("lrwxrwxrwx ") and lines[2].endswith(" d/s -> f")
    assert lines[3].startswith("h") and lines[3].endswith(" d/h link to d/f")
    assert lines[4].startswith("crw-rw-rw- ") and " 1,3 " in lines[4]
    assert lines[5].startswith("prw-r--r-- ")
    assert "\x1b" not in "\n".join(lines)


def test_list_json_and_api(write_archive: Callable[..., Path]) -> None:
    archive = write_archive(listing_archive())
    document = json.loads(run_cli("list", "--json", archive).out)
    assert document["schema_version"] == 1
    assert [e["name"] for e in document["entries"]][:3] == ["d/", "d/f", "d/s"]
    assert document["entries"][1]["mode"] == 0o4755
    entries = list(chrootarchive.list_entries(archive))
    assert entries[3].kind == "hardlink" and entries[3].linkname == "d/f"


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"", 1, "not a tar archive: empty input"),
    (b"x" * 700, 1, "not a tar archive"),
    (tb.TarBuilder().file("a", b"x" * 3000).build()[:1500], 1, "unexpected end"),
])
def test_list_bad_input(
    write_archive: Callable[..., Path], data: bytes, status: int, message: str
) -> None:
    result = run_cli("list", write_archive(data))
    assert result.rc == status, result
    assert message in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(("argv", "unknown"), [
    (["untar", "-xf", "a.tgz", "-C", "d"], "-xf"),
    (["untar", "-f", "a.tgz", "d"], "-f"),
    (["untar", "-z", "a.tgz", "d"], "-z"),
    (["untar", "-zxvf", "a.tgz", "d"], "-zxvf"),
    (["untar", "--zstd", "a.tgz", "d"], "--zstd"),
    (["untar", "--file=a.tgz", "d"], "--file=a.tgz"),
    (["list", "-t", "a.tgz"], "-t"),
    (["list", "-tvf", "a.tgz"], "-tvf"),
    (["apply-layer", "-J", "l.tar.xz", "d"], "-J"),
    (["tar", "-czf", "out.tgz", "dir"], "-czf dir"),
])
def test_tars_options_are_answered_with_a_hint(tmp_path: Path, argv: list[str],
                                               unknown: str) -> None:
    """``untar -xf A -C D``, ``list -t A``: still a usage error (exit 2, the command's
    usage), and one more line saying how the command takes it."""
    result = run_cli(*argv, cwd=tmp_path)
    assert result.rc == 2, result
    assert result.err.startswith(f"usage: chrootarchive {argv[0]} "), result.err
    error, hint = result.err.splitlines()[-2:]
    assert error == f"chrootarchive {argv[0]}: error: unrecognized arguments: {unknown}"
    assert hint.startswith("hint: ") and f"chrootarchive {argv[0]} " in hint, hint
    assert "not -f" in hint and ("-z" in hint or argv[0] == "tar"), hint
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv", [
    ["untar", "-vxf", "a.tgz", "d"],
    ["untar", "-kxf", "a.tgz", "d"],
    ["list", "-vtf", "a.tgz"],
    ["-xf", "a.tgz", "d"],
    ["-tvf", "a.tgz"],
])
def test_tars_clusters_argparse_rejects_first_get_the_hint(tmp_path: Path,
                                                         argv: list[str]) -> None:
    """``-vxf`` starts with an option the command knows, so argparse itself rejects it
    ("-v: ignored explicit argument 'xf'"); without a command, tar's letters are not
    one. The hint still follows, and names the command to use."""
    result = run_cli(*argv, cwd=tmp_path)
    assert result.rc == 2, result
    hint = result.err.splitlines()[-1]
    assert hint.startswith("hint: "), result.err
    assert "chrootarchive untar" in hint or "chrootarchive list" in hint, hint
    assert "Traceback" not in result.err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv", [
    ["untar", "-v", "-k", "--bogus", "a.tgz", "d"],
    ["untar", "-k"],
    ["list", "-v", "--max-bytes", "lots", "a.tgz"],
    ["--bogus"],
])
def test_the_commands_own_letters_are_not_taken_for_tars(tmp_path: Path,
                                                         argv: list[str]) -> None:
    """``-v`` and ``-k`` are tar's letters and these commands' own options: alone,
    they are no habit to correct."""
    result = run_cli(*argv, cwd=tmp_path)
    assert result.rc == 2, result
    assert "hint" not in result.err, result.err


def test_an_option_that_is_not_tars_gets_no_hint(tmp_path: Path) -> None:
    result = run_cli("untar", "--bogus", "-q", "a.tgz", "d", cwd=tmp_path)
    assert result.rc == 2
    assert result.err.endswith("error: unrecognized arguments: --bogus\n"), result.err
    assert "hint" not in result.err


@pytest.mark.parametrize("command", ["untar", "list", "apply-layer"])
@pytest.mark.parametrize(("data", "message"), [
    (b"no tar at all\n" * 60, "not a tar archive"),
    (b"", "not a tar archive: empty input"),
    (tb.compress(b"no tar at all\n" * 60, "gzip"), "not a tar archive"),
    (tb.compress(b"no tar at all\n" * 60, "gzip")[:-30], "gzip data is truncated"),
], ids=["text", "empty", "gzip-text", "cut-gzip"])
def test_an_archive_bad_as_a_whole_is_named(tmp_path: Path, write_archive: Callable[..., Path],
                                            command: str,
                                            data: bytes, message: str) -> None:
    """"not a tar archive" named no archive, where a layer of several was named (and
    the entries of a bad archive are): ``ARCHIVE: not a tar archive``."""
    archive = write_archive(data)
    dest = [] if command == "list" else [tmp_path / "d"]
    line = assert_one_line_error(run_cli(command, archive, *dest), rc=1)
    assert line.startswith(f"chrootarchive: error: {archive}: {message}"), line
    result = run_cli(command, "--json", archive, *dest)
    assert json.loads(result.out)["error"]["entry"] == str(archive), result.out
    with pytest.raises(chrootarchive.MalformedArchiveError) as caught:
        if command == "list":
            list(chrootarchive.list_entries(archive))
        else:
            chrootarchive.untar(archive, tmp_path / "api")
    assert caught.value.entry == str(archive)
    # Standard input has no name to give; a caller's bytes neither.
    line = assert_one_line_error(run_cli(command, "-", *dest, input=data), rc=1)
    assert line.startswith(f"chrootarchive: error: {message}"), line
    with pytest.raises(chrootarchive.MalformedArchiveError) as caught:
        chrootarchive.untar(data, tmp_path / "bytes")
    assert caught.value.entry is None


def test_list_missing_archive(tmp_path: Path) -> None:
    result = run_cli("list", tmp_path / "missing.tar")
    assert result.rc == 4
    assert "cannot open the archive: No such file or directory" in result.err


def test_list_to_a_closed_pipe_is_quiet(write_archive: Callable[..., Path]) -> None:
    many = tb.TarBuilder()
    for i in range(5000):
        many.file(f"f{i:05d}", b"")
    archive = write_archive(many.build())
    proc = subprocess.run(
        f"{sys.executable} -m chrootarchive list {archive} | head -1",
        shell=True, capture_output=True, check=False)
    assert proc.stdout == b"f00000\n"
    assert proc.stderr == b""


# -- exclude styles ------------------------------------------------------------------


def exclude_archive(prefix: str = "") -> bytes:
    b = tb.TarBuilder()
    for name in ("a.txt", "b.txt", "keep", "!keep", "sub/b.txt", "sub/c.log", "sub/deep/x.txt",
                 "sub/deep/y", "other/sub/z", "dir/f", "dar/f", "x.txt/inner"):
        b.file(prefix + name, name.encode())
    return b.build()


@pytest.mark.parametrize("prefix", ["", "./"])
@pytest.mark.parametrize("pattern", ["*.txt", "b.txt", "sub", "sub/*.txt", "*/deep", "d?r",
                                     "[ab].txt", "!keep", "sub/deep", "*.txt/inner", "x*",
                                     "./sub", "*/sub", "./sub/*.txt", "./*.txt",
                                     "**/*.txt"])
def test_tar_exclude_style_matches_gnu_tar(tmp_path: Path, pattern: str, prefix: str) -> None:
    """Also on an archive whose names start with ``./`` (``tar -C dir .``): GNU tar
    matches the name as stored, so ``./sub`` and ``*/sub`` exclude there; they excluded
    nothing when only the clean name was tried (fuzzing, issue 16, twentieth round)."""
    archive = tmp_path / "a.tar"
    archive.write_bytes(exclude_archive(prefix))
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(gnu), f"--exclude={pattern}"],
                   check=True)
    ours = tmp_path / "ours"
    result = run_cli("untar", "--exclude-style", "tar", "--exclude", pattern, archive, ours)
    assert result.rc == 0, result.err
    assert snapshot(ours) == snapshot(gnu)


def test_an_options_value_may_start_with_a_dash_as_in_gnu_tar(tmp_path: Path) -> None:
    """``--exclude -lead`` and ``-C -dir``: GNU tar (getopt) takes the next word as the
    value whatever it is; argparse read ``-lead`` as an unknown option and exited 2."""
    b = tb.TarBuilder()
    for name in ("-lead", "keep"):
        b.file(name, name.encode())
    archive = tmp_path / "a.tar"
    archive.write_bytes(b.build())
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(gnu), "--exclude", "-lead"],
                   check=True)
    result = run_cli("untar", "--exclude", "-lead", archive, "-C", "-dir", cwd=tmp_path)
    assert result.rc == 0, result.err
    assert snapshot(tmp_path / "-dir") == snapshot(gnu) != {}
    packed = tmp_path / "packed.tar"
    result = run_cli("tar", "--exclude", "-lead", "-o", packed, tmp_path / "-dir")
    assert result.rc == 0, result.err
    assert [e.name for e in chrootarchive.list_entries(packed)] == ["keep"]
    # "--" stays the end of the options, as argparse has it.
    result = run_cli("untar", "--exclude", "--", archive, tmp_path / "d")
    assert result.rc == 2 and "--exclude: expected one argument" in result.err


def test_docker_exclude_style_is_anchored(tmp_path: Path) -> None:
    """The default (Docker's): ``*.txt`` is matched from the root within one component,
    so ``sub/b.txt`` stays, where GNU tar (and ``--exclude-style tar``) drops it."""
    chrootarchive.untar(exclude_archive(), tmp_path / "d", excludes=["*.txt"])
    assert not (tmp_path / "d" / "a.txt").exists()
    assert (tmp_path / "d" / "sub" / "b.txt").exists()
    chrootarchive.untar(exclude_archive(), tmp_path / "t",
                        UnpackOptions(excludes=("*.txt",), exclude_style="tar"))
    assert not (tmp_path / "t" / "sub" / "b.txt").exists()
    with pytest.raises(ValueError, match="exclude_style"):
        UnpackOptions(exclude_style="rsync")


def test_a_double_star_pattern_excludes_what_is_below_what_it_matches(
        tmp_path: Path) -> None:
    """``**/.git`` (the README's example) matches ``.git`` at any depth, and what is
    below a matched directory is excluded: only the directories' own entries were
    (the parent tested was the one at the pattern's depth, 2), so every file in them
    was unpacked, their directories made again as implied parents. ``**`` crosses a
    newline in a name too."""
    archive = (tb.TarBuilder().dir(".git").file(".git/config", b"c").dir(".git/objects")
               .file(".git/objects/ab", b"o").file("a/b/.git/c/d", b"d")
               .file("a/b/.git/keep", b"k").file("a/b/kept", b"k")
               .file("new\nline/.git/hooks/x", b"x").build())
    dest = tmp_path / "d"
    chrootarchive.untar(archive, dest, excludes=["**/.git", "!a/**/keep"])
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert found == ["a", "a/b", "a/b/.git", "a/b/.git/keep", "a/b/kept"], found


def test_a_double_star_slash_spans_whole_components(tmp_path: Path) -> None:
    """``**/`` is any number of whole components, as Docker's ``(.*/)?``: ``**/.git``
    left out ``foo.git`` and ``a/b.git`` too (it read as ``.*`` then an optional
    ``/``), and ``a/**/b`` left out ``a/xb``."""
    archive = (tb.TarBuilder().file("foo.git", b"f").file("a/b.git", b"b")
               .file("a/xb", b"x").file("a/.git", b"g").file("a/y/b/z", b"z")
               .file("a/b", b"b").build())
    dest = tmp_path / "d"
    chrootarchive.untar(archive, dest, excludes=["**/.git", "a/**/b"])
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert found == ["a", "a/b.git", "a/xb", "foo.git"], found


def test_patterns_of_many_double_stars_take_linear_time(tmp_path: Path) -> None:
    """``**/a/**/a/**/b`` against names of 1,000 components ``a/a/.../c``: as one
    regex, each name tried every way to split it among the three ``**`` (three seconds
    a name, twenty names a minute); component by component, milliseconds."""
    import time

    deep = "a/" * 1000  # max_path_depth: 1,024
    builder = tb.TarBuilder()
    for i in range(20):
        builder.pax({"path": f"{deep}c{i}"}).file(f"c{i}", b"c")
    builder.pax({"path": f"{deep}b"}).file("b", b"b")
    dest = tmp_path / "d"
    started = time.monotonic()
    chrootarchive.untar(builder.build(), dest, excludes=["**/a/**/a/**/b", "x/**/y/**"])
    assert time.monotonic() - started < 20
    try:
        assert sorted(os.listdir(dest / deep)) == sorted(f"c{i}" for i in range(20))
    finally:
        subprocess.run(["rm", "-rf", str(dest)], check=True)  # too deep for rmtree


def test_tar_style_patterns_of_many_stars_take_linear_time(tmp_path: Path) -> None:
    """GNU tar's ``*a*a*b`` (stars match ``/`` too) against names ``a/a/.../c`` of
    400 components: as one regex, every start after a ``/`` and every split among
    the stars was tried (two seconds a name, eight at 500 components); now each
    part is placed once. The same names and others decide as GNU tar does."""
    import time

    deep = "a/" * 400
    builder = tb.TarBuilder()
    for i in range(20):
        builder.pax({"path": f"{deep}c{i}"}).file(f"c{i}", b"c")
    builder.pax({"path": f"{deep}b"}).file("b", b"b")
    for name in ("xab", "ab/x", "b/a/b", "aab", "a/x/ab/y"):
        builder.file(name, b"n")
    archive = tmp_path / "a.tar"
    archive.write_bytes(builder.build())
    patterns = ["*a*a*b", "a?a*b", "b*b"]
    dest = tmp_path / "d"
    started = time.monotonic()
    result = run_cli("untar", "--exclude-style", "tar",
                     *(f"--exclude={p}" for p in patterns), archive, dest)
    assert time.monotonic() - started < 10
    assert result.rc == 0, result.err
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(gnu),
                    *(f"--exclude={p}" for p in patterns)], check=True)
    def found(root: Path) -> list[str]:  # too deep for pathlib's walk
        listed = subprocess.run(["find", str(root), "-mindepth", "1", "-printf", "%P\\n"],
                                capture_output=True, text=True, check=True).stdout
        return sorted(listed.splitlines())

    try:
        assert found(dest) == found(gnu)
        assert sorted(os.listdir(dest / deep)) == sorted(f"c{i}" for i in range(20))
    finally:
        subprocess.run(["rm", "-rf", str(dest), str(gnu)], check=True)  # too deep for rmtree


def test_docker_style_patterns_of_many_stars_take_linear_time(tmp_path: Path) -> None:
    """Docker's ``*a*a*a*a*b`` (stars within a component) against names of 200 ``a``:
    as one regex, every split among the stars was tried (six seconds a name); now
    each part between two stars is placed once, and the decisions are the same."""
    import time

    builder = tb.TarBuilder()
    for i in range(10):
        builder.file(f"{'a' * 200}{i}", b"a")
    for name in ("xaaaab", "aaab", "d/aaaab", "abababab/c"):
        builder.file(name, b"n")
    dest = tmp_path / "d"
    started = time.monotonic()
    chrootarchive.untar(builder.build(), dest, excludes=["*a*a*a*a*b"])
    assert time.monotonic() - started < 10
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == sorted(
        [f"{'a' * 200}{i}" for i in range(10)] + ["aaab", "d", "d/aaaab"])


def test_a_hardlink_to_an_excluded_file_is_left_out(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    """The user excluded the target: its other names go with it, counted in one
    warning. It stopped the unpack ("hardlink target does not exist"), where GNU tar
    fails each such link and goes on (fuzzing the command line, issue 16, twentieth
    round)."""
    data = (tb.TarBuilder().file("secret.key", b"k").hardlink("copy.key", "secret.key")
            .file("after", b"a").build())
    result = run_cli("untar", "--exclude", "secret.key", write_archive(data), tmp_path / "d")
    assert result.rc == 0, result.err
    assert sorted(os.listdir(tmp_path / "d")) == ["after"]
    assert result.err == ("chrootarchive: warning: 1 hardlink to excluded files left "
                          "out\n"), result.err


# -- -v: entries as they are unpacked --------------------------------------------------


def verbose_archive() -> bytes:
    b = tb.TarBuilder().dir("d/").file("d/a", b"a").symlink("d/s", "a")
    b.hardlink("d/h", "d/a").file("skip/me", b"x").file("evil\x1b[2Jname\nx", b"")
    return b.build()


def _verbose_both(tmp_path: Path, archive: Path, *flags: str) -> tuple[list[str], list[str]]:
    """The lines ``untar -v FLAGS`` and GNU tar's ``-xvf FLAGS`` print for ``archive``."""
    result = run_cli("untar", "-v", *flags, archive, tmp_path / "ours")
    assert result.rc == 0, result.err
    (tmp_path / "gnu").mkdir()
    gnu = subprocess.run(["tar", "-xvf", str(archive), "-C", str(tmp_path / "gnu"), *flags],
                         capture_output=True, check=True)
    return result.out.splitlines(), gnu.stdout.decode().splitlines()


def test_verbose_lists_as_gnu_tar(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    ours, gnu = _verbose_both(tmp_path, write_archive(verbose_archive()), "--exclude=skip")
    assert ours[:4] == gnu[:4] == ["d/", "d/a", "d/s", "d/h"]
    assert ours[4:] == ["evil\\x1b[2Jname\\x0ax"]  # one line, escaped


def test_verbose_lists_stored_names_with_strip_components(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    """GNU tar lists each entry by its name in the archive, stripped or not; ours listed
    the stripped names (fuzzing the command line, issue 16, twentieth round)."""
    archive = write_archive(verbose_archive())
    ours, gnu = _verbose_both(tmp_path, archive, "--strip-components=1")
    assert ours == gnu == ["d/a", "d/s", "d/h", "skip/me"]  # "d/" is stripped to nothing
    assert sorted(os.listdir(tmp_path / "ours")) == ["a", "h", "me", "s"]


@pytest.mark.parametrize("confine", ["pivot", "chroot", "userns", "openat2"])
def test_on_entry_under_every_mechanism(tmp_path: Path, confine: str) -> None:
    seen: list[str] = []
    chrootarchive.untar(verbose_archive(), tmp_path / "d", confine=confine,
                        excludes=["skip"], on_entry=seen.append)
    assert seen == ["d/", "d/a", "d/s", "d/h", "evil\x1b[2Jname\nx"]


def test_verbose_json_and_layers(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    archive = write_archive(verbose_archive())
    document = json.loads(run_cli("untar", "-v", "--json", archive, tmp_path / "j").out)
    assert document["names"][-1] == "evil\\x1b[2Jname\\x0ax"  # escaped (docs/json.md)
    assert document["entries"] == 6
    layer = write_archive(tb.TarBuilder().file(".wh.gone").file("new", b"n").build())
    result = run_cli("apply-layer", "-v", layer, tmp_path / "j")
    assert result.rc == 0 and result.out.splitlines()[:2] == [".wh.gone", "new"]


def test_verbose_lists_what_came_before_an_error(tmp_path: Path) -> None:
    seen: list[str] = []
    data = tb.TarBuilder().file("one", b"1").file("two", b"2").file("../x", b"x").build()
    with pytest.raises(chrootarchive.BreakoutError):
        chrootarchive.untar(data, tmp_path / "d", on_entry=seen.append)
    assert seen == ["one", "two"]


def _dir_metadata(root: Path) -> dict[str, tuple[int, int]]:
    """directory name -> (mode, mtime in ns)."""
    return {str(p.relative_to(root)): (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_dir() and not p.is_symlink()}


@pytest.mark.parametrize("confine", ["pivot", "openat2"])
def test_a_directory_declared_again_takes_its_last_entrys_mode_and_times(
        tmp_path: Path, confine: str) -> None:
    """As with GNU tar and tarfile, the last entry of a directory sets its mode and
    times; the first one won, and after a file replaced the directory, an entry of the
    directory that was removed could win over the new one's, when the new one got its
    inode back (differential fuzzing, issue 16, twentieth round)."""
    b = tb.TarBuilder()
    b.dir("d/", mode=0o777, mtime=1000)
    b.file("d/f", b"f", mtime=1500)
    b.dir("d/", mode=0o750, mtime=2000)
    b.dir("locked/", mode=0o000, mtime=1000)
    b.dir("locked/", mode=0o755, mtime=2500)
    for i in range(8):  # a directory, a file in its place, the directory again
        b.dir(f"r{i}/", mode=0o700, mtime=1000 + i)
        b.file(f"r{i}", b"in the way", mtime=1100)
        b.dir(f"r{i}/", mode=0o751, mtime=3000 + i)
        b.dir(f"r{i}/sub/", mode=0o755, mtime=4000)
    archive = tmp_path / "a.tar"
    b.write(archive)
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xpf", str(archive), "-C", str(gnu)], check=True)
    expected = _dir_metadata(gnu)
    assert expected["d"] == (0o750, 2000 * 10**9) and expected["r7"] == (0o751, 3007 * 10**9)
    ours = tmp_path / "ours"
    chrootarchive.untar(archive, ours, UnpackOptions(confine=confine))
    assert _dir_metadata(ours) == expected
    cli = run_cli("untar", archive, tmp_path / "cli")
    assert cli.rc == 0, cli.err
    assert _dir_metadata(tmp_path / "cli") == expected


@pytest.mark.parametrize("confine", ["pivot", "chroot", "userns", "openat2"])
def test_a_directory_replaced_through_a_symlinked_parent(tmp_path: Path, confine: str) -> None:
    """``l -> sub``, then a file ``l/e`` where ``sub/e`` is a directory: replaced, as
    without the symlink, under every mechanism. In a jail the removal opened the parent
    without following it: "l/e: not a directory" (fuzzing, issue 16, twentieth round)."""
    b = tb.TarBuilder()
    b.dir("sub/e/")
    b.file("sub/e/inner", b"I")
    b.symlink("l", "sub")
    b.file("l/e", b"NEW")
    archive = tmp_path / "a.tar"
    b.write(archive)
    dest = tmp_path / "dest"
    chrootarchive.untar(archive, dest, UnpackOptions(confine=confine))
    assert (dest / "sub" / "e").read_bytes() == b"NEW"
    assert os.readlink(dest / "l") == "sub"
