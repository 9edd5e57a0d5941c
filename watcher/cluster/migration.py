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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from watcher.cluster import events
from watcher.cluster.admission import check_target
from watcher.cluster.checkpointing import create_idempotent
from watcher.cluster.eligibility import claim_names, owner_refusal, volume_refusal
from watcher.cluster.fit import unfit
from watcher.cluster.nodes import NodeUnusable, usable_target
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
    owner_reference,
    pod_path,
    volume_path,
)
from watcher.cluster.pins import unpinned
from watcher.cluster.release import RetryLater, release_source
from watcher.cluster.status import now, update_status
from watcher.errors import Conflict, NotFound, UnsafeNameError
from watcher.kube.client import Kube
from watcher.store import layout

log = logging.getLogger(__name__)

_DONE_HERE = {MigrationPhase.CHECKPOINT_COMPLETE.value, MigrationPhase.RESTORING.value,
              MigrationPhase.SUCCEEDED.value, MigrationPhase.FAILED.value}


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


def _phase(phase: MigrationPhase, message: str, **extra: Any) -> Any:
    def mutate(status: dict[str, Any]) -> dict[str, Any] | None:
        if status.get("phase") in _DONE_HERE:
            return None
        if status.get("phase") == phase.value and status.get("message") == message:
            return None
        status.update({"phase": phase.value, "message": message, **extra})
        return status
    return mutate


async def reconcile_migration(kube: Kube, node: str, lease_namespace: str, event: str,
                              obj: Mapping[str, Any], retry_later: RetryLater) -> None:
    """``lease_namespace``: where the agents' node Leases are (the agent's own namespace)."""
    if event == "DELETED":
        return
    namespace, name = meta(obj)["namespace"], meta(obj)["name"]
    try:
        migration = await kube.get(lpm_path("PodMigration", namespace, name))
    except NotFound:
        return
    if migration.get("status", {}).get("phase") == MigrationPhase.RESTORING.value:
        await _handover(kube, node, migration, retry_later)
        return
    if migration.get("status", {}).get("phase") in _DONE_HERE:
        return
    pod_name, target = migration["spec"]["podName"], migration["spec"]["targetNode"]
    try:
        pod = await kube.get(pod_path(namespace, pod_name))
    except NotFound:
        await update_status(kube, "PodMigration", namespace, name,
                            _phase(MigrationPhase.FAILED, f"pod {namespace}/{pod_name} does not exist"))
        return
    if pod.get("spec", {}).get("nodeName") != node:
        return  # another node's agent is the source
    try:
        layout.node_name(target)
        if target == node:
            raise NodeUnusable(f"target node {target} is the node the pod already runs on")
        target_node = await usable_target(kube, target)
    except (NodeUnusable, UnsafeNameError) as err:
        await _refuse(kube, node, pod, namespace, name, str(err))
        return
    if migration.get("status", {}).get("phase") != MigrationPhase.CHECKPOINTING.value:
        # Before the first kubelet call only: once checkpointing, the pod is already being dumped.
        refusal = await _refusal(kube, pod, target_node)
        if refusal:
            await _refuse(kube, node, pod, namespace, name, refusal)
            return
        admission = await check_target(kube, lease_namespace, target, datetime.now(UTC))
        if not admission.allowed:
            await _refuse(kube, node, pod, namespace, name, admission.reason)
            return
        if admission.reason:
            log.warning("migrating to a node whose restore capability is unknown",
                        extra={"fields": {"migration": f"{namespace}/{name}", "reason": admission.reason}})
    await update_status(kube, "PodMigration", namespace, name, _phase(
        MigrationPhase.CHECKPOINTING, f"checkpointing on {node}", sourceNode=node, startTime=now()))
    request: PodCheckpoint = {
        "apiVersion": API_VERSION, "kind": "PodCheckpoint",
        "metadata": {"name": name, "namespace": namespace, "labels": {MIGRATION_LABEL: name},
                     "annotations": {TARGET_NODE_ANNOTATION: target},
                     "ownerReferences": [owner_reference(migration)]},
        "spec": {"podName": pod_name},
    }
    await create_idempotent(kube, lpm_path("PodCheckpoint", namespace), request)
    checkpoint = await kube.get(lpm_path("PodCheckpoint", namespace, name))
    state = checkpoint.get("status", {})
    if state.get("phase") == Phase.SUCCEEDED.value:
        await update_status(kube, "PodMigration", namespace, name, _phase(
            MigrationPhase.CHECKPOINT_COMPLETE, state.get("message", "checkpoint complete"),
            podCheckpointRef={"name": name, "namespace": namespace}))
        await events.record(kube, pod, "CheckpointComplete",
                            f"migration {name} to {target}: {state.get('message', '')}", node=node)
    elif state.get("phase") == Phase.FAILED.value:
        await update_status(kube, "PodMigration", namespace, name, _phase(
            MigrationPhase.FAILED, f"checkpoint failed: {state.get('message', '')}"))


async def _handover(kube: Kube, node: str, migration: Mapping[str, Any], retry_later: RetryLater) -> None:
    """The source's turns while the destination restores, on the agent of the node the pod ran on."""
    if migration.get("status", {}).get("sourceNode") != node:
        return
    namespace = meta(migration)["namespace"]
    try:
        source: dict[str, Any] | None = await kube.get(pod_path(namespace, migration["spec"]["podName"]))
    except NotFound:
        source = None
    if source is not None and source.get("spec", {}).get("nodeName") != node:
        source = None  # another pod by that name, elsewhere: this node's source is gone
    await release_source(kube, node, migration, source, retry_later)


async def _refusal(kube: Kube, pod: Mapping[str, Any], target: Mapping[str, Any]) -> str | None:
    """Why this pod cannot move to ``target`` at all: its owner, its volumes, or the target's filters."""
    reason = owner_refusal(pod)
    if reason:
        return reason
    namespace = meta(pod)["namespace"]
    claims: dict[str, Mapping[str, Any] | None] = {}
    for claim in claim_names(pod):
        try:
            claims[claim] = await kube.get(claim_path(namespace, claim))
        except NotFound:
            claims[claim] = None
    reason = volume_refusal(pod, claims)
    if reason:
        return reason
    volumes = [await kube.get(volume_path(claim["spec"]["volumeName"])) for claim in claims.values()
               if claim is not None and claim.get("spec", {}).get("volumeName")]
    there = await kube.get(pod_path(), {"fieldSelector": f"spec.nodeName={meta(target)['name']}"})
    return unfit(unpinned(pod.get("spec", {})), target, there.get("items", []), volumes)


async def _refuse(kube: Kube, node: str, pod: Mapping[str, Any], namespace: str, name: str, reason: str) -> None:
    """Failed before anything was checkpointed: the source pod runs on untouched."""
    await update_status(kube, "PodMigration", namespace, name, _phase(MigrationPhase.FAILED, reason))
    await events.record(kube, pod, "MigrationRefused", reason, warning=True, node=node)
