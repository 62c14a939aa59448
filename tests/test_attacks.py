"""Attack classes: every hostile archive against a victim tree outside the destination.

Each test builds an archive byte by byte (the cases are in ``helpers/attack_cases.py``),
builds a victim tree beside the destination (``work/victim`` next to ``work/dest``),
extracts, and proves the victim tree is byte-for-byte and metadata-identical afterwards
(ctime included: a chmod, chown, link or unlink of a victim inode moves it), that no
victim content was read into the destination, and that nothing leaked (mounts,
``.pivot_root*``, child processes).

Expected outcomes follow Docker's rules (``docs``: reference/docker-facts.md):

- ``BREAKOUT``: a name that leaves the root after cleaning, a hardlink target that
  does, or a *relative* symlink whose target, joined to the symlink's directory and
  cleaned lexically, does: :class:`chrootarchive.BreakoutError` for the whole
  extraction, naming the entry.
- ``OK``: the extraction succeeds (and writes where the jail says: inside).
- ``SAFE``: the archive is hostile in a way only the jail can stop (absolute
  symlinks, chains that look harmless lexically, magic links); the extraction may
  succeed, landing inside the destination, or fail with a clean archive or
  destination error; it must never be an internal error, and the victim must be
  untouched either way.
- ``MALFORMED``: :class:`chrootarchive.MalformedArchiveError` (or a subclass).
"""

from __future__ import annotations

import io
import os
import random
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import chrootarchive
from helpers import tarbuild as tb
from helpers import tree
from helpers.attack_cases import (
    CASES,
    PWN,
    B,
    path_max_chain,
    plant_symlinks,
    rel,
    replacing_archive,
    run_case,
    untar_outcome,
)
from helpers.cli import assert_one_line_error, run_cli
from helpers.corpus import corpus_dir
from helpers.victim import HELLO, SECRET, Victim

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

pytestmark = pytest.mark.usefixtures("no_leaks")


# -- every case, under the default mechanism --------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_attack(name: str, dest: Path, victim: Victim) -> None:
    case_ = CASES[name](str(victim.root))
    run_case(case_, dest, victim)
    host_target = "/etc/chrootarchive-test-pwned"
    if os.path.lexists(host_target):
        os.unlink(host_target)
        raise AssertionError(f"{host_target} was written on the host")


# -- some of the same through the command line --------------------------------------

CLI_CASES = [
    ("dotdot_plain", "pwned"),
    ("dotdot_in_pax_path", "pwned-pax"),
    ("dotdot_in_gnu_longname_short", "pwned-gnu"),
    ("sibling_prefix", "dest-evil"),
    ("symlink_relative_escape", "loophole"),
    ("docker_hardlink_1_dotdot", "dotdot"),
    ("pax_length_too_long", None),
    ("size_negative_base256", None),
    ("truncated_in_data", None),
    ("nul_in_pax_path", None),
]


