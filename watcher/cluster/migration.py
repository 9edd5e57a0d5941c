"""PodMigration on the source node: from the annotation to ``CheckpointComplete``, and the source's turns
in the handover once the destination restores (``watcher.cluster.release``).

The annotation ``lpm.my.domain/migrate-to: NODE`` on a pod makes this node's agent create one
PodMigration for that pod instance (the name is derived from the pod's UID, so seeing the
annotation again — after a relist or a restart — creates nothing new). The PodMigration's
checkpoint phase is a PodCheckpoint the agent creates and owns; its outcome is mirrored into
the PodMigration, which ends here at ``CheckpointComplete`` with ``podCheckpointRef`` (the
destination node's agent takes it from there) or ``Failed`` with the reason. A target that does
not exist, is not Ready, has no live lpm agent or says its runtime cannot restore fails the
migration before the checkpoint (``watcher.cluster.admission``), and so does a pod that cannot move at
all — its owner or its volumes (``watcher.cluster.eligibility``) — or that the target cannot take by the
scheduler's rules (``watcher.cluster.fit``): the source pod is never touched.

``decide`` is the pure step over what has been read; ``reconcile_migration`` reads what it asks for and
carries it out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from watcher.cluster import events, progress
from watcher.cluster.admission import admit
from watcher.cluster.checkpointing import create_idempotent
from watcher.cluster.eligibility import claim_names, owner_refusal, volume_refusal
from watcher.cluster.fit import unfit
from watcher.cluster.nodes import unusable
from watcher.cluster.objects import (
    API_VERSION,
    MIGRATE_ANNOTATION,
    MIGRATION_LABEL,
    TARGET_NODE_ANNOTATION,
    MigrationPhase,
    Phase,
    PodCheckpoint,
    PodMigration,
    claim_path,
    lpm_path,
    meta,
    migration_name,
    node_path,
    owner_reference,
    pod_path,
    volume_path,
)
from watcher.cluster.pins import unpinned
from watcher.cluster.presence import lease_path
from watcher.cluster.reads import UNREAD, Unread, get_or_none
from watcher.cluster.release import RetryLater, release_source
from watcher.cluster.status import now, transition, update_status
from watcher.errors import Conflict, UnsafeNameError
from watcher.kube.client import Kube
from watcher.store import layout

log = logging.getLogger(__name__)

# Phases in which the source's checkpoint half has nothing left to write: a late writer must not flip them.
_DONE_HERE = frozenset({MigrationPhase.CHECKPOINT_COMPLETE.value, MigrationPhase.RESTORING.value,
                        MigrationPhase.SUCCEEDED.value, MigrationPhase.FAILED.value})


async def reconcile_annotated_pod(kube: Kube, node: str, event: str, pod: dict[str, Any]) -> None:
    """Create the PodMigration an annotated pod on this node asks for (idempotent)."""
    target = meta(pod).get("annotations", {}).get(MIGRATE_ANNOTATION)
    if event == "DELETED" or not target or pod.get("spec", {}).get("nodeName") != node:
        return
    namespace, name, uid = meta(pod)["namespace"], meta(pod)["name"], meta(pod)["uid"]
    migration = migration_name(name, uid)
    body: PodMigration = {
        "apiVersion": API_VERSION, "kind": "PodMigration",
        "metadata": {"name": migration, "namespace": namespace, "labels": {f"{MIGRATION_LABEL}-pod-uid": uid}},
        "spec": {"podName": name, "targetNode": target},
    }
    try:
        await kube.create(lpm_path("PodMigration", namespace), body)
    except Conflict:
        # Seen again (an update, a relist, a restart): its migration is named after the pod's UID, so the
        # pod gets one. Said, so that a restart's replay can be told apart from an event never handled.
        log.info("annotated pod's migration exists already", extra={"fields": {
            "pod": f"{namespace}/{name}", "migration": migration}})
        return
    log.info("annotated pod's migration created", extra={"fields": {
        "pod": f"{namespace}/{name}", "migration": migration, "targetNode": target}})


class Step(str, Enum):
    """What the source's agent does next for a PodMigration."""
    NOTHING = "nothing"
    """Finished here, another node's pod, or the checkpoint still running (its status change brings us back)."""
    HANDOVER = "handover"
    """``Restoring``: the source's turns (``watcher.cluster.release``)."""
    READ_POD = "read pod"
    READ_TARGET = "read target"
    """The target Node."""
    READ_CLAIMS = "read claims"
    """The pod's PersistentVolumeClaims."""
    READ_PLACEMENT = "read placement"
    """The claims' PersistentVolumes and the pods already on the target."""
    READ_LEASE = "read lease"
    """The target agent's node Lease."""
    FAIL = "fail"
    """``Failed`` with ``message``."""
    REFUSE = "refuse"
    """``Failed`` with ``message`` before anything was checkpointed, and a Warning Event on the pod."""
    CHECKPOINT = "checkpoint"
    """``Checkpointing``; the PodCheckpoint created, then read (``warning``: the target's capability is unknown)."""
    COMPLETE = "complete"
    """``CheckpointComplete`` with ``message``, and ``event`` on the pod."""


