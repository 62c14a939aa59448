"""What a script can rely on: JSON documents with a schema version (also on failure),
one exit status per cause across commands, and nothing left by a run that failed
before writing (or a message that says what is left)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import chrootarchive
from helpers import tarbuild as tb
from helpers.cli import run_cli


def test_json_result_has_a_schema_version(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    archive = write_archive(tb.TarBuilder().file("f", b"1").build())
    document = json.loads(run_cli("untar", "--json", archive, tmp_path / "d").out)
    assert document["schema_version"] == 1
    assert document["entries"] == 1 and document["confinement"]


def test_json_error_document(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    archive = write_archive(tb.TarBuilder().file("../evil\x1b[31m", b"x").build())
    result = run_cli("untar", "--json", archive, tmp_path / "d")
    assert result.rc == 1
    document = json.loads(result.out)
    assert document == {"schema_version": 1, "error": {
        "class": "BreakoutError", "entry": "../evil\\x1b[31m",
        "message": "name would leave the destination", "exit_status": 1}}
    assert result.err.splitlines() == [
        "chrootarchive: error: ../evil\\x1b[31m: name would leave the destination"]


def test_json_usage_error_document(tmp_path: Path) -> None:
    result = run_cli("untar", "--json", "a.tar")  # no destination
    assert result.rc == 2
    assert json.loads(result.out)["error"]["class"] == "UsageError"


JSON_DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"


def test_every_field_of_the_documents_is_documented(tmp_path: Path,
                                                  write_archive: Callable[..., Path]) -> None:
    """docs/json.md lists each field a success document has (``names``, with ``-v``, and
    ``skipped_xattrs`` were missing)."""
    doc = JSON_DOC.read_text()
    archive = write_archive(tb.TarBuilder().file("f", b"1").build())
    untar = json.loads(run_cli("untar", "-v", "--json", archive, tmp_path / "d").out)
    layers = json.loads(run_cli("apply-layer", "-v", "--json", archive, archive,
                                tmp_path / "l").out)
    assert untar["names"] == ["f"] and layers["names"] == ["f", "f"]
    for field in {*untar, *layers, *layers["layers"][0]} - {"schema_version"}:
        assert f"| `{field}` |" in doc, f"{field} is not in docs/json.md"


def _section(doc: str, heading: str) -> str:
    """The text of docs/json.md from ``heading`` to the next heading of its level."""
    start = doc.index(heading + "\n")
    level = heading.split(" ")[0] + " "
    end = doc.find("\n" + level, start + len(heading))
    return doc[start:] if end < 0 else doc[start:end]


def test_every_commands_fields_are_documented(tmp_path: Path,
                                              write_archive: Callable[..., Path]) -> None:
    """The documents of ``unpack-image`` (and its ``layers``), ``tar``, ``list``, ``cp``
    and of a failure hold only fields docs/json.md lists (a layer's ``skipped_xattrs``
    was missing); ``pull``'s is ``unpack-image``'s (tests/test_pull.py)."""
    from helpers.oci_images import Entry, OCIBuilder, make_tar

    doc = JSON_DOC.read_text()
    layer = make_tar([Entry("f", data=b"1")])
    builder = OCIBuilder(tmp_path / "img")
    builder.tag(builder.image([layer]), "latest")
    image = json.loads(run_cli("unpack-image", "-v", "--json", builder.root,
                               tmp_path / "i").out)
    rows = _section(doc, "### `unpack-image`, `pull`")
    for field in set(image) - {"schema_version"}:
        assert f"| `{field}` |" in doc, f"unpack-image: {field} is not in docs/json.md"
    layers_row = next(line for line in rows.splitlines() if line.startswith("| `layers` |"))
    for field in image["layers"][0]:
        assert f"`{field}`" in layers_row, f"a layer's {field} is not in docs/json.md"
    archive = write_archive(layer)
    tar = json.loads(run_cli("tar", "--json", "-o", tmp_path / "t.tar", tmp_path / "i").out)
    for field in set(tar) - {"schema_version"}:
        assert f"`{field}`" in _section(doc, "### `tar`"), f"tar: {field} is not documented"
    listed = json.loads(run_cli("list", "--json", archive).out)
    for field in listed["entries"][0]:
        assert f'"{field}":' in _section(doc, "### `list`"), f"list: {field} is not documented"
    copied = json.loads(run_cli("cp", "--json", tmp_path / "i", tmp_path / "c").out)
    for field in set(copied) - {"schema_version"}:
        assert f"| `{field}` |" in _section(doc, "### `untar`, `apply-layer`, `cp`"), field
    failed = json.loads(run_cli("untar", "--json", tmp_path / "missing.tar", tmp_path / "m").out)
    for field in failed["error"]:
        assert f"| `{field}` |" in _section(doc, "## Failure"), f"error: {field}"


@pytest.mark.parametrize(("raised", "cls", "status"), [
    (KeyboardInterrupt, "KeyboardInterrupt", 130), (None, "Terminated", 143)])
def test_an_interruption_is_documented_with_its_class_and_status(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        raised: type[BaseException] | None, cls: str, status: int) -> None:
    """Ctrl-C and SIGTERM end a command with their own status and ``class``: each is a
    row of docs/json.md's exit statuses (143 and ``Terminated`` were not)."""
    from chrootarchive.cli import Terminated, untar
    from chrootarchive.cli.main import main

    def interrupted(_args: object) -> int:
        raise raised or Terminated

    monkeypatch.setattr(untar, "run", interrupted)
    assert main(["untar", "--json", "a.tar", "d"]) == status
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["class"], error["exit_status"]) == (cls, status)
    rows = [line for line in JSON_DOC.read_text().splitlines()
            if line.startswith(f"| {status} |")]
    assert len(rows) == 1 and f"`{cls}`" in rows[0], rows


