"""The attack cases: hostile archives, each a function of the victim's absolute path.

Shared by ``test_attacks.py`` (each case under the default mechanism, with a victim
tree beside the destination) and ``test_mechanisms.py`` (the cases about where writes
land, under every mechanism). Expected outcomes follow Docker's rules
(``docs``: reference/docker-facts.md):

- ``BREAKOUT``: a name that leaves the root after cleaning, a hardlink target that
  does, or a *relative* symlink whose target, joined to the symlink's directory and
  cleaned lexically, does: :class:`chrootarchive.BreakoutError` naming the entry.
- ``OK``: the extraction succeeds (and writes where the jail says: inside).
- ``SAFE``: hostile in a way only the jail can stop; success landing inside, or a
  clean archive or destination error, never an internal error; the victim untouched.
- ``MALFORMED``: :class:`chrootarchive.MalformedArchiveError` (or a subclass).
- ``ARCHIVE``: any :class:`chrootarchive.ArchiveError`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import chrootarchive
from helpers import tarbuild as tb
from helpers import tree
from helpers.victim import Victim

PWN = b"pwned-by-archive\n"

OK, BREAKOUT, SAFE, MALFORMED, ARCHIVE = "ok", "breakout", "safe", "malformed", "archive"


# -- running one case ----------------------------------------------------------------


@dataclass
class Case:
    archive: bytes
    expect: str
    #: a substring that the error (entry or message) must contain
    mentions: str | None = None
    #: dest-relative path -> content, checked when the extraction succeeded
    landed: dict[str, bytes] = field(default_factory=dict)
    #: dest-relative paths that must not exist after a successful extraction
    absent: list[str] = field(default_factory=list)
    #: called with dest before the extraction (pre-existing destination content)
    prepare: Callable[[Path], None] | None = None
    #: dest-relative path -> file type expected on success
    types: dict[str, str] = field(default_factory=dict)


def untar_outcome(
    data: bytes | Path, dest: Path, options: chrootarchive.UnpackOptions | None = None
) -> chrootarchive.UnpackResult | BaseException:
    """Run the API; return the result or the exception raised."""
    source: BinaryIO | Path = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return chrootarchive.untar(source, dest, options)
    except Exception as err:  # classified by the caller
        return err


def check_outcome(outcome: object, case: Case, dest: Path) -> None:
    expect = case.expect
    if expect == OK:
        if isinstance(outcome, BaseException):
            raise AssertionError(f"expected success, got {type(outcome).__name__}: {outcome}")
    elif expect == BREAKOUT:
        assert isinstance(outcome, chrootarchive.BreakoutError), (
            f"expected BreakoutError, got {outcome!r}"
        )
        assert outcome.entry, f"BreakoutError names no entry: {outcome!r}"
    elif expect == MALFORMED:
        assert isinstance(outcome, chrootarchive.MalformedArchiveError), (
            f"expected MalformedArchiveError, got {outcome!r}"
        )
    elif expect == ARCHIVE:
        assert isinstance(outcome, chrootarchive.ArchiveError), (
            f"expected an ArchiveError, got {outcome!r}"
        )
    elif expect == SAFE:
        if isinstance(outcome, BaseException):
            assert isinstance(
                outcome, (chrootarchive.ArchiveError, chrootarchive.DestinationError)
            ), f"expected success or a clean archive/destination error, got {outcome!r}"
    else:  # pragma: no cover
        raise AssertionError(expect)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, chrootarchive.ChrootArchiveError)
        if case.mentions and expect != SAFE:
            assert case.mentions in str(outcome), f"{case.mentions!r} not in {str(outcome)!r}"
    else:
        for rel, content in case.landed.items():
            p = dest / rel
            assert p.is_file() and not p.is_symlink(), f"{rel} was not written inside dest"
            assert p.read_bytes() == content, f"{rel} has the wrong content"
        for rel in case.absent:
            assert not os.path.lexists(dest / rel), f"{rel} should not exist"
        for rel, kind in case.types.items():
            st = os.lstat(dest / rel)
            assert tree.file_type(st) == kind, f"{rel} is a {tree.file_type(st)}, not {kind}"


def run_case(case: Case, dest: Path, victim: Victim) -> object:
    if case.prepare:
        case.prepare(dest)
        victim.snap()
    outcome = untar_outcome(case.archive, dest)
    check_outcome(outcome, case, dest)
    victim.assert_untouched()
    victim.assert_not_read_into(dest)
    assert_nothing_big(dest)
    return outcome


def assert_nothing_big(dest: Path, limit: int = 64 << 20) -> None:
    """No case writes much: a declared-but-absent 8 GiB must not be allocated."""
    for dirpath, _dirs, files in os.walk(dest):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            assert st.st_blocks * 512 < limit, f"{f}: {st.st_blocks * 512} bytes allocated"


def B() -> tb.TarBuilder:
    return tb.TarBuilder()


def rel(path: str | Path) -> str:
    """An absolute host path as it appears inside the jail's root (leading / removed)."""
    return str(path).lstrip("/")


