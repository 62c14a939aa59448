"""Messages a terminal can trust: hostile entry names never reach it raw (issue 14, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from chrootarchive import UnpackOptions, untar
from chrootarchive.errors import ArchiveError, MalformedArchiveError, printable
from helpers.cli import assert_one_line_error, run_cli
from helpers.tarbuild import TarBuilder, truncate

HOSTILE = [
    "a\x1b[32m OK\x1b[0m",
    "a\rOK",
    "a\nchrootarchive: done",
    "a\x9b31m",
    "a\x7fb",
    "n" * 2100,
    b"bad\xff\xfe".decode("utf-8", "surrogateescape"),
]


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]


@pytest.mark.parametrize("name", HOSTILE)
def test_printable_has_no_control(name: str) -> None:
    shown = printable(name)
    assert not [c for c in shown if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]
    assert len(shown) <= 200
    assert shown.encode("utf-8")  # no lone surrogate left


@pytest.mark.parametrize("backslash", [False, True])
def test_printable_escapes_each_ascii_character_as_before(backslash: bool) -> None:
    """A name of printable ASCII alone is returned as it is (the fast path that a listing
    of 200k names takes); every ASCII character, alone or in a name, is escaped as the
    character-by-character rule escapes it."""
    def by_character(char: str) -> str:
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            return f"\\x{code:02x}"
        return "\\\\" if char == "\\" and backslash else char

    for code in range(128):
        char = chr(code)
        for name in (char, f"a{char}b", f"{char}{char}"):
            assert printable(name, backslash=backslash) == "".join(map(by_character, name))
    plain = "usr/share/doc/base-files/README.Debian ~!@#$%^&*()_+`-=[]{};':\",./<>?"
    assert printable(plain) is plain

    class Name(str):
        pass

    assert type(printable(Name("a/b"))) is str  # a str, as the loop's join gives


def test_error_str_escapes_and_shortens_entry() -> None:
    err = MalformedArchiveError("truncated data", "x" * 2100 + "\x1b[32mOK")
    text = str(err)
    assert "\x1b" not in text and "\\x1b[32mOK" in text
    assert text.endswith(": truncated data") and len(text) < 200


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_cli_error_with_hostile_name(tmp_path: Path, name: str) -> None:
    """A truncated entry with a hostile name: one line, no raw control, the problem shown."""
    data = TarBuilder().file(name.encode("utf-8", "surrogateescape"), b"x" * 4000).build(eoa=False)
    archive = tmp_path / "a.tar"
    archive.write_bytes(truncate(data, 512 + 1000))
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run_cli("untar", archive, dest)
    assert result.rc == 1, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert not _raw_controls(result.err), repr(result.err)
    assert lines[0].startswith("chrootarchive: error: ")
    assert len(lines[0]) < 400
    assert "trunc" in lines[0].lower() or "end" in lines[0].lower(), lines[0]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _assert_strict_json(out: str) -> dict[str, object]:
    """One JSON document that a strict parser takes: valid UTF-8 once decoded (no lone
    surrogate from undecodable bytes), no control character in any string."""
    doc: dict[str, object] = json.loads(out)
    for text in _strings(doc):
        text.encode("utf-8")  # a lone surrogate raises here
        assert not _raw_controls(text) and "\n" not in text, repr(text)
    return doc


def test_json_output_escapes_names(tmp_path: Path) -> None:
    """A warning naming a hostile entry (an xattr the kernel refuses, on a symlink whose
    name holds an escape sequence and undecodable bytes): --json prints it escaped."""
    name = b"bad\xff\x1b[32mOK"
    archive = tmp_path / "a.tar"
    TarBuilder().pax({"SCHILY.xattr.user.x": b"1"}).symlink(name, "t").write(archive)
    result = run_cli("untar", "--json", archive, tmp_path / "dest")
    assert result.rc == 0, result.err
    doc = _assert_strict_json(result.out)
    warnings = doc["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1, warnings
    assert "bad\\xff\\x1b[32mOK" in warnings[0], warnings
    result = run_cli("untar", tmp_path / "a.tar", tmp_path / "dest2")
    assert result.rc == 0 and "bad\\xff\\x1b[32mOK" in result.err, result.err
    assert not _raw_controls(result.err.replace("\n", "")), repr(result.err)


def test_image_json_escapes_the_ref(tmp_path: Path) -> None:
    """The ref comes from the image (an index annotation): escaped in --json output."""
    from helpers.oci_images import Entry, OCIBuilder, make_tar

    b = OCIBuilder(tmp_path / "image")
    b.tag(b.image([make_tar([Entry("f", data=b"x")])], "none"), "v1\udcff\x1b[2J")
    result = run_cli("unpack-image", "--json", b.root, tmp_path / "dest")
    assert result.rc == 0, result.err
    doc = _assert_strict_json(result.out)
    assert doc["ref"] == "v1\\xff\\x1b[2J"


# -- a worker interpreter the caller cannot run is a setup error (exit 3) -------------

_DROP_AND_UNTAR = r"""
import importlib, os, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import chrootarchive
# A daemon's start-up: everything imported as root, then the user dropped.
for info in pkgutil.walk_packages(chrootarchive.__path__, "chrootarchive."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
from chrootarchive.cli.main import main
if sys.argv[2] != "root":
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
sys.executable = sys.argv[3]
sys.exit(main(["untar", "--confine", sys.argv[4], sys.argv[5], sys.argv[6]]))
"""


def _untar_with_interpreter(base: Path, package: Path, user: str, interpreter: str,
                            mechanism: str = "userns"
                            ) -> tuple[subprocess.CompletedProcess[str], Path]:
    import subprocess

    from helpers.unpriv import NOBODY, SYSTEM_PYTHON

    archive = base / "a.tar"
    TarBuilder().file("f", b"x").write(archive)
    archive.chmod(0o644)
    dest = base / "dest"
    dest.mkdir()
    os.chown(dest, NOBODY, NOBODY)
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", _DROP_AND_UNTAR, str(package), user, interpreter,
         mechanism, str(archive), str(dest)],
        capture_output=True, text=True, timeout=60, env={"CHROOTARCHIVE_STANDBY": "0"},
    )
    return proc, dest


@pytest.mark.parametrize("interpreter", ["missing", "empty", "not-executable"])
def test_worker_interpreter_missing_is_a_setup_error(interpreter: str) -> None:
    from helpers.unpriv import make_package_copy, world_dir

    with world_dir("interp") as base:
        package = make_package_copy(base)
        path = {"missing": str(base / "no-such-python"), "empty": "",
                "not-executable": str(base / "a.tar")}[interpreter]
        proc, dest = _untar_with_interpreter(base, package, "root", path, "pivot")
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("chrootarchive: error: cannot start "
                                                       "the worker"), proc.stderr
        assert "sys.executable" in lines[0] and "bug" not in lines[0]
        assert not (dest / "f").exists()


def test_worker_interpreter_the_user_may_not_run(tmp_path: Path) -> None:
    """A caller that dropped root (uid 65534), whose interpreter lives below a directory
    only root may enter (a venv in a private home): exit 3 saying what to fix."""
    from helpers.unpriv import SYSTEM_PYTHON, make_package_copy, world_dir

    with world_dir("interp") as base:
        package = make_package_copy(base)
        private = base / "private"
        private.mkdir(mode=0o700)
        (private / "python3").symlink_to(SYSTEM_PYTHON)
        proc, dest = _untar_with_interpreter(base, package, "nobody", str(private / "python3"))
        assert proc.returncode == 3, proc.stderr
        line = proc.stderr.strip()
        assert "\n" not in line and "uid 65534 may not execute" in line, line
        assert "bug" not in line
        assert not (dest / "f").exists()


def _interpreter_with_a_private_libpython() -> str | None:
    """A pyenv interpreter linked to its libpython through an rpath below root's home,
    which uid 65534 may not enter: copied elsewhere, its loader fails for that user."""
    import glob
    import stat

    if stat.S_IMODE(os.stat(os.path.expanduser("~")).st_mode) & 0o001:
        return None
    for exe in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1*/bin/python3.1*"))):
        if not exe.endswith("-config") and os.path.isfile(exe):
            with open(exe, "rb") as f:
                if b"libpython3." in f.read():
                    return exe
    return None


def test_worker_interpreter_the_loader_cannot_start(tmp_path: Path) -> None:
    """The interpreter is executed, but the dynamic loader cannot find its libpython
    (found through LD_LIBRARY_PATH by the caller's environment, say, which the worker's
    lacks): exit 3 saying so, not "the worker exited with status 127 without a
    result", a bug's exit 70."""
    import shutil

    from helpers.unpriv import make_package_copy, world_dir

    exe = _interpreter_with_a_private_libpython()
    if exe is None:
        pytest.skip("no interpreter here whose libpython uid 65534 cannot reach")
    with world_dir("interp") as base:
        package = make_package_copy(base)
        copy = base / "python3"
        shutil.copy(exe, copy)
        copy.chmod(0o755)
        proc, dest = _untar_with_interpreter(base, package, "nobody", str(copy))
        assert proc.returncode == 3, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]  # the loader's own line comes first
        assert "the dynamic loader could not start its interpreter" in line, line
        assert "LD_LIBRARY_PATH" in line and "bug" not in line, line
        assert not (dest / "f").exists()


