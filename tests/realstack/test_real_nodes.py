"""Live migrations on real nodes: a real kubelet checkpoints, a real containerd restores, through lpm.

The cluster is lab/cluster.py's: kube-apiserver, kube-controller-manager, kube-scheduler, and two nodes,
each a kubelet v1.37 over containerd 2.3 + runc + CRIU in namespaces of its own. The scenario is
lab/live.py's, the code the README's run command shows: it raises ``MigrationFailed`` (with the
migration's status, the agents' and the nodes' logs) unless every counter goes on on node-b from the value
it was checkpointed at and the source pod is gone. Progress lines are printed (pytest -s shows them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.agent import AgentProcess
from lab.cluster import RealCluster
from lab.live import NAMESPACE, SOURCE, TARGET, migrate, run_pod, start_agent


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET)) as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def agents(cluster: RealCluster) -> Iterator[dict[str, AgentProcess]]:
    started = {name: start_agent(cluster.control_plane, cluster.nodes[name], cluster.store_views[name])
               for name in (SOURCE, TARGET)}
    try:
        for agent in started.values():
            agent.wait_logged("cluster mode watching")
        yield started
    finally:
        for agent in started.values():
            if agent.proc.poll() is None:
                agent.stop()


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
