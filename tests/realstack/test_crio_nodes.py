"""The live migration on real nodes that run CRI-O: a real kubelet over CRI-O checkpoints, CRI-O restores.

lab/cluster.py with ``runtime="crio"``: kubelet v1.37 over CRI-O v1.36.3 + runc + CRIU on each node
(lab/crio.py has every setting and its why). node-b's agent imports the checkpoint image into node-b's
containers-storage (the ``containers-storage`` importer, skopeo in the node), and CRI-O restores the
container from it when node-b's kubelet creates the pod. The scenario is lab/live.py's, as for containerd.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.agent import AgentProcess
from lab.cluster import RealCluster
from lab.live import NAMESPACE, SOURCE, TARGET, host_agents, migrate, run_pod
from lab.manifests import AGENT_NAMESPACE


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET), runtime="crio") as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def agents(cluster: RealCluster) -> Iterator[dict[str, AgentProcess]]:
    with host_agents(cluster) as started:
        yield started


@pytest.mark.asyncio
async def test_counter_moves_between_crio_nodes(cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    admin = cluster.control_plane.admin
    info = admin.request("GET", f"/api/v1/nodes/{TARGET}")["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("cri-o://1.36"), info
    # node-b's agent asked CRI-O itself (enable_criu_support) and says it restores.
    lease = admin.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NAMESPACE}/leases/"
                                 f"lpm-node-{TARGET}")["metadata"]["annotations"]
    assert lease["lpm.my.domain/restore-capable"] == "true", lease
    await run_pod(cluster, "counter", ("count",), SOURCE)
    outcome = await migrate(cluster, agents, "counter", ("count",), print)
    assert outcome.restored_pod.startswith("counter-restored-")
