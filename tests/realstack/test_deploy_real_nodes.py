"""lpm as users run it, on real nodes: deployed from deploy/ by kustomize, its agents the DaemonSet's pods.

lab/deployed.py imports the image built from the Dockerfile into each node's containerd and applies
lab/deploy/ (deploy/base + the containerd restore component, a hostPath PV over each node's view of the
store); the real DaemonSet controller starts an agent pod per node, the real CronJob controller starts the
collector. Then the migration of lab/live.py runs with those pods as the agents: they reach the apiserver
through the kubernetes Service, the kubelet at the node's address with the cluster CA from
kube-root-ca.crt, the store through the claim, and containerd through its socket and the node's ctr.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab.cluster import RealCluster
from lab.deployed import PodAgent, deploy, pods_report
from lab.live import NAMESPACE, SOURCE, TARGET, migrate, run_pod
from lab.manifests import AGENT_NAMESPACE

_CRONJOB_TIMEOUT = 150.0  # the schedule is every minute; the Job then runs one collector pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET)) as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def agents(cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PodAgent]:
    return deploy(cluster, tmp_path_factory.mktemp("lpm-image"))


@pytest.mark.asyncio
async def test_the_daemonsets_agents_migrate_a_counter(cluster: RealCluster, agents: dict[str, PodAgent]) -> None:
    await run_pod(cluster, "counter", ("count",), SOURCE)
    outcome = await migrate(cluster, agents, "counter", ("count",), print)
    restored = cluster.control_plane.admin.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{outcome.restored_pod}")
    assert restored["spec"]["nodeName"] == TARGET


def _collector_jobs(cluster: RealCluster) -> list[dict[str, Any]]:
    jobs = cluster.control_plane.admin.request("GET", f"/apis/batch/v1/namespaces/{AGENT_NAMESPACE}/jobs")["items"]
    return [j for j in jobs if any(o.get("kind") == "CronJob" and o.get("name") == "lpm-gc"
                                   for o in j["metadata"].get("ownerReferences", []))]


def test_the_cronjob_controller_runs_the_collector(cluster: RealCluster, agents: dict[str, PodAgent]) -> None:
    deadline = time.monotonic() + _CRONJOB_TIMEOUT
    while not any(job.get("status", {}).get("succeeded") for job in _collector_jobs(cluster)):
        failed = [job for job in _collector_jobs(cluster) if job.get("status", {}).get("failed")]
        if failed or time.monotonic() > deadline:
            pytest.fail(f"no collector Job succeeded (jobs: {[j.get('status') for j in _collector_jobs(cluster)]}):\n"
                        f"{pods_report(cluster)}")
        time.sleep(2)
