"""Race safety: a concurrent attacker inside the destination must not redirect a write.

Issue 8, "Tests that prove it". While ``chrootarchive.untar`` unpacks an archive of
thousands of entries, an attacker process (``tests/helpers/attacker.py``, started with
``subprocess``) swaps paths as fast as it can:

(a) a directory inside the destination for a symlink to a victim tree outside, both
    atomically with ``renameat2(RENAME_EXCHANGE)`` (``dir-exchange``) and with a plain
    rename + symlink loop (``dir-rename``);
(b) the destination's parent for a symlink to a victim tree that holds its own copy of
    the destination's path (``parent-swap``): nothing may land in ``victimparent/dest``;
(c) a name the archive writes hundreds of times (a regular file, and also a symlink and
    a setuid FIFO: their owner, mode and times are set after creation) for a symlink
    (``file-symlink``) or a hard link (``file-hardlink``) to a victim file;
(d) the CPython CVE-2024-12718 class (``dir-meta``): directories whose mode (0777) and
    old mtime are applied at the end are swapped for symlinks to a victim directory,
    either as the last component (``meta``) or as a parent (``top`` of ``top/meta``).

Every scenario runs as root (the extraction's own user) and as an unprivileged user
(``setpriv --reuid 65534``) with write access to the destination. Each scenario runs
several rounds; a round *counts* when the attacker made at least one swap between the
moment the extraction created its trigger path and the moment ``untar`` returned (read
from a shared counter, so swaps after the return are not counted). After every round,
counted or not, the victim trees are compared with a snapshot taken before: content,
type, mode, uid, gid, size, mtime_ns, ctime_ns (moves on chmod/chown/utime/write),
nlink and xattrs, whether the extraction succeeded or was rejected. A rejection must be
a :class:`chrootarchive.ChrootArchiveError` (an archive or destination error, not an
internal one), never a bare ``OSError``.

Variants alternate between rounds: absolute and relative symlink targets; with and
without a *mirror* of the victim's path inside the destination (with it, a swapped-in
symlink resolves inside the jail and the extraction goes on writing there; without it
the extraction usually stops with an error); swap-and-hold and swap loops.

The default mechanism (``auto``, so ``pivot`` as root) gets the full matrix (three
rounds; two where the machine is so loaded that they took more than BUDGET seconds);
``chroot``, ``userns`` and ``openat2`` get one round of every scenario against the
unprivileged attacker, with a 2,000-file archive; one round goes through the command
line to check that a race-induced failure is a one-line error without a traceback.
While no round of a scenario has counted, up to EXTRA_ROUNDS more run; if none counts,
the test fails, since it proved nothing.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import chrootarchive
from chrootarchive.operations.untar import _HELPER_MIN_INPUT
from helpers import tree
from helpers.cli import CLI, CLIResult, assert_one_line_error
from helpers.leaks import LeakCheck

pytestmark = pytest.mark.kernel

ATTACKER = Path(__file__).resolve().parent / "helpers" / "attacker.py"
NOBODY = 65534
SETPRIV = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--"]
USERS = ("root", "nobody")

N_DIRS = 50
N_FILES = 5000
SMALL_N_FILES = 2000
HOT_EVERY = 10  # one "hot" regular file after every 10th file: 500 in all
LINK_EVERY = 25  # "hotlink" symlink and "hotfifo" FIFO: 200 each
OLD = 1_000_000_000  # victim timestamps
ANCIENT = 100_000_000  # mtime of the archive's "meta" directories
HOT_MTIME = 1_234_567_890
HOT_OWNER = 1234
WINDOW = 0.25  # seconds of swapping per round, from the trigger on
ROUNDS = 3  # rounds per scenario and attacker in the main matrix...
MIN_ROUNDS = 2  # ...of which these always run; the others only within BUDGET
BUDGET = 4.0  # seconds per scenario and attacker (a loaded machine is 10x slower)
EXTRA_ROUNDS = 6  # more rounds, only while none has counted yet (a fast extraction can
#                   end before the attacker's first swap several times in a row)

SCENARIOS = ("dir-exchange", "dir-rename", "parent-swap", "file-symlink", "file-hardlink",
             "dir-meta")


# -- the archive ---------------------------------------------------------------------


def _add(tf: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
         *, mode: int = 0o644, owner: int = 0, mtime: int = 1_600_000_000,
         linkname: str = "", pax: dict[str, str] | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.pax_headers = dict(pax or {})
    info.type = kind
    info.mode = mode
    info.uid = info.gid = owner
    info.mtime = mtime
    info.linkname = linkname
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def build_race_archive(n_files: int = N_FILES) -> bytes:
    """Directories first (``d0..d49``, ``meta``, ``top``, ``top/meta``), then ``n_files``
    small files spread over ``d*`` with ``hot`` (regular, every 10th file: 500 times for
    5,000 files), ``hotlink`` (symlink) and ``hotfifo`` (setuid FIFO, 200 times each)
    interleaved throughout. The ``hot*``
    entries belong to 1234:1234 and have their own mtime, and ``hot`` has an xattr, so
    that metadata passed to the wrong inode shows."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(N_DIRS):
            _add(tf, f"d{d}", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "meta", tarfile.DIRTYPE, mode=0o777, mtime=ANCIENT)
        _add(tf, "top", tarfile.DIRTYPE, mode=0o755, mtime=ANCIENT)
        _add(tf, "top/meta", tarfile.DIRTYPE, mode=0o777, mtime=ANCIENT)
        hot = 0
        for i in range(n_files):
            _add(tf, f"d{i % N_DIRS}/f{i}", data=f"archive file {i}\n".encode())
            if i % HOT_EVERY == 0:
                hot += 1
                _add(tf, "hot", data=f"archive hot {hot}\n".encode(), mode=0o640,
                     owner=HOT_OWNER, mtime=HOT_MTIME,
                     pax={"SCHILY.xattr.user.race": "from the archive"})
            if i % LINK_EVERY == 0:
                _add(tf, "hotlink", tarfile.SYMTYPE, linkname="hot", mode=0o777,
                     owner=HOT_OWNER, mtime=HOT_MTIME)
            if i % LINK_EVERY == LINK_EVERY // 2:
                _add(tf, "hotfifo", tarfile.FIFOTYPE, mode=0o4755, owner=HOT_OWNER,
                     mtime=HOT_MTIME)
    return buf.getvalue()


