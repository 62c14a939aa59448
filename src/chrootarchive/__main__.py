"""``python -m chrootarchive``."""

from .cli import entry_point

entry_point()