def test_worker_cannot_import_the_package(tmp_path: Path) -> None:
    """The interpreter runs, but the package is below a directory the (dropped) user may
    not read: exit 3 naming the package's directory, not "exited with status 1"."""
    import shutil

    from helpers.unpriv import SYSTEM_PYTHON, make_package_copy, world_dir

    with world_dir("interp") as base:
        package = make_package_copy(base)
        private = base / "private"
        private.mkdir(mode=0o700)
        shutil.move(package, private / "pythonpath")
        proc, dest = _untar_with_interpreter(base, private / "pythonpath", "nobody",
                                             SYSTEM_PYTHON)
        assert proc.returncode == 3, proc.stderr
        line = proc.stderr.strip()
        assert "\n" not in line and "cannot import chrootarchive" in line, line
        assert str(private / "pythonpath") in line and "uid 65534" in line, line
        assert not (dest / "f").exists()


@pytest.mark.parametrize(("args", "line"), [
    (["--max-memory", "1"], "--max-memory must be >= 50331648, not 1"),
    (["--timeout", "-5"], "--timeout must be more than 0"),
    (["--uid-map", "0:1000:10", "--uid-map", "5:2000:10"],
     "--uid-map: 0:1000:10 and 5:2000:10 overlap in their container_ids"),
    # Two ranges that start at the same id: sorting them compared the IDMaps
    # ("'<' not supported between instances of 'IDMap' and 'IDMap'").
    (["--uid-map", "0:0:10", "--uid-map", "0:100:10"],
     "--uid-map: 0:0:10 and 0:100:10 overlap in their container_ids"),
    # Options that cannot go together: exit status 4 ("DEST cannot be written") before.
    (["--atomic", "--root", "/"], "--atomic is not available with --root"),
])
def test_usage_errors_speak_the_command_lines_words(tmp_path: Path, args: list[str],
                                                    line: str) -> None:
    """A value the options refuse is named by its option, not by the class behind it
    (``Limits.max_memory``, ``IDMap(container_id=0, ...)``)."""
    result = run_cli("untar", *args, tmp_path / "a.tar", tmp_path / "d")
    got = assert_one_line_error(result, rc=2)
    assert got.startswith("chrootarchive: error: " + line), got
    assert "Limits." not in got and "IDMap" not in got and "Options." not in got