@pytest.mark.parametrize(("name", "mentions"), CLI_CASES)
def test_attack_cli(
    name: str, mentions: str | None, dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    case_ = CASES[name](str(victim.root))
    path = write_archive(case_.archive)
    result = run_cli("untar", path, dest)
    assert_one_line_error(result, rc=1, mentions=(mentions,) if mentions else ())
    victim.assert_untouched()


def test_attack_cli_stdin(dest: Path, victim: Victim) -> None:
    case_ = CASES["dotdot_plain"](str(victim.root))
    result = run_cli("untar", "-", dest, input=case_.archive)
    assert_one_line_error(result, rc=1, mentions=("pwned",))
    victim.assert_untouched()


def test_attack_cli_debug_shows_traceback(
    dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    """``--debug`` is the one way to get a traceback; the exit status stays 1."""
    path = write_archive(CASES["dotdot_plain"](str(victim.root)).archive)
    result = run_cli("untar", "--debug", path, dest)
    assert result.rc == 1, result
    assert "Traceback" in result.err or "BreakoutError" in result.err
    victim.assert_untouched()


@pytest.mark.parametrize("options", [[], ["--json"], ["-v"], ["--atomic"]],
                         ids=["plain", "json", "verbose", "atomic"])
def test_modules_unpacked_into_the_working_directory_are_never_imported(
    options: list[str], dest: Path, victim: Victim
) -> None:
    """``python -m chrootarchive untar evil.tar .``: ``-m`` puts the working directory
    first on ``sys.path``, and the archive writes a module there for every name the
    standard library and our dependencies have. Imported by the parent after the
    unpack (``--json`` once imported ``json``), one would run outside the jail."""
    marker = victim.root / "imported"
    names = sorted(sys.stdlib_module_names | {"zstandard", "isal", "tqdm", "urllib3"})
    code = f"open({str(marker)!r} + '-' + __name__, 'w').close()\n".encode()
    builder = tb.TarBuilder()
    for name in names:
        builder.file(f"{name}.py", code)
    archive = builder.build()
    target = dest / "here"
    target.mkdir()
    result = run_cli("untar", *options, "-", "." if "--atomic" not in options else "new",
                     input=archive, cwd=target)
    assert result.rc == 0, result.err
    unpacked = target / "new" if "--atomic" in options else target
    assert (unpacked / "json.py").read_bytes() == code
    assert not list(victim.root.glob("imported*"))
    victim.assert_untouched()


# -- FIFOs and devices that could hang or be written (run in a child, with a timeout) --


def test_fifo_then_file_does_not_hang(
    dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    path = write_archive(B().fifo("pipe").file("pipe", PWN).build())
    start = time.monotonic()
    result = run_cli("untar", path, dest, timeout=60)
    assert result.rc == 0, result
    assert time.monotonic() - start < 30
    assert (dest / "pipe").read_bytes() == PWN
    victim.assert_untouched()


def test_preexisting_fifo_is_replaced_not_opened(
    dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    os.mkfifo(dest / "fifo")
    path = write_archive(B().file("fifo", PWN).build())
    result = run_cli("untar", path, dest, timeout=60)
    assert result.rc == 0, result
    assert stat.S_ISREG(os.lstat(dest / "fifo").st_mode)
    assert (dest / "fifo").read_bytes() == PWN
    victim.assert_untouched()


def test_preexisting_device_is_replaced_not_opened(dest: Path, victim: Victim) -> None:
    os.mknod(dest / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(dest / "disk", 0o660 | stat.S_IFBLK, os.makedev(7, 250))
    outcome = untar_outcome(B().file("null", PWN).file("disk", PWN).build(), dest)
    assert not isinstance(outcome, BaseException), outcome
    assert (dest / "null").read_bytes() == PWN
    assert (dest / "disk").read_bytes() == PWN
    victim.assert_untouched()


# -- symlinks already present in the destination -------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "abs/pwned",
        "rel/pwned",
        "abs/hello",
        "rel/hello",
        "up/victim/pwned",
        "root/pwned-at-root",
        "proc-root/pwned",
        "abs/sub/deeper/file",
        "abs/link-to-sub/pwned",
    ],
)
def test_preexisting_symlink_write_through(entry: str, dest: Path, victim: Victim) -> None:
    """An entry written through a symlink the destination already had never leaves it
    (the jail resolves it inside); it fails cleanly or lands inside."""
    plant_symlinks(dest, victim.root)
    victim.snap()
    outcome = untar_outcome(B().file(entry, PWN).build(), dest)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, (chrootarchive.ArchiveError, chrootarchive.DestinationError)), (
            outcome
        )
    victim.assert_untouched()
    victim.assert_not_read_into(dest)


def test_preexisting_symlinks_land_inside(dest: Path, victim: Victim) -> None:
    """With the targets' paths present inside dest, the writes succeed, inside."""
    V = victim.root
    plant_symlinks(dest, V)
    (dest / rel(V)).mkdir(parents=True)
    (dest / "victim").mkdir()
    victim.snap()
    archive = (
        B()
        .file("abs/pwned-abs", PWN)
        .file("rel/pwned-rel", PWN)
        .file("up/victim/pwned-up", PWN)
        .file("root/pwned-root", PWN)
        .build()
    )
    outcome = untar_outcome(archive, dest)
    assert not isinstance(outcome, BaseException), outcome
    assert (dest / rel(V) / "pwned-abs").read_bytes() == PWN
    assert (dest / "victim" / "pwned-rel").read_bytes() == PWN
    assert (dest / "victim" / "pwned-up").read_bytes() == PWN
    assert (dest / "pwned-root").read_bytes() == PWN
    victim.assert_untouched()


@pytest.mark.parametrize("name", ["absfile", "relfile", "abs", "rel", "up", "root"])
@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo"])
def test_preexisting_symlink_replaced(name: str, kind: str, dest: Path, victim: Victim) -> None:
    """An entry named like a planted symlink replaces the symlink; it never follows it
    to chmod, chown, set xattrs on or truncate what it points at."""
    plant_symlinks(dest, victim.root)
    victim.snap()
    # An xattr set through the symlink would appear on the victim (user.* xattrs exist
    # only on files and directories).
    outcome = untar_outcome(replacing_archive(name, kind), dest)
    assert not isinstance(outcome, BaseException), outcome
    st = os.lstat(dest / name)
    assert tree.file_type(st) == kind
    assert st.st_uid == 4321
    victim.assert_untouched()


def test_planted_hardlink_to_victim_is_replaced(dest: Path, victim: Victim) -> None:
    """The destination holds a hardlink to a file outside (the jail cannot stop that);
    an entry of that name must replace the link (O_EXCL), never write into the inode,
    nor chmod/chown/xattr it."""
    os.link(victim.hello, dest / "planted")
    os.link(victim.secret, dest / "planted-secret")
    victim.snap()
    archive = (
        B()
        .pax({"SCHILY.xattr.user.victim": "pwned"})
        .file("planted", PWN, mode=0o4777, uid=4321, gid=4321)
        .dir("planted-secret", mode=0o777)
        .build()
    )
    outcome = untar_outcome(archive, dest)
    assert not isinstance(outcome, BaseException), outcome
    assert (dest / "planted").read_bytes() == PWN
    assert (dest / "planted-secret").is_dir()
    after = victim.snapshot()
    # Unlinking the planted names lowers the victim inodes' link counts (and so their
    # ctime): that is the only change allowed.
    touched = {"victim/hello", "victim/hello-hardlink", "victim/secret"}
    assert victim.before is not None
    tree.assert_same(
        victim.before,
        after,
        "the victim inode behind a planted hardlink changed",
        ignore=lambda path, key: path in touched and key in ("nlink", "ctime_ns"),
    )
    assert victim.hello.read_bytes() == HELLO
    assert victim.secret.read_bytes() == SECRET
    assert os.getxattr(victim.hello, "user.victim") == b"original"


def test_planted_hardlink_then_archive_hardlink(dest: Path, victim: Victim) -> None:
    """An archive hardlink to a planted link, then a regular entry over that name."""
    os.link(victim.hello, dest / "planted")
    victim.snap()
    archive = B().hardlink("second", "planted").file("second", PWN).file("planted", PWN).build()
    outcome = untar_outcome(archive, dest)
    assert not isinstance(outcome, BaseException), outcome
    assert victim.hello.read_bytes() == HELLO
    assert (dest / "second").read_bytes() == PWN


# -- symlink chains longer than PATH_MAX (CVE-2025-4517, CVE-2025-4138) ---------------


def test_path_max_symlink_chain_escape(dest: Path, victim: Victim) -> None:
    # escape -> <linkpath>/../victim: lexically "a/.../p/victim" (inside); really the
    # victim (without a jail: lll is the root, ".." its parent).
    archive = path_max_chain("../victim", "escape/pwned", pre_dirs=("victim",))
    outcome = untar_outcome(archive, dest)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, (chrootarchive.ArchiveError, chrootarchive.DestinationError)), (
            outcome
        )
    else:
        assert (dest / "victim" / "pwned").read_bytes() == PWN
    victim.assert_untouched()
    victim.assert_not_read_into(dest)


def test_path_max_symlink_chain_absolute(dest: Path, victim: Victim) -> None:
    V = victim.root
    archive = path_max_chain(f"../../../../..{V}", "escape/hello")
    outcome = untar_outcome(archive, dest)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, (chrootarchive.ArchiveError, chrootarchive.DestinationError)), (
            outcome
        )
    victim.assert_untouched()


