"""Valid lpm.my.domain/v1 objects for tests; each builder returns a fresh dict that a test may mutate."""

from __future__ import annotations

from typing import Any

POD_UID = "0f6d7c8e-1a2b-4c3d-8e9f-0123456789ab"
CHECKPOINT_ID = "20261125T120000Z-0123abcd"
CHECKSUM = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

Object = dict[str, Any]


def _object(kind: str, name: str, spec: Object, namespace: str | None = None) -> Object:
    metadata: Object = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "lpm.my.domain/v1", "kind": kind, "metadata": metadata, "spec": spec}


def shared_uri(container: str) -> str:
    return f"shared://{POD_UID}/{CHECKPOINT_ID}/{container}/dump.tar.zst"


def container_checkpoint(name: str, namespace: str, pod: str = "web-0", container: str = "app") -> Object:
    return _object("ContainerCheckpoint", name, {"podName": pod, "containerName": container}, namespace)


def container_checkpoint_content(name: str, namespace: str, request: str = "web-0-app") -> Object:
    return _object(
        "ContainerCheckpointContent",
        name,
        {
            "containerCheckpointRef": {"name": request, "namespace": namespace},
            "podNamespace": namespace,
            "podName": "web-0",
            "containerName": "app",
            "sourceNode": "node-a",
            "artifactURI": shared_uri("app"),
            "storageType": "shared",
            "checksumSHA256": CHECKSUM,
            "compressedSize": 4096,
        },
    )


def pod_checkpoint(name: str, namespace: str, pod: str = "web-0") -> Object:
    return _object("PodCheckpoint", name, {"podName": pod}, namespace)


def pod_checkpoint_content(name: str, namespace: str, request: str = "web-0") -> Object:
    return _object(
        "PodCheckpointContent",
        name,
        {
            "podCheckpointRef": {"name": request, "namespace": namespace},
            "podNamespace": namespace,
            "podName": "web-0",
            "podUID": POD_UID,
            "checkpointID": CHECKPOINT_ID,
            "sourceNode": "node-a",
            "targetNode": "node-b",
            "containers": [
                {
                    "containerName": container,
                    "artifactURI": shared_uri(container),
                    "checksumSHA256": CHECKSUM,
                    "compressedSize": 4096,
                    "storageType": "shared",
                }
                for container in ("app", "sidecar")
            ],
        },
    )


def pod_migration(name: str, namespace: str, pod: str = "web-0", target: str = "node-b") -> Object:
    return _object("PodMigration", name, {"podName": pod, "targetNode": target}, namespace)
