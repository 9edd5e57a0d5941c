"""lpm's API objects: paths, names, labels and phases (pure; ARCHITECTURE.md, "Kubernetes API")."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, NotRequired, TypedDict
from urllib.parse import quote

from watcher.kube.bodies import ObjectMeta, OwnerReference
from watcher.kube.names import dns_name

GROUP = "lpm.my.domain"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

MIGRATE_ANNOTATION = f"{GROUP}/migrate-to"
MIGRATION_LABEL = f"{GROUP}/migration"
TARGET_NODE_ANNOTATION = f"{GROUP}/target-node"
ORIGIN_ANNOTATION = f"{GROUP}/origin"
ORIGIN_KUBELET_DIRECTORY = "kubelet-directory"
"""Set on a ContainerCheckpoint the agent made for an archive nobody requested: already done."""


class Phase(str, Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class MigrationPhase(str, Enum):
    PENDING = "Pending"
    CHECKPOINTING = "Checkpointing"
    CHECKPOINT_COMPLETE = "CheckpointComplete"
    RESTORING = "Restoring"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ObjectRef(TypedDict):
    name: str
    namespace: str


class ContainerCheckpointSpec(TypedDict):
    podName: str
    containerName: str


class ContainerCheckpoint(TypedDict):
    """A request to checkpoint one container (namespaced). Its status is read, changed and written
    back whole (``watcher.cluster.status``), so it stays the server's dict."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: ContainerCheckpointSpec


class PodCheckpointSpec(TypedDict):
    podName: str


class PodCheckpoint(TypedDict):
    """A request to checkpoint every container of a pod under one checkpoint ID (namespaced)."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodCheckpointSpec


class PodMigrationSpec(TypedDict):
    podName: str
    targetNode: str
    retainOriginalPod: NotRequired[bool]


class PodMigration(TypedDict):
    """A request to move a pod to ``targetNode`` (namespaced)."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodMigrationSpec


class StoredArtifact(TypedDict):
    """Where one container's checkpoint is stored, and what it must read back as."""

    artifactURI: str
    storageType: str
    """shared or local (``watcher.store.layout.StorageType``)."""
    checksumSHA256: str
    compressedSize: int


class ContainerArtifact(StoredArtifact):
    containerName: str


class PodCheckpointContentSpec(TypedDict):
    podCheckpointRef: ObjectRef
    podNamespace: str
    podName: str
    podUID: str
    checkpointID: str
    sourceNode: str
    containers: list[ContainerArtifact]
    targetNode: NotRequired[str]


PLURALS = {
    "ContainerCheckpoint": "containercheckpoints",
    "ContainerCheckpointContent": "containercheckpointcontents",
    "PodCheckpoint": "podcheckpoints",
    "PodCheckpointContent": "podcheckpointcontents",
    "PodMigration": "podmigrations",
}


def lpm_path(kind: str, namespace: str | None = None, name: str | None = None, status: bool = False) -> str:
    path = f"/apis/{GROUP}/{VERSION}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{PLURALS[kind]}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
        if status:
            path += "/status"
    return path


def pod_path(namespace: str | None = None, name: str | None = None) -> str:
    if namespace is None:
        return "/api/v1/pods"
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"
    return f"{path}/{quote(name, safe='')}" if name is not None else path


def claim_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/persistentvolumeclaims/{quote(name, safe='')}"


def volume_path(name: str) -> str:
    return f"/api/v1/persistentvolumes/{quote(name, safe='')}"


def node_path(name: str) -> str:
    return f"/api/v1/nodes/{quote(name, safe='')}"


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata: Mapping[str, Any] = obj.get("metadata", {})
    return metadata


def migration_name(pod: str, uid: str) -> str:
    """One PodMigration per pod instance: the annotation re-seen after a restart maps to it."""
    return dns_name(pod, "migration", uid[:8])


def content_name(namespace: str, owner: str, checkpoint_id: str, container: str | None = None) -> str:
    parts = [namespace, owner, checkpoint_id] + ([container] if container else [])
    return dns_name(*parts)


def owner_reference(obj: Mapping[str, Any]) -> OwnerReference:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta(obj)["name"],
            "uid": meta(obj)["uid"], "controller": True}