def test_names_are_escaped_one_way(tmp_path: Path) -> None:
    """A backslash in a name is listed as ``\\\\``, as GNU tar lists it: a name holding
    the four characters ``\\x1b`` is told from one holding ESC. And a name quoted in a
    message is escaped as the entry's own name is (``\\xff``; ``repr()`` wrote
    ``\\udcff``)."""
    archive = tmp_path / "a.tar"
    archive.write_bytes(TarBuilder().file("lit\\x1b", b"").file("esc\x1b", b"").build())
    assert run_cli("list", archive).out.splitlines() == ["lit\\\\x1b", "esc\\x1b"]
    archive.write_bytes(TarBuilder().hardlink("h\udcfe", "t\udcff").build())
    line = assert_one_line_error(run_cli("untar", archive, tmp_path / "d"), rc=1)
    assert line.startswith(
        "chrootarchive: error: h\\xfe: hardlink target 't\\xff' does not exist"), line


def test_an_unknown_option_is_the_commands_error(tmp_path: Path) -> None:
    """argparse reports what a command's parser does not know at the top level, with
    the top level's usage (a list of commands); it is the command's own error."""
    result = run_cli("untar", "--bogus", tmp_path / "a.tar", tmp_path / "d")
    assert result.rc == 2
    assert result.err.startswith("usage: chrootarchive untar "), result.err
    assert result.err.endswith(
        "chrootarchive untar: error: unrecognized arguments: --bogus\n"), result.err


def test_an_option_before_the_command(tmp_path: Path) -> None:
    """``chrootarchive -q untar A D``: -q is the command's option, given too early."""
    result = run_cli("-q", "untar", tmp_path / "a.tar", tmp_path / "d")
    assert result.rc == 2
    assert result.err.startswith("usage: chrootarchive untar "), result.err
    assert result.err.endswith("error: unrecognized arguments: -q\n"), result.err


