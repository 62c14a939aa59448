"""The worker's start-up: what it imports, and the lean stand-ins that make that possible.

A one-file archive costs about as much as starting the worker, and most of the start-up
was importing the standard library (``json`` pulls in ``re`` and ``enum``, ``dataclasses``
pulls in ``inspect``, ``typing``...). The worker now imports only what it uses; these
tests keep it that way, and check that each stand-in (JSON from the C accelerator, a
percent-decoder, a normpath-free fast path for clean names) agrees with what it replaces.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import struct
import subprocess
import sys
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chrootarchive
from chrootarchive import _wire
from chrootarchive.engine import names as paths
from chrootarchive.errors import BreakoutError, MalformedArchiveError
from chrootarchive.tarformat import reader as tarreader
from helpers.leaks import COUNT_SPAWNED_WORKERS

SRC = str(Path(chrootarchive.__file__).resolve().parent.parent)

# What the worker imports as it boots, before its job arrives and before the jail: the
# child, the mechanisms, the file operations and the job's module (child._boot).
_WORKER_IMPORTS = """
import sys
sys.path.insert(0, sys.argv[1])
from chrootarchive.jail import main as child
child._boot(sys.argv[2])
sys.stdout.write(" ".join(sorted(sys.modules)))
"""

# Each of these costs the worker milliseconds, or is parent-side only.
HEAVY = {
    "json", "re", "enum", "typing", "dataclasses", "inspect", "subprocess", "socket",
    "selectors", "threading", "queue", "tempfile", "random", "shutil", "urllib",
    "urllib.parse", "contextlib", "functools", "collections", "platform", "signal",
    "importlib", "chrootarchive.options", "tarfile",
    # ctypes (3.5 ms), and extension modules (0.2 ms each) with stand-ins that the
    # compiled modules hold: _syscall's prlimit for resource, _ustar.byte_sum for zlib;
    # fcntl is the ring's parent side alone.
    "ctypes", "_ctypes", "resource", "zlib", "fcntl",
}
# The parent's packages: the worker never loads any module of these.
PARENT_PACKAGES = ("chrootarchive.cli", "chrootarchive.image", "chrootarchive.operations",
                   "chrootarchive.runner")


def _lean_worker_imports(job: str) -> set[str]:
    """The modules a worker for ``job`` loads as it boots, checked to hold nothing of
    :data:`HEAVY` and no parent code."""
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _WORKER_IMPORTS, SRC, job],
        capture_output=True, text=True, check=True,
    )
    loaded = set(out.stdout.split())
    assert not HEAVY & loaded, f"the {job} worker now imports {sorted(HEAVY & loaded)}"
    parent = sorted(m for m in loaded if m.startswith(PARENT_PACKAGES))
    assert not parent, f"the {job} worker now imports parent code: {parent}"
    return loaded


def test_unpack_worker_imports_nothing_heavy() -> None:
    loaded = _lean_worker_imports("unpack")
    assert "chrootarchive.engine.unpacker" in loaded  # the check looked at a real worker's imports
    # Every mechanism it may enter is loaded before the jail (imports are refused there).
    mechanisms = {f"chrootarchive.jail.confine.{name}"
                  for name in ("pivot", "chroot", "userns", "mounts")}
    assert mechanisms <= loaded, sorted(mechanisms - loaded)
    # So is the compiled header parser (an extension module: mapped before the jail).
    # The helper's compiled loop comes with engine.finisher, which the job's prepare()
    # imports before the jail when the request allows the helper.
    assert "chrootarchive.tarformat._ustar" in loaded


def test_pack_worker_imports_nothing_heavy() -> None:
    """The pack job's worker boots as lean as the unpack job's: its descriptor limit
    through ``_linux.prlimit``, not ``resource`` (and ``contextlib``)."""
    assert "chrootarchive.engine.packer" in _lean_worker_imports("pack")  # a real pack worker


def test_a_one_file_untar_works_from_a_lean_worker(tmp_path: Path) -> None:
    """End to end: the lean worker, jailed with imports forbidden, unpacks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("d/x.txt")
        info.size = 5
        info.pax_headers = {"LIBARCHIVE.xattr.user.k%41": "dg=="}  # percent, base64
        t.addfile(info, io.BytesIO(b"hello"))
    archive = tmp_path / "one.tar"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    result = chrootarchive.untar(archive, dest)
    assert result.entries == 1 and result.confinement in ("pivot", "chroot")
    assert (dest / "d" / "x.txt").read_bytes() == b"hello"
    assert os.getxattr(dest / "d" / "x.txt", "user.kA") == b"v"


