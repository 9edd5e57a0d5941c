"""The node agent in cluster mode: informers, one worker per object, the directory watcher.

Watches (list, then watch, relist on 410): pods on this node (field selector
``spec.nodeName``), ContainerCheckpoints, PodCheckpoints and PodMigrations. Keeps this node's
Lease renewed, saying whether its runtime can restore (``presence``). The directory
watcher's mover switches contents to ``shared`` when it moves a locally held checkpoint
(``relocation``); the PodMigration status that move writes is what brings the destination back. The shared
store is a directory (``Stores``), or a bucket (``BucketStores``, docs/s3.md: no local fallback). Every background
task is named and supervised: if one ends unexpectedly the agent logs it and stops, and the
DaemonSet restarts it, rather than running on half-blind.

It composes both sides of a migration, the source's reconcilers (``cluster``) and the
destination (``restore``), so it sits above both packages rather than inside either: the
restorer builds on ``cluster``'s objects and status helpers, and nothing below imports back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.agent import SHUTDOWN_GRACE, StandaloneAgent, StandaloneConfig
from watcher.agent_s3 import S3AgentConfig, S3StandaloneAgent
from watcher.cluster.checkpointers import Checkpointer, KubeletCheckpointer, RuntimeCheckpointer
from watcher.cluster.checkpointing import (
    Source,
    announce_container,
    create_idempotent,
    reconcile_container_checkpoint,
    reconcile_pod_checkpoint,
)
from watcher.cluster.claims import Claim, Claims
from watcher.cluster.migration import reconcile_annotated_pod, reconcile_migration
from watcher.cluster.objects import (
    API_VERSION,
    MIGRATION_LABEL,
    ORIGIN_ANNOTATION,
    ORIGIN_KUBELET_DIRECTORY,
    ContainerCheckpoint,
    Phase,
    content_name,
    lpm_path,
    meta,
    pod_path,
)
from watcher.cluster.presence import Announcer
from watcher.cluster.relocation import announce_moved
from watcher.cluster.sinks import BucketPlaces, DirectoryPlaces, Places
from watcher.cluster.status import now, transition, update_status
from watcher.ingest.service import IngestResult
from watcher.kube.client import Kube, connect
from watcher.kube.informer import Resource, Workers, informer
from watcher.kubelet import KubeletSettings
from watcher.observe import AgentMetrics, Readiness
from watcher.restore.destination import STORE_PATIENCE, Destination
from watcher.restore.early import EarlyPulls
from watcher.restore.importer import ContainersStorageImporter, Importer
from watcher.restore.markers import poll_markers
from watcher.restore.source import BucketSource, DirectorySource
from watcher.runtime import checkpoint as runtime_checkpoint
from watcher.runtime.capability import Capability
from watcher.s3.store import S3Store
from watcher.store.catalog import Checkpoint
from watcher.stores import Store, Stores, Where
from watcher.supervise import Supervisor
from watcher.watch.stability import Outcome

log = logging.getLogger("lpm.agent")


@dataclass(frozen=True)
class ClusterConfig:
    base: StandaloneConfig
    kubeconfig: Path | None
    """None: the pod's in-cluster service account."""
    checkpoints: KubeletSettings | runtime_checkpoint.Settings
    """Who takes checkpoints: the kubelet's API, or (default) the node's runtime over its CRI socket."""
    restore: RestoreSettings
    namespace: str
    """The agent's own namespace: where every node's agent keeps its Lease (``watcher.cluster.presence``)."""
    runtime_endpoint: str | None
    """This node's CRI socket, asked whether the runtime restores; None: read the Node's status instead."""
    max_concurrent_checkpoints: int = 4
    """Checkpoints taken and ingested at once on this node (``Source.max_concurrent``)."""


@dataclass(frozen=True)
class RestoreSettings:
    work_dir: Path
    """Node-local scratch space for archives and images during a restore (0700)."""
    importer: Importer = ContainersStorageImporter()
    """Where checkpoint images go so that this node's runtime can restore from them."""
    marker_poll: float = 10.0
    """Seconds between looks at the store's completion markers (the fallback to the PodMigration watch)."""
    store_patience: float = STORE_PATIENCE
    """Seconds a restore waits for a store that fails on its side before its migration fails."""