@pytest.fixture(scope="module")
def race_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("race-archive") / "race.tar"
    path.write_bytes(build_race_archive())
    return path


@pytest.fixture(scope="module")
def small_race_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 files: for the one-round matrix of the other mechanisms (``openat2`` runs
    in-process and is several times slower per entry)."""
    path = tmp_path_factory.mktemp("race-archive") / "race-small.tar"
    path.write_bytes(build_race_archive(SMALL_N_FILES))
    return path


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the unprivileged attacker can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="chrootarchive-races-", dir="/tmp"))
    path.chmod(0o755)
    leaks = LeakCheck(path)
    try:
        yield path
        leaks.assert_clean()
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- one round -----------------------------------------------------------------------


def fingerprint(path: Path) -> dict[str, Any]:
    """What a bystander must keep (ctime included: it moves on chmod and chown)."""
    st = os.lstat(path)
    out = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
           "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "nlink": st.st_nlink,
           "xattrs": sorted(os.listxattr(path, follow_symlinks=False))}
    if path.is_file() and not path.is_symlink():
        out["content"] = path.read_bytes()
    return out


def _old_times(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (OLD, OLD), follow_symlinks=False)
    os.utime(root, (OLD, OLD))


class Arena:
    """One round's world, under ``base/round-N`` (called X below)::

        X/parent/dest/      the destination (0777 for the unprivileged attacker)
        X/victim/           the victim tree: "hot" (root's) and "hot-nobody" (uid
                            65534's, for the unprivileged hard-link attacker), meta/
                            (0750), files named like archive files (f0, f97, ...),
                            a secret, a symlink, an xattr; all timestamps old
        X/victimparent/dest the victim copy of the destination's path, for (b)
        X/hold/             where the root attacker parks directories it moved away
        X/counter           the attacker's swap counter and stop flag (mmap'ed)

    With ``mirror``, the victim's paths also exist *inside* the destination, as the jail
    (or ``RESOLVE_IN_ROOT``) sees them: ``dest/<absolute path of X/victim>/`` and
    ``dest/victim/`` (where ``../../victim`` leads inside the jail). A swapped-in
    symlink then resolves, the extraction goes on writing there (inside the root, as
    the semantics say), and their ``hot`` files and ``meta/`` directories are
    bystanders inside the destination that the archive never names: metadata aimed at
    the archive's own objects must not land on them through a swapped name either.
    """

    def __init__(self, base: Path, n: int, user: str, *, mirror: bool) -> None:
        self.x = base / f"round-{n}"
        self.user = user
        x = self.x
        x.mkdir()
        x.chmod(0o777 if user == "nobody" else 0o755)
        self.parent = x / "parent"
        self.dest = self.parent / "dest"
        self.dest.mkdir(parents=True)
        self.hold = x / "hold"
        self.hold.mkdir()
        if user == "nobody":
            self.dest.chmod(0o777)
            self.hold.chmod(0o777)
        self.victim = x / "victim"
        self.victimparent = x / "victimparent"
        self._make_victims()
        self.bystanders: list[Path] = []
        if mirror:
            self._make_mirror()
        self.bystanders_before = {p: fingerprint(p) for p in self.bystanders}
        self.counter = x / "counter"
        self.counter.write_bytes(bytes(16))
        self.counter.chmod(0o666)
        self.before = {root: self.snapshot(root) for root in self.victim_roots}

    @property
    def victim_roots(self) -> tuple[Path, ...]:
        return (self.victim, self.victimparent)

    def _make_victims(self) -> None:
        v = self.victim
        v.mkdir()
        (v / "hot").write_bytes(b"victim hot, owned by root\n")
        (v / "hot-nobody").write_bytes(b"victim hot, owned by nobody\n")
        os.chown(v / "hot-nobody", NOBODY, NOBODY)
        (v / "secret").write_bytes(b"victim secret\n")
        (v / "secret").chmod(0o600)
        (v / "meta").mkdir()
        (v / "meta").chmod(0o750)
        (v / "meta" / "keep").write_bytes(b"keep\n")
        (v / "sub" / "deeper").mkdir(parents=True)
        (v / "sub" / "deeper" / "file").write_bytes(b"deep\n")
        for i in range(0, N_FILES, 97):  # names the archive writes below d*/
            (v / f"f{i}").write_bytes(f"victim f{i}\n".encode())
        os.symlink("hot", v / "link-to-hot")
        os.setxattr(v / "hot", "user.victim", b"original")
        _old_times(v)

        vd = self.victimparent / "dest"
        (vd / "d0").mkdir(parents=True)
        for i in (0, 50, 100):
            (vd / "d0" / f"f{i}").write_bytes(f"victimparent f{i}\n".encode())
        (vd / "hot").write_bytes(b"victimparent hot\n")
        (vd / "meta").mkdir()
        (vd / "meta").chmod(0o700)
        _old_times(self.victimparent)

    def _make_mirror(self) -> None:
        for inside in (str(self.victim).lstrip("/"), "victim"):
            m = self.dest / inside
            (m / "meta").mkdir(parents=True)
            (m / "meta").chmod(0o750)
            (m / "hot").write_bytes(b"bystander inside the destination\n")
            for path in (m / "hot", m / "meta"):
                os.utime(path, (OLD, OLD))
                self.bystanders.append(path)

    def assert_bystanders_untouched(self, context: str) -> None:
        changed = {str(p.relative_to(self.dest)): (before, fingerprint(p))
                   for p, before in self.bystanders_before.items()
                   if fingerprint(p) != before}
        assert not changed, (
            f"objects inside the destination that the archive never names changed "
            f"through a swapped name ({context}): {changed}"
        )

    @staticmethod
    def snapshot(root: Path) -> tree.Snapshot:
        return tree.snapshot(root, ctime=True, nlink=True)

    def clean_attack_leftovers(self) -> None:
        """Remove the destination and what the attacker made: everything but victims.

        Done before the victims are compared, so that hard links to victim files that
        are left in the destination do not count in their link counts."""
        for entry in self.x.iterdir():
            if entry in self.victim_roots or entry == self.counter:
                continue
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink()
            else:
                shutil.rmtree(entry)

    def assert_victims_untouched(self, context: str,
                                 ignore: Callable[[str, str], bool] | None) -> None:
        for root in self.victim_roots:
            tree.assert_same(self.before[root], self.snapshot(root),
                             f"victim tree {root.name}/ changed ({context})", ignore=ignore)


@dataclass
class RoundResult:
    scenario: str
    user: str
    mechanism: str
    outcome: str  # "ok" or "ErrorClass: message"
    swaps_during: int  # swaps before untar returned
    swaps_total: int
    errors: int
    seconds: float

    @property
    def counted(self) -> bool:
        return self.swaps_during > 0


@dataclass
class Attack:
    """What the attacker does in one round, and what the victim check may waive."""

    config: dict[str, Any]
    ignore: Callable[[str, str], bool] | None = None
    #: dest-relative path that must exist after a successful extraction
    landed: str | None = None


def make_attack(scenario: str, arena: Arena, n: int) -> Attack:
    """The attacker's configuration for ``scenario`` in round ``n`` (variants alternate)."""
    dest = arena.dest
    rel_victim = os.path.relpath(arena.victim, dest)  # "../../victim"
    common = {"dest": str(dest), "window": WINDOW}
    dirs = [f"d{i}" for i in range(N_DIRS)]
    if scenario == "dir-exchange":
        return Attack({**common, "mode": "dir-exchange", "targets": dirs,
                       "link_to": [str(arena.victim), rel_victim],
                       "trigger": str(dest / dirs[-1])})
    if scenario == "dir-rename":
        hold = arena.hold if arena.user == "root" else dest  # nobody cannot move d* out
        return Attack({**common, "mode": "dir-rename", "targets": dirs,
                       "link_to": [rel_victim, str(arena.victim)], "hold": str(hold),
                       "trigger": str(dest / dirs[-1])})
    if scenario == "parent-swap":
        link = str(arena.victimparent) if n % 2 == 0 else arena.victimparent.name
        return Attack({"mode": "parent-swap", "parent": str(arena.parent), "link_to": [link],
                       "trigger": str(dest / "d0" / "f0"), "window": WINDOW},
                      landed="d0/f0")
    if scenario in ("file-symlink", "file-hardlink"):
        victim_file = arena.victim / ("hot" if arena.user == "root" else "hot-nobody")
        cfg = {**common, "mode": "file-swap", "targets": ["hot", "hotlink", "hotfifo"],
               "trigger": str(dest / "hot")}
        if scenario == "file-symlink":
            cfg.update(kind="symlink",
                       link_to=[str(victim_file), os.path.join(rel_victim, victim_file.name)])
            return Attack(cfg)
        cfg.update(kind="hardlink", victim_file=str(victim_file))
        # The attacker's own link() and the extraction's unlink() of that name (in the
        # destination) move the victim file's ctime: that much is not the extraction
        # writing through the link. Its content, mode, owner, size, mtime, xattrs and
        # (once the destination is removed) link count are still compared.
        linked = os.path.relpath(victim_file, arena.victim)
        return Attack(cfg, ignore=lambda path, key: path == linked and key == "ctime_ns")
    if scenario == "dir-meta":
        return Attack({**common, "mode": "dir-exchange", "targets": ["meta", "top"],
                       "link_to": ([str(arena.victim / "meta"), str(arena.victim)]
                                   if n % 3 == 0 else
                                   [os.path.join(rel_victim, "meta"), rel_victim]),
                       "once": n % 2 == 0,
                       # the first file: every directory has been made and recorded
                       "trigger": str(dest / "d0" / "f0")})
    raise ValueError(scenario)


