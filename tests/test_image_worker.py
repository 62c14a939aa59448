"""One worker per image (issue 16): every layer of an image applied by one job.

The layers reach the job one after another over the layer channel
(``chrootarchive._channel``), each through a ring of its own (a pipe for the in-process
``openat2``); the parent hands over the next layer only after it checked this one's
digest and DiffID, which it computes in a thread of its own for a large blob. What must
hold:

- one worker process is started for the whole image (counted with the interpreter's
  own audit events, in a program of its own: no standby from an earlier call);
- a DiffID or digest mismatch in layer 2 of 3 stops the job before layer 3 is applied,
  and the job is gone when the error is raised;
- each layer's whiteouts apply to the layers below it only, exactly as with a worker
  per layer: what a layer wrote is its own state, reset between layers;
- a layer cannot run into the next one: data after its end-of-archive blocks (a whole
  second archive, say) is not unpacked, and a layer without them ends where its stream
  does;
- a large layer reaches a worker through a ring, and the worker's helper creates its
  small files, as for ``untar``; the tree is the layer's;
- a large blob is hashed in a thread of its own, and a digest or DiffID mismatch is
  still found there.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chrootarchive import DigestMismatchError, UnpackOptions, unpack_image
from helpers import hardening, pep706
from helpers.leaks import COUNT_SPAWNED_WORKERS, child_pids, idle_standbys
from helpers.oci_images import Entry, OCIBuilder, make_tar, sha256

pytestmark = pytest.mark.kernel

SRC = str(Path(__file__).resolve().parent.parent / "src")

# Counts the worker interpreters this process starts (helpers.leaks).
_COUNT_WORKERS = "import json, sys\n" + COUNT_SPAWNED_WORKERS + r"""
from chrootarchive import UnpackOptions, unpack_image

result = unpack_image(sys.argv[1], sys.argv[2], UnpackOptions(confine=sys.argv[3]))
print(json.dumps({"workers": len(started), "layers": len(result.layers),
                  "confinement": result.confinement}))
