"""The node agent's standalone mode over an S3 store (docs/s3.md): the kubelet checkpoint directory in, the
bucket out.

Composition only, as ``watcher.agent``: the directory watch decides when an archive is ready,
``watcher.ingest.s3`` stages and commits it. What the directory store's agent has and this one has not yet:
the node-local fallback and its mover (a failed ingest is retried by the watch instead, the archive staying
in the kubelet's directory), and the ingest ledger (after a restart the archives still in the directory are
read again; each lands on its checkpoint's existing marker and is a duplicate, never a second checkpoint).
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
from watcher.attempt import attempt
from watcher.errors import ArchiveIncomplete, Cancelled, LpmError, StoreError
from watcher.ingest import s3 as s3ingest
from watcher.observe import AgentMetrics, Operation
from watcher.runtime.capability import Capability
from watcher.s3 import retrieve as s3retrieve
from watcher.s3.store import S3Store
from watcher.store.manifest import Manifest
from watcher.supervise import Supervisor
from watcher.watch.dirwatch import WatchSettings, watch_directory
from watcher.watch.stability import Outcome
from watcher.zstream import CompressionSettings

log = logging.getLogger("lpm.agent")

SHUTDOWN_GRACE = 4.0
PROBE_TIMEOUT = 3.0
"""Seconds /readyz waits for the bucket to answer; below the DaemonSet's readiness probe timeout (5 s)."""


@dataclass(frozen=True)
class S3AgentConfig:
    node: str
    store: S3Store
    watch: WatchSettings
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    delete_ingested: bool = False


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
    def __init__(self, config: S3AgentConfig, metrics: AgentMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self.cancel = threading.Event()

    async def settle(self) -> None:
        pass  # it calls no runtime: the kubelet's archives appear on their own

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self._config
        log.info("agent starting", extra={"fields": {
            "mode": "standalone", "node": cfg.node, "checkpointDir": str(cfg.watch.directory),
            "store": str(cfg.store), "deleteIngested": cfg.delete_ingested,
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
        started = time.monotonic()
        result = await attempt(s3ingest.ingest_archive(cfg.store, path, cfg.node, cfg.compression, self.cancel,
                                                       datetime.now(UTC)), fields, self._metrics)
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