# -- the cases: a function of the victim's absolute path ------------------------------

CASES: dict[str, Callable[[str], Case]] = {}


def case(fn: Callable[[str], Case]) -> Callable[[str], Case]:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


# Absolute names: the leading "/" is stripped, the entry lands inside.


@case
def case_absolute_name_to_victim_file(V: str) -> Case:
    return Case(B().file(f"{V}/hello", PWN).build(), OK, landed={f"{rel(V)}/hello": PWN})


@case
def case_absolute_name_new_file_in_victim(V: str) -> Case:
    return Case(B().file(f"{V}/pwned", PWN).build(), OK, landed={f"{rel(V)}/pwned": PWN})


@case
def case_absolute_name_many_slashes(V: str) -> Case:
    return Case(B().file(f"///{V}//hello", PWN).build(), OK, landed={f"{rel(V)}/hello": PWN})


@case
def case_absolute_name_etc(V: str) -> Case:
    return Case(
        B().file("/etc/chrootarchive-test-pwned", PWN).build(),
        OK,
        landed={"etc/chrootarchive-test-pwned": PWN},
    )


@case
def case_absolute_dir_over_victim(V: str) -> Case:
    # A directory entry naming the victim with another mode: must not chmod the victim.
    return Case(B().dir(f"{V}/", mode=0o777).dir(f"{V}/sub", mode=0o700).build(), OK)


# ".." in every spelling.


@case
def case_dotdot_plain(V: str) -> Case:
    return Case(B().file("../victim/pwned", PWN).build(), BREAKOUT, mentions="pwned")


@case
def case_dotdot_existing_victim_file(V: str) -> Case:
    return Case(B().file("../victim/hello", PWN).build(), BREAKOUT, mentions="hello")


@case
def case_dotdot_dot_prefix(V: str) -> Case:
    return Case(B().file("./../victim/pwned", PWN).build(), BREAKOUT, mentions="pwned")


@case
def case_dotdot_nested(V: str) -> Case:
    return Case(B().file("a/b/../../../victim/pwned", PWN).build(), BREAKOUT, mentions="pwned")


@case
def case_dotdot_after_dir(V: str) -> Case:
    return Case(B().file("a/../../victim/pwned", PWN).build(), BREAKOUT, mentions="pwned")


@case
def case_dotdot_deep(V: str) -> Case:
    name = "../" * 40 + rel(V) + "/pwned"
    return Case(B().file(name, PWN).build(), BREAKOUT, mentions="pwned")


@case
def case_dotdot_directory_entry(V: str) -> Case:
    return Case(B().dir("../victim/newdir").build(), BREAKOUT, mentions="newdir")


@case
def case_dotdot_after_good_entries(V: str) -> Case:
    # The breakout is an error for the whole extraction even after good entries.
    return Case(
        B().file("good", b"good\n").file("../victim/pwned", PWN).build(),
        BREAKOUT,
        mentions="pwned",
    )


@case
def case_dotdot_bare_dir(V: str) -> Case:
    return Case(B().dir("..", mode=0o777).build(), BREAKOUT, mentions="..")


@case
def case_dotdot_bare_dir_slash(V: str) -> Case:
    return Case(B().dir("../", mode=0o777).build(), BREAKOUT, mentions="..")


@case
def case_dotdot_bare_file(V: str) -> Case:
    return Case(B().file("..", PWN).build(), BREAKOUT, mentions="..")


@case
def case_dotdot_bare_symlink(V: str) -> Case:
    return Case(B().symlink("..", "/").build(), BREAKOUT, mentions="..")


@case
def case_dotdot_slash_prefixed(V: str) -> Case:
    # Docker cleans "/../victim/x" to "/victim/x": inside. An implementation that
    # strips the slash first and calls it a breakout is as good.
    return Case(B().file("/../victim/pwned", PWN).build(), SAFE)