class _DirectoryHooks:
    """Archives in the kubelet directory: the agent's own requests, or ones nobody asked for."""

    def __init__(self, kube: Kube, claims: Claims, node: str, local_store: Path) -> None:
        self._kube = kube
        self._claims = claims
        self._node = node
        self._local_store = local_store

    def before(self, path: Path) -> Outcome | None:
        if self._claims.of(path.name) is Claim.WAIT:
            return Outcome.STORE_TROUBLE  # look again once the request has answered
        # The agent's own archives go on too: the ledger makes their ingest a no-op, and the
        # stored copy is then verified like any other.
        return None

    async def after(self, path: Path, result: IngestResult, store: Where) -> None:
        """Record an unrequested archive as a finished ContainerCheckpoint with its content."""
        if self._claims.of(path.name) is Claim.OURS:
            return  # announced by the request that asked for it
        manifest = result.manifest
        request_name = content_name("kubelet", manifest.pod_name, manifest.checkpoint_id, manifest.container_name)
        request: ContainerCheckpoint = {
            "apiVersion": API_VERSION, "kind": "ContainerCheckpoint",
            "metadata": {"name": request_name, "namespace": manifest.pod_namespace,
                         "annotations": {ORIGIN_ANNOTATION: ORIGIN_KUBELET_DIRECTORY}},
            "spec": {"podName": manifest.pod_name, "containerName": manifest.container_name},
        }
        await create_idempotent(self._kube, lpm_path("ContainerCheckpoint", manifest.pod_namespace), request)
        content = await announce_container(self._kube, request, manifest, store)

        # Succeeded over anything but Succeeded: no reconciler fails a record made with the origin annotation.
        message = f"taken without a request; stored as {store.uri(manifest.ref)}"
        await update_status(self._kube, "ContainerCheckpoint", manifest.pod_namespace, request_name,
                            lambda status: transition(status, Phase.SUCCEEDED, message, settled={Phase.SUCCEEDED.value},
                                                      ready=True, boundContentName=content, completionTime=now()))

    async def moved(self, checkpoint: Checkpoint) -> None:
        await announce_moved(self._kube, self._node, self._local_store, checkpoint)


@dataclass(frozen=True)
class BucketStores:
    """Cluster mode over a bucket (docs/s3.md): checkpoints go to the bucket, and the node-local directory
    keeps only this node's ingest ledger; there is no local fallback (``watcher.cluster.sinks.BucketPlaces``,
    which /readyz probes too)."""

    bucket: S3Store
    local: Store
    places: BucketPlaces


