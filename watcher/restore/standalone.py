"""Standalone mode's destination half: completion markers for this node in, checkpoint images out.

With no cluster there is no PodMigration and no pod spec to restore into; what the target node
can do alone is make every checkpoint addressed to it (``targetNode`` in its completion marker)
ready to restore: each container's dump verified, decompressed, turned into a checkpoint image
and imported into the node's runtime, where ``podman container restore IMAGE`` (or the
runtime's equivalent) takes it. The marker is the only signal there is, and the store may be
another NFS client's writes, so it is polled, never watched.

Each checkpoint is acted on once per node: the outcome — the image references, or why the
checkpoint was refused — is recorded in the node-local work directory before the next one is
looked at, so a restart neither imports twice nor retries a checkpoint that cannot be restored.
An import the runtime refused is not recorded: the runtime may be back next round; nor is a read the
store failed on its side (``StoreUnavailable``: an S3 server or NFS server gone mid-import), which is
tried again once the store answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from watcher.errors import Cancelled, EncryptionKeyError, LpmError, StoreUnavailable
from watcher.observe import AgentMetrics, Operation
from watcher.restore.importer import Importer, ImportFailed
from watcher.restore.pipeline import import_checkpoint
from watcher.restore.source import Source
from watcher.store import fsio, layout
from watcher.store.manifest import Marker, encode, rfc3339

log = logging.getLogger(__name__)

RECORDS_DIR = "imported"


def record_name(marker: Marker) -> str:
    return f"{marker.pod_uid}_{marker.checkpoint_id}.json"


def plan(markers: Iterable[Marker], node: str, recorded: set[str]) -> list[Marker]:
    """The checkpoints addressed to ``node`` that have no recorded outcome yet, oldest first (pure)."""
    todo = [m for m in markers if m.target_node == node and record_name(m) not in recorded]
    return sorted(todo, key=lambda m: (m.completed_at, m.checkpoint_id))


@dataclass(frozen=True)
class RestorerSettings:
    node: str
    work_dir: Path
    """Node-local: scratch space for each import, and the record of what was done (0700)."""
    importer: Importer
    interval: float = 10.0


class StandaloneRestorer:
    def __init__(self, settings: RestorerSettings, source: Source, metrics: AgentMetrics) -> None:
        """``source``: the store the markers and dumps are read from, a directory or a bucket."""
        self._settings = settings
        self._source = source
        self._metrics = metrics
        self._records_fd = fsio.open_root(settings.work_dir / RECORDS_DIR, create=True)
        self._lacking_key: set[str] = set()
        """Checkpoints sealed with a key this agent does not hold: skipped until it restarts with the key
        (the keys are read at start), and not recorded, so that restart restores them."""

    async def run(self, stop: asyncio.Event) -> None:
        log.info("restoring checkpoints addressed to this node", extra={"fields": {
            "node": self._settings.node, "workDir": str(self._settings.work_dir),
            "pollSeconds": self._settings.interval}})
        while not stop.is_set():
            try:
                await self.poll_round()
            except Cancelled:
                return
            except LpmError as err:  # the store away for a while: the next round looks again
                log.warning("marker poll failed", extra={"fields": {"reason": str(err)}})
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._settings.interval)
            except TimeoutError:
                pass

    def close(self) -> None:
        """Release the records directory; after ``run`` has ended for good (it may be restarted before)."""
        os.close(self._records_fd)

    async def poll_round(self) -> None:
        def recorded_names() -> set[str]:
            with fsio.os_errors(f"{self._settings.work_dir / RECORDS_DIR}: listing"):
                return set(os.listdir(self._records_fd))

        markers = await self._source.markers()
        recorded = await asyncio.to_thread(recorded_names)
        for marker in plan(markers, self._settings.node, recorded | self._lacking_key):
            if not await self._restore(marker):
                return  # the store is away: every other checkpoint would fail alike until the next round

    async def _restore(self, marker: Marker) -> bool:
        """Import ``marker``'s checkpoint and record the outcome; False when the store failed on its side."""
        cfg = self._settings
        fields = {"checkpoint": f"{marker.pod_uid}/{marker.checkpoint_id}"}
        started = time.monotonic()
        images: dict[str, str] = {}
        try:
            for container in marker.containers:
                ref = layout.ArtifactRef(marker.pod_uid, marker.checkpoint_id, container)
                imported = await import_checkpoint(self._source, ref, cfg.work_dir, cfg.importer)
                images[container] = imported.reference
                fields["pod"] = f"{imported.manifest.pod_namespace}/{imported.manifest.pod_name}"
        except ImportFailed as err:
            log.error("checkpoint image not imported; trying again next round",
                      extra={"fields": {**fields, "reason": str(err)}})
            self._metrics.failed(Operation.RESTORE, err)
            return True
        except StoreUnavailable as err:
            log.error("store unavailable during the import; trying again next round",
                      extra={"fields": {**fields, "reason": str(err)}})
            self._metrics.failed(Operation.RESTORE, err)
            return False
        except EncryptionKeyError as err:
            log.error("checkpoint sealed with a key this node does not hold; restart the agent with the key to "
                      "restore it", extra={"fields": {**fields, "keyID": err.key_id, "reason": str(err)}})
            self._metrics.failed(Operation.RESTORE, err)
            self._lacking_key.add(record_name(marker))
            return True
        except Cancelled:
            raise
        except LpmError as err:  # checksums, a container the marker lists but the store lacks, a bad archive
            log.error("checkpoint refused; it will not be restored here",
                      extra={"fields": {**fields, "reason": str(err)}})
            self._metrics.failed(Operation.RESTORE, err)
            await self._record(marker, {"outcome": "refused", "reason": str(err)})
            return True
        seconds = time.monotonic() - started
        self._metrics.restore_duration.observe(seconds)
        await self._record(marker, {"outcome": "imported", "images": images})
        log.info("checkpoint images ready to restore", extra={"fields": {
            **fields, "images": images, "seconds": round(seconds, 3)}})
        return True

    async def _record(self, marker: Marker, outcome: dict[str, object]) -> None:
        body = {"podUID": marker.pod_uid, "checkpointID": marker.checkpoint_id, "node": self._settings.node,
                "at": rfc3339(datetime.now(UTC)), **outcome}
        where = str(self._settings.work_dir / RECORDS_DIR)
        await asyncio.to_thread(fsio.write_atomic, self._records_fd, record_name(marker), encode(body), where)