def test_each_side_names_the_limit_and_atomic_in_its_own_words(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The API says ``limit max_entries`` and ``atomic=True``, which a caller sets; the
    command line says ``limit --max-entries`` and ``--atomic``, which a user types
    (the API's errors ended with "--atomic unpacks all or nothing")."""
    import chrootarchive

    data = TarBuilder().file("a", b"1").file("b", b"2").build()
    with pytest.raises(chrootarchive.LimitExceededError) as caught:
        chrootarchive.untar(data, tmp_path / "api", limits=chrootarchive.Limits(max_entries=1))
    message = caught.value.message
    assert message.startswith("limit max_entries (1 entry) exceeded"), message
    assert message.endswith("; atomic=True unpacks all or nothing)"), message
    assert "--" not in message, message
    archive = tmp_path / "a.tar"
    archive.write_bytes(data)
    line = assert_one_line_error(run_cli("untar", "--max-entries", "1", archive,
                                         tmp_path / "cli"), rc=1)
    assert line.startswith("chrootarchive: error: b: limit --max-entries (1 entry) "
                           "exceeded"), line
    assert line.endswith("; --atomic unpacks all or nothing)"), line
    assert "max_entries" not in line and "atomic=True" not in line, line
    result = run_cli("untar", "--json", "--max-entries", "1", archive, tmp_path / "json")
    error = json.loads(result.out)["error"]
    assert error["message"].startswith("limit --max-entries"), error
    assert error["message"].endswith("--atomic unpacks all or nothing)"), error


@pytest.mark.parametrize(("api", "cli"), [
    ("limit max_memory (67,108,864 bytes) exceeded: the worker ran out of the memory the "
     "limit allows it (raise it with --max-memory, Limits.max_memory)",
     "limit --max-memory (67,108,864 bytes) exceeded: the worker ran out of the memory the "
     "limit allows it (raise it with --max-memory)"),
    ("limit reserve (5% of the destination's filesystem: 1M and 10 inodes kept free) "
     "exceeded: 0 would be left; change Limits.reserve (a percentage; 0: none)",
     "limit --reserve (5% of the destination's filesystem: 1M and 10 inodes kept free) "
     "exceeded: 0 would be left; change --reserve (a percentage; 0: none)"),
    ("limit timeout (3 seconds) exceeded (between layers)",
     "limit --timeout (3 seconds) exceeded (between layers)"),
    ("limit max_bytes (9 bytes) exceeded: the image archive needs 10 bytes spooled",
     "limit --max-bytes (9 bytes) exceeded: the image archive needs 10 bytes spooled"),
    ("the layout holds 2 images; choose one by reference (ref=NAME; names: a, b)",
     "the layout holds 2 images; choose one by reference (--ref NAME; names: a, b)"),
    ("cannot open the image: No such file or directory; to choose an image in a layout "
     "by its tag, use ref='v1.0' with the image 'img'",
     "cannot open the image: No such file or directory; to choose an image in a layout "
     "by its tag, use --ref v1.0 with the image 'img'"),
    ("exists, and old files are kept (old_files='keep'; 2 more kept); the rest was unpacked",
     "exists, and old files are kept (--keep-old-files; 2 more kept); the rest was unpacked"),
    ("cannot replace existing directory (no_overwrite_dir_nondir=True)",
     "cannot replace existing directory (--no-overwrite-dir-nondir)"),
    ("hardlink target a has no more than 1 components (UnpackOptions.strip_components)",
     "hardlink target a has no more than 1 components (--strip-components)"),
    ("limit max_memory (1,024 bytes) exceeded: the worker ran out of the memory the limit "
     "allows it (raise Limits.max_memory)",
     "limit --max-memory (1,024 bytes) exceeded: the worker ran out of the memory the limit "
     "allows it (raise --max-memory)"),
])
def test_library_words_become_the_command_lines(api: str, cli: str) -> None:
    from chrootarchive.cli.args import in_cli_words

    assert in_cli_words(api) == cli


def test_names_are_never_translated_and_translation_is_linear() -> None:
    """An archive's name that reads like the library's words stays as it is (a file
    "Limits.max_bytes" showed as "--max-bytes"), and a long hostile name costs time in
    proportion to its length (the "--x, --x" rule backtracked at every "--")."""
    import time

    from chrootarchive.cli.args import in_cli_words
    from chrootarchive.errors import quoted

    message = (f"cannot create parent directory {quoted('Limits.max_bytes')}: not a "
               "directory (raise Limits.max_bytes)")
    assert in_cli_words(message) == ("cannot create parent directory 'Limits.max_bytes': "
                                     "not a directory (raise --max-bytes)")
    name = quoted("atomic=True, Limits.timeout")
    assert in_cli_words(name) == name
    hostile = "names: " + "0" + "--a" * 50_000
    started = time.monotonic()
    assert in_cli_words(hostile) == hostile
    assert time.monotonic() - started < 1



def test_a_kernel_refusal_reads_the_same_under_every_mechanism(mechanism: str,
                                                               tmp_path: Path) -> None:
    """The kernel's reason, in its words, under ``openat2`` too: a lookup there failed
    with the system call's own text ("a/b: openat2(6, 'a', 0x280000, 0x13): Too many
    levels of symbolic links"); a race that removes a parent showed it the same way."""
    archive = tmp_path / "loop.tar"
    TarBuilder().symlink("a", "a").file("a/b", b"x").write(archive)
    with pytest.raises(ArchiveError) as caught:
        untar(archive, tmp_path, UnpackOptions(confine=mechanism))
    assert str(caught.value) == "a/b: too many levels of symbolic links"
