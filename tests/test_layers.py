"""Container layers: whiteouts, opaque directories, the overlay output format.

The overlay format is checked against the kernel itself: each layer unpacked into its
own directory in overlay format, mounted as the lower directories of a real overlayfs
(inside a private mount namespace of a child process), must look exactly like the
layers applied in order with ``apply_layer``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

import chrootarchive
from helpers import tree
from helpers.tarbuild import ACL_GROUP, ACL_USER, TarBuilder, posix_acl

Entry = tuple[str, str, object]  # (name, kind f/d/l/h/c, data or link target)


def layer(path: Path, entries: Sequence[Entry]) -> Path:
    """Write a layer tar: f=file (bytes), d=dir, l=symlink, h=hardlink, c=chardev."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                t.addfile(info)
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
                t.addfile(info)
            else:
                assert isinstance(data, bytes)
                info.size, info.mode = len(data), 0o644
                t.addfile(info, io.BytesIO(data))
    return path


def listing(root: Path) -> dict[str, str]:
    """relative path -> 'dir', 'link:TARGET', or the file's content."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISCHR(st.st_mode):
                out[rel] = f"chr:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            else:
                out[rel] = p.read_bytes().decode()
    return out


# Docker's four-layer whiteout scenario, with dot-names and a root-level opaque marker.
FOUR_LAYERS: list[list[Entry]] = [
    [
        ("a", "d", None), ("a/b", "d", None), ("a/b/c", "f", b"c1"), ("a/b/d", "f", b"d1"),
        ("e", "f", b"e1"), (".hidden", "f", b"h1"), (".hdir", "d", None),
        (".hdir/x", "f", b"x1"), ("keep", "d", None), ("keep/k", "f", b"k1"),
    ],
    [
        ("a/b/.wh.c", "f", b""), (".wh.e", "f", b""), (".wh..hidden", "f", b""),
        (".hdir/.wh..wh..opq", "f", b""), (".hdir/y", "f", b"y2"), ("new", "f", b"n2"),
    ],
    [
        ("a/z", "f", b"z3"), ("a/.wh..wh..opq", "f", b""), ("a/w", "f", b"w3"),
        (".wh.keep", "f", b""), ("keep", "d", None), ("keep/k2", "f", b"k3"),
    ],
    [
        ("top", "f", b"t4"), (".wh..wh..opq", "f", b""), ("a/v", "f", b"v4"),
    ],
]

EXPECTED_AFTER = [
    {"a": "dir", "a/b": "dir", "a/b/c": "c1", "a/b/d": "d1", "e": "e1", ".hidden": "h1",
     ".hdir": "dir", ".hdir/x": "x1", "keep": "dir", "keep/k": "k1"},
    {"a": "dir", "a/b": "dir", "a/b/d": "d1", ".hdir": "dir", ".hdir/y": "y2",
     "keep": "dir", "keep/k": "k1", "new": "n2"},
    # The opaque marker comes after a/z in the same layer: a/z stays, a/b goes.
    {"a": "dir", "a/z": "z3", "a/w": "w3", ".hdir": "dir", ".hdir/y": "y2",
     "keep": "dir", "keep/k2": "k3", "new": "n2"},
    # A root-level opaque marker after "top": only what layer 4 wrote remains.
    {"top": "t4", "a": "dir", "a/v": "v4"},
]


def test_four_layer_whiteouts(mechanism: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    for i, entries in enumerate(FOUR_LAYERS):
        size = chrootarchive.apply_layer(layer(tmp_path / f"l{i}.tar", entries), root, opts).size
        assert size == sum(len(d) for _, k, d in entries if k == "f" and isinstance(d, bytes))
        assert listing(root) == EXPECTED_AFTER[i], f"after layer {i + 1}"


def test_whiteout_in_same_layer_keeps_what_the_layer_wrote(mechanism: str,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "root"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    chrootarchive.apply_layer(layer(tmp_path / "l1.tar", [("f", "f", b"lower")]), root, opts)
    chrootarchive.apply_layer(layer(tmp_path / "l2.tar", [
        ("g", "f", b"upper"), (".wh.g", "f", b""), (".wh.f", "f", b""),
    ]), root, opts)
    assert listing(root) == {"g": "upper"}


def test_whiteout_through_lower_symlink_stays_inside(mechanism: str, tmp_path: Path) -> None:
    """A lower layer leaves ``link -> /outside-like`` paths; whiteouts through it only
    ever act inside the root."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "precious").write_text("keep me")
    before = tree.snapshot(victim, ctime=True)
    root = tmp_path / "root"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    chrootarchive.apply_layer(layer(tmp_path / "l1.tar", [
        ("abs", "l", str(victim)), ("rel", "l", "/../../../../../../../.." + str(victim)),
        ("up", "l", "/../../../.."), ("d", "d", None),
    ]), root, opts)
    for i, marker in enumerate(["abs/.wh.sub", "abs/sub/.wh.precious", "up/.wh.tmp",
                                "abs/sub/.wh..wh..opq", "rel/.wh.sub"]):
        chrootarchive.apply_layer(layer(tmp_path / f"w{i}.tar", [(marker, "f", b"")]), root,
                                  opts)
    tree.assert_same(before, tree.snapshot(victim, ctime=True), "victim changed")


