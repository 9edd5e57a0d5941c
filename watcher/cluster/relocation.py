"""Telling the API that a checkpoint held locally is now in the shared store.

Called by the mover after the shared copy is complete and before the local copy is removed.
Every content object naming this checkpoint by a ``file://`` URI in this node's local store
(and the same SHA-256) is switched to its ``shared://`` URI and ``storageType: shared`` — the
one change the CRDs allow to a content's spec. The request's message says so, and a PodMigration
waiting at ``CheckpointComplete`` gets a new message: that status write is also the event
that brings the destination agent back to restore it (it watches PodMigrations).

Idempotent: a content already ``shared`` is left alone, so a mover that crashed after this
step repeats nothing when it comes back.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watcher.cluster import events
from watcher.cluster.objects import MIGRATION_LABEL, MigrationPhase, lpm_path, meta
from watcher.cluster.status import ATTEMPTS, transition, update_status
from watcher.errors import Conflict, NotFound, UnsafeNameError
from watcher.kube.client import Kube
from watcher.store import layout
from watcher.store.catalog import Checkpoint
from watcher.store.layout import StorageType

log = logging.getLogger(__name__)

_REQUEST_OF = {"ContainerCheckpointContent": ("ContainerCheckpoint", "containerCheckpointRef"),
               "PodCheckpointContent": ("PodCheckpoint", "podCheckpointRef")}


def _entries(kind: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a content's spec that each describe one container's artifact."""
    return [spec] if kind == "ContainerCheckpointContent" else list(spec.get("containers") or [])


def _switch(kind: str, spec: dict[str, Any], node_store: Path, checkpoint: Checkpoint) -> bool:
    """Point this spec's local entries for ``checkpoint`` at the shared store (pure); True if any changed."""
    sums = {m.container_name: m.checksum_sha256 for m in checkpoint.manifests}
    changed = False
    for entry in _entries(kind, spec):
        if entry.get("storageType") != StorageType.LOCAL.value:
            continue
        try:
            ref = layout.parse_local_uri(str(entry.get("artifactURI")), node_store)
        except UnsafeNameError:
            continue  # another node's local store, or not ours to touch
        if ((ref.pod_uid, ref.checkpoint_id) != (checkpoint.marker.pod_uid, checkpoint.marker.checkpoint_id)
                or entry.get("checksumSHA256") != sums.get(ref.container)):
            continue
        entry["artifactURI"] = ref.uri
        entry["storageType"] = StorageType.SHARED.value
        changed = True
    return changed


async def announce_moved(kube: Kube, node: str, local_store: Path, checkpoint: Checkpoint) -> None:
    for kind in _REQUEST_OF:
        for content in (await kube.get(lpm_path(kind))).get("items", []):
            if _switch(kind, copy.deepcopy(content.get("spec", {})), local_store, checkpoint):
                await _replace(kube, kind, meta(content)["name"], local_store, checkpoint)
                await _report(kube, kind, content, node, checkpoint)


async def _replace(kube: Kube, kind: str, name: str, local_store: Path, checkpoint: Checkpoint) -> None:
    for _ in range(ATTEMPTS):
        try:
            content = await kube.get(lpm_path(kind, None, name))
        except NotFound:
            return
        if not _switch(kind, content["spec"], local_store, checkpoint):
            return
        try:
            await kube.replace(lpm_path(kind, None, name), content)
        except Conflict:
            continue
        log.info("content points at the shared store now", extra={"fields": {"kind": kind, "name": name}})
        return
    raise Conflict(f"{kind} {name}: kept changing under us ({ATTEMPTS} tries)", 409)


async def _report(kube: Kube, kind: str, content: Mapping[str, Any], node: str, checkpoint: Checkpoint) -> None:
    request_kind, ref_field = _REQUEST_OF[kind]
    ref = content["spec"].get(ref_field) or {}
    where = f"{checkpoint.marker.pod_uid}/{checkpoint.marker.checkpoint_id}"
    message = f"checkpoint {where} moved from node {node}'s local store to the shared store"

    def bound(status: dict[str, Any]) -> dict[str, Any] | None:
        if status.get("boundContentName") != meta(content)["name"] or status.get("message") == message:
            return None
        return {**status, "message": message}

    try:
        request = await update_status(kube, request_kind, ref["namespace"], ref["name"], bound)
    except (NotFound, KeyError):
        return  # the request was deleted; the content stands on its own
    await events.record(kube, request, "CheckpointMovedToShared", message, node=node)
    owner = meta(request).get("labels", {}).get(MIGRATION_LABEL)
    if request_kind != "PodCheckpoint" or not owner:
        return
    complete = MigrationPhase.CHECKPOINT_COMPLETE
    try:
        await update_status(kube, "PodMigration", ref["namespace"], owner,
                            lambda status: transition(status, complete, message, within={complete.value}))
    except NotFound:
        return
