"""The node agent's standalone mode: the kubelet checkpoint directory in, the store out.

Composition only: the watcher decides when an archive is ready, the ingest service moves and
commits it in a worker thread, and this module turns each outcome into one log line a
person can act on, then tells the watcher what to do next. An archive goes to the shared
store when it takes a write, else (or when the write fails part-way) to the node's local
store; the mover brings local checkpoints over once the shared store is back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from watcher.archive.stamp import ArchiveStamp
from watcher.attempt import IngestHooks, attempt
from watcher.errors import (
    ArchiveIncomplete,
    Cancelled,
    LpmError,
    StoreError,
    UnsafeNameError,
)
from watcher.ingest import service
from watcher.ingest.service import IngestResult
from watcher.mover import run_mover
from watcher.observe import AgentMetrics, Operation
from watcher.s3.location import S3Location
from watcher.store import commit
from watcher.store.layout import StorageType
from watcher.stores import Store, Stores
from watcher.supervise import Supervisor
from watcher.watch.dirwatch import WatchSettings, watch_directory
from watcher.watch.stability import Outcome
from watcher.zstream import CompressionSettings

log = logging.getLogger("lpm.agent")

STAGING_SWEEP_INTERVAL = 60.0
SHUTDOWN_GRACE = 3.0
"""Seconds the tasks get to return after SIGTERM; the process's promise is to exit within 5."""


@dataclass(frozen=True)
class StandaloneConfig:
    node: str
    store: Path | S3Location
    """The shared store: a directory, or a bucket (cluster mode only: ``watcher.cluster_agent.BucketStores``; the
    standalone agent over a bucket is ``watcher.agent_s3``)."""
    watch: WatchSettings
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    delete_ingested: bool = False
    """Remove a kubelet archive once its stored copy is read back and verified."""
    local_store: Path = Path("/var/lib/lpm/local-store")
    """Node-local store for checkpoints taken while the shared store is unavailable."""
    move_interval: float = 30.0
    """Seconds between the mover's looks at the local store (and probes of the shared one)."""