@case
def case_dotdot_in_pax_path(V: str) -> Case:
    return Case(
        B().pax({"path": "../victim/pwned-pax"}).file("innocent", PWN).build(),
        BREAKOUT,
        mentions="pwned-pax",
    )


@case
def case_dotdot_in_pax_path_long(V: str) -> Case:
    name = "../victim/" + "p" * 200
    return Case(B().pax({"path": name}).file("innocent", PWN).build(), BREAKOUT)


@case
def case_dotdot_in_gnu_longname(V: str) -> Case:
    name = "../victim/" + "g" * 150
    return Case(B().longname(name).file("innocent", PWN).build(), BREAKOUT)


@case
def case_dotdot_in_gnu_longname_short(V: str) -> Case:
    return Case(
        B().longname("../victim/pwned-gnu").file("innocent", PWN).build(),
        BREAKOUT,
        mentions="pwned-gnu",
    )


@case
def case_dotdot_in_ustar_prefix(V: str) -> Case:
    return Case(
        B().raw(tb.member("victim/pwned-prefix", PWN, prefix="..")).build(),
        BREAKOUT,
        mentions="pwned-prefix",
    )


@case
def case_dotdot_in_ustar_prefix_nested(V: str) -> Case:
    return Case(
        B().raw(tb.member("../victim/pwned-prefix", PWN, prefix="a/..")).build(),
        BREAKOUT,
        mentions="pwned-prefix",
    )


@case
def case_sibling_prefix(V: str) -> Case:
    # "dest-evil" starts with "dest": a string-prefix check would let it through.
    return Case(B().file("../dest-evil/pwned", PWN).build(), BREAKOUT, mentions="dest-evil")


@case
def case_sibling_prefix_file(V: str) -> Case:
    return Case(B().file("../destX", PWN).build(), BREAKOUT, mentions="destX")


@case
def case_backslashes_are_plain_characters(V: str) -> Case:
    return Case(B().file("..\\victim\\pwned", PWN).build(), OK, landed={"..\\victim\\pwned": PWN})


@case
def case_dotdot_gitme_is_a_name(V: str) -> Case:
    # Docker's TestUntarParentPathPermissions/"..gitme": a name that merely starts with "..".
    return Case(
        B().file("..gitme", b"git\n").file("dir/..gitme", b"git2\n").file("...", b"3\n").build(),
        OK,
        landed={"..gitme": b"git\n", "dir/..gitme": b"git2\n", "...": b"3\n"},
    )


# Symlinks, then writes through them.


@case
def case_symlink_relative_escape(V: str) -> Case:
    return Case(
        B().symlink("loophole", "../victim").file("loophole/pwned", PWN).build(),
        BREAKOUT,
        mentions="loophole",
    )


@case
def case_symlink_relative_escape_alone(V: str) -> Case:
    # Docker rejects the symlink itself, before anything uses it.
    return Case(B().symlink("up", "..").build(), BREAKOUT, mentions="up")


@case
def case_symlink_relative_escape_nested(V: str) -> Case:
    return Case(
        B()
        .symlink("dir/loophole", "../../victim")
        .file("dir/loophole/newdir/newfile", PWN)
        .build(),
        BREAKOUT,
        mentions="loophole",
    )


@case
def case_symlink_chain_dot_then_up(V: str) -> Case:
    # a -> .  then  b -> a/../..  (lexically: "..", a breakout)
    return Case(
        B().symlink("a", ".").symlink("b", "a/../..").file("b/victim/pwned", PWN).build(),
        BREAKOUT,
        mentions="b",
    )


@case
def case_symlink_chain_lexically_inside(V: str) -> Case:
    # a -> .  then  b -> a/a/a/..  (lexically "a/a": inside; really: the parent of the
    # root). Only the jail keeps b inside: b/victim/pwned must land in dest/victim.
    return Case(
        B()
        .dir("victim")
        .symlink("a", ".")
        .symlink("b", "a/a/a/..")
        .file("b/victim/pwned", PWN)
        .build(),
        SAFE,
        landed={"victim/pwned": PWN},
    )


@case
def case_symlink_two_hop(V: str) -> Case:
    # inner/go_up -> ..  then  inner/go_up/escape -> ../victim: each looks inside on its
    # own; together they leave the root (without a jail). Then a write through escape.
    return Case(
        B()
        .dir("victim")
        .dir("inner")
        .symlink("inner/go_up", "..")
        .symlink("inner/go_up/escape", "../victim")
        .file("escape/pwned", PWN)
        .build(),
        SAFE,
        landed={"victim/pwned": PWN},
    )


