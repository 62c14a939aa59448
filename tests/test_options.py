"""Options are checked when they are made: a bad value is the caller's error at once
(``TypeError`` for a wrong type, ``ValueError`` for a bad value), before any process
starts, and exit status 2 on the command line."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from chrootarchive import IDMap, Limits, PackOptions, UnpackOptions
from helpers.cli import run_cli

BAD_LIMITS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"max_bytes": "1G"}, TypeError), ({"max_bytes": 0}, ValueError),
    ({"max_entries": 1.5}, TypeError), ({"max_entries": -1}, ValueError),
    ({"max_file_size": True}, TypeError), ({"max_path_length": 0}, ValueError),
    ({"max_path_depth": "3"}, TypeError), ({"max_xattr_bytes": -5}, ValueError),
    ({"timeout": "60"}, TypeError), ({"timeout": 0}, ValueError),
    ({"timeout": float("inf")}, ValueError), ({"timeout": float("nan")}, ValueError),
]

BAD_UNPACK: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"excludes": "*.txt"}, TypeError),  # one string where a sequence is expected
    ({"excludes": b"*.txt"}, TypeError), ({"excludes": [1]}, TypeError),
    ({"excludes": ["[abc"]}, ValueError), ({"excludes": ["a\x00b"]}, ValueError),
    ({"chown": (1,)}, TypeError), ({"chown": 5}, TypeError), ({"chown": (-1, 0)}, ValueError),
    ({"chown": (0, 2**32 - 1)}, ValueError),  # (gid_t)-1 means "no change" to the kernel
    ({"chown": ("0", 0)}, TypeError),
    ({"uid_maps": IDMap(0, 1000, 1)}, TypeError), ({"uid_maps": [(0, 1000, 1)]}, TypeError),
    ({"gid_maps": (IDMap(0, 1000, 10), IDMap(5, 2000, 10))}, ValueError),  # overlap
    ({"no_lchown": 1}, TypeError), ({"data_only": "yes"}, TypeError),
    ({"atomic": None}, TypeError), ({"best_effort_xattrs": 0}, TypeError),
    ({"no_overwrite_dir_nondir": "no"}, TypeError), ({"rootless_xattr": 1}, TypeError),
    ({"confine": "jail"}, ValueError), ({"confine": None}, ValueError),
    ({"whiteout_format": "btrfs"}, ValueError), ({"limits": {"max_bytes": 1}}, TypeError),
]

BAD_PACK: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"include_files": "a"}, TypeError), ({"include_files": ["../a"]}, ValueError),
    ({"excludes": "x"}, TypeError), ({"excludes": ["a[b"]}, ValueError),
    ({"compression": "lz4"}, ValueError), ({"compression_level": "9"}, TypeError),
    ({"compression": "gzip", "compression_level": 10}, ValueError),
    ({"compression": "zstd", "compression_level": 0}, ValueError),
    ({"chown": (0, -1)}, ValueError), ({"xattrs": "yes"}, TypeError),
    ({"include_source_dir": 1}, TypeError), ({"whole_second_mtimes": None}, TypeError),
    ({"user_names": {"0": "root"}}, TypeError), ({"group_names": {0: 5}}, TypeError),
    ({"user_names": [("0", "root")]}, TypeError), ({"rebase_names": {"a": 1}}, TypeError),
    ({"confine": "nope"}, ValueError), ({"uid_maps": [IDMap(0, 0, 1), "x"]}, TypeError),
]


@pytest.mark.parametrize(("fields", "error"), BAD_LIMITS, ids=repr)
def test_bad_limits_are_refused(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="Limits"):
        Limits(**fields)


@pytest.mark.parametrize(("fields", "error"), BAD_UNPACK, ids=repr)
def test_bad_unpack_options_are_refused(fields: dict[str, Any],
                                        error: type[Exception]) -> None:
    with pytest.raises(error, match=r"UnpackOptions|IDMap"):
        UnpackOptions(**fields)
    with pytest.raises(error):  # replace() runs the same checks
        dataclasses.replace(UnpackOptions(), **fields)


@pytest.mark.parametrize(("fields", "error"), BAD_PACK, ids=repr)
def test_bad_pack_options_are_refused(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        PackOptions(**fields)


@pytest.mark.parametrize(("args", "error"), [
    ((-1, 0, 1), ValueError), ((0, 0, 0), ValueError), ((0, "0", 1), TypeError),
    ((2**32 - 10, 0, 20), ValueError), ((0, 1.0, 1), TypeError), ((True, 0, 1), TypeError),
])
def test_bad_id_ranges_are_refused(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error, match="IDMap"):
        IDMap(*args)


def test_good_values_are_kept_and_normalised() -> None:
    assert Limits() == Limits() and Limits.strict().timeout == 3600.0
    assert Limits(timeout=1, max_bytes=None).timeout == 1
    options = UnpackOptions(excludes=["a", "!a/b", "*.log"], chown=[5, 6],
                            uid_maps=[IDMap(0, 100000, 65536)], confine="openat2",
                            limits=Limits.strict(), whiteout_format="overlay")
    assert options.excludes == ("a", "!a/b", "*.log")
    assert options.chown == (5, 6) and options.uid_maps == (IDMap(0, 100000, 65536),)
    pack = PackOptions(include_files=["a/", "/b"], excludes=["**/*.o"], compression="zstd",
                       compression_level=19, user_names={0: "root"}, rebase_names={"a": "z"})
    assert pack.include_files == ("a", "b") and pack.excludes == ("**/*.o",)
    assert IDMap(0, 0, 2**32 - 1).size == 2**32 - 1


def test_a_bad_pattern_is_a_usage_error_before_any_worker(tmp_path: Any) -> None:
    (tmp_path / "a.tar").write_bytes(bytes(1024))
    dest = tmp_path / "dest"
    result = run_cli("untar", "--exclude", "[abc", tmp_path / "a.tar", dest)
    assert result.rc == 2, result
    assert result.err.startswith("chrootarchive: error:") and "[abc" in result.err
    assert "Traceback" not in result.err and not dest.exists()
