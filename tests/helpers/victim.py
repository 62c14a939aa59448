"""A victim tree outside the destination, and the proof that nothing touched it.

The usual layout, under one work directory::

    work/
      dest/            the extraction target (excluded from the victim snapshot)
      victim/          files, directories, a symlink, a file with known content
      (anything else)  also part of the snapshot: a sibling created next to dest
                       (``../dest-evil``) shows up as a difference

The snapshot records content, mode, owner, xattrs, mtime, **ctime** (which moves on
chmod, chown, link and unlink) and the link count, of every object, and of the work
directory itself (its mtime moves when a sibling is created or removed).
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers import tree

SECRET = b"victim-secret-3f1c9a: if you can read this in dest, a file was read from outside\n"
HELLO = b"hello world\n"


class Victim:
    """Build with :meth:`create`, then :meth:`assert_untouched` after the attack."""

    def __init__(self, work: Path, dest_name: str = "dest") -> None:
        self.work = Path(work)
        self.root = self.work / "victim"
        self.dest_name = dest_name
        self.before: tree.Snapshot | None = None

    # Paths an attacker aims at.
    @property
    def hello(self) -> Path:
        return self.root / "hello"

    @property
    def secret(self) -> Path:
        return self.root / "secret"

    def create(self) -> Victim:
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        self.hello.write_bytes(HELLO)
        self.secret.write_bytes(SECRET)
        self.secret.chmod(0o600)
        (r / "sub" / "deeper").mkdir(parents=True)
        (r / "sub" / "deeper" / "file").write_bytes(b"deep\n")
        (r / "sub" / "exec").write_bytes(b"#!/bin/sh\nexit 0\n")
        (r / "sub" / "exec").chmod(0o755)
        (r / "empty-dir").mkdir()
        os.symlink("hello", r / "link-to-hello")
        os.symlink("sub", r / "link-to-sub")
        # A hardlink pair inside the victim: a new link to it changes nlink/ctime.
        os.link(r / "hello", r / "hello-hardlink")
        os.setxattr(r / "hello", "user.victim", b"original")
        # Make every timestamp old so that any later change is visible.
        old = 1_000_000_000
        for path in sorted(r.rglob("*"), key=lambda p: -len(p.parts)):
            os.utime(path, (old, old), follow_symlinks=False)
        os.utime(r, (old, old))
        self.snap()
        return self

    def snapshot(self) -> tree.Snapshot:
        return tree.snapshot(self.work, ctime=True, nlink=True, exclude=[self.dest_name])

    def snap(self) -> None:
        """Take (or retake) the "before" snapshot."""
        self.before = self.snapshot()

    def assert_untouched(self) -> None:
        assert self.before is not None, "call create() or snap() first"
        after = self.snapshot()
        tree.assert_same(self.before, after, "the victim tree outside the destination changed")

    def assert_not_read_into(self, dest: Path) -> None:
        """No file in ``dest`` holds the secret: nothing outside was read in."""
        hits = tree.find_content(dest, SECRET.strip())
        assert not hits, f"victim content was copied into the destination: {hits}"