@pytest.mark.parametrize("argv", [
    ["untar", "MISSING", "DEST"], ["apply-layer", "MISSING", "DEST"],
    ["unpack-image", "MISSING", "DEST"], ["list", "MISSING"],
])
def test_a_missing_input_is_exit_4_everywhere(tmp_path: Path, argv: list[str]) -> None:
    argv = [str(tmp_path / "missing.tar") if a == "MISSING" else
            str(tmp_path / "dest") if a == "DEST" else a for a in argv]
    result = run_cli(*argv)
    assert result.rc == 4, result
    assert "No such file or directory" in result.err
    assert not (tmp_path / "dest").exists()


def _help(*command: str) -> str:
    """A command's ``--help``, its lines joined (argparse wraps to the terminal, and
    after a hyphen: one line each here)."""
    result = run_cli(*command, "--help", env={"COLUMNS": "1000"})
    assert result.rc == 0, result.err
    return " ".join(result.out.split())


def test_cp_from_standard_input_exits_as_its_help_says(tmp_path: Path) -> None:
    """``cp - DST`` unpacks an archive: a hostile one is exit status 1, which ``cp
    --help`` did not list (0, 2, 3, 4, 70 only). The victim beside DST is untouched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_bytes(b"victim")
    hostile = tb.TarBuilder().file("ok", b"1").file("../victim/f", b"evil").build()
    result = run_cli("cp", "-", tmp_path / "dst", input=hostile)
    assert result.rc == 1, result
    assert "../victim/f: name would leave the destination" in result.err
    assert (victim / "f").read_bytes() == b"victim" and os.listdir(victim) == ["f"]
    assert "exit status: 0 done, 1 a bad or hostile archive" in _help("cp")


@pytest.mark.parametrize("command", [["untar"], ["tar"], ["cp"]])
def test_confine_auto_is_what_the_help_says(tmp_path: Path, command: list[str]) -> None:
    """As root, ``auto`` uses the mechanism ``--help`` names first for it: ``pivot`` to
    unpack, ``chroot`` to read a tree (``tar``; ``cp`` reports its writing side). The
    help of ``tar`` and ``cp`` said "pivot as root" for reading too."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(b"1")
    archive = tmp_path / "a.tar"
    archive.write_bytes(tb.TarBuilder().file("f", b"1").build())
    args: dict[str, list[str | Path]] = {
        "untar": [archive, tmp_path / "d"], "cp": [source, tmp_path / "d"],
        "tar": ["-o", tmp_path / "out.tar", source]}
    result = run_cli(*command, "--json", *args[command[0]])
    assert result.rc == 0, result.err
    used = json.loads(result.out)["confinement"]
    auto = _help(*command).split("auto (default: ", 1)[1]
    expected = {"untar": "the strongest available: pivot as root,",
                "tar": "chroot as root, else openat2",
                "cp": "reading, chroot as root, else openat2, else userns; writing, pivot as root,"}
    assert auto.startswith(expected[command[0]]), auto[:120]
    assert used == {"untar": "pivot", "tar": "chroot", "cp": "pivot"}[command[0]]


COMMANDS = ("untar", "apply-layer", "unpack-image", "pull", "tar", "cp", "list")


def _parsed_options() -> dict[str, set[str]]:
    """Each option string of each command's parser (``-h`` aside): the commands."""
    import argparse

    from chrootarchive.cli.main import build_parser

    found: dict[str, set[str]] = {}
    for command in COMMANDS:
        parser = build_parser(command)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for action in sub.choices[command]._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    found.setdefault(option, set()).add(command)
    return found


