"""Ingest and retrieval benchmark: lpm against the zstd CLI on the same bytes, in one run.

    .venv/bin/python bench/ingest.py [--size-mib 512] [--rounds 3] [--sweep]

Prints, for a realistic CRIU-like archive (zero pages, program text, heap, random bytes):
- ingest: lpm (read -> tar scan -> zstd -> 2x sha256 -> temp -> fsync -> rename, the agent's
  worker-thread path) vs ``zstd -T<n> -<level> -c | tee OUT | sha256sum; sync``;
- the longest event-loop stall seen during lpm's ingest (a 1 ms ticker on the loop);
- get: ``lpm store get`` logic (decompress + verify both sha256 + fsync) vs ``zstd -d`` + sync;
- encryption at rest: ingest and ``store get`` with sealed dumps vs plain ones (target >= 0.9x);
- peak RSS growth of an ingest in a fresh process, for a 128 MiB and a 2 GiB archive;
- with --sweep, ingest throughput and ratio for zstd levels 1/3 and 0/1/2 threads (how the
  defaults were chosen).
Medians of ``--rounds`` for each timing, and the range of the per-round ratios; the two sides alternate so
both see the same cache. The references fsync only their own output (``sync FILE``), as lpm does.
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
from watcher.crypt.keyring import Keyring
from watcher.ingest import service
from watcher.store import fsio, retrieve
from watcher.zstream import CompressionSettings

MIB = 1 << 20


def lpm_ingest(archive: Path, store: Path, settings: CompressionSettings) -> tuple[float, float, int]:
    """(seconds, longest event-loop stall in seconds, compressed bytes) of one agent-style ingest."""
    shutil.rmtree(store, ignore_errors=True)

    async def run() -> tuple[float, float, int]:
        root = fsio.open_root(store, create=True)
        stall = 0.0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal stall
            while not done.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                stall = max(stall, time.perf_counter() - before - 0.001)

        probe = asyncio.create_task(ticker())
        started = time.perf_counter()
        result = await asyncio.to_thread(service.ingest_archive, root, archive, "bench-node", settings,
                                         threading.Event(), datetime.now(UTC))
        seconds = time.perf_counter() - started
        done.set()
        await probe
        os.close(root)
        return seconds, stall, result.manifest.compressed_size

    return asyncio.run(run())


def cli_ingest(archive: Path, out: Path, level: int, threads: int) -> float:
    started = time.perf_counter()
    # ``sync FILE`` fsyncs that file only, as lpm fsyncs its own dump: a bare ``sync`` flushed every dirty page
    # on the machine, so the reference was as slow as whatever else was writing, and the ratio swung with it.
    subprocess.run(f"zstd -q -T{threads} -{level} -c '{archive}' | tee '{out}' | sha256sum > /dev/null; sync '{out}'",
                   shell=True, check=True)
    return time.perf_counter() - started


def lpm_get(store: Path, uri_ref, out: Path,  # type: ignore[no-untyped-def]
            settings: CompressionSettings | None = None) -> float:
    root = fsio.open_root(store, create=False)
    started = time.perf_counter()
    retrieve.get(root, uri_ref, out, settings or CompressionSettings(), threading.Event())
    seconds = time.perf_counter() - started
    os.close(root)
    out.unlink()
    return seconds


def cli_get(dump: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(f"zstd -q -d -f -c '{dump}' > '{out}'; sync '{out}'", shell=True, check=True)
    seconds = time.perf_counter() - started
    out.unlink()
    return seconds


def only_ref(store: Path):  # type: ignore[no-untyped-def]
    from watcher.store import catalog
    root = fsio.open_root(store, create=False)
    [checkpoint] = [c for c in catalog.scan(root) if isinstance(c, catalog.Checkpoint)]
    os.close(root)
    return checkpoint.manifests[0].ref


def encryption_figures(archive: Path, work: Path, rounds: int) -> None:
    """Ingest and get with sealed dumps against plain ones, rounds alternating (docs/encryption.md)."""
    size = archive.stat().st_size
    plain = CompressionSettings()
    sealed = CompressionSettings(encryption=Keyring({"bench": os.urandom(32)}))
    stores = {"plain": work / "store-plain", "sealed": work / "store-sealed"}
    ingest: dict[str, list[float]] = {"plain": [], "sealed": []}
    get: dict[str, list[float]] = {"plain": [], "sealed": []}
    for _ in range(rounds):
        for name, settings in (("plain", plain), ("sealed", sealed)):
            ingest[name].append(lpm_ingest(archive, stores[name], settings)[0])
    refs = {name: only_ref(store) for name, store in stores.items()}
    for _ in range(rounds):
        for name, settings in (("plain", plain), ("sealed", sealed)):
            get[name].append(lpm_get(stores[name], refs[name], work / "got.tar", settings))
    for what, times in (("ingest", ingest), ("get", get)):
        plain_rate = size / statistics.median(times["plain"]) / 1e6
        sealed_rate = size / statistics.median(times["sealed"]) / 1e6
        print(f"encryption {what}: sealed {sealed_rate:7.1f} MB/s  plain {plain_rate:7.1f} MB/s  "
              f"ratio {sealed_rate / plain_rate:.2f}x  {_spread(times['sealed'], times['plain'])}")
    for store in stores.values():
        shutil.rmtree(store, ignore_errors=True)


def rss_child(archive: Path, store: Path) -> None:
    """In a fresh process: RSS growth of one ingest over the process after imports."""
    def rss_now() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    root = fsio.open_root(store, create=True)
    before = rss_now()
    service.ingest_archive(root, archive, "bench-node", CompressionSettings(), threading.Event(),
                           datetime.now(UTC))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak}))


def rss_growth(archive: Path, work: Path) -> tuple[int, int]:
    store = work / "rss-store"
    shutil.rmtree(store, ignore_errors=True)
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(archive), str(store)],
                         capture_output=True, text=True, check=True).stdout
    shutil.rmtree(store, ignore_errors=True)
    figures = json.loads(out)
    return figures["before"], figures["peak"]


def _spread(ours: list[float], theirs: list[float]) -> str:
    """The per-round ratios' range: each round runs both sides back to back, on the same cache."""
    ratios = sorted(t / o for o, t in zip(ours, theirs, strict=True))
    return f"(rounds {ratios[0]:.2f}x..{ratios[-1]:.2f}x)"