@dataclass(frozen=True)
class Decision:
    step: Step
    message: str = ""
    event: str = ""
    warning: str = ""


@dataclass(frozen=True)
class Placement:
    volumes: list[Mapping[str, Any]]
    """The PersistentVolumes the pod's claims are bound to."""
    pods: list[Mapping[str, Any]]
    """The pods already on the target node."""


@dataclass(frozen=True)
class Seen:
    """What one reconcile has read so far; each field ``UNREAD`` until ``decide`` asks for it (None: not found)."""
    migration: Mapping[str, Any]
    pod: Mapping[str, Any] | None | Unread = UNREAD
    target: Mapping[str, Any] | None | Unread = UNREAD
    claims: Mapping[str, Mapping[str, Any] | None] | Unread = UNREAD
    """By claim name (``eligibility.claim_names``)."""
    placement: Placement | Unread = UNREAD
    lease: Mapping[str, Any] | None | Unread = UNREAD
    checkpoint: Mapping[str, Any] | Unread = UNREAD
    """The migration's PodCheckpoint, read once it is created."""


def decide(seen: Seen, node: str, lease_namespace: str, now: datetime) -> Decision:
    """The next step for ``seen.migration`` on ``node`` (pure). ``now`` judges the target's Lease."""
    migration = seen.migration
    phase = migration.get("status", {}).get("phase")
    if phase == MigrationPhase.RESTORING.value:
        return Decision(Step.HANDOVER)
    if phase in _DONE_HERE:
        return Decision(Step.NOTHING)
    if seen.pod is UNREAD:
        return Decision(Step.READ_POD)
    namespace, name = meta(migration)["namespace"], meta(migration)["name"]
    pod_name, target = migration["spec"]["podName"], migration["spec"]["targetNode"]
    if seen.pod is None:
        return Decision(Step.FAIL, f"pod {namespace}/{pod_name} does not exist")
    pod = seen.pod
    if pod.get("spec", {}).get("nodeName") != node:
        return Decision(Step.NOTHING)  # another node's agent is the source
    try:
        layout.node_name(target)
    except UnsafeNameError as err:
        return Decision(Step.REFUSE, str(err))
    if target == node:
        return Decision(Step.REFUSE, f"target node {target} is the node the pod already runs on")
    if seen.target is UNREAD:
        return Decision(Step.READ_TARGET)
    reason = unusable(target, seen.target)
    if reason:
        return Decision(Step.REFUSE, reason)
    assert seen.target is not None  # unusable() said so
    warning = ""
    if phase != MigrationPhase.CHECKPOINTING.value:
        # Before the first kubelet call only: once checkpointing, the pod is already being dumped.
        refusal = _refusal(seen, pod, seen.target, lease_namespace, now)
        if isinstance(refusal, Decision):
            return refusal
        warning = refusal
    if seen.checkpoint is UNREAD:
        return Decision(Step.CHECKPOINT, warning=warning)
    state = seen.checkpoint.get("status", {})
    if state.get("phase") == Phase.SUCCEEDED.value:
        return Decision(Step.COMPLETE, state.get("message", "checkpoint complete"),
                        event=f"migration {name} to {target}: {state.get('message', '')}")
    if state.get("phase") == Phase.FAILED.value:
        return Decision(Step.FAIL, f"checkpoint failed: {state.get('message', '')}")
    return Decision(Step.NOTHING)


