"""``progress`` of ``untar``: every byte of the source is reported, however it is read.

A plain tar in a regular file is read by the worker itself (the parent never sees its
bytes); its progress comes from the file offset the two share. Compressed files and
streams are read by the parent. Each way, the reported steps add up to the source's
size, and the tree is right.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

import chrootarchive


def _archive(files: int = 200, size: int = 30_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(files):
            info = tarfile.TarInfo(f"d/f{i}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([i % 251]) * size))
    return buf.getvalue()


@pytest.mark.parametrize("how", ["plain file", "gzip file", "plain stream", "gzip stream"])
def test_progress_adds_up_to_the_source(how: str, tmp_path: Path) -> None:
    data = _archive()
    source = gzip.compress(data, 1) if "gzip" in how else data
    path = tmp_path / "a.tar"
    path.write_bytes(source)
    steps: list[int] = []
    dest = tmp_path / "dest"
    if how.endswith("file"):
        chrootarchive.untar(path, dest, progress=steps.append)
    else:
        r, w = os.pipe()
        def feed() -> None:
            os.write(w, source)
            os.close(w)

        writer = threading.Thread(target=feed)
        writer.start()
        with os.fdopen(r, "rb") as stream:
            chrootarchive.untar(stream, dest, progress=steps.append)
        writer.join()
    # Cumulative, like tqdm's n: bytes read so far, growing, ending at the whole.
    assert steps and all(b > a for a, b in zip([0, *steps], steps, strict=False))
    assert steps[-1] == len(source)
    assert (dest / "d" / "f199").read_bytes() == bytes([199 % 251]) * 30_000