"""


def _three_layers(root: Path) -> Path:
    b = OCIBuilder(root)
    tars = [make_tar([Entry(f"d{i}/", "dir"), Entry(f"d{i}/f", data=b"x" * i)])
            for i in range(3)]
    b.tag(b.image(tars), "three")
    return b.root


def test_one_worker_for_a_three_layer_image(worker_mechanism: str, tmp_path: Path) -> None:
    image = _three_layers(tmp_path / "image")
    dest = tmp_path / "root"
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_WORKERS, str(image), str(dest), worker_mechanism],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, check=False)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["layers"] == 3
    assert seen["confinement"].startswith(worker_mechanism)
    assert seen["workers"] == 1, f"{seen['workers']} workers for one image"
    assert sorted(os.listdir(dest)) == ["d0", "d1", "d2"]


def _layered(root: Path, tars: list[bytes], diff_ids: list[str] | None = None) -> Path:
    b = OCIBuilder(root)
    if diff_ids is None:
        b.tag(b.image(tars), "t")
    else:
        layers = [b.layer(t) for t in tars]
        b.tag(b.manifest(b.config(diff_ids), layers), "t")
    return b.root


def test_a_diffid_mismatch_in_layer_2_stops_before_layer_3(
        mechanism: str, tmp_path: Path, no_leaks: None) -> None:
    tars = [make_tar([Entry(name, data=name.encode())]) for name in ("one", "two", "three")]
    wrong = [sha256(tars[0]), sha256(tars[0]), sha256(tars[2])]  # layer 2's is wrong
    image = _layered(tmp_path / "image", tars, wrong)
    dest = tmp_path / "root"
    with pytest.raises(DigestMismatchError, match="DiffID mismatch") as info:
        unpack_image(image, dest, UnpackOptions(confine=mechanism))
    assert (info.value.entry or "").startswith("layer 1 (sha256:")
    # Layer 2 was applied (documented: the DiffID is known at its end), layer 3 not.
    assert sorted(os.listdir(dest)) == ["one", "two"]
    # The job has ended (a standby booted for a later call is no job).
    assert not {pid for pid, _comm, state in child_pids() if state != "Z"} - idle_standbys()


def test_a_blob_digest_mismatch_in_layer_2_stops_before_layer_3(
        mechanism: str, tmp_path: Path) -> None:
    tars = [make_tar([Entry(name, data=name.encode())]) for name in ("one", "two", "three")]
    b = OCIBuilder(tmp_path / "image")
    b.tag(b.image(tars, "none"), "t")
    # The second layer's blob (an uncompressed tar), changed after its digest was
    # written: the same length, still a valid tar, other file data.
    second = b.root / "blobs" / "sha256" / sha256(tars[1]).partition(":")[2]
    second.chmod(0o644)
    data = second.read_bytes()
    assert data.count(b"two") == 2  # the name, then the data
    second.write_bytes(data[:data.rindex(b"two")] + b"TWO" + data[data.rindex(b"two") + 3:])
    dest = tmp_path / "root"
    with pytest.raises(DigestMismatchError, match="digest mismatch") as info:
        unpack_image(b.root, dest, UnpackOptions(confine=mechanism))
    assert (info.value.entry or "").startswith("layer 1 (sha256:")
    assert sorted(os.listdir(dest)) == ["one", "two"]


def test_whiteouts_apply_to_lower_layers_only_in_one_worker(
        mechanism: str, tmp_path: Path) -> None:
    layer1 = make_tar([Entry("a/", "dir"), Entry("a/x", data=b"x"), Entry("a/y", data=b"y"),
                       Entry("d/", "dir"), Entry("d/low", data=b"low")])
    # Layer 2 writes f and d/mid, and whites out a/x of layer 1.
    layer2 = make_tar([Entry("f", data=b"f"), Entry("d/mid", data=b"mid"),
                       Entry("a/.wh.x")])
    # Layer 3: f and d/mid were written by a layer below (not by this one), so its
    # whiteout and its opaque marker remove them; g is its own, so its whiteout of g
    # (in the same layer) leaves it, as does the opaque marker for d/new.
    layer3 = make_tar([Entry("g", data=b"g"), Entry(".wh.f"), Entry(".wh.g"),
                       Entry("d/new", data=b"new"), Entry("d/.wh..wh..opq")])
    image = _layered(tmp_path / "image", [layer1, layer2, layer3])
    dest = tmp_path / "root"
    result = unpack_image(image, dest, UnpackOptions(confine=mechanism))
    assert [layer.entries for layer in result.layers] == [5, 3, 5]
    assert sorted(os.listdir(dest)) == ["a", "d", "g"]
    assert sorted(os.listdir(dest / "a")) == ["y"]
    assert sorted(os.listdir(dest / "d")) == ["new"]


def test_max_bytes_holds_across_the_layers_of_one_worker(mechanism: str,
                                                         tmp_path: Path) -> None:
    from chrootarchive import LimitExceededError
    from chrootarchive.options import Limits

    tars = [make_tar([Entry(f"f{i}", data=bytes(40))]) for i in range(3)]
    image = _layered(tmp_path / "image", tars)
    dest = tmp_path / "root"
    with pytest.raises(LimitExceededError, match="max_bytes") as info:
        unpack_image(image, dest, UnpackOptions(confine=mechanism,
                                                limits=Limits(max_bytes=100)))
    assert (info.value.entry or "").startswith("layer 2 (sha256:")
    assert (dest / "f1").stat().st_size == 40  # the layers below it were whole
    assert not (dest / "f2").exists() or (dest / "f2").stat().st_size < 40


@pytest.mark.parametrize(("limit", "value", "shown", "upper"), [
    ("max_bytes", 100, "100 bytes", [Entry("g", data=b"g")]),
    ("max_entries", 2, "2 entries", [Entry("d/", "dir")]),
])
def test_a_limit_used_up_exactly_by_the_layers_below_stops_the_next_one(
        mechanism: str, tmp_path: Path, limit: str, value: int, shown: str,
        upper: list[Entry]) -> None:
    """Layer 1 uses the budget exactly (two files of 50 bytes): not one more entry or
    byte of layer 2, and the error names the limit the caller set, not what was left."""
    from chrootarchive import LimitExceededError
    from chrootarchive.options import Limits

    lower = make_tar([Entry("f0", data=bytes(50)), Entry("f1", data=bytes(50))])
    image = _layered(tmp_path / "image", [lower, make_tar(upper)])
    dest = tmp_path / "root"
    limits = Limits(**{limit: value})
    with pytest.raises(LimitExceededError) as info:
        unpack_image(image, dest, UnpackOptions(confine=mechanism, limits=limits))
    assert f"limit {limit} ({shown}) exceeded" in str(info.value)
    assert (info.value.entry or "").startswith("layer 1 (sha256:")
    # The file that crossed max_bytes is made, then stopped before its data (as in
    # one archive); the entry that crossed max_entries is not made at all.
    assert set(os.listdir(dest)) - {"g"} == {"f0", "f1"}
    assert not (dest / "g").exists() or (dest / "g").stat().st_size == 0
    assert limit == "max_bytes" or not (dest / "d").exists()


def test_an_empty_layer_after_a_limit_used_up_exactly(mechanism: str, tmp_path: Path) -> None:
    """Nothing left is no error while nothing more is asked for."""
    from chrootarchive.options import Limits

    lower = make_tar([Entry("f0", data=bytes(50)), Entry("f1", data=bytes(50))])
    image = _layered(tmp_path / "image", [lower, make_tar([])])
    dest = tmp_path / "root"
    result = unpack_image(image, dest, UnpackOptions(
        confine=mechanism, limits=Limits(max_bytes=100, max_entries=2)))
    assert [layer.entries for layer in result.layers] == [2, 0]
    assert sorted(os.listdir(dest)) == ["f0", "f1"]


def test_a_layer_cannot_run_into_the_next(mechanism: str, tmp_path: Path) -> None:
    # Layer 1: a whole second archive after its end-of-archive blocks. Layer 2: no
    # end-of-archive blocks at all. Layer 3: an ordinary layer.
    smuggled = make_tar([Entry("one", data=b"1")]) + make_tar(
        [Entry("smuggled", data=b"s"), Entry(".wh.two")])
    bare = make_tar([Entry("two", data=b"2" * 600)])
    with tarfile.open(fileobj=io.BytesIO(bare)) as tf:
        end = tf.getmembers()[-1].offset_data + 1024  # 600 bytes: two blocks
    assert not bare[end:].strip(b"\0")
    bare = bare[:end]  # no end-of-archive blocks
    layer3 = make_tar([Entry("three", data=b"3")])
    image = _layered(tmp_path / "image", [smuggled, bare, layer3])
    dest = tmp_path / "root"
    result = unpack_image(image, dest, UnpackOptions(confine=mechanism))
    assert sorted(os.listdir(dest)) == ["one", "three", "two"]
    assert (dest / "two").read_bytes() == b"2" * 600
    assert [layer.entries for layer in result.layers] == [1, 1, 1]


def _many_files_layer(count: int) -> bytes:
    """``count`` small files in 20 directories, and one of 3 MB."""
    entries = [Entry(f"d{d}/", "dir", mode=0o755) for d in range(20)]
    entries += [Entry(f"d{i % 20}/f{i:05d}", data=(b"%d;" % i) * (i % 700), mode=0o644)
                for i in range(count)]
    entries.append(Entry("big", data=bytes(range(256)) * 12_000, mode=0o600))
    return make_tar(entries)


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mode & 0o7777, p.read_bytes())
            for p in root.rglob("*") if p.is_file()}


def test_a_large_layer_reaches_the_worker_through_a_ring_and_its_helper(
        worker_mechanism: str, tmp_path: Path, no_leaks: None) -> None:
    """The second of two layers: seen in /proc while it is applied, the worker holds a
    ring (a memfd) and has forked a helper; the tree is the layers' own."""
    small = make_tar([Entry("first", data=b"1")])
    layer = _many_files_layer(12_000)
    image = _layered(tmp_path / "image", [small, layer])
    seen: dict[str, bool] = {"ring": False, "helper": False}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for worker in hardening.workers_of():
                try:
                    links = [os.readlink(f"/proc/{worker}/fd/{fd}")
                             for fd in os.listdir(f"/proc/{worker}/fd")]
                except OSError:
                    continue  # it ended, or an fd closed while it was read
                if any("memfd:chrootarchive-stream" in link for link in links):
                    seen["ring"] = True
                if hardening.workers_of(worker):
                    seen["helper"] = True
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = unpack_image(image, tmp_path / "root", UnpackOptions(confine=worker_mechanism))
    finally:
        done.set()
        watcher.join()
    assert result.confinement.startswith(worker_mechanism)
    assert [one.entries for one in result.layers] == [1, 12_000 + 20 + 1]
    assert seen == {"ring": True, "helper": True}, seen
    expected = tmp_path / "expected"
    expected.mkdir()
    for data in (small, layer):
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            pep706.extract_own(tf, expected)
    assert _files(tmp_path / "root") == _files(expected)


