"""A migration's target must be able to restore: checked before the source is checkpointed.

On the real apiserver, with the real ``lpm agent`` processes and the kubelet stand-ins of
test_agent_cluster; node-b's agent asks a real containerd v2.3.7 (tests/restore/containerd.py) over
its CRI socket, configured with or without ``enable_experimental_restore_via_create``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.agent import AgentProcess
from tests.realstack.test_agent_cluster import Cluster, cluster, eventually  # noqa: F401 (fixture)
from tests.restore.containerd import run_containerd
from watcher.cluster.presence import lease_body
from watcher.runtime.capability import Capability, Verdict

pytestmark = pytest.mark.realstack
MIGRATE_TO = "lpm.my.domain/migrate-to"
NOT_CAPABLE = "containerd 2.3.7, enable_experimental_restore_via_create=false"


def _lease(cluster: Cluster, node: str) -> dict[str, Any] | None:
    leases = cluster.api("GET", f"/apis/coordination.k8s.io/v1/namespaces/{cluster.namespace}/leases")["items"]
    return next((lease for lease in leases if lease["metadata"]["name"] == f"lpm-node-{node}"), None)


def _get(agent: AgentProcess, path: str) -> tuple[int, str]:
    [served] = agent.wait_logged("health endpoints served")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _capable_samples(agent: AgentProcess) -> list[tuple[dict[str, str], float]]:
    status, text = _get(agent, "/metrics")
    assert status == 200, text
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "lpm_runtime_restore_capable"]


async def _refused(cluster: Cluster, pod: str) -> dict[str, Any]:
    """The pod's migration, once Failed; asserts that nothing was checkpointed and the pod is untouched."""
    [done] = await eventually(lambda: [m for m in cluster.items("podmigrations")
                                       if m["spec"]["podName"] == pod and m.get("status", {}).get("phase")],
                              what=f"{pod}'s PodMigration to leave Pending")
    assert done["status"]["phase"] == "Failed", done["status"]
    assert cluster.nodes["node-a"].kubelet.requests == [], "the source was checkpointed"
    assert cluster.items("podcheckpoints") == []
    source = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/{pod}")
    assert source["metadata"].get("deletionTimestamp") is None and source["spec"]["nodeName"] == "node-a"
    [event] = [e for e in cluster.events(pod) if e["reason"] == "MigrationRefused"]
    assert (event["type"], event["message"]) == ("Warning", done["status"]["message"]), event
    return done


@pytest.mark.asyncio
async def test_a_target_whose_containerd_cannot_restore_is_refused_before_the_checkpoint(cluster: Cluster) -> None:
    with run_containerd() as containerd:  # no opt-in: containerd 2.3.7 will not restore through CreateContainer
        target = cluster.start_agent("node-b", "--runtime-endpoint", f"unix://{containerd.address}")
        lease = _lease(cluster, "node-b")
        assert lease is not None, "node-b's agent wrote no Lease"
        assert lease["metadata"]["annotations"] == {"lpm.my.domain/restore-capable": "false",
                                                    "lpm.my.domain/restore-capability": NOT_CAPABLE}, lease
        assert lease["spec"]["holderIdentity"] == "node-b" and lease["spec"]["leaseDurationSeconds"] == 90
        ready = await eventually(lambda: (answer := _get(target, "/readyz"))[0] == 200 and answer,
                                 what="node-b's agent to be ready")
        assert ready[1] == f"ok\nrestore: not capable ({NOT_CAPABLE})\n"  # ready all the same: it checkpoints
        assert _capable_samples(target) == [({"runtime": "containerd", "version": "2.3.7", "verdict": "false"}, 0)]

        cluster.create_pod("stay-0", "node-a", annotations={MIGRATE_TO: "node-b"})
        cluster.start_agent("node-a")
        done = await _refused(cluster, "stay-0")
    assert done["status"]["message"] == f"target node node-b cannot restore checkpoints: {NOT_CAPABLE}"


@pytest.mark.asyncio
async def test_a_target_whose_containerd_opted_in_gets_the_migration(cluster: Cluster) -> None:
    with run_containerd(restore_via_create=True) as containerd:
        # No --runtime-endpoint: with --importer containerd the agent asks the daemon it imports into.
        target = cluster.start_agent("node-b", "--importer", "containerd", "--containerd-address",
                                     containerd.address, "--ctr", str(containerd.ctr_binary),
                                     "--restore-work-dir", str(cluster.tmp / "work-b"))
        assert _capable_samples(target) == [({"runtime": "containerd", "version": "2.3.7", "verdict": "true"}, 1)]
        cluster.create_pod("go-0", "node-a", annotations={MIGRATE_TO: "node-b"})
        cluster.start_agent("node-a")
        restored = await eventually(lambda: [m["status"]["restoredPodName"] for m in cluster.items("podmigrations")
                                             if m.get("status", {}).get("restoredPodName")],
                                    what="the restored pod on node-b",
                                    state=lambda: [(m["metadata"]["name"], m.get("status"))
                                                   for m in cluster.items("podmigrations")])
        # The checkpoint image is in the daemon's CRI namespace, where its restore would read it.
        image = cluster.api("GET", f"/api/v1/namespaces/{cluster.namespace}/pods/{restored[0]}")["spec"][
            "containers"][0]["image"]
        assert image in containerd.ctr("images", "ls", "-q").stdout.split(), image
    assert [status for _, status in cluster.nodes["node-a"].kubelet.requests] == [200]
    assert _lease(cluster, "node-b")["metadata"]["annotations"]["lpm.my.domain/restore-capable"] == "true"  # type: ignore[index]


