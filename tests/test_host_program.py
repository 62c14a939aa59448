"""The library inside a caller's program: what the program's other threads do to a call.

Each test runs a small program in a process of its own (it interrupts or forks that
process), which prints what it saw as JSON. What is proven:

- ``_thread.interrupt_main`` (a watchdog's, an IDE's: no signal, only a flag the next
  bytecode sees) stops a long unpack at once, as it stops ``tarfile``'s loop: the
  caller's thread never waits for the worker in a call that runs no bytecode;
- an interrupted call leaves nothing running, whenever the interrupt lands (as the
  worker gets its job; under ``openat2``, where the job is a thread of the caller's):
  no file is written after the call has raised;
- a fork made by another thread while a call runs (``os.fork``, a ``multiprocessing``
  pool started then) holds nothing of that call: the call ends when its input does,
  and the next call into the same destination does not wait for the fork's exit.
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

import pytest

import chrootarchive
from helpers import leaks, mechanisms
from helpers import tarbuild as tb

SRC = str(Path(chrootarchive.__file__).resolve().parent.parent)

PRELUDE = """
import json, os, select, sys, threading, time
sys.path.insert(0, sys.argv[1])
import chrootarchive

top = sys.argv[2]


def outcome_of(call):
    # "finished", or "interrupted" by a KeyboardInterrupt
    try:
        call()
    except KeyboardInterrupt:
        return "interrupted"
    return "finished"


def files_in(tree):
    return sum(len(files) for _, _, files in os.walk(tree))


def interrupt_when_workers_end(started, settle):
    # SIGINT to the main thread, settle seconds after the call's workers have ended
    # (once started is set): the caller's thread then waits for a thread of the call's
    import signal

    def interrupter():
        started.wait()
        while children_of_ours():
            time.sleep(0.01)
        time.sleep(settle)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupter, daemon=True).start()


def hold_worker_once_it_read(path, until):
    # SIGSTOP the call's worker once it has read some of path (the offset that a
    # progress poller watches) and until `until` is set: the poller then reports while
    # the worker runs, however fast the machine unpacks
    import signal
    path = os.path.realpath(path)  # as the worker's descriptor names it

    def holder():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for pid in children_of_ours():
                try:
                    fds = [fd for fd in os.listdir(f"/proc/{pid}/fd")
                           if os.readlink(f"/proc/{pid}/fd/{fd}") == path]
                    for fd in fds:
                        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                            if int(f.readline().split()[1]) > 0:
                                os.kill(int(pid), signal.SIGSTOP)
                                until.wait(30)
                                os.kill(int(pid), signal.SIGCONT)
                                return
                except OSError:
                    continue
            time.sleep(0.0005)

    threading.Thread(target=holder, daemon=True).start()
""" + leaks.CHILDREN_OF_OURS


def run(tmp_path: Path, body: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, SRC, str(tmp_path), *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CHROOTARCHIVE_STANDBY": "0"},  # a worker is a call's child
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def long_names_archive(path: Path, count: int = 1000) -> None:
    """``count`` empty files whose names (2.4 KB each) fill the pipe that lists them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(("d" * 200 + "/") * 12 + f"f{i}"))
    path.write_bytes(buf.getvalue())


