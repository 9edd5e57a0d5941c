"""Handing the workload from the source pod to the restored one, without a moment of one too many or too few.

The restored pod is created *held*: it carries lpm's migration label but none of the source's labels and no
owner, so no ReplicaSet counts it, no Service sends it traffic and no disruption budget counts it while
the runtime restores it. Once it runs and is Ready it is *released*, and only then does the source go.

Each agent touches only pods on its own node (the API server holds it to that: docs/threat-model.md, rule
7), so the two take turns, through the PodMigration's ``status.handover``:

1. Destination: the restored pod runs and is Ready -> ``RestoredReady``.
2. Source: the source's removal is asked of the Eviction API as a dry run: a PodDisruptionBudget that would
   refuse it holds the handover (the migration says so and the source asks again every few seconds; the
   restored pod keeps running, held). A ReplicaSet's source gets the lowest
   ``controller.kubernetes.io/pod-deletion-cost`` -> ``SourceReleased``.
3. Destination: the restored pod gets the source's labels and the source's controller ownerReference ->
   ``Adopted``. The ReplicaSet now owns one pod too many and removes one at once: by its ranking (assigned,
   running and ready pods alike, then the lower deletion cost) that is the source. The restored pod is
   never counted before it is ready, so the ReplicaSet never starts a fresh replica meanwhile.
4. Source: the source pod is deleted, if the ReplicaSet has not been quicker -> ``SourceRemoved``. A
   delete, not an eviction: the budget was asked in step 2, and since step 3 the restored pod counts for
   it, so the workload is never below what it had before the migration.
5. Destination: the migration is ``Succeeded``.

Had the source gone before the release (a scale-down or a rollout chose it, or a person deleted it), the
workload no longer wants it: the held copy is deleted rather than handed over as a replica nobody asked
for. With ``retainOriginalPod`` the source stays and its agent does nothing: a ReplicaSet's restored pod
stays held (released, the ReplicaSet would remove one of the two), a bare pod's is released beside it.

``decide`` (destination) and ``decide_source`` are the pure steps; ``watcher.restore.destination`` and
``watcher.cluster.release`` carry them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from watcher.cluster.objects import GROUP, MIGRATION_LABEL

HELD_ANNOTATION = f"{GROUP}/handover"
HELD = "held"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_DELETION_COST = str(-(2**31))


class Handover(str, Enum):
    """``status.handover``: what the last agent to act did, so whose turn it is."""
    RESTORED_READY = "RestoredReady"
    SOURCE_RELEASED = "SourceReleased"
    ADOPTED = "Adopted"
    SOURCE_REMOVED = "SourceRemoved"


_ORDER = list(Handover)


def advance(status: dict[str, Any], state: Handover, message: str) -> dict[str, Any] | None:
    """``status`` moved on to ``state`` (a status mutation); None when it is there or further already, or
    the migration has ended: a reconcile that decided on an older read never turns the handover back."""
    if status.get("phase") != "Restoring":
        return None
    current = status.get("handover")
    if current in Handover._value2member_map_ and _ORDER.index(Handover(current)) >= _ORDER.index(state):
        return None
    status.update({"handover": state.value, "message": message})
    return status


class Step(str, Enum):
    """The destination's next step."""
    WAIT = "wait"
    """The restored pod is not running and Ready yet: its next change brings the reconcile back."""
    RESTORED_FAILED = "restored failed"
    DISCARD = "discard"
    """The source went before the release: delete the held copy; the migration fails."""
    ASK_SOURCE = "ask source"
    """Record ``RestoredReady``: the source's agent releases the source."""
    WAIT_FOR_SOURCE = "wait for source"
    """The source's agent's turn; looked at again every few seconds (its node's pods are not watched here)."""
    ADOPT = "adopt"
    """Labels and owner onto the restored pod; then ``Adopted`` (or done, when the source is retained)."""
    MARK_ADOPTED = "mark adopted"
    """Adopted, but not recorded (the agent stopped in between): record ``Adopted``."""
    DONE = "done"


class SourceStep(str, Enum):
    """The source's agent's next step."""
    RELEASE = "release"
    """Dry-run eviction, deletion cost: then ``SourceReleased``."""
    REMOVE = "remove"
    """Delete the source pod: then ``SourceRemoved``."""


def is_held(pod: Mapping[str, Any]) -> bool:
    return (pod.get("metadata", {}).get("annotations") or {}).get(HELD_ANNOTATION) == HELD


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def running(pod: Mapping[str, Any]) -> bool:
    """Every container of ``pod`` has started (its restored processes run), Ready or not yet."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all("running" in (c.get("state") or {}) for c in statuses)


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


def _present(pod: Mapping[str, Any] | None) -> bool:
    return pod is not None and not pod.get("metadata", {}).get("deletionTimestamp")


def decide(restored: Mapping[str, Any], source: Mapping[str, Any] | None, retain: bool,
           handover: Handover | None) -> Step:
    if restored.get("status", {}).get("phase") == "Failed" or stuck(restored):
        return Step.RESTORED_FAILED
    if not _ready(restored):
        return Step.WAIT
    present = _present(source)
    if is_held(restored):
        if not present:
            return Step.DISCARD
        if retain:
            # A ReplicaSet's copy stays held: released, the ReplicaSet would remove one of the two.
            return Step.DONE if controller_of(source or {}) is not None else Step.ADOPT
        if handover is None:
            return Step.ASK_SOURCE
        return Step.ADOPT if handover is Handover.SOURCE_RELEASED else Step.WAIT_FOR_SOURCE
    if retain or not present or handover is Handover.SOURCE_REMOVED:
        return Step.DONE
    return Step.WAIT_FOR_SOURCE if handover is Handover.ADOPTED else Step.MARK_ADOPTED


def decide_source(source: Mapping[str, Any] | None, retain: bool, handover: Handover | None) -> SourceStep | None:
    """What the source's agent does for a ``Restoring`` migration of a pod on its node; None: nothing now."""
    if retain:
        return None
    if handover is Handover.RESTORED_READY and _present(source):
        return SourceStep.RELEASE  # gone meanwhile: the destination discards its copy
    if handover is Handover.ADOPTED:
        return SourceStep.REMOVE  # gone already (the ReplicaSet was quicker): recorded as removed
    return None


def handover_of(migration: Mapping[str, Any]) -> Handover | None:
    value = migration.get("status", {}).get("handover")
    try:
        return Handover(value) if value else None
    except ValueError:
        return None  # the CRD's enum admits no other value; an older agent's status has none


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


def dry_run_eviction(namespace: str, name: str) -> dict[str, Any]:
    """The Eviction that asks a pod's disruption budget without removing the pod."""
    return {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"dryRun": ["All"]}}
