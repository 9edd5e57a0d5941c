"""Concurrent migrations on the live lab: aggregate throughput against one migration alone, and the agent's peak RSS.

    .venv/bin/python bench/concurrency.py [--size 64M] [--burst 8] [--limit 4]      (as root; builds what it needs)

On lab/cluster.py's two real nodes (kubelets over containerd 2.3, runc, CRIU 4.2), with lpm's agents on the
host and one shared store seen through two bindfs views:

1. one: one pod holding SIZE of checked memory (bench/memhold) moves from node-a to node-b, alone;
2. burst: BURST such pods leave node-a while two leave node-b for node-a, all annotated at once, with node-a's
   agent allowed LIMIT checkpoints at a time (--max-concurrent-checkpoints);

and prints, for each, the seconds from the annotations to the last migration's end, the megabytes of memory
moved per second (the pods' SIZE summed over that time), the burst's ratio to one alone, how many requests
were queued, and node-a's agent's peak RSS (VmHWM of a fresh agent) against the DaemonSet's 1 GiB limit.
Every restored pod must verify every byte of its own memory, or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.freeze import parse_size  # noqa: E402
from lab.cluster import RealCluster  # noqa: E402
from lab.holders import MIB, NAMESPACE, Moved, install_memhold, migrate_at_once, run_holder, verified  # noqa: E402
from lab.live import SOURCE, TARGET, host_agents, start_agent  # noqa: E402

LIMIT = 1 << 30  # the DaemonSet's memory limit (deploy/base)


async def _batch(cluster: RealCluster, sizes: dict[str, int], home: dict[str, str]) -> dict[str, Moved]:
    await asyncio.gather(*(run_holder(cluster, pod, size, home[pod]) for pod, size in sizes.items()))
    moved = await migrate_at_once(cluster, {pod: TARGET if home[pod] == SOURCE else SOURCE for pod in sizes},
                                  timeout=1800)
    failed = {pod: m.message for pod, m in moved.items() if m.phase != "Succeeded"}
    if failed:
        raise SystemExit(f"migrations failed: {failed}")
    for pod, outcome in moved.items():
        assert outcome.restored_pod is not None
        await verified(cluster, outcome.restored_pod, sizes[pod], timeout=120 + sizes[pod] / MIB)
    for outcome in moved.values():
        cluster.control_plane.admin.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{outcome.restored_pod}")
    return moved


def _line(label: str, sizes: dict[str, int], moved: dict[str, Moved]) -> float:
    seconds = max(m.seconds for m in moved.values())
    rate = sum(sizes.values()) / seconds / 1e6
    queued = sum(any(said.startswith("queued on node") for said in m.messages) for m in moved.values())
    print(f"{label}: {len(moved)} migrations, {sum(sizes.values()) // MIB} MiB in {seconds:.2f}s = {rate:.1f} MB/s; "
          f"{queued} queued", flush=True)
    return rate


async def main(size: int, burst: int, limit: int) -> int:
    with RealCluster((SOURCE, TARGET)) as cluster:
        cluster.control_plane.create_namespace(NAMESPACE)
        install_memhold(cluster)
        with host_agents(cluster) as agents:
            one = {"alone": size}
            alone = _line("one", one, await _batch(cluster, one, {"alone": SOURCE}))
            agents[SOURCE].stop()  # a fresh agent, so its high-water mark is the burst's
            agents[SOURCE] = start_agent(cluster.control_plane, cluster.nodes[SOURCE], cluster.store_views[SOURCE],
                                         "--max-concurrent-checkpoints", str(limit))
            agents[SOURCE].wait_logged("cluster mode watching")
            # Sizes differ by a MiB each: a restored pod holding another pod's memory would not verify.
            sizes = {**{f"burst-a{i}": size + i * MIB for i in range(burst)},
                     **{f"burst-b{i}": size + (burst + i) * MIB for i in range(2)}}
            home = {pod: SOURCE if pod.startswith("burst-a") else TARGET for pod in sizes}
            rate = _line(f"burst (node-a: {burst} out, at most {limit} at once; node-b: 2 out)", sizes,
                         await _batch(cluster, sizes, home))
            peak = agents[SOURCE].peak_rss()
            print(f"burst/one: {rate / alone:.2f}x aggregate throughput; node-a's agent peak RSS {peak / MIB:.0f} MiB "
                  f"({'within' if peak < LIMIT else 'PAST'} the 1 GiB limit)", flush=True)
            return 0 if peak < LIMIT else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64M", type=parse_size)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--limit", type=int, default=4)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/concurrency.py needs root (the lab's nodes)")
    raise SystemExit(asyncio.run(main(args.size, args.burst, args.limit)))