def _big_layer(seed: int) -> bytes:
    """A layer of 5 MiB of random bytes: its blob (uncompressed) is hashed in a thread."""
    data = random.Random(seed).randbytes(5 << 20)
    return make_tar([Entry("data", data=data), Entry("after", data=b"after")])


def test_a_large_blob_is_hashed_in_a_thread_of_its_own(tmp_path: Path) -> None:
    tars = [_big_layer(1), _big_layer(2)]
    b = OCIBuilder(tmp_path / "image")
    b.tag(b.image(tars, "none"), "t")
    threads: set[str] = set()

    def progress(report: object) -> None:  # called by the thread that reads the blob
        threads.update(thread.name for thread in threading.enumerate())

    result = unpack_image(b.root, tmp_path / "root", progress=progress)
    assert len(result.layers) == 2
    assert "chrootarchive-hash" in threads, threads
    assert not [t for t in threading.enumerate() if t.name == "chrootarchive-hash"]
    assert (tmp_path / "root" / "after").read_bytes() == b"after"


@pytest.mark.parametrize("wrong", ["digest", "diff_id"])
def test_a_mismatch_in_a_large_blob_is_found_by_the_hash_thread(
        wrong: str, tmp_path: Path) -> None:
    tars = [_big_layer(1), _big_layer(2), make_tar([Entry("third", data=b"3")])]
    b = OCIBuilder(tmp_path / "image")
    if wrong == "diff_id":
        layers = [b.layer(t, "none") for t in tars]
        b.tag(b.manifest(b.config([sha256(tars[0])] * 3), layers), "t")
    else:
        b.tag(b.image(tars, "none"), "t")
        blob = b.root / "blobs" / "sha256" / sha256(tars[1]).partition(":")[2]
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[4 << 20] ^= 0xFF  # inside the file's data: still a valid tar
        blob.write_bytes(bytes(data))
    dest = tmp_path / "root"
    message = "DiffID mismatch" if wrong == "diff_id" else "digest mismatch"
    with pytest.raises(DigestMismatchError, match=message) as info:
        unpack_image(b.root, dest)
    assert (info.value.entry or "").startswith("layer 1 (sha256:")
    assert sorted(os.listdir(dest)) == ["after", "data"]  # layer 3 was not applied
    assert not [t for t in threading.enumerate() if t.name == "chrootarchive-hash"]