def test_excludes_and_timeout_still_work_in_the_jail(tmp_path: Path) -> None:
    """Patterns need ``re`` and the timeout ``signal``: imported before the jail."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in ("keep/a", "drop/b", "keep/c.log"):
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    options = chrootarchive.UnpackOptions(
        excludes=("drop", "*/*.log"), limits=chrootarchive.Limits(timeout=60.0)
    )
    chrootarchive.untar(archive, tmp_path / "dest", options)
    assert sorted(p.name for p in (tmp_path / "dest").rglob("*")) == ["a", "keep"]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_wire_is_json(value: object) -> None:
    encoded = _wire.dumps(value)
    assert json.loads(encoded) == value
    assert _wire.loads(encoded) == value
    assert _wire.loads(json.dumps(value).encode()) == value


@pytest.mark.parametrize("document", [b"", b"{", b"[1] 2", b"NaN", b"{'a': 1}", b"\xff"])
def test_wire_refuses_what_is_not_json(document: bytes) -> None:
    with pytest.raises(ValueError):
        _wire.loads(document)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("%0123456789abcdefABCDEFgz/é"), max_size=12))
def test_percent_decode_is_unquote_to_bytes(text: str) -> None:
    assert tarreader._percent_decode(text) == urllib.parse.unquote_to_bytes(text)


def test_percent_decode_keeps_undecodable_bytes() -> None:
    # Names are decoded with surrogateescape: a lone surrogate is the byte it stands for.
    assert tarreader._percent_decode("a\udcff%41%zz") == b"a\xffA%zz"


def _reference_clean(name: str) -> str:
    """clean_name() as it was: always through normpath."""
    if "\x00" in name:
        raise MalformedArchiveError("NUL", name)
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned.startswith("/"):
        return posixpath.normpath("/" + cleaned.lstrip("/")).lstrip("/") or "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise BreakoutError("leaves", name)
    return cleaned


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", ".", "/", "..", "./", "\x00", "é"]), max_size=10)
       .map("".join))
def test_clean_name_fast_path_agrees_with_normpath(name: str) -> None:
    try:
        expected: str | type[Exception] = _reference_clean(name)
    except (BreakoutError, MalformedArchiveError) as err:
        expected = type(err)
    try:
        got: str | type[Exception] = paths.clean_name(name)
    except (BreakoutError, MalformedArchiveError) as err:
        got = type(err)
    assert got == expected


# -- the command line's start (issue 16) ------------------------------------------------
#
# One ``chrootarchive untar`` runs two interpreters, and each spends most of its start
# importing. The command line imports only what the chosen command needs, and starts
# the worker of an unpack before any of that, so that the two start on two cores.

# Runs the console script's entry point with ARGS; writes the modules it loaded (beyond
# the interpreter's own) to OUT, those loaded when the worker was spawned to OUT.spawn,
# and the number of workers spawned later (by subprocess) to OUT.later.
_CLI_IMPORTS = "import sys\n" + COUNT_SPAWNED_WORKERS + """
import os
sys.path.insert(0, sys.argv[1])
base = set(sys.modules)
out = sys.argv[2]

def dump(path, names):
    with open(path, "w") as f:
        f.write(" ".join(sorted(names - base)))

real_spawn = os.posix_spawn
def posix_spawn(*args, **kwargs):  # the real one, noting what was loaded by then
    dump(out + ".spawn", set(sys.modules))
    return real_spawn(*args, **kwargs)
os.posix_spawn = posix_spawn
real_exit = os._exit
def _exit(code):
    dump(out, set(sys.modules))
    with open(out + ".later", "w") as f:
        f.write(str(len(started)))
    real_exit(code)
os._exit = _exit
sys.argv = ["chrootarchive", *sys.argv[3:]]
from chrootarchive import cli
try:
    cli.entry_point()
except SystemExit:
    dump(out, set(sys.modules))
    raise
