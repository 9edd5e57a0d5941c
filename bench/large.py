"""Large checkpoints: ingest, ``store get`` and the streamed restore of one archive, memory flat whatever its size.

    .venv/bin/python bench/large.py [--size 8G] [--baseline 64M] [--work DIR]      (as root: a real containerd)

For a kubelet-style archive of SIZE and one of BASELINE (lab/archives.py's: zero pages, program text,
heap, random bytes), each step runs in a fresh process and reports its time, throughput and peak RSS
(ru_maxrss):

- ingest: the archive into a store (scan, zstd, both SHA-256s, fsync, commit), as the agent does;
- get: ``lpm store get``'s path, the archive back out, verified, to a file;
- import: the destination's streamed restore into a real containerd (the stored dump as the image's
  zstd layer, checked on its way: watcher/restore/stream.py), unpacked for the snapshotter.

Then, per step, the peak RSS at SIZE minus the one at BASELINE: the memory that grows with the
checkpoint. Exits 1 when any step's grows by more than 64 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.freeze import parse_size  # noqa: E402
from lab.archives import ArchiveSpec, Pod, archive_name, make_archive  # noqa: E402
from tests.restore.containerd import run_containerd  # noqa: E402
from watcher.ingest import service  # noqa: E402
from watcher.restore.importer import ContainerdImporter  # noqa: E402
from watcher.restore.pipeline import import_checkpoint  # noqa: E402
from watcher.restore.source import DirectorySource  # noqa: E402
from watcher.store import catalog, fsio, retrieve  # noqa: E402
from watcher.zstream import CompressionSettings  # noqa: E402

MIB = 1 << 20
FLAT = 64 * MIB
STEPS = ("ingest", "get", "import")


def child(step: str, archive: Path, store: Path, address: str, ctr: str) -> None:
    """One step, in this fresh process; prints its seconds and peak RSS as JSON."""
    settings, cancel = CompressionSettings(), threading.Event()
    root = fsio.open_root(store, create=True)
    started = time.monotonic()
    if step == "ingest":
        service.ingest_archive(root, archive, "node-a", settings, cancel, datetime.now(UTC), target_node="node-b")
    else:
        [entry] = [e for e in catalog.scan(root) if isinstance(e, catalog.Checkpoint)]
        ref = entry.manifests[0].ref
        if step == "get":
            out = store.parent / "got.tar"
            retrieve.get(root, ref, out, settings, cancel)
            out.unlink()
        else:
            importer = ContainerdImporter(address=address, ctr=ctr, timeout=3600)
            source = DirectorySource(root, settings, cancel)
            asyncio.run(import_checkpoint(source, ref, store.parent / "work", importer))
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": seconds, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run(step: str, archive: Path, store: Path, address: str, ctr: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", step, str(archive), str(store), address, ctr],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{step} of {archive.name} failed:\n{out.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return figures


def measure(size: int, work: Path, address: str, ctr: str) -> dict[str, dict[str, float]]:
    directory = work / f"{size // MIB}m"
    directory.mkdir(mode=0o700)
    pod = Pod(uid=f"large-{size // MIB}", name=f"large-{size // MIB}", container="app")
    started = time.monotonic()
    archive = make_archive(directory, ArchiveSpec(pod=pod, memory=size), archive_name(pod))
    raw = archive.stat().st_size
    print(f"# {raw / MIB:.0f} MiB archive built in {time.monotonic() - started:.0f} s", flush=True)
    figures = {}
    for step in STEPS:
        figures[step] = run(step, archive, directory / "store", address, ctr)
        print(f"{raw / MIB:.0f} MiB {step}: {figures[step]['seconds']:.1f}s "
              f"({raw / figures[step]['seconds'] / 1e6:.0f} MB/s of archive), peak RSS "
              f"{figures[step]['peak'] / MIB:.0f} MiB", flush=True)
        if step == "ingest":
            archive.unlink()  # the disk holds the store's copy, the output of get, and containerd's
    shutil.rmtree(directory)
    return figures


def main(size: int, baseline: int, work: Path) -> int:
    # Under /tmp, not ``work``: its socket's path must stay within a unix socket's 104 bytes.
    with run_containerd() as containerd:
        base = measure(baseline, work, containerd.address, str(containerd.ctr_binary))
        large = measure(size, work, containerd.address, str(containerd.ctr_binary))
    grew = {step: large[step]["peak"] - base[step]["peak"] for step in STEPS}
    print("peak RSS growth from " + f"{baseline // MIB} MiB to {size // MIB} MiB: "
          + ", ".join(f"{step} {growth / MIB:+.1f} MiB" for step, growth in grew.items())
          + f" ({'flat' if max(grew.values()) <= FLAT else 'NOT flat'}: at most {FLAT // MIB} MiB allowed)", flush=True)
    return 0 if max(grew.values()) <= FLAT else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8G", type=parse_size)
    parser.add_argument("--baseline", default="64M", type=parse_size)
    parser.add_argument("--work", type=Path, default=None,
                        help="where archives and stores go: room for about 3x SIZE (containerd keeps its copy in /tmp)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]), args.child[3], args.child[4])
        raise SystemExit(0)
    if os.geteuid() != 0:
        raise SystemExit("bench/large.py needs root (a real containerd)")
    with tempfile.TemporaryDirectory(prefix="lpm-large-", dir=args.work) as scratch:
        raise SystemExit(main(args.size, args.baseline, Path(scratch)))