@case
def case_symlink_two_hop_docker(V: str) -> Case:
    # The moby 2026 spelling: the second hop is itself a lexical breakout.
    return Case(
        B()
        .dir("inner")
        .symlink("inner/go_up", "..")
        .symlink("escape", "../victim")
        .file("escape/pwned", PWN)
        .build(),
        BREAKOUT,
        mentions="escape",
    )


@case
def case_symlink_absolute_to_victim_dir(V: str) -> Case:
    return Case(B().symlink("loophole", V).file("loophole/pwned", PWN).build(), SAFE)


@case
def case_symlink_absolute_lands_inside(V: str) -> Case:
    # With the victim's path re-created inside dest, the write through the absolute
    # symlink succeeds, inside.
    return Case(
        B().dir(f"{V}").symlink("loophole", V).file("loophole/pwned", PWN).build(),
        OK,
        landed={f"{rel(V)}/pwned": PWN},
        types={"loophole": "symlink"},
    )


@case
def case_symlink_absolute_to_victim_file_then_file(V: str) -> Case:
    # A regular entry replaces the symlink; it never writes through it.
    return Case(
        B().symlink("lnk", f"{V}/hello").file("lnk", PWN, mode=0o777).build(),
        OK,
        landed={"lnk": PWN},
    )


@case
def case_symlink_absolute_root_then_write(V: str) -> Case:
    # host -> /  then  host/<victim>/hello: "/" is the jail's root.
    return Case(
        B().dir(V).symlink("host", "/").file(f"host/{rel(V)}/hello", PWN).build(),
        OK,
        landed={f"{rel(V)}/hello": PWN},
    )


@case
def case_symlink_then_dir_entry_chmod(V: str) -> Case:
    # A directory entry over an absolute symlink to the victim: replace, never chmod/chown
    # through it.
    return Case(
        B().symlink("d", V).dir("d", mode=0o777, uid=1234, gid=1234).build(),
        OK,
        types={"d": "dir"},
    )


@case
def case_dir_replaced_by_relative_symlink(V: str) -> Case:
    return Case(
        B().dir("d").file("d/f", b"f").symlink("d", "../victim").file("d/pwned", PWN).build(),
        BREAKOUT,
        mentions="d",
    )


@case
def case_dir_replaced_by_absolute_symlink(V: str) -> Case:
    return Case(
        B().dir("d").file("d/f", b"f").symlink("d", V).file("d/hello", PWN).build(),
        SAFE,
    )


@case
def case_dir_replaced_by_absolute_symlink_lands_inside(V: str) -> Case:
    return Case(
        B().dir(V).dir("d").file("d/f", b"f").symlink("d", V).file("d/hello", PWN).build(),
        OK,
        landed={f"{rel(V)}/hello": PWN},
        types={"d": "symlink"},
    )


@case
def case_dir_replaced_by_chain_symlink(V: str) -> Case:
    return Case(
        B()
        .dir("victim")
        .dir("d")
        .symlink("a", ".")
        .symlink("d", "a/a/..")
        .file("d/victim/pwned", PWN)
        .build(),
        SAFE,
        landed={"victim/pwned": PWN},
    )


# Docker's seven invalid symlink cases (TestUntarInvalidSymlink).


@case
def case_docker_symlink_1_dotdot(V: str) -> Case:
    return Case(B().symlink("dotdot", "../victim/hello").build(), BREAKOUT, mentions="dotdot")


@case
def case_docker_symlink_2_slash_dotdot(V: str) -> Case:
    # Absolute target: allowed (inside the jail it resolves inside).
    return Case(B().symlink("slash-dotdot", "/../victim/hello").build(), OK)


@case
def case_docker_symlink_3_write_victim_file(V: str) -> Case:
    return Case(
        B().symlink("loophole-victim", "../victim").file("loophole-victim/file", PWN).build(),
        BREAKOUT,
    )


@case
def case_docker_symlink_4_symlink_symlink(V: str) -> Case:
    return Case(
        B()
        .symlink("loophole-victim", "../victim")
        .symlink("symlink", "loophole-victim/hello")
        .build(),
        BREAKOUT,
    )


@case
def case_docker_symlink_5_symlink_hardlink(V: str) -> Case:
    return Case(
        B()
        .symlink("loophole-victim", "../victim")
        .hardlink("hardlink", "loophole-victim/hello")
        .build(),
        BREAKOUT,
    )


