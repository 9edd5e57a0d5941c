"""The source node's half of the handover (``watcher.cluster.handover``): release the source pod, then remove it.

A PodMigration that is ``Restoring`` a pod of this node's: when the destination's agent records
``RestoredReady``, this agent asks the source's disruption budget (a dry-run eviction; refused, the migration
says so and it asks again every few seconds), gives a ReplicaSet's source the lowest deletion cost and
records ``SourceReleased``; when the destination records ``Adopted``, it deletes the source pod and records
``SourceRemoved``. Only pods on this node are touched: the API server refuses anything else
(deploy/base/admission/agent-pods.yaml).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from watcher.cluster import handover
from watcher.cluster.handover import Handover, SourceStep
from watcher.cluster.objects import MigrationPhase, meta, pod_path
from watcher.cluster.status import transition, update_status
from watcher.errors import ApiError, Conflict, NotFound
from watcher.kube.client import Kube

log = logging.getLogger(__name__)

EVICTION_RETRY = 5.0  # seconds between two dry-run evictions a disruption budget refused

RetryLater = Callable[[float, Mapping[str, Any]], None]


async def release_source(kube: Kube, node: str, migration: Mapping[str, Any], source: Mapping[str, Any] | None,
                         retry_later: RetryLater) -> None:
    """Carry out ``handover.decide_source`` for ``migration``, whose source pod runs on this node."""
    namespace, name = meta(migration)["namespace"], meta(migration)["name"]
    pod = migration["spec"]["podName"]
    step = handover.decide_source(source, migration["spec"].get("retainOriginalPod", False),
                                  handover.handover_of(migration))
    if step is SourceStep.RELEASE:
        assert source is not None
        if not await _budget_allows(kube, migration, pod, retry_later):
            return
        if handover.controller_of(source) is not None:
            # With the resourceVersion read before the dry run: had a scale-down or a rollout deleted the source
            # meanwhile (the Eviction API says yes to a pod already being deleted), the patch conflicts and the
            # destination discards its copy instead of handing the ReplicaSet one pod too many.
            try:
                await kube.merge_patch(pod_path(namespace, pod), {"metadata": {
                    "resourceVersion": meta(source)["resourceVersion"],
                    "annotations": {handover.DELETION_COST_ANNOTATION: handover.LOWEST_DELETION_COST}}})
            except (Conflict, NotFound):
                retry_later(0.0, migration)
                return
        await _record(kube, migration, Handover.SOURCE_RELEASED,
                      f"source pod {namespace}/{pod} released on {node}; the restored pod takes its place")
        log.info("source pod released", extra={"fields": {"migration": f"{namespace}/{name}",
                                                     "pod": f"{namespace}/{pod}"}})
    elif step is SourceStep.REMOVE:
        if source is not None and not meta(source).get("deletionTimestamp"):
            try:  # this pod instance only: never a new pod of the same name
                await kube.request("DELETE", pod_path(namespace, pod), body={
                    "apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": meta(source)["uid"]}})
            except (NotFound, Conflict):
                pass  # gone already, or another pod by that name now: not ours to delete
        await _record(kube, migration, Handover.SOURCE_REMOVED, f"source pod {namespace}/{pod} removed from {node}")
        log.info("source pod removed", extra={"fields": {"migration": f"{namespace}/{name}",
                                                     "pod": f"{namespace}/{pod}"}})


async def _budget_allows(kube: Kube, migration: Mapping[str, Any], pod: str, retry_later: RetryLater) -> bool:
    """A dry-run eviction of the source: False (and a retry scheduled) when a disruption budget refuses."""
    namespace, name = meta(migration)["namespace"], meta(migration)["name"]
    try:
        # Dry run in the query too: that is what admission sees (request.dryRun), and lpm-agent-pods lets an
        # agent's eviction through only as a dry run.
        await kube.request("POST", pod_path(namespace, pod) + "/eviction", {"dryRun": "All"},
                           body=handover.dry_run_eviction(namespace, pod))
    except NotFound:
        return True  # gone meanwhile: the destination discards its copy on its next look
    except ApiError as err:
        if err.status != 429:
            raise
        message = (f"restored pod running on {migration['spec']['targetNode']}; waiting to remove source pod "
                   f"{namespace}/{pod}: eviction refused ({err}); asking again every {EVICTION_RETRY:.0f} s")
        restoring = MigrationPhase.RESTORING
        await update_status(kube, "PodMigration", namespace, name,
                            lambda status: transition(status, restoring, message, within={restoring.value}))
        retry_later(EVICTION_RETRY, migration)
        return False
    return True


async def _record(kube: Kube, migration: Mapping[str, Any], state: Handover, message: str) -> None:
    await update_status(kube, "PodMigration", meta(migration)["namespace"], meta(migration)["name"],
                        lambda status: handover.advance(status, state, message))
