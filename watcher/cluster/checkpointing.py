"""The source node's half: checkpoint requests in, committed and announced checkpoints out.

ContainerCheckpoint -> one container; PodCheckpoint -> every container of the pod under ONE
checkpoint ID, the marker after the last. Each reconciler re-reads its object, acts only for
pods on this node, and is idempotent by phase, so relists and restarts repeat no finished work
(``decide``, pure, says whether to checkpoint; the reconcilers carry it out).
Failures a person can act on end the request as ``Failed`` with the reason, and an Event on the
pod; API trouble is raised for the worker to retry. A checkpoint taken while the shared store is
unavailable is held in the node's local store (``file://``, ``storageType: local``): the request
still succeeds, its message and a Warning Event say so, and the mover brings it over later.
Each content names the node that took it (``spec.sourceNode``, the manifest's): the API server lets
only that node's agent write it (deploy/base/admission, docs/threat-model.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from watcher.archive import names
from watcher.archive.identity import Identity
from watcher.cluster import events, progress, sockets
from watcher.cluster.checkpointers import Checkpointer
from watcher.cluster.claims import Claims
from watcher.cluster.objects import (
    API_VERSION,
    MIGRATION_LABEL,
    ORIGIN_ANNOTATION,
    TARGET_NODE_ANNOTATION,
    MigrationPhase,
    Phase,
    PodCheckpointContentSpec,
    StoredArtifact,
    content_name,
    lpm_path,
    meta,
    pod_path,
)
from watcher.cluster.reads import UNREAD, Unread, get_or_none
from watcher.cluster.sinks import Places, Sink
from watcher.cluster.sockets import Sockets
from watcher.cluster.status import FINISHED, now, transition, update_status
from watcher.errors import ArchiveError, Conflict, LpmError, StoreError, UnsafeNameError
from watcher.ingest.service import IngestResult, StagedArchive
from watcher.inspect.model import TcpConnection
from watcher.kube.client import Kube
from watcher.kubelet import KubeletError
from watcher.observe import AgentMetrics, Operation
from watcher.runtime.checkpoint import RuntimeCheckpointError
from watcher.store.manifest import Manifest
from watcher.stores import Where
from watcher.zstream import CompressionSettings, Tally

log = logging.getLogger(__name__)

# What ends a request as Failed (the reason is in the message); anything else is retried.
FINAL_ERRORS = (KubeletError, RuntimeCheckpointError, ArchiveError, StoreError, UnsafeNameError)


@dataclass(frozen=True)
class Stored:
    results: list[IngestResult]
    store: Where
    """Where they went: the shared store, or the local one while the shared one is unavailable."""
    why_local: str | None
    """Why the shared store was not used (None when it was)."""
    refused: bool = False
    """The shared store was available but refused this checkpoint's place in it (something planted there)."""
    connections: Mapping[str, tuple[TcpConnection, ...] | str] = field(default_factory=dict)
    """By container: the established TCP connections its checkpoint holds, or why they could not be read."""

    def held_locally(self, node: str, what: str) -> str:
        if self.refused:
            return (f"{what} held locally on node {node}: the shared store refused it ({self.why_local}); "
                    "it moves to the shared store once that is cleared")
        return (f"{what} held locally on node {node}: the shared store is unavailable ({self.why_local}); "
                "it moves to the shared store once that is back")