class StandaloneAgent:
    """Ingests the kubelet checkpoint directory into the store; cluster mode adds hooks."""

    def __init__(self, config: StandaloneConfig, metrics: AgentMetrics, stores: Stores,
                 hooks: IngestHooks | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._hooks = hooks
        self.stores = stores
        self.cancel = threading.Event()

    async def settle(self) -> None:
        pass  # it calls no runtime: the kubelet's archives appear on their own

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self._config
        log.info("agent starting", extra={"fields": {
            "mode": "standalone" if self._hooks is None else "cluster", "node": cfg.node,
            "checkpointDir": str(cfg.watch.directory), "store": str(cfg.store), "localStore": str(cfg.local_store),
            "deleteIngested": cfg.delete_ingested, "forcePolling": cfg.watch.force_polling}})
        supervisor = Supervisor(self._metrics.tasks)
        supervisor.start("checkpoint-directory watch",
                         lambda: watch_directory(cfg.watch, self._ingest, stop, self._given_up))
        supervisor.start("staging sweeper", lambda: self._sweep_staging(stop))
        supervisor.start("local-store mover", lambda: run_mover(
            self.stores, cfg.node, self.cancel, self._metrics, self._hooks.moved if self._hooks is not None else None,
            stop, cfg.move_interval))
        try:
            await stop.wait()
        finally:
            self.cancel.set()  # running ingests stop at their next chunk
            await supervisor.close(SHUTDOWN_GRACE)
            log.info("agent stopped", extra={"fields": {"node": cfg.node}})

    async def _sweep_staging(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for store in (self.stores.shared, self.stores.local):
                try:
                    removed = await asyncio.to_thread(commit.sweep_staging, store.fd, self._config.node,
                                                      STAGING_SWEEP_INTERVAL)
                except LpmError as err:
                    # The store can be read-only or away for a while (/readyz says so): sweep when it is back.
                    log.warning("cannot sweep staging files yet", extra={"fields": {
                        "store": str(store.path), "reason": str(err)}})
                else:
                    if removed:
                        log.info("removed abandoned staging files", extra={"fields": {
                            "store": str(store.path), "count": removed}})
            try:
                await asyncio.wait_for(stop.wait(), timeout=STAGING_SWEEP_INTERVAL)
            except TimeoutError:
                pass

    def _given_up(self, path: Path, seconds: float) -> None:
        err = ArchiveIncomplete(
            f"archive {path.name!r}: still has no end-of-archive blocks after {seconds:.0f} s without a change "
            f"(truncated, or its writer died); refused until it is written again")
        log.warning("archive never finished; refused", extra={"fields": {
            "archive": path.name, "unchangedSeconds": round(seconds, 1), "reason": str(err)}})
        self._metrics.failed(Operation.INGEST, err)
        self._metrics.given_up.inc()

    async def _ingest(self, path: Path, stamp: ArchiveStamp) -> Outcome:
        fields = {"archive": path.name, "bytes": stamp.size}
        if self._hooks is not None and (decided := self._hooks.before(path)) is not None:
            return decided
        started = time.monotonic()
        stored = await attempt(self._store_archive(path, fields), fields, self._metrics)
        if isinstance(stored, Outcome):
            return stored
        result, store = stored
        seconds = time.monotonic() - started
        self._metrics.ingested(result, seconds)
        if store.kind is StorageType.LOCAL and not result.duplicate:
            self._metrics.held_locally.inc()
        manifest = result.manifest
        log.info("archive already in the store" if result.duplicate else "archive ingested",
                 extra={"fields": {
                     **fields, "podUID": manifest.pod_uid, "pod": f"{manifest.pod_namespace}/{manifest.pod_name}",
                     "container": manifest.container_name, "checkpointID": manifest.checkpoint_id,
                     "artifactURI": store.uri(manifest.ref), "storageType": store.kind.value,
                     "compressedBytes": manifest.compressed_size,
                     "seconds": round(seconds, 3),
                     "mbPerSecond": round(stamp.size / seconds / 1e6, 1) if seconds > 0 else None}})
        if self._hooks is not None:
            # Also for duplicates: announcing is idempotent, and a restart must finish an
            # announcement the API refused last time.
            try:
                await self._hooks.after(path, result, store)
            except LpmError as err:
                log.error("ingested archive not announced yet", extra={"fields": {**fields, "reason": str(err)}})
                return Outcome.STORE_TROUBLE
        await self._verify_and_clean(path, store, fields)
        return Outcome.DONE

    async def _store_archive(self, path: Path, fields: dict[str, object]) -> tuple[IngestResult, Store]:
        """Ingest into the shared store if it takes a write, else (or if it fails part-way) the local one."""
        if await self.stores.probe() is None:
            try:
                return await self._ingest_into(self.stores.shared, path), self.stores.shared
            except UnsafeNameError as err:
                # The store takes writes, but not where this checkpoint goes: something planted there
                # (a symlink for its pod's directory, say), which every retry would meet again. Refused;
                # this checkpoint alone is held locally, and the store stays available for the others.
                log.warning("shared store refused the checkpoint; holding it locally",
                            extra={"fields": {**fields, "reason": str(err)}})
            except StoreError as err:
                # Nothing half-written is visible: a dump reaches its final name only fsynced, and
                # the checkpoint only with its marker. The archive is still in the kubelet directory.
                self.stores.unavailable(str(err))
                log.warning("shared store failed during the ingest; holding the checkpoint locally",
                            extra={"fields": {**fields, "reason": str(err)}})
        return await self._ingest_into(self.stores.local, path), self.stores.local

    async def _ingest_into(self, store: Store, path: Path) -> IngestResult:
        cfg = self._config
        return await asyncio.to_thread(service.ingest_archive, store.fd, path, cfg.node, cfg.compression,
                                       self.cancel, datetime.now(UTC))

    async def _verify_and_clean(self, path: Path, store: Store, fields: dict[str, object]) -> None:
        """Read the stored copy back (the ledger then says verified), then remove the kubelet's if asked."""
        step = service.delete_verified if self._config.delete_ingested else service.verify_ingested
        try:
            await asyncio.to_thread(step, store.fd, path, self._config.node, self._config.compression,
                                    self.cancel)
        except Cancelled:
            return
        except LpmError as err:
            log.error("stored copy failed verification; kubelet archive kept",
                      extra={"fields": {**fields, "reason": str(err)}})
            return
        if self._config.delete_ingested:
            log.info("kubelet archive removed after verified ingest", extra={"fields": fields})