def test_interrupt_main_stops_a_long_unpack(tmp_path: Path) -> None:
    """The worker is held (its list of names waits on a reader that is slow until the
    worker is gone), and the caller's thread waits for it: interrupt_main then must
    end the call, and the worker, within moments. It came only when the worker had
    finished: an archive of minutes (4 s here, 20,000 files) ran to its end, the
    KeyboardInterrupt after it."""
    long_names_archive(tmp_path / "long.tar")
    seen = run(tmp_path, """
import _thread
first = threading.Event()
until = []
def slow(name):
    if not until:
        until.append(time.monotonic() + 10)
        first.set()
    while children_of_ours() and time.monotonic() < until[0]:
        time.sleep(0.01)   # held while the worker lives (10 s at most)
def interrupter():
    first.wait()
    time.sleep(0.2)   # the caller's thread now waits for the worker
    sent.append(time.monotonic())
    _thread.interrupt_main()
sent = []
threading.Thread(target=interrupter, daemon=True).start()
outcome = outcome_of(lambda: chrootarchive.untar(
    os.path.join(top, "long.tar"), os.path.join(top, "dest"), on_entry=slow))
after = time.monotonic() - sent[0]
children = children_of_ours()
again = chrootarchive.untar(os.path.join(top, "long.tar"), os.path.join(top, "again"))
print(json.dumps({"outcome": outcome, "after": after, "children": children,
                  "again": again.entries}))
""")
    assert seen["outcome"] == "interrupted"
    assert seen["after"] < 5, f"the interrupt was seen {seen['after']:.1f} s late"
    assert seen["children"] == [], "the interrupted call left its worker"
    assert seen["again"] == 1000  # and the next call works


def test_an_interrupt_as_the_worker_gets_its_job_leaves_nothing_running(
        tmp_path: Path) -> None:
    """A Ctrl-C (SIGINT) that lands as the worker has got its job, while the call
    spawns the thread's next standby: the call raises, and the worker must not go on.
    It did, unwatched: it unpacked on after the call had raised (files appeared in the
    destination afterwards), and its reader thread, pipes and process were left."""
    b = tb.TarBuilder()
    for i in range(20_000):
        b.file(f"d{i % 50}/f{i}", b"x")
    (tmp_path / "many.tar").write_bytes(b.build())
    seen = run(tmp_path, """
import signal
from chrootarchive.runner import standby
dest = os.path.join(top, "dest")
real = standby.replenish
def interrupted(job, spawn):
    signal.raise_signal(signal.SIGINT)   # Ctrl-C as the next standby is spawned
    return real(job, spawn)
standby.replenish = interrupted
fds = len(os.listdir("/proc/self/fd"))
outcome = outcome_of(lambda: chrootarchive.untar(os.path.join(top, "many.tar"), dest))
at_raise = files_in(dest)
time.sleep(0.5)
print(json.dumps({"outcome": outcome, "at_raise": at_raise, "later": files_in(dest),
                  "children": children_of_ours(), "threads": threading.active_count(),
                  "fds": len(os.listdir("/proc/self/fd")) - fds}))
""")
    assert seen["outcome"] == "interrupted"
    assert seen["later"] == seen["at_raise"], "the worker unpacked on after the call raised"
    assert seen["children"] == [] and seen["threads"] == 1 and seen["fds"] == 0, seen


@pytest.mark.parametrize("confine", ["pivot", "openat2"])
def test_a_fork_during_a_call_holds_neither_its_stream_nor_its_lock(
        tmp_path: Path, confine: str) -> None:
    """A thread unpacks a stream; meanwhile the main thread forks, and the fork lives
    on (15 s). The call must end with its input, and the next call into the same
    destination must not wait: the fork's copies of the stream's pipe and of the
    destination's locked descriptor kept both for the fork's life (the worker waited
    for an end of input, the next call for the ``flock``)."""
    mechanisms.require(confine)
    b = tb.TarBuilder()
    for i in range(20):
        b.file(f"f{i}", bytes([i]) * 5000)
    (tmp_path / "a.tar").write_bytes(b.build())
    seen = run(tmp_path, """
import io
confine = sys.argv[3]
with open(os.path.join(top, "a.tar"), "rb") as f:
    archive = f.read()
dest = os.path.join(top, "dest")
reading = threading.Event()
class Trickle:
    # A stream the call reads for a while (0.3 s): the fork comes once the worker is
    # fed (the first read, to detect compression, comes before it is started).
    def __init__(self):
        self.data = io.BytesIO(archive)
        self.reads = 0
    def read(self, size=-1):
        self.reads += 1
        if self.reads == 4:
            reading.set()
        time.sleep(0.01)
        return self.data.read(4096)
took = {}
def call():
    start = time.monotonic()
    took["entries"] = chrootarchive.untar(Trickle(), dest, confine=confine).entries
    took["stream"] = time.monotonic() - start
thread = threading.Thread(target=call)
thread.start()
reading.wait()
release_r, release_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(release_w)
    select.select([release_r], [], [], 15)   # lives on until let go (15 s at most)
    os._exit(0)
os.close(release_r)
thread.join()
start = time.monotonic()
chrootarchive.untar(archive, dest, confine=confine)
took["again"] = time.monotonic() - start
os.close(release_w)
os.waitpid(pid, 0)
print(json.dumps(took))
""", confine)
    assert seen["entries"] == 20
    assert seen["stream"] < 8, f"the call waited {seen['stream']:.1f} s for the fork"
    assert seen["again"] < 8, f"the next call waited {seen['again']:.1f} s for the fork"


