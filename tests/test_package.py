"""The package as users meet it: its version, its metadata, its licence, the machines
it supports, and errors that are also the ``OSError``s Python code already catches."""

from __future__ import annotations

import errno
import importlib.metadata
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import chrootarchive
from chrootarchive import DestinationError, SourceError
from chrootarchive.contract import decode_reply, encode_error
from helpers.cli import run_cli

REPO = Path(__file__).resolve().parent.parent


def test_version_is_the_distributions() -> None:
    assert chrootarchive.__version__ == importlib.metadata.version("chrootarchive")


def test_version_flag_prints_version_and_platform() -> None:
    result = run_cli("--version")
    assert result.rc == 0
    line = result.out.strip()
    assert line.startswith(f"chrootarchive {chrootarchive.__version__} (Python ")
    assert "Linux" in line
    # The test suite's install has gcc.
    assert line.endswith(", compiled header parser, helper loop and system calls)")


def test_metadata_for_a_package_index() -> None:
    meta = importlib.metadata.metadata("chrootarchive")
    classifiers = meta.get_all("Classifier") or []
    for needed in ("Operating System :: POSIX :: Linux", "Typing :: Typed",
                   "Programming Language :: Python :: 3.11"):
        assert needed in classifiers
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("Project-URL")
    assert (REPO / "LICENSE").read_text().startswith("\n                                 Apache")


def test_unsupported_machine_is_a_setup_error(tmp_path: Path) -> None:
    """Not x86_64 or aarch64: exit 3 saying so, before anything is created (the system
    call numbers would be another machine's)."""
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(tmp_path), "--files-from=/dev/null"],
                   check=True)
    dest = tmp_path / "dest"
    result = run_cli("untar", archive, dest, prefix=["setarch", "i686"])
    assert result.rc == 3, result.err
    assert "this machine is i686; chrootarchive supports x86_64 and aarch64 only" in result.err
    assert "Traceback" not in result.err
    assert not dest.exists()


def test_missing_archive_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        chrootarchive.untar(str(tmp_path / "missing.tar"), str(tmp_path / "dest"))
    err = caught.value
    assert isinstance(err, SourceError)
    assert err.errno == errno.ENOENT
    assert err.filename == str(tmp_path / "missing.tar")
    assert str(err).startswith(f"{tmp_path / 'missing.tar'}: cannot open the archive")


def test_directory_as_archive_is_is_a_directory_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as caught:
        chrootarchive.untar(str(tmp_path), str(tmp_path / "dest"))
    assert isinstance(caught.value, SourceError)
    assert caught.value.errno == errno.EISDIR


@pytest.mark.parametrize(("code", "builtin"), [
    (errno.ENOENT, FileNotFoundError), (errno.EACCES, PermissionError),
    (errno.EPERM, PermissionError), (errno.EEXIST, FileExistsError),
    (errno.ENOTDIR, NotADirectoryError), (errno.EISDIR, IsADirectoryError),
])
@pytest.mark.parametrize("cls", [SourceError, DestinationError])
def test_os_level_errors_pick_the_builtin_class(
        cls: type[SourceError | DestinationError], code: int, builtin: type[OSError]) -> None:
    err = cls("the problem", "the/entry", code)
    assert isinstance(err, builtin) and isinstance(err, cls)
    assert type(err).__name__ == cls.__name__
    assert (err.errno, err.strerror, err.filename) == (code, "the problem", "the/entry")
    assert str(err) == "the/entry: the problem"
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, builtin) and isinstance(again, cls)
    assert (again.errno, again.message, again.entry) == (code, "the problem", "the/entry")
    with pytest.raises(builtin):
        decode_reply(encode_error(err))
    with pytest.raises(cls):
        decode_reply(encode_error(err))


def test_os_level_error_without_errno_is_plain() -> None:
    err = DestinationError("not a directory", "dest")
    assert isinstance(err, OSError) and not isinstance(err, NotADirectoryError)
    assert err.errno is None
    assert err.args == ("not a directory", "dest")
    assert pickle.loads(pickle.dumps(err)).args == err.args