"""

# Loaded by the command line for no command at all, or by untar: each costs milliseconds
# of the start, or belongs to another command.
_NOT_FOR_UNTAR = {
    "json", "typing", "subprocess", "shutil", "tempfile", "signal", "socket", "selectors",
    "hashlib", "urllib", "http", "email", "ssl", "bz2", "lzma", "zstandard", "isal", "tqdm",
    "chrootarchive.cli.image", "chrootarchive.cli.layer", "chrootarchive.cli.listing",
    "chrootarchive.cli.pack", "chrootarchive.cli.pull", "chrootarchive.registry", "urllib3",
    "chrootarchive.operations.copy",
    "chrootarchive.operations.listing", "chrootarchive.operations.pythonic",
    "chrootarchive.jail.confine.openat2",
    # Only for layer stacks, --atomic and gzip: the parent's path is the longer one.
    "chrootarchive.runner.stack", "chrootarchive._channel",
    "chrootarchive.operations.staging", "zlib",
    "tarfile",  # only for extractall's errors (operations.pythonic.as_tar_error)
}
_NOT_BEFORE_A_COMMAND = {
    "dataclasses", "inspect", "typing", "json", "subprocess", "threading", "ctypes",
    "shutil", "chrootarchive.options", "chrootarchive.cli.args", "chrootarchive.runner",
}
# Loaded when the worker is spawned: the entry point, and what the spawn itself needs.
_AT_SPAWN = {"chrootarchive", "chrootarchive.cli", "chrootarchive.runner",
             "chrootarchive.runner.launch"}


def _cli_imports(tmp_path: Path, *args: str) -> tuple[set[str], set[str] | None]:
    """The modules ``chrootarchive ARGS`` loaded, and those it had when it spawned its
    worker (None: it spawned none)."""
    out = tmp_path / "modules"
    env = {k: v for k, v in os.environ.items() if k != "CHROOTARCHIVE_STANDBY"}
    subprocess.run([sys.executable, "-I", "-S", "-c", _CLI_IMPORTS, SRC, str(out), *args],
                   capture_output=True, check=False, env=env, timeout=60)
    spawned = Path(str(out) + ".spawn")
    at_spawn = set(spawned.read_text().split()) if spawned.exists() else None
    return set(out.read_text().split()), at_spawn


def _one_file_archive(tmp_path: Path) -> Path:
    archive = tmp_path / "one.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        t.addfile(info, io.BytesIO(b"hello\n"))
    return archive


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_help_and_version_import_almost_nothing(tmp_path: Path, args: list[str]) -> None:
    loaded, at_spawn = _cli_imports(tmp_path, *args)
    assert "argparse" in loaded  # the check looked at a real run
    assert not _NOT_BEFORE_A_COMMAND & loaded, sorted(_NOT_BEFORE_A_COMMAND & loaded)
    ours = {m for m in loaded if m.startswith("chrootarchive")}
    assert ours <= {"chrootarchive", "chrootarchive.cli", "chrootarchive.cli.main",
                    "chrootarchive.cli.commands", "chrootarchive.errors",
                    "chrootarchive.tarformat", "chrootarchive.tarformat._ustar",
                    "chrootarchive.engine", "chrootarchive.engine._finish",
                    "chrootarchive._syscall"}, sorted(ours)
    assert at_spawn is None  # no worker for a command that runs none


def test_untar_imports_only_what_it_needs(tmp_path: Path) -> None:
    archive = _one_file_archive(tmp_path)
    loaded, _ = _cli_imports(tmp_path, "untar", str(archive), str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "hello.txt").read_bytes() == b"hello\n"
    assert "chrootarchive.operations.untar" in loaded  # the check looked at a real untar
    image = sorted(m for m in loaded if m.startswith(("chrootarchive.image",
                                                       "chrootarchive.registry", "urllib3")))
    assert not image, f"untar imports the image or registry code: {image}"
    assert not _NOT_FOR_UNTAR & loaded, f"untar imports {sorted(_NOT_FOR_UNTAR & loaded)}"
    # The option classes are records, not dataclasses (chrootarchive._record): 17 ms.
    assert not {"dataclasses", "inspect"} & loaded
    # The compiled modules are the worker's; --version's line, which loads them, is made
    # only when asked for.
    compiled = {"chrootarchive.engine._finish", "chrootarchive.tarformat._ustar",
                "chrootarchive._syscall"}
    assert not compiled & loaded, sorted(compiled & loaded)
    if os.geteuid() == 0:  # pivot needs no ctypes in the parent (userns reads its maps)
        libc = {"ctypes", "chrootarchive._linux", "chrootarchive.jail.confine.pivot"}
        assert not libc & loaded, sorted(libc & loaded)


def test_list_imports_only_what_it_needs(tmp_path: Path) -> None:
    """``list`` runs no worker: none of the runner's modules that start and feed one,
    and its entries are records (``_record``), not dataclasses (with ``inspect``)."""
    archive = _one_file_archive(tmp_path)
    loaded, at_spawn = _cli_imports(tmp_path, "list", "--json", str(archive))
    assert "chrootarchive.operations.listing" in loaded  # the check looked at a real list
    assert at_spawn is None
    heavy = {"dataclasses", "inspect", "typing", "subprocess", "shutil", "zstandard",
             "isal", "chrootarchive.operations.untar", "chrootarchive.runner.ladder",
             "chrootarchive.runner.pump", "chrootarchive.runner.worker",
             "chrootarchive.operations.destination"}
    assert not heavy & loaded, f"list imports {sorted(heavy & loaded)}"


@pytest.mark.parametrize("command", ["untar", "apply-layer"])
def test_an_unpack_spawns_its_worker_before_importing(tmp_path: Path, command: str) -> None:
    """The worker's interpreter starts while the command line imports what it needs."""
    archive = _one_file_archive(tmp_path)
    loaded, at_spawn = _cli_imports(tmp_path, command, str(archive), str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "hello.txt").read_bytes() == b"hello\n"
    assert at_spawn is not None, "no worker was started early"
    assert at_spawn <= _AT_SPAWN | {m for m in loaded if not m.startswith("chrootarchive")}
    heavy = (_NOT_BEFORE_A_COMMAND - _AT_SPAWN | {"argparse", "re", "enum"}) & at_spawn
    assert not heavy, f"imported before the worker was spawned: {sorted(heavy)}"
    ours = {m for m in at_spawn if m.startswith("chrootarchive")}
    assert ours <= _AT_SPAWN, sorted(ours - _AT_SPAWN)


