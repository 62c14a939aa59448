"""Standby workers (``chrootarchive.runner.standby``): a worker booted ahead of a thread's next
unpack, and every case in which it must not be used.

Each test runs a small program in a process of its own (the standby belongs to a process
and a thread), which prints what it saw as JSON. What is proven:

- from a thread's second call on, one worker waits for the next call; it holds only
  /dev/null and its control socket, is not jailed, and the next call uses it;
- a fork, another thread, a killed standby, or a caller that changed its uid never gets
  a standby that is not its own; the unpack is right every time;
- turning standbys off, or the program's exit, leaves no process behind.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import chrootarchive
from helpers import hardening, leaks
from helpers.hardening import NOBODY, SYSTEM_PYTHON, Unprivileged

SRC = str(Path(chrootarchive.__file__).resolve().parent.parent)

PRELUDE = """
import json, os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
import chrootarchive
from chrootarchive.runner import standby

top = sys.argv[2]
archive = os.path.join(top, "one.tar")
count = [0]


def unpack(where=None):
    count[0] += 1
    dest = os.path.join(where or top, f"dest{count[0]}")
    result = chrootarchive.untar(archive, dest)
    with open(os.path.join(dest, "hello.txt"), "rb") as f:
        assert f.read() == b"hello\\n", "wrong content"
    return result, dest


def mine():
    return standby._registry.standbys[(threading.get_native_id(), "unpack")][2]


def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.01)
    return state(pid)
""" + leaks.CHILDREN_OF_OURS


def one_file_archive(top: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(b"hello\n"))
    (top / "one.tar").write_bytes(buf.getvalue())
    (top / "one.tar").chmod(0o644)


def run(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    one_file_archive(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, SRC, str(tmp_path)],
        capture_output=True, text=True, timeout=60,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_second_call_boots_a_standby_that_the_third_uses(tmp_path: Path) -> None:
    seen = run(tmp_path, """
unpack()
after_first = standby.running()
unpack()
[pid] = standby.running()
booted = mine()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:  # booted: blocked reading its control socket
    if open(f"/proc/{pid}/wchan").read() == "unix_stream_read_generic":
        break
    time.sleep(0.01)
fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
root = os.readlink(f"/proc/{pid}/root")
result, _ = unpack()
print(json.dumps({"after_first": after_first, "pid": pid, "fds": fds, "root": root,
                  "returncode": booted.proc.returncode, "used": result.confinement,
                  "now": standby.running()}))
""")
    assert seen["after_first"] == [], "a program that unpacks once must not boot a standby"
    fds = seen["fds"]
    assert {fds["0"], fds["1"], fds["2"]} == {"/dev/null"}
    others = [what for fd, what in fds.items() if fd not in ("0", "1", "2")]
    assert len(others) == 1 and others[0].startswith("socket:"), fds
    assert seen["root"] == "/", "a standby is not jailed before it has a job"
    # It did the third call's job and ended by itself (a discarded standby is killed).
    assert seen["returncode"] == 0
    assert seen["used"] == "pivot"
    assert seen["now"] and seen["now"] != [seen["pid"]]


def test_a_fork_never_uses_its_parents_standby(tmp_path: Path) -> None:
    seen = run(tmp_path, """
unpack(); unpack()
[pid] = standby.running()
booted = mine()
child = os.fork()
if child == 0:
    code = 0
    try:
        if standby.running():
            code = 3  # the parent's standby is listed in the fork
        unpack()
        if pid in standby.running() or state(pid) != "S":
            code = 4  # used, or harmed
    except BaseException:
        code = 5
    os._exit(code)
_, status = os.waitpid(child, 0)
still = standby.running()
unpack()
print(json.dumps({"status": status, "pid": pid, "still": still,
                  "returncode": booted.proc.returncode}))
""")
    assert seen["status"] == 0, f"the fork's check failed with {seen['status'] >> 8}"
    assert seen["still"] == [seen["pid"]], "the fork disturbed its parent's standby"
    assert seen["returncode"] == 0, "the parent's next call did not use its standby"


def test_a_thread_never_uses_another_threads_standby(tmp_path: Path) -> None:
    seen = run(tmp_path, """
theirs = []
release = threading.Event()
def other():
    unpack(); unpack()
    theirs.extend(standby.running())
    release.wait()
thread = threading.Thread(target=other)
thread.start()
while not theirs:
    time.sleep(0.01)
