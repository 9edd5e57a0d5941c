"""Migrating the pods users run: a Deployment's replicas, behind Services and disruption budgets; and the pods
lpm refuses to move, refused before anything is checkpointed.

The cluster is lab/cluster.py's two real nodes (kubelet v1.37 over containerd 2.3, runc, CRIU) with the real
kube-controller-manager (ReplicaSet, Deployment, StatefulSet, Job, DaemonSet, disruption, EndpointSlice and
PV controllers) and kube-scheduler, and lpm's agents on both nodes. Each workload's pods count in memory, so a
restored pod shows it carries the source's state (its counter goes on) where a fresh replica would count from 1.
``PodHistory`` watches every pod the controllers start for the whole migration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.agent import AgentProcess
from lab.apiclient import ApiError
from lab.cluster import RealCluster
from lab.controlplane import ControlPlane
from lab.live import NAMESPACE, SOURCE, TARGET, Line, annotate, host_agents, read_logs
from lab.workloads import (
    APPS,
    PODS,
    PodHistory,
    counted_on,
    deployment,
    disruption_budget,
    first_count_after_start,
    migration_of,
    outcome,
    pod_template,
    pods,
    running,
    wait_for,
)

PIN = {"nodeSelector": {"kubernetes.io/hostname": SOURCE}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RealCluster]:
    with RealCluster((SOURCE, TARGET)) as real:
        real.control_plane.create_namespace(NAMESPACE)
        yield real


@pytest.fixture(scope="module")
def agents(cluster: RealCluster) -> Iterator[dict[str, AgentProcess]]:
    with host_agents(cluster) as started:
        yield started


def _explain(cluster: RealCluster, agents: dict[str, AgentProcess]) -> str:
    return "\n".join(f"--- {name}'s agent:\n" + "".join(agent.raw[-15:]) for name, agent in agents.items()) \
        + f"\n{cluster.node_failure()}"


def _post(cp: ControlPlane, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return cp.admin.request("POST", path, body)


def _patch(cp: ControlPlane, path: str, patch: dict[str, Any]) -> None:
    cp.admin.request("PATCH", path, patch, content_type="application/merge-patch+json")


def _ready_replicas(cp: ControlPlane, app: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        found = pods(cp, f"app%3D{app}")
        return found if len(found) == count and all(running(p) and len(read_logs(cp, p["metadata"]["name"], "count"))
                                                    >= 3 for p in found) else None
    return wait_for(f"{count} counting replicas of {app}", ready, 120, lambda: str(pods(cp, f"app%3D{app}")))


def _replica_set_uid(cp: ControlPlane, pod: dict[str, Any]) -> str:
    [owner] = [r for r in pod["metadata"]["ownerReferences"] if r.get("controller")]
    assert owner["kind"] == "ReplicaSet"
    return str(owner["uid"])


def test_a_deployments_replica_moves_and_its_replica_set_counts_the_restored_pod(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    _post(cp, f"{APPS}/deployments", deployment("web", 2, **PIN))
    _post(cp, f"/api/v1/namespaces/{NAMESPACE}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    replicas = _ready_replicas(cp, "web", 2)
    source = replicas[0]
    name, rs_uid = source["metadata"]["name"], _replica_set_uid(cp, source)
    history = PodHistory(cp)
    before = counted_on(cp, name)

    annotate(cp, name, TARGET)
    migration = outcome(cp, name, explain=lambda: _explain(cluster, agents))
    assert migration["status"]["phase"] == "Succeeded", f"{migration['status']}\n{_explain(cluster, agents)}"
    restored_name = migration["status"]["restoredPodName"]

    # Exactly spec.replicas pods, the source gone, the restored one the ReplicaSet's own and carrying the state.
    final = wait_for("the source to go", lambda: (lambda found: found if len(found) == 2 else None)(
        pods(cp, "app%3Dweb")), 60, lambda: str([p["metadata"]["name"] for p in pods(cp, "app%3Dweb")]))
    names = {p["metadata"]["name"] for p in final}
    assert restored_name in names and name not in names, names
    restored = next(p for p in final if p["metadata"]["name"] == restored_name)
    assert restored["spec"]["nodeName"] == TARGET
    assert _replica_set_uid(cp, restored) == rs_uid
    assert restored["metadata"]["labels"]["app"] == "web"
    assert first_count_after_start(cp, restored) > before, "the restored pod counts from where the source was"
    replica_set = next(r for r in cp.admin.request("GET", f"{APPS}/replicasets")["items"]
                       if r["metadata"]["uid"] == rs_uid)
    assert replica_set["status"]["replicas"] == 2 and replica_set["status"].get("readyReplicas") == 2
    # At no moment did the ReplicaSet start a pod of its own: the one pod created is the restored one.
    created = history.stop()
    assert set(created) == {restored_name}, sorted(created)

    # The Service's endpoints moved to it with the EndpointSlice controller.
    def endpoints() -> set[str] | None:
        slices = cp.admin.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
                                         "?labelSelector=kubernetes.io%2Fservice-name%3Dweb")["items"]
        found = {e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or []
                 if e.get("conditions", {}).get("ready")}
        return found if found == names else None
    wait_for("the Service's endpoints to be the two replicas", endpoints, 30)


def test_a_disruption_budget_holds_the_source_until_it_allows(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    _post(cp, f"{APPS}/deployments", deployment("guarded", 1, **PIN))
    _post(cp, f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets",
          disruption_budget("guarded", "guarded", 1))
    [source] = _ready_replicas(cp, "guarded", 1)
    name = source["metadata"]["name"]
    history = PodHistory(cp)

    annotate(cp, name, TARGET)

    def held() -> dict[str, Any] | None:
        migration = migration_of(cp, name)
        status = (migration or {}).get("status", {})
        assert status.get("phase") != "Failed", status
        return migration if "eviction refused" in status.get("message", "") else None
    migration = wait_for("the budget to refuse the eviction", held, 180, lambda: _explain(cluster, agents))
    message = migration["status"]["message"]
    assert migration["status"]["phase"] == "Restoring" and "guarded" in message and "disruption budget" in message
    restored_name = migration["status"]["restoredPodName"]
    restored = cp.admin.request("GET", f"{PODS}/{restored_name}")
    assert running(restored) and restored["metadata"]["annotations"]["lpm.my.domain/handover"] == "held"
    assert "app" not in restored["metadata"]["labels"], "held: no selector of the source's counts it yet"
    # Both still run, and the budget keeps holding: the source is untouched.
    assert running(cp.admin.request("GET", f"{PODS}/{name}"))

    _patch(cp, f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/guarded", {"spec": {"minAvailable": 0}})
    migration = outcome(cp, name, explain=lambda: _explain(cluster, agents))
    assert migration["status"]["phase"] == "Succeeded", f"{migration['status']}\n{_explain(cluster, agents)}"
    [only] = wait_for("one replica", lambda: (lambda found: found if len(found) == 1 else None)(
        pods(cp, "app%3Dguarded")), 60)
    assert only["metadata"]["name"] == restored_name and only["spec"]["nodeName"] == TARGET
    assert history.stop().keys() == {restored_name}


def test_a_scale_down_during_the_migration_discards_the_copy(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """The scale-down takes the source (its deletion cost is the lower): the workload no longer wants it,
    so neither does it want its restored copy, which is deleted instead of being handed over."""
    cp = cluster.control_plane
    _post(cp, f"{APPS}/deployments", deployment("shrink", 2, **PIN))
    _post(cp, f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets", disruption_budget("shrink", "shrink", 2))
    source, other = _ready_replicas(cp, "shrink", 2)
    name = source["metadata"]["name"]
    _patch(cp, f"{PODS}/{other['metadata']['name']}",
           {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "1000"}}})
    history = PodHistory(cp)

    annotate(cp, name, TARGET)
    wait_for("the budget to hold the handover",
             lambda: "eviction refused" in (migration_of(cp, name) or {}).get("status", {}).get("message", ""),
             180, lambda: _explain(cluster, agents))
    _patch(cp, f"{APPS}/deployments/shrink", {"spec": {"replicas": 1}})

    migration = outcome(cp, name, explain=lambda: _explain(cluster, agents))
    status = migration["status"]
    assert status["phase"] == "Failed" and "was removed while the migration ran" in status["message"], status
    [only] = wait_for("one replica", lambda: (lambda found: found if len(found) == 1 else None)(
        pods(cp, "app%3Dshrink")), 60)
    assert only["metadata"]["name"] == other["metadata"]["name"]
    wait_for("the held copy to be deleted", lambda: not [
        p for p in cp.admin.request("GET", PODS)["items"] if p["metadata"]["name"] == status["restoredPodName"]], 60)
    assert history.stop().keys() == {status["restoredPodName"]}


def test_a_rollout_during_the_migration_replaces_the_pod_as_it_would_have(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    _post(cp, f"{APPS}/deployments", deployment("roll", 1, **PIN))
    _post(cp, f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets", disruption_budget("roll", "roll", 1))
    [source] = _ready_replicas(cp, "roll", 1)
    name, old_hash = source["metadata"]["name"], source["metadata"]["labels"]["pod-template-hash"]
    history = PodHistory(cp)

    annotate(cp, name, TARGET)
    wait_for("the budget to hold the handover",
             lambda: "eviction refused" in (migration_of(cp, name) or {}).get("status", {}).get("message", ""),
             180, lambda: _explain(cluster, agents))
    _patch(cp, f"{APPS}/deployments/roll", {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}})

    migration = outcome(cp, name, explain=lambda: _explain(cluster, agents))
    assert migration["status"]["phase"] == "Failed", migration["status"]
    [only] = wait_for("the rollout to finish with one new replica", lambda: (lambda found: found if len(found) == 1 and
                      found[0]["metadata"]["labels"]["pod-template-hash"] != old_hash and running(found[0]) else None)(
        pods(cp, "app%3Droll")), 120)
    created = history.stop()
    # The rollout's one new pod and the discarded copy; no replacement for the migrating pod.
    assert set(created) == {only["metadata"]["name"], migration["status"]["restoredPodName"]}, sorted(created)


REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "statefulset": ("/apis/apps/v1/namespaces/live/statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "replicas": 1, "selector": {"matchLabels": {"app": "db"}},
                 "template": pod_template({"app": "db"}, **PIN)}}, "pods owned by StatefulSet db cannot migrate"),
    "job": ("/apis/batch/v1/namespaces/live/jobs", {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "batch"},
        "spec": {"template": pod_template({"app": "batch"}, restartPolicy="Never", **PIN)}},
        "the Job controller would count the source's removal as a failed pod"),
    "daemonset": ("/apis/apps/v1/namespaces/live/daemonsets", {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "everywhere"},
        "spec": {"selector": {"matchLabels": {"app": "everywhere"}},
                 "template": pod_template({"app": "everywhere"})}}, "a DaemonSet's pod belongs to its node"),
    "emptydir": ("/apis/apps/v1/namespaces/live/deployments", {
        **deployment("scratch", 1, **PIN, volumes=[{"name": "cache", "emptyDir": {}}])},
        "volumes a checkpoint cannot carry: cache (emptyDir"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_pods_that_cannot_move_are_refused_before_any_checkpoint(
        cluster: RealCluster, agents: dict[str, AgentProcess], kind: str) -> None:
    cp = cluster.control_plane
    path, body, says = REFUSED[kind]
    _post(cp, path, body)
    app = body["spec"]["template"]["metadata"]["labels"]["app"]
    [pod] = wait_for(f"{kind}'s pod counting on {SOURCE}", lambda: [
        p for p in pods(cp, f"app%3D{app}") if p["spec"].get("nodeName") == SOURCE and running(p)] or None, 120)
    _assert_refused(cluster, agents, pod["metadata"]["name"], says)


def test_a_read_write_once_claim_is_refused_before_any_checkpoint(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    _post(cp, "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "lpm-rwo"},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                 "hostPath": {"path": "/var/lib/lpm-test-rwo", "type": "DirectoryOrCreate"},
                 "claimRef": {"namespace": NAMESPACE, "name": "data"}}})
    _post(cp, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual", "volumeName": "lpm-rwo",
                 "resources": {"requests": {"storage": "1Mi"}}}})
    _post(cp, f"{APPS}/deployments", deployment("stateful", 1, **PIN, volumes=[
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]))
    [pod] = _ready_replicas(cp, "stateful", 1)
    _assert_refused(cluster, agents, pod["metadata"]["name"],
                    "data (claim data is ReadWriteOnce: only the source node may mount it)")


def _schedulers_verdict(cp: ControlPlane, name: str, spec: dict[str, Any]) -> str:
    """What the real scheduler says of a pod with ``spec`` aimed at the target node."""
    probe = {**{k: v for k, v in spec.items() if k != "nodeName"},
             "nodeSelector": {**(spec.get("nodeSelector") or {}), "kubernetes.io/hostname": TARGET}}
    _post(cp, PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": probe})

    def verdict() -> str | None:
        conditions = cp.admin.request("GET", f"{PODS}/{name}").get("status", {}).get("conditions") or []
        return next((c.get("message") for c in conditions
                     if c["type"] == "PodScheduled" and c["status"] == "False"), None)
    return wait_for(f"the scheduler's verdict on {name}", verdict, 60)


def test_a_tainted_target_is_refused_as_the_scheduler_refuses_it(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    _post(cp, f"{APPS}/deployments", deployment("untolerated", 1, **PIN))
    [pod] = _ready_replicas(cp, "untolerated", 1)
    _patch(cp, f"/api/v1/nodes/{TARGET}", {"spec": {"taints": [
        {"key": "lpm-test/dedicated", "value": "db", "effect": "NoSchedule"}]}})
    try:
        scheduler = _schedulers_verdict(cp, "probe-taint", pod["spec"])
        # The scheduler says "had untolerated taint(s)"; lpm names the taint too.
        _assert_refused(cluster, agents, pod["metadata"]["name"], "node(s) had untolerated taint",
                        also_in=scheduler, naming="{lpm-test/dedicated=db: NoSchedule}")
    finally:
        _patch(cp, f"/api/v1/nodes/{TARGET}", {"spec": {"taints": None}})


def test_a_target_without_room_is_refused_as_the_scheduler_refuses_it(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """Not left for the destination kubelet to reject with OutOfcpu after the source was dumped."""
    cp = cluster.control_plane
    allocatable = cp.admin.request("GET", f"/api/v1/nodes/{TARGET}")["status"]["allocatable"]["cpu"]
    filler = pod_template({"app": "filler"}, nodeSelector={"kubernetes.io/hostname": TARGET})
    filler["spec"]["containers"][0]["resources"] = {"requests": {"cpu": f"{int(allocatable) * 1000 - 300}m"}}
    _post(cp, PODS, {"apiVersion": "v1", "kind": "Pod", "spec": filler["spec"],
                     "metadata": {"name": "filler", **filler["metadata"]}})
    wait_for("the filler on node-b", lambda: running(cp.admin.request("GET", f"{PODS}/filler")), 120)
    roomy = deployment("roomy", 1, **PIN)
    roomy["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "500m"}}
    _post(cp, f"{APPS}/deployments", roomy)
    [pod] = _ready_replicas(cp, "roomy", 1)
    try:
        scheduler = _schedulers_verdict(cp, "probe-cpu", pod["spec"])
        _assert_refused(cluster, agents, pod["metadata"]["name"], "Insufficient cpu", also_in=scheduler)
    finally:
        cp.admin.request("DELETE", f"{PODS}/filler")


def _assert_refused(cluster: RealCluster, agents: dict[str, AgentProcess], name: str, says: str,
                    also_in: str | None = None, naming: str = "") -> None:
    """Migrating ``name`` fails saying ``says`` (and ``naming``), which ``also_in`` (the scheduler) says too."""
    cp = cluster.control_plane
    annotate(cp, name, TARGET)
    migration = outcome(cp, name, 60, lambda: _explain(cluster, agents))
    status = migration["status"]
    assert status["phase"] == "Failed" and says in status["message"] and naming in status["message"], status
    if also_in is not None:
        assert says in also_in, f"the scheduler says {also_in!r}; lpm says {status['message']!r}"
    # Nothing was checkpointed: no archive, no kubelet call; the pod counts on where it was.
    assert not list(cluster.nodes[SOURCE].checkpoint_dir.glob(f"checkpoint-{name}_*"))
    assert not [line for line in agents[SOURCE].logs("container checkpointed")
                if line.get("pod") == f"{NAMESPACE}/{name}"]
    pod = cp.admin.request("GET", f"{PODS}/{name}")
    assert pod["spec"]["nodeName"] == SOURCE and running(pod)


def _last_written(shared: Path) -> int | None:
    """The highest counter the writer has put in the claim (one file per value); None before the first."""
    return max((int(p.name[2:]) for p in shared.glob("n.*")), default=None)


def test_a_read_write_many_claim_moves_with_the_pod_and_the_restored_pod_writes_to_it(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """The one volume both nodes see (a hostPath PV over the lab directory, which every node mounts at the
    same path, standing in for NFS): the restored process goes on writing its counter into the same claim."""
    cp = cluster.control_plane
    shared = cluster.directory / "rwx-volume"
    shared.mkdir(mode=0o700)
    _post(cp, "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "lpm-rwx"},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
                 "hostPath": {"path": str(shared), "type": "Directory"},
                 "claimRef": {"namespace": NAMESPACE, "name": "shared"}}})
    _post(cp, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": "lpm-rwx",
                 "resources": {"requests": {"storage": "1Mi"}}}})
    writer = deployment("writer", 1, **PIN,
                        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}])
    container = writer["spec"]["template"]["spec"]["containers"][0]
    # A new file for each value: the source goes on after the checkpoint until the handover, and a file the
    # dump caught open (mid-echo) that the source then changed would make CRIU refuse the restore ("bad
    # size": see the README's table). A file the source never writes again stays as the dump saw it.
    container["command"] = ["sh", "-c",
                            "i=0; while true; do i=$((i+1)); echo $i; echo $i > /data/n.$i; sleep 0.1; done"]
    container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    _post(cp, f"{APPS}/deployments", writer)
    [source] = _ready_replicas(cp, "writer", 1)
    name = source["metadata"]["name"]

    annotate(cp, name, TARGET)
    migration = outcome(cp, name, explain=lambda: _explain(cluster, agents))
    assert migration["status"]["phase"] == "Succeeded", f"{migration['status']}\n{_explain(cluster, agents)}"
    restored = cp.admin.request("GET", f"{PODS}/{migration['status']['restoredPodName']}")
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}} in restored["spec"]["volumes"]
    wait_for("the source to be gone", lambda: not [
        p for p in cp.admin.request("GET", PODS)["items"] if p["metadata"]["name"] == name], 60)
    # Only the restored process writes now: the claim's file keeps growing, from where the source left it.
    written = wait_for("the claim's file", lambda: _last_written(shared), 10)
    wait_for("the restored pod to write the claim", lambda: (_last_written(shared) or 0) > written + 5, 30)
    assert first_count_after_start(cp, restored) > 1


def test_a_volume_the_target_cannot_reach_is_refused_as_the_scheduler_refuses_it(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """A ReadWriteMany volume reachable from node-a only (its node affinity): VolumeBinding's verdict."""
    cp = cluster.control_plane
    shared = cluster.directory / "zonal-volume"
    shared.mkdir(mode=0o700)
    _post(cp, "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "lpm-zonal"},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
                 "hostPath": {"path": str(shared), "type": "Directory"},
                 "claimRef": {"namespace": NAMESPACE, "name": "zonal"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [SOURCE]}]}]}}}})
    _post(cp, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "zonal"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": "lpm-zonal",
                 "resources": {"requests": {"storage": "1Mi"}}}})
    _post(cp, f"{APPS}/deployments", deployment("zonal", 1, volumes=[
        {"name": "data", "persistentVolumeClaim": {"claimName": "zonal"}}]))
    [pod] = _ready_replicas(cp, "zonal", 1)
    assert pod["spec"]["nodeName"] == SOURCE  # the scheduler put it where its volume is
    scheduler = _schedulers_verdict(cp, "probe-zonal", pod["spec"])
    _assert_refused(cluster, agents, pod["metadata"]["name"], "node(s) didn't match PersistentVolume's node affinity",
                    also_in=scheduler, naming="PersistentVolume lpm-zonal")


