"""The attack classes under every confinement mechanism, as root and as uid 65534.

Issue 4, "Tests that prove it": the attack suite runs under ``pivot``, ``chroot``,
``userns`` and ``openat2`` (``UnpackOptions(confine=...)``) as root, and under
``userns``, ``openat2`` and ``auto`` (which must pick ``userns``) as an unprivileged
user, with the victim-tree comparison of ``test_attacks.py``: every case builds its
archive and a victim tree beside the destination (``work/victim`` next to
``work/dest``), extracts, and proves that the victim tree is unchanged byte for byte and
by metadata (content, mode, owner, xattrs, mtime, ctime, link count, and the work
directory itself: a sibling of ``dest`` would show), that nothing from it was read into
the destination, and that the outcome is the one ``test_attacks.py`` documents (``OK``,
``BREAKOUT``, ``SAFE``, ...).

The cases:

- every case of ``helpers.attack_cases.CASES`` that is about where a write lands (absolute
  names, ``..`` in every spelling, symlink-then-write with absolute, relative and
  chained targets, directories replaced by symlinks mid-archive, hardlinks to outside
  and through symlinks, ``/proc`` magic links, devices and FIFOs replaced) under every
  mechanism (a dozen more spellings of lexical ``..`` breakouts, rejected by the same
  name check before any file system call, only under ``pivot``, ``openat2`` and, as
  65534, ``userns``); the cases that only exercise the tar reader (bad PAX records,
  sizes, truncation) under ``openat2``, the one mechanism whose reader runs in the
  caller's process;
- symlinks already present in the destination, pointing outside (absolute, relative,
  ``..``, ``/``, ``/proc/self/root``), written through or replaced; a planted hardlink;
- symlink chains whose resolution is longer than PATH_MAX (CVE-2025-4517 class);
- whiteouts through :func:`chrootarchive.apply_layer` (AUFS and overlay formats)
  reached through a symlink that a lower layer (or the destination) left, through
  chains and ``/proc`` links, and whiteouts of directories holding symlinks to outside;
- :func:`chrootarchive.untar_with_root` with in-root symlinks (``lib -> usr/lib``,
  ``/usr/lib``) and symlinks leading out of the root;
- a real procfs mounted inside the destination (in a private mount namespace), so that
  ``proc/self/root``, ``proc/1/root``, ``proc/self/cwd`` and the ``root`` and ``cwd``
  links of another root process (one without capabilities) are live magic links:
  writes through them must be refused or stay inside; under ``openat2`` they are
  refused (``RESOLVE_NO_MAGICLINKS``).

Unprivileged runs: the whole work tree (victim included) belongs to uid 65534, so an
unconfined extraction could damage it; the destination is writable by that user.
Many cases run in one process (``helpers/mech_driver.py``: in the test process as root,
under ``/usr/bin/python3`` from a world-readable copy of the package as 65534), a few
jobs at a time; each case is still its own test, checked against its own victim.
A few runs go through ``python3 -m chrootarchive`` as 65534 to check exit statuses and
the one-line summaries of what was skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import chrootarchive
from chrootarchive.errors import error_class
from helpers import mechanisms, tree
from helpers import tarbuild as tb
from helpers.attack_cases import (
    BREAKOUT,
    CASES,
    OK,
    PWN,
    SAFE,
    Case,
    check_outcome,
    path_max_chain,
    plant_symlinks,
    rel,
    replacing_archive,
)
from helpers.cli import assert_one_line_error
from helpers.leaks import LeakCheck
from helpers.mech_driver import run_jobs
from helpers.unpriv import (
    NOBODY,
    SYSTEM_PYTHON,
    chown_tree,
    cli_as,
    make_package_copy,
    run_as,
    world_dir,
)
from helpers.victim import HELLO, SECRET, Victim

pytestmark = pytest.mark.kernel

MECHANISMS = mechanisms.MECHANISMS  # the package's own list
NOBODY_MECHANISMS = ("userns", "openat2", "auto")
#: What a successful run must report as its confinement.
REPORTED = {"pivot": {"pivot"}, "chroot": {"chroot"}, "userns": {"userns"},
            "openat2": {"openat2"}, "auto": {"userns"}}
THREADS = 4


def B() -> tb.TarBuilder:
    return tb.TarBuilder()


# -- scenarios -------------------------------------------------------------------------


@dataclass
class Scenario:
    """One attack: archives, how they are applied, and what must (not) happen."""

    archives: list[bytes]
    expect: str
    #: ``untar``, ``layer`` (archives applied in turn as layers) or ``root``
    #: (``untar_with_root`` with ``work/dest`` as the jail's root, ``in_root`` as dest)
    op: str = "untar"
    in_root: str = "."
    whiteout_format: str = "aufs"
    mentions: str | None = None
    #: checked on success; paths relative to ``work/dest`` (the jail's root)
    landed: dict[str, bytes] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    #: directories that must be marked opaque (trusted.overlay.opaque, or
    #: user.overlay.opaque without real root), checked on success
    opaque: list[str] = field(default_factory=list)
    #: path -> (uid, gid), checked on success when owners can be set (real root)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: called with (dest, victim root) before the run: pre-existing destination content
    prepare: Callable[[Path, Path], None] | None = None
    #: victim paths whose link count and ctime may change (a planted hardlink unlinked)
    victim_nlink_may_drop: frozenset[str] = frozenset()
    #: the archive holds device nodes: without privilege they are skipped
    devices: bool = False
    #: ... and a hardlink to one, which then fails cleanly (Docker's behaviour)
    device_hardlink: bool = False


SCENARIOS: dict[str, Callable[[Path], Scenario]] = {}
#: Scenario names that only exercise the tar reader: run under openat2 only.
READER_ONLY: set[str] = set()

#: attack cases about where writes land (the rest exercise the tar reader).
_CONFINEMENT_PREFIXES = (
    "absolute_", "dotdot_", "sibling_", "backslashes_", "symlink_", "dir_replaced_",
    "docker_", "hardlink_", "proc_", "chardev_", "unbound_", "fifo_", "nul_in_ustar_",
)  # fmt: skip
_DEVICE_CASES = {"chardev_then_file", "chardev_zero_hardlink_then_file",
                 "unbound_blockdev_then_file"}


def _from_attack_case(name: str) -> Callable[[Path], Scenario]:
    def make(V: Path) -> Scenario:
        c: Case = CASES[name](str(V))
        prepare = None
        if c.prepare is not None:
            fn = c.prepare

            def prepare(dest: Path, V: Path) -> None:
                fn(dest)

        return Scenario([c.archive], c.expect, mentions=c.mentions, landed=dict(c.landed),
                        absent=list(c.absent), types=dict(c.types), prepare=prepare,
                        devices=name in _DEVICE_CASES,
                        device_hardlink=name == "chardev_zero_hardlink_then_file")

    return make


for _name in CASES:
    SCENARIOS[_name] = _from_attack_case(_name)
    if not _name.startswith(_CONFINEMENT_PREFIXES):
        READER_ONLY.add(_name)


def scenario(fn: Callable[[Path], Scenario]) -> Callable[[Path], Scenario]:
    SCENARIOS[fn.__name__.removeprefix("sc_")] = fn
    return fn


# Symlinks already in the destination (helpers.attack_cases.plant_symlinks: abs, rel, absfile,
# relfile, up, root, proc-root).

_WRITE_THROUGH = ["abs/pwned", "rel/pwned", "abs/hello", "rel/hello", "up/victim/pwned",
                  "root/pwned-at-root", "proc-root/pwned", "abs/sub/deeper/file",
                  "abs/link-to-sub/pwned"]


def _pre_write_through(entry: str) -> Callable[[Path], Scenario]:
    def make(V: Path) -> Scenario:
        return Scenario([B().file(entry, PWN).build()], SAFE,
                        prepare=lambda dest, V: plant_symlinks(dest, V))

    return make


for _i, _entry in enumerate(_WRITE_THROUGH):
    SCENARIOS[f"pre_write_through_{_entry.replace('/', '_').replace('-', '_')}"] = (
        _pre_write_through(_entry))


@scenario
def sc_pre_symlinks_land_inside(V: Path) -> Scenario:
    def prepare(dest: Path, V: Path) -> None:
        plant_symlinks(dest, V)
        (dest / rel(V)).mkdir(parents=True)
        (dest / "victim").mkdir()

    archive = (B().file("abs/pwned-abs", PWN).file("rel/pwned-rel", PWN)
               .file("up/victim/pwned-up", PWN).file("root/pwned-root", PWN).build())
    return Scenario([archive], OK, prepare=prepare,
                    landed={f"{rel(V)}/pwned-abs": PWN, "victim/pwned-rel": PWN,
                            "victim/pwned-up": PWN, "pwned-root": PWN},
                    types={"abs": "symlink", "rel": "symlink", "up": "symlink"})


def _pre_replaced(name: str, kind: str) -> Callable[[Path], Scenario]:
    def make(V: Path) -> Scenario:
        return Scenario([replacing_archive(name, kind)], OK,
                        prepare=lambda dest, V: plant_symlinks(dest, V),
                        types={name: kind}, owners={name: (4321, 4321)})

    return make


for _name, _kind in [("absfile", "file"), ("relfile", "file"), ("abs", "dir"), ("rel", "dir"),
                     ("up", "symlink"), ("root", "fifo"), ("proc-root", "file"),
                     ("relfile", "fifo"), ("abs", "symlink")]:
    SCENARIOS[f"pre_replaced_{_name.replace('-', '_')}_by_{_kind}"] = _pre_replaced(_name, _kind)


@scenario
def sc_pre_planted_hardlink_replaced(V: Path) -> Scenario:
    def prepare(dest: Path, V: Path) -> None:
        os.link(V / "hello", dest / "planted")
        os.link(V / "secret", dest / "planted-secret")

    archive = (B().pax({"SCHILY.xattr.user.victim": "pwned"})
               .file("planted", PWN, mode=0o4777, uid=4321, gid=4321)
               .dir("planted-secret", mode=0o777)
               .hardlink("second", "planted").build())
    return Scenario([archive], OK, prepare=prepare, landed={"planted": PWN, "second": PWN},
                    types={"planted-secret": "dir"},
                    victim_nlink_may_drop=frozenset(
                        {"victim/hello", "victim/hello-hardlink", "victim/secret"}))


# Symlink chains longer than PATH_MAX (helpers.attack_cases.path_max_chain).


@scenario
def sc_pathmax_chain_escape(V: Path) -> Scenario:
    return Scenario([path_max_chain("../victim", "escape/pwned", pre_dirs=("victim",))], SAFE,
                    landed={"victim/pwned": PWN})


@scenario
def sc_pathmax_chain_absolute(V: Path) -> Scenario:
    return Scenario([path_max_chain(f"../../../../..{V}", "escape/hello")], SAFE)


@scenario
def sc_pathmax_hardlink_through_chain(V: Path) -> Scenario:
    comp, steps = "e" * 247, "abcdefghijklmnop"
    b, path = B(), ""
    for letter in steps:
        b.dir(os.path.join(path, comp))
        b.symlink(os.path.join(path, letter), comp)
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    b.symlink(linkpath, "../" * len(steps))
    b.hardlink("stolen", os.path.join(linkpath, "../victim/secret"))
    return Scenario([b.build()], SAFE)


@scenario
def sc_pathmax_deep_two_hop(V: Path) -> Scenario:
    long = "L" * 247
    b = B().dir("victim").dir(long).symlink(f"{long}/up", "..")
    b.symlink("/".join([long, "up"] * 17) + "/esc", "../victim")
    b.file("esc/pwned", PWN)
    return Scenario([b.build()], SAFE, landed={"victim/pwned": PWN})


# Whiteouts (apply_layer) reached through symlinks.


def _layer(*names: str) -> bytes:
    """A layer of empty regular files (whiteout markers are such files); a name ending
    in "/" is a directory."""
    b = B()
    for name in names:
        if name.endswith("/"):
            b.dir(name)
        else:
            b.file(name)
    return b.build()


@scenario
def sc_wh_through_abs_symlink_of_lower_layer(V: Path) -> Scenario:
    lower = B().symlink("lnk", str(V)).build()
    upper = _layer("lnk/.wh.hello", "lnk/.wh.sub", "lnk/.wh.link-to-sub")
    return Scenario([lower, upper], SAFE, op="layer", types={"lnk": "symlink"})


@scenario
def sc_wh_opaque_through_abs_symlink_of_lower_layer(V: Path) -> Scenario:
    lower = B().symlink("lnk", str(V)).build()
    upper = _layer("lnk/.wh..wh..opq")
    return Scenario([lower, upper], SAFE, op="layer")


@scenario
def sc_wh_through_abs_symlink_lands_inside(V: Path) -> Scenario:
    # With the victim's path mirrored inside the destination, the whiteout removes the
    # mirror's file: inside.
    lower = B().dir(str(V)).file(f"{V}/hello", b"inside\n").symlink("lnk", str(V)).build()
    upper = _layer("lnk/.wh.hello")
    return Scenario([lower, upper], OK, op="layer", absent=[f"{rel(V)}/hello"],
                    types={"lnk": "symlink"})


def _plant_rel(dest: Path, V: Path) -> None:
    os.symlink("../victim", dest / "rel")
    os.symlink("..", dest / "up")


@scenario
def sc_wh_through_preexisting_rel_symlink(V: Path) -> Scenario:
    upper = _layer("rel/.wh.hello", "rel/.wh.sub", "up/victim/.wh.secret",
                   "up/.wh.victim")
    return Scenario([upper], SAFE, op="layer", prepare=_plant_rel)


@scenario
def sc_wh_opaque_through_preexisting_rel_symlink(V: Path) -> Scenario:
    upper = _layer("rel/.wh..wh..opq", "up/victim/.wh..wh..opq")
    return Scenario([upper], SAFE, op="layer", prepare=_plant_rel)


@scenario
def sc_wh_through_preexisting_rel_symlink_lands_inside(V: Path) -> Scenario:
    def prepare(dest: Path, V: Path) -> None:
        _plant_rel(dest, V)
        (dest / "victim").mkdir()
        (dest / "victim" / "hello").write_bytes(b"inside\n")
        (dest / "victim" / "secret").write_bytes(b"inside\n")

    upper = _layer("rel/.wh.hello", "up/victim/.wh.secret")
    return Scenario([upper], OK, op="layer", prepare=prepare,
                    absent=["victim/hello", "victim/secret"], types={"rel": "symlink"})


@scenario
def sc_wh_dotdot_names(V: Path) -> Scenario:
    return Scenario([_layer("../.wh.victim")], BREAKOUT, op="layer", mentions="victim")


@scenario
def sc_wh_dotdot_into_victim(V: Path) -> Scenario:
    return Scenario([_layer("a/../../victim/.wh.hello")], BREAKOUT, op="layer")


@scenario
def sc_wh_dotdot_opaque(V: Path) -> Scenario:
    return Scenario([_layer("../victim/.wh..wh..opq")], BREAKOUT, op="layer")


@scenario
def sc_wh_through_chain(V: Path) -> Scenario:
    # b -> a/a/.. is "a" lexically, the root's parent without a jail.
    lower = (B().dir("victim").file("victim/hello", b"inside\n").symlink("a", ".")
             .symlink("b", "a/a/..").build())
    upper = _layer("b/victim/.wh.hello", "b/.wh.victim-other")
    return Scenario([lower, upper], SAFE, op="layer", absent=["victim/hello"])


@scenario
def sc_wh_through_proc_self_root(V: Path) -> Scenario:
    lower = B().symlink("p", "/proc/self/root").build()
    upper = _layer(f"p/{rel(V)}/.wh.hello", f"p/{rel(V)}/.wh..wh..opq")
    return Scenario([lower, upper], SAFE, op="layer")


@scenario
def sc_wh_removes_planted_hardlink_only(V: Path) -> Scenario:
    def prepare(dest: Path, V: Path) -> None:
        os.link(V / "hello", dest / "planted")

    return Scenario([_layer(".wh.planted")], OK, op="layer", prepare=prepare,
                    absent=["planted"],
                    victim_nlink_may_drop=frozenset({"victim/hello", "victim/hello-hardlink"}))


def _dir_with_outside_links(dest: Path, V: Path) -> None:
    (dest / "d").mkdir()
    os.symlink("../../victim", dest / "d" / "rel")
    os.symlink(str(V), dest / "d" / "abs")
    os.symlink(str(V / "hello"), dest / "d" / "absfile")
    os.link(V / "secret", dest / "d" / "hard")


_HARD_SECRET = frozenset({"victim/secret"})


@scenario
def sc_wh_dir_holding_outside_symlinks(V: Path) -> Scenario:
    # Removing d removes the links, never what they point at.
    return Scenario([_layer(".wh.d")], OK, op="layer", prepare=_dir_with_outside_links,
                    absent=["d"], victim_nlink_may_drop=_HARD_SECRET)


@scenario
def sc_wh_opaque_dir_holding_outside_symlinks(V: Path) -> Scenario:
    upper = B().dir("d").file("d/.wh..wh..opq").file("d/new", b"new\n").build()
    return Scenario([upper], OK, op="layer", prepare=_dir_with_outside_links,
                    absent=["d/rel", "d/abs", "d/absfile", "d/hard"], landed={"d/new": b"new\n"},
                    victim_nlink_may_drop=_HARD_SECRET)


@scenario
def sc_wh_overlay_through_abs_symlink(V: Path) -> Scenario:
    lower = B().symlink("lnk", str(V)).build()
    upper = _layer("lnk/.wh.hello", "lnk/.wh..wh..opq")
    return Scenario([lower, upper], SAFE, op="layer", whiteout_format="overlay")


@scenario
def sc_wh_overlay_opaque_through_preexisting_symlink(V: Path) -> Scenario:
    def prepare(dest: Path, V: Path) -> None:
        _plant_rel(dest, V)
        (dest / "victim").mkdir()  # rel resolves (inside) to a directory

    upper = _layer("rel/.wh..wh..opq", "rel/.wh.hello")
    return Scenario([upper], SAFE, op="layer", whiteout_format="overlay", prepare=prepare)


@scenario
def sc_wh_overlay_plain(V: Path) -> Scenario:
    # Not an attack: overlay whiteouts and an opaque directory are written, whatever the
    # mechanism (a 0/0 character device may be created without privilege since 5.8).
    upper = (B().dir("d").file("d/.wh..wh..opq").file("d/.wh.gone").file("d/kept", b"k")
             .build())
    return Scenario([upper], OK, op="layer", whiteout_format="overlay",
                    types={"d/gone": "chardev", "d": "dir"}, landed={"d/kept": b"k"},
                    opaque=["d"])


# untar_with_root: the jail is work/dest, the destination a path inside it.


def _container(dest: Path, V: Path) -> None:
    (dest / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", dest / "lib")
    os.symlink("/usr/lib", dest / "lib-abs")
    os.symlink("../victim", dest / "out-rel")
    os.symlink(str(V), dest / "out-abs")
    os.symlink("/", dest / "slash")
    os.symlink("/proc/self/root", dest / "proc-root")


_MODULE = B().file("module.so", b"so").dir("sub").file("sub/x", b"x").build()


def _root_case(in_root: str | Callable[[Path], str], archive: bytes | Callable[[Path], bytes],
               expect: str, **kw: Any) -> Callable[[Path], Scenario]:
    landed_fn: Callable[[Path], dict[str, bytes]] = kw.pop("landed_fn", lambda V: {})
    landed: dict[str, bytes] = kw.pop("landed", {})

    def make(V: Path) -> Scenario:
        where = in_root(V) if callable(in_root) else in_root
        data = archive(V) if callable(archive) else archive
        return Scenario([data], expect, op="root", in_root=where, prepare=_container,
                        landed={**landed, **landed_fn(V)}, **kw)

    return make


_IN_LIB = {"usr/lib/module.so": b"so", "usr/lib/sub/x": b"x"}
SCENARIOS.update({
    "root_in_root_relative_symlink": _root_case("lib", _MODULE, OK, landed=_IN_LIB,
                                                types={"lib": "symlink"}),
    "root_in_root_absolute_symlink": _root_case("/lib-abs", _MODULE, OK, landed=_IN_LIB,
                                                types={"lib-abs": "symlink"}),
    "root_dest_trailing_slash": _root_case("lib/", _MODULE, OK, landed=_IN_LIB),
    "root_host_absolute_dest": _root_case(lambda V: str(V.parent / "dest" / "usr" / "lib"),
                                          _MODULE, OK, landed=_IN_LIB),
    "root_missing_dest_through_symlink": _root_case(
        "lib-abs/new/deeper", _MODULE, OK,
        landed={"usr/lib/new/deeper/module.so": b"so"}),
    "root_dest_relative_symlink_out": _root_case("out-rel", _MODULE, SAFE,
                                                 landed={"victim/module.so": b"so"}),
    "root_dest_relative_symlink_out_new": _root_case("out-rel/new", _MODULE, SAFE,
                                                     landed={"victim/new/module.so": b"so"}),
    "root_dest_absolute_symlink_out": _root_case(
        "out-abs/new", _MODULE, SAFE, landed_fn=lambda V: {f"{rel(V)}/new/module.so": b"so"}),
    "root_dest_through_slash": _root_case(lambda V: f"slash/{rel(V)}", _MODULE, SAFE),
    "root_dest_through_proc": _root_case(lambda V: f"proc-root/{rel(V)}", _MODULE, SAFE),
    "root_archive_through_root_symlinks": _root_case(
        ".", B().file("out-abs/pwned", PWN).file("out-rel/pwned", PWN)
        .file("slash/pwned-slash", PWN).file("proc-root/pwned", PWN).build(), SAFE),
    "root_archive_breakout_of_dest": _root_case(
        "lib", B().file("../../victim/pwned", PWN).build(), BREAKOUT, mentions="pwned"),
    "root_archive_symlink_to_slash": _root_case(
        "lib", lambda V: B().symlink("x", "/").file(f"x/{rel(V)}/pwned", PWN).build(), OK,
        landed_fn=lambda V: {f"{rel(V)}/pwned": PWN}, types={"usr/lib/x": "symlink"}),
    "root_archive_hardlink_out": _root_case(
        "lib", lambda V: B().hardlink("h", f"{V}/hello").hardlink("h2", "out-abs/hello")
        .build(), SAFE),
})


#: More spellings of lexical breakouts, rejected by the same name check before any file
#: system call: under pivot (root's default), openat2 (in-process) and userns as 65534
#: (its default), while chroot and userns as root get the representative spellings.
LEXICAL_EXTRA = {
    "dotdot_after_dir", "dotdot_bare_dir_slash", "dotdot_bare_file", "dotdot_directory_entry",
    "dotdot_dot_prefix", "dotdot_existing_victim_file", "dotdot_in_gnu_longname",
    "dotdot_in_pax_path_long", "dotdot_in_ustar_prefix_nested", "sibling_prefix_file",
    "nul_in_ustar_linkname", "nul_in_ustar_prefix",
}


def cases_for(mechanism: str, user: str) -> list[str]:
    if mechanism == "auto":
        return sorted(AUTO_CASES)
    if mechanism == "openat2":
        return sorted(SCENARIOS)
    names = {n for n in SCENARIOS if n not in READER_ONLY}
    if user == "root" and mechanism in ("chroot", "userns"):
        names -= LEXICAL_EXTRA
    return sorted(names)


#: As 65534, ``auto`` must pick ``userns``: a representative subset.
AUTO_CASES = {
    "absolute_name_to_victim_file", "dotdot_plain", "symlink_absolute_to_victim_dir",
    "symlink_two_hop", "dir_replaced_by_absolute_symlink", "hardlink_through_absolute_symlink",
    "proc_self_root", "pre_write_through_rel_pwned", "pre_symlinks_land_inside",
    "wh_through_abs_symlink_of_lower_layer", "wh_through_preexisting_rel_symlink",
    "root_in_root_absolute_symlink", "root_dest_absolute_symlink_out",
    "pathmax_chain_escape", "fifo_then_file",
}


# -- preparing and running a batch ----------------------------------------------------


@dataclass
class Prepared:
    name: str
    scenario: Scenario
    work: Path
    dest: Path
    victim: Victim


def prepare_case(name: str, base: Path, archives_dir: Path, user: str,
                 mechanism: str) -> tuple[Prepared, dict[str, Any]]:
    work = base / name
    dest = work / "dest"
    dest.mkdir(parents=True)
    victim = Victim(work).create()
    scn = SCENARIOS[name](victim.root)
    if scn.prepare is not None:
        scn.prepare(dest, victim.root)
    if user == "nobody":
        chown_tree(work, NOBODY)  # the user's own files: unconfined, it could hurt them
    victim.snap()
    paths = []
    for i, data in enumerate(scn.archives):
        p = archives_dir / f"{name}-{i}.tar"
        p.write_bytes(data)
        p.chmod(0o644)
        paths.append(str(p))
    job = {"id": name, "op": scn.op, "archives": paths, "dest": str(dest),
           "in_root": scn.in_root,
           "options": {"confine": mechanism, "whiteout_format": scn.whiteout_format}}
    return Prepared(name, scn, work, dest, victim), job


class Batches:
    """Runs the selected cases of one (user, mechanism) together, the first time one of
    them is asked for; each test then checks its own case."""

    def __init__(self, session: pytest.Session, base: Path, pythonpath: Path) -> None:
        self.session = session
        self.base = base
        self.pythonpath = pythonpath
        self.done: dict[tuple[str, str], tuple[dict[str, Prepared], dict[str, Any]]] = {}

    def selected(self, user: str, mechanism: str) -> list[str]:
        names = []
        for item in self.session.items:
            callspec = getattr(item, "callspec", None)
            if (callspec is not None and isinstance(item, pytest.Function)
                    and item.module is not None
                    and item.module.__name__ == __name__
                    and callspec.params.get("user") == user
                    and callspec.params.get("mechanism") == mechanism
                    and "name" in callspec.params):
                names.append(callspec.params["name"])
        return names

    def get(self, user: str, mechanism: str, name: str) -> tuple[Prepared, dict[str, Any]]:
        key = (user, mechanism)
        if key not in self.done:
            self.done[key] = self._run(user, mechanism,
                                       sorted(set(self.selected(user, mechanism)) | {name}))
        prepared, outcomes = self.done[key]
        return prepared[name], outcomes[name]

    def _run(self, user: str, mechanism: str,
             names: list[str]) -> tuple[dict[str, Prepared], dict[str, Any]]:
        base = self.base / f"{user}-{mechanism}"
        archives = base / "archives"
        archives.mkdir(parents=True)
        cases = base / "cases"
        cases.mkdir()
        prepared: dict[str, Prepared] = {}
        jobs = []
        for name in names:
            p, job = prepare_case(name, cases, archives, user, mechanism)
            prepared[name] = p
            jobs.append(job)
        leaks = LeakCheck(base)
        if user == "root":
            outcomes = run_jobs(jobs, THREADS)
        else:
            jobs_file, results_file = base / "jobs.json", base / "results.json"
            jobs_file.write_text(json.dumps(jobs))
            jobs_file.chmod(0o644)
            results_file.touch()
            os.chown(results_file, NOBODY, NOBODY)
            result = run_as([SYSTEM_PYTHON, self.pythonpath / "mech_driver.py", jobs_file,
                             results_file, str(THREADS)], self.pythonpath, timeout=600)
            assert result.rc == 0, f"the driver failed as uid {NOBODY}: {result.err}"
            outcomes = json.loads(results_file.read_text())
        leaks.assert_clean()
        return prepared, outcomes


@pytest.fixture(scope="module")
def unpriv_base() -> Iterator[Path]:
    with world_dir("mechanisms") as base:
        yield base


@pytest.fixture(scope="module")
def pythonpath(unpriv_base: Path) -> Path:
    return make_package_copy(unpriv_base)


@pytest.fixture(scope="module")
def batches(request: pytest.FixtureRequest, unpriv_base: Path, pythonpath: Path) -> Batches:
    runs = unpriv_base / "runs"
    runs.mkdir()
    return Batches(request.session, runs, pythonpath)


# -- checking one case ----------------------------------------------------------------


def outcome_object(outcome: dict[str, Any]) -> list[chrootarchive.UnpackResult] | BaseException:
    if "crash" in outcome:
        raise AssertionError(f"not a ChrootArchiveError (a bug):\n{outcome['crash']}")
    if "error" in outcome:
        e = outcome["error"]
        return error_class(e["type"])(e["message"], e["entry"])
    return [chrootarchive.UnpackResult.from_json(r) for r in outcome["ok"]]


def verify(p: Prepared, outcome: dict[str, Any], *, mechanism: str, limited: bool) -> None:
    scn = p.scenario
    obj = outcome_object(outcome)
    expect, types = scn.expect, dict(scn.types)
    if limited and scn.devices:
        # Devices are skipped without privilege; a hardlink to one then fails cleanly.
        types = {k: v for k, v in types.items() if v not in ("chardev", "blockdev")}
        if scn.device_hardlink:
            expect = SAFE
    case = Case(b"", expect, mentions=scn.mentions, landed=scn.landed, absent=scn.absent,
                types=types)
    check_outcome(obj if isinstance(obj, BaseException) else obj[-1], case, p.dest)
    if not isinstance(obj, BaseException):
        for result in obj:
            assert result.confinement in REPORTED[mechanism], (
                f"confinement {result.confinement!r}, expected {REPORTED[mechanism]}")
        for path in scn.opaque:
            marks = {k: os.getxattr(p.dest / path, k) for k in os.listxattr(p.dest / path)}
            assert b"y" in (marks.get("trusted.overlay.opaque"),
                            marks.get("user.overlay.opaque")), f"{path} not opaque: {marks}"
        if not limited:
            for path, owner in scn.owners.items():
                st = os.lstat(p.dest / path)
                assert (st.st_uid, st.st_gid) == owner, f"{path}: owner {st.st_uid}:{st.st_gid}"
    after = p.victim.snapshot()
    may_drop = scn.victim_nlink_may_drop
    assert p.victim.before is not None
    tree.assert_same(
        p.victim.before, after, "the victim tree outside the destination changed",
        ignore=lambda path, key: path in may_drop and key in ("nlink", "ctime_ns"))
    assert (p.victim.root / "hello").read_bytes() == HELLO
    assert (p.victim.root / "secret").read_bytes() == SECRET
    scan_dest(p.dest)


def scan_dest(dest: Path, limit: int = 64 << 20) -> None:
    """No file in ``dest`` holds the victim's secret (nothing was read in from outside)
    and none is big; walks by descriptors, so trees deeper than PATH_MAX are covered."""
    needle = SECRET.strip()
    for _dirpath, _dirs, files, dirfd in os.fwalk(dest):
        for name in files:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            assert st.st_blocks * 512 < limit, f"{name}: {st.st_blocks * 512} bytes allocated"
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
            with os.fdopen(fd, "rb") as f:
                assert needle not in f.read(), f"victim content was read into {name}"


def _params(user: str, mechanisms: tuple[str, ...]) -> list[Any]:
    return [pytest.param(user, m, n, id=f"{m}-{n}")
            for m in mechanisms for n in cases_for(m, user)]


@pytest.mark.parametrize(("user", "mechanism", "name"), _params("root", MECHANISMS))
def test_attack_as_root(user: str, mechanism: str, name: str, batches: Batches) -> None:
    prepared, outcome = batches.get(user, mechanism, name)
    verify(prepared, outcome, mechanism=mechanism, limited=mechanism == "userns")


@pytest.mark.parametrize(("user", "mechanism", "name"), _params("nobody", NOBODY_MECHANISMS))
def test_attack_as_nobody(user: str, mechanism: str, name: str, batches: Batches) -> None:
    prepared, outcome = batches.get(user, mechanism, name)
    verify(prepared, outcome, mechanism=mechanism, limited=True)


def test_case_selection() -> None:
    """Every confinement-relevant attack case runs under every mechanism; the rest (tar
    reader only) under openat2, whose reader runs in the caller's process."""
    confinement = [n for n in CASES if n not in READER_ONLY]
    assert len(confinement) >= 70
    for group in ("absolute_", "dotdot_", "symlink_", "dir_replaced_", "hardlink_", "proc_",
                  "docker_"):
        assert any(n.startswith(group) for n in confinement), group
    for prefix in ("pre_", "wh_", "root_", "pathmax_"):
        assert sum(n.startswith(prefix) for n in SCENARIOS) >= 4, prefix
    assert AUTO_CASES <= set(SCENARIOS)
    assert LEXICAL_EXTRA <= set(confinement)


