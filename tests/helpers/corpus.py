"""Where Go's archive/tar corpus is: $CHROOTARCHIVE_CORPUS, else ``shared/`` beside the
checkout (as CI lays it out), else /work/shared."""

from __future__ import annotations

import os
from pathlib import Path

_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "go-archive-tar"


def corpus_dir() -> Path:
    env = os.environ.get("CHROOTARCHIVE_CORPUS")
    if env:
        return Path(env)
    if _BESIDE.is_dir():
        return _BESIDE
    return Path("/work/shared/corpus/go-archive-tar")


#: The corpus archives that GNU tar and Go both read without error.
WELL_FORMED = [
    "file-and-dir.tar",
    "gnu-incremental.tar",
    "gnu-long-nul.tar",
    "gnu-multi-hdrs.tar",
    "gnu-nil-sparse-data.tar",
    "gnu-nil-sparse-hole.tar",
    "gnu-not-utf8.tar",
    "gnu-sparse-big.tar",
    "gnu-utf8.tar",
    "gnu.tar",
    "hardlink.tar",
    "hdr-only.tar",
    "invalid-go17.tar",
    "nil-uid.tar",
    "pax-global-records.tar",
    "pax-multi-hdrs.tar",
    "pax-nil-sparse-data.tar",
    "pax-nil-sparse-hole.tar",
    "pax-path-hdr.tar",
    "pax-pos-size-file.tar",
    "pax-records.tar",
    "pax-sparse-big.tar",
    "pax.tar",
    "sparse-formats.tar",
    "star.tar",
    "trailing-slash.tar",
    "ustar-file-devs.tar",
    "ustar-file-reg.tar",
    "ustar.tar",
    "v7.tar",
    "writer.tar",
    "xattrs.tar",
]