def test_the_hash_thread_hashes_in_order_and_strands_no_caller() -> None:
    """What is queued before ``close`` is hashed, in order; after it, ``update`` queues
    nothing and ``wait`` returns at once. And a ``wait`` that a feeding thread (its
    source stalled) has begun when ``close`` comes still returns: here ``close`` comes
    while that ``wait`` is queueing its marker."""
    import hashlib

    from chrootarchive.image.digests import HashThread

    chunks = [bytes([i]) * (3000 + i) for i in range(40)]
    hashing = HashThread()
    ours = hashlib.sha256()
    for chunk in chunks:
        hashing.update(ours, chunk)
    hashing.wait()
    assert ours.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    hashing.close()
    hashing.update(ours, b"after")  # nothing queued, nothing blocks
    hashing.wait()
    assert ours.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()

    hashing = HashThread()
    putting = threading.Event()
    queue_put = hashing._queue.put

    def slow_put(item: tuple[Any, bytes] | threading.Event | None, block: bool = True,
                 timeout: float | None = None) -> None:
        if isinstance(item, threading.Event):  # the wait's marker
            putting.set()
            time.sleep(0.3)
        queue_put(item, block, timeout)

    hashing._queue.put = slow_put  # type: ignore[method-assign]
    waiter = threading.Thread(target=hashing.wait)
    waiter.start()
    assert putting.wait(10)
    hashing.close()
    waiter.join(10)
    assert not waiter.is_alive(), "a wait begun before close() never returned"
    assert not [t for t in threading.enumerate() if t.name == "chrootarchive-hash"]