def test_tar_spawns_its_pack_worker_before_importing(tmp_path: Path) -> None:
    """``tar -o OUT SRC`` starts its pack worker before its imports (no other worker is
    spawned; the job goes to it: ``test_tar_and_cp_hand_their_jobs_to_the_early_workers``)
    and writes OUT beside itself without ``tempfile`` (with ``shutil`` and ``random``),
    nor ``typing``, nor ``subprocess``."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_bytes(b"hello\n")
    out = tmp_path / "out.tar"
    loaded, at_spawn = _cli_imports(tmp_path, "tar", "-o", str(out), str(src))
    with tarfile.open(out) as t:
        assert "hello.txt" in t.getnames()  # the check looked at a real tar
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    if os.geteuid() == 0:  # else the tree is read in-process (openat2): no worker
        assert at_spawn is not None, "no worker was started early"
        assert {m for m in at_spawn if m.startswith("chrootarchive")} <= _AT_SPAWN
        assert (tmp_path / "modules.later").read_text() == "0", "another worker was spawned"
    heavy = {"tempfile", "shutil", "random", "typing", "subprocess", "dataclasses",
             "inspect"}
    assert not heavy & loaded, sorted(heavy & loaded)


# Starts the early workers of ARGV as entry_point does, runs the command, and prints
# their pids and those of each worker given a job (the real hand-over, observed).
_EARLY_USED = "import sys\n" + COUNT_SPAWNED_WORKERS + """
import json, threading
sys.path.insert(0, sys.argv[1])
argv = sys.argv[2:]
from chrootarchive import cli
from chrootarchive.runner import spawn, standby
handed = []
real_hand_over = spawn.Booted.hand_over
def hand_over(self, document, fds):
    handed.append(self.pid())
    return real_hand_over(self, document, fds)
spawn.Booted.hand_over = hand_over
assert cli._start_workers_early(argv), "no early worker"
tid = threading.get_native_id()
early = [entry[2].pid() for key, entry in standby._registry.standbys.items() if key[0] == tid]
code = cli.main(argv)
sys.stdout.flush()
sys.stderr.write(json.dumps({"code": code, "early": early, "handed": handed,
                             "later": len(started)}))
