"""Handing the workload from the source pod to the restored one, without a moment of one too many or too few.

The restored pod is created *held*: it carries lpm's migration label but none of the source's labels and no
owner, so no ReplicaSet counts it, no Service sends it traffic and no disruption budget counts it while
the runtime restores it. Once it runs and is Ready it is *released*, and only then does the source go:

1. The source's removal is asked of the Eviction API as a dry run: a PodDisruptionBudget that would refuse
   it holds the handover (the migration says so and asks again every few seconds; the restored pod keeps
   running, held).
2. A ReplicaSet's source gets the lowest ``controller.kubernetes.io/pod-deletion-cost``.
3. The restored pod gets the source's labels and the source's controller ownerReference. The ReplicaSet now
   owns one pod too many and removes one at once: by its ranking (assigned, running and ready pods alike,
   then the lower deletion cost) that is the source. The restored pod is never counted before it is ready,
   so the ReplicaSet never starts a fresh replica while the source is being replaced.
4. The source is evicted (it may already be gone: the ReplicaSet was quicker).

Had the source gone before the release (a scale-down or a rollout chose it, or a person deleted it), the
workload no longer wants it: the held copy is deleted rather than handed over as a replica nobody asked
for. With ``retainOriginalPod`` the source stays; a ReplicaSet's restored pod then stays held (released,
the ReplicaSet would remove one of the two), a bare pod's is released beside it.

``decide`` is the pure step; ``watcher.restore.destination`` carries it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from watcher.cluster.objects import GROUP, MIGRATION_LABEL
from watcher.kube.bodies import Eviction

HELD_ANNOTATION = f"{GROUP}/handover"
HELD = "held"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_DELETION_COST = str(-(2**31))


class Step(str, Enum):
    WAIT = "wait"
    """The restored pod is not running and Ready yet: its next change brings the reconcile back."""
    RESTORED_FAILED = "restored failed"
    DISCARD = "discard"
    """The source went before the release: delete the held copy; the migration fails."""
    RELEASE = "release"
    """Dry-run eviction, deletion cost, labels and owner: then ``REMOVE_SOURCE``."""
    REMOVE_SOURCE = "remove source"
    DONE = "done"


def is_held(pod: Mapping[str, Any]) -> bool:
    return (pod.get("metadata", {}).get("annotations") or {}).get(HELD_ANNOTATION) == HELD


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def controller_of(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((dict(ref) for ref in pod.get("metadata", {}).get("ownerReferences") or []
                 if ref.get("controller")), None)


# Container states in which the kubelet keeps retrying a restored container that will not come: its
# checkpoint image cannot be created from, is still not pulled after retries, or what it restored keeps dying.
STUCK = frozenset({"CreateContainerError", "CreateContainerConfigError", "RunContainerError",
                   "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff"})


def stuck(pod: Mapping[str, Any]) -> str | None:
    """Why a restored pod's container will not run, from its waiting state; None when none is stuck."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK:
            return f"container {status.get('name')}: {waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


def decide(restored: Mapping[str, Any], source: Mapping[str, Any] | None, retain: bool) -> Step:
    if restored.get("status", {}).get("phase") == "Failed" or stuck(restored):
        return Step.RESTORED_FAILED
    if not _ready(restored):
        return Step.WAIT
    source_present = source is not None and not source.get("metadata", {}).get("deletionTimestamp")
    if is_held(restored):
        if not source_present:
            return Step.DISCARD
        if retain and controller_of(source or {}) is not None:
            return Step.DONE  # stays held: released, the ReplicaSet would remove one of the two
        return Step.RELEASE
    return Step.REMOVE_SOURCE if source_present and not retain else Step.DONE


def held_labels(migration: str) -> dict[str, str]:
    """The labels a restored pod is created with: lpm's, none that a selector of the source's could match."""
    return {MIGRATION_LABEL: migration}


def release_patch(source: Mapping[str, Any], migration: str) -> dict[str, Any]:
    """The merge patch that hands the restored pod to the source's selectors and controller."""
    patch: dict[str, Any] = {"metadata": {
        "labels": {**(source.get("metadata", {}).get("labels") or {}), MIGRATION_LABEL: migration},
        "annotations": {HELD_ANNOTATION: None}}}
    controller = controller_of(source)
    if controller is not None:
        # Without blockOwnerDeletion: setting it needs update on the owner's finalizers where the
        # OwnerReferencesPermissionEnforcement admission plugin runs; it only orders a foreground deletion.
        controller.pop("blockOwnerDeletion", None)
        patch["metadata"]["ownerReferences"] = [controller]
    return patch


def eviction(namespace: str, name: str, dry_run: bool) -> Eviction:
    body: Eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                      "metadata": {"name": name, "namespace": namespace}}
    if dry_run:
        body["deleteOptions"] = {"dryRun": ["All"]}
    return body
