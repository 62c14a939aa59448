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