# -- a real procfs inside the destination ---------------------------------------------

_PROC_ARCHIVES: dict[str, Callable[[Path, int], bytes]] = {
    "symlink_self_root": lambda V, pid: B().symlink("x", "/proc/self/root")
    .file(f"x/{rel(V)}/pwned", PWN).build(),
    "through_self_root": lambda V, pid: B().file(f"proc/self/root/{rel(V)}/pwned", PWN).build(),
    "through_pid1_root": lambda V, pid: B().file(f"proc/1/root/{rel(V)}/pwned", PWN).build(),
    "through_self_cwd": lambda V, pid: B().file("proc/self/cwd/pwned-cwd", PWN)
    .file("proc/thread-self/cwd/pwned-cwd", PWN).build(),
    "hardlink_through_self_root": lambda V, pid: B()
    .hardlink("stolen", f"proc/self/root/{V}/secret").build(),
    "symlink_fd": lambda V, pid: B().symlink("fd", "/proc/self/fd").file("fd/3/pwned", PWN)
    .file("fd/0", PWN).build(),
    "whiteout_through_self_root": lambda V, pid: _layer(f"proc/self/root/{rel(V)}/.wh.hello"),
}

#: Through the magic links of another process: a root process without capabilities
#: (``setpriv --bounding-set=-all``: a hardened service, say) whose root is the host's
#: and whose working directory is the victim's parent.
_PID_ARCHIVES: dict[str, Callable[[Path, int], bytes]] = {
    "pid_root_write": lambda V, pid: B().file(f"proc/{pid}/root/{rel(V)}/pwned", PWN).build(),
    "pid_cwd_write": lambda V, pid: B()
    .file(f"proc/{pid}/cwd/{V.parent.name}/victim/pwned", PWN).build(),
    "pid_root_hardlink": lambda V, pid: B()
    .hardlink("stolen", f"proc/{pid}/root/{rel(V)}/secret").build(),
    "pid_root_symlink_then_write": lambda V, pid: B().symlink("p", f"/proc/{pid}/root")
    .file(f"p/{rel(V)}/pwned", PWN).build(),
    "pid_root_whiteout": lambda V, pid: _layer(f"proc/{pid}/root/{rel(V)}/.wh.hello"),
}