class KeyedLock:
    """One asyncio lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass
class Source:
    kube: Kube
    checkpointer: Checkpointer
    node: str
    checkpoint_dir: Path
    places: Places
    """The shared store while it is available, else the node's local one (a directory, or a bucket)."""
    compression: CompressionSettings
    cancel: threading.Event
    claims: Claims
    metrics: AgentMetrics
    max_concurrent: int = 4
    """Checkpoints taken and ingested at once; more wait their turn (``--max-concurrent-checkpoints``)."""
    _pods_busy: KeyedLock = field(default_factory=KeyedLock)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_concurrent)

    async def checkpoint(self, pod: Mapping[str, Any], containers: list[str], target_node: str | None,
                         say: Callable[[str], Awaitable[object]] | None = None,
                         report: progress.Report | None = None) -> Stored:
        """Checkpoint ``containers`` of ``pod`` (runtime or kubelet: ``checkpointers``) and commit them as one.

        One at a time per pod: two requests for one pod (a ContainerCheckpoint and a migration, say) would
        otherwise run two dumps of one container at once, and the kubelet names archives to the second, so
        the runtime would write the second archive over the first while it is being read.

        At most ``max_concurrent`` at once on the node: each ingest holds buffers and zstd's workers, and a
        burst of migrations must not push the agent past its memory limit (bench/concurrency.py measures
        what one costs). A request that has to wait is told so through ``say`` (its status), and again once
        its turn comes. ``report`` is given the bytes done so far while it runs (``progress.publish``)."""
        async with self._pods_busy.held(meta(pod)["uid"]):
            queued = self._slots.locked()
            if queued and say is not None:
                await say(f"queued on node {self.node}: {self.max_concurrent} checkpoints are being taken there, "
                          f"at most {self.max_concurrent} at once (--max-concurrent-checkpoints)")
            async with self._slots:
                if queued and say is not None:
                    await say("checkpointing")
                done = progress.Progress.of(containers)
                if report is None:
                    return await self._checkpoint(pod, containers, target_node, done)
                stop = asyncio.Event()
                publisher = asyncio.create_task(progress.publish(done, report, stop))
                try:
                    return await self._checkpoint(pod, containers, target_node, done)
                finally:
                    stop.set()
                    await publisher

    async def _checkpoint(self, pod: Mapping[str, Any], containers: list[str], target_node: str | None,
                          done: progress.Progress) -> Stored:
        began = time.monotonic()
        namespace, name = meta(pod)["namespace"], meta(pod)["name"]
        # Claimed until committed: the directory watcher must not ingest these archives on its
        # own (as one-container checkpoints) while this request is between the kubelet and the ledger.
        prefixes = {c: self.claims.begin(namespace, name, c) for c in containers}
        archives: dict[str, str] = {}
        late: dict[str, tuple[asyncio.Task[None], str]] = {}
        """A call the checkpoint gave up waiting for, still running, and the archive it writes: by container."""
        found: dict[str, Sockets] = {}
        """By container: its checkpoint's sockets, read by the ingest that stored it."""
        # Asked before the checkpoints, so that each archive can be read into the shared store while the
        # runtime writes it (``_take``); what the store says later is handled as before.
        why_local = await self.places.probe()
        if why_local is not None and self.places.local is None:  # before any dump: nowhere to put it
            raise _nowhere(why_local, "the pod was not checkpointed")
        early: dict[str, StagedArchive] = {}
        try:
            for container in containers:
                taken = await self._take(pod, container, self.places.shared if why_local is None else None, done,
                                         late, found)
                archives[container] = taken.archive
                if taken.staged is not None:
                    early[container] = taken.staged
                if taken.store_failed is not None and why_local is None:
                    why_local = self._shared_failed(taken.store_failed, namespace, name)
            refused = False  # True: the store is available but refused this checkpoint's place in it
            if why_local is None:
                handed, early = early, {}  # _commit commits or discards them
                try:
                    results = await self._commit(self.places.shared, pod, archives, target_node, handed, done, found)
                except UnsafeNameError as err:
                    # The store takes writes, but not where this checkpoint goes: something planted there (a
                    # symlink for the pod's directory, say), which a retry would meet again. Refused; this
                    # checkpoint alone is held locally, and the store stays available for the others.
                    why_local, refused = str(err), True
                    log.warning("shared store refused the checkpoint; holding it locally", extra={
                        "fields": {"pod": f"{namespace}/{name}", "reason": why_local}})
                except StoreError as err:
                    why_local = self._shared_failed(err, namespace, name)
            where = self.places.shared
            if why_local is not None:
                local = self.places.local
                if local is None:
                    raise _nowhere(why_local, "nothing was stored")
                results = await self._commit(local, pod, archives, target_node, {}, done, found)
                where = local
                self.metrics.held_locally.inc()
            self.metrics.checkpointed(results, time.monotonic() - began)
            return Stored(results, where, why_local, refused,
                          {container: reading.connections() for container, reading in found.items()})
        finally:
            if early:  # a later container's checkpoint failed: what was read of the earlier ones goes
                await self.places.shared.discard(self.node, list(early.values()))
            for container, prefix in prefixes.items():
                if container in late:  # claimed until its call ends: then its archive goes
                    call, archive = late[container]
                    call.add_done_callback(functools.partial(self._late_answer, prefix, archive))
                else:
                    self.claims.end(prefix, archives.get(container))

    def _shared_failed(self, err: StoreError, namespace: str, name: str) -> str:
        """The shared store failed this checkpoint: the next ones go local until a probe succeeds; returns why.
        Nothing half-written is visible there (no marker); the kubelet's archives are still in its directory,
        so the checkpoint is read again into the local store (over a bucket: fails, ``_nowhere``)."""
        self.places.unavailable(str(err))
        said = "shared store failed during the checkpoint"
        log.warning(said + "; holding it locally" if self.places.local is not None else said,
                    extra={"fields": {"pod": f"{namespace}/{name}", "reason": str(err)}})
        return str(err)

    def _late_answer(self, prefix: str, archive: str, call: asyncio.Task[None]) -> None:
        """A checkpoint call given up on has ended: the archive it may have written is nobody's (its request
        failed) and holds a process's memory, so it is removed, never ingested as an archive nobody asked for."""
        self.claims.end(prefix, archive)
        outcome = "cancelled" if call.cancelled() else repr(call.exception()) if call.exception() else "answered"
        try:
            (self.checkpoint_dir / archive).unlink()
            removed = True
        except FileNotFoundError:
            removed = False
        except OSError as err:
            log.error("archive of a checkpoint given up on not removed", extra={"fields": {
                "archive": archive, "reason": str(err)}})
            return
        log.warning("checkpoint call given up on has ended", extra={"fields": {
            "archive": archive, "outcome": outcome, "archiveRemoved": removed}})

    async def _take(self, pod: Mapping[str, Any], container: str, store: Sink | None, done: progress.Progress,
                    late: dict[str, tuple[asyncio.Task[None], str]],
                    found: dict[str, Sockets]) -> _Taken:
        """Checkpoint one container; where its archive's name is known in advance and ``store`` is given,
        stage the archive into ``store`` as the runtime writes it (compression then overlaps the dump's
        tar instead of following it, inside the freeze window). Reading it early is only a head start:
        if that fails, nothing is staged and the finished archive is read again; but where the store itself
        failed (full, gone: not the archive), reading it again into the same store would only fail again,
        and ``store_failed`` says so."""
        started = time.monotonic()
        if done.requested is None:
            done.requested = datetime.now(UTC)
        planned = self.checkpointer.planned(pod, container)
        mine = done.containers[container]
        try:
            return await self._call(pod, container, store, planned, mine, started, found)
        except RuntimeCheckpointError as err:
            if err.pending is not None and planned is not None:
                late[container] = (err.pending, planned)
            raise

    async def _call(self, pod: Mapping[str, Any], container: str, store: Sink | None, planned: str | None,
                    mine: progress.ContainerProgress, started: float,
                    found: dict[str, Sockets]) -> _Taken:
        if store is None or planned is None:
            archive = await self.checkpointer.checkpoint(pod, container, planned)
            self._answered(pod, container, archive, started)
            return _Taken(archive)
        namespace, name = meta(pod)["namespace"], meta(pod)["name"]
        written = threading.Event()
        halt = _Halt(self.cancel)
        hint = Identity.checked(meta(pod)["uid"], namespace, name, container)
        found[container] = Sockets(planned)
        staging = asyncio.create_task(store.stage(self.checkpoint_dir / planned, self.node, hint, self.compression,
                                                  halt, written, mine.tally, found[container].feed))
        try:
            archive = await self.checkpointer.checkpoint(pod, container, planned)
            written.set()
            mine.total = _size(self.checkpoint_dir / archive)
            self._answered(pod, container, archive, started)
        except BaseException:
            # The checkpoint failed: its read stops where it is, not at the end of whatever the runtime is
            # still writing (a slow runtime past --checkpoint-timeout may write gigabytes more).
            written.set()
            halt.set()
            await _discard(staging, store, self.node)
            raise
        answered = time.monotonic()
        try:
            staged = await staging
        except asyncio.CancelledError:
            halt.set()  # the agent stops: the read in its thread stops too
            raise
        except StoreError as err:
            mine.tally = Tally()  # read again from the start, into the local store
            return _Taken(archive, store_failed=err)
        except LpmError as err:
            log.warning("reading the archive as it was written failed; reading it again", extra={"fields": {
                "pod": f"{namespace}/{name}", "container": container, "reason": str(err)}})
            mine.tally = Tally()  # read again from the start by _commit
            return _Taken(archive)
        mine.done = True
        log.info("container ingested", extra={"fields": {
            "pod": f"{namespace}/{name}", "container": container, "store": store.kind.value,
            "overlapped": True, "ingestSeconds": round(time.monotonic() - answered, 4)}})
        return _Taken(archive, staged)

    def _answered(self, pod: Mapping[str, Any], container: str, archive: str, started: float) -> None:
        if not names.is_candidate(archive):
            raise KubeletError(f"kubelet on {self.node} named {archive!r}, which is not a checkpoint archive")
        log.info("container checkpointed", extra={"fields": {
            "pod": f"{meta(pod)['namespace']}/{meta(pod)['name']}", "container": container, "archive": archive,
            "checkpointSeconds": round(time.monotonic() - started, 4)}})

    async def _commit(self, store: Sink, pod: Mapping[str, Any], archives: Mapping[str, str],
                      target_node: str | None, early: Mapping[str, StagedArchive],
                      done: progress.Progress, found: dict[str, Sockets]) -> list[IngestResult]:
        """Stage what ``early`` does not hold yet, then commit them all as one checkpoint; on failure every
        staged archive, ``early``'s included, is discarded."""
        namespace, name, uid = meta(pod)["namespace"], meta(pod)["name"], meta(pod)["uid"]
        staged: list[StagedArchive] = []
        try:
            for container, archive in archives.items():
                if container in early:
                    staged.append(early[container])
                    continue
                started = time.monotonic()
                hint = Identity.checked(uid, namespace, name, container)
                mine = done.containers[container]
                mine.tally, mine.total = Tally(), _size(self.checkpoint_dir / archive)
                found[container] = Sockets(archive)  # read afresh with the archive
                staged.append(await store.stage(self.checkpoint_dir / archive, self.node, hint, self.compression,
                                                self.cancel, None, mine.tally, found[container].feed))
                mine.done = True
                log.info("container ingested", extra={"fields": {
                    "pod": f"{namespace}/{name}", "container": container, "store": store.kind.value,
                    "ingestSeconds": round(time.monotonic() - started, 4)}})
            started = time.monotonic()
            results = await store.commit(self.node, staged, target_node, datetime.now(UTC))
        except BaseException:
            rest = [item for container, item in early.items() if item not in staged]
            await store.discard(self.node, staged + rest)
            raise
        log.info("checkpoint committed", extra={"fields": {
            "pod": f"{namespace}/{name}", "checkpointID": results[0].manifest.checkpoint_id,
            "storageType": store.kind.value, "commitSeconds": round(time.monotonic() - started, 4)}})
        return results


