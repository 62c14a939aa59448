"""Platforms (``OS/ARCH[/VARIANT]``): normalizing them and choosing the one that suits."""

from __future__ import annotations

import os
import re

from chrootarchive._record import record as dataclass


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
}

#: For a wanted variant, the variants that run there, best first (containerd's rules).
_COMPATIBLE = {
    ("arm", "v8"): ("v8", "v7", "v6", "v5"),
    ("arm", "v7"): ("v7", "v6", "v5"),
    ("arm", "v6"): ("v6", "v5"),
    ("amd64", "v4"): ("v4", "v3", "v2", ""),
    ("amd64", "v3"): ("v3", "v2", ""),
    ("amd64", "v2"): ("v2", ""),
}

_PLATFORM_PART = re.compile(r"[a-z0-9_.-]+")


def normalize_platform(os_name: str, arch: str, variant: str) -> Platform:
    os_name, arch, variant = os_name.lower(), arch.lower(), variant.lower()
    if arch in _ARCH_ALIASES:
        arch, alias_variant = _ARCH_ALIASES[arch]
        variant = variant or alias_variant
    if variant and variant[0].isdigit():
        variant = "v" + variant
    if arch == "arm64" and variant == "v8":
        variant = ""
    if arch == "amd64" and variant == "v1":
        variant = ""
    if arch == "arm" and not variant:
        variant = "v7"
    return Platform(os_name, arch, variant)


def parse_platform(text: str) -> str:
    """Check and normalize ``OS/ARCH[/VARIANT]`` (``linux/x86_64`` -> ``linux/amd64``).

    Raises:
        ValueError: not of that form.
    """
    return str(platform_from_text(text))


def platform_from_text(text: str) -> Platform:
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(p.lower()) for p in parts):
        raise ValueError(f"expected OS/ARCH[/VARIANT] (for example linux/arm64), got {text!r}")
    return normalize_platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def default_platform() -> str:
    """The running machine's platform as images name it (``linux/amd64`` on x86_64)."""
    machine = os.uname().machine.lower()  # what platform.machine() says, without its import
    if machine.startswith("armv"):
        return str(normalize_platform("linux", "arm", "v" + machine[4:5]))
    if machine in ("ppc64le", "s390x", "riscv64", "mips64", "mips64le", "loong64"):
        return f"linux/{machine}"
    return str(normalize_platform("linux", machine or "amd64", ""))


def platform_rank(candidate: Platform, want: Platform) -> int | None:
    """How well ``candidate`` suits ``want``: 0 best, None not at all."""
    if candidate.os != want.os or candidate.architecture != want.architecture:
        return None
    if not want.variant:
        return 0 if not candidate.variant else 1
    ladder = _COMPATIBLE.get((want.architecture, want.variant), (want.variant,))
    if candidate.variant in ladder:
        return ladder.index(candidate.variant)
    return None
