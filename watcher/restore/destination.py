"""The destination node's half: a completed checkpoint in, the pod running here out.

A PodMigration whose ``targetNode`` is this node and whose phase is ``CheckpointComplete`` is
taken to ``Restoring``: every container's dump is read from the store with its SHA-256 checked
against both the manifest and the PodCheckpointContent, turned into a checkpoint image and
imported into the node's runtime; then the restored pod is created, pinned here, with the same
spec and each container's image set to its checkpoint image — created held, outside its workload.
Once that pod runs and is Ready it takes the source's place (``watcher.cluster.handover``), in turns with
the source's agent, each acting only on its own node's pods: the source's disruption budget is asked there,
the pod here gets the source's labels and controller, the source is deleted there (unless
``retainOriginalPod``), and the migration is ``Succeeded``.

Restarts never restore twice: the restored pod's name is derived from the migration, so an
agent that died between creating it and recording it finds it and carries on from there.

A store that fails on its side while the checkpoint is read (``StoreUnavailable``: an S3 or NFS server
gone, a timeout) does not fail the migration at once: the checkpoint is still there, and the source pod
runs on. The migration stays ``Restoring``, its message says why and that it is tried again every
``STORE_RETRY`` seconds; only a store still failing after ``store_patience`` seconds fails it.

``decide`` is the pure step over what has been read; ``Destination.reconcile`` reads what it asks for and
carries it out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from watcher.cluster import events, handover, progress
from watcher.cluster.handover import Handover
from watcher.cluster.handover import Step as HandoverStep
from watcher.cluster.objects import MigrationPhase, lpm_path, meta, pod_path
from watcher.cluster.reads import UNREAD, Unread, get_or_none
from watcher.cluster.status import now, transition, update_status
from watcher.errors import ApiError, Conflict, LpmError, NotFound, StoreUnavailable
from watcher.kube.client import Kube
from watcher.kube.names import dns_name
from watcher.observe import AgentMetrics, Operation
from watcher.restore.early import EarlyPulls
from watcher.restore.importer import Importer
from watcher.restore.pipeline import RestoreRefused, import_checkpoint
from watcher.restore.podspec import restored_spec
from watcher.restore.source import Source
from watcher.store import layout

log = logging.getLogger(__name__)

RESTORED_FROM_ANNOTATION = "lpm.my.domain/restored-from"
SOURCE_LOOK = 5.0  # seconds between looks while it is the source's agent's turn
STORE_RETRY = 5.0  # seconds between tries while the store fails on its side
STORE_PATIENCE = 600.0  # seconds a restore waits for such a store before its migration fails (the default)

RetryLater = Callable[[float, Mapping[str, Any]], None]
"""Reconcile this PodMigration again after so many seconds (a change to the source pod brings no event here:
this agent watches its own node's pods)."""

_OURS = frozenset({MigrationPhase.CHECKPOINT_COMPLETE.value, MigrationPhase.RESTORING.value})


class Step(str, Enum):
    """What the destination's agent does next for a PodMigration."""
    NOTHING = "nothing"
    """Another node's migration, or not the destination's phase."""
    READ_RESTORED = "read restored"
    """The restored pod, which an earlier attempt may have created (its name is derived from the migration)."""
    HAND_OVER = "hand over"
    """The restored pod exists: carry out ``handover.decide`` (``watcher.cluster.handover``)."""
    READ_CONTENT = "read content"
    """The PodCheckpointContent the migration's checkpoint is bound to."""
    WAIT_LOCAL = "wait local"
    """Wait, not fail, while the checkpoint is in its source node's local store (the shared store was
    unavailable): only that node can read it. The source's mover switches the content to shared and writes the
    migration's status, and that watch event brings this reconcile back. ``containers``: those held there."""
    BEGIN = "begin"
    """``Restoring``, then the source pod: its spec is the restored pod's."""
    RESTORE = "restore"
    """Every container's checkpoint image imported, the restored pod created held, and recorded."""
    FAIL = "fail"
    """The restore is refused: ``message`` says why."""


@dataclass(frozen=True)
class Decision:
    step: Step
    message: str = ""
    containers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Seen:
    """What one reconcile has read so far; each field ``UNREAD`` until ``decide`` asks for it (None: not found)."""
    migration: Mapping[str, Any]
    restored: Mapping[str, Any] | None | Unread = UNREAD
    content: Mapping[str, Any] | Unread = UNREAD
    source: Mapping[str, Any] | None | Unread = UNREAD


def decide(seen: Seen, node: str) -> Decision:
    """The next step for ``seen.migration`` on ``node``, its destination or not (pure)."""
    migration = seen.migration
    if migration["spec"]["targetNode"] != node or migration.get("status", {}).get("phase") not in _OURS:
        return Decision(Step.NOTHING)
    if seen.restored is UNREAD:
        return Decision(Step.READ_RESTORED)
    if seen.restored is not None:
        return Decision(Step.HAND_OVER)
    if seen.content is UNREAD:
        return Decision(Step.READ_CONTENT)
    content = seen.content
    local = tuple(c["containerName"] for c in content["spec"]["containers"] if c.get("storageType") == "local")
    if local:
        return Decision(Step.WAIT_LOCAL, containers=local)
    if seen.source is UNREAD:
        return Decision(Step.BEGIN)
    namespace, pod = meta(migration)["namespace"], migration["spec"]["podName"]
    if seen.source is None:
        return Decision(Step.FAIL, f"source pod {namespace}/{pod} is gone; its spec is needed to restore it")
    writer, ran_on = content["spec"].get("sourceNode"), seen.source.get("spec", {}).get("nodeName")
    if writer != ran_on:
        # The API server lets only a node's own agent write a content naming that node
        # (docs/threat-model.md): one naming another node is not this pod's checkpoint.
        return Decision(Step.FAIL, f"PodCheckpointContent {meta(content)['name']} was taken on node {writer}, but "
                                   f"source pod {namespace}/{meta(seen.source)['name']} runs on node {ran_on}: "
                                   "not restoring a checkpoint its own node did not take")
    return Decision(Step.RESTORE)


@dataclass
class _StoreAway:
    """A restore waiting for the store: since when (``time.monotonic()``), and when it is tried again."""
    since: float
    next_try: float = 0.0


def restored_pod_name(migration: Mapping[str, Any]) -> str:
    return dns_name(migration["spec"]["podName"], "restored", meta(migration)["uid"][:8])


@dataclass
class Destination:
    kube: Kube
    node: str
    source: Source
    """The store the checkpoints are read from (the shared directory)."""
    work_dir: Path
    importer: Importer
    metrics: AgentMetrics
    retry_later: RetryLater
    early: EarlyPulls | None = None
    """Pulls the base images of migrations to this node while they are checkpointed (None: the restore does)."""
    store_patience: float = STORE_PATIENCE
    """Seconds a restore waits for a store that fails on its side before its migration fails."""
    _store_away: dict[str, _StoreAway] = field(default_factory=dict)
    """By migration UID: restores waiting for the store (kept in memory: a restarted agent tries at once)."""

    async def reconcile(self, event: str, obj: Mapping[str, Any]) -> None:
        """Read what ``decide`` asks for and carry out its decision."""
        if event == "DELETED":
            self._store_away.pop(meta(obj).get("uid", ""), None)
            return
        namespace, name = meta(obj)["namespace"], meta(obj)["name"]
        migration = await get_or_none(self.kube, lpm_path("PodMigration", namespace, name))
        if migration is None:
            return
        away = self._store_away.get(meta(migration)["uid"])
        if away is not None and time.monotonic() < away.next_try:
            return  # an event while the store is waited for (its own status write among them): retry_later is due
        if self.early is not None:
            self.early.begin(migration)
        seen = Seen(migration)
        started = 0.0  # time.monotonic() when this reconcile began the restore (Step.BEGIN)
        try:
            # decide asks only for an UNREAD field, and each turn fills one: this ends within as many turns
            # as Seen has fields.
            while True:
                decision = decide(seen, self.node)
                step = decision.step
                if step is Step.READ_RESTORED:
                    seen = replace(seen, restored=await get_or_none(self.kube, pod_path(
                        namespace, restored_pod_name(migration))))
                elif step is Step.HAND_OVER:
                    assert isinstance(seen.restored, Mapping)
                    await self._finish_when_running(migration, seen.restored)
                    return
                elif step is Step.READ_CONTENT:
                    seen = replace(seen, content=await self._content(migration))
                elif step is Step.WAIT_LOCAL:
                    log.info("checkpoint held in its source node's local store; waiting for the shared store",
                             extra={"fields": {"migration": f"{namespace}/{name}",
                                               "containers": list(decision.containers)}})
                    return
                elif step is Step.BEGIN:
                    started = time.monotonic()
                    await update_status(self.kube, "PodMigration", namespace, name, self._restoring)
                    seen = replace(seen, source=await get_or_none(self.kube, pod_path(
                        namespace, migration["spec"]["podName"])))
                elif step is Step.RESTORE:
                    assert isinstance(seen.content, Mapping) and isinstance(seen.source, Mapping)
                    if self.early is not None:  # a base image still being pulled: not a second pull beside it
                        await self.early.settled(migration)
                    seen = replace(seen, restored=await self._restore(migration, seen.content, seen.source, started))
                elif step is Step.FAIL:
                    raise RestoreRefused(decision.message)  # failed as every refusal is, just below
                else:
                    return
        except StoreUnavailable as err:  # the store's server or disk failed on its side: the checkpoint is still there
            await self._wait_for_store(migration, err)
        except NotFound as err:  # an object the restore needs is gone: it cannot go on
            await self._fail(migration, err)
        except ApiError:
            raise  # API trouble: the worker retries
        except LpmError as err:  # checksums, image, import, the restored pod failing
            await self._fail(migration, err)

    async def _content(self, migration: Mapping[str, Any]) -> dict[str, Any]:
        """The PodCheckpointContent the migration's checkpoint is bound to."""
        checkpoint = await self.kube.get(lpm_path("PodCheckpoint", meta(migration)["namespace"],
                                                  migration["status"]["podCheckpointRef"]["name"]))
        return await self.kube.get(lpm_path("PodCheckpointContent", None, checkpoint["status"]["boundContentName"]))

    async def _restore(self, migration: Mapping[str, Any], content: Mapping[str, Any], source: Mapping[str, Any],
                       started: float) -> dict[str, Any]:
        """Every container's checkpoint image imported, then the restored pod created (held) and recorded."""
        namespace, name = meta(migration)["namespace"], meta(migration)["name"]
        images: dict[str, str] = {}
        timings: dict[str, float] = {}
        for container in content["spec"]["containers"]:
            images[container["containerName"]] = await self._image(container, timings)
        control_started = time.monotonic()
        restored = await self._create_pod(migration, source, images)
        await update_status(self.kube, "PodMigration", namespace, name, lambda status: transition(
            status, MigrationPhase.RESTORING, f"restored pod {meta(restored)['name']} created on {self.node}",
            restoredPodName=meta(restored)["name"], checkpointImages=images))
        self.metrics.restore_duration.observe(time.monotonic() - started)
        self._store_away.pop(meta(migration)["uid"], None)
        log.info("restored pod created", extra={"fields": {
            "migration": f"{namespace}/{name}", "pod": f"{namespace}/{meta(restored)['name']}",
            "seconds": round(time.monotonic() - started, 3), **{k: round(v, 3) for k, v in timings.items()},
            "createSeconds": round(time.monotonic() - control_started, 3)}})
        return restored

    async def _image(self, container: Mapping[str, Any], timings: dict[str, float]) -> str:
        imported = await import_checkpoint(self.source, layout.parse_uri(container["artifactURI"]), self.work_dir,
                                           self.importer, container.get("checksumSHA256"))
        for phase, seconds in imported.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
        return imported.reference

    async def _create_pod(self, migration: Mapping[str, Any], source: Mapping[str, Any],
                          images: Mapping[str, str]) -> dict[str, Any]:
        namespace = meta(migration)["namespace"]
        spec = restored_spec(source["spec"], self.node, images)
        labels = handover.held_labels(meta(migration)["name"])
        annotations = {k: v for k, v in meta(source).get("annotations", {}).items()
                       if not k.startswith("lpm.my.domain/") and k != handover.DELETION_COST_ANNOTATION}
        annotations[RESTORED_FROM_ANNOTATION] = f"{namespace}/{meta(source)['name']}"
        annotations[handover.HELD_ANNOTATION] = handover.HELD
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": restored_pod_name(migration), "namespace": namespace, "labels": labels,
                             "annotations": annotations},
                "spec": spec}
        try:
            return await self.kube.create(pod_path(namespace), body)
        except Conflict:
            return await self.kube.get(pod_path(namespace, restored_pod_name(migration)))

    async def _finish_when_running(self, migration: Mapping[str, Any], restored: Mapping[str, Any]) -> None:
        """Carry out ``handover.decide`` until the migration is done (see ``watcher.cluster.handover``)."""
        namespace, name = meta(migration)["namespace"], meta(migration)["name"]
        source_name, restored_name = migration["spec"]["podName"], meta(restored)["name"]
        retain = migration["spec"].get("retainOriginalPod", False)
        if handover.running(restored) and "restoredRunning" not in migration.get("status", {}).get("freezeWindow", {}):
            await self._ran(migration, datetime.now(UTC))
        source = await self._get_pod(namespace, source_name)
        step = handover.decide(restored, source, retain, handover.handover_of(migration))
        if step is HandoverStep.WAIT:
            return  # the pod watch brings us back when it changes
        if step is HandoverStep.RESTORED_FAILED:
            if handover.is_held(restored):  # never part of the workload: the source runs on, alone
                await self._delete_pod(namespace, restored_name)
            raise RestoreRefused(f"restored pod {restored_name} failed: " + (
                handover.stuck(restored) or restored.get("status", {}).get("message", "no reason given")))
        if step is HandoverStep.DISCARD:
            await self._delete_pod(namespace, restored_name)
            raise RestoreRefused(f"source pod {namespace}/{source_name} was removed while the migration ran (a "
                                 f"scale-down, a rollout or a person): the restored copy {restored_name} is "
                                 "deleted rather than left as a pod its workload did not ask for")
        source_node = (source or {}).get("spec", {}).get("nodeName") or migration.get("status", {}).get("sourceNode")
        if step is HandoverStep.ASK_SOURCE:
            await self._handover(migration, Handover.RESTORED_READY,
                                 f"restored pod {restored_name} running on {self.node}; node {source_node}'s agent "
                                 f"releases source pod {namespace}/{source_name}")
        if step in (HandoverStep.ASK_SOURCE, HandoverStep.WAIT_FOR_SOURCE):
            self.retry_later(SOURCE_LOOK, migration)  # a source gone meanwhile discards the copy
            return
        if step is HandoverStep.ADOPT:
            await self.kube.merge_patch(pod_path(namespace, restored_name), handover.release_patch(source or {}, name))
            log.info("restored pod released to its workload", extra={"fields": {
                "migration": f"{namespace}/{name}", "pod": f"{namespace}/{restored_name}",
                "controller": (handover.controller_of(source or {}) or {}).get("name")}})
            step = HandoverStep.DONE if retain else HandoverStep.MARK_ADOPTED
        if step is HandoverStep.MARK_ADOPTED:
            await self._handover(migration, Handover.ADOPTED,
                                 f"restored pod {restored_name} took the source's place on {self.node}; node "
                                 f"{source_node}'s agent removes source pod {namespace}/{source_name}")
            self.retry_later(SOURCE_LOOK, migration)
            return
        held = handover.is_held(await self._get_pod(namespace, restored_name) or {})
        await update_status(self.kube, "PodMigration", namespace, name, lambda status: transition(
            status, MigrationPhase.SUCCEEDED, f"running on {self.node} as {restored_name}"
            + (" (kept apart from its controller: retainOriginalPod)" if held else ""),
            restoredPodName=restored_name, completionTime=now()))
        await events.record(self.kube, restored, "Restored", f"restored from {namespace}/{source_name} by {name}",
                            node=self.node)
        if source is not None:  # the Event outlives the pod: `kubectl get events` still tells where it went
            fate = "this pod was kept: retainOriginalPod" if retain else "this pod is removed"
            await events.record(self.kube, source, "Migrated", f"running on {self.node} as {restored_name} "
                                f"({name}); " + fate, node=self.node)

    def _restoring(self, status: dict[str, Any]) -> dict[str, Any] | None:
        """The restore begins here (a status mutation)."""
        return transition(status, MigrationPhase.RESTORING, f"restoring on {self.node}",
                          freezeWindow=progress.window(status, restoreStarted=datetime.now(UTC)))

    async def _ran(self, migration: Mapping[str, Any], moment: datetime) -> None:
        """The freeze window closes: the restored pod's processes run (seen at ``moment``)."""
        written: list[dict[str, Any]] = []  # the window this reconcile closed, if it was the one

        def closed(status: dict[str, Any]) -> dict[str, Any] | None:
            written.clear()
            if status.get("phase") != MigrationPhase.RESTORING.value or \
                    "restoredRunning" in status.get("freezeWindow", {}):
                return None
            status["freezeWindow"] = progress.window(status, restoredRunning=moment)
            written[:] = [status["freezeWindow"]]
            return status
        await update_status(self.kube, "PodMigration", meta(migration)["namespace"], meta(migration)["name"], closed)
        if not written:
            return
        seconds = written[0].get("seconds")
        if isinstance(seconds, (int, float)) and seconds >= 0:
            self.metrics.freeze_window.observe(seconds)
        log.info("restored pod running: the freeze window closes", extra={"fields": {
            "migration": f"{meta(migration)['namespace']}/{meta(migration)['name']}", "freezeSeconds": seconds}})

    async def _handover(self, migration: Mapping[str, Any], state: Handover, message: str) -> None:
        await update_status(self.kube, "PodMigration", meta(migration)["namespace"], meta(migration)["name"],
                            lambda status: handover.advance(status, state, message))

    async def _get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(pod_path(namespace, name))
        except NotFound:
            return None

    async def _delete_pod(self, namespace: str, name: str) -> None:
        try:
            await self.kube.request("DELETE", pod_path(namespace, name))
        except NotFound:
            pass

    async def _wait_for_store(self, migration: Mapping[str, Any], err: StoreUnavailable) -> None:
        """Stay ``Restoring`` and try again in ``STORE_RETRY`` s, saying why; fail once ``store_patience`` is over."""
        namespace, name, uid = meta(migration)["namespace"], meta(migration)["name"], meta(migration)["uid"]
        moment = time.monotonic()
        away = self._store_away.setdefault(uid, _StoreAway(since=moment))
        waited = moment - away.since
        if waited >= self.store_patience:
            await self._fail(migration, StoreUnavailable(
                f"the store failed on its side for {waited:.0f} s (--restore-store-patience "
                f"{self.store_patience:g}); last: {err}"))
            return
        # Events before then are let be (this very status write brings one); retry_later's, at STORE_RETRY, is not.
        away.next_try = moment + STORE_RETRY / 2
        log.warning("store unavailable during the restore; trying again", extra={"fields": {
            "migration": f"{namespace}/{name}", "reason": str(err), "retryInSeconds": STORE_RETRY,
            "waitedSeconds": round(waited, 1)}})
        message = (f"waiting for the store on {self.node}: it failed on its side while the checkpoint was read "
                   f"({err}); trying again every {STORE_RETRY:g} s for up to {self.store_patience:g} s, the source "
                   "pod runs on meanwhile")
        await update_status(self.kube, "PodMigration", namespace, name, lambda status: transition(
            status, MigrationPhase.RESTORING, message, within={MigrationPhase.RESTORING.value}))
        self.retry_later(STORE_RETRY, migration)

    async def _fail(self, migration: Mapping[str, Any], err: LpmError) -> None:
        self._store_away.pop(meta(migration)["uid"], None)
        self.metrics.failed(Operation.RESTORE, err)
        reason = str(err)
        namespace, name = meta(migration)["namespace"], meta(migration)["name"]
        log.error("restore failed", extra={"fields": {"migration": f"{namespace}/{name}", "reason": reason}})
        await update_status(self.kube, "PodMigration", namespace, name,
                            lambda status: transition(status, MigrationPhase.FAILED, f"restore failed: {reason}"))
        try:
            source = await self.kube.get(pod_path(namespace, migration["spec"]["podName"]))
        except NotFound:
            return
        await events.record(self.kube, source, "RestoreFailed", reason, warning=True, node=self.node)