@pytest.mark.parametrize("bad", [".wh.", ".wh..", ".wh...", "d/.wh..."])
def test_invalid_whiteout_names(mechanism: str, tmp_path: Path, bad: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(chrootarchive.ArchiveError, match="invalid whiteout"):
        chrootarchive.apply_layer(layer(tmp_path / "l.tar", [("d", "d", None),
                                                                     (bad, "f", b"")]), root,
                                  chrootarchive.UnpackOptions(confine=mechanism))


def test_aufs_metadata_and_hardlink_dir(mechanism: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    chrootarchive.apply_layer(layer(tmp_path / "l.tar", [
        (".wh..wh.aufs", "f", b""), (".wh..wh.orph", "d", None),
        (".wh..wh.plnk", "d", None), (".wh..wh.plnk/1234.5678", "f", b"shared"),
        ("one", "h", ".wh..wh.plnk/1234.5678"), ("two", "h", ".wh..wh.plnk/1234.5678"),
    ]), root, chrootarchive.UnpackOptions(confine=mechanism))
    assert listing(root) == {"one": "shared", "two": "shared"}
    assert (root / "one").stat().st_ino == (root / "two").stat().st_ino


def test_aufs_hardlink_dir_goes_when_the_layer_fails(mechanism: str, tmp_path: Path) -> None:
    """The hidden directory that keeps the AUFS link files is ours: a layer that fails
    after it was made left it in the destination (``.chrootarchive-plnk-*``, with a
    copy of the linked data)."""
    root = tmp_path / "root"
    with pytest.raises(chrootarchive.ArchiveError, match="does not exist"):
        chrootarchive.apply_layer(layer(tmp_path / "l.tar", [
            (".wh..wh.plnk", "d", None), (".wh..wh.plnk/1234.5678", "f", b"shared"),
            ("one", "h", ".wh..wh.plnk/1234.5678"), ("two", "h", "missing"),
        ]), root, chrootarchive.UnpackOptions(confine=mechanism))
    assert sorted(p.name for p in root.iterdir()) == ["one"]


def test_untar_keeps_whiteout_files_as_files(mechanism: str, tmp_path: Path) -> None:
    """Plain untar (not a layer) extracts AUFS markers verbatim, as Docker's Unpack."""
    root = tmp_path / "root"
    chrootarchive.untar(layer(tmp_path / "l.tar", [(".wh.x", "f", b"m")]), root,
                        chrootarchive.UnpackOptions(confine=mechanism))
    assert listing(root) == {".wh.x": "m"}


def test_apply_layer_cli_prints_size(tmp_path: Path) -> None:
    path = layer(tmp_path / "l.tar", [("f", "f", b"12345")])
    proc = subprocess.run([sys.executable, "-m", "chrootarchive", "apply-layer", str(path),
                           str(tmp_path / "root")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5"


_MOUNT_AND_LIST = r"""
import json, os, subprocess, sys
lowers, mnt = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + lowers, mnt],
               check=True)
out = {}
for dirpath, dirnames, filenames in os.walk(mnt):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        rel = os.path.relpath(p, mnt)
        if os.path.islink(p):
            out[rel] = "link:" + os.readlink(p)
        elif os.path.isdir(p):
            out[rel] = "dir"
        else:
            with open(p) as f:
                out[rel] = f.read()
subprocess.run(["umount", mnt], check=True)
print(json.dumps(out))
"""


def _overlay_listing(diffs: list[Path], mnt: Path, namespace: str) -> dict[str, str]:
    """:func:`listing` of the layers' diffs (lowest first) mounted as one overlayfs, in
    a private mount namespace of a child (``namespace``: of the opaque xattr)."""
    mnt.mkdir()
    lowers = ":".join(str(d) for d in reversed(diffs))
    if namespace == "user":
        lowers += ",userxattr"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
         _MOUNT_AND_LIST, lowers, str(mnt)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    merged: dict[str, str] = json.loads(proc.stdout)
    return merged


# overlayfs ignores the opaque xattr on a layer's own root directory, so the kernel
# comparison uses a fourth layer without the root-level marker (documented limit of the
# overlay format, as in Docker's overlay2 driver).
KERNEL_LAYERS: list[list[Entry]] = [*FOUR_LAYERS[:3], [("top", "f", b"t4"), ("a/v", "f", b"v4"),
                                    (".hdir/.wh.y", "f", b"")]]


def test_overlay_format_matches_the_kernel(mechanism: str, tmp_path: Path) -> None:
    """Each layer in overlay format in its own diff dir, mounted as overlayfs lowers,
    equals applying the same layers in order: zero differences."""
    applied = tmp_path / "applied"
    diffs = []
    aufs = chrootarchive.UnpackOptions(confine=mechanism)
    opts = chrootarchive.UnpackOptions(whiteout_format="overlay", confine=mechanism)
    for i, entries in enumerate(KERNEL_LAYERS):
        path = layer(tmp_path / f"l{i}.tar", entries)
        chrootarchive.apply_layer(path, applied, aufs)
        diff_dir = tmp_path / f"diff{i}"
        chrootarchive.apply_layer(path, diff_dir, opts)
        diffs.append(diff_dir)
    # Whiteouts are 0/0 character devices; opaque dirs carry trusted.overlay.opaque, or
    # under userns (no real root in the jail) user.overlay.opaque, which the kernel
    # reads with the "userxattr" mount option.
    assert stat.S_ISCHR((tmp_path / "diff1" / "e").lstat().st_mode)
    namespace = "user" if mechanism == "userns" else "trusted"
    assert os.getxattr(tmp_path / "diff2" / "a", f"{namespace}.overlay.opaque") == b"y"
    merged = _overlay_listing(diffs, tmp_path / "mnt", namespace)
    assert merged == listing(applied)
    assert merged == {"a": "dir", "a/z": "z3", "a/w": "w3", "a/v": "v4", ".hdir": "dir",
                      "keep": "dir", "keep/k2": "k3", "new": "n2", "top": "t4"}



# A whiteout after the layer's own entries under the same name hides the lower layers'
# content only (OCI; umoci): the layer's own stays, in either format and whatever the
# order inside the layer (differential fuzzing against umoci, issue 16, twentieth round).
OWN_THEN_WHITEOUT = [
    [("d", "d", None), ("d/lower", "f", b"l0"), ("p", "d", None), ("p/lower", "f", b"l0"),
     ("a", "d", None), ("a/lower", "f", b"l0"), ("f2", "d", None), ("f2/lower", "f", b"l0")],
    [("d/x", "f", b"x1"), (".wh.d", "f", b""),  # d only implied by d/x
     ("p", "d", None), ("p/x", "f", b"x1"), (".wh.p", "f", b""),  # p declared
     (".wh.a", "f", b""), ("a/x", "f", b"x1"),  # the whiteout first, a then implied
     ("f2", "f", b"mine"), (".wh.f2", "f", b"")],  # a file of its own
]
OWN_THEN_WHITEOUT_TREE = {"d": "dir", "d/x": "x1", "p": "dir", "p/x": "x1", "a": "dir",
                          "a/x": "x1", "f2": "mine"}


def test_a_whiteout_hides_only_lower_content_in_either_format(mechanism: str,
                                                              tmp_path: Path) -> None:
    """Applied in order, the two layers give the tree the spec says; in overlay format
    (each layer a diff, mounted as overlayfs lowers) the kernel shows the same tree:
    the layer's own directories are opaque, not whiteouts. The first whiteouts removed
    the layer's own files, or left the lower ones; the last made a whiteout device
    that ``a/x`` could not be created under."""
    applied = tmp_path / "applied"
    aufs = chrootarchive.UnpackOptions(confine=mechanism)
    opts = chrootarchive.UnpackOptions(whiteout_format="overlay", confine=mechanism)
    diffs = []
    for i, entries in enumerate(OWN_THEN_WHITEOUT):
        path = layer(tmp_path / f"l{i}.tar", entries)
        chrootarchive.apply_layer(path, applied, aufs)
        diffs.append(tmp_path / f"diff{i}")
        chrootarchive.apply_layer(path, diffs[-1], opts)
    assert listing(applied) == OWN_THEN_WHITEOUT_TREE
    namespace = "user" if mechanism == "userns" else "trusted"
    for name in ("d", "p", "a"):
        assert os.getxattr(diffs[1] / name, f"{namespace}.overlay.opaque") == b"y", name
    assert _overlay_listing(diffs, tmp_path / "mnt", namespace) == OWN_THEN_WHITEOUT_TREE

# A usrmerge-style lower layer: lib -> usr/lib (and an absolute one), a file in usr/lib.
USRMERGE_LOWER: list[Entry] = [
    ("usr", "d", None), ("usr/lib", "d", None), ("usr/lib/old", "d", None),
    ("usr/lib/old/f", "f", b"o0"),
    ("lib", "l", "usr/lib"), ("lib2", "l", "/usr/lib"), ("up", "l", "/../usr/./lib/.."),
]
USRMERGE_KEPT = {"usr": "dir", "usr/lib": "dir", "lib": "link:usr/lib", "lib2": "link:/usr/lib",
                 "up": "link:/../usr/./lib/.."}

# Layer entries -> what usr/lib then holds. A marker hides what lower layers left in the
# directory it really names, never what this layer wrote there, under whichever name
# (umoci resolves both the same way).
THROUGH_SYMLINKS = {
    "opaque-via-link": ([("usr/lib/new", "f", b"n1"), ("lib/.wh..wh..opq", "f", b"")],
                        {"usr/lib/new": "n1"}),
    "opaque-via-absolute-link": ([("usr/lib/new", "f", b"n1"),
                                  ("lib2/.wh..wh..opq", "f", b"")], {"usr/lib/new": "n1"}),
    "written-via-link": ([("lib/new", "f", b"n1"), ("usr/lib/.wh..wh..opq", "f", b"")],
                         {"usr/lib/new": "n1"}),
    "written-via-link-opaque-via-other": ([("lib2/new", "f", b"n1"),
                                           ("up/lib/.wh..wh..opq", "f", b"")],
                                          {"usr/lib/new": "n1"}),
    "whiteout-of-own-via-link": ([("usr/lib/new", "f", b"n1"), ("lib/.wh.new", "f", b""),
                                  ("lib/.wh.old", "f", b"")], {"usr/lib/new": "n1"}),
    "whiteout-of-lower-via-link": ([("lib/.wh.old", "f", b"")], {}),
    # The write replaces a lower directory (and with it what was known of the
    # symlinks on the way): found by differential fuzzing against umoci.
    "written-via-link-over-a-dir": ([("lib/old", "f", b"n1"), ("lib/.wh..wh..opq", "f", b"")],
                                    {"usr/lib/old": "n1"}),
    "written-via-link-over-a-dir-then-opaque": ([("lib/old", "f", b"n1"),
                                                 ("usr/lib/.wh..wh..opq", "f", b"")],
                                                {"usr/lib/old": "n1"}),
}


@pytest.mark.parametrize("case", sorted(THROUGH_SYMLINKS))
def test_a_marker_through_a_symlink_keeps_what_the_layer_wrote(mechanism: str, case: str,
                                                                tmp_path: Path) -> None:
    """``lib/.wh..wh..opq`` with ``lib -> usr/lib`` removed the layer's own
    ``usr/lib/new``: the layer's names were remembered as written, not where they are."""
    root = tmp_path / "root"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    chrootarchive.apply_layer(layer(tmp_path / "l0.tar", USRMERGE_LOWER), root, opts)
    entries, kept = THROUGH_SYMLINKS[case]
    chrootarchive.apply_layer(layer(tmp_path / "l1.tar", entries), root, opts)
    assert listing(root) == {**USRMERGE_KEPT, **kept}


def test_whiteouts_of_the_symlink_itself_remove_it(mechanism: str, tmp_path: Path) -> None:
    """The layer wrote through ``lib``, not ``lib``: its whiteout removes the lower
    symlink, and what was written through it stays where it is."""
    root = tmp_path / "root"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    chrootarchive.apply_layer(layer(tmp_path / "l0.tar", USRMERGE_LOWER), root, opts)
    chrootarchive.apply_layer(layer(tmp_path / "l1.tar", [
        ("lib/new", "f", b"n1"), (".wh.lib", "f", b"")]), root, opts)
    expected = {**USRMERGE_KEPT, "usr/lib/old": "dir", "usr/lib/old/f": "o0",
                "usr/lib/new": "n1"}
    del expected["lib"]
    assert listing(root) == expected


@pytest.mark.parametrize(("upper", "expected"), [
    ([("l/x", "f", b"1"), (".wh.x", "f", b"")], {"l": "link:.", "x": "1"}),
    ([("l/x", "f", b"1"), (".wh.l", "f", b"")], {"x": "1"}),
])
def test_a_write_through_a_symlink_over_a_lower_directory(
        mechanism: str, upper: list[Entry], expected: dict[str, str], tmp_path: Path) -> None:
    """``l -> .`` and a lower directory ``x``: the layer's ``l/x`` replaces it, and is
    the layer's own ``x`` (kept by ``.wh.x``); ``.wh.l`` removes the lower symlink. The
    write dropped what was known of ``l`` before the name was noted (umoci agrees)."""
    root = tmp_path / "root"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    chrootarchive.apply_layer(layer(tmp_path / "l0.tar", [("x", "d", None), ("l", "l", ".")]),
                              root, opts)
    chrootarchive.apply_layer(layer(tmp_path / "l1.tar", upper), root, opts)
    assert listing(root) == expected


def test_overlay_markers_through_a_symlink_act_where_it_leads(mechanism: str,
                                                              tmp_path: Path) -> None:
    """Overlay format: ``lib/.wh..wh..opq`` with the layer's own ``lib -> usr/lib``
    marks ``usr/lib`` opaque, and ``lib/.wh.y`` is a whiteout in it (as umoci resolves
    the marker's directory). It failed with "not a directory"."""
    diff = tmp_path / "diff"
    chrootarchive.apply_layer(layer(tmp_path / "l.tar", [
        ("usr", "d", None), ("usr/lib", "d", None), ("lib", "l", "usr/lib"),
        ("usr/lib/x", "f", b"x"), ("lib/.wh..wh..opq", "f", b""), ("lib/.wh.y", "f", b""),
    ]), diff, chrootarchive.UnpackOptions(whiteout_format="overlay", confine=mechanism))
    assert listing(diff) == {"usr": "dir", "usr/lib": "dir", "lib": "link:usr/lib",
                             "usr/lib/x": "x", "usr/lib/y": "chr:0:0"}
    namespace = "user" if mechanism == "userns" else "trusted"
    assert os.getxattr(diff / "usr" / "lib", f"{namespace}.overlay.opaque") == b"y"


def test_a_tangle_of_symlinks_under_markers_ends(mechanism: str, tmp_path: Path) -> None:
    """Markers below a chain of 12 symlinks of 60 components each: resolving one takes
    more steps than an entry adds to the budget, so the budget runs out; the rest are
    taken by their names, and the layer is applied in bounded time. (Well below the
    kernel's 40 symlinks: near it, its lookups fail now and then with ELOOP.)"""
    root = tmp_path / "root"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    chain: list[Entry] = [("d", "d", None), ("d/f", "f", b"x"), ("s0", "l", "d")]
    chain += [(f"s{i}", "l", f"s{i - 1}" + "/." * 60) for i in range(1, 12)]
    chrootarchive.apply_layer(layer(tmp_path / "l0.tar", chain), root, opts)
    markers: list[Entry] = []
    for i in range(3000):
        markers += [(f"s11/n{i}", "f", b"n"), (f"s11/.wh.f{i}", "f", b"")]
    chrootarchive.apply_layer(layer(tmp_path / "l1.tar", markers), root, opts)
    assert (root / "d" / "f").read_bytes() == b"x"
    assert (root / "d" / "n2999").read_bytes() == b"n"


# -- a directory declared again takes exactly its own xattrs and ACLs ------------------

_MOUNT_AND_XATTRS = r"""
import json, os, subprocess, sys
lowers, mnt, names = sys.argv[1], sys.argv[2], sys.argv[3:]
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + lowers, mnt],
               check=True)
out = {}
for name in names:
    p = os.path.join(mnt, name)
    out[name] = {k: os.getxattr(p, k).hex() for k in os.listxattr(p)}
subprocess.run(["umount", mnt], check=True)
print(json.dumps(out))
"""

_HOST_MANAGED = ("security.selinux", "security.SMACK64", "security.apparmor", "security.ima",
                 "security.evm")


def xattrs_of(path: Path) -> dict[str, str]:
    return {k: os.getxattr(path, k).hex() for k in os.listxattr(path)
            if not k.startswith(_HOST_MANAGED)}


def test_redeclared_directory_takes_exactly_its_xattrs_as_overlayfs_shows(
        mechanism: str, tmp_path: Path) -> None:
    """Two layers declare the same directories with different xattrs and ACLs: applied
    in order, each directory has exactly the upper entry's, which is what overlayfs
    shows with the two layers as its lowers (no xattr of the lower layer survives)."""
    privileged = mechanism != "userns"  # trusted.* needs real root
    lower_extra = {"SCHILY.xattr.trusted.lower": b"t"} if privileged else {}
    lower = (TarBuilder()
             .pax({"SCHILY.xattr.user.lower": b"1", "SCHILY.xattr.user.both": b"lower",
                   "SCHILY.xattr.system.posix_acl_access": posix_acl((ACL_USER, 7, 0)),
                   "SCHILY.xattr.system.posix_acl_default": posix_acl((ACL_GROUP, 5, 0)),
                   **lower_extra})
             .dir("d", mode=0o775)
             .file("d/f", b"lower")
             .pax({"SCHILY.xattr.user.gone": b"x",
                   "SCHILY.xattr.system.posix_acl_access": posix_acl((ACL_GROUP, 7, 0))})
             .dir("e")
             .pax({"SCHILY.xattr.user.root": b"r"}).dir("./"))
    upper = (TarBuilder()
             .pax({"SCHILY.xattr.user.both": b"upper", "SCHILY.xattr.user.upper": b"2"})
             .dir("d", mode=0o755)
             .pax({"SCHILY.xattr.system.posix_acl_access": posix_acl((ACL_USER, 5, 0))})
             .dir("e", mode=0o775)  # the group bits are the ACL's mask (rwx)
             .dir("./"))
    layers = [tmp_path / "lower.tar", tmp_path / "upper.tar"]
    lower.write(layers[0])
    upper.write(layers[1])
    applied = tmp_path / "applied"
    opts = chrootarchive.UnpackOptions(confine=mechanism)
    diffs = []
    for i, path in enumerate(layers):
        chrootarchive.apply_layer(path, applied, opts)
        diff = tmp_path / f"diff{i}"
        chrootarchive.apply_layer(path, diff, opts)
        diffs.append(diff)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    names = ["d", "e", "."]
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
         _MOUNT_AND_XATTRS, f"{diffs[1]}:{diffs[0]}", str(mnt), *names],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    merged = {n: {k: v for k, v in x.items() if not k.startswith(_HOST_MANAGED)}
              for n, x in json.loads(proc.stdout).items()}
    ours = {n: xattrs_of(applied / n) for n in names}
    assert ours == merged
    assert ours["d"] == {"user.both": b"upper".hex(), "user.upper": b"2".hex()}
    assert ours["e"] == {"system.posix_acl_access": posix_acl((ACL_USER, 5, 0)).hex()}
    assert ours["."] == {}
    assert (applied / "d" / "f").read_bytes() == b"lower"
    assert stat.S_IMODE((applied / "d").stat().st_mode) == 0o755


def test_redeclared_directory_in_plain_untar_keeps_other_xattrs(tmp_path: Path) -> None:
    """Not a layer: a directory meeting a directory merges, as GNU tar and Docker's
    Untar do (nothing is removed)."""
    dest = tmp_path / "dest"
    for i, value in enumerate((b"1", b"2")):
        archive = tmp_path / f"{i}.tar"
        TarBuilder().pax({f"SCHILY.xattr.user.k{i}": value}).dir("d").write(archive)
        chrootarchive.untar(archive, dest)
    assert xattrs_of(dest / "d") == {"user.k0": b"1".hex(), "user.k1": b"2".hex()}
