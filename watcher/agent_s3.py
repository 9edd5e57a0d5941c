"""The node agent's standalone mode over an S3 store (docs/s3.md): the kubelet checkpoint directory in, the
bucket out.

Composition only, as ``watcher.agent``: the directory watch decides when an archive is ready,
``watcher.ingest.s3`` stages and commits it, and records it in the ingest ledger, kept in the node-local
store (an archive the ledger knows is in the bucket is neither read nor uploaded again, after a restart
too). Cluster mode adds the same hooks as over a directory (``IngestHooks``: the agent's own archives wait
for their request, the others are announced). What the directory store's agent has and this one has not:
the node-local fallback and its mover (a failed ingest is retried by the watch instead, the archive staying
in the kubelet's directory).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from watcher.archive.stamp import ArchiveStamp, stamp_of
from watcher.attempt import IngestHooks, attempt
from watcher.errors import ArchiveIncomplete, Cancelled, LpmError, StoreError
from watcher.ingest import s3 as s3ingest
from watcher.observe import AgentMetrics, Operation
from watcher.runtime.capability import Capability
from watcher.s3 import retrieve as s3retrieve
from watcher.s3.store import S3Store
from watcher.store.manifest import Manifest
from watcher.stores import InBucket
from watcher.supervise import Supervisor
from watcher.watch.dirwatch import WatchSettings, watch_directory
from watcher.watch.stability import Outcome
from watcher.zstream import CompressionSettings

log = logging.getLogger("lpm.agent")

SHUTDOWN_GRACE = 4.0
PROBE_TIMEOUT = 3.0
"""Seconds /readyz waits for the bucket to answer; below the DaemonSet's readiness probe timeout (5 s)."""
_BUCKET = InBucket()
"""What cluster mode's hooks are told of where an archive went: the bucket, as ``shared://``."""


@dataclass(frozen=True)
class S3AgentConfig:
    node: str
    store: S3Store
    watch: WatchSettings
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    delete_ingested: bool = False
    ledger_fd: int | None = None
    """A node-local directory for the ingest ledger (the local store's), or None: no ledger."""


class S3Readiness:
    """Ready = the bucket answers with these credentials (a HEAD of the bucket, within ``PROBE_TIMEOUT``)."""

    def __init__(self, store: S3Store) -> None:
        self._store = store
        self.restore: Capability | None = None

    async def check(self) -> tuple[list[str], str | None]:
        try:
            await asyncio.wait_for(self._store.check(), PROBE_TIMEOUT)
        except TimeoutError:
            return [f"store {self._store}: no answer within {PROBE_TIMEOUT:g} s"], None
        except LpmError as err:
            return [str(err)], None
        return [], None


class S3StandaloneAgent:
    def __init__(self, config: S3AgentConfig, metrics: AgentMetrics, hooks: IngestHooks | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._hooks = hooks
        self.cancel = threading.Event()

    async def settle(self) -> None:
        pass  # it calls no runtime: the kubelet's archives appear on their own

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self._config
        log.info("agent starting", extra={"fields": {
            "mode": "standalone" if self._hooks is None else "cluster", "node": cfg.node,
            "checkpointDir": str(cfg.watch.directory), "store": str(cfg.store), "deleteIngested": cfg.delete_ingested,
            "forcePolling": cfg.watch.force_polling}})
        supervisor = Supervisor(self._metrics.tasks)
        supervisor.start("checkpoint-directory watch",
                         lambda: watch_directory(cfg.watch, self._ingest, stop, self._given_up))
        try:
            await stop.wait()
        finally:
            self.cancel.set()  # running ingests stop at their next chunk
            await supervisor.close(SHUTDOWN_GRACE)
            log.info("agent stopped", extra={"fields": {"node": cfg.node}})

    def _given_up(self, path: Path, seconds: float) -> None:
        err = ArchiveIncomplete(
            f"archive {path.name!r}: still has no end-of-archive blocks after {seconds:.0f} s without a change "
            f"(truncated, or its writer died); refused until it is written again")
        log.warning("archive never finished; refused", extra={"fields": {
            "archive": path.name, "unchangedSeconds": round(seconds, 1), "reason": str(err)}})
        self._metrics.failed(Operation.INGEST, err)
        self._metrics.given_up.inc()

    async def _ingest(self, path: Path, stamp: ArchiveStamp) -> Outcome:
        cfg = self._config
        fields: dict[str, object] = {"archive": path.name, "bytes": stamp.size}
        if self._hooks is not None and (decided := self._hooks.before(path)) is not None:
            return decided
        started = time.monotonic()
        result = await attempt(s3ingest.ingest_archive(cfg.store, path, cfg.node, cfg.compression, self.cancel,
                                                       datetime.now(UTC), ledger_fd=cfg.ledger_fd),
                               fields, self._metrics)
        if isinstance(result, Outcome):
            return result
        seconds = time.monotonic() - started
        self._metrics.ingested(result, seconds)
        manifest = result.manifest
        log.info("archive already in the store" if result.duplicate else "archive ingested",
                 extra={"fields": {
                     **fields, "podUID": manifest.pod_uid, "pod": f"{manifest.pod_namespace}/{manifest.pod_name}",
                     "container": manifest.container_name, "checkpointID": manifest.checkpoint_id,
                     "artifactURI": manifest.ref.uri, "storageType": "shared", "store": str(cfg.store),
                     "compressedBytes": manifest.compressed_size, "seconds": round(seconds, 3)}})
        if self._hooks is not None:
            # Also for duplicates, as over a directory: announcing is idempotent, and a restart must finish
            # an announcement the API refused last time.
            try:
                await self._hooks.after(path, result, _BUCKET)
            except LpmError as err:
                log.error("ingested archive not announced yet", extra={"fields": {**fields, "reason": str(err)}})
                return Outcome.STORE_TROUBLE
        if cfg.delete_ingested:
            await self._delete_verified(path, stamp, manifest, fields)
        return Outcome.DONE

    async def _delete_verified(self, path: Path, stamp: ArchiveStamp, manifest: Manifest,
                               fields: dict[str, object]) -> None:
        """Remove the kubelet's archive once the stored copy reads back whole (both SHA-256 sums) and the
        archive is still the version that was read: it holds process memory."""
        cfg = self._config
        try:
            await s3retrieve.verify(cfg.store, manifest.ref, cfg.compression, self.cancel)
            if manifest.uncompressed_size != stamp.size or stamp_of(path) != stamp:
                raise StoreError(f"archive {path.name!r}: changed during verification, kept")
            os.unlink(path)
        except Cancelled:
            return
        except (LpmError, OSError) as err:
            log.error("stored copy failed verification; kubelet archive kept",
                      extra={"fields": {**fields, "reason": str(err)}})
            return
        log.info("kubelet archive removed after verified ingest", extra={"fields": fields})
