"""What a script can rely on: JSON documents with a schema version (also on failure),
one exit status per cause across commands, and nothing left by a run that failed
before writing (or a message that says what is left)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import chrootarchive
from helpers import tarbuild as tb
from helpers.cli import run_cli


def test_json_result_has_a_schema_version(tmp_path: Path, write_archive) -> None:
    archive = write_archive(tb.TarBuilder().file("f", b"1").build())
    document = json.loads(run_cli("untar", "--json", archive, tmp_path / "d").out)
    assert document["schema_version"] == 1
    assert document["entries"] == 1 and document["confinement"]


def test_json_error_document(tmp_path: Path, write_archive) -> None:
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


def test_a_partial_tree_is_named(tmp_path: Path, write_archive) -> None:
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