@dataclass(frozen=True)
class _Taken:
    """One container's checkpoint: its archive in the kubelet's directory, and what its early read did."""
    archive: str
    staged: StagedArchive | None = None
    """Staged into the shared store while the runtime wrote it; None: read (again) when committed."""
    store_failed: StoreError | None = None
    """The shared store failed the early read (not the archive): the checkpoint goes where that sends it."""


def _nowhere(why: str, outcome: str) -> StoreError:
    """The shared store cannot take the checkpoint, and there is no local store to hold it (a bucket)."""
    return StoreError(f"shared store unavailable ({why}), and this agent has no local store to hold the checkpoint "
                      f"in (an S3 store: docs/s3.md); {outcome}")


class _Halt(threading.Event):
    """One early read's cancel: set when its own checkpoint fails, and set too while the agent's ``parent``
    cancel is. The ingest only ever asks ``is_set``."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self._parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self._parent.is_set()


def _size(path: Path) -> int | None:
    """The finished archive's size, for progress only (None: not readable now; its ingest will say why)."""
    try:
        return path.stat().st_size
    except OSError:
        return None


async def _discard(staging: asyncio.Task[StagedArchive], store: Sink, node: str) -> None:
    """Wait for an early read whose checkpoint failed to stop (its writer is done: it soon does), then drop
    what it staged; its own failure needs no word, the checkpoint's says why."""
    try:
        staged = await staging
    except BaseException:  # noqa: BLE001  (the read cleans up after itself when it fails)
        return
    await store.discard(node, [staged])


