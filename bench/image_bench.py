#!/usr/bin/env python3
"""Images (issue 16, "one worker per image"): build OCI layouts from rootfs.tar with
umoci, and time ``chrootarchive unpack-image`` against ``umoci unpack`` and against
``chrootarchive untar`` of the same layer.

Inputs (built once into ``DIR/inputs``, from ``DIR/inputs/rootfs.tar`` of
``bench/build_inputs.py``; delete one to rebuild it):

* ``rootfs-oci-layers/`` (tag ``layers``): the root filesystem split into 4 layers by
  subtree (``umoci insert``), then a layer that deletes the documentation and the
  manual pages and changes files in ``/etc`` (``umoci unpack``, changes, ``umoci
  repack``: whiteouts), then one that replaces ``/var/lib/dpkg/info`` with an opaque
  directory (``umoci insert --opaque``): 6 gzip layers;
* ``small-oci-layers/`` (tag ``small``): 20 small layers (``umoci insert``), each a
  directory of 20 files of 100 bytes, every fifth one also whiting out a directory of
  the layer before it: where the fixed cost of each layer shows;
* ``rootfs-oci-one/`` (tag ``one``): the whole root filesystem as one gzip layer
  (``umoci insert``); its blob is also kept as ``rootfs-oci-one.layer.tar.gz`` for
  ``untar``.

Comparisons (each variant in turn, the starting one rotating each round, ``--runs``
rounds, into a fresh directory of ``--target``, tmpfs by default): wall time and the
user+sys CPU time of the process tree, medians with min-max. ``--variant NAME=SRC`` adds
a chrootarchive from another source tree (``/work/main/src``, say) for a before/after.

Run as root (umoci unpack as root; chrootarchive's pivot jail).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

DEFAULT_DIR = Path("/var/tmp/chrootarchive-bench")
DEFAULT_TARGET = Path("/dev/shm/chrootarchive-bench-image")
SPLIT = 4  # layers the root filesystem is split into before the whiteout layers


def log(msg: str) -> None:
    print(f"[image_bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, stderr: int | None = None) -> None:
    subprocess.run(cmd, check=True, stderr=stderr)


def _sizes(root: Path) -> dict[str, int]:
    """The bytes below each second-level subtree (``usr/lib``, ``etc``...)."""
    sizes: dict[str, int] = {}
    for top in sorted(os.listdir(root)):
        path = root / top
        if path.is_dir() and not path.is_symlink():
            subs = sorted(os.listdir(path))
            for sub in subs or [""]:
                key = f"{top}/{sub}" if sub else top
                total = 0
                for dirpath, _dirs, files in os.walk(root / key):
                    for f in files:
                        total += os.lstat(os.path.join(dirpath, f)).st_size
                sizes[key] = total
        else:
            sizes[top] = 0
    return sizes


def _split(root: Path, parts: int) -> list[list[str]]:
    """Subtrees in ``parts`` groups of about the same size (largest first, greedy)."""
    groups: list[list[str]] = [[] for _ in range(parts)]
    weight = [0] * parts
    for key, size in sorted(_sizes(root).items(), key=lambda kv: (-kv[1], kv[0])):
        i = weight.index(min(weight))
        groups[i].append(key)
        weight[i] += size + 4096
    return groups


def build_layers(inputs: Path, work: Path) -> Path:
    out = inputs / "rootfs-oci-layers"
    if out.exists():
        return out
    tmp = inputs / "rootfs-oci-layers.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rootfs = work / "rootfs"
    rootfs.mkdir()
    run(["tar", "--numeric-owner", "-xpf", str(inputs / "rootfs.tar"), "-C", str(rootfs)])
    image = f"{tmp}:layers"
    run(["umoci", "init", "--layout", str(tmp)])
    run(["umoci", "new", "--image", image])
    for n, group in enumerate(_split(rootfs, SPLIT)):
        part = work / f"part{n}"
        part.mkdir()
        part.chmod(0o755)
        for key in group:
            dest = part / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Parents made here take the root filesystem's metadata.
            for parent in reversed(Path(key).parents[:-1]):
                shutil.copystat(rootfs / parent, part / parent, follow_symlinks=False)
            run(["cp", "-a", str(rootfs / key), str(dest)])
        log(f"layer {n + 1}: {len(group)} subtrees")
        run(["umoci", "insert", "--no-history", "--image", image, str(part), "/"])
    # Whiteouts: remove documentation and manual pages, change /etc.
    bundle = work / "bundle"
    run(["umoci", "unpack", "--image", image, str(bundle)])
    top = bundle / "rootfs"
    for gone in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/debconf"):
        shutil.rmtree(top / gone, ignore_errors=True)
    for name in sorted(os.listdir(top / "etc"))[::7]:
        path = top / "etc" / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    (top / "etc" / "motd").write_text("layer 5\n")
    run(["umoci", "repack", "--no-history", "--image", image, str(bundle)])
    log("layer 5: whiteouts (documentation, manual pages, some of /etc)")
    # An opaque directory: /var/lib/dpkg/info replaced by a few files.
    info = work / "info"
    info.mkdir()
    for i in range(20):
        (info / f"pkg{i}.list").write_text(f"/usr/bin/pkg{i}\n")
    run(["umoci", "insert", "--no-history", "--opaque", "--image", image, str(info),
         "/var/lib/dpkg/info"])
    log("layer 6: /var/lib/dpkg/info opaque")
    run(["umoci", "gc", "--layout", str(tmp)])
    tmp.rename(out)
    return out


def build_small(inputs: Path, work: Path) -> Path:
    out = inputs / "small-oci-layers"
    if out.exists():
        return out
    tmp = inputs / "small-oci-layers.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    image = f"{tmp}:small"
    run(["umoci", "init", "--layout", str(tmp)])
    run(["umoci", "new", "--image", image])
    for i in range(20):
        part = work / f"small{i}"
        part.mkdir()
        for n in range(20):
            (part / f"f{n}").write_bytes(b"x" * 100)
        run(["umoci", "insert", "--no-history", "--image", image, str(part), f"/l{i}"],
            stderr=subprocess.DEVNULL)
        if i % 5 == 4:
            run(["umoci", "insert", "--no-history", "--whiteout", "--image", image,
                 f"/l{i - 1}"], stderr=subprocess.DEVNULL)
    run(["umoci", "gc", "--layout", str(tmp)])
    tmp.rename(out)
    return out


def build_one(inputs: Path, work: Path) -> tuple[Path, Path]:
    out = inputs / "rootfs-oci-one"
    blob = inputs / "rootfs-oci-one.layer.tar.gz"
    if out.exists() and blob.exists():
        return out, blob
    tmp = inputs / "rootfs-oci-one.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rootfs = work / "rootfs-one"
    rootfs.mkdir()
    run(["tar", "--numeric-owner", "-xpf", str(inputs / "rootfs.tar"), "-C", str(rootfs)])
    image = f"{tmp}:one"
    run(["umoci", "init", "--layout", str(tmp)])
    run(["umoci", "new", "--image", image])
    run(["umoci", "insert", "--no-history", "--image", image, str(rootfs), "/"])
    run(["umoci", "gc", "--layout", str(tmp)])
    # The one layer blob: the largest file of blobs/sha256.
    blobs = tmp / "blobs" / "sha256"
    layer = max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    shutil.copyfile(layer, blob)
    tmp.rename(out)
    return out, blob


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall and user+sys CPU seconds of ``cmd`` and its descendants."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, ru.ru_utime + ru.ru_stime


Times = dict[str, list[tuple[float, float]]]


def compare(variants: dict[str, list[str]], target: Path, runs: int) -> Times:
    """Each variant ``runs`` times, taking turns; its command's ``{dest}`` is a fresh
    directory (umoci wants a bundle that does not exist yet)."""
    times: Times = {name: [] for name in variants}
    names = list(variants)
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            dest = target / f"{name}-{r}"
            cmd = [str(dest) if part == "{dest}" else part for part in variants[name]]
            os.sync()
            times[name].append(measure(cmd))
            shutil.rmtree(dest)
    return times


def table(title: str, times: Times, base: str) -> str:
    base_wall = statistics.median(w for w, _ in times[base])
    lines = [f"### {title}", "", f"| tool | wall s (median, min-max) | user+sys s | / {base} |",
             "|---|---:|---:|---:|"]
    for name, samples in times.items():
        walls = [w for w, _ in samples]
        cpus = [c for _, c in samples]
        med = statistics.median(walls)
        lines.append(f"| {name} | {med:.3f} ({min(walls):.3f}-{max(walls):.3f}) | "
                     f"{statistics.median(cpus):.3f} | {med / base_wall:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET,
                        help="where the trees are unpacked (default: tmpfs)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC",
                        help="also time chrootarchive from the source tree SRC")
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args(argv)
    inputs = args.dir / "inputs"
    if not (inputs / "rootfs.tar").exists():
        raise SystemExit(f"{inputs / 'rootfs.tar'} is missing: run bench/build_inputs.py")
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        layers = build_layers(inputs, Path(work))
        one, blob = build_one(inputs, Path(work))
        small = build_small(inputs, Path(work))
    if args.build_only:
        return 0
    here = Path(__file__).resolve().parent.parent / "src"
    sources = {"chrootarchive": str(here)}
    for variant in args.variant:
        name, _, src = variant.partition("=")
        sources[name] = src

    def cli(src: str) -> list[str]:
        return ["env", f"PYTHONPATH={src}", sys.executable, "-m", "chrootarchive"]

    shutil.rmtree(args.target, ignore_errors=True)
    args.target.mkdir(parents=True)
    try:
        many = {name: [*cli(src), "unpack-image", str(layers), "{dest}"]
                for name, src in sources.items()}
        many["umoci unpack"] = ["umoci", "unpack", "--image", f"{layers}:layers", "{dest}"]
        few = {name: [*cli(src), "unpack-image", str(small), "{dest}"]
               for name, src in sources.items()}
        few["umoci unpack"] = ["umoci", "unpack", "--image", f"{small}:small", "{dest}"]
        single = {f"{name} unpack-image": [*cli(src), "unpack-image", str(one), "{dest}"]
                  for name, src in sources.items()}
        single.update({f"{name} untar": [*cli(src), "untar", str(blob), "{dest}"]
                       for name, src in sources.items()})
        with tarfile.open(blob) as tf:
            entries = sum(1 for _ in tf)
        print(f"kernel {os.uname().release}; {args.runs} rounds; target {args.target}\n")
        print(table(f"six-layer image ({len(os.listdir(layers / 'blobs' / 'sha256'))} blobs)",
                    compare(many, args.target, args.runs), "umoci unpack"))
        print(table("24 small layers (20 of 20 files, 4 of a whiteout)",
                    compare(few, args.target, args.runs), "umoci unpack"))
        print(table(f"one-layer image ({entries} entries, {blob.stat().st_size:,} bytes gzip)",
                    compare(single, args.target, args.runs), "chrootarchive untar"))
    finally:
        shutil.rmtree(args.target, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
