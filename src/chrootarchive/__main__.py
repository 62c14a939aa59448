"""``python -m chrootarchive``."""

from chrootarchive.cli import entry_point

entry_point()