def _run_with_procfs(tmp_path: Path, mechanism: str,
                     archives: dict[str, Callable[[Path, int], bytes]],
                     pid: int) -> dict[str, tuple[Path, Victim, object]]:
    """Each archive against its own victim, with a procfs (of this pid namespace)
    mounted at ``dest/proc``, in a private mount namespace (``unshare -m``)."""
    jobs, cases = [], {}
    for name, build in archives.items():
        work = tmp_path / name
        dest = work / "dest"
        (dest / "proc").mkdir(parents=True)
        victim = Victim(work).create()
        archive = tmp_path / f"{name}.tar"
        archive.write_bytes(build(victim.root, pid))
        op = "layer" if "whiteout" in name else "untar"
        jobs.append({"id": name, "op": op, "archives": [str(archive)], "dest": str(dest),
                     "in_root": ".", "options": {"confine": mechanism}})
        cases[name] = (dest, victim)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    mounts = " && ".join(f"mount -t proc proc {dest / 'proc'}" for dest, _ in cases.values())
    driver = Path(__file__).resolve().parent / "helpers" / "mech_driver.py"
    leaks = LeakCheck(tmp_path)
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{mounts} && exec "$@"', "sh", sys.executable, str(driver),
         str(tmp_path / "jobs.json"), str(tmp_path / "results.json"), "1"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    leaks.assert_clean()
    outcomes = json.loads((tmp_path / "results.json").read_text())
    return {name: (dest, victim, outcome_object(outcomes[name]))
            for name, (dest, victim) in cases.items()}