Extract = Callable[[Path, Path], str]


def extract_api(options: chrootarchive.UnpackOptions | None) -> Extract:
    def run(archive: Path, dest: Path) -> str:
        try:
            chrootarchive.untar(archive, dest, options)
        except chrootarchive.ChrootArchiveError as err:
            assert not isinstance(err, chrootarchive.InternalError), (
                f"a race made untar fail with an internal error (a bug by its own "
                f"definition): {type(err).__name__}: {err}"
            )
            return f"{type(err).__name__}: {err}"
        except Exception as err:
            raise AssertionError(
                f"untar raised {type(err).__name__}, not a ChrootArchiveError: {err}"
            ) from err
        return "ok"

    return run


def extract_cli(archive: Path, dest: Path) -> str:
    proc = subprocess.run([*CLI, "untar", str(archive), str(dest)], capture_output=True,
                          timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode == 0:
        assert "Traceback" not in err, err
        return "ok"
    line = assert_one_line_error(
        CLIResult((proc.returncode, proc.stdout.decode("utf-8", "replace"), err)),
        rc=(1, 4),
    )
    return f"exit {proc.returncode}: {line}"


def _attacker_cmd(user: str, config: dict[str, Any]) -> list[str]:
    cmd = [sys.executable, "-I", str(ATTACKER), json.dumps(config)]
    return [*SETPRIV, *cmd] if user == "nobody" else cmd


def run_round(base: Path, archive: Path, scenario: str, user: str, n: int,
              extract: Extract, mechanism: str) -> RoundResult:
    arena = Arena(base, n, user, mirror=n % 2 == 0)
    attack = make_attack(scenario, arena, n)
    config = {**attack.config, "counter": str(arena.counter), "timeout": 120}
    proc = subprocess.Popen(_attacker_cmd(user, config), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fd = os.open(arena.counter, os.O_RDWR)
    counter = mmap.mmap(fd, 16)
    os.close(fd)
    try:
        ready = proc.stdout.readline() if proc.stdout else b""
        if ready != b"ready\n":
            proc.wait(timeout=10)
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"the attacker did not start: {ready!r} {err}")
        start = time.monotonic()
        outcome = extract(archive, arena.dest)
        swaps_during = struct.unpack_from("<Q", counter, 0)[0]
        seconds = time.monotonic() - start
        counter[8] = 1  # stop
        out, err_bytes = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        counter.close()
    assert proc.returncode == 0, f"attacker failed: {err_bytes.decode()}"
    report = json.loads(out.decode().splitlines()[-1])
    result = RoundResult(scenario, user, mechanism, outcome, swaps_during, report["swaps"],
                         report["errors"], seconds)
    context = (f"{scenario}, attacker {user}, {mechanism}, round {n}, "
               f"{swaps_during} swaps during the extraction, outcome {outcome}")
    if attack.landed and outcome == "ok":
        # The extraction wrote into the destination it pinned, not elsewhere.
        assert arena.dest.is_dir() and not arena.parent.is_symlink(), context
        assert (arena.dest / attack.landed).is_file(), f"{attack.landed} missing ({context})"
    arena.assert_bystanders_untouched(context)
    arena.clean_attack_leftovers()
    arena.assert_victims_untouched(context, attack.ignore)
    shutil.rmtree(arena.x)
    return result


def run_scenario(base: Path, archive: Path, scenario: str, user: str, *, rounds: int,
                 extract: Extract, mechanism: str,
                 min_rounds: int | None = None) -> list[RoundResult]:
    """Run ``rounds`` rounds (at least ``min_rounds``; more only within BUDGET seconds),
    plus up to EXTRA_ROUNDS while none has counted; assert that one counted."""
    results: list[RoundResult] = []
    start = time.monotonic()
    floor = rounds if min_rounds is None else min_rounds
    n = 0
    while True:
        any_counted = any(r.counted for r in results)
        if n >= rounds + EXTRA_ROUNDS or (any_counted and n >= rounds):
            break
        if any_counted and n >= floor and time.monotonic() - start > BUDGET:
            break
        results.append(run_round(base, archive, scenario, user, n, extract, mechanism))
        n += 1
    counted = sum(r.counted for r in results)
    summary = "; ".join(f"{r.swaps_during}/{r.swaps_total} swaps {r.seconds:.2f}s "
                        f"{r.outcome[:70]}" for r in results)
    print(f"\n[race] {scenario} {user} {mechanism}: {counted}/{len(results)} rounds "
          f"counted: {summary}")
    assert counted >= 1, (
        f"no round of {scenario} ({user}, {mechanism}) had a swap during the extraction; "
        f"the test proved nothing: {summary}"
    )
    return results


# -- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_race(base: Path, race_archive: Path, scenario: str, user: str) -> None:
    """The full matrix with the default mechanism (``pivot`` as root)."""
    run_scenario(base, race_archive, scenario, user, rounds=ROUNDS, min_rounds=MIN_ROUNDS,
                 extract=extract_api(None), mechanism="auto")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("mechanism", ["chroot", "userns", "openat2"])
def test_race_other_mechanisms(base: Path, small_race_archive: Path, scenario: str,
                               mechanism: str) -> None:
    """Every other mechanism holds too (one round each, unprivileged attacker)."""
    options = chrootarchive.UnpackOptions(confine=mechanism)
    run_scenario(base, small_race_archive, scenario, "nobody", rounds=1,
                 extract=extract_api(options), mechanism=mechanism)


@pytest.mark.parametrize("scenario", ["dir-rename", "file-hardlink"])
def test_race_cli_clean_error(base: Path, small_race_archive: Path, scenario: str) -> None:
    """Through the command line, a race ends in success or a one-line error (exit 1 or
    4), never a traceback."""
    run_scenario(base, small_race_archive, scenario, "nobody", rounds=1, extract=extract_cli,
                 mechanism="cli")


def test_archive_shape() -> None:
    """The archive is what the scenarios rely on: thousands of entries, repeated names."""
    with tarfile.open(fileobj=io.BytesIO(build_race_archive())) as tf:
        names = tf.getnames()
    assert len(names) >= N_FILES + 900
    assert names.count("hot") == N_FILES // HOT_EVERY
    assert names.count("hotlink") == names.count("hotfifo") == N_FILES // LINK_EVERY
    assert names.index("top/meta") < names.index("d0/f0")
    # A plain tar of 4 MiB or more: the worker forks its helper, which creates the d*/f*
    # files by name (in the rounds with a mirror, through the swapped-in symlinks).
    assert len(build_race_archive()) >= _HELPER_MIN_INPUT


# -- metadata of a symlink or special file, by name (a hard link swapped in) ----------

NODE_SECONDS = 3.0  # rounds of one test, at least (a round takes 0.05 to 0.5 s)
NODE_XATTRS = 40  # user.* xattrs on each node: the kernel refuses them on a FIFO or a
#                   symlink, but not on a regular file a racer links in


def _node_archive(kind: bytes, count: int, *, mode: int = 0o644, xattrs: int = 0) -> bytes:
    """``count`` entries named ``p`` of ``kind`` (a FIFO or a symlink)."""
    pax = {f"SCHILY.xattr.user.race{k}": "from the archive" for k in range(xattrs)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for _ in range(count):
            _add(tf, "p", kind, mode=mode, linkname="target", pax=pax)
    return buf.getvalue()


def _node_round(base: Path, archive: Path, n: int, confine: str) -> tuple[int, str]:
    """One extraction while the unprivileged attacker swaps ``p`` for hard links to its
    own file outside; that file's mode, owner, times, content and xattrs must hold."""
    x = base / f"node-{n}"
    dest = x / "dest"
    dest.mkdir(parents=True)
    x.chmod(0o755)
    dest.chmod(0o777)
    victim = x / "victim"
    victim.write_bytes(b"the attacker's file, outside the destination\n")
    os.chown(victim, NOBODY, NOBODY)
    victim.chmod(0o600)
    os.utime(victim, (OLD, OLD))
    before = fingerprint(victim)
    counter = x / "counter"
    counter.write_bytes(bytes(16))
    counter.chmod(0o666)
    config = {"dest": str(dest), "mode": "file-swap", "kind": "hardlink", "targets": ["p"],
              "victim_file": str(victim), "trigger": str(dest / "p"), "window": 10,
              "counter": str(counter), "timeout": 60}
    proc = subprocess.Popen(_attacker_cmd("nobody", config), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fd = os.open(counter, os.O_RDWR)
    shared = mmap.mmap(fd, 16)
    os.close(fd)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        outcome = extract_api(chrootarchive.UnpackOptions(confine=confine))(archive, dest)
        swaps = struct.unpack_from("<Q", shared, 0)[0]
        shared[8] = 1
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shared.close()
    after = fingerprint(victim)
    # The attacker's own link() and the unpacker's unlink() of it move the ctime and
    # the link count; nothing else may move.
    for key in ("ctime_ns", "nlink"):
        before.pop(key)
        after.pop(key)
    assert after == before, (
        f"a file outside the destination changed through a hard link swapped in for a "
        f"node ({confine}, round {n}, {swaps} swaps, outcome {outcome}): "
        f"{before} -> {after}"
    )
    assert not [p for p in dest.iterdir() if p.name.startswith(".chrootarchive-")], outcome
    shutil.rmtree(x)
    return swaps, outcome


def _node_rounds(base: Path, archive: Path, confine: str) -> None:
    """Rounds for NODE_SECONDS, and until one had a swap during the extraction."""
    start = time.monotonic()
    results: list[tuple[int, str]] = []
    while time.monotonic() - start < NODE_SECONDS or not any(s for s, _ in results):
        assert any(s for s, _ in results) or len(results) < 30, (
            f"no round had a swap during the extraction: {results}")
        results.append(_node_round(base, archive, len(results), confine))
    print(f"\n[race] nodes {archive.name} {confine}: {len(results)} rounds, "
          f"{sum(1 for s, _ in results if s)} with swaps")


def test_openat2_node_mode_is_not_put_back_through_a_swapped_name(base: Path) -> None:
    """Under ``openat2`` the umask's bits of a new FIFO or device were put back by
    re-opening its name: a hard link to a file outside, swapped in right after the
    ``mknod``, took the chmod (its 0600 became 0666, done by root). The re-opened
    node is now checked first (type, device, one link). Unfixed, about one round in
    three changed the file."""
    archive = base / "fifos-0666.tar"
    archive.write_bytes(_node_archive(tarfile.FIFOTYPE, 3000, mode=0o666))
    old_umask = os.umask(0o022)
    try:
        _node_rounds(base, archive, "openat2")
    finally:
        os.umask(old_umask)


@pytest.mark.parametrize(("kind", "confine"), [(tarfile.FIFOTYPE, "auto"),
                                               (tarfile.SYMTYPE, "auto"),
                                               (tarfile.FIFOTYPE, "chroot")],
                         ids=["fifo-pivot", "symlink-pivot", "fifo-chroot"])
def test_node_xattrs_never_land_on_a_swapped_in_link(base: Path, kind: bytes,
                                                     confine: str) -> None:
    """In a jail the xattrs of a symlink or special file can only be set by path (no
    fsetxattr for O_PATH, no /proc): a hard link to a file outside swapped in after the
    node was checked took them (user.* ones, which the kernel refuses on the node
    itself, were set on the file). The node is now moved into a private directory of
    the worker's for that. Unfixed, every round changed the file."""
    archive = base / f"nodes-{confine}.tar"
    archive.write_bytes(_node_archive(kind, 1000, xattrs=NODE_XATTRS))
    _node_rounds(base, archive, confine)


# A racer with the worker's own uid (root here), at the moment the new node is opened
# for its metadata: it replaces the node with a node of its own from outside, linked in
# (and unlinked after the open, so that it has one link again) or moved in (and moved
# back out after it). Played deterministically in the unpacker's process (no jail, in a
# child), at every O_PATH open of a node of the archive's kind, wherever it is made.
_RACER_AT_THE_OPEN = """\
import os, stat, sys
sys.path.insert(0, sys.argv[1])
from chrootarchive.engine import unpacker as unpack
from chrootarchive.engine.fsops import FileOps
from chrootarchive.errors import DestinationError
from chrootarchive.options import UnpackOptions, unpack_spec
from chrootarchive.tarformat.reader import TarReader
archive, dest, victim, how = sys.argv[2:6]  # then who: the unpacker or the helper
real_open = os.open

def ours(path, dir_fd):
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path, dir_fd=dir_fd) == "target"
    return stat.S_ISFIFO(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1

def racing_open(path, flags, mode=0o777, *, dir_fd=None):
    path = os.fsdecode(path)  # the helper's names are bytes
    if not flags & os.O_PATH or not ours(path, dir_fd):
        return real_open(path, flags, mode, dir_fd=dir_fd)
    if dir_fd is None:
        dir_fd = real_open(os.path.dirname(path) or ".", os.O_PATH)
        path = os.path.basename(path)
    if how == "linked":
        os.link(victim, "staged", dst_dir_fd=dir_fd, follow_symlinks=False)
        os.rename("staged", path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    else:
        os.rename(victim, path, dst_dir_fd=dir_fd)
    try:
        return real_open(path, flags, mode, dir_fd=dir_fd)
    finally:
        if how == "linked":
            os.unlink(path, dir_fd=dir_fd)
        else:
            os.rename(path, victim, src_dir_fd=dir_fd)

os.open = racing_open
os.chdir(dest)
if sys.argv[6] == "helper":
    from chrootarchive.engine import finisher
    nodes = finisher._NodeDirs()
    made = finisher._symlink(b"node", b"target", 1_600_000_000 * 10**9, 1_600_000_000 * 10**9,
                             nodes, 0)
    assert nodes.close() is None  # the batch's end: its private directory removed
    print("made" if made else "left to the worker")
    sys.exit()
u = unpack.Unpacker(FileOps(), unpack_spec(UnpackOptions()), print)
try:
    with open(archive, "rb") as f:
        u.run(TarReader(f.fileno()))
except DestinationError as err:
    print("refused:", err)
"""


@pytest.mark.parametrize("xattr", [False, True], ids=["", "xattr"])
@pytest.mark.parametrize("how", ["linked", "moved"])
@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.FIFOTYPE], ids=["symlink", "fifo"])
def test_a_racers_node_at_the_open_takes_no_metadata(tmp_path: Path, kind: bytes, how: str,
                                                     xattr: bool) -> None:
    """A new symlink or special file was re-opened by its name in the destination for
    its owner, xattrs, mode and times, and checked (kind, one link, its owner the
    worker's). A racer with the worker's own uid passed that check with a node of its
    own, linked or moved there for the moment of the open: the node (outside the
    destination again) took the entry's owner, mode and times. Nodes are made, given
    their metadata and checked in a private directory of the worker's now, and moved to
    their name; a node swapped in there is refused. (An earlier fix, the owner check,
    stopped only a racer of another uid: issue 16, twenty-fourth round.)"""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "racers-node"
    if kind == tarfile.SYMTYPE:
        os.symlink("/etc/shadow", victim)
    else:
        os.mkfifo(victim, 0o600)
    os.utime(victim, ns=(10**18, 10**18), follow_symlinks=False)
    before = tree.snapshot(outside, ignore_root_mtime=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "node", kind, mode=0o6755, owner=HOT_OWNER, linkname="target",
             pax={"SCHILY.xattr.trusted.race": "from the archive"} if xattr else None)
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    dest.mkdir()
    src = Path(chrootarchive.__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _RACER_AT_THE_OPEN, str(src), str(archive),
                           str(dest), str(victim), how, "unpacker"],
                          capture_output=True, text=True, timeout=60)
    tree.assert_same(before, tree.snapshot(outside, ignore_root_mtime=True))
    assert proc.returncode == 0, proc.stderr
    assert "refused: node: replaced while being created" in proc.stdout, proc.stdout
    assert os.listdir(dest) == []


@pytest.mark.parametrize("how", ["linked", "moved"])
def test_a_racers_symlink_at_the_helpers_open_is_not_timed(tmp_path: Path, how: str) -> None:
    """The helper process (plain symlinks, when it runs) made a symlink at its name and
    re-opened it there to time it, checking its kind and link count only: a racer's
    symlink of the helper's own user (root's, without capabilities), linked or moved
    there for the moment of the open, took the entry's times outside the destination.
    It now makes it as the worker does, in a private directory, and leaves a node that
    is not the one made to the worker."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "racers-node"
    os.symlink("/etc/shadow", victim)
    os.utime(victim, ns=(10**18, 10**18), follow_symlinks=False)
    before = tree.snapshot(outside, ignore_root_mtime=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    src = Path(chrootarchive.__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _RACER_AT_THE_OPEN, str(src), "-", str(dest),
                           str(victim), how, "helper"],
                          capture_output=True, text=True, timeout=60)
    tree.assert_same(before, tree.snapshot(outside, ignore_root_mtime=True))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "left to the worker\n", proc.stdout
    assert os.listdir(dest) == []
