"""Live migrations on real nodes: a real kubelet checkpoints, a real containerd restores, through lpm.

The cluster is lab/cluster.py's: kube-apiserver, kube-controller-manager, kube-scheduler, and three nodes,
each a kubelet v1.37 over containerd 2.3 + runc + CRIU in namespaces of its own; node-c's containerd lacks
the restore opt-in (enable_experimental_restore_via_create), so a migration to it must be refused before
anything is checkpointed. The scenario is
lab/live.py's, the code the README's run command shows: it raises ``MigrationFailed`` (with the
migration's status, the agents' and the nodes' logs) unless every counter goes on on node-b from the value
it was checkpointed at and the source pod is gone. Progress lines are printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab.agent import AgentProcess
from lab.cluster import RealCluster
from lab.manifests import AGENT_NAMESPACE
from lab.live import MIGRATE_TO, NAMESPACE, SOURCE, TARGET, host_agents, migrate, read_logs, run_pod

NO_RESTORE = "node-c"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET, NO_RESTORE), restore_via_create={NO_RESTORE: False}) as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def agents(cluster: RealCluster) -> Iterator[dict[str, AgentProcess]]:
    with host_agents(cluster) as started:
        yield started


@pytest.mark.asyncio
async def test_counter_moves_to_node_b_on_real_kubelets(cluster: RealCluster,
                                                        agents: dict[str, AgentProcess]) -> None:
    await run_pod(cluster, "counter", ("count",), SOURCE)
    outcome = await migrate(cluster, agents, "counter", ("count",), print)
    assert outcome.restored_pod.startswith("counter-restored-")


@pytest.mark.asyncio
async def test_two_containers_each_keep_their_state(cluster: RealCluster,
                                                    agents: dict[str, AgentProcess]) -> None:
    await run_pod(cluster, "pair", ("left", "right"), SOURCE)
    outcome = await migrate(cluster, agents, "pair", ("left", "right"), print)
    assert outcome.restored_pod.startswith("pair-restored-")


@pytest.mark.asyncio
async def test_a_node_that_cannot_restore_is_refused_before_the_checkpoint(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    lease = cp.admin.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/leases/"
                                    f"lpm-node-{NO_RESTORE}")["metadata"]["annotations"]
    assert lease["lpm.my.domain/restore-capable"] == "false", lease
    assert "enable_experimental_restore_via_create=false" in lease["lpm.my.domain/restore-capability"], lease

    await run_pod(cluster, "stay", ("count",), SOURCE)
    cp.admin.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/stay",
                     {"metadata": {"annotations": {MIGRATE_TO: NO_RESTORE}}},
                     content_type="application/merge-patch+json")
    deadline = time.monotonic() + 60
    while (migration := _migration_of(cluster, "stay")) is None or \
            migration.get("status", {}).get("phase") not in ("Failed", "Succeeded"):
        assert time.monotonic() < deadline, f"no outcome: {migration}\n{''.join(agents[SOURCE].raw[-20:])}"
        await asyncio.sleep(0.2)
    status = migration["status"]
    assert status["phase"] == "Failed", status
    assert NO_RESTORE in status["message"] and "enable_experimental_restore_via_create=false" in status["message"]
    # Nothing was checkpointed: no request to node-a's kubelet, no archive, the pod counting on where it was.
    assert not list(cluster.nodes[SOURCE].checkpoint_dir.glob("checkpoint-stay_*")), \
        sorted(p.name for p in cluster.nodes[SOURCE].checkpoint_dir.iterdir())
    assert not [line for line in agents[SOURCE].logs("container checkpointed") if line.get("pod") == f"{NAMESPACE}/stay"]
    before = len(read_logs(cp, "stay", "count"))
    await asyncio.sleep(1)
    pod = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/stay")
    assert pod["spec"]["nodeName"] == SOURCE and pod["status"]["phase"] == "Running"
    assert len(read_logs(cp, "stay", "count")) > before  # still counting
    events = cp.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=involvedObject.name%3Dstay")
    refused = [e for e in events["items"] if e["reason"] == "MigrationRefused"]
    assert refused and refused[0]["type"] == "Warning", [e["reason"] for e in events["items"]]


def _migration_of(cluster: RealCluster, pod: str) -> dict[str, Any] | None:
    items = cluster.control_plane.admin.request(
        "GET", f"/apis/lpm.my.domain/v1/namespaces/{NAMESPACE}/podmigrations")["items"]
    return next((m for m in items if m["spec"]["podName"] == pod), None)
