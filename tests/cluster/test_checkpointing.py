"""The checkpoint requests' pure step: which ContainerCheckpoint or PodCheckpoint this node checkpoints, and
which it fails before any kubelet call (the executor against a real API server: tests/realstack/
test_agent_cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.cluster.checkpointing import Decision, Step, decide
from watcher.cluster.objects import ORIGIN_ANNOTATION, ORIGIN_KUBELET_DIRECTORY, TARGET_NODE_ANNOTATION
from watcher.cluster.reads import UNREAD, Unread

NODE = "node-a"


def _container_request(phase: str | None = None, container: str = "app",
                       annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "lpm.my.domain/v1", "kind": "ContainerCheckpoint",
            "metadata": {"name": "web-0-app", "namespace": "shop", "annotations": annotations or {}},
            "spec": {"podName": "web-0", "containerName": container},
            "status": {"phase": phase} if phase else {}}


def _pod_request(phase: str | None = None, target: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "lpm.my.domain/v1", "kind": "PodCheckpoint",
            "metadata": {"name": "web-0-3f2a", "namespace": "shop",
                         "annotations": {TARGET_NODE_ANNOTATION: target} if target else {}},
            "spec": {"podName": "web-0"},
            "status": {"phase": phase} if phase else {}}


def _pod(node: str = NODE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop", "uid": "5e0b"},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx:1.27"},
                                                      {"name": "log", "image": "fluent-bit:3"}]},
            "status": {"phase": "Running"}}


CC, PC = "ContainerCheckpoint", "PodCheckpoint"
KUBELET_RECORD = {ORIGIN_ANNOTATION: ORIGIN_KUBELET_DIRECTORY}


@pytest.mark.parametrize("kind, request_, pod, expected", [
    # nothing to do, from the request alone
    (CC, None, UNREAD, Decision(Step.NOTHING)),  # deleted meanwhile
    (CC, _container_request("Succeeded"), UNREAD, Decision(Step.NOTHING)),
    (PC, _pod_request("Failed"), UNREAD, Decision(Step.NOTHING)),
    (CC, _container_request(annotations=KUBELET_RECORD), UNREAD, Decision(Step.NOTHING)),
    # its pod
    (CC, _container_request(), UNREAD, Decision(Step.READ_POD)),
    (PC, _pod_request("Pending"), UNREAD, Decision(Step.READ_POD)),
    (PC, _pod_request("Running"), UNREAD, Decision(Step.READ_POD)),  # an agent that stopped mid-checkpoint
    (CC, _container_request(), None, Decision(Step.FAIL, "pod shop/web-0 does not exist")),
    (PC, _pod_request(), None, Decision(Step.FAIL, "pod shop/web-0 does not exist")),
    (CC, _container_request(), _pod(node="node-b"), Decision(Step.NOTHING)),  # node-b's agent takes it
    (PC, _pod_request(), _pod(node="node-b"), Decision(Step.NOTHING)),
    # what is checkpointed
    (CC, _container_request(container="sidecar"), _pod(),
     Decision(Step.FAIL, "pod shop/web-0 has no container sidecar")),
    (CC, _container_request(container="log"), _pod(), Decision(Step.CHECKPOINT, containers=("log",))),
    (PC, _pod_request(), _pod(), Decision(Step.CHECKPOINT, containers=("app", "log"))),
    (PC, _pod_request(target="node-b"), _pod(), Decision(Step.CHECKPOINT, containers=("app", "log"), target="node-b")),
])
def test_decide(kind: str, request_: dict[str, Any] | None, pod: dict[str, Any] | None | Unread,
                expected: Decision) -> None:
    assert decide(kind, request_, NODE, pod) == expected