@pytest.mark.parametrize("how", ["interrupt_main", "SIGINT"])
def test_an_interrupted_in_process_job_writes_nothing_after_the_call(
        tmp_path: Path, how: str) -> None:
    """Under ``openat2`` the job is a thread of the caller's, reading the archive file
    itself: a KeyboardInterrupt must stop it, and nothing may be written once the call
    has raised. Under 3.11 a SIGINT's interrupt left the job unpacking on after the call
    (Python's join, cut short, marked the thread ended; 300 more files half a second
    later, the destination's lock released); interrupt_main came only at the end."""
    mechanisms.require("openat2")
    b = tb.TarBuilder()
    for i in range(20_000):
        b.file(f"d{i % 50}/f{i}", b"x")
    (tmp_path / "many.tar").write_bytes(b.build())
    seen = run(tmp_path, """
import _thread, signal
how = sys.argv[3]
dest = os.path.join(top, "dest")
started = threading.Event()
def interrupter():
    started.wait()
    if how == "SIGINT":
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:
        _thread.interrupt_main()
threading.Thread(target=interrupter, daemon=True).start()
outcome = outcome_of(lambda: chrootarchive.untar(
    os.path.join(top, "many.tar"), dest, confine="openat2",
    progress=lambda done: started.set()))
at_raise = files_in(dest)
time.sleep(0.5)
print(json.dumps({"outcome": outcome, "at_raise": at_raise, "later": files_in(dest),
                  "threads": threading.active_count()}))
""", how)
    assert seen["outcome"] == "interrupted"
    assert seen["at_raise"] < 20_000, "the interrupt came only when the job had ended"
    assert seen["later"] == seen["at_raise"], "the job wrote on after the call raised"
    assert seen["threads"] == 1