def _documented_options() -> dict[str, set[str]]:
    """The rows of docs/cli.md's tables: each option written in the first cell (``-C
    DIR``, ``--directory DIR``), the commands named in the second."""
    import re

    found: dict[str, set[str]] = {}
    for line in (JSON_DOC.parent / "cli.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `-") or len(cells) < 3:
            continue
        named = set(re.findall(r"`([a-z-]+)`", cells[1]))
        commands = (set(COMMANDS) - named if cells[1].startswith("all but")
                    else set(COMMANDS) if cells[1] == "all" else named)
        for option in re.findall(r"`(-[^` ]+)", cells[0]):
            assert option not in found, f"{option} is in docs/cli.md twice"
            found[option] = commands
    return found


def test_every_option_is_in_docs_cli_md() -> None:
    """docs/cli.md lists every option of every command, with the commands that take
    it, and no option that none takes: a new option, or one a command gains or loses,
    fails here until the table says so."""
    parsed, documented = _parsed_options(), _documented_options()
    assert set(documented) == set(parsed), (
        f"not in docs/cli.md: {sorted(set(parsed) - set(documented))}; "
        f"no command takes: {sorted(set(documented) - set(parsed))}")
    for option, commands in parsed.items():
        assert documented[option] == commands, (option, sorted(commands))
    assert "`--version`" in (JSON_DOC.parent / "cli.md").read_text()


#: Code spans that are other programs' command lines (`tar -tv` is GNU tar's).
OTHER_COMMANDS = ("tar ", "python", "pip ", ".venv/", "docker ", "umoci ", "skopeo ", "unshare ")
#: Other tools' options the docs quote alone: GNU tar's letters, Python's `-m`, `-P`, umoci's
#: `--rootless`, skopeo's `--all-platforms` (not done), Docker's `--pid=host`.
OTHER_TOOLS = {"-x", "-f", "-z", "-m", "-P", "--rootless", "--all-platforms", "--pid"}


def test_options_the_docs_name_exist() -> None:
    """Every option written in code spans of the README and docs/*.md (but the
    benchmark's page), and in their shell examples' ``chrootarchive`` command lines, is
    one that some command takes, or another tool's."""
    import re

    parsed = set(_parsed_options()) | {"-h", "--help", "--version"}
    docs = [JSON_DOC.parents[1] / "README.md",
            *(p for p in JSON_DOC.parent.glob("*.md") if p.name != "performance.md")]
    unknown = []
    for doc in docs:
        text = doc.read_text()
        examples = [line.split("chrootarchive ", 1)[1].split("|")[0].split("&&")[0]
                    for block in re.findall(r"```sh\n(.*?)```", text, re.S)
                    for line in block.splitlines() if "chrootarchive " in line]
        for span in [*re.findall(r"`([^`\n]+)`", text), *examples]:
            if span.startswith(OTHER_COMMANDS):
                continue
            for option in re.findall(r"(?:^|\s)(--?[a-zA-Z][\w-]*)", span):
                if option not in parsed | OTHER_TOOLS:
                    unknown.append(f"{doc.name}: {span!r}: {option}")
    assert not unknown, unknown


def test_quiet_keeps_the_output_as_its_help_says(tmp_path: Path,
                                                write_archive: Callable[..., Path]) -> None:
    """``-q`` silences standard error but for errors (the note of what ``fully_trusted``
    made, here); the output stays: ``apply-layer``'s size, ``-v``'s names. Its help said
    "print nothing but errors"."""
    archive = write_archive(tb.TarBuilder().file("su", b"12", mode=0o4755).build())
    assert "note:" in run_cli("apply-layer", archive, tmp_path / "loud").err
    quiet = run_cli("apply-layer", "-q", "-v", archive, tmp_path / "quiet")
    assert (quiet.rc, quiet.out, quiet.err) == (0, "su\n2\n", "")
    assert "-q, --quiet nothing but errors on standard error" in _help("apply-layer")
    assert "the output (-v's names, apply-layer's sizes) stays" in _help("untar")


def test_pull_help_names_every_auth_file_it_reads() -> None:
    """``pull --help`` lists the auth files in the order they are read; it left out
    ``~/.config/containers/auth.json``. docs/pull.md lists them too."""
    from chrootarchive.registry.auth import auth_files

    files, _ = auth_files(None, {"XDG_RUNTIME_DIR": "/RUN", "HOME": "/HOME"})
    shown = [f.replace("/RUN", "$XDG_RUNTIME_DIR").replace("/HOME", "~") for f in files]
    text = _help("pull")
    pull_md = " ".join((JSON_DOC.parent / "pull.md").read_text().split())
    positions = [text.index(name) for name in shown]
    assert positions == sorted(positions), shown
    for name in shown:
        assert f"`{name}`" in pull_md, name


@pytest.mark.parametrize("data", [b"", b"not a tar archive at all" * 40,
                                  tb.TarBuilder().file("../x", b"x").build()])
