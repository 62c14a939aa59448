#!/usr/bin/env python3
"""Build the benchmark inputs of issue 5, reproducibly and outside the repository.

Inputs (in ``DIR/inputs``, default ``DIR=/var/tmp/chrootarchive-bench``):

* ``linux.tar``, ``linux.tar.gz`` (gzip -6), ``linux.tar.zst`` (zstd -3),
  ``linux.tar.xz`` (the one Debian's ``linux-source`` package ships);
* ``rootfs.tar{,.gz,.zst}``: a Debian bookworm minbase root filesystem made by
  ``debootstrap --variant=minbase`` (falls back to real system directories if the
  mirror cannot be reached; the manifest says so);
* ``small.tar{,.gz,.zst}``: 200,000 files of 0-4 KiB in 2,000 directories;
* ``large.tar{,.gz,.zst}``: 4 files of 512 MiB.

Everything that is generated comes from a seeded RNG, and GNU tar is run with
``--sort=name`` and fixed owners and times, so two builds give the same bytes (the root
filesystem and the kernel tarball depend on what the Debian mirror serves). Existing
outputs are kept (delete one to rebuild it). ``DIR/inputs/manifest.json`` records the
number of entries, the uncompressed size and how each input was made.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/var/tmp/chrootarchive-bench")
FAMILIES = ("linux", "rootfs", "small", "large")
# A fixed time for the generated trees (2023-11-14T22:13:20Z).
FIXED_MTIME = 1_700_000_000
SEED = 20240605
DEFAULT_MIRROR = "http://deb.debian.org/debian"
GNU_TAR_REPRO = (
    "--sort=name",
    "--format=gnu",
    f"--mtime=@{FIXED_MTIME}",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--mode=u+rwX,go+rX,go-w",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def run(cmd: list[str], *, stdout: Path | None = None, cwd: Path | None = None) -> None:
    """Run a command (optionally into a file), raising on failure."""
    log("$ " + " ".join(cmd) + (f" > {stdout}" if stdout else ""))
    if stdout is None:
        subprocess.run(cmd, check=True, cwd=cwd)
        return
    with open(stdout, "wb") as out:
        subprocess.run(cmd, check=True, stdout=out, cwd=cwd)


def produce(path: Path, make: Callable[[Path], object]) -> bool:
    """Make ``path`` through ``path.tmp`` unless it exists; True if it was made."""
    if path.exists():
        log(f"keep  {path.name} ({human(path.stat().st_size)})")
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    t0 = time.monotonic()
    make(tmp)
    os.replace(tmp, path)
    log(f"made  {path.name} ({human(path.stat().st_size)}) in {time.monotonic() - t0:.1f} s")
    return True


def gzip_to(src: Path) -> Callable[[Path], None]:
    return lambda tmp: run(["gzip", "-6", "-n", "-c", str(src)], stdout=tmp)


def zstd_to(src: Path) -> Callable[[Path], None]:
    # Multi-threaded zstd output does not depend on the number of threads.
    return lambda tmp: run(["zstd", "-q", "-3", "-T0", "-c", str(src)], stdout=tmp)


def compressed_variants(tar: Path) -> None:
    produce(tar.with_name(tar.name + ".gz"), gzip_to(tar))
    produce(tar.with_name(tar.name + ".zst"), zstd_to(tar))


def gnu_tar_create(out: Path, cwd: Path, member: str, extra: tuple[str, ...] = ()) -> None:
    run(["tar", *extra, "-C", str(cwd), "-cf", str(out), member])


# ---------------------------------------------------------------------------- text


def text_pool(rng: random.Random, size: int) -> bytes:
    """Word-like text with Zipf word frequencies (gzip -6: about 0.31), made from ``rng``."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [26 - i for i in range(26)]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(2000)]
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(vocab))))
    parts: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(1, 14)))
        parts.append("\t" * rng.randint(0, 3) + line + "\n")
        total += len(parts[-1])
    return "".join(parts).encode()[:size]


# ---------------------------------------------------------------------------- linux


def build_linux(inputs: Path, manifest: dict[str, Any]) -> None:
    shipped = sorted(glob.glob("/usr/src/linux-source-*.tar.xz"))
    if not shipped:
        log("linux-source is not installed: apt-get install -y linux-source")
        run(["apt-get", "install", "-y", "-q", "linux-source"])
        shipped = sorted(glob.glob("/usr/src/linux-source-*.tar.xz"))
    if not shipped:
        raise SystemExit("no /usr/src/linux-source-*.tar.xz after installing linux-source")
    src = Path(shipped[-1])
    xz = inputs / "linux.tar.xz"
    tar = inputs / "linux.tar"
    produce(xz, lambda tmp: shutil.copyfile(src, tmp))
    produce(tar, lambda tmp: run(["xz", "-dc", "-T0", str(xz)], stdout=tmp))
    compressed_variants(tar)
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "linux-source-" + src.name.split("-")[2][:-7]],
        capture_output=True,
        text=True,
    ).stdout.strip()
    manifest["families"].setdefault("linux", {}).update(
        {
            "how": f"{src} from Debian's linux-source package {version}".strip(),
            "xz": "as shipped",
        }
    )