[pid] = theirs
unpack()   # the main thread's first and second calls, while the other thread lives
unpack()
while_alive = state(pid)
mine_pid = mine().pid()
release.set()
thread.join()
after_exit = wait_gone(pid)   # it dies with the thread that spawned it
unpack()
print(json.dumps({"pid": pid, "while_alive": while_alive, "mine": mine_pid,
                  "after_exit": after_exit, "now": standby.running()}))
""")
    assert seen["while_alive"] == "S", "the main thread used (or harmed) the other's standby"
    assert seen["mine"] != seen["pid"]
    assert seen["after_exit"] in ("gone", "Z")
    assert seen["pid"] not in seen["now"], "a dead thread's standby is still kept"


def test_a_thread_that_ends_leaves_no_zombie_and_no_descriptor(tmp_path: Path) -> None:
    """The threads of a pool that ends (``concurrent.futures``, ``asyncio.to_thread``)
    leave nothing: each one's standby, which dies with it, is reaped and its socket
    closed when it ends, not at some other thread's next call (there was none here:
    four zombies and four descriptors stayed for the program's life)."""
    seen = run(tmp_path, """
import concurrent.futures
fds_before = len(os.listdir("/proc/self/fd"))
barrier = threading.Barrier(4)
pids = []
def two_calls(k):
    barrier.wait()   # four threads of their own, each with its standby
    unpack(os.path.join(top, f"t{k}a")); unpack(os.path.join(top, f"t{k}b"))
    pids.append(mine().pid())
for k in range(4):
    os.mkdir(os.path.join(top, f"t{k}a")); os.mkdir(os.path.join(top, f"t{k}b"))
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(two_calls, range(4)))
deadline = time.monotonic() + 5
while (children_of_ours() or standby.running()) and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"pids": pids, "states": [state(p) for p in pids],
                  "children": children_of_ours(), "kept": standby.running(),
                  "fds": len(os.listdir("/proc/self/fd")) - fds_before}))
""")
    assert len(seen["pids"]) == 4
    assert seen["states"] == ["gone"] * 4, "an ended thread's standby is a zombie"
    assert seen["children"] == [] and seen["kept"] == []
    assert seen["fds"] == 0, "an ended thread's standby socket is still open"


def test_a_killed_standby_is_replaced_by_a_fresh_worker(tmp_path: Path) -> None:
    seen = run(tmp_path, """
unpack(); unpack()
[pid] = standby.running()
os.kill(pid, signal.SIGKILL)
wait_gone(pid)
result, _ = unpack()
print(json.dumps({"used": result.confinement, "pid": pid, "now": standby.running()}))
""")
    assert seen["used"] == "pivot"
    assert seen["pid"] not in seen["now"]


def test_turned_off_or_at_exit_no_process_is_left(tmp_path: Path) -> None:
    seen = run(tmp_path, """
unpack(); unpack()
[first] = standby.running()
standby.set_standby(False)
off = standby.running()
children = children_of_ours()
unpack(); unpack()
still_off = standby.running()
standby.set_standby(True)
unpack()
[second] = standby.running()
print(json.dumps({"first": first, "first_state": state(first), "off": off,
                  "children": children, "still_off": still_off, "second": second}))
""")
    assert seen["off"] == [] and seen["still_off"] == []
    assert seen["first_state"] == "gone" and seen["children"] == []
    # The program has exited: its standby went with it (killed and reaped at exit).
    assert hardening.state(seen["second"]) == "gone"


