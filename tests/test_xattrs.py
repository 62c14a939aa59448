"""xattrs the kernel refuses, and POSIX ACLs whose ids are owners (issue 14, item 8).

- An xattr the kernel refuses with ``EPERM`` (``security.ima`` under an IMA policy,
  ``user.*`` on a symlink or a device) is skipped with one summary warning and counted
  in the result (``skipped_xattrs``), as Docker and GNU tar skip it; it no longer fails
  the whole unpack.
- An ACL's named user and group ids go through the id maps like owners; inside a user
  namespace, entries naming an id outside its map are left out (one warning) instead
  of the kernel refusing the whole xattr with EINVAL, even with ``--best-effort-xattrs``.
  Run for real as uid 65534 with ``setpriv``, under ``userns`` and ``openat2``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import chrootarchive
from helpers.cli import run_cli
from helpers.tarbuild import ACL_GROUP, ACL_USER, TarBuilder, parse_acl, posix_acl
from helpers.unpriv import NOBODY, cli_as, make_package_copy, world_dir

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"


def _refused_archive(path: Path) -> None:
    """user.* xattrs on a symlink and a FIFO (the kernel says EPERM: user xattrs live on
    files and directories only), and one on a file, which works."""
    (TarBuilder()
     .pax({"SCHILY.xattr.user.ok": b"1"}).file("f", b"data")
     .pax({"SCHILY.xattr.user.on-link": b"2"}).symlink("link", "f")
     .pax({"SCHILY.xattr.user.on-fifo": b"3"}).fifo("fifo")
     .file("after", b"still unpacked")
     .write(path))


def test_xattr_refused_with_eperm_is_skipped_and_counted(mechanism: str,
                                                         tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    _refused_archive(archive)
    dest = tmp_path / "dest"
    result = chrootarchive.untar(archive, dest, chrootarchive.UnpackOptions(confine=mechanism))
    assert (dest / "after").read_bytes() == b"still unpacked"
    assert os.getxattr(dest / "f", "user.ok") == b"1"
    assert os.path.islink(dest / "link")
    assert result.skipped_xattrs == 2
    refused = [w for w in result.warnings if "refused by the kernel" in w]
    assert len(refused) == 1, result.warnings
    assert refused[0].startswith("2 xattrs refused") and "user.on-link of link" in refused[0]


def test_xattr_refused_with_eperm_cli(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    _refused_archive(archive)
    result = run_cli("untar", "--json", archive, tmp_path / "dest")
    assert result.rc == 0, result.err
    out = json.loads(result.out)
    assert out["skipped_xattrs"] == 2
    assert sum("refused by the kernel" in w for w in out["warnings"]) == 1


def test_apply_layer_counts_skipped_xattrs_in_json(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    _refused_archive(archive)
    result = run_cli("apply-layer", "--json", archive, tmp_path / "dest")
    assert result.rc == 0, result.err
    assert json.loads(result.out)["skipped_xattrs"] == 2


def _acl_archive(path: Path, *, user: int, group: int) -> None:
    named = ((ACL_USER, 6, user), (ACL_GROUP, 4, group))
    (TarBuilder()
     .pax({f"SCHILY.xattr.{ACCESS}": posix_acl(*named, mask=6)}).file("f", b"x", mode=0o664)
     .pax({f"SCHILY.xattr.{ACCESS}": posix_acl(*named), f"SCHILY.xattr.{DEFAULT}":
           posix_acl(*named)}).dir("d", mode=0o775)
     .write(path))


@pytest.mark.parametrize("mechanism", ["pivot", "chroot", "openat2"])  # userns: below
def test_acl_ids_are_mapped_like_owners(mechanism: str, tmp_path: Path) -> None:
    """With --uid-map/--gid-map, an ACL's named ids are host ids, as owners are."""
    archive = tmp_path / "a.tar"
    _acl_archive(archive, user=1000, group=2000)
    dest = tmp_path / "dest"
    maps = (chrootarchive.IDMap(container_id=0, host_id=100_000, size=65_536),)
    chrootarchive.untar(archive, dest, chrootarchive.UnpackOptions(
        confine=mechanism, uid_maps=maps, gid_maps=maps))
    for path, key in ((dest / "f", ACCESS), (dest / "d", ACCESS), (dest / "d", DEFAULT)):
        named = {(t, i) for t, _p, i in parse_acl(os.getxattr(path, key)) if t in (2, 8)}
        assert named == {(ACL_USER, 101_000), (ACL_GROUP, 102_000)}, (path, key)
    assert os.stat(dest / "f").st_uid == 100_000