def _refusal(seen: Seen, pod: Mapping[str, Any], target: Mapping[str, Any], lease_namespace: str,
             now: datetime) -> Decision | str:
    """A refusal or a read still needed, in the order the checks are cheapest to read for: the pod's owner,
    its volumes, the scheduler's filters on the target, the target's agent. Passed: the warning ("" none)."""
    reason = owner_refusal(pod)
    if reason:
        return Decision(Step.REFUSE, reason)
    if seen.claims is UNREAD:
        return Decision(Step.READ_CLAIMS)
    reason = volume_refusal(pod, seen.claims)
    if reason:
        return Decision(Step.REFUSE, reason)
    if seen.placement is UNREAD:
        return Decision(Step.READ_PLACEMENT)
    reason = unfit(unpinned(pod.get("spec", {})), target, seen.placement.pods, seen.placement.volumes)
    if reason:
        return Decision(Step.REFUSE, reason)
    if seen.lease is UNREAD:
        return Decision(Step.READ_LEASE)
    admission = admit(seen.migration["spec"]["targetNode"], lease_namespace, seen.lease, now)
    if not admission.allowed:
        return Decision(Step.REFUSE, admission.reason)
    return admission.reason


def bound_volumes(claims: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The PersistentVolumes the found claims are bound to (``Step.READ_PLACEMENT`` reads them)."""
    return [claim["spec"]["volumeName"] for claim in claims.values()
            if claim is not None and claim.get("spec", {}).get("volumeName")]


def checkpoint_request(migration: Mapping[str, Any]) -> PodCheckpoint:
    """The PodCheckpoint that is the migration's checkpoint phase: named after it and owned by it."""
    namespace, name = meta(migration)["namespace"], meta(migration)["name"]
    return {
        "apiVersion": API_VERSION, "kind": "PodCheckpoint",
        "metadata": {"name": name, "namespace": namespace, "labels": {MIGRATION_LABEL: name},
                     "annotations": {TARGET_NODE_ANNOTATION: migration["spec"]["targetNode"]},
                     "ownerReferences": [owner_reference(migration)]},
        "spec": {"podName": migration["spec"]["podName"]},
    }


async def reconcile_migration(kube: Kube, node: str, lease_namespace: str, event: str,
                              obj: Mapping[str, Any], retry_later: RetryLater) -> None:
    """Read what ``decide`` asks for and carry out its decision. ``lease_namespace``: where the agents'
    node Leases are (the agent's own namespace)."""
    if event == "DELETED":
        return
    namespace, name = meta(obj)["namespace"], meta(obj)["name"]
    migration = await get_or_none(kube, lpm_path("PodMigration", namespace, name))
    if migration is None:
        return
    seen = Seen(migration)
    # decide asks only for an UNREAD field, and each turn fills one: this ends within as many turns as Seen has.
    while True:
        decision = decide(seen, node, lease_namespace, datetime.now(UTC))
        step = decision.step
        if step is Step.READ_POD:
            seen = replace(seen, pod=await get_or_none(kube, pod_path(namespace, migration["spec"]["podName"])))
        elif step is Step.READ_TARGET:
            seen = replace(seen, target=await get_or_none(kube, node_path(migration["spec"]["targetNode"])))
        elif step is Step.READ_CLAIMS:
            assert isinstance(seen.pod, Mapping)
            seen = replace(seen, claims={claim: await get_or_none(kube, claim_path(namespace, claim))
                                         for claim in claim_names(seen.pod)})
        elif step is Step.READ_PLACEMENT:
            assert not isinstance(seen.claims, Unread)
            volumes: list[Mapping[str, Any]] = [await kube.get(volume_path(v)) for v in bound_volumes(seen.claims)]
            there = await kube.get(pod_path(), {"fieldSelector": f"spec.nodeName={migration['spec']['targetNode']}"})
            seen = replace(seen, placement=Placement(volumes, there.get("items", [])))
        elif step is Step.READ_LEASE:
            seen = replace(seen, lease=await get_or_none(kube, lease_path(lease_namespace,
                                                                          migration["spec"]["targetNode"])))
        elif step is Step.CHECKPOINT:
            seen = replace(seen, checkpoint=await _checkpoint(kube, node, migration, decision.warning))
        else:
            await _carry_out(kube, node, seen, decision, retry_later)
            return


async def _checkpoint(kube: Kube, node: str, migration: Mapping[str, Any], warning: str) -> dict[str, Any]:
    """``Checkpointing``, the PodCheckpoint created (or found: an earlier attempt's), and read."""
    namespace, name = meta(migration)["namespace"], meta(migration)["name"]
    if warning:
        log.warning("migrating to a node whose restore capability is unknown",
                    extra={"fields": {"migration": f"{namespace}/{name}", "reason": warning}})
    await update_status(kube, "PodMigration", namespace, name, lambda status: transition(
        status, MigrationPhase.CHECKPOINTING, f"checkpointing on {node}", settled=_DONE_HERE,
        sourceNode=node, startTime=now()))
    await create_idempotent(kube, lpm_path("PodCheckpoint", namespace), checkpoint_request(migration))
    return await kube.get(lpm_path("PodCheckpoint", namespace, name))


async def _carry_out(kube: Kube, node: str, seen: Seen, decision: Decision, retry_later: RetryLater) -> None:
    migration = seen.migration
    namespace, name = meta(migration)["namespace"], meta(migration)["name"]
    if decision.step is Step.HANDOVER:
        await _handover(kube, node, migration, retry_later)
    elif decision.step in (Step.FAIL, Step.REFUSE):
        await update_status(kube, "PodMigration", namespace, name, lambda status: transition(
            status, MigrationPhase.FAILED, decision.message, settled=_DONE_HERE))
        if decision.step is Step.REFUSE:  # failed before anything was checkpointed: the pod runs on untouched
            assert isinstance(seen.pod, Mapping)
            await events.record(kube, seen.pod, "MigrationRefused", decision.message, warning=True, node=node)
    elif decision.step is Step.COMPLETE:
        assert isinstance(seen.pod, Mapping)
        complete = datetime.now(UTC)
        assert isinstance(seen.checkpoint, Mapping)
        # What the checkpoint warns of (its established TCP connections) is the migration's to say, too.
        warned = {"warnings": seen.checkpoint["status"]["warnings"]} \
            if seen.checkpoint.get("status", {}).get("warnings") else {}
        await update_status(kube, "PodMigration", namespace, name, lambda status: transition(
            status, MigrationPhase.CHECKPOINT_COMPLETE, decision.message, settled=_DONE_HERE,
            podCheckpointRef={"name": name, "namespace": namespace},
            freezeWindow=progress.window(status, checkpointComplete=complete), **warned))
        await events.record(kube, seen.pod, "CheckpointComplete", decision.event, node=node)


async def _handover(kube: Kube, node: str, migration: Mapping[str, Any], retry_later: RetryLater) -> None:
    """The source's turns while the destination restores, on the agent of the node the pod ran on."""
    if migration.get("status", {}).get("sourceNode") != node:
        return
    source = await get_or_none(kube, pod_path(meta(migration)["namespace"], migration["spec"]["podName"]))
    if source is not None and source.get("spec", {}).get("nodeName") != node:
        source = None  # another pod by that name, elsewhere: this node's source is gone
    await release_source(kube, node, migration, source, retry_later)