def test_a_caller_that_gave_up_root_never_gets_a_root_standby() -> None:
    """The standby was spawned as root; the program then becomes uid 65534. Its next
    unpack must run with its new identity (a user namespace, files owned by 65534), not
    in the root standby spawned before."""
    area = Unprivileged()
    try:
        one_file_archive(area.top)
        own = area.mkdir("nobody")
        code = PRELUDE + f"""
unpack(); unpack()
[pid] = standby.running()
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
result, dest = unpack({str(own)!r})
owner = os.stat(os.path.join(dest, "hello.txt")).st_uid
old, now = state(pid), standby.running()
booted = mine()  # booted as uid {NOBODY}: the next call uses it
again, dest = unpack({str(own)!r})
print(json.dumps({{"pid": pid, "owner": owner, "used": result.confinement, "old": old,
                  "now": now, "again": again.confinement, "returncode": booted.proc.returncode,
                  "owner_again": os.stat(os.path.join(dest, "hello.txt")).st_uid}}))
"""
        script = area.write("gave_up_root.py", code.encode())
        proc = subprocess.run([SYSTEM_PYTHON, str(script), str(area.lib), str(area.top)],
                              capture_output=True, text=True, env=area.env(), cwd="/",
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert seen["owner"] == NOBODY
        assert seen["used"].startswith("userns")
        assert seen["old"] == "gone", "the root standby was not let go"
        assert seen["pid"] not in seen["now"]
        # A standby of the unprivileged caller works like its cold worker (userns).
        assert seen["returncode"] == 0
        assert seen["again"].startswith("userns") and seen["owner_again"] == NOBODY
    finally:
        area.cleanup()


def test_another_job_leaves_the_standby_for_the_next_unpack(tmp_path: Path) -> None:
    seen = run(tmp_path, """
_, dest = unpack(); unpack()
[pid] = standby.running()
booted = mine()
with chrootarchive.tar(dest) as stream:   # a pack worker in between
    packed = stream.read()
kept = standby.running()
unpack()
print(json.dumps({"pid": pid, "kept": kept, "packed": len(packed),
                  "returncode": booted.proc.returncode}))
""")
    assert seen["packed"] >= 1024
    assert seen["kept"] == [seen["pid"]], "a pack job took or dropped the unpack standby"
    assert seen["returncode"] == 0, "the next unpack did not use the standby"


def test_the_environment_can_turn_standbys_off(tmp_path: Path) -> None:
    seen = run(tmp_path, """
unpack(); unpack(); unpack()
print(json.dumps({"kept": standby.running()}))
""", env={"CHROOTARCHIVE_STANDBY": "0"})
    assert seen["kept"] == []


def test_a_failed_call_leaves_no_process_behind(tmp_path: Path) -> None:
    """Bad input leaves no process: the thread's standby goes with the failed call."""
    seen = run(tmp_path, """
unpack(); unpack()
[pid] = standby.running()
bad = os.path.join(top, "bad.tar")
with open(bad, "wb") as f:
    f.write(b"this is not a tar archive, not even close" * 40)
try:
    chrootarchive.untar(bad, os.path.join(top, "bad-dest"))
    error = None
except chrootarchive.ArchiveError as err:
    error = type(err).__name__
children = children_of_ours()
after = standby.running()
unpack()   # and the next good call works, booting a standby again
print(json.dumps({"error": error, "children": children, "after": after,
                  "old": state(pid), "again": standby.running()}))
""")
    assert seen["error"] == "MalformedArchiveError"
    assert seen["after"] == [] and seen["children"] == []
    assert seen["old"] == "gone"
    assert len(seen["again"]) == 1



def test_a_thread_keeps_one_standby_a_job(tmp_path: Path) -> None:
    """The command line's ``cp`` keeps a pack's and an unpack's worker together: each
    call takes its own job's, a second one for a job already kept is let go at once,
    and a failed call lets all of the thread's go."""
    seen = run(tmp_path, """
from chrootarchive.runner import launch, spawn
context = launch.context()
for job in ("pack", "unpack"):
    standby.adopt(job, context, spawn.Booted(job, standby=True))
tid = threading.get_native_id()
kept = {job: b.pid() for (t, job), (_c, _j, b) in standby._registry.standbys.items()
        if t == tid}
unpacker = mine()
extra = spawn.Booted("unpack", standby=True)
standby.adopt("unpack", context, extra)
extra_state = wait_gone(extra.pid())
unpack()  # takes the unpack's standby, leaves the pack's
after_unpack = standby.running()
bad = os.path.join(top, "bad.tar")
with open(bad, "wb") as f:
    f.write(b"this is not a tar archive" * 40)
try:
    chrootarchive.untar(bad, os.path.join(top, "bad-dest"))
except chrootarchive.ArchiveError:
    pass
print(json.dumps({"kept": kept, "extra": extra_state, "used": unpacker.proc.returncode,
                  "after_unpack": after_unpack, "after_failure": standby.running(),
                  "pack_then": wait_gone(kept["pack"]), "children": children_of_ours()}))
""")
    assert set(seen["kept"]) == {"pack", "unpack"}
    assert seen["extra"] in ("gone", "Z"), "a second standby for one job was kept"
    assert seen["used"] == 0, "the unpack did not use its job's standby"
    assert seen["after_unpack"] == [seen["kept"]["pack"]], "the pack's standby was not kept"
    assert seen["after_failure"] == [] and seen["pack_then"] == "gone"
    assert seen["children"] == []