# -- input hygiene: what GNU tar refuses ---------------------------------------------


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run the command line with a pseudo-terminal as stdin; (status, stderr)."""
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "chrootarchive", *argv], stdin=follower,
                              capture_output=True, text=True, timeout=30, check=False)
    finally:
        os.close(follower)
        os.close(leader)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("argv", [
    ["untar", "-", "DEST"], ["apply-layer", "-", "DEST"], ["unpack-image", "-", "DEST"],
])
def test_terminal_on_stdin_is_refused(tmp_path: Path, argv: list[str]) -> None:
    """GNU tar: "Refusing to read archive contents from terminal"; the user would wait."""
    argv = [str(tmp_path / "dest") if arg == "DEST" else arg for arg in argv]
    status, stderr = _on_a_terminal(argv)
    assert status == 2, stderr
    assert stderr.strip() == ("chrootarchive: error: refusing to read an archive from a "
                              "terminal (give ARCHIVE, or pipe one into -)")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("source", ["empty-file", "stdin"])  # /dev/null: never opened
def test_empty_input_is_not_a_tar_archive(tmp_path: Path, source: str) -> None:
    path = {"empty-file": tmp_path / "empty.tar", "dev-null": Path("/dev/null"),
            "stdin": Path("-")}[source]
    if source == "empty-file":
        path.write_bytes(b"")
    result = run_cli("untar", path, tmp_path / "dest", input=b"")
    assert result.rc == 1, result
    named = "" if source == "stdin" else f"{path}: "  # a file is named, as a layer is
    assert result.err.strip() == f"chrootarchive: error: {named}not a tar archive: empty input"


def test_end_of_archive_blocks_alone_are_an_empty_archive(tmp_path: Path) -> None:
    """A layer with nothing in it is two zero blocks (or more): valid, as GNU tar says."""
    archive = tmp_path / "empty.tar"
    archive.write_bytes(b"\0" * 10240)
    result = run_cli("untar", archive, tmp_path / "dest")
    assert result.rc == 0, result
    assert list((tmp_path / "dest").iterdir()) == []
    gnu = subprocess.run(["tar", "tf", str(archive)], capture_output=True, check=False)
    assert gnu.returncode == 0
    empty = tmp_path / "zero.tar"
    empty.write_bytes(b"")
    assert subprocess.run(["tar", "tf", str(empty)], capture_output=True,
                          check=False).returncode != 0, "GNU tar refuses an empty input"


def test_readme_reads_well_on_a_package_index() -> None:
    """Links absolute (a package index shows the README without the repository), the
    first two commands install-and-run and install-and-test, the Python parses."""
    import ast
    import re

    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("https://") for link in links), links
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    assert blocks[0][1].strip().endswith("ls -lR /tmp/sample-root")
    assert "chrootarchive untar examples/sample.tar.gz" in blocks[0][1]
    assert blocks[1][1].strip().endswith(".venv/bin/python -m pytest -q")
    for lang, code in blocks:
        if lang == "python":
            ast.parse(code)
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q\n" in ci


def test_the_benchmark_leaves_out_tarfile_where_it_has_no_filters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/performance.md reruns the benchmark in a venv of Debian 12's Python 3.11.2,
    whose tarfile has no filters (PEP 706, 3.11.4): its tarfile tools are reported as
    unavailable there, not failed in every run (``run.py --smoke --strict`` exited 1)."""
    import importlib.util
    import tarfile

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # run.py imports compiled.py
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", run)  # its dataclasses look it up
    spec.loader.exec_module(run)
    assert run.probe_tools(["tarfile-data"], "true").available == {"tarfile-data": ""}
    monkeypatch.delattr(tarfile, "data_filter")
    why = run.probe_tools(["tarfile-data", "tarfile-trusted"], "true").available
    assert set(why) == {"tarfile-data", "tarfile-trusted"}
    assert all("before Python 3.11.4" in reason for reason in why.values()), why