# ---------------------------------------------------------------------------- rootfs


def apt_mirror() -> str:
    """The Debian mirror that apt uses here (deb822 .sources or one-line lists)."""
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    for name in files:
        if not name.endswith((".list", ".sources")):
            continue
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        for m in re.finditer(r"^\s*URIs:\s*(\S+)", text, re.M):
            if "security" not in m.group(1) and "/debian" in m.group(1):
                return m.group(1)
        for m in re.finditer(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            if "security" not in m.group(1) and "/debian" in m.group(1):
                return m.group(1)
    return DEFAULT_MIRROR


ROOTFS_EXCLUDES = ("--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*")
FALLBACK_DIRS = ("etc", "usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/share/perl")


def build_rootfs(inputs: Path, work: Path, manifest: dict[str, Any], mirror: str) -> None:
    tar = inputs / "rootfs.tar"
    info: dict[str, Any] = manifest["families"].get("rootfs", {})
    if not tar.exists():
        root = work / "rootfs"
        if root.exists():
            shutil.rmtree(root)
        cmd = ["debootstrap", "--variant=minbase", "bookworm", str(root), mirror]
        log("$ " + " ".join(cmd))
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode == 0:
            status = (root / "var/lib/dpkg/status").read_text()
            pkgs = re.findall(r"^Package: (\S+)\n(?:.*\n)*?Version: (\S+)", status, re.M)
            info = {
                "how": f"debootstrap --variant=minbase bookworm DIR {mirror}; "
                "tar --numeric-owner --xattrs --sort=name -C DIR . "
                "(contents of /dev, /proc, /sys left out, as in Docker's debian images)",
                "packages": len(pkgs),
                "package_versions": {p: v for p, v in pkgs},
            }
            produce(
                tar,
                lambda tmp: gnu_tar_create(
                    tmp, root, ".", ("--numeric-owner", "--xattrs", "--sort=name", *ROOTFS_EXCLUDES)
                ),
            )
        else:
            log("debootstrap failed; last lines:\n" + "\n".join(proc.stdout.splitlines()[-15:]))
            log(
                "FALLBACK: rootfs.tar is a tar of real system directories: "
                + " ".join(FALLBACK_DIRS)
            )
            info = {
                "how": "FALLBACK (debootstrap failed): tar --numeric-owner --xattrs --sort=name "
                "-C / " + " ".join(FALLBACK_DIRS),
                "fallback": True,
            }
            produce(
                tar,
                lambda tmp: run(
                    [
                        "tar",
                        "--numeric-owner",
                        "--xattrs",
                        "--sort=name",
                        "-C",
                        "/",
                        "-cf",
                        str(tmp),
                        *FALLBACK_DIRS,
                    ]
                ),
            )
        shutil.rmtree(root, ignore_errors=True)
    else:
        log(f"keep  {tar.name} ({human(tar.stat().st_size)})")
    compressed_variants(tar)
    if info:
        manifest["families"].setdefault("rootfs", {}).update(info)


# ---------------------------------------------------------------------------- small


SMALL_FILES = 200_000
SMALL_TOP, SMALL_SUB = 40, 50  # 2,000 leaf directories of 100 files


def build_small(inputs: Path, work: Path, manifest: dict[str, Any]) -> None:
    tar = inputs / "small.tar"

    def make(tmp: Path) -> None:
        rng = random.Random(SEED)
        pool = text_pool(rng, 8 << 20)
        top = work / "small"
        if top.exists():
            shutil.rmtree(top)
        per_leaf = SMALL_FILES // (SMALL_TOP * SMALL_SUB)
        n = 0
        for i in range(SMALL_TOP):
            for j in range(SMALL_SUB):
                leaf = top / f"d{i:02d}" / f"s{j:02d}"
                leaf.mkdir(parents=True)
                for _ in range(per_leaf):
                    size = rng.randint(0, 4096)
                    if n % 10 == 9:  # one file in ten is binary
                        data = rng.randbytes(size)
                    else:
                        off = rng.randrange(len(pool) - size)
                        data = pool[off : off + size]
                    (leaf / f"f{n:06d}.txt").write_bytes(data)
                    n += 1
        log(f"wrote {n} files under {top}")
        gnu_tar_create(tmp, work, "small", GNU_TAR_REPRO)
        shutil.rmtree(top)

    produce(tar, make)
    compressed_variants(tar)
    manifest["families"].setdefault("small", {}).update(
        {
            "how": f"{SMALL_FILES} files of 0-4096 bytes (uniform; 9 in 10 word text, 1 in 10 "
            f"random bytes; random.Random({SEED})) in {SMALL_TOP}x{SMALL_SUB} directories; "
            "tar " + " ".join(GNU_TAR_REPRO),
        }
    )


# ---------------------------------------------------------------------------- large


LARGE_FILES = 4
LARGE_SIZE = 512 << 20
BLOCK = 64 << 10
RANDOM_PART = 16 << 10  # of each 64 KiB block; the rest is text


def large_blocks(rng: random.Random, pool: bytes, size: int) -> Iterator[bytes]:
    text = BLOCK - RANDOM_PART
    for _ in range(size // BLOCK):
        off = rng.randrange(len(pool) - text)
        yield rng.randbytes(RANDOM_PART) + pool[off : off + text]


def build_large(inputs: Path, work: Path, manifest: dict[str, Any]) -> None:
    tar = inputs / "large.tar"

    def make(tmp: Path) -> None:
        rng = random.Random(SEED + 1)
        pool = text_pool(rng, 32 << 20)
        top = work / "large"
        if top.exists():
            shutil.rmtree(top)
        top.mkdir(parents=True)
        for k in range(LARGE_FILES):
            with open(top / f"file{k}.bin", "wb") as f:
                for block in large_blocks(rng, pool, LARGE_SIZE):
                    f.write(block)
            log(f"wrote {top / f'file{k}.bin'}")
        gnu_tar_create(tmp, work, "large", GNU_TAR_REPRO)
        shutil.rmtree(top)

    produce(tar, make)
    compressed_variants(tar)
    manifest["families"].setdefault("large", {}).update(
        {
            "how": f"{LARGE_FILES} files of {LARGE_SIZE >> 20} MiB; each 64 KiB block is 16 KiB "
            "of random bytes and 48 KiB of word text from a 32 MiB pool"
            f" (random.Random({SEED + 1}));"
            " tar " + " ".join(GNU_TAR_REPRO),
        }
    )


# ---------------------------------------------------------------------------- manifest


def tar_stats(path: Path) -> dict[str, int]:
    """Entries, regular-file bytes and entry types of an uncompressed tar."""
    entries = files = dirs = links = other = data = 0
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            entries += 1
            if m.isreg():
                files += 1
                data += m.size
            elif m.isdir():
                dirs += 1
            elif m.issym() or m.islnk():
                links += 1
            else:
                other += 1
    return {
        "entries": entries,
        "files": files,
        "dirs": dirs,
        "links": links,
        "other": other,
        "file_bytes": data,
    }


def update_manifest(inputs: Path, manifest: dict[str, Any]) -> None:
    files: dict[str, Any] = manifest.setdefault("files", {})
    for fam in FAMILIES:
        tar = inputs / f"{fam}.tar"
        if not tar.exists():
            continue
        st = tar.stat()
        key = [st.st_size, int(st.st_mtime)]
        fam_info = manifest["families"].setdefault(fam, {})
        if fam_info.get("stats_key") != key:
            log(f"counting entries of {tar.name}")
            fam_info.update(tar_stats(tar))
            fam_info["tar_bytes"] = st.st_size
            fam_info["stats_key"] = key
        for suffix in ("", ".gz", ".zst", ".xz"):
            p = inputs / f"{fam}.tar{suffix}"
            if p.exists():
                files[p.name] = {
                    "family": fam,
                    "bytes": p.stat().st_size,
                    "tar_bytes": st.st_size,
                    "entries": fam_info["entries"],
                }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    ap.add_argument(
        "--only",
        default=",".join(FAMILIES),
        help="comma-separated families to build: " + ",".join(FAMILIES),
    )
    ap.add_argument("--mirror", help="Debian mirror for debootstrap (default: apt's)")
    args = ap.parse_args(argv)

    top: Path = args.dir.resolve()
    repo = Path(__file__).resolve().parent.parent
    if top == repo or repo in top.parents:
        ap.error(f"--dir must be outside the repository ({repo})")
    want = [f.strip() for f in args.only.split(",") if f.strip()]
    for fam in want:
        if fam not in FAMILIES:
            ap.error(f"unknown family {fam!r}")
    if os.geteuid() != 0 and "rootfs" in want:
        ap.error("building the root filesystem (debootstrap) needs root")
    for tool in ("tar", "gzip", "zstd", "xz"):
        if shutil.which(tool) is None:
            ap.error(f"{tool} is not installed")

    inputs = top / "inputs"
    work = top / "work"
    inputs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    mpath = inputs / "manifest.json"
    manifest: dict[str, Any] = json.loads(mpath.read_text()) if mpath.exists() else {}
    manifest.setdefault("families", {})

    def save() -> None:
        update_manifest(inputs, manifest)
        manifest["tools"] = {
            "tar": subprocess.run(
                ["tar", "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0],
            "gzip": "gzip -6 -n",
            "zstd": "zstd -3 -T0",
        }
        mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    log(f"inputs in {inputs}")
    for fam in want:
        log(f"== {fam}")
        if fam == "linux":
            build_linux(inputs, manifest)
        elif fam == "rootfs":
            build_rootfs(inputs, work, manifest, args.mirror or apt_mirror())
        elif fam == "small":
            build_small(inputs, work, manifest)
        elif fam == "large":
            build_large(inputs, work, manifest)
        save()
    shutil.rmtree(work, ignore_errors=True)
    save()
    print()
    print(f"{'input':<16} {'size':>12} {'tar size':>12} {'entries':>9}")
    for name, f in sorted(manifest["files"].items()):
        print(f"{name:<16} {human(f['bytes']):>12} {human(f['tar_bytes']):>12} {f['entries']:>9}")
    print(f"manifest: {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
