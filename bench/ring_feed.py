#!/usr/bin/env python3
"""How fast the parent's feeding thread can put a zstd stream into a ring, in process.

``python bench/ring_feed.py INPUT.tar.zst [--rounds 3]`` decompresses INPUT into a
fresh 64 MiB memfd in five ways and prints each one's CPU time: chunks written with
``pwrite`` (the code before issue 16's nineteenth round), a reused buffer written with
``pwrite``, windows of the ring mapped with and without ``MAP_POPULATE`` (4 and 16 MiB;
``RingWriter.fill`` maps 4 MiB), and the whole ring mapped once. No worker reads the
ring: this is the feeding thread alone (docs/performance.md, nineteenth round).
"""

from __future__ import annotations

import argparse
import mmap
import os
import time
from collections.abc import Callable

import zstandard

RING = 64 << 20
STEP = 1 << 20


def _reader(path: str) -> zstandard.ZstdDecompressionReader:
    return zstandard.ZstdDecompressor().stream_reader(
        open(path, "rb"), read_size=STEP, read_across_frames=True, closefd=True)


def _pwrite(fd: int, view: memoryview, end: int) -> int:
    """``view`` written at stream offset ``end`` of the ring: the new end."""
    while view:
        at = end % RING
        done = os.pwrite(fd, view[:RING - at], at)
        end += done
        view = view[done:]
    return end


def chunks_pwrite(path: str, fd: int) -> int:
    end = 0
    with _reader(path) as reader:
        while chunk := reader.read(STEP):
            end = _pwrite(fd, memoryview(chunk), end)
    return end


def buffer_pwrite(path: str, fd: int) -> int:
    end = 0
    buffer = memoryview(bytearray(STEP))
    with _reader(path) as reader:
        while done := reader.readinto(buffer):
            end = _pwrite(fd, buffer[:done], end)
    return end


def _fill(reader: zstandard.ZstdDecompressionReader, mapped: mmap.mmap, start: int) -> int:
    """Decompress into ``mapped`` from ``start`` to its end, or the stream's: the bytes
    written (fewer than asked: the stream ended)."""
    view = memoryview(mapped)
    at = start
    while at < len(view):
        span = view[at:at + STEP]
        done = reader.readinto(span)
        span.release()
        if not done:
            break
        at += done
    view.release()
    return at - start


def windows(size: int, populate: bool, first_lap_pwrite: bool = False
            ) -> Callable[[str, int], int]:
    """Windows of ``size`` bytes; with ``first_lap_pwrite``, the first lap through the
    ring (its pages new) written from a reused buffer by ``pwrite`` instead."""
    flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)

    def feed(path: str, fd: int) -> int:
        end = 0
        with _reader(path) as reader:
            buffer = memoryview(bytearray(STEP))
            while first_lap_pwrite and end < RING:
                done = reader.readinto(buffer[:RING - end])
                if not done:
                    return end
                end = _pwrite(fd, buffer[:done], end)
            while True:
                with mmap.mmap(fd, size, flags, offset=end % RING) as mapped:
                    done = _fill(reader, mapped, 0)
                end += done
                if done < size:
                    return end

    return feed


def whole_ring(path: str, fd: int) -> int:
    end = 0
    with _reader(path) as reader, mmap.mmap(fd, RING) as mapped:
        while True:
            done = _fill(reader, mapped, end % RING)
            end += done
            if done < RING - (end - done) % RING:
                return end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ways = {
        "chunks, pwrite": chunks_pwrite,
        "reused buffer, pwrite": buffer_pwrite,
        "4 MiB windows, MAP_POPULATE": windows(4 << 20, True),
        "16 MiB windows, MAP_POPULATE": windows(16 << 20, True),
        "pwrite the first lap, 4 MiB windows": windows(4 << 20, True, True),
        "4 MiB windows, a fault a page": windows(4 << 20, False),
        "the whole ring mapped once": whole_ring,
    }
    for round_ in range(args.rounds):
        for name, feed in ways.items():
            fd = os.memfd_create("ring-feed")
            os.ftruncate(fd, RING)
            start = time.thread_time()
            size = feed(args.input, fd)
            print(f"round {round_ + 1}: {name:32} {time.thread_time() - start:6.3f} s CPU "
                  f"({size:,} bytes)", flush=True)
            os.close(fd)


if __name__ == "__main__":
    main()