def test_a_static_pods_mirror_is_refused_before_any_checkpoint(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    cp = cluster.control_plane
    template = pod_template({"app": "static"})
    manifest = {"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
                "metadata": {"name": "static", "namespace": NAMESPACE, **template["metadata"]}}
    (cluster.nodes[SOURCE].manifests / "static.json").write_text(json.dumps(manifest))
    mirror = f"static-{SOURCE}"  # the kubelet's mirror pod in the API
    wait_for("the static pod's mirror counting", lambda: [p for p in pods(cp, "app%3Dstatic")
                                                          if p["metadata"]["name"] == mirror and running(p)], 120,
             lambda: f"{pods(cp, 'app%3Dstatic')}\n{cluster.node_failure()}")
    _assert_refused(cluster, agents, mirror, "a static pod's mirror cannot migrate")


def test_a_services_clients_reach_the_restored_pod_through_the_service_address(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """A client on node-b asks the Service's ClusterIP (kube-proxy on each node) for the server's counter,
    back to back, before the migration (its pod on node-a) and after (restored on node-b): the answers go on
    from where the server was, so the restored pod serves, with its state. The server is dumped mid-request
    (CRIU's tcp-close, lab/node.py); the client's connection then closes and it asks again."""
    cp = cluster.control_plane
    served = deployment("served", 1, **PIN)
    container = served["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["sh", "-c", "mkdir -p /www; httpd -p 8080 -h /www; i=0; while true; do i=$((i+1)); "
                                        "echo $i; echo $i > /www/index.html; sleep 0.1; done"]
    container["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    _post(cp, f"{APPS}/deployments", served)
    service = _post(cp, f"/api/v1/namespaces/{NAMESPACE}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "served"},
        "spec": {"selector": {"app": "served"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    address = service["spec"]["clusterIP"]
    client = pod_template({"app": "client"}, nodeSelector={"kubernetes.io/hostname": TARGET})
    client["spec"]["containers"][0]["command"] = [
        "sh", "-c", f"while true; do v=$(wget -q -O - -T 1 http://{address}/) && echo $v; done"]
    _post(cp, PODS, {"apiVersion": "v1", "kind": "Pod", "spec": client["spec"],
                     "metadata": {"name": "client", **client["metadata"]}})
    [source] = _ready_replicas(cp, "served", 1)
    name = source["metadata"]["name"]
    def answers() -> list[Line] | None:
        try:
            return read_logs(cp, "client", "count")
        except ApiError as err:  # 400 while its container is still being created
            if err.status != 400:
                raise
            return None
    before = wait_for("the client on node-b to get answers through the Service from node-a", answers, 120,
                      lambda: str(cp.admin.request("GET", f"{PODS}/client").get("status")))

    annotate(cp, name, TARGET)
    migration = outcome(cp, name, explain=lambda: _explain(cluster, agents))
    assert migration["status"]["phase"] == "Succeeded", f"{migration['status']}\n{_explain(cluster, agents)}"
    wait_for("the source to be gone", lambda: not [
        p for p in cp.admin.request("GET", PODS)["items"] if p["metadata"]["name"] == name], 60)
    gone = time.time()
    seen_before = max(line.value for line in before)

    def answers_after() -> list[int] | None:
        values = [line.value for line in read_logs(cp, "client", "count") if line.time.timestamp() > gone]
        return values if len(values) >= 3 else None
    after = wait_for("answers through the Service once only the restored pod serves", answers_after, 30)
    assert after[0] > seen_before and after == sorted(after), (seen_before, after)


def test_a_target_outside_the_pods_node_selector_is_refused_as_the_scheduler_refuses_it(
        cluster: RealCluster, agents: dict[str, AgentProcess]) -> None:
    """Only the pins to the source node by name are dropped; a selector on any other label stays the pod's."""
    cp = cluster.control_plane
    _patch(cp, f"/api/v1/nodes/{SOURCE}", {"metadata": {"labels": {"lpm-test/zone": "z1"}}})
    try:
        _post(cp, f"{APPS}/deployments", deployment("zoned", 1, nodeSelector={"lpm-test/zone": "z1"}))
        [pod] = _ready_replicas(cp, "zoned", 1)
        scheduler = _schedulers_verdict(cp, "probe-zone", pod["spec"])
        _assert_refused(cluster, agents, pod["metadata"]["name"], "didn't match Pod's node affinity/selector",
                        also_in=scheduler, naming="nodeSelector lpm-test/zone=z1")
    finally:
        _patch(cp, f"/api/v1/nodes/{SOURCE}", {"metadata": {"labels": {"lpm-test/zone": None}}})