class ClusterAgent:
    def __init__(self, config: ClusterConfig, metrics: AgentMetrics, readiness: Readiness,
                 stores: Stores | BucketStores) -> None:
        self._config = config
        self._metrics = metrics
        self._readiness = readiness
        self._stores = stores
        self._checkpointer: Checkpointer | None = None

    async def settle(self) -> None:
        """Once stopping: wait for the runtime's checkpoint calls still under way (``Checkpointer.settle``)."""
        if self._checkpointer is not None:
            await self._checkpointer.settle()

    async def run(self, stop: asyncio.Event) -> None:
        cfg, node = self._config, self._config.base.node
        kube = Kube(await connect(cfg.kubeconfig))
        checkpointer: Checkpointer = (KubeletCheckpointer(kube, node, cfg.checkpoints)
                                      if isinstance(cfg.checkpoints, KubeletSettings)
                                      else RuntimeCheckpointer(cfg.checkpoints))
        self._checkpointer = checkpointer
        claims = Claims()
        stores = self._stores
        hooks = _DirectoryHooks(kube, claims, node, stores.local.path)
        directory: StandaloneAgent | S3StandaloneAgent
        places: Places
        shared: DirectorySource | BucketSource
        if isinstance(stores, Stores):
            directory = StandaloneAgent(cfg.base, self._metrics, stores, hooks)
            places = DirectoryPlaces(stores)
            # The shared store's fd keeps its number even when the store is replaced (see watcher.stores).
            shared = DirectorySource(stores.shared.fd, cfg.base.compression, directory.cancel)
        else:
            base = cfg.base
            directory = S3StandaloneAgent(S3AgentConfig(node, stores.bucket, base.watch, base.compression,
                                                        base.delete_ingested, stores.local.fd), self._metrics, hooks)
            places = stores.places
            shared = BucketSource(stores.bucket, base.compression, directory.cancel, asyncio.get_running_loop())
        source = Source(kube, checkpointer, node, cfg.base.watch.directory, places, cfg.base.compression,
                        directory.cancel, claims, self._metrics, cfg.max_concurrent_checkpoints)

        def look_again(delay: float, obj: Mapping[str, Any]) -> None:
            """Reconcile this PodMigration again in ``delay`` s: what it waits for (the other node's pod, a
            disruption budget) brings no event to this agent."""
            migrations.submit_later(delay, "MODIFIED", {
                "metadata": {"namespace": meta(obj)["namespace"], "name": meta(obj)["name"]}})

        # Without the node's CRI socket (a user who chose none) the restore pulls base images as it always did.
        early = EarlyPulls(kube, node, cfg.runtime_endpoint) if cfg.runtime_endpoint is not None else None
        destination = Destination(kube, node, shared, cfg.restore.work_dir, cfg.restore.importer, self._metrics,
                                  look_again, early, cfg.restore.store_patience)

        def on_capability(capability: Capability) -> None:
            self._metrics.restore_capability(capability)
            self._readiness.restore = capability

        announcer = Announcer(kube, cfg.namespace, node, cfg.runtime_endpoint, on_capability)
        # Written before the watches start: once this agent says it is watching, sources find its Lease.
        await announcer.renew()

        async def on_migration(event: str, obj: dict[str, Any]) -> None:
            await reconcile_migration(kube, node, cfg.namespace, event, obj, look_again)  # the source node's half
            await destination.reconcile(event, obj)  # the target node's half

        migrations = Workers("podmigration", on_migration)
        pod_checkpoints = Workers("podcheckpoint", lambda e, o: reconcile_pod_checkpoint(source, e, o))
        container_checkpoints = Workers("containercheckpoint",
                                        lambda e, o: reconcile_container_checkpoint(source, e, o))
        annotated = Workers("pod", lambda e, o: reconcile_annotated_pod(kube, node, e, o))

        def on_pod(event: str, obj: dict[str, Any]) -> None:
            annotated.submit(event, obj)
            owner = meta(obj).get("labels", {}).get(MIGRATION_LABEL)
            if owner:  # a restored pod's progress moves its PodMigration on
                migrations.submit("MODIFIED", {"metadata": {"namespace": meta(obj)["namespace"], "name": owner}})

        def on_pod_checkpoint(event: str, obj: dict[str, Any]) -> None:
            pod_checkpoints.submit(event, obj)
            owner = meta(obj).get("labels", {}).get(MIGRATION_LABEL)
            if owner:  # the PodMigration mirrors its PodCheckpoint's outcome
                migrations.submit("MODIFIED", {"metadata": {"namespace": meta(obj)["namespace"], "name": owner}})

        synced = self._readiness.watch  # /readyz waits for every watch's first list
        watches = [
            ("pods", Resource(pod_path(), {"fieldSelector": f"spec.nodeName={node}"}), on_pod),
            ("podmigrations", Resource(lpm_path("PodMigration")), migrations.submit),
            ("podcheckpoints", Resource(lpm_path("PodCheckpoint")), on_pod_checkpoint),
            ("containercheckpoints", Resource(lpm_path("ContainerCheckpoint")), container_checkpoints.submit),
        ]
        supervisor = Supervisor(self._metrics.tasks)
        # Sources read it before they checkpoint a pod for this node; its absence refuses them.
        supervisor.start("node lease", lambda: announcer.run(stop))
        for name, resource, handler in watches:
            listed = synced(name)  # one event per watch, kept across restarts: a relist sets it again
            supervisor.start(f"watch {name}", functools.partial(informer, kube, resource, handler, stop, listed))
        supervisor.start("checkpoint directory", lambda: directory.run(stop))
        # The fallback to the PodMigration watch: a missed event must not strand a migration.
        supervisor.start("poll store markers", lambda: poll_markers(kube, node, shared.markers, migrations.submit,
                                                                  stop, cfg.restore.marker_poll))
        log.info("cluster mode watching", extra={"fields": {"node": node}})
        try:
            await stop.wait()
        finally:
            stop.set()
            directory.cancel.set()
            await supervisor.close(SHUTDOWN_GRACE)
            for workers in (migrations, pod_checkpoints, container_checkpoints, annotated):
                await workers.close()
            await checkpointer.close()
            if early is not None:
                await early.close()
            await kube.client.close()