def _content_spec(manifest: Manifest, store: Where) -> StoredArtifact:
    return {"artifactURI": store.uri(manifest.ref), "storageType": store.kind.value,
            "checksumSHA256": manifest.checksum_sha256, "compressedSize": manifest.compressed_size}


async def create_idempotent(kube: Kube, path: str, body: Mapping[str, Any]) -> None:
    try:
        await kube.create(path, body)
    except Conflict:
        pass  # made by an earlier attempt of this same reconcile: same name, same content


async def announce_container(kube: Kube, request: Mapping[str, Any], manifest: Manifest, store: Where) -> str:
    name = content_name(manifest.pod_namespace, meta(request)["name"], manifest.checkpoint_id, manifest.container_name)
    await create_idempotent(kube, lpm_path("ContainerCheckpointContent"), {
        "apiVersion": API_VERSION, "kind": "ContainerCheckpointContent", "metadata": {"name": name},
        "spec": {"containerCheckpointRef": {"name": meta(request)["name"], "namespace": meta(request)["namespace"]},
                 "podNamespace": manifest.pod_namespace, "podName": manifest.pod_name,
                 "containerName": manifest.container_name, "sourceNode": manifest.source_node,
                 **_content_spec(manifest, store)},
    })
    return name


async def announce_pod(kube: Kube, request: Mapping[str, Any], manifests: list[Manifest], store: Where) -> str:
    first = manifests[0]
    name = content_name(first.pod_namespace, meta(request)["name"], first.checkpoint_id)
    spec: PodCheckpointContentSpec = {
        "podCheckpointRef": {"name": meta(request)["name"], "namespace": meta(request)["namespace"]},
        "podNamespace": first.pod_namespace, "podName": first.pod_name, "podUID": first.pod_uid,
        "checkpointID": first.checkpoint_id, "sourceNode": first.source_node,
        "containers": [{"containerName": m.container_name, **_content_spec(m, store)} for m in manifests],
    }
    if first.target_node is not None:
        spec["targetNode"] = first.target_node
    await create_idempotent(kube, lpm_path("PodCheckpointContent"), {
        "apiVersion": API_VERSION, "kind": "PodCheckpointContent", "metadata": {"name": name}, "spec": spec})
    return name