"""


@pytest.mark.parametrize(("how", "workers"), [("tar", 1), ("cp file", 2), ("cp to stdout", 1),
                                              ("cp from stdin", 1)])
def test_tar_and_cp_hand_their_jobs_to_the_early_workers(
        tmp_path: Path, how: str, workers: int) -> None:
    """``tar`` and ``cp`` start the worker of each job before their imports, and each
    job runs in its own: ``tar``'s pack, ``cp SRC DST``'s pack then its unpack (no
    worker is spawned later, none booted ahead: ``standby.none_ahead``), ``cp SRC -``'s
    pack, ``cp - DST``'s unpack. Reading a tree runs in a worker by default for root
    only (``test_early_workers_wanted_for_an_unpack_or_a_pack``)."""
    if os.geteuid() != 0:
        pytest.skip("as root: a tree is read in-process (openat2) by default otherwise")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_bytes(b"hello\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    args = {"tar": ["tar", "-o", str(tmp_path / "out.tar"), str(src)],
            "cp file": ["cp", str(src / "hello.txt"), str(dest)],
            "cp to stdout": ["cp", str(src / "hello.txt"), "-"],
            "cp from stdin": ["cp", "-", str(dest)]}[how]
    stdin = _one_file_archive(tmp_path) if how == "cp from stdin" else None
    env = {k: v for k, v in os.environ.items() if k != "CHROOTARCHIVE_STANDBY"}
    with open(stdin or os.devnull, "rb") as given:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _EARLY_USED, SRC, *args],
                              stdin=given, capture_output=True, check=False, env=env,
                              timeout=60)
    seen = json.loads(done.stderr.decode().splitlines()[-1])
    assert seen["code"] == 0, done.stderr
    assert len(seen["handed"]) == workers, seen
    assert seen["handed"] == seen["early"], "a job did not go to its early worker"
    assert seen["later"] == 0, "a worker was spawned after the early ones"
    if how == "tar":
        with tarfile.open(tmp_path / "out.tar") as t:
            assert t.getnames() == ["hello.txt"]
    elif how == "cp to stdout":
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as t:
            assert t.getnames() == ["hello.txt"]
    else:
        assert (dest / "hello.txt").read_bytes() == b"hello\n"


@pytest.mark.parametrize("argv", [
    ["untar", "--help", "a.tar", "d"], ["untar", "-h"], ["untar", "--confine", "openat2", "a"],
    ["untar", "--confine=openat2", "a", "d"], ["apply-layer", "--conf", "openat2", "a", "d"],
    ["list", "a.tar"], ["tar", "--help"], ["tar", "--confine", "openat2", "src"],
    ["cp", "--help"], ["pull", "debian:12", "d"],
    ["unpack-image", "--confine", "openat2", "i", "d"],
    ["--version"], [],
    ["--", "untar", "a", "d"],
])
def test_no_early_worker_where_none_would_run(argv: list[str]) -> None:
    from chrootarchive import cli

    assert cli._early_jobs(argv) == ()


def test_early_workers_wanted_for_an_unpack_or_a_pack() -> None:
    from chrootarchive import cli

    assert cli._early_jobs(["untar", "a.tar", "d"]) == ("unpack",)
    assert cli._early_jobs(["apply-layer", "--confine", "pivot", "l.tar", "d"]) == ("unpack",)
    assert cli._early_jobs(["untar", "a.tar", "--", "--help"]) == ("unpack",)  # a file
    assert cli._early_jobs(["unpack-image", "--ref", "latest", "image", "d"]) == ("unpack",)
    assert cli._early_jobs(["cp", "-", "dst"]) == ("unpack",)  # cp's only job
    assert cli._early_jobs(["cp", "--chown", "1:1", "-", "dst"]) == ("unpack",)
    root = os.geteuid() == 0
    # cp's pack and tar's: in a worker by default for root only (AUTO_READ); otherwise
    # the tree is read in-process, and cp's unpack alone has a worker.
    assert cli._early_jobs(["cp", "src", "dst"]) == (("pack",) if root else ()) + ("unpack",)
    assert cli._early_jobs(["cp", "src", "-", "--json"]) == (("pack",) if root else ())
    assert cli._early_jobs(["tar", "-o", "out.tar", "src"]) == (("pack",) if root else ())
    # An option's value is not an operand: "-" after --chown is not cp's SRC.
    packs = ("pack",) if root else ()
    assert cli._early_jobs(["cp", "src", "-", "--chown", "1:1"]) == packs
    assert cli._early_jobs(["cp", "src", "-", "--ch", "1:1"]) == packs  # its prefix
    assert cli._early_jobs(["cp", "--exclude", "-", "src", "dst"]) == (*packs, "unpack")
    assert cli._early_jobs(["cp", "--to-root=/r", "-", "dst"]) == ("unpack",)
    assert cli._early_jobs(["cp", "--from-root", "/", "src", "-"]) == packs


def test_the_early_guess_knows_which_of_cps_options_take_a_value() -> None:
    """``_early_jobs`` skips the value of each of cp's options that take one: the list
    it keeps is the parser's."""
    import argparse

    from chrootarchive import cli

    parser = cli.build_parser("cp")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    taking = {option for action in sub.choices["cp"]._actions if action.nargs != 0
              for option in action.option_strings}
    assert taking == set(cli._CP_VALUE_OPTIONS)