def test_acl_id_outside_the_maps_is_an_error(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    _acl_archive(archive, user=70_000, group=0)
    result = run_cli("untar", "--uid-map", "0:100000:65536", "--gid-map", "0:100000:65536",
                     archive, tmp_path / "dest")
    assert result.rc == 1, result
    assert "f: container uid 70000 cannot be mapped" in result.err, result.err


@pytest.mark.parametrize("mechanism", ["userns", "openat2"])
def test_acl_naming_unmapped_ids_as_nobody(mechanism: str) -> None:
    """As uid 65534: under userns only the caller is mapped (as 0), so the ACL entries
    for user 1000 are left out (one warning) and those for group 0 (the caller) kept;
    under openat2 (no namespace) every id can be written. Before, userns failed the
    whole unpack with EINVAL, even with --best-effort-xattrs."""
    with world_dir("acl") as base:
        pythonpath = make_package_copy(base)
        archive = base / "a.tar"
        _acl_archive(archive, user=1000, group=0)
        archive.chmod(0o644)
        dest = base / "dest"
        dest.mkdir()
        os.chown(dest, NOBODY, NOBODY)
        result = cli_as(pythonpath, "untar", "--json", "--best-effort-xattrs", "--confine",
                        mechanism, archive, dest)
        assert result.rc == 0, result.err
        out = json.loads(result.out)
        assert out["confinement"] == mechanism
        dropped = [w for w in out["warnings"] if "ACL entries" in w]
        for path, key in ((dest / "f", ACCESS), (dest / "d", ACCESS), (dest / "d", DEFAULT)):
            named = {(t, i) for t, _p, i in parse_acl(os.getxattr(path, key)) if t in (2, 8)}
            if mechanism == "userns":
                # Group 0 inside is the caller outside.
                assert named == {(ACL_GROUP, NOBODY)}, (path, key, named)
            else:
                assert named == {(ACL_USER, 1000), (ACL_GROUP, 0)}, (path, key, named)
        if mechanism == "userns":
            assert len(dropped) == 1, out["warnings"]
            assert dropped[0].startswith("3 ACL entries left out") and "u:1000" in dropped[0]
        else:
            assert dropped == [], out["warnings"]


def _redeclared_default_acls(path: Path, count: int, size: int) -> bytes:
    """``d`` declared ``count`` times with a ``size``-byte default ACL value, then once
    more with a valid one (the last one wins): the value it gets."""
    final = posix_acl((ACL_USER, 5, 1234))
    builder = TarBuilder()
    for _ in range(count):
        builder.pax({f"SCHILY.xattr.{DEFAULT}": posix_acl() + bytes(size)}).dir("d")
    builder.pax({f"SCHILY.xattr.{DEFAULT}": final}).dir("d").write(path)
    return final


def test_default_acls_kept_for_the_end_count_as_bytes_written(tmp_path: Path) -> None:
    """The default ACLs kept for the end go to a spill file on the destination's
    filesystem: counted as file data, against max_bytes and the reserve. A directory
    declared 200 times with a 60 KiB value (12 MB, a 40 KiB gzip) filled the
    filesystem past the reserve, and any max_bytes, with nothing written."""
    archive = tmp_path / "a.tar"
    _redeclared_default_acls(archive, 200, 60_000)
    options = chrootarchive.UnpackOptions(limits=chrootarchive.Limits(max_bytes=1 << 20))
    with pytest.raises(chrootarchive.LimitExceededError, match="max_bytes"):
        chrootarchive.untar(archive, tmp_path / "dest", options)
    dest = tmp_path / "dest2"  # a few are fine
    final = _redeclared_default_acls(archive, 3, 60_000)
    chrootarchive.untar(archive, dest, options)
    assert os.getxattr(dest / "d", DEFAULT) == final


def test_a_default_acl_larger_than_any_xattr_is_an_error_at_once(tmp_path: Path) -> None:
    """A default ACL value larger than the kernel takes (64 KiB) is the error setting it
    gives (E2BIG), at its entry as before the ACLs were kept for the end: not 100 KB
    (up to a MiB) of it kept per entry, to be replaced by the next declaration of the
    directory."""
    archive = tmp_path / "a.tar"
    _redeclared_default_acls(archive, 1, 100_000)
    with pytest.raises(chrootarchive.ArchiveError, match="setting xattr") as info:
        chrootarchive.untar(archive, tmp_path / "dest")
    assert info.value.entry == "d"
