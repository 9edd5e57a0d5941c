"""The node agent's standalone mode: the kubelet checkpoint directory in, the store out.

Composition only: the watcher decides when an archive is ready, the ingest service moves and
commits it in a worker thread, and this module turns each outcome into one log line a
person can act on, then tells the watcher what to do next.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from watcher.errors import ArchiveChanged, ArchiveError, ArchiveIncomplete, Cancelled, LpmError
from watcher.ingest import service
from watcher.ingest.service import IngestResult
from watcher.observe import AgentMetrics, Operation
from watcher.store import commit, fsio
from watcher.store.ledger import ArchiveStamp
from watcher.watch.dirwatch import WatchSettings, watch_directory
from watcher.watch.stability import Outcome
from watcher.zstream import CompressionSettings

log = logging.getLogger("lpm.agent")

STAGING_SWEEP_INTERVAL = 60.0


@dataclass(frozen=True)
class StandaloneConfig:
    node: str
    store: Path
    watch: WatchSettings
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    delete_ingested: bool = False
    """Remove a kubelet archive once its stored copy is read back and verified."""


class IngestHooks(Protocol):
    """What cluster mode adds around the directory's ingests."""

    def before(self, path: Path) -> Outcome | None:
        """An outcome to report without ingesting (the archive is the agent's own request), or None."""

    async def after(self, path: Path, result: IngestResult) -> None:
        """Announce an ingested archive nobody requested."""


class StandaloneAgent:
    """Ingests the kubelet checkpoint directory into the store; cluster mode adds hooks."""

    def __init__(self, config: StandaloneConfig, metrics: AgentMetrics, hooks: IngestHooks | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._hooks = hooks
        self.root_fd = fsio.open_root(config.store, create=True)
        self.cancel = threading.Event()

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self._config
        log.info("agent starting", extra={"fields": {
            "mode": "standalone" if self._hooks is None else "cluster", "node": cfg.node, "checkpointDir": str(cfg.watch.directory),
            "store": str(cfg.store), "deleteIngested": cfg.delete_ingested,
            "forcePolling": cfg.watch.force_polling}})
        sweeper = asyncio.create_task(self._sweep_staging(stop), name="staging-sweeper")
        try:
            await watch_directory(cfg.watch, self._ingest, stop)
        finally:
            self.cancel.set()  # running ingests stop at their next chunk
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            log.info("agent stopped", extra={"fields": {"node": cfg.node}})

    async def _sweep_staging(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                removed = await asyncio.to_thread(commit.sweep_staging, self.root_fd, self._config.node,
                                                  STAGING_SWEEP_INTERVAL)
            except LpmError as err:
                # The store can be read-only or away for a while (/readyz says so): sweep when it is back.
                log.warning("cannot sweep staging files yet", extra={"fields": {"reason": str(err)}})
            else:
                if removed:
                    log.info("removed abandoned staging files", extra={"fields": {"count": removed}})
            try:
                await asyncio.wait_for(stop.wait(), timeout=STAGING_SWEEP_INTERVAL)
            except asyncio.TimeoutError:
                pass

    async def _ingest(self, path: Path, stamp: ArchiveStamp) -> Outcome:
        cfg = self._config
        fields = {"archive": path.name, "bytes": stamp.size}
        if self._hooks is not None and (decided := self._hooks.before(path)) is not None:
            return decided
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(
                service.ingest_archive, self.root_fd, path, cfg.node, cfg.compression, self.cancel,
                datetime.now(timezone.utc))
        except Cancelled:
            return Outcome.STORE_TROUBLE
        except (ArchiveIncomplete, ArchiveChanged) as err:
            log.info("archive not finished yet; waiting for its writer",
                     extra={"fields": {**fields, "reason": str(err)}})
            return Outcome.INCOMPLETE
        except ArchiveError as err:
            log.error("archive refused", extra={"fields": {**fields, "reason": str(err)}})
            self._metrics.failed(Operation.INGEST, err)
            return Outcome.REFUSED
        except LpmError as err:
            log.error("ingest failed", extra={"fields": {**fields, "reason": str(err)}})
            self._metrics.failed(Operation.INGEST, err)
            return Outcome.STORE_TROUBLE
        seconds = time.monotonic() - started
        self._metrics.ingested(result, seconds)
        manifest = result.manifest
        log.info("archive already in the store" if result.duplicate else "archive ingested",
                 extra={"fields": {
                     **fields, "podUID": manifest.pod_uid, "pod": f"{manifest.pod_namespace}/{manifest.pod_name}",
                     "container": manifest.container_name, "checkpointID": manifest.checkpoint_id,
                     "artifactURI": manifest.ref.uri, "compressedBytes": manifest.compressed_size,
                     "seconds": round(seconds, 3),
                     "mbPerSecond": round(stamp.size / seconds / 1e6, 1) if seconds > 0 else None}})
        if self._hooks is not None:
            # Also for duplicates: announcing is idempotent, and a restart must finish an
            # announcement the API refused last time.
            try:
                await self._hooks.after(path, result)
            except LpmError as err:
                log.error("ingested archive not announced yet", extra={"fields": {**fields, "reason": str(err)}})
                return Outcome.STORE_TROUBLE
        await self._verify_and_clean(path, fields)
        return Outcome.DONE

    async def _verify_and_clean(self, path: Path, fields: dict[str, object]) -> None:
        """Read the stored copy back (the ledger then says verified), then remove the kubelet's if asked."""
        step = service.delete_verified if self._config.delete_ingested else service.verify_ingested
        try:
            await asyncio.to_thread(step, self.root_fd, path, self._config.node, self._config.compression,
                                    self.cancel)
        except Cancelled:
            return
        except LpmError as err:
            log.error("stored copy failed verification; kubelet archive kept",
                      extra={"fields": {**fields, "reason": str(err)}})
            return
        if self._config.delete_ingested:
            log.info("kubelet archive removed after verified ingest", extra={"fields": fields})