def test_early_workers_guessed_for_a_user_who_is_not_root(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root, ``auto`` reads a tree in-process (openat2): no early pack worker, but
    for a mechanism that is a worker."""
    from chrootarchive import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli._early_jobs(["tar", "-o", "out.tar", "src"]) == ()
    assert cli._early_jobs(["tar", "--confine", "userns", "src"]) == ("pack",)
    assert cli._early_jobs(["cp", "src", "dst"]) == ("unpack",)
    assert cli._early_jobs(["cp", "--confine=userns", "src", "dst"]) == ("pack", "unpack")
    assert cli._early_jobs(["cp", "src", "-"]) == ()  # a pack alone
    assert cli._early_jobs(["untar", "a.tar", "d"]) == ("unpack",)


def test_an_image_unpack_uses_the_worker_it_started_first(tmp_path: Path) -> None:
    """``unpack-image`` starts its worker before its imports (the image code: 8 ms), and
    its one job for all the layers runs in that worker: no other is spawned."""
    from helpers.oci_images import Entry, OCIBuilder, make_tar

    b = OCIBuilder(tmp_path / "image")
    b.tag(b.image([make_tar([Entry("hello.txt", data=b"hello\n")]),
                   make_tar([Entry("two", data=b"2")])]), "t")
    loaded, at_spawn = _cli_imports(tmp_path, "unpack-image", str(b.root),
                                    str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "hello.txt").read_bytes() == b"hello\n"
    assert "chrootarchive.image.apply" in loaded  # the check looked at a real image
    assert at_spawn is not None, "no worker was started early"
    assert not {m for m in at_spawn if m.startswith("chrootarchive.image")}
    assert (tmp_path / "modules.later").read_text() == "0", "another worker was spawned"
    assert not {"dataclasses", "inspect", "typing", "tempfile"} & loaded, sorted(
        {"dataclasses", "inspect", "typing", "tempfile"} & loaded)
    if os.geteuid() == 0:  # pivot works: the rungs below it are not examined (ctypes)
        probes = {"ctypes", "chrootarchive._linux", "chrootarchive.jail.confine.userns",
                  "chrootarchive.jail.confine.openat2", "platform"}
        assert not probes & loaded, sorted(probes & loaded)


# Starts the worker early as entry_point does, then CHANGE, then runs untar; prints
# whether the call handed its job to that worker.
_EARLY = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
archive, dest, change = sys.argv[2:5]
keep = os.open(archive, os.O_RDONLY)  # a descriptor the worker must not inherit
os.set_inheritable(keep, True)
from chrootarchive import cli
from chrootarchive.runner import spawn, standby
import threading, time
handed = []  # the pid of each worker given a job (the real hand-over, observed)
real_hand_over = spawn.Booted.hand_over
def hand_over(self, document, fds):
    handed.append(self.pid())
    return real_hand_over(self, document, fds)
spawn.Booted.hand_over = hand_over
assert cli._start_workers_early(["untar", archive, dest])
booted = standby._registry.standbys[(threading.get_native_id(), "unpack")][2]
pid = booted.pid()
fds = {}
deadline = time.monotonic() + 20
while time.monotonic() < deadline:  # until the booting interpreter holds only what it keeps
    fds = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[name] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    if len(fds) <= 4:
        break
    time.sleep(0.01)
if change == "nice":
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 1)
code = cli.main(["untar", archive, dest])
booted.proc.wait()
print(json.dumps({"code": code, "used": handed == [pid], "handed": len(handed), "fds": fds,
                  "left": standby.running(), "early_gone": booted.proc.returncode is not None}))
"""


def _early(tmp_path: Path, change: str) -> dict[str, Any]:
    archive = _one_file_archive(tmp_path)
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _EARLY, SRC, str(archive), str(tmp_path / "dest"),
         change], capture_output=True, text=True, check=True, timeout=60)
    assert (tmp_path / "dest" / "hello.txt").read_bytes() == b"hello\n"
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_the_early_worker_holds_nothing_and_runs_the_call(tmp_path: Path) -> None:
    """Started before the command line's imports, the worker is a standby like any
    other (docs/security.md): /dev/null and its control socket, no descriptor of ours
    (the spawn closes what it would inherit), and the call hands it its job."""
    seen = _early(tmp_path, "none")
    assert seen["code"] == 0
    assert seen["used"], "the call did not use the early worker"
    assert seen["left"] == [] and seen["early_gone"]
    fds = seen["fds"]
    assert len(fds) == 4, fds
    assert [fds[n] for n in ("0", "1", "2")] == ["/dev/null"] * 3, fds
    others = [target for name, target in fds.items() if name not in ("0", "1", "2")]
    assert len(others) == 1 and others[0].startswith("socket:"), fds


