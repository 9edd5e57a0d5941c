"""The source side's pure step for a PodMigration: what is read next, what refuses it, when it checkpoints and
how the PodCheckpoint's outcome is mirrored (the executor against a real API server: tests/realstack/
test_agent_cluster.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watcher.cluster.migration import Decision, Placement, Seen, Step, bound_volumes, checkpoint_request, decide
from watcher.cluster.objects import MIGRATION_LABEL, TARGET_NODE_ANNOTATION
from watcher.cluster.presence import CAPABILITY_ANNOTATION, CAPABLE_ANNOTATION
from watcher.cluster.reads import UNREAD

NOW = datetime(2026, 12, 2, 3, 0, 0, tzinfo=UTC)
NODE = "node-a"
LEASES = "lpm-system"


def _migration(phase: str | None = None, target: str = "node-b") -> dict[str, Any]:
    return {"apiVersion": "lpm.my.domain/v1", "kind": "PodMigration",
            "metadata": {"name": "web-0-3f2a", "namespace": "shop", "uid": "9d1c-mig"},
            "spec": {"podName": "web-0", "targetNode": target},
            "status": {"phase": phase} if phase else {}}


def _pod(node: str = NODE, owner: dict[str, Any] | None = None, claim: str | None = None,
         cpu: str = "250m") -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "settings", "configMap": {"name": "web"}}]
    if claim:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "5e0b-pod",
                         "ownerReferences": [owner] if owner else []},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx:1.27",
                                                       "resources": {"requests": {"cpu": cpu}}}],
                     "volumes": volumes},
            "status": {"phase": "Running"}}


def _node(ready: bool = True, cpu: str = "2") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-b", "labels": {"kubernetes.io/hostname": "node-b"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"}}}


def _claim(modes: list[str], volume: str = "pv-data") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"},
            "spec": {"accessModes": modes, "volumeName": volume}, "status": {"phase": "Bound", "accessModes": modes}}


def _lease(verdict: str = "true", renewed: datetime = NOW, reason: str = "crun 1.19 with CRIU 4.1") -> dict[str, Any]:
    annotations = {CAPABLE_ANNOTATION: verdict, CAPABILITY_ANNOTATION: reason}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "lpm-node-node-b", "namespace": LEASES, "annotations": annotations},
            "spec": {"holderIdentity": "node-b", "leaseDurationSeconds": 90,
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}


def _checkpoint(phase: str, message: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if message is not None:
        status["message"] = message
    return {"apiVersion": "lpm.my.domain/v1", "kind": "PodCheckpoint",
            "metadata": {"name": "web-0-3f2a", "namespace": "shop"}, "spec": {"podName": "web-0"}, "status": status}


STATEFULSET = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "ss-uid", "controller": True}
REPLICASET = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4", "uid": "rs-uid", "controller": True}
NO_PLACEMENT = Placement([], [])
ONLY_SHARED = "Only ReadWriteMany and ReadOnlyMany claims, and volumes the API fills, migrate"

# Everything read for a pending migration that may go ahead: each row below changes one thing.
VETTED = Seen(_migration(), pod=_pod(), target=_node(), claims={}, placement=NO_PLACEMENT, lease=_lease())


def _read(seen: Seen, **fields: Any) -> Seen:
    return replace(seen, **fields)


@pytest.mark.parametrize("seen, expected", [
    # whose turn it is, from the migration alone
    (Seen(_migration("Restoring")), Decision(Step.HANDOVER)),
    (Seen(_migration("CheckpointComplete")), Decision(Step.NOTHING)),  # the destination's now
    (Seen(_migration("Succeeded")), Decision(Step.NOTHING)),
    (Seen(_migration("Failed")), Decision(Step.NOTHING)),
    (Seen(_migration()), Decision(Step.READ_POD)),
    (Seen(_migration("Pending")), Decision(Step.READ_POD)),
    # the pod
    (Seen(_migration(), pod=None), Decision(Step.FAIL, "pod shop/web-0 does not exist")),
    (Seen(_migration(), pod=_pod(node="node-c")), Decision(Step.NOTHING)),  # node-c's agent is the source
    # the target's name, then the Node
    (Seen(_migration(target="Node_B"), pod=_pod()),
     Decision(Step.REFUSE, "unsafe node name 'Node_B': must be a DNS-1123 subdomain")),
    (Seen(_migration(target=NODE), pod=_pod()),
     Decision(Step.REFUSE, "target node node-a is the node the pod already runs on")),
    (Seen(_migration(), pod=_pod()), Decision(Step.READ_TARGET)),
    (Seen(_migration(), pod=_pod(), target=None), Decision(Step.REFUSE, "target node node-b does not exist")),
    (Seen(_migration(), pod=_pod(), target=_node(ready=False)),
     Decision(Step.REFUSE, "target node node-b is not Ready")),
    # the pod's owner, before anything else is read
    (Seen(_migration(), pod=_pod(owner=STATEFULSET), target=_node()),
     Decision(Step.REFUSE, "pods owned by StatefulSet web cannot migrate: a StatefulSet's pod keeps its name, "
                           "hostname and claims; the restored pod could take the name only once the source is "
                           "gone, racing the StatefulSet controller, which recreates a fresh pod under that name "
                           "at once")),
    (Seen(_migration(), pod=_pod(owner=REPLICASET), target=_node()), Decision(Step.READ_CLAIMS)),
    # its volumes
    (Seen(_migration(), pod=_pod(claim="data"), target=_node(), claims={"data": None}),
     Decision(Step.REFUSE, f"volumes a checkpoint cannot carry: data (claim data does not exist). {ONLY_SHARED}")),
    (Seen(_migration(), pod=_pod(claim="data"), target=_node(), claims={"data": _claim(["ReadWriteOnce"])}),
     Decision(Step.REFUSE, "volumes a checkpoint cannot carry: data (claim data is ReadWriteOnce: only the source "
                           f"node may mount it). {ONLY_SHARED}")),
    (Seen(_migration(), pod=_pod(claim="data"), target=_node(), claims={"data": _claim(["ReadWriteMany"])}),
     Decision(Step.READ_PLACEMENT)),
    # the scheduler's filters on the target
    (_read(VETTED, placement=Placement([], [_pod(node="node-b", cpu="1900m")])),
     Decision(Step.REFUSE, "target node node-b cannot take the pod: Insufficient cpu (requests 0.25, free 0.1)")),
    (_read(VETTED, lease=UNREAD), Decision(Step.READ_LEASE)),
    # the target's agent
    (_read(VETTED, lease=None), Decision(Step.REFUSE, "no lpm agent on node-b: no Lease lpm-system/lpm-node-node-b")),
    (_read(VETTED, lease=_lease(renewed=NOW - timedelta(minutes=10))),
     Decision(Step.REFUSE, "no live lpm agent on node-b: Lease lpm-system/lpm-node-node-b last renewed "
                           "2026-12-02T02:50:00Z, over 90 s ago")),
    (_read(VETTED, lease=_lease("false", reason="runc without CRIU")),
     Decision(Step.REFUSE, "target node node-b cannot restore checkpoints: runc without CRIU")),
    (_read(VETTED, lease=_lease("unknown", reason="no runtime socket")),
     Decision(Step.CHECKPOINT, warning="target node node-b may not restore checkpoints: its capability is unknown "
                                       "(no runtime socket)")),
    (VETTED, Decision(Step.CHECKPOINT)),
    # checkpointing already: the target is still looked at, the rest not again (the pod is being dumped)
    (Seen(_migration("Checkpointing"), pod=_pod(owner=STATEFULSET), target=_node()), Decision(Step.CHECKPOINT)),
    (Seen(_migration("Checkpointing"), pod=_pod(), target=_node(ready=False)),
     Decision(Step.REFUSE, "target node node-b is not Ready")),
    # the PodCheckpoint's outcome, mirrored
    (_read(VETTED, checkpoint=_checkpoint("Running", "checkpointing")), Decision(Step.NOTHING)),
    (_read(VETTED, checkpoint=_checkpoint("Succeeded", "checkpoint 5e0b-pod/20261202T030000Z")),
     Decision(Step.COMPLETE, "checkpoint 5e0b-pod/20261202T030000Z",
              event="migration web-0-3f2a to node-b: checkpoint 5e0b-pod/20261202T030000Z")),
    (_read(VETTED, checkpoint=_checkpoint("Succeeded")),
     Decision(Step.COMPLETE, "checkpoint complete", event="migration web-0-3f2a to node-b: ")),
    (_read(VETTED, checkpoint=_checkpoint("Failed", "kubelet on node-a said 500")),
     Decision(Step.FAIL, "checkpoint failed: kubelet on node-a said 500")),
])
def test_decide(seen: Seen, expected: Decision) -> None:
    assert decide(seen, NODE, LEASES, NOW) == expected


def test_only_bound_claims_have_volumes_to_read() -> None:
    unbound = _claim(["ReadWriteMany"], volume="")
    assert bound_volumes({"data": _claim(["ReadWriteMany"]), "gone": None, "new": unbound}) == ["pv-data"]


def test_the_checkpoint_request_is_named_labelled_and_owned_by_its_migration() -> None:
    request = checkpoint_request(_migration())
    assert request["metadata"]["name"] == "web-0-3f2a" and request["spec"] == {"podName": "web-0"}
    assert request["metadata"]["labels"] == {MIGRATION_LABEL: "web-0-3f2a"}
    assert request["metadata"]["annotations"] == {TARGET_NODE_ANNOTATION: "node-b"}
    assert [ref["uid"] for ref in request["metadata"]["ownerReferences"]] == ["9d1c-mig"]