@case
def case_docker_symlink_6_remove_victim_dir(V: str) -> Case:
    return Case(
        B().symlink("loophole-victim", "../victim").file("loophole-victim", PWN).build(),
        BREAKOUT,
    )


@case
def case_docker_symlink_7_write_through_nested(V: str) -> Case:
    return Case(
        B()
        .symlink("dir/loophole", "../../victim")
        .file("dir/loophole/newdir/newfile", PWN)
        .build(),
        BREAKOUT,
    )


# Docker's six invalid hardlink cases (TestUntarInvalidHardlink).


@case
def case_docker_hardlink_1_dotdot(V: str) -> Case:
    return Case(B().hardlink("dotdot", "../victim/hello").build(), BREAKOUT, mentions="dotdot")


@case
def case_docker_hardlink_2_slash_dotdot(V: str) -> Case:
    # Root-relative: "/../victim/hello" is "victim/hello" inside the root, absent.
    return Case(B().hardlink("slash-dotdot", "/../victim/hello").build(), SAFE)


@case
def case_docker_hardlink_3_write_victim_file(V: str) -> Case:
    return Case(
        B().hardlink("loophole-victim", "../victim").file("loophole-victim/file", PWN).build(),
        BREAKOUT,
    )


@case
def case_docker_hardlink_4_hardlink_symlink(V: str) -> Case:
    return Case(
        B()
        .hardlink("loophole-victim", "../victim")
        .symlink("symlink", "loophole-victim/hello")
        .build(),
        BREAKOUT,
    )


@case
def case_docker_hardlink_5_hardlink_hardlink(V: str) -> Case:
    return Case(
        B()
        .hardlink("loophole-victim", "../victim")
        .hardlink("hardlink", "loophole-victim/hello")
        .build(),
        BREAKOUT,
    )


@case
def case_docker_hardlink_6_remove_victim_dir(V: str) -> Case:
    return Case(
        B().hardlink("loophole-victim", "../victim").file("loophole-victim", PWN).build(),
        BREAKOUT,
    )


# More hardlinks.


@case
def case_hardlink_absolute_to_victim(V: str) -> Case:
    # Root-relative: the victim's path inside dest does not exist; never the host's.
    return Case(B().hardlink("h", f"{V}/hello").build(), SAFE)


@case
def case_hardlink_absolute_lands_inside(V: str) -> Case:
    return Case(
        B().file(f"{V}/hello", b"inside\n").hardlink("h", f"{V}/hello").build(),
        OK,
        landed={"h": b"inside\n"},
    )


@case
def case_hardlink_absolute_etc_passwd(V: str) -> Case:
    return Case(B().hardlink("passwd", "/etc/passwd").build(), SAFE)


@case
def case_hardlink_through_absolute_symlink(V: str) -> Case:
    return Case(B().symlink("lnk", V).hardlink("h", "lnk/hello").build(), SAFE)


@case
def case_hardlink_through_relative_symlink(V: str) -> Case:
    return Case(B().symlink("lnk", "../victim").hardlink("h", "lnk/hello").build(), BREAKOUT)


@case
def case_hardlink_through_chain(V: str) -> Case:
    # a -> .; the target "a/a/../victim/hello" is "a/victim/hello" lexically (inside)
    # but the parent of the root in reality (without a jail).
    return Case(B().symlink("a", ".").hardlink("h", "a/a/../victim/hello").build(), SAFE)


@case
def case_hardlink_to_symlink(V: str) -> Case:
    # The link is to the symlink itself, never to what it points at.
    return Case(
        B().symlink("sym", f"{V}/hello").hardlink("h", "sym").build(),
        OK,
        types={"h": "symlink", "sym": "symlink"},
    )


@case
def case_hardlink_to_symlink_then_write(V: str) -> Case:
    return Case(
        B().symlink("sym", f"{V}/hello").hardlink("h", "sym").file("h", PWN).build(),
        OK,
        landed={"h": PWN},
        types={"sym": "symlink"},
    )


@case
def case_hardlink_in_pax_linkpath(V: str) -> Case:
    return Case(
        B().pax({"linkpath": "../victim/hello"}).hardlink("h", "innocent").build(),
        BREAKOUT,
    )


@case
def case_hardlink_in_gnu_longlink(V: str) -> Case:
    return Case(B().longlink("../victim/hello").hardlink("h", "innocent").build(), BREAKOUT)


@case
def case_symlink_in_pax_linkpath(V: str) -> Case:
    return Case(
        B().pax({"linkpath": "../victim"}).symlink("s", "innocent").file("s/pwned", PWN).build(),
        BREAKOUT,
    )