def test_the_early_worker_is_not_used_once_the_context_changed(tmp_path: Path) -> None:
    """A command line that changed what a worker inherits (here its niceness) after the
    early start gets a worker spawned now; the early one is let go unused."""
    seen = _early(tmp_path, "nice")
    assert seen["code"] == 0
    assert not seen["used"], "the early worker ran a call made in another context"
    assert seen["handed"] == 1  # to a worker spawned for the call
    assert seen["left"] == [] and seen["early_gone"]


def test_each_command_parses_as_with_the_full_parser() -> None:
    """The parser built for one command (no parser made for the others) is the full
    parser for it: the same help and usage; the one for no command (``--help``) lists
    every command as the full parser does."""
    import argparse

    from chrootarchive.cli.commands import COMMANDS
    from chrootarchive.cli.main import build_parser

    full = build_parser()
    assert build_parser("").format_help() == full.format_help()
    sub = next(a for a in full._actions if a.dest == "command")
    assert isinstance(sub, argparse._SubParsersAction)
    for name in COMMANDS:
        one = build_parser(name)
        one_sub = next(a for a in one._actions if a.dest == "command")
        assert isinstance(one_sub, argparse._SubParsersAction)
        assert list(one_sub.choices) == [name]
        assert one_sub.choices[name].format_help() == sub.choices[name].format_help()
        assert one_sub.choices[name].format_usage() == sub.choices[name].format_usage()


def _workers_started_by(pid: int) -> list[int]:
    """Live worker processes whose parent pid argument is ``pid`` (they outlive it as
    orphans: the parent pid link itself is gone)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if any(b"chrootarchive.jail.main" in a for a in argv) and str(pid).encode() in argv \
                and state not in ("Z", "X"):
            found.append(int(entry))
    return found


@pytest.mark.parametrize("args", [
    ["untar", "{archive}", "{dest}", "--max-bytes", "lots"],  # refused by argparse
    ["untar", "{missing}", "{dest}"],  # refused by the operation
    ["tar", "-o", "{dest}.tar", "{missing}"],  # the pack worker, for a missing source
])
def test_a_failed_command_leaves_no_early_worker(tmp_path: Path, args: list[str]) -> None:
    """The worker started for a job that never runs is killed before the command line
    exits, not left to find out by itself."""
    archive = _one_file_archive(tmp_path)
    argv = [a.format(archive=archive, dest=tmp_path / "dest", missing=tmp_path / "no.tar")
            for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "chrootarchive", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": SRC})
    _, err = proc.communicate(timeout=60)
    left = _workers_started_by(proc.pid)
    assert proc.returncode in (2, 4), err
    assert left == [], f"workers left behind: {left}"


_INTERRUPT_AT_SPAWN = """
import signal, sys
sys.path.insert(0, sys.argv[1])
from chrootarchive.runner import launch
real = launch.spawn_early
def spawn_early(job):
    started = real(job)
    if job == "unpack":  # cp SRC DST's second (as root), or its only one
        signal.raise_signal(signal.SIGINT)
    return started