def test_a_layer_that_fails_while_its_source_stalls_leaves_no_thread(tmp_path: Path) -> None:
    """The worker refuses a large layer (not a tar) while the feeding thread is blocked
    reading its blob (a registry stream that stalls): the archive's error is raised,
    not the feeding thread's state, and once that thread ends no hash thread is left."""
    from chrootarchive import MalformedArchiveError
    from chrootarchive.image.apply import apply_planned_layers
    from chrootarchive.image.plan import LayerPlan

    junk = b"\xff" * 512 + bytes((5 << 20) - 512)
    digest = sha256(junk)

    class StallingReader:
        size = len(junk)

        def __init__(self) -> None:
            self.pos = 0
            self.reads = 0

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads >= 3 and threading.current_thread().name == "chrootarchive-feed":
                time.sleep(1.0)
            data = junk[self.pos:self.pos + min(n, 1 << 20)]
            self.pos += len(data)
            return data

        def close(self) -> None:
            pass

    layer = LayerPlan(0, "x", digest, len(junk), "application/vnd.oci.image.layer.v1.tar",
                      "none", digest, len(junk))
    with pytest.raises(MalformedArchiveError, match="not a tar archive"):
        apply_planned_layers([layer], lambda plan, label: StallingReader(),
                             str(tmp_path / "root"), UnpackOptions())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            t.name in ("chrootarchive-feed", "chrootarchive-hash")
            for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate()
                if t.name in ("chrootarchive-feed", "chrootarchive-hash")]


# -- several layers on the command line: apply-layer L1 L2 L3 DEST --------------------

_COUNT_CLI_WORKERS = "import json, sys\n" + COUNT_SPAWNED_WORKERS + r"""
from chrootarchive.cli.main import main

code = main(sys.argv[1:])
print(json.dumps({"workers": len(started), "code": code}), file=sys.stderr)
"""

def _layer_files(where: Path) -> list[Path]:
    layers = [
        make_tar([Entry("a/", "dir"), Entry("a/x", data=b"x"), Entry("a/y", data=b"yy")]),
        make_tar([Entry("f", data=b"fff"), Entry("a/.wh.x")]),
        make_tar([Entry(".wh.f"), Entry("g", data=b"gggg")]),
    ]
    paths = []
    for i, data in enumerate(layers):
        path = where / f"l{i}.tar"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_apply_layer_cli_applies_several_layers_in_one_worker(
        worker_mechanism: str, tmp_path: Path) -> None:
    paths = _layer_files(tmp_path)
    dest = tmp_path / "root"
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_CLI_WORKERS, "apply-layer", "--confine",
         worker_mechanism, *map(str, paths), str(dest)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, check=False)
    seen = json.loads(out.stderr.strip().splitlines()[-1])
    assert seen["code"] == 0, out.stderr
    assert seen["workers"] == 1
    assert out.stdout.split() == ["3", "3", "4"]  # the applied size of each layer
    assert sorted(os.listdir(dest)) == ["a", "g"]
    assert sorted(os.listdir(dest / "a")) == ["y"]


def test_apply_layers_names_the_layer_and_stops_there(mechanism: str, tmp_path: Path,
                                                      no_leaks: None) -> None:
    from chrootarchive import BreakoutError, apply_layers

    paths = _layer_files(tmp_path)
    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(make_tar([Entry("h", data=b"h"), Entry("../escape", data=b"e")]))
    dest = tmp_path / "root"
    with pytest.raises(BreakoutError) as info:
        apply_layers([paths[0], hostile, paths[2]], dest, UnpackOptions(confine=mechanism))
    assert (info.value.entry or "").startswith(f"layer 1 ({hostile}): ../escape")
    assert not (tmp_path / "escape").exists()
    assert sorted(os.listdir(dest)) == ["a", "h"]  # layer 3 (g) never applied
    # All or nothing with atomic.
    atomic = tmp_path / "atomic"
    with pytest.raises(BreakoutError):
        apply_layers([paths[0], hostile, paths[2]], atomic,
                     UnpackOptions(confine=mechanism, atomic=True))
    assert not atomic.exists()
    results = apply_layers(paths, atomic, UnpackOptions(confine=mechanism, atomic=True))
    assert [r.size for r in results] == [3, 3, 4]
    assert {r.confinement.split()[0] for r in results} == {mechanism}
    assert sorted(os.listdir(atomic)) == ["a", "g"]