class Step(str, Enum):
    """What the agent does next for a ContainerCheckpoint or PodCheckpoint."""
    NOTHING = "nothing"
    """Gone, finished, the agent's record of an archive nobody requested, or another node's pod."""
    READ_POD = "read pod"
    FAIL = "fail"
    """``Failed`` with ``message``: nothing was checkpointed."""
    CHECKPOINT = "checkpoint"
    """``Running``, then ``containers`` checkpointed as one (``target``: the node a migration takes them to)."""


@dataclass(frozen=True)
class Decision:
    step: Step
    message: str = ""
    containers: tuple[str, ...] = ()
    target: str | None = None


def decide(kind: str, request: Mapping[str, Any] | None, node: str,
           pod: Mapping[str, Any] | None | Unread = UNREAD) -> Decision:
    """The next step for a ``kind`` request on ``node`` (pure), from ``request`` and its ``pod`` as read (None:
    not found)."""
    if request is None or request.get("status", {}).get("phase") in FINISHED:
        return Decision(Step.NOTHING)
    if meta(request).get("annotations", {}).get(ORIGIN_ANNOTATION):
        return Decision(Step.NOTHING)  # finished when made: the record of an archive nobody requested
    if pod is UNREAD:
        return Decision(Step.READ_POD)
    namespace, pod_name = meta(request)["namespace"], request["spec"]["podName"]
    if pod is None:
        return Decision(Step.FAIL, f"pod {namespace}/{pod_name} does not exist")
    if pod.get("spec", {}).get("nodeName") != node:
        return Decision(Step.NOTHING)  # another node's agent takes it
    containers = tuple(c["name"] for c in pod["spec"].get("containers", []))
    if kind == "PodCheckpoint":
        return Decision(Step.CHECKPOINT, containers=containers,
                        target=meta(request).get("annotations", {}).get(TARGET_NODE_ANNOTATION))
    container = request["spec"]["containerName"]
    if container not in containers:
        return Decision(Step.FAIL, f"pod {namespace}/{pod_name} has no container {container}")
    return Decision(Step.CHECKPOINT, containers=(container,))


