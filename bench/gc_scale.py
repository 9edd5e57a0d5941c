"""Collector scale bench: scan + plan a synthetic store of many checkpoints; time and peak RSS.

    .venv/bin/python bench/gc_scale.py [--checkpoints 100000] [--dir DIR] [--keep]

The store is real (``tests/gc/synthetic.py``): a directory per pod (four checkpoints each)
and per checkpoint, a container directory with a small dump and a manifest.json that the
store's own validators accept, and the completion marker; one checkpoint in a hundred is
left incomplete, one in fifty is pinned, one in ten has two containers. The pass reads it as
a real pass does (every directory opened, every file stat'ed, every manifest read), with the
page cache warm from the build, as on a collector that runs every ten minutes.

The target (issue 5): 100,000 checkpoints scanned and planned in at most 10 s, with memory
that grows by a small constant per checkpoint. Peak RSS is measured in a child process per
size (``ru_maxrss`` is a high-water mark, so sizes must not share a process), and the growth
per checkpoint between the sizes is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lpm_gc.planner import Policy, plan  # noqa: E402
from lpm_gc.scanner import scan  # noqa: E402
from tests.gc import synthetic  # noqa: E402
from watcher.store import fsio  # noqa: E402

NOW = 1_800_000_000.0  # a fixed "now" so every run plans the same deletions


def build(root: Path, count: int) -> None:
    synthetic.build(root, count, NOW, incomplete_every=100, pinned_every=50, two_containers_every=10)


def measure(root: Path) -> dict[str, float]:
    """One scan + plan of ``root`` in this process: seconds, peak RSS, what was planned."""
    policy = Policy(retention=synthetic.DAY, stale_after=3600.0, max_per_pod=3, max_total_size=None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = _cpu()
    started = time.perf_counter()
    fd = fsio.open_root(root, create=False)
    try:
        result = scan(fd)
    finally:
        os.close(fd)
    scanned = time.perf_counter()
    decided = plan(result.entries, policy, NOW)
    done = time.perf_counter()
    return {
        "checkpoints": len(result.entries),
        "scanSeconds": round(scanned - started, 2),
        "planSeconds": round(done - scanned, 2),
        "totalSeconds": round(done - started, 2),
        "cpuSeconds": round(_cpu() - cpu_before, 2),
        "deletions": len(decided.deletions),
        "rssBeforeMiB": round(rss_before / 1024, 1),
        "peakRssMiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(root: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--measure", str(root)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="leave the built stores in place")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    base = args.dir or Path(tempfile.mkdtemp(prefix="lpm-gc-bench-", dir="/var/tmp"))
    made = [base] if args.dir is None else []
    sizes = sorted({max(1, args.checkpoints // 10), args.checkpoints})
    results = []
    try:
        for size in sizes:
            root = base / f"store-{size}"
            made.append(root)
            started = time.perf_counter()
            build(root, size)
            print(f"built {size} checkpoints in {time.perf_counter() - started:.1f} s at {root}", file=sys.stderr)
            results.append(_child(root))
            print(json.dumps(results[-1]), flush=True)
        if len(results) == 2:
            small, large = results
            growth = ((large["peakRssMiB"] - small["peakRssMiB"]) * 1048576
                      / (large["checkpoints"] - small["checkpoints"]))
            print(json.dumps({"rssBytesPerCheckpoint": round(growth)}), flush=True)
    finally:
        if not args.keep and made:
            # The temp dir, or each store built in a --dir the caller owns.
            for path in made if args.dir else made[:1]:
                print(f"removing {path}", file=sys.stderr)
                shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