@pytest.mark.parametrize("how", ["SIGINT", "interrupt_main"])
def test_an_interrupt_inside_the_spawn_leaves_no_child(tmp_path: Path, how: str) -> None:
    """A Ctrl-C that lands inside ``subprocess.Popen`` as the worker is spawned (here:
    as the fork returns, by a hook on subprocess's ``_fork_exec``): the call raises
    KeyboardInterrupt, and leaves no child, no zombie, no descriptor. The worker was
    left untracked, a zombie, with 3 descriptors (2 of 200 random interrupts). Then one
    as the worker's pipes are made (they were left open), and SIGINTs at random moments
    of whole calls (one inside the start of the result's reader thread let the pipe be
    closed under its read; a standby spawned but not yet registered was left)."""
    (tmp_path / "a.tar").write_bytes(tb.TarBuilder().file("a", b"x").build())
    seen = run(tmp_path, """
import _thread, gc, random, signal, subprocess
how = sys.argv[3]
archive = os.path.join(top, "a.tar")
chrootarchive.untar(archive, os.path.join(top, "warm"))   # imports done
real = subprocess._fork_exec
def interrupted(*args):
    pid = real(*args)
    if how == "SIGINT":
        signal.raise_signal(signal.SIGINT)
    else:
        _thread.interrupt_main()
    return pid
fds = sorted(os.listdir("/proc/self/fd"))
subprocess._fork_exec = interrupted
outcome = outcome_of(lambda: chrootarchive.untar(archive, os.path.join(top, "dest")))
subprocess._fork_exec = real
children = children_of_ours()
fds_after = sorted(os.listdir("/proc/self/fd"))
from chrootarchive.runner import worker
real_has_stderr = worker._has_stderr
def interrupted_setup():
    signal.raise_signal(signal.SIGINT)   # as the worker's pipes are made
    return real_has_stderr()
worker._has_stderr = interrupted_setup
setup = outcome_of(lambda: chrootarchive.untar(archive, os.path.join(top, "dest2")))
worker._has_stderr = real_has_stderr
fds_setup = sorted(os.listdir("/proc/self/fd"))
outcomes = set()
main = threading.main_thread().ident
def settle(fired):
    # Until the timer's SIGINT has been seen, whenever it lands.
    while True:
        try:
            while not fired.is_set():
                time.sleep(0.005)
            time.sleep(0.02)
            return
        except KeyboardInterrupt:
            continue
for i in range(40):   # SIGINT at random moments of whole calls
    fired = threading.Event()
    def interrupt():
        signal.pthread_kill(main, signal.SIGINT)
        fired.set()
    try:
        threading.Timer(random.uniform(0, 0.04), interrupt).start()
        outcomes.add(outcome_of(lambda: chrootarchive.untar(
            archive, os.path.join(top, f"r{i}"))))
    except KeyboardInterrupt:
        outcomes.add("after")
    settle(fired)
gc.collect()   # what a reference cycle of an interrupted frame holds is not a leak
print(json.dumps({"outcome": outcome, "children": children, "fds": [fds, fds_after],
                  "setup": [setup, fds_setup],
                  "random": sorted(outcomes), "children_random": children_of_ours(),
                  "fds_random": sorted(os.listdir("/proc/self/fd")),
                  "what": {fd: os.readlink(f"/proc/self/fd/{fd}")
                           for fd in os.listdir("/proc/self/fd") if fd not in fds}}))
""", how)
    assert seen["outcome"] == "interrupted"
    assert seen["children"] == [], "the interrupted spawn left its worker"
    assert seen["fds"][1] == seen["fds"][0], "the interrupted spawn left descriptors"
    assert seen["setup"] == ["interrupted", seen["fds"][0]], "the worker's pipes were left"
    assert "interrupted" in seen["random"]
    assert seen["children_random"] == [], seen
    assert seen["fds_random"] == seen["fds"][0], f"descriptors left: {seen['what']}"


def test_an_interrupt_while_the_names_are_told_stops_them(tmp_path: Path) -> None:
    """The worker has ended, and its names are still being told (``on_entry``, slow)
    while the caller's thread waits for the lister: a SIGINT then must raise, and no
    name be told after the call has raised. Under 3.11 the interrupted ``join`` marked
    the lister ended, and it told the rest of the names after the call."""
    b = tb.TarBuilder()
    for i in range(2000):
        b.file(f"f{i}", b"")
    (tmp_path / "names.tar").write_bytes(b.build())
    seen = run(tmp_path, """
told = []
first = threading.Event()
def slow(name):
    told.append(name)
    first.set()
    time.sleep(0.002)   # 2000 names: 4 s
interrupt_when_workers_end(first, 0.2)   # the caller's thread then waits for the lister
outcome = outcome_of(lambda: chrootarchive.untar(
    os.path.join(top, "names.tar"), os.path.join(top, "dest"), on_entry=slow))
at_raise = len(told)
time.sleep(0.5)
print(json.dumps({"outcome": outcome, "at_raise": at_raise, "later": len(told),
                  "threads": threading.active_count()}))
""")
    assert seen["outcome"] == "interrupted"
    assert seen["at_raise"] < 2000, "the interrupt came only when all names were told"
    assert seen["later"] == seen["at_raise"], "names were told after the call raised"
    assert seen["threads"] <= 2, seen  # the main one, and the interrupter's at most