launch.spawn_early = spawn_early
sys.argv = ["chrootarchive", *sys.argv[2:]]
from chrootarchive.cli import entry_point
entry_point()
"""


def test_an_interrupt_as_the_early_workers_start_leaves_none(tmp_path: Path) -> None:
    """Ctrl-C just after ``cp``'s unpack worker was spawned, before it is kept: the
    command says "interrupted" in one line (130), and no worker is left behind. It
    raised out of the command line's start with a traceback, the worker untracked."""
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPT_AT_SPAWN, SRC, "cp", str(src),
                             str(dest)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, b"chrootarchive: error: interrupted\n")
    assert os.listdir(dest) == []
    left = _workers_started_by(proc.pid)  # killed and reaped before the command exits
    assert left == [], f"workers left behind: {left}"


# argparse's messages through gettext: counted, and translated where a catalogue is.
_GETTEXT_PROBE = """
import gettext, sys
sys.path.insert(0, sys.argv[1])
gettext.bindtextdomain("messages", sys.argv[2])
asked = []
find = gettext.find
gettext.find = lambda *args, **kwargs: asked.append(args) or find(*args, **kwargs)
from chrootarchive.cli import main
try:
    main(["untar"])
except SystemExit:
    pass
import argparse
print(len(asked), "locale" in sys.modules, argparse._ is gettext.gettext, file=sys.stderr)
"""


def _catalogue(path: Path, translations: dict[str, str]) -> None:
    """A GNU gettext catalogue (.mo) holding ``translations``, in UTF-8."""
    entries = {"": "Content-Type: text/plain; charset=UTF-8\n", **translations}
    keys = sorted(entries)
    ids = b"".join(k.encode() + b"\0" for k in keys)
    strs = b"".join(entries[k].encode() + b"\0" for k in keys)
    start = 7 * 4 + 16 * len(keys)
    table_ids, table_strs, at = b"", b"", 0
    for k in keys:
        table_ids += struct.pack("<II", len(k.encode()), start + at)
        at += len(k.encode()) + 1
    for k in keys:
        table_strs += struct.pack("<II", len(entries[k].encode()), start + at)
        at += len(entries[k].encode()) + 1
    header = struct.pack("<7I", 0x950412DE, 0, len(keys), 28, 28 + 8 * len(keys), 0, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(header + table_ids + table_strs + ids + strs)


@pytest.mark.parametrize("directory", ["empty", "missing"])
def test_argparse_asks_gettext_once_where_no_catalogue_is(tmp_path: Path,
                                                          directory: str) -> None:
    """Each of argparse's messages was a catalogue lookup (a stat and an exception,
    30 us): some 60 of them, 2 ms of a 30 ms one-file untar. Without a catalogue for
    the user's languages, one lookup says so and the messages are used as they are;
    without a directory of catalogues, none (nor ``locale``, which a lookup loads).
    argparse has its own functions back once ``main`` returns (or exits)."""
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-c", _GETTEXT_PROBE, SRC, str(tmp_path / directory)],
        capture_output=True, text=True, env={"LANG": "C.UTF-8"})
    lines = done.stderr.splitlines()
    assert lines[0].startswith("usage: chrootarchive untar"), done.stderr
    assert "error: the following arguments are required: ARCHIVE" in done.stderr
    assert lines[-1].split() == (["1", "True", "True"] if directory == "empty"
                                 else ["0", "False", "True"])


def test_argparse_messages_are_translated_where_a_catalogue_is(tmp_path: Path) -> None:
    _catalogue(tmp_path / "locale" / "xx" / "LC_MESSAGES" / "messages.mo", {
        "usage: ": "uso: ",
        "the following arguments are required: %s": "faltan los argumentos: %s"})
    done = subprocess.run(
        [sys.executable, "-I", "-c", _GETTEXT_PROBE, SRC, str(tmp_path / "locale")],
        capture_output=True, text=True, env={"LANGUAGE": "xx", "LANG": "C.UTF-8"})
    lines = done.stderr.splitlines()
    assert lines[0].startswith("uso: chrootarchive untar"), done.stderr
    assert "error: faltan los argumentos: ARCHIVE" in done.stderr
    assert int(lines[-1].split()[0]) > 1
