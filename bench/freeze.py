"""The freeze window at size, on the live lab: a pod holding SIZE of live memory moves from node-a to node-b.

    .venv/bin/python bench/freeze.py [--sizes 64M,512M,2G] [--rounds N]      (as root; builds what it needs)

The workload is bench/memhold: SIZE of written memory, a third zero pages, a third compressible text, a third
random bytes; after the restore it checks every byte against its seed, and the round fails unless it says
"verified". Each round is lab/live.py's migration (real kubelets over containerd 2.3, runc, CRIU 4.2, lpm's
agents, one shared store seen through two bindfs views). One line per size, medians over the rounds:

    size=512MiB freeze=X.XXs floor=Y.YYs copy=Z.ZZs overhead=W.WWs

- ``freeze``: the last counter line on node-a before the checkpoint's pause -> the first on node-b.
- ``floor``: what the runtime itself spends in that same migration, from its own logs: the kubelet's
  checkpoint (CRIU dump and the kubelet's tar), the pod sandbox, containerd's restore preparation and the
  CRIU restore. It is not a separate run: containerd restores only from an image, so an "archive handed over
  by path" restore is not something it can be asked for.
- ``copy``: the original design's transport added to the floor, measured in the same run on the same
  archive: the kubelet's uncompressed archive copied into the shared store (``cp`` + ``sync``), then read
  back with O_DIRECT (nothing from the page cache).
- ``overhead`` = freeze - floor: what lpm adds.

Then the phase breakdown (medians), and the targets: overhead <= 0.5 s + 0.25 s per GiB, freeze < copy from
512 MiB up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.cluster import RealCluster  # noqa: E402
from lab.holders import install_memhold, run_holder  # noqa: E402
from lab.holders import logs as holder_logs  # noqa: E402
from lab.live import NAMESPACE, SOURCE, TARGET, Outcome, host_agents, migrate  # noqa: E402

_RUNTIME = ("checkpoint", "pod sandbox", "restore prepare", "CRIU restore")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def parse_size(text: str) -> int:
    """'512M' -> bytes (MiB multiples only: memhold holds whole MiB)."""
    number, unit = text[:-1], text[-1:].upper()
    if unit not in _UNITS or not number.isdigit() or int(number) * _UNITS[unit] % 2**20:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a number of MiB or GiB like 64M or 2G")
    return int(number) * _UNITS[unit]


def _archive_of(cluster: RealCluster, pod: str) -> Path:
    found = sorted(cluster.nodes[SOURCE].checkpoint_dir.glob(f"checkpoint-{pod}_{NAMESPACE}-hold-*.tar"))
    if not found:
        raise SystemExit(f"no kubelet archive of {pod} left in node-a's checkpoint directory")
    return found[-1]


def _copy_seconds(archive: Path, store: Path) -> float:
    """cp + sync into the store, then an O_DIRECT read back: the uncompressed transport."""
    target = store / ".bench-copy"
    started = time.monotonic()
    subprocess.run(["cp", str(archive), str(target)], check=True)
    subprocess.run(["sync", "-f", str(target)], check=True)
    subprocess.run(["dd", f"if={target}", "of=/dev/null", "bs=4M", "iflag=direct", "status=none"], check=True)
    seconds = time.monotonic() - started
    target.unlink()
    return seconds


async def _round(cluster: RealCluster, agents: dict, size: int, index: int) -> dict[str, float]:
    name = f"hold-{size // 2**20}m-{index}"
    await run_holder(cluster, name, size, SOURCE)
    outcome: Outcome = await migrate(cluster, agents, name, ("hold",), lambda line: None)
    await asyncio.sleep(max(2.0, size / 2**30 * 4))  # the restored process checks every byte
    logs = await asyncio.to_thread(holder_logs, cluster, outcome.restored_pod)
    if f"verified {size // 2**20} MiB" not in logs or "CORRUPT" in logs:
        raise SystemExit(f"{name}: the restored memory was not verified: {logs[-300:]}")
    copy = _copy_seconds(_archive_of(cluster, name), cluster.store_views[SOURCE])
    floor = sum(outcome.phases[p] for p in _RUNTIME)
    cluster.control_plane.admin.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{outcome.restored_pod}")
    return {"freeze": outcome.freeze_seconds, "floor": floor, "copy": floor + copy,
            "overhead": outcome.freeze_seconds - floor, **outcome.phases}


async def main(sizes: list[int], rounds: int) -> int:
    failed = False
    with RealCluster((SOURCE, TARGET)) as cluster:
        cluster.control_plane.create_namespace(NAMESPACE)
        install_memhold(cluster)
        with host_agents(cluster) as agents:
            for size in sizes:
                results = [await _round(cluster, agents, size, i) for i in range(rounds)]
                median = {k: statistics.median(r[k] for r in results) for k in results[0]}
                gib = size / 2**30
                label = f"{size // 2**30}GiB" if size % 2**30 == 0 else f"{size // 2**20}MiB"
                print(f"size={label} freeze={median['freeze']:.2f}s floor={median['floor']:.2f}s "
                      f"copy={median['copy']:.2f}s overhead={median['overhead']:.2f}s", flush=True)
                print("  phases: " + ", ".join(f"{k} {v:.2f}" for k, v in median.items()
                                               if k not in ("freeze", "floor", "copy", "overhead")), flush=True)
                budget = 0.5 + 0.25 * gib
                overhead_ok = median["overhead"] <= budget
                copy_ok = size < 512 * 2**20 or median["freeze"] < median["copy"]
                failed |= not (overhead_ok and copy_ok)
                print(f"  target overhead <= {budget:.2f}s: {'met' if overhead_ok else 'MISSED'}; "
                      f"freeze < copy: {'met' if copy_ok else 'MISSED'}"
                      + ("" if size >= 512 * 2**20 else " (not asked below 512 MiB)"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64M,512M,2G", type=lambda s: [parse_size(p) for p in s.split(",")])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/freeze.py needs root (the lab's nodes)")
    raise SystemExit(asyncio.run(main(args.sizes, args.rounds)))