def test_path_max_hardlink_through_chain(dest: Path, victim: Victim) -> None:
    comp = "e" * 247
    steps = "abcdefghijklmnop"
    b = B()
    path = ""
    for letter in steps:
        b.dir(os.path.join(path, comp))
        b.symlink(os.path.join(path, letter), comp)
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    b.symlink(linkpath, "../" * len(steps))
    b.hardlink("stolen", os.path.join(linkpath, "../victim/secret"))
    outcome = untar_outcome(b.build(), dest)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, chrootarchive.ArchiveError), outcome
    victim.assert_untouched()
    victim.assert_not_read_into(dest)


def test_deep_two_hop_chain_past_path_max(dest: Path, victim: Victim) -> None:
    """17 levels of ``L/up -> ..`` hops: the symlink's name is longer than PATH_MAX,
    lexically inside, really at the root; its target leaves the root without a jail."""
    long = "L" * 247
    b = B().dir("victim").dir(long).symlink(f"{long}/up", "..")
    name = "/".join([long, "up"] * 17) + "/esc"
    b.symlink(name, "../victim")
    b.file("esc/pwned", PWN)
    outcome = untar_outcome(b.build(), dest)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, (chrootarchive.ArchiveError, chrootarchive.DestinationError)), (
            outcome
        )
    victim.assert_untouched()


# -- truncation, as Go's archive/tar tests it (TestReadTruncation) -------------------

CORPUS = corpus_dir()


def _truncation_vectors() -> list[tuple[str, bytes, bool]]:
    data1 = (CORPUS / "gnu.tar").read_bytes()
    data2 = (CORPUS / "ustar-file-reg.tar").read_bytes() + b"\x00" * (10 * 512)
    pax = (CORPUS / "pax-path-hdr.tar").read_bytes()
    sparse = (CORPUS / "sparse-formats.tar").read_bytes()
    trash = b"garbage " * 64
    # (id, input, ok): ok means Go ends with io.EOF (a complete archive), or, for one, that
    # GNU tar and bsdtar read it without an error (docs/security.md). An input that ends
    # inside the padding after an entry's data is Go's io.EOF but GNU tar's, bsdtar's
    # and tarfile's "unexpected EOF": not ok (issue 16, twentieth round).
    return [
        ("empty", b"", False),  # not a tar archive: empty input (as GNU tar says)
        ("d1[:511]", data1[:511], False),
        ("d1[:512]", data1[:512], False),
        ("d1[:1024]", data1[:1024], True),
        ("d1[:1536]", data1[:1536], False),
        ("d1[:2048]", data1[:2048], True),
        ("d1", data1, True),
        ("d1[:2048]+d2[:1536]", data1[:2048] + data2[:1536], True),
        ("d2[:511]", data2[:511], False),
        ("d2[:512]", data2[:512], False),
        ("d2[:1195]", data2[:1195], False),
        ("d2[:1196]", data2[:1196], False),
        ("d2[:1200]", data2[:1200], False),
        ("d2[:1535]", data2[:1535], False),
        ("d2[:1536]", data2[:1536], True),
        ("d2[:1536]+trash[:1]", data2[:1536] + trash[:1], False),
        ("d2[:1536]+trash[:511]", data2[:1536] + trash[:511], False),
        ("d2[:1536]+trash", data2[:1536] + trash, False),
        ("d2[:2048]", data2[:2048], True),
        ("d2[:2048]+trash[:1]", data2[:2048] + trash[:1], False),
        ("d2[:2048]+trash[:511]", data2[:2048] + trash[:511], False),
        # A lone zero block, then data: Go errs; GNU tar, bsdtar and we stop there.
        ("d2[:2048]+trash", data2[:2048] + trash, True),
        ("d2[:2560]", data2[:2560], True),
        ("d2[:2560]+trash[:1]", data2[:2560] + trash[:1], True),
        ("d2[:2560]+trash[:511]", data2[:2560] + trash[:511], True),
        ("d2[:2560]+trash", data2[:2560] + trash, True),
        ("d2[:3072]", data2[:3072], True),
        ("pax", pax, True),
        ("pax+trash[:1]", pax + trash[:1], False),
        ("pax+trash[:511]", pax + trash[:511], False),
        ("sparse[:511]", sparse[:511], False),
        ("sparse[:512]", sparse[:512], False),
        ("sparse[:3584]", sparse[:3584], True),
        ("sparse[:9200]", sparse[:9200], False),
        ("sparse[:9216]", sparse[:9216], True),
        ("sparse[:9728]", sparse[:9728], False),
        ("sparse[:10240]", sparse[:10240], True),
        ("sparse[:11264]", sparse[:11264], False),
        ("sparse", sparse, True),
        ("sparse+trash", sparse + trash, True),
    ]