# /proc magic links: there is no /proc in the jail.


@case
def case_proc_self_root(V: str) -> Case:
    return Case(B().symlink("p", "/proc/self/root").file(f"p/{rel(V)}/pwned", PWN).build(), SAFE)


@case
def case_proc_self_root_victim_dir(V: str) -> Case:
    return Case(B().symlink("p", f"/proc/self/root{V}").file("p/pwned", PWN).build(), SAFE)


@case
def case_proc_self_cwd(V: str) -> Case:
    return Case(B().symlink("cwd", "/proc/self/cwd/../victim").file("cwd/pwned", PWN).build(), SAFE)


@case
def case_proc_self_fd(V: str) -> Case:
    b = B()
    for fd in range(0, 12):
        b.symlink(f"fd{fd}", f"/proc/self/fd/{fd}").file(f"fd{fd}/pwned", PWN)
    return Case(b.build(), SAFE)


@case
def case_proc_thread_self_root(V: str) -> Case:
    return Case(
        B().symlink("t", "/proc/thread-self/root").file(f"t/{rel(V)}/pwned", PWN).build(), SAFE
    )


@case
def case_proc_hardlink(V: str) -> Case:
    return Case(B().hardlink("h", f"/proc/self/root{V}/hello").build(), SAFE)


@case
def case_proc_1_root(V: str) -> Case:
    return Case(B().symlink("one", "/proc/1/root").file(f"one/{rel(V)}/pwned", PWN).build(), SAFE)


# Device nodes: a later entry of the same name replaces them; never opened.


@case
def case_chardev_then_file(V: str) -> Case:
    return Case(
        B().chardev("null", 1, 3).file("null", PWN).build(),
        OK,
        landed={"null": PWN},
    )


@case
def case_chardev_zero_hardlink_then_file(V: str) -> Case:
    return Case(
        B().chardev("zero", 1, 5).hardlink("z2", "zero").file("z2", PWN).build(),
        OK,
        landed={"z2": PWN},
        types={"zero": "chardev"},
    )


@case
def case_unbound_blockdev_then_file(V: str) -> Case:
    # A block device node no driver answers (loop minor 250 is never bound here):
    # opening it would fail with ENXIO; a correct unpacker never opens it.
    return Case(
        B().blockdev("disk", 7, 250).file("disk", PWN).build(),
        OK,
        landed={"disk": PWN},
    )


@case
def case_fifo_then_file(V: str) -> Case:
    # Opening the FIFO for writing would block forever.
    return Case(B().fifo("pipe").file("pipe", PWN).build(), OK, landed={"pipe": PWN})


@case
def case_fifo_then_hardlink_then_file(V: str) -> Case:
    return Case(
        B().fifo("pipe").hardlink("pipe2", "pipe").file("pipe2", PWN).build(),
        OK,
        landed={"pipe2": PWN},
        types={"pipe": "fifo"},
    )


# Entries after the end-of-archive marker are ignored.


@case
def case_entries_after_eoa(V: str) -> Case:
    return Case(
        B()
        .file("before", b"before\n")
        .end()
        .file("after", PWN)
        .file("../victim/pwned", PWN)
        .symlink("s", "../victim")
        .end()
        .build(),
        OK,
        landed={"before": b"before\n"},
        absent=["after", "s"],
    )


@case
def case_garbage_after_eoa(V: str) -> Case:
    return Case(
        B().file("before", b"x").end().raw(b"garbage " * 64 + b"\xff" * 100).build(eoa=False),
        OK,
        landed={"before": b"x"},
    )


@case
def case_single_zero_block_then_entry(V: str) -> Case:
    # Go: ErrHeader; GNU tar: a warning and goes on. Either way: safe.
    return Case(B().file("a", b"a").end(blocks=1).file("../victim/pwned", PWN).build(), SAFE)


# NUL bytes in names.


@case
def case_nul_in_ustar_name(V: str) -> Case:
    # ustar fields are C strings: the name is "safe".
    return Case(
        B().raw(tb.member(b"safe\x00/../../victim/pwned", PWN)).build(),
        SAFE,
        landed={"safe": PWN},
    )


@case
def case_nul_in_ustar_linkname(V: str) -> Case:
    return Case(
        B().raw(tb.header(b"s", typeflag=tb.SYM, linkname=b"target\x00/../../../victim")).build(),
        SAFE,
    )