async def _begin(src: Source, kind: str, event: str,
                 obj: Mapping[str, Any]) -> tuple[Decision, dict[str, Any], dict[str, Any]] | None:
    """Read what ``decide`` asks for; a request this node checkpoints, now ``Running``, and its pod; else None
    (a request refused is ``Failed`` by then)."""
    if event == "DELETED":
        return None
    namespace, name = meta(obj)["namespace"], meta(obj)["name"]
    request = await get_or_none(src.kube, lpm_path(kind, namespace, name))
    decision = decide(kind, request, src.node)
    pod: dict[str, Any] | None = None
    if decision.step is Step.READ_POD:
        assert request is not None
        pod = await get_or_none(src.kube, pod_path(namespace, request["spec"]["podName"]))
        decision = decide(kind, request, src.node, pod)
    if decision.step is Step.FAIL:
        await update_status(src.kube, kind, namespace, name,
                            lambda status: transition(status, Phase.FAILED, decision.message))
    if decision.step is not Step.CHECKPOINT:
        return None
    assert request is not None and pod is not None
    await update_status(src.kube, kind, namespace, name,
                        lambda status: transition(status, Phase.RUNNING, "checkpointing"))
    return decision, request, pod


def _saying(src: Source, kind: str, request: Mapping[str, Any]) -> Callable[[str], Awaitable[object]]:
    """The request's Running status message, set to what is said (a finished request keeps its own)."""
    async def say(message: str) -> object:
        return await update_status(src.kube, kind, meta(request)["namespace"], meta(request)["name"],
                                   lambda status: transition(status, Phase.RUNNING, message))
    return say


def _reporting(src: Source, kind: str, request: Mapping[str, Any]) -> progress.Report:
    """Where a checkpoint's progress goes: into its migration's status while that is ``Checkpointing``, when
    the request is a migration's (made by it, owned by it: ``migration.checkpoint_request``); else into the
    request's own while it is ``Running``."""
    namespace = meta(request)["namespace"]
    migration = meta(request).get("labels", {}).get(MIGRATION_LABEL)
    owned = any(ref.get("kind") == "PodMigration" and ref.get("name") == migration
                for ref in meta(request).get("ownerReferences", []))
    kind, name, phase = (("PodMigration", migration, MigrationPhase.CHECKPOINTING.value) if migration and owned
                         else (kind, meta(request)["name"], Phase.RUNNING.value))

    async def report(items: list[dict[str, Any]], requested: datetime | None) -> object:
        return await update_status(src.kube, kind, namespace, name,
                                   lambda status: progress.progressed(status, phase, items, requested))
    return report