def test_an_interrupt_while_progress_is_told_waits_for_it(tmp_path: Path) -> None:
    """The progress poller is in the caller's callback (slow) when the call ends and
    waits for it: a SIGINT then must raise only once the callback has returned. Under
    3.11 the interrupted ``join`` marked the poller ended while the callback ran on."""
    b = tb.TarBuilder()
    for i in range(5000):
        b.file(f"d{i % 50}/f{i}", b"x")
    (tmp_path / "a.tar").write_bytes(b.build())
    seen = run(tmp_path, """
inside = threading.Event()
returned = threading.Event()
def slow(done):
    if threading.current_thread() is threading.main_thread():
        return   # the last report, once the poller has ended
    inside.set()
    while children_of_ours():
        time.sleep(0.01)
    time.sleep(1)   # held past the worker's end
    returned.set()
interrupt_when_workers_end(inside, 0.3)   # the caller's thread then waits for the poller
hold_worker_once_it_read(os.path.join(top, "a.tar"), inside)
outcome = outcome_of(lambda: chrootarchive.untar(
    os.path.join(top, "a.tar"), os.path.join(top, "dest"), progress=slow))
print(json.dumps({"outcome": outcome, "inside": inside.is_set(),
                  "returned_at_raise": returned.is_set()}))
""")
    assert seen["outcome"] == "interrupted" and seen["inside"]
    assert seen["returned_at_raise"], "the progress callback ran on after the call raised"


def test_a_fork_during_an_image_read_holds_none_of_its_pipes(tmp_path: Path) -> None:
    """A compressed image archive is read through a pipe that a thread feeds; a fork
    made meanwhile (here: as each pipe is made) lives on for 15 s. The call must not
    wait for it: the fork's copy of the pipe's read end kept the feeder blocked on a
    full pipe once the reader had what it wanted (a padding member after the layer),
    and the call waited for the fork's exit."""
    import gzip

    from helpers.oci_images import OCIBuilder, tar_directory

    b = OCIBuilder(tmp_path / "layout")
    layer = tb.TarBuilder().file("big", os.urandom(5 << 20)).build()  # > 4 MiB gzipped
    b.tag(b.image([layer]), "latest")
    (tmp_path / "layout" / "zz-padding").write_bytes(bytes(4 << 20))
    archive = tar_directory(tmp_path / "layout", tmp_path / "image.tar")
    (tmp_path / "image.tar.gz").write_bytes(gzip.compress(archive.read_bytes(), 1))
    seen = run(tmp_path, """
from chrootarchive.image import layout
real = layout._Feed.__init__
forks = []
def forking(self, *args, **kwargs):
    real(self, *args, **kwargs)
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(release_w)
        for _pid, earlier in forks:
            os.close(earlier)   # each fork is let go by its own pipe alone
        select.select([release_r], [], [], 15)   # lives on until let go (15 s at most)
        os._exit(0)
    os.close(release_r)
    forks.append((pid, release_w))
layout._Feed.__init__ = forking
start = time.monotonic()
result = chrootarchive.unpack_image(os.path.join(top, "image.tar.gz"),
                                    os.path.join(top, "rootfs"))
took = time.monotonic() - start
for pid, release_w in forks:
    os.close(release_w)
    os.waitpid(pid, 0)
print(json.dumps({"took": took, "forks": len(forks),
                  "big": os.path.getsize(os.path.join(top, "rootfs", "big"))}))
""")
    assert seen["forks"] >= 2 and seen["big"] == 5 << 20
    assert seen["took"] < 8, f"the call waited {seen['took']:.1f} s for the fork"