def build(work: Path, size: int, tag: str) -> Path:
    pod = Pod(uid=f"bench-{tag}", container=f"bench-{tag}")
    started = time.perf_counter()
    path = make_archive(work, ArchiveSpec(pod=pod, memory=size), archive_name(pod))
    print(f"# built {path.stat().st_size / MIB:.0f} MiB archive in {time.perf_counter() - started:.1f} s")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-child", nargs=2, metavar=("ARCHIVE", "STORE"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), Path(args.rss_child[1]))
        return

    work = Path(tempfile.mkdtemp(prefix="lpm-bench-", dir=args.workdir))
    try:
        archive = build(work, args.size_mib * MIB, "main")
        size = archive.stat().st_size
        defaults = CompressionSettings()
        settings_list = [defaults]
        if args.sweep:
            settings_list = [CompressionSettings(level=level, threads=threads)
                             for level in (1, 3) for threads in (0, 1, 2)]
        store = work / "store"
        print(f"# archive {size / MIB:.0f} MiB; cores {os.cpu_count()}; rounds {args.rounds} (medians)")
        for settings in settings_list:
            ours, theirs, stalls, compressed = [], [], [], 0
            for _ in range(args.rounds):
                seconds, stall, compressed = lpm_ingest(archive, store, settings)
                ours.append(seconds)
                stalls.append(stall)
                theirs.append(cli_ingest(archive, work / "cli.zst", settings.level, settings.threads))
            mine, ref = size / statistics.median(ours) / 1e6, size / statistics.median(theirs) / 1e6
            print(f"ingest level={settings.level} threads={settings.threads}: lpm {mine:7.1f} MB/s  "
                  f"zstd|tee|sha256sum {ref:7.1f} MB/s  ratio {mine / ref:.2f}x  {_spread(ours, theirs)}  "
                  f"compression {size / compressed:.2f}:1  longest loop stall {max(stalls) * 1000:.1f} ms")

        lpm_ingest(archive, store, defaults)
        root = fsio.open_root(store, create=False)
        from watcher.store import catalog  # noqa: E402  (after the store exists)
        [checkpoint] = [c for c in catalog.scan(root) if isinstance(c, catalog.Checkpoint)]
        os.close(root)
        ref_ = checkpoint.manifests[0].ref
        dump = store.joinpath(*ref_.segments, "dump.tar.zst")
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(lpm_get(store, ref_, work / "got.tar"))
            theirs.append(cli_get(dump, work / "cli.tar"))
        mine, ref = size / statistics.median(ours) / 1e6, size / statistics.median(theirs) / 1e6
        print(f"get: lpm store get {mine:7.1f} MB/s  zstd -d {ref:7.1f} MB/s  ratio {mine / ref:.2f}x  "
              f"{_spread(ours, theirs)}")
        shutil.rmtree(store, ignore_errors=True)
        (work / "cli.zst").unlink(missing_ok=True)

        encryption_figures(archive, work, args.rounds)

        if not args.skip_rss:
            for mib in (128, 2048):
                big = archive if mib == args.size_mib else build(work, mib * MIB, f"rss{mib}")
                before, peak = rss_growth(big, work)
                print(f"rss: ingest of {mib} MiB archive: baseline {before / MIB:.1f} MiB, "
                      f"peak {peak / MIB:.1f} MiB, growth {(peak - before) / MIB:.1f} MiB")
                if big != archive:
                    big.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