@case
def case_nul_in_ustar_prefix(V: str) -> Case:
    return Case(
        B().raw(tb.member(b"pwned", PWN, prefix=b"ok\x00/../../victim")).build(),
        SAFE,
    )


@case
def case_nul_in_pax_path(V: str) -> Case:
    return Case(
        B().pax({"path": b"safe\x00/../../victim/pwned"}).file("innocent", PWN).build(),
        MALFORMED,
    )


@case
def case_nul_in_pax_linkpath(V: str) -> Case:
    return Case(
        B().pax({"linkpath": b"target\x00../victim"}).symlink("s", "innocent").build(),
        MALFORMED,
    )


@case
def case_nul_in_pax_key(V: str) -> Case:
    return Case(
        B().pax(tb.pax_record(b"SCHILY.xattr.a\x00b", b"c")).file("f", b"x").build(),
        MALFORMED,
    )


@case
def case_nul_in_gnu_longname(V: str) -> Case:
    return Case(
        B().longname(b"safe\x00/../../victim/pwned").file("innocent", PWN).build(),
        SAFE,
        landed={"safe": PWN},
    )


# Bad PAX records.


def _bad_pax(records: bytes) -> Case:
    return Case(B().pax(records).file("f", b"data").build(), MALFORMED)


@case
def case_pax_length_too_long(V: str) -> Case:
    return _bad_pax(b"99 path=x\n")


@case
def case_pax_length_too_short(V: str) -> Case:
    return _bad_pax(b"3 somelongkey=\n")


@case
def case_pax_length_not_a_number(V: str) -> Case:
    return _bad_pax(b"xx path=abc\n")


@case
def case_pax_length_negative(V: str) -> Case:
    return _bad_pax(b"-9 path=x\n")


@case
def case_pax_missing_equals(V: str) -> Case:
    return _bad_pax(b"11 pathxyz\n")


@case
def case_pax_missing_newline(V: str) -> Case:
    return _bad_pax(b"10 path=xy")


@case
def case_pax_garbage(V: str) -> Case:
    return _bad_pax(b"\xff\xfe\x00garbage" * 10)


@case
def case_pax_bad_size_value(V: str) -> Case:
    return _bad_pax(tb.pax_record("size", "abc"))


@case
def case_pax_negative_size_value(V: str) -> Case:
    return _bad_pax(tb.pax_record("size", "-1"))


@case
def case_pax_bad_mtime(V: str) -> Case:
    # No leading number: GNU tar refuses it, bsdtar reads 0 (Go's "999xxx9324..." is
    # 999 s to both, and refused by us for the digits after the "xxx":
    # tests/test_conformance.py).
    return _bad_pax(tb.pax_record("mtime", "xxx9324.432432444444"))


@case
def case_pax_bad_uid(V: str) -> Case:
    return _bad_pax(tb.pax_record("uid", "gtgergergersagersgers"))


@case
def case_pax_truncated_records(V: str) -> Case:
    # The extended header says 600 bytes of records; the archive ends first.
    return Case(
        tb.header("././@PaxHeader", typeflag=tb.PAX, size=600) + tb.pax_record("path", "x"),
        MALFORMED,
    )


@case
def case_pax_sparse_map_odd(V: str) -> Case:
    return _bad_pax(
        tb.pax_records(
            {
                "GNU.sparse.major": "0",
                "GNU.sparse.minor": "1",
                "GNU.sparse.name": "sparse",
                "GNU.sparse.size": "100",
                "GNU.sparse.numblocks": "2",
                "GNU.sparse.map": "1,2,3",
            }
        )
    )


@case
def case_pax_sparse_map_beyond_size(V: str) -> Case:
    return _bad_pax(
        tb.pax_records(
            {
                "GNU.sparse.major": "0",
                "GNU.sparse.minor": "1",
                "GNU.sparse.name": "sparse",
                "GNU.sparse.size": "10",
                "GNU.sparse.numblocks": "1",
                "GNU.sparse.map": "1000000,4",
            }
        )
    )


@case
def case_pax_header_without_entry(V: str) -> Case:
    # Go: a PAX header at the very end with nothing after it is a valid, empty archive.
    return Case(B().pax({"path": "orphan"}).build(), OK, absent=["orphan"])


# Huge and negative sizes.


@case
def case_size_negative_base256(V: str) -> Case:
    return Case(B().raw(tb.header("neg", size=tb.base256(-1, 12))).build(), MALFORMED)


@case
def case_size_negative_base256_large(V: str) -> Case:
    return Case(B().raw(tb.header("neg", size=tb.base256(-(2**40), 12))).build(), MALFORMED)