def test_an_interrupt_as_a_call_sets_up_leaves_nothing(tmp_path: Path) -> None:
    """A Ctrl-C as the archive's (or image's) file is opened, as the names lister starts, as a
    listing's pipe is made, as a compressed image's feed thread starts or its spool is
    made, as the destination is made or opened: the call raises KeyboardInterrupt and
    leaves no descriptor, thread or process. Each left something (random interrupts
    found most): the archive's descriptor; the worker running with its pipes and reader
    thread; the pipe; the feed thread, blocked for ever on its pipe; the spool's
    descriptor; the destination's."""
    import gzip

    from helpers.oci_images import OCIBuilder, tar_directory

    b = tb.TarBuilder()
    for i in range(50):
        b.file(f"f{i}", b"x")
    (tmp_path / "a.tar").write_bytes(b.build())
    # Listed through a pipe that a thread feeds (a plain tar in a file is read in place).
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(b.build(), 1))
    image = OCIBuilder(tmp_path / "layout")
    image.tag(image.image([b.build()]), "latest")
    image_tar = tar_directory(tmp_path / "layout", tmp_path / "image.tar")
    (tmp_path / "image.tar.gz").write_bytes(gzip.compress(image_tar.read_bytes(), 1))
    seen = run(tmp_path, """
import signal, types
from chrootarchive import _fdio
from chrootarchive.operations import listing, source as source_module
from chrootarchive.runner import pump
archive = os.path.join(top, "a.tar")
data = open(archive, "rb").read()
def interrupt_after(real):
    def hooked(*args, **kwargs):
        result = real(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return result
    return hooked
def interrupt_before(real):
    def hooked(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)
    return hooked
def shim(**hooks):
    return types.SimpleNamespace(**{**vars(_fdio), **hooks})
chrootarchive.untar(archive, os.path.join(top, "warm"), on_entry=lambda name: None)
base = sorted(os.listdir("/proc/self/fd"))
seen = {}
source_module._fdio = shim(open_input=interrupt_after(_fdio.open_input))
seen["open"] = outcome_of(lambda: chrootarchive.untar(archive, os.path.join(top, "d1")))
source_module._fdio = _fdio
real_list_names = pump.list_names
pump.list_names = interrupt_before(real_list_names)
seen["lister"] = outcome_of(lambda: chrootarchive.untar(
    data, os.path.join(top, "d2"), on_entry=lambda name: None))
pump.list_names = real_list_names
listing._fdio = shim(guard=interrupt_after(_fdio.guard))
seen["listing"] = outcome_of(lambda: list(chrootarchive.list_entries(archive + ".gz")))
listing._fdio = _fdio
from chrootarchive.image import layout
class InterruptedThread(threading.Thread):
    def start(self):
        super().start()
        signal.raise_signal(signal.SIGINT)
layout.threading = types.SimpleNamespace(Thread=InterruptedThread, Event=threading.Event)
seen["image"] = outcome_of(lambda: chrootarchive.unpack_image(
    os.path.join(top, "image.tar.gz"), os.path.join(top, "d3")))
layout.threading = threading
class InterruptedSpool(layout.Spool):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
real_spool = layout.Spool
layout.Spool = InterruptedSpool
seen["spool"] = outcome_of(lambda: chrootarchive.unpack_image(
    os.path.join(top, "image.tar.gz"), os.path.join(top, "d4")))
layout.Spool = real_spool
real_open_input = layout.open_input
layout.open_input = interrupt_after(real_open_input)
seen["image_open"] = outcome_of(lambda: chrootarchive.unpack_image(
    os.path.join(top, "image.tar.gz"), os.path.join(top, "d6")))
layout.open_input = real_open_input
from chrootarchive.operations import destination
destination.os = types.SimpleNamespace(**{**vars(os), "open": interrupt_after(os.open)})
seen["destination"] = outcome_of(lambda: chrootarchive.untar(archive, os.path.join(top, "d5")))
destination.os = os
time.sleep(0.2)
seen["fds"] = sorted(os.listdir("/proc/self/fd")) == base
seen["children"] = children_of_ours()
seen["threads"] = threading.active_count()
print(json.dumps(seen))
""")
    assert seen == {"open": "interrupted", "lister": "interrupted", "listing": "interrupted",
                    "image": "interrupted", "spool": "interrupted", "image_open": "interrupted",
                    "destination": "interrupted", "fds": True,
                    "children": [], "threads": 1}