async def reconcile_container_checkpoint(src: Source, event: str, obj: dict[str, Any]) -> None:
    begun = await _begin(src, "ContainerCheckpoint", event, obj)
    if begun is None:
        return
    decision, request, pod = begun
    [container] = decision.containers
    try:
        stored = await src.checkpoint(pod, [container], None, _saying(src, "ContainerCheckpoint", request),
                                      _reporting(src, "ContainerCheckpoint", request))
    except FINAL_ERRORS as err:
        await _fail(src, "ContainerCheckpoint", request, pod, err)
        return
    [result] = stored.results
    uri = stored.store.uri(result.manifest.ref)
    content = await announce_container(src.kube, request, result.manifest, stored.store)
    await _succeeded(src, "ContainerCheckpoint", request, pod, stored, f"checkpoint {uri}",
                     f"container {container} checkpointed to {uri}", f"container {container}: ",
                     boundContentName=content)


async def reconcile_pod_checkpoint(src: Source, event: str, obj: dict[str, Any]) -> None:
    begun = await _begin(src, "PodCheckpoint", event, obj)
    if begun is None:
        return
    decision, request, pod = begun
    try:
        stored = await src.checkpoint(pod, list(decision.containers), decision.target,
                                      _saying(src, "PodCheckpoint", request), _reporting(src, "PodCheckpoint", request))
    except FINAL_ERRORS as err:
        await _fail(src, "PodCheckpoint", request, pod, err)
        return
    manifests = [r.manifest for r in stored.results]
    content = await announce_pod(src.kube, request, manifests, stored.store)
    await _succeeded(src, "PodCheckpoint", request, pod, stored,
                     f"checkpoint {manifests[0].pod_uid}/{manifests[0].checkpoint_id}",
                     f"{len(manifests)} container(s) checkpointed as {manifests[0].checkpoint_id}", "",
                     boundContentName=content,
                     containers=[{"containerName": m.container_name, "contentName": content, "ready": True}
                                 for m in manifests])


async def _succeeded(src: Source, kind: str, request: Mapping[str, Any], pod: Mapping[str, Any], stored: Stored,
                     what: str, checkpointed: str, held_prefix: str, **status: Any) -> None:
    """The request's status and the pod's Event once its checkpoint is stored: ``what`` in the status,
    ``checkpointed`` in a Normal Event; or, held in the local store, both say so (the Event a Warning)."""
    message = what if stored.why_local is None else stored.held_locally(src.node, what)
    connections = sockets.warning(stored.connections)
    unread = {container: why for container, why in stored.connections.items() if isinstance(why, str)}
    if unread:
        log.info("checkpoint's sockets not read; no warning about its TCP connections", extra={"fields": {
            "pod": f"{meta(pod)['namespace']}/{meta(pod)['name']}", "reasons": unread}})
    if connections:
        status["warnings"] = [connections]
    await update_status(src.kube, kind, meta(request)["namespace"], meta(request)["name"], lambda fresh: transition(
        fresh, Phase.SUCCEEDED, message, ready=True, completionTime=now(), **status))
    if connections:
        await events.record(src.kube, pod, "EstablishedConnections", connections, warning=True, node=src.node)
    if stored.why_local is None:
        await events.record(src.kube, pod, "Checkpointed", checkpointed, node=src.node)
    else:
        await events.record(src.kube, pod, "CheckpointHeldLocally", held_prefix + message, warning=True,
                            node=src.node)


async def _fail(src: Source, kind: str, request: Mapping[str, Any], pod: Mapping[str, Any], err: LpmError) -> None:
    namespace, name = meta(request)["namespace"], meta(request)["name"]
    log.error("checkpoint failed", extra={"fields": {"kind": kind, "object": f"{namespace}/{name}",
                                                      "pod": f"{namespace}/{meta(pod)['name']}", "reason": str(err)}})
    src.metrics.failed(Operation.CHECKPOINT, err)
    await update_status(src.kube, kind, namespace, name,
                        lambda status: transition(status, Phase.FAILED, str(err), ready=False))
    await events.record(src.kube, pod, "CheckpointFailed", str(err), warning=True, node=src.node)
