"""The S3 store against the filesystem store: ingest and ``store get`` on the same archive, in one run.

    .venv/bin/python bench/s3.py [--size-mib 256] [--rounds 3] [--rss]

Starts s3proxy (scripts/s3/install-s3proxy.sh; HTTPS with a test CA, its objects on the same disk as the
filesystem store) and prints, medians of ``--rounds`` with the range of the per-round ratios:
- ingest: the S3 path (multipart upload from a pipe, server-side copy, manifest, conditional marker) vs the
  filesystem path (temp, fsync, rename), both from the same archive, alternating;
- get: ``lpm store get`` from S3 (ranged GET through a pipe into the verifying reader) vs from the directory;
- with --rss, peak RSS growth of one S3 ingest in a fresh process, for a 64 MiB and a 512 MiB archive:
  memory must not grow with the dump (two parts of 8 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from lab.archives import ArchiveSpec, Pod, archive_name, make_archive
from lab.s3server import S3Server
from watcher.ingest import s3 as s3ingest
from watcher.ingest import service
from watcher.s3 import client as s3client
from watcher.s3 import location
from watcher.s3 import retrieve as s3retrieve
from watcher.s3.store import S3Store
from watcher.store import fsio, layout, retrieve
from watcher.zstream import CompressionSettings

MIB = 1 << 20


async def _s3(url: str, work):  # type: ignore[no-untyped-def]
    at = location.parse(url)
    async with s3client.connect(at) as client:
        return await work(S3Store(client, at))


def s3_ingest(archive: Path, url: str) -> tuple[float, layout.ArtifactRef]:
    async def run(store: S3Store) -> tuple[float, layout.ArtifactRef]:
        started = time.perf_counter()
        result = await s3ingest.ingest_archive(store, archive, "bench-node", CompressionSettings(),
                                               threading.Event(), datetime.now(UTC))
        return time.perf_counter() - started, result.manifest.ref
    return asyncio.run(_s3(url, run))  # type: ignore[no-any-return]


def fs_ingest(archive: Path, store: Path) -> tuple[float, layout.ArtifactRef]:
    shutil.rmtree(store, ignore_errors=True)
    root = fsio.open_root(store, create=True)
    started = time.perf_counter()
    result = service.ingest_archive(root, archive, "bench-node", CompressionSettings(), threading.Event(),
                                    datetime.now(UTC))
    seconds = time.perf_counter() - started
    os.close(root)
    return seconds, result.manifest.ref


def s3_get(url: str, ref: layout.ArtifactRef, out: Path) -> float:
    async def run(store: S3Store) -> float:
        started = time.perf_counter()
        await s3retrieve.get(store, ref, out, CompressionSettings(), threading.Event())
        return time.perf_counter() - started
    seconds: float = asyncio.run(_s3(url, run))
    out.unlink()
    return seconds


def fs_get(store: Path, ref: layout.ArtifactRef, out: Path) -> float:
    root = fsio.open_root(store, create=False)
    started = time.perf_counter()
    retrieve.get(root, ref, out, CompressionSettings(), threading.Event())
    seconds = time.perf_counter() - started
    os.close(root)
    out.unlink()
    return seconds


def rss_child(archive: Path, url: str) -> None:
    def rss_now() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def run(store: S3Store) -> None:
        await store.check()  # the client and its imports are loaded before the baseline
        before = rss_now()
        await s3ingest.ingest_archive(store, archive, "bench-node", CompressionSettings(), threading.Event(),
                                      datetime.now(UTC))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"before": before, "peak": peak}))
    asyncio.run(_s3(url, run))


def _spread(ours: list[float], theirs: list[float]) -> str:
    ratios = sorted(t / o for o, t in zip(ours, theirs, strict=True))
    return f"(rounds {ratios[0]:.2f}x..{ratios[-1]:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), args.rss_child[1])
        return
    with tempfile.TemporaryDirectory(prefix="lpm-bench-s3-", dir=os.environ.get("LPM_BENCH_DIR")) as tmp:
        work = Path(tmp)
        server = S3Server(work / "s3")
        server.start()
        os.environ.update(server.env)
        try:
            async def make_bucket(store: S3Store) -> None:
                await store.client.create_bucket(Bucket="bench")
            asyncio.run(_s3("s3://bench", make_bucket))
            size = args.size_mib * MIB
            pod = Pod(uid="bench-s3", container="bench-s3")
            archive = make_archive(work, ArchiveSpec(pod=pod, memory=size), archive_name(pod))
            print(f"# archive {archive.stat().st_size / MIB:.0f} MiB; cores {os.cpu_count()}; rounds {args.rounds} "
                  f"(medians); s3proxy {server.version or 'default'} on loopback over HTTPS")
            ingest: dict[str, list[float]] = {"s3": [], "fs": []}
            get: dict[str, list[float]] = {"s3": [], "fs": []}
            for round_ in range(args.rounds):
                url = f"s3://bench/round-{round_}"
                seconds, s3_ref = s3_ingest(archive, url)
                ingest["s3"].append(seconds)
                seconds, fs_ref = fs_ingest(archive, work / "fs-store")
                ingest["fs"].append(seconds)
                get["s3"].append(s3_get(url, s3_ref, work / "got.tar"))
                get["fs"].append(fs_get(work / "fs-store", fs_ref, work / "got.tar"))
            raw = archive.stat().st_size
            for what, times in (("ingest", ingest), ("get", get)):
                s3_rate = raw / statistics.median(times["s3"]) / 1e6
                fs_rate = raw / statistics.median(times["fs"]) / 1e6
                print(f"{what:6}: s3 {s3_rate:7.1f} MB/s  filesystem {fs_rate:7.1f} MB/s  "
                      f"ratio {s3_rate / fs_rate:.2f}x  {_spread(times['s3'], times['fs'])}")
            if args.rss:
                for mib in (64, 512):
                    rss_pod = Pod(uid=f"rss-{mib}", container="rss")
                    big = make_archive(work, ArchiveSpec(pod=rss_pod, memory=mib * MIB), archive_name(rss_pod))
                    child = subprocess.run([sys.executable, __file__, "--rss-child", str(big), f"s3://bench/rss-{mib}"],
                                           capture_output=True, text=True)
                    if child.returncode != 0:
                        raise SystemExit(f"rss child failed ({child.returncode}): {child.stderr[-2000:]}")
                    figures = json.loads(child.stdout)
                    before, peak = figures["before"] / MIB, figures["peak"] / MIB
                    print(f"rss: s3 ingest of {mib} MiB archive: baseline {before:.1f} MiB, peak {peak:.1f} MiB, "
                          f"growth {peak - before:.1f} MiB")
                    big.unlink()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