@pytest.mark.asyncio
async def test_a_target_without_a_live_agent_is_refused(cluster: Cluster) -> None:
    cluster.create_pod("alone-0", "node-a", annotations={MIGRATE_TO: "node-b"})
    cluster.start_agent("node-a")
    done = await _refused(cluster, "alone-0")
    assert done["status"]["message"] == f"no lpm agent on node-b: no Lease {cluster.namespace}/lpm-node-node-b"

    # A Lease its agent stopped renewing an hour ago: that agent is gone, whatever it said then.
    last = datetime.now(UTC) - timedelta(hours=1)
    cluster.api("POST", f"/apis/coordination.k8s.io/v1/namespaces/{cluster.namespace}/leases",
                lease_body(cluster.namespace, "node-b", Capability(Verdict.CAPABLE, "containerd", "2.3.7", "x"), last))
    cluster.create_pod("alone-1", "node-a", annotations={MIGRATE_TO: "node-b"})
    done = await _refused(cluster, "alone-1")
    assert done["status"]["message"] == (f"no live lpm agent on node-b: Lease {cluster.namespace}/lpm-node-node-b "
                                         f"last renewed {last.strftime('%Y-%m-%dT%H:%M:%SZ')}, over 90 s ago")


def _runtime_version(cluster: Cluster, node: str, reported: str | None) -> None:
    """What the node's kubelet reports in the Node's status: its runtime and version."""
    body = cluster.api("GET", f"/api/v1/nodes/{node}")
    info = body["status"].setdefault("nodeInfo", {})
    if reported is None:
        info.pop("containerRuntimeVersion", None)
    else:
        info["containerRuntimeVersion"] = reported
    cluster.api("PUT", f"/api/v1/nodes/{node}/status", body)


@pytest.mark.asyncio
async def test_without_a_cri_endpoint_the_nodes_runtime_version_decides(cluster: Cluster) -> None:
    _runtime_version(cluster, "node-b", "containerd://2.4.2")
    try:
        target = cluster.start_agent("node-b", "--runtime-endpoint", "none")
        reason = "containerd 2.4.2, containerd 2.4 removed restore through CRI CreateContainer"
        ready = await eventually(lambda: (answer := _get(target, "/readyz"))[0] == 200 and answer,
                                 what="node-b's agent to be ready")
        assert ready[1] == f"ok\nrestore: not capable ({reason})\n"
        cluster.create_pod("old-0", "node-a", annotations={MIGRATE_TO: "node-b"})
        cluster.start_agent("node-a")
        done = await _refused(cluster, "old-0")
        assert done["status"]["message"] == f"target node node-b cannot restore checkpoints: {reason}"
    finally:
        _runtime_version(cluster, "node-b", None)  # nodes are cluster-scoped: leave node-b as the fixture made it


@pytest.mark.asyncio
async def test_a_runtime_reconfigured_under_a_running_agent_is_seen_at_the_next_renewal(cluster: Cluster) -> None:
    # The agent's endpoint is a symlink, switched from a containerd without the opt-in to one with it: what
    # an operator's edit of config.toml and a containerd restart look like to the agent.
    endpoint = cluster.tmp / "cri.sock"
    with run_containerd() as before, run_containerd(restore_via_create=True) as after:
        endpoint.symlink_to(before.address)
        target = cluster.start_agent("node-b", "--runtime-endpoint", f"unix://{endpoint}")
        assert _lease(cluster, "node-b")["metadata"]["annotations"]["lpm.my.domain/restore-capable"] == "false"  # type: ignore[index]
        endpoint.unlink()
        endpoint.symlink_to(after.address)
        renewed = await eventually(
            lambda: (lease := _lease(cluster, "node-b")) and
            lease["metadata"]["annotations"]["lpm.my.domain/restore-capable"] == "true" and lease,
            timeout=45, what="node-b's Lease to say capable within one renewal (30 s)")
        assert renewed["metadata"]["annotations"]["lpm.my.domain/restore-capability"] == \
            "containerd 2.3.7, enable_experimental_restore_via_create=true"
        status, body = _get(target, "/readyz")
        assert (status, body.splitlines()[-1]) == (
            200, "restore: capable (containerd 2.3.7, enable_experimental_restore_via_create=true)"), body
        assert _capable_samples(target) == [({"runtime": "containerd", "version": "2.3.7", "verdict": "true"}, 1)]