@case
def case_size_huge_base256(V: str) -> Case:
    return Case(
        B().raw(tb.header("huge", size=tb.base256(2**80, 12)) + b"x" * 512).build(eoa=False),
        ARCHIVE,
    )


@case
def case_size_huge_octal_truncated(V: str) -> Case:
    # 8 GiB declared, 1 KiB present: truncated, detected fast, nothing big written.
    return Case(
        tb.header("huge", size=0o77777777777) + b"y" * 1024,
        MALFORMED,
    )


@case
def case_size_huge_pax(V: str) -> Case:
    return Case(
        B().pax({"size": str(2**63)}).file("huge", b"z").build(),
        ARCHIVE,
    )


@case
def case_size_overflow_pax(V: str) -> Case:
    return Case(
        B().pax({"size": "9" * 30}).file("huge", b"z").build(),
        MALFORMED,
    )


@case
def case_bad_octal_field(V: str) -> Case:
    return Case(B().raw(tb.header("f", mode=b"abcdefg\x00")).build(), MALFORMED)


@case
def case_bad_checksum(V: str) -> Case:
    return Case(B().file("good", b"g").raw(tb.header("bad", chksum=12345)).build(), MALFORMED)


@case
def case_devmajor_over_32_bits(V: str) -> Case:
    return Case(
        B().raw(tb.header("dev", typeflag=tb.CHR, devmajor=tb.base256(2**33, 8))).build(),
        ARCHIVE,
    )


# Truncated data.


@case
def case_truncated_in_header(V: str) -> Case:
    return Case(tb.member("file", b"x" * 100)[:300], MALFORMED)


@case
def case_truncated_in_data(V: str) -> Case:
    return Case(tb.member("file", b"x" * 2000)[:1024], MALFORMED)


@case
def case_truncated_after_pax(V: str) -> Case:
    return Case(tb.pax_header({"path": "x"}) + tb.header("f", size=10)[:200], MALFORMED)


@case
def case_truncated_gnu_longname(V: str) -> Case:
    return Case(tb.gnu_longname("n" * 2000)[:900], MALFORMED)


@case
def case_missing_eoa_is_fine(V: str) -> Case:
    # An archive that simply ends after a complete entry (no zero blocks) is accepted
    # by Go, GNU tar and Docker.
    return Case(B().file("f", b"data").build(eoa=False), OK, landed={"f": b"data"})


# -- builders shared with test_mechanisms.py -------------------------------------------


def plant_symlinks(dest: Path, V: Path) -> None:
    os.symlink(V, dest / "abs")
    os.symlink("../victim", dest / "rel")
    os.symlink(V / "hello", dest / "absfile")
    os.symlink("../victim/hello", dest / "relfile")
    os.symlink("..", dest / "up")
    os.symlink("/", dest / "root")
    os.symlink("/proc/self/root", dest / "proc-root")


def replacing_archive(name: str, kind: str) -> bytes:
    """One entry of ``kind`` named like a planted symlink, with an owner, a mode and (for
    files and directories) an xattr that would show on the victim if set through it."""
    records = {"mtime": "12345"}
    if kind in ("file", "dir"):
        records["SCHILY.xattr.user.victim"] = "pwned"
    b = B().pax(records)
    if kind == "file":
        b.file(name, PWN, mode=0o777, uid=4321, gid=4321)
    elif kind == "dir":
        b.dir(name, mode=0o777, uid=4321, gid=4321)
    elif kind == "symlink":
        b.symlink(name, "elsewhere", uid=4321, gid=4321)
    else:
        b.fifo(name, mode=0o777, uid=4321, gid=4321)
    return b.build()


def path_max_chain(final_target: str, write: str, *, pre_dirs: tuple[str, ...] = ()) -> bytes:
    """The 2025 CPython tarfile bypass: 16 steps of 247-character directories, each
    reachable through a one-letter symlink, so that the letters' path is short while
    its resolution is longer than PATH_MAX; a final link then climbs back out."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    b = B()
    for d in pre_dirs:
        b.dir(d)
    path = ""
    for letter in steps:
        b.dir(os.path.join(path, comp))
        b.symlink(os.path.join(path, letter), comp)
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    # Lexically "a/.../p" + 16 ".." is the root itself: not a breakout on paper.
    b.symlink(linkpath, "../" * len(steps))
    b.symlink("escape", os.path.join(linkpath, final_target))
    b.file(write, PWN)
    return b.build()
