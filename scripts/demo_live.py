"""The README's live demo: a counting process moves from node-a to node-b on real nodes and goes on counting.

    .venv/bin/python scripts/demo_live.py         (root; scripts/setup --for-live first)

A local cluster on real parts (lab/cluster.py): etcd + kube-apiserver with lpm's CRDs and RBAC,
kube-controller-manager and kube-scheduler, and two nodes, each a real kubelet over containerd + runc +
CRIU in namespaces of its own; an lpm agent per node and one shared store seen through two bindfs views.
Then lab/live.py's scenario, the same code tests/realstack/test_real_nodes.py runs: the counter pod is
annotated ``lpm.my.domain/migrate-to: node-b`` and every step is printed as it happens. Everything is torn
down at the end, also on failure, Ctrl-C or SIGTERM. Exit 0 only if the counter went on on node-b from
the value it was checkpointed at; 1 if it did not; 130 if interrupted.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable

from lab.cluster import ClusterError, RealCluster
from lab.controlplane import ControlPlaneError
from lab.live import NAMESPACE, SOURCE, TARGET, MigrationFailed, host_agents, migrate, run_pod
from lab.node import NodeError
from lab.sandbox import SandboxError


def main() -> int:
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.2f} s] {line}", flush=True)

    # Ctrl-C tears down: inside asyncio.run, SIGINT cancels the scenario (its finally blocks stop the
    # agents and the mounts); outside, it raises KeyboardInterrupt through the cluster's context manager.
    # Set explicitly because a shell starts a background job with SIGINT ignored, and SIGTERM is made to
    # do the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        with RealCluster((SOURCE, TARGET)) as cluster:
            cp = cluster.control_plane
            say(f"control plane: etcd + kube-apiserver, kube-controller-manager, kube-scheduler at {cp.server}; "
                "lpm's CRDs and RBAC applied")
            infos = [cp.admin.request("GET", f"/api/v1/nodes/{n}")["status"]["nodeInfo"] for n in cluster.nodes]
            versions = sorted({f"kubelet {i['kubeletVersion']}, {i['containerRuntimeVersion'].replace('://', ' v')}"
                               for i in infos})
            say(f"nodes: {', '.join(cluster.nodes)}: {'; '.join(versions)}; runc + CRIU 4, each in its own "
                "mount, network, PID and UTS namespaces; serving certificates from the cluster CA")
            cp.create_namespace(NAMESPACE)
            asyncio.run(_scenario(cluster, say))
    except KeyboardInterrupt:
        say("interrupted: everything torn down")
        return 130
    except (MigrationFailed, ClusterError, NodeError, ControlPlaneError, SandboxError) as e:
        say(f"LIVE DEMO FAILED: {e}")
        say("everything torn down")
        return 1
    say("done: control plane, nodes, agents, containers and mounts torn down")
    return 0


async def _scenario(cluster: RealCluster, say: Callable[[str], None]) -> None:
    with host_agents(cluster) as agents:
        say("agents: lpm agent for each node, as the lpm-agent ServiceAccount, watching")
        await run_pod(cluster, "counter", ("count",), SOURCE)
        say(f"pod {NAMESPACE}/counter counting on {SOURCE} (scheduled there by kube-scheduler)")
        await migrate(cluster, agents, "counter", ("count",), say)


if __name__ == "__main__":
    sys.exit(main())