def test_a_failed_run_removes_the_destination_it_made(tmp_path: Path, data: bytes) -> None:
    dest = tmp_path / "new" / "deeper" / "dest"
    with pytest.raises(chrootarchive.ArchiveError) as caught:
        chrootarchive.untar(data, dest)
    assert not (tmp_path / "new").exists()
    assert "--atomic" not in str(caught.value)


def test_an_existing_destination_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(chrootarchive.ArchiveError):
        chrootarchive.untar(b"", dest)
    assert dest.is_dir()


def test_a_partial_tree_is_named(tmp_path: Path, write_archive: Callable[..., Path]) -> None:
    archive = write_archive(tb.TarBuilder().file("ok", b"1").file("../x", b"x").build())
    result = run_cli("untar", archive, tmp_path / "dest")
    assert result.rc == 1
    assert result.err.strip() == (
        "chrootarchive: error: ../x: name would leave the destination (what was unpacked "
        "before is left in the destination; --atomic unpacks all or nothing)")
    assert (tmp_path / "dest" / "ok").exists()
    assert run_cli("untar", "--atomic", archive, tmp_path / "atomic").rc == 1
    assert not (tmp_path / "atomic").exists()


def test_tqdm_is_a_dependency() -> None:
    """A progress bar on a terminal without extras: tqdm is declared as a dependency."""
    import importlib.metadata

    requires = importlib.metadata.requires("chrootarchive") or []
    assert any(r.startswith("tqdm") and "extra ==" not in r for r in requires)


def _closing(redirection: str) -> list[str]:
    """A prefix that runs the command line with a standard descriptor redirected."""
    return ["sh", "-c", f'exec {redirection} "$@"', "sh"]


@pytest.mark.parametrize("command", ["untar", "list"])
def test_a_closed_standard_input_named_by_dash_is_a_source_error(
        tmp_path: Path, command: str) -> None:
    """``-`` with standard input closed (a daemon's, a CI runner's): one line, exit 4.
    It was exit 70, "'NoneType' object has no attribute 'isatty'" (fuzzing, issue 16,
    twentieth round)."""
    argv = [command, "-"] + ([str(tmp_path / "dest")] if command == "untar" else [])
    result = run_cli(*argv, prefix=_closing("0<&-"))
    assert result.rc == 4, result
    assert result.err == "chrootarchive: error: -: standard input is closed (give ARCHIVE, " \
                         "or pipe one into -)\n"


@pytest.mark.parametrize("closed", ["1>&-", "2>&-"])
def test_a_closed_stdout_or_stderr_does_not_stop_an_unpack(
        tmp_path: Path, write_archive: Callable[..., Path], closed: str) -> None:
    """A closed standard output or error becomes /dev/null, as with GNU tar: the unpack
    succeeds. With stderr closed it did not run at all; with stdout closed it ended in
    a traceback, exit 1."""
    archive = write_archive(tb.TarBuilder().file("f", b"data").build())
    argvs: tuple[list[str | Path], ...] = (["untar", "-v", archive, tmp_path / "dest"],
                                           ["list", "-v", archive])
    for argv in argvs:
        result = run_cli(*argv, prefix=_closing(closed))
        assert result.rc == 0 and "Traceback" not in result.err, result
    assert (tmp_path / "dest" / "f").read_bytes() == b"data"


@pytest.mark.parametrize("argv", [["untar", "-v"], ["untar", "--json"], ["list", "-v"]])
def test_a_full_standard_output_is_an_error_not_a_success(
        tmp_path: Path, write_archive: Callable[..., Path], argv: list[str]) -> None:
    """Standard output on a full disk (/dev/full): the listing or the JSON document is
    lost, so the command fails with one line, exit 4. ``untar -v`` said nothing and
    exited 0 (a thread's traceback); ``list -v`` exited 70; ``--json`` printed two
    tracebacks."""
    archive = write_archive(tb.TarBuilder().file("f", b"data").build())
    dest = [str(tmp_path / "dest")] if argv[0] == "untar" else []
    result = run_cli(*argv, archive, *dest, prefix=_closing(">/dev/full"))
    assert result.rc == 4, result
    lines = result.err.splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "no space left" in lines[0], lines


def test_a_full_standard_output_fails_a_stack_of_layers_too(
    tmp_path: Path, write_archive: Callable[..., Path]
) -> None:
    """``apply-layer -v`` of two layers lists them from one worker's stack: the same
    one-line error, exit 4, when standard output is full (the stack's listing thread
    printed a traceback and the command exited 0)."""
    first = write_archive(tb.TarBuilder().file("a", b"a").build())
    second = write_archive(tb.TarBuilder().file("b", b"b").build())
    result = run_cli("apply-layer", "-v", first, second, tmp_path / "dest",
                     prefix=_closing(">/dev/full"))
    assert result.rc == 4, result
    lines = result.err.splitlines()
    assert len(lines) == 1 and "cannot write the list of entries" in lines[0], lines