def _check_procfs_outcomes(results: dict[str, tuple[Path, Victim, object]],
                           tmp_path: Path) -> list[str]:
    """Victims untouched, nothing read in; returns the names that were refused."""
    refused, escaped = [], []
    for name, (dest, victim, obj) in results.items():
        if isinstance(obj, BaseException):
            assert isinstance(obj, (chrootarchive.ArchiveError, chrootarchive.DestinationError)), (
                name, obj)
            refused.append(name)
        try:
            victim.assert_untouched()
            scan_dest(dest)
        except AssertionError as err:
            escaped.append(f"{name} ({'refused' if name in refused else 'succeeded'}): "
                           f"{str(err).splitlines()[0]} {str(err).splitlines()[1:3]}")
    assert not (tmp_path / "pwned-cwd").exists()
    assert not escaped, "writes left the destination:\n" + "\n".join(escaped)
    return refused


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_real_procfs_inside_destination(mechanism: str, tmp_path: Path) -> None:
    """A procfs is mounted at ``dest/proc`` (a container's root filesystem while it runs;
    in a private mount namespace here), so ``proc/self/root`` and its kin are live magic
    links. Writes through them must be refused or stay inside; under ``openat2``,
    ``RESOLVE_NO_MAGICLINKS`` refuses them."""
    results = _run_with_procfs(tmp_path, mechanism, _PROC_ARCHIVES, 1)
    refused = _check_procfs_outcomes(results, tmp_path)
    for name in ("symlink_self_root", "through_self_root", "through_pid1_root"):
        dest, _victim, obj = results[name]
        if not isinstance(obj, BaseException):
            landed = [f for _, _, files in os.walk(dest) for f in files if f == "pwned"]
            assert landed, f"{name}: succeeded, but nothing landed inside the destination"
    if mechanism == "openat2":
        # Every magic link on the way is refused, not followed.
        magic = {"through_self_root", "through_pid1_root", "through_self_cwd",
                 "hardlink_through_self_root", "whiteout_through_self_root"}
        assert magic <= set(refused), f"followed a magic link: {sorted(magic - set(refused))}"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_real_procfs_root_of_another_root_process(mechanism: str, tmp_path: Path) -> None:
    """The same, through ``proc/PID/root`` and ``proc/PID/cwd`` of a root process that
    holds no capabilities: the kernel's ptrace check lets a root worker whose
    capabilities are a superset follow those links to the host's root, so only a jail
    that hides or refuses magic links keeps the writes inside."""
    sleeper = subprocess.Popen(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                                "sleep", "300"], cwd=tmp_path)
    try:
        results = _run_with_procfs(tmp_path, mechanism, _PID_ARCHIVES, sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    refused = _check_procfs_outcomes(results, tmp_path)
    if mechanism == "openat2":
        assert set(refused) == set(_PID_ARCHIVES), refused


# -- through the command line, as uid 65534 -------------------------------------------


@pytest.fixture
def nobody_work(unpriv_base: Path) -> Iterator[tuple[Path, Victim]]:
    """``work`` (65534's) holding ``dest`` and a 65534-owned victim tree."""
    work = unpriv_base / "cli" / os.urandom(4).hex()
    (work / "dest").mkdir(parents=True)
    victim = Victim(work)
    victim.create()
    chown_tree(work, NOBODY)
    victim.snap()
    yield work, victim
    shutil.rmtree(work, ignore_errors=True)


def _archive(base: Path, data: bytes) -> Path:
    path = base / f"archive-{os.urandom(4).hex()}.tar"
    path.write_bytes(data)
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("mechanism", NOBODY_MECHANISMS)
def test_cli_nobody_breakout_is_one_line_exit_1(
    mechanism: str, nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    work, victim = nobody_work
    archive = _archive(unpriv_base, B().file("ok", b"x").file("../victim/pwned", PWN).build())
    result = cli_as(pythonpath, "untar", "--confine", mechanism, archive, work / "dest")
    assert_one_line_error(result, rc=1, mentions=("pwned",))
    victim.assert_untouched()


def test_cli_nobody_auto_picks_userns(
    nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    work, victim = nobody_work
    archive = _archive(unpriv_base, B().symlink("lnk", str(victim.root))
                       .file("lnk/pwned", PWN).dir("d").file("d/f", b"f").build())
    result = cli_as(pythonpath, "untar", "--json", archive, work / "dest")
    # The write through lnk fails inside the jail (no such directory there) or lands inside.
    if result.rc == 0:
        assert json.loads(result.out)["confinement"] == "userns"
    else:
        assert_one_line_error(result, rc=1)
    result = cli_as(pythonpath, "untar", "--json", _archive(unpriv_base, B().file("f", b"f")
                                                            .build()), work / "dest")
    assert result.rc == 0, result.err
    assert json.loads(result.out)["confinement"] == "userns"
    victim.assert_untouched()


@pytest.mark.parametrize("mechanism", NOBODY_MECHANISMS)
def test_cli_nobody_atomic_failure_removes_directories_it_cannot_enter(
    mechanism: str, nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    """A failed ``--atomic`` unpack as 65534 whose first layer made directories of
    mode 0o000 and 0o500 (with files in them): the second layer's breakout is the
    error, and the staging directory goes. Unprivileged, its removal was refused: exit
    70, the breakout unreported, and a staging directory that 65534 could not remove
    (fuzzing, issue 16, twentieth round)."""
    work, victim = nobody_work
    first = _archive(unpriv_base, B().dir("shut", mode=0o000).file("shut/f", b"f")
                     .dir("ro", mode=0o500).file("ro/g", b"g").dir("ro/sub", mode=0o000)
                     .build())
    second = _archive(unpriv_base, B().file("../escape", PWN).build())
    result = cli_as(pythonpath, "apply-layer", "--atomic", "--confine", mechanism, first,
                    second, work / "dest" / "rootfs")
    assert_one_line_error(result, rc=1, mentions=("escape", "leave the destination"))
    assert os.listdir(work / "dest") == []  # no staging directory left
    victim.assert_untouched()


@pytest.mark.parametrize("mechanism", NOBODY_MECHANISMS)
def test_cli_nobody_read_only_files_keep_their_xattrs_and_modes(
    mechanism: str, nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    """Read-only files with a ``user.*`` xattr, small and large (the writer thread's):
    setting a ``user.*`` xattr needs write permission, which the unprivileged owner of a
    0o444 file lacks. The file gets its mode after its xattrs; under ``openat2`` the
    whole unpack failed on it (fuzzing, issue 16, twentieth round)."""
    work, victim = nobody_work
    b = B()
    files = {"ro": (0o444, b"r"), "none": (0o000, b"n"), "big": (0o440, b"b" * (300 << 10)),
             "rw": (0o644, b"w")}
    for name, (mode, data) in files.items():
        b.pax_file(name, data, records={"SCHILY.xattr.user.k": name}, mode=mode)
    result = cli_as(pythonpath, "untar", "--confine", mechanism,
                    _archive(unpriv_base, b.build()), work / "dest")
    assert result.rc == 0, result.err
    for name, (mode, data) in files.items():
        path = work / "dest" / name
        assert stat.S_IMODE(path.lstat().st_mode) == mode, name
        assert os.getxattr(path, "user.k") == name.encode(), name
        assert path.read_bytes() == data, name
    victim.assert_untouched()


@pytest.mark.parametrize("mechanism", NOBODY_MECHANISMS)
def test_cli_nobody_skips_a_hardlink_to_a_skipped_device(
    mechanism: str, nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    """Another name of a device node that an unprivileged unpack skips is skipped with
    it, and counted in the warning; it failed the unpack ("hardlink target does not
    exist"), and what followed was not unpacked (fuzzing, issue 16, twentieth round).
    A name that a later entry makes a file again is linked to as usual."""
    work, victim = nobody_work
    archive = _archive(unpriv_base, B().chardev("dev/null", 1, 3).hardlink("dev/null2", "dev/null")
                       .chardev("dev/zero", 1, 5).file("dev/zero", b"now a file")
                       .hardlink("dev/zero2", "dev/zero").file("etc/after", b"after").build())
    result = cli_as(pythonpath, "untar", "--confine", mechanism, archive, work / "dest")
    assert result.rc == 0, result.err
    assert "3 device nodes skipped" in result.err, result.err
    dest = work / "dest"
    assert sorted(os.listdir(dest / "dev")) == ["zero", "zero2"]
    assert (dest / "dev" / "zero2").read_bytes() == b"now a file"
    assert (dest / "etc" / "after").read_bytes() == b"after"
    victim.assert_untouched()


@pytest.mark.parametrize("mechanism", NOBODY_MECHANISMS)
def test_cli_nobody_creates_missing_destination(
    mechanism: str, nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    """A destination that does not exist yet is created (0755, the user's own), as it is
    for root: an unprivileged user has no other owner to give it."""
    work, victim = nobody_work
    dest = work / "dest" / "new" / "deeper"
    archive = _archive(unpriv_base, B().file("f", b"f").build())
    result = cli_as(pythonpath, "untar", "--json", "--confine", mechanism, archive, dest)
    assert result.rc == 0, result.err
    assert (dest / "f").read_bytes() == b"f"
    for path in (dest, dest.parent):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (NOBODY, NOBODY, 0o755), path
    victim.assert_untouched()


@pytest.mark.parametrize("mechanism", ["pivot", "chroot"])
def test_cli_nobody_root_mechanisms_refused(
    mechanism: str, nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    work, victim = nobody_work
    archive = _archive(unpriv_base, B().file("f", b"f").build())
    result = cli_as(pythonpath, "untar", "--confine", mechanism, archive, work / "dest")
    assert_one_line_error(result, rc=3, mentions=(mechanism, "root"))
    assert list((work / "dest").iterdir()) == []
    victim.assert_untouched()


@pytest.mark.parametrize("mechanism", ["userns", "openat2"])
def test_cli_nobody_skips_summarized_once(
    mechanism: str, nobody_work: tuple[Path, Victim], pythonpath: Path, unpriv_base: Path
) -> None:
    """Owners that cannot be represented, devices and trusted.* xattrs are skipped,
    counted, and each kind summarized in one warning line."""
    work, victim = nobody_work
    b = B()
    for i in range(5):
        b.file(f"owned{i}", b"o", uid=1000 + i, gid=1000 + i)
    for i in range(3):
        b.chardev(f"dev{i}", 1, 3 + i)
    b.blockdev("disk", 7, 0)
    b.pax({"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.kept": "k"})
    b.dir("opaque")
    b.pax({"SCHILY.xattr.trusted.foo": "bar"}).file("tfile", b"t")
    b.fifo("fifo").file("plain", b"p")
    archive = _archive(unpriv_base, b.build())
    result = cli_as(pythonpath, "untar", "--confine", mechanism, archive, work / "dest")
    assert result.rc == 0, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert all(line.startswith("chrootarchive: warning: ") for line in lines), lines
    owners = [line for line in lines if "ownership" in line or "owner" in line]
    devices = [line for line in lines if "device" in line]
    xattrs = [line for line in lines if "trusted" in line]
    assert len(owners) == 1 and len(devices) == 1 and len(xattrs) == 1, lines
    assert "4 device" in devices[0], devices
    assert "2 " in xattrs[0], xattrs
    assert "1000:1000" in owners[0], owners
    dest = work / "dest"
    assert (dest / "plain").read_bytes() == b"p"
    assert tree.file_type(os.lstat(dest / "fifo")) == "fifo"
    assert os.getxattr(dest / "opaque", "user.kept") == b"k"
    assert not any((dest / f"dev{i}").exists() for i in range(3))
    for i in range(5):
        st = os.lstat(dest / f"owned{i}")
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    # --json carries the same lines.
    again = cli_as(pythonpath, "untar", "--json", "--confine", mechanism, archive, dest)
    assert again.rc == 0, again.err
    warnings = json.loads(again.out)["warnings"]
    assert sorted(warnings) == sorted(line.removeprefix("chrootarchive: warning: ")
                                      for line in lines)
    victim.assert_untouched()