@pytest.mark.parametrize(
    ("data", "ok"),
    [pytest.param(d, ok, id=i) for i, d, ok in _truncation_vectors()],
)
def test_truncation(data: bytes, ok: bool, dest: Path, victim: Victim) -> None:
    outcome = untar_outcome(data, dest)
    if ok:
        assert not isinstance(outcome, BaseException), f"expected success, got {outcome!r}"
    else:
        assert isinstance(outcome, chrootarchive.MalformedArchiveError), (
            f"expected MalformedArchiveError, got {outcome!r}"
        )
    victim.assert_untouched()


# -- compression: truncated and corrupt streams -------------------------------------


def _payload_archive() -> bytes:
    """Incompressible and compressible data; seeded, so each damage hits the same bytes."""
    rng = random.Random(1501)
    b = B()
    for i in range(20):
        b.file(f"f{i}", rng.randbytes(4096) + b"text" * 1000)
    return b.build()


# Bytes up to the first block of each format: what follows is the encoded data.
_FORMAT_HEADER = {"gzip": 10, "bzip2": 4, "xz": 12, "zstd": 4}


@pytest.mark.parametrize("method", tb.COMPRESSIONS)
@pytest.mark.parametrize(
    "damage", ["half", "trailer", "corrupt-middle", "garbage-body", "header-only"]
)
def test_damaged_compression(
    method: str, damage: str, dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    tar = _payload_archive()
    comp = tb.compress(tar, method)
    if damage == "half":
        data = comp[: len(comp) // 2]
    elif damage == "trailer":
        # The tar stream inside is complete; only the end of the compressed stream
        # (checksum / end marker) is missing: still a compression error.
        data = comp[:-3]
    elif damage == "corrupt-middle":
        corrupt = bytearray(comp)
        mid = len(corrupt) // 2
        for i in range(mid, mid + 64):
            corrupt[i] ^= 0x5A
        data = bytes(corrupt)
    elif damage == "garbage-body":
        # A valid format header, then bytes no decoder accepts (for deflate: a block of
        # the reserved type), so each library raises its own "corrupt data" error.
        data = comp[: _FORMAT_HEADER[method]] + b"\xff" * 4096
    else:
        data = comp[:6]
    path = write_archive(data)
    outcome = untar_outcome(path, dest)
    assert isinstance(outcome, chrootarchive.MalformedArchiveError), (
        f"expected a malformed-archive error for {method}/{damage}, got {outcome!r}"
    )
    if damage == "trailer":
        assert isinstance(outcome, chrootarchive.CompressionError), (
            f"a truncated {method} stream must be a CompressionError, got {outcome!r}"
        )
    victim.assert_untouched()


@pytest.mark.parametrize("method", tb.COMPRESSIONS)
def test_damaged_compression_cli(
    method: str, dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    comp = tb.compress(_payload_archive(), method)
    result = run_cli("untar", write_archive(comp[: len(comp) // 2]), dest)
    assert_one_line_error(result, rc=1)
    victim.assert_untouched()


@pytest.mark.parametrize("method", tb.COMPRESSIONS)
def test_compressed_non_tar(
    method: str, dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    data = tb.compress(b"just some text, definitely not a tar archive\n" * 30, method)
    result = run_cli("untar", write_archive(data), dest)
    assert_one_line_error(result, rc=1)
    victim.assert_untouched()


# -- not a tar archive ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"hello\n", id="tiny-text"),
        pytest.param(b"this is a text file, not an archive\n" * 60, id="text-2k"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 600, id="png"),
        pytest.param(b"PK\x03\x04" + b"\x00" * 1020, id="zip"),
        pytest.param(os.urandom(4096), id="random"),
    ],
)
def test_not_a_tar_archive(
    data: bytes, dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    path = write_archive(data)
    result = run_cli("untar", path, dest)
    line = assert_one_line_error(result, rc=1)
    if not data.startswith(b"\x1f\x8b"):
        low = line.lower()
        assert "not a tar archive" in low or "compression" in low, line
    outcome = untar_outcome(data, dest)
    assert isinstance(outcome, chrootarchive.MalformedArchiveError), outcome
    assert list(dest.iterdir()) == []
    victim.assert_untouched()


def test_text_file_says_not_a_tar_archive(
    dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    result = run_cli("untar", write_archive(b"Kilts\n"), dest)
    assert_one_line_error(result, rc=1, mentions=("not a tar archive",))


# -- Docker's remaining checklist ------------------------------------------------------


def test_empty_archive(dest: Path, victim: Victim) -> None:
    with pytest.raises(chrootarchive.MalformedArchiveError, match="empty input"):
        chrootarchive.untar(io.BytesIO(b""), dest)
    result = chrootarchive.untar(io.BytesIO(b"\x00" * 1024), dest)
    assert result.entries == 0
    assert list(dest.iterdir()) == []
    victim.assert_untouched()


class SlowZeros(io.RawIOBase):
    """10 KB of zeros arriving 512 bytes at a time, slowly (Docker's slow reader test)."""

    def __init__(self, total: int = 10 * 1024, chunk: int = 512, delay: float = 0.02) -> None:
        self.left, self.chunk, self.delay = total, chunk, delay

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer) -> int:
        view = memoryview(buf)
        if self.left <= 0:
            return 0
        time.sleep(self.delay)
        n = min(self.chunk, self.left, len(view))
        view[:n] = b"\x00" * n
        self.left -= n
        return n


def test_slow_zeros(dest: Path, victim: Victim) -> None:
    # A raw stream, not a BinaryIO: untar reads any object with read().
    result = chrootarchive.untar(SlowZeros(), dest)
    assert result.entries == 0
    victim.assert_untouched()


def test_slow_zeros_on_stdin(dest: Path, victim: Victim) -> None:
    """The same through a pipe: the writer trickles 10 KB of zeros into the CLI."""
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "chrootarchive", "untar", "-", str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    for _ in range(20):
        proc.stdin.write(b"\x00" * 512)
        proc.stdin.flush()
        time.sleep(0.02)
    _out, err = proc.communicate(timeout=60)  # closes stdin
    assert proc.returncode == 0, err
    victim.assert_untouched()


def test_untar_with_root_malicious_symlinks(tmp_path: Path) -> None:
    """Docker's TestUntarWithMaliciousSymlinks: a symlink in the container's root
    pointing at "/" must resolve to the container's root, not the host's."""
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    host_file = tmp_path / "hostfile"
    host_file.write_bytes(b"I am a host file\n")
    victim = Victim(tmp_path, dest_name="root").create()
    os.symlink("/", root / "dir" / "rootsymlink")
    os.symlink(str(tmp_path), root / "dir" / "abs-tmp")
    archive = (
        B()
        .file("rootsymlink/hostfile", b"pwn3d\n")
        .file("abs-tmp/hostfile", b"pwn3d\n")
        .file(f"rootsymlink/{rel(tmp_path)}/hostfile", b"pwn3d\n")
        .build()
    )
    try:
        chrootarchive.untar_with_root(io.BytesIO(archive), "dir", root)
    except (chrootarchive.ArchiveError, chrootarchive.DestinationError):
        pass
    assert host_file.read_bytes() == b"I am a host file\n"
    victim.assert_untouched()


def test_untar_with_root_dest_not_created_outside(tmp_path: Path) -> None:
    """CVE-2021-41089: dest is created inside the jail, never by following a symlink
    of the root from outside."""
    root = tmp_path / "root"
    root.mkdir()
    victim = Victim(tmp_path, dest_name="root").create()
    os.symlink(str(victim.root), root / "a")
    archive = B().file("f", PWN).build()
    try:
        chrootarchive.untar_with_root(io.BytesIO(archive), "a/newdir", root)
    except (chrootarchive.ArchiveError, chrootarchive.DestinationError):
        pass
    else:
        assert (root / rel(victim.root) / "newdir" / "f").read_bytes() == PWN
    victim.assert_untouched()


# -- code execution: modules, NSS, helper binaries planted for the worker ---------------

MARKER = "CHROOTARCHIVE-MARKER"
SELFTEST_ENV = "CHROOTARCHIVE_PAYLOAD_SELFTEST"

STDLIB_PACKAGES = (
    "asyncio", "collections", "concurrent", "ctypes", "curses", "dbm", "distutils", "email",
    "encodings", "ensurepip", "html", "http", "importlib", "json", "lib2to3", "logging",
    "multiprocessing", "pydoc_data", "re", "sqlite3", "tomllib", "unittest", "urllib",
    "venv", "wsgiref", "xml", "xmlrpc", "zoneinfo", "chrootarchive", "zstandard", "isal",
    "tqdm",
)  # fmt: skip


def _c_writes(targets: list[str]) -> str:
    return "\n".join(
        f'  fd = open("{t}", O_WRONLY | O_CREAT | O_APPEND, 0644);'
        f' if (fd >= 0) {{ write(fd, "x\\n", 2); close(fd); }}'
        for t in targets
    )


@pytest.fixture(scope="session")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A shared library whose constructor, and a static program that, write a marker at
    ``/CHROOTARCHIVE-MARKER-*`` (the jail's root if run confined), ``/tmp/...`` and in a
    host directory. Built with gcc, and checked to really write the marker."""
    import shutil
    import subprocess

    base = tmp_path_factory.mktemp("payloads")
    markers = tmp_path_factory.mktemp("markers")
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "gcc is needed to build the code-execution payloads"

    def body(kind: str) -> str:
        everywhere = [f"/{MARKER}-{kind}", f"/tmp/{MARKER}-{kind}", f"{markers}/{kind}"]
        return (
            f'  int fd;\n  if (getenv("{SELFTEST_ENV}")) {{\n'
            + _c_writes([f"{markers}/selftest-{kind}"])
            + "\n  } else {\n"
            + _c_writes(everywhere)
            + "\n  }\n"
        )

    head = "#include <fcntl.h>\n#include <stdlib.h>\n#include <unistd.h>\n"
    (base / "payload.c").write_text(
        head
        + "__attribute__((constructor)) static void pwn(void) {\n"
        + body("so")
        + "}\n"
        # Symbols an NSS, gconv or Python loader would look up, should it get that far.
        + "int _nss_evil_getpwnam_r(void) { return 0; }\n"
        + "int _nss_files_getpwnam_r(void) { return 0; }\n"
        + "int gconv(void) { return 0; }\nint gconv_init(void) { return 0; }\n"
    )
    so = base / "payload.so"
    subprocess.run([cc, "-shared", "-fPIC", "-s", "-o", so, base / "payload.c"], check=True)
    (base / "main.c").write_text(head + "int main(void) {\n" + body("bin") + "  return 0;\n}\n")
    exe = base / "payload-bin"
    subprocess.run([cc, "-static", "-O1", "-s", "-o", exe, base / "main.c"], check=True)
    # Self-test (writing only into the markers directory): the payloads do run.
    env = {**os.environ, SELFTEST_ENV: "1"}
    subprocess.run([exe], check=True, env=env)
    subprocess.run(
        [sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(so)!r})"], check=True, env=env
    )
    assert sorted(p.name for p in markers.iterdir()) == ["selftest-bin", "selftest-so"]
    for m in markers.iterdir():
        m.unlink()
    return {"so": so.read_bytes(), "bin": exe.read_bytes(), "markers": markers}


def _python_payload(markers: Path, tag: str) -> str:
    targets = [f"/{MARKER}-py", f"/tmp/{MARKER}-py", f"{markers}/py-{tag}"]
    return (
        f"for _p in {targets!r}:\n"
        "    try:\n"
        f"        open(_p, 'a').write({tag!r} + '\\n')\n"
        "    except Exception:\n"
        "        pass\n"
    )


def _interpreter_dirs() -> list[str]:
    """Every directory the worker's interpreter could import from (given and real paths)."""
    import importlib.util
    import site
    import sysconfig

    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    dirs: set[str] = {p for p in sys.path if p}
    dirs.update(sysconfig.get_paths().values())
    dirs.update(site.getsitepackages())
    dirs.add(site.getusersitepackages())
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        dirs.add(os.path.join(prefix, "lib", ver))
        dirs.add(os.path.join(prefix, "lib", ver, "lib-dynload"))
    dirs.update(
        {
            "/usr/lib/python3/dist-packages",
            f"/usr/lib/{ver}",
            f"/usr/lib/{ver}/lib-dynload",
            f"/usr/local/lib/{ver}/dist-packages",
            f"/usr/local/lib/{ver}/site-packages",
        }
    )
    spec = importlib.util.find_spec("chrootarchive")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        dirs.add(os.path.dirname(loc))
    dirs.update({os.path.realpath(d) for d in list(dirs)})
    return sorted(d for d in dirs if d.startswith("/") and d != "/")


def _multiarch() -> str:
    import sysconfig

    return sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"


def planted_archive(payloads: dict[str, object]) -> bytes:
    """Python modules, extension modules, NSS configuration and libraries, libgcc_s,
    gconv modules, ld.so.preload and helper programs, at every path the worker could
    look for them once confined (host paths re-rooted inside the destination).
    Repeated binaries travel as hardlinks to their first copy."""
    import importlib.util
    import sysconfig

    markers, so, exe = payloads["markers"], payloads["so"], payloads["bin"]
    assert isinstance(markers, Path) and isinstance(so, bytes) and isinstance(exe, bytes)
    b = B().dir("tmp", mode=0o1777)
    seen: set[str] = set()
    first_copy: dict[bytes, str] = {}

    def add(name: str, data: bytes | str, mode: int = 0o644) -> None:
        name = name.lstrip("/")
        if name in seen:
            return
        seen.add(name)
        raw = data.encode() if isinstance(data, str) else data
        owner: tb.CommonFields = {"uid": 0, "gid": 0, "uname": "root", "gname": "root"}
        if len(raw) > 4096 and raw in first_copy:
            b.hardlink(name, first_copy[raw], **owner)
            return
        if len(raw) > 4096:
            first_copy[raw] = name
        b.file(name, raw, mode=mode, **owner)

    ext_suffixes = [*sysconfig.get_config_var("EXT_SUFFIX").split(), ".abi3.so", ".so"]
    extension_names = (
        "_json", "_ssl", "_hashlib", "_bz2", "_lzma", "zlib", "_posixsubprocess", "select",
        "_socket", "_struct", "math", "_datetime", "_decimal", "_ctypes", "fcntl", "termios",
        "_pickle", "array", "binascii", "_random", "_sha256", "_blake2", "_queue", "_heapq",
        "_bisect", "unicodedata", "mmap", "grp", "pwd", "resource", "_contextvars", "_csv",
        "_zoneinfo", "_asyncio", "_multiprocessing", "_uuid", "_opcode",
    )  # fmt: skip
    encodings = (
        "idna", "punycode", "utf_8", "ascii", "latin_1", "cp437", "utf_16", "utf_32",
        "unicode_escape", "raw_unicode_escape", "aliases", "charmap", "hex_codec",
        "base64_codec", "utf_8_sig", "cp1252", "iso8859_1", "rot_13", "zlib_codec",
        "bz2_codec", "uu_codec", "quopri_codec", "undefined",
    )  # fmt: skip
    modules = sorted(set(sys.stdlib_module_names) | set(STDLIB_PACKAGES))
    pth = "import sys; exec(" + repr(_python_payload(markers, "pth")) + ")\n"
    for d in _interpreter_dirs():
        for mod in modules:
            add(f"{d}/{mod}.py", _python_payload(markers, mod))
        for pkg in STDLIB_PACKAGES:
            add(f"{d}/{pkg}/__init__.py", _python_payload(markers, pkg + "-pkg"))
        for enc in encodings:
            add(f"{d}/encodings/{enc}.py", _python_payload(markers, "enc-" + enc))
        for name in ("sitecustomize", "usercustomize"):
            add(f"{d}/{name}.py", _python_payload(markers, name))
        add(f"{d}/zz-evil.pth", pth)
        if d.endswith(("lib-dynload", "site-packages", "dist-packages")):
            for ext in extension_names:
                for suffix in ext_suffixes:
                    add(f"{d}/{ext}{suffix}", so, 0o755)
    # The package's own modules, at their given and real locations.
    spec = importlib.util.find_spec("chrootarchive")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        for dirpath, _dirs, files in os.walk(loc):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    add(path, _python_payload(markers, "pkg-" + f))
                    add(os.path.realpath(path), _python_payload(markers, "pkg-" + f))
    # Modules in the jail's root itself ('' or the working directory on sys.path).
    for mod in (
        "os", "json", "sitecustomize", "usercustomize", "encodings/__init__", "io", "codecs",
        "abc", "site", "tarfile", "shutil", "tempfile", "traceback", "linecache", "locale",
        "fnmatch", "re/__init__", "errno", "stat", "posixpath", "signal", "subprocess",
        "selectors", "threading", "struct", "copy", "enum", "pickle", "zlib", "gzip", "lzma",
        "bz2", "zstandard/__init__", "isal/__init__",
    ):  # fmt: skip
        add(f"{mod}.py", _python_payload(markers, "root-" + mod))
    # NSS, libgcc_s (pthread_exit/cancel loads it), gconv, ld.so.preload.
    arch = _multiarch()
    libdirs = (f"lib/{arch}", f"usr/lib/{arch}", "lib", "usr/lib", "lib64", "usr/lib64",
               "usr/local/lib")  # fmt: skip
    for libdir in libdirs:
        for lib in (
            "libnss_files.so.2", "libnss_compat.so.2", "libnss_evil.so.2",
            "libnss_systemd.so.2", "libnss_dns.so.2", "libnss_db.so.2", "libnss_sss.so.2",
            "libgcc_s.so.1", "libresolv.so.2", "libcrypt.so.1",
        ):  # fmt: skip
            add(f"{libdir}/{lib}", so, 0o755)
        add(
            f"{libdir}/gconv/gconv-modules",
            "module INTERNAL EVIL// EVIL 1\nmodule EVIL// INTERNAL EVIL 1\n",
        )
        add(f"{libdir}/gconv/EVIL.so", so, 0o755)
    add(
        "etc/nsswitch.conf",
        "passwd: evil files\ngroup: evil files\nshadow: evil files\n"
        "hosts: evil files dns\nnetworks: evil\nservices: evil\nprotocols: evil\n",
    )
    add("etc/ld.so.preload", f"/lib/{arch}/libnss_evil.so.2\n")
    add("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nevil:x:0:0::/:/bin/sh\n")
    add("etc/group", "root:x:0:\nevil:x:0:\n")
    # Helper programs: decompressors (CVE-2014-9357), shells, ldconfig (ctypes.util
    # runs it), compilers, and the interpreter itself at its host path.
    programs = (
        "sh", "bash", "dash", "env", "xz", "unxz", "gzip", "gunzip", "pigz", "unpigz",
        "zstd", "unzstd", "bzip2", "bunzip2", "lbzip2", "tar", "gcc", "cc", "ld", "objdump",
        "ldconfig", "python3", "python", "id", "getent", "ldd", "file", "mount", "umount",
    )  # fmt: skip
    for bindir in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"):
        for prog in programs:
            add(f"{bindir}/{prog}", exe, 0o755)
    for path in sorted({sys.executable, os.path.realpath(sys.executable)}):
        add(path, exe, 0o755)
    return b.build()


def _assert_no_marker(dest: Path, markers: Path) -> None:
    found = sorted(p.name for p in markers.iterdir())
    assert not found, f"a planted payload ran outside the jail: {found}"
    for kind in ("py", "so", "bin"):
        for t in (f"/{MARKER}-{kind}", f"/tmp/{MARKER}-{kind}"):
            assert not os.path.exists(t), f"a planted payload ran on the host ({t})"
    inside = []
    for dirpath, _dirs, files in os.walk(dest):
        inside += [os.path.join(dirpath, f) for f in files if f.startswith(MARKER)]
    assert not inside, f"a planted payload ran inside the jail: {inside}"


def test_code_execution_payloads_never_run(
    payloads: dict[str, object], dest: Path, victim: Victim, write_archive: Callable[..., Path]
) -> None:
    """Plant modules, NSS and helper programs, then unpack into that destination
    through every path of the worker (each compression, owners given by name only,
    every option, error paths, the command line): no payload ever runs, and owners
    stay numeric."""
    markers = payloads["markers"]
    assert isinstance(markers, Path)
    result = chrootarchive.untar(write_archive(planted_archive(payloads)), dest)
    assert result.entries > 1000
    _assert_no_marker(dest, markers)
    owners = (
        B()
        .file("owned-by-name", b"x", uid=4242, gid=4343, uname="root", gname="root")
        .file("owned-by-unknown-name", b"y", uid=0, gid=0, uname="evil", gname="evil")
        .file("owned-huge", b"z", uid=2_000_000, gid=2_000_001, uname="nobody", gname="nogroup")
        .dir("dir-by-name", uid=4242, gid=4343, uname="root", gname="root")
        .build()
    )
    for method in (*tb.COMPRESSIONS, "none"):
        chrootarchive.untar(write_archive(tb.compress(owners, method)), dest)
        _assert_no_marker(dest, markers)
    assert os.lstat(dest / "owned-by-name")[4:6] == (4242, 4343), "owner names were looked up"
    assert os.lstat(dest / "owned-by-unknown-name")[4:6] == (0, 0)
    assert os.lstat(dest / "owned-huge")[4:6] == (2_000_000, 2_000_001)
    assert os.lstat(dest / "dir-by-name")[4:6] == (4242, 4343)
    big_map = (chrootarchive.IDMap(0, 100000, 5_000_000),)
    for opt in (
        chrootarchive.UnpackOptions(chown=(1, 2)),
        chrootarchive.UnpackOptions(uid_maps=big_map, gid_maps=big_map),
        chrootarchive.UnpackOptions(no_lchown=True, excludes=("owned-*",)),
        chrootarchive.UnpackOptions(confine="chroot"),
    ):
        chrootarchive.untar(io.BytesIO(owners), dest, opt)
        _assert_no_marker(dest, markers)
    for bad in (
        B().file("../x", b"").build(),
        b"not a tar" * 100,
        tb.compress(owners, "gzip")[:-20],
        tb.member("t", b"x" * 5000)[:2000],
        B().pax(b"99 path=x\n").file("f").build(),
    ):
        with pytest.raises(chrootarchive.ArchiveError):
            chrootarchive.untar(io.BytesIO(bad), dest)
        _assert_no_marker(dest, markers)
    command_lines: tuple[list[str | Path], ...] = (
        ["untar", write_archive(owners), dest],
        ["untar", "--debug", write_archive(b"not a tar" * 100), dest],
        ["untar", "--json", "--confine", "chroot", write_archive(owners), dest],
        ["untar", "--debug", write_archive(B().file("../x", b"").build()), dest],
    )
    for args in command_lines:
        run_cli(*args)
        _assert_no_marker(dest, markers)
    victim.assert_untouched()


def test_worker_survives_blocking_input(dest: Path, victim: Victim) -> None:
    """A source that delivers a valid archive from another thread, slowly: no hang,
    no deadlock between the decompressing parent and the worker."""
    r, w = os.pipe()
    archive = tb.compress(B().file("a", b"a" * 100_000).file("b", b"b").build(), "gzip")

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(archive), 100):
                f.write(archive[i : i + 100])
                f.flush()
                time.sleep(0.001)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as src:
        result = chrootarchive.untar(src, dest)
    t.join()
    assert result.entries == 2
    assert (dest / "a").read_bytes() == b"a" * 100_000
    victim.assert_untouched()


def test_symlink_targets_that_climb_are_refused_by_the_rule_the_fast_check_keeps() -> None:
    """``check_symlink`` skips its path arithmetic for a target with no ``..`` in it
    (most targets): on every combination of components it must decide as the full
    rule does (a relative target that climbs above the root is a breakout)."""
    import posixpath

    from chrootarchive.engine import names
    from chrootarchive.errors import BreakoutError

    def climbs(name: str, target: str) -> bool:
        if target.startswith("/"):
            return False
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        return joined == ".." or joined.startswith("../")

    rng = random.Random(16)
    parts = ["..", ".", "a", "...", "..b", "b..", ""]
    cases = [("a/link", "../../x"), ("link", ".."), ("a/link", "b/../../../x"),
             ("a/link", "..."), ("a/link", "x/.."), ("a/b/link", "/etc/../.."),
             ("link", "lib/x.so.1")]
    cases += [("/".join(rng.choice(["a", "b", "c"]) for _ in range(rng.randrange(1, 4))),
               ("/" if rng.random() < 0.1 else "")
               + "/".join(rng.choice(parts) for _ in range(rng.randrange(1, 6))))
              for _ in range(3000)]
    refused = 0
    for name, target in cases:
        if climbs(name, target):
            refused += 1
            with pytest.raises(BreakoutError):
                names.check_symlink(name, target, name)
        else:
            names.check_symlink(name, target, name)
    assert 100 < refused < len(cases) - 100  # both answers are well covered
