#!/usr/bin/env python3
"""Pull (issue 17): time ``chrootarchive pull`` against ``skopeo copy docker://...
oci:DIR`` followed by ``umoci unpack``, from a local registry.

A ``docker-registry serve`` (Debian's distribution server) is started on 127.0.0.1 with
plain HTTP and its storage in a temporary directory; the six-layer OCI layout of
``bench/image_bench.py`` (``DIR/inputs/rootfs-oci-layers``, tag ``layers``; run
``bench/image_bench.py --build-only`` first) is pushed to it with ``skopeo copy``. Then
each variant runs ``--runs`` times, taking turns, into a fresh directory of
``--target`` (tmpfs by default): wall time and the user+sys CPU time of the process
tree (the registry's own CPU is not counted: it serves both alike). The skopeo variant
writes its OCI layout to ``--target`` too, and the layout is removed with the tree.

Run as root (umoci unpack as root; chrootarchive's pivot jail).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_bench import DEFAULT_DIR, Times, measure, table

DEFAULT_TARGET = Path("/dev/shm/chrootarchive-bench-pull")


def log(msg: str) -> None:
    print(f"[pull_bench] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    config = work / "config.yml"
    config.write_text(f"""\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {work / "storage"}
http:
  addr: 127.0.0.1:{port}
""")
    log_file = (work / "registry.log").open("ab")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log_file,
                            stderr=log_file, stdin=subprocess.DEVNULL)
    log_file.close()
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            return proc, f"127.0.0.1:{port}"
        except urllib.error.HTTPError:
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("docker-registry did not start: "
                                 + (work / "registry.log").read_text()[-2000:]) from None
            time.sleep(0.05)


def compare(variants: dict[str, list[list[str]]], target: Path, runs: int) -> Times:
    """Each variant (a list of commands run one after the other) ``runs`` times,
    taking turns; ``{dest}`` and ``{oci}`` are fresh paths under ``target``."""
    times: Times = {name: [] for name in variants}
    names = list(variants)
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            run_dir = target / f"run-{r}"
            run_dir.mkdir()
            os.sync()
            wall = cpu = 0.0
            for cmd in variants[name]:
                parts = [p.replace("{dest}", str(run_dir / "dest"))
                         .replace("{oci}", str(run_dir / "oci")) for p in cmd]
                w, c = measure(parts)
                wall += w
                cpu += c
            times[name].append((wall, cpu))
            shutil.rmtree(run_dir)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET,
                        help="where the trees (and skopeo's layout) go (default: tmpfs)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    layout = args.dir / "inputs" / "rootfs-oci-layers"
    if not (layout / "index.json").exists():
        raise SystemExit(f"{layout} is missing: run bench/image_bench.py --build-only")
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    src = str(Path(__file__).resolve().parent.parent / "src")
    cli = ["env", f"PYTHONPATH={src}", sys.executable, "-m", "chrootarchive"]
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        proc, netloc = start_registry(Path(work))
        try:
            ref = f"{netloc}/bench/rootfs:layers"
            log(f"pushing {layout} to {ref}")
            subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet",
                            "--dest-tls-verify=false", f"oci:{layout}:layers",
                            f"docker://{ref}"], check=True)
            shutil.rmtree(args.target, ignore_errors=True)
            args.target.mkdir(parents=True)
            variants = {
                "chrootarchive pull": [[*cli, "pull", "--insecure", netloc, ref, "{dest}"]],
                "skopeo copy + umoci unpack": [
                    ["skopeo", "--insecure-policy", "copy", "--quiet",
                     "--src-tls-verify=false", f"docker://{ref}", "oci:{oci}:layers"],
                    ["umoci", "unpack", "--image", "{oci}:layers", "{dest}"],
                ],
            }
            try:
                times = compare(variants, args.target, args.runs)
            finally:
                shutil.rmtree(args.target, ignore_errors=True)
        finally:
            proc.kill()
            proc.wait()
    print(f"kernel {os.uname().release}; {args.runs} rounds; target {args.target}\n")
    print(table("pull of the six-layer image from a local registry (plain HTTP)", times,
                "skopeo copy + umoci unpack"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
