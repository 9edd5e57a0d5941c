"""Where the source's checkpoints are written: a directory store, or an S3 bucket (docs/s3.md).

A checkpoint goes in two steps, the same in both: each container's archive is staged (read once,
checked, compressed and hashed into the store's staging area), then the pod's staged archives are
committed as one checkpoint, completion marker last; staged archives that will not be committed are
discarded. ``Places`` says which store takes the next checkpoint: the shared one while it is available,
else the node's local directory, from which the mover brings it over later (a directory shared store only:
over a bucket there is no local fallback, ``BucketPlaces``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from watcher.archive.identity import Identity
from watcher.errors import LpmError
from watcher.ingest import s3 as s3ingest
from watcher.ingest import service
from watcher.ingest.service import IngestResult, StagedArchive
from watcher.s3.store import S3Store
from watcher.store import layout
from watcher.store.layout import StorageType
from watcher.stores import PROBE_TIMEOUT, InBucket, Store, Stores, Where
from watcher.zstream import CompressionSettings, Tally

log = logging.getLogger("lpm.agent")

Also = Callable[[memoryview], None]


class Sink(Where, Protocol):
    async def stage(self, path: Path, node: str, hint: Identity | None, settings: CompressionSettings,
                    cancel: threading.Event, written: threading.Event | None = None, tally: Tally | None = None,
                    also: Also | None = None) -> StagedArchive:
        """``watcher.ingest.service.stage_archive`` into this store: nothing is left staged on failure."""

    async def commit(self, node: str, staged: Sequence[StagedArchive], target_node: str | None,
                     now: datetime) -> list[IngestResult]:
        """The staged archives of one pod as ONE checkpoint, marker last; what was staged is gone after."""

    async def discard(self, node: str, staged: Sequence[StagedArchive]) -> None:
        """Drop staged archives that will not be committed."""


@dataclass(frozen=True)
class DirectorySink:
    store: Store

    @property
    def kind(self) -> StorageType:
        return self.store.kind

    def uri(self, ref: layout.ArtifactRef) -> str:
        return self.store.uri(ref)

    async def stage(self, path: Path, node: str, hint: Identity | None, settings: CompressionSettings,
                    cancel: threading.Event, written: threading.Event | None = None, tally: Tally | None = None,
                    also: Also | None = None) -> StagedArchive:
        return await asyncio.to_thread(service.stage_archive, self.store.fd, path, node, hint, settings, cancel,
                                       written, tally, also)

    async def commit(self, node: str, staged: Sequence[StagedArchive], target_node: str | None,
                     now: datetime) -> list[IngestResult]:
        return await asyncio.to_thread(service.commit_staged, self.store.fd, node, staged, target_node, now)

    async def discard(self, node: str, staged: Sequence[StagedArchive]) -> None:
        await asyncio.to_thread(service.discard_staged, self.store.fd, node, staged)


@dataclass(frozen=True)
class BucketSink(InBucket):
    """The shared store in a bucket: staged as a multipart upload, committed by server-side copies, the
    marker a conditional put (``watcher.ingest.s3``)."""

    store: S3Store
    ledger_fd: int
    """A node-local directory for this node's ingest ledger (the local store), so that the directory watch
    neither reads nor uploads again an archive this agent committed (``watcher.ingest.s3.already_ingested``)."""

    async def stage(self, path: Path, node: str, hint: Identity | None, settings: CompressionSettings,
                    cancel: threading.Event, written: threading.Event | None = None, tally: Tally | None = None,
                    also: Also | None = None) -> StagedArchive:
        return await s3ingest.stage_archive(self.store, path, node, hint, settings, cancel, written, tally, also)

    async def commit(self, node: str, staged: Sequence[StagedArchive], target_node: str | None,
                     now: datetime) -> list[IngestResult]:
        return await s3ingest.commit_staged(self.store, node, staged, target_node, now, self.ledger_fd)

    async def discard(self, node: str, staged: Sequence[StagedArchive]) -> None:
        for item in staged:
            with contextlib.suppress(LpmError):  # left for the collector, after --stale-after
                await self.store.delete(self.store.location.staging_key(node, item.dump_name))


class Places(Protocol):
    """The shared store while it is available, else the node's local one, if there is one."""

    @property
    def shared(self) -> Sink: ...

    @property
    def local(self) -> Sink | None:
        """None: no local fallback (a bucket); a checkpoint the shared store cannot take fails, saying why."""

    async def probe(self) -> str | None:
        """Probe the shared store now; None when it is available, else the reason."""

    def unavailable(self, reason: str) -> None:
        """An ingest found the shared store failing: the next ones go local until a probe succeeds."""


class DirectoryPlaces:
    """Both stores directories (``watcher.stores.Stores``)."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._shared = DirectorySink(stores.shared)
        self._local = DirectorySink(stores.local)

    @property
    def shared(self) -> Sink:
        return self._shared

    @property
    def local(self) -> Sink:
        return self._local

    async def probe(self) -> str | None:
        return await self._stores.probe()

    def unavailable(self, reason: str) -> None:
        self._stores.unavailable(reason)


class BucketPlaces:
    """The shared store a bucket, with no local fallback: there is no mover into a bucket yet (docs/s3.md), and a
    checkpoint held where no destination can read it would strand its migration. Available while the bucket
    answers a HEAD within ``PROBE_TIMEOUT``."""

    def __init__(self, bucket: BucketSink, on_change: Callable[[bool], None] | None = None) -> None:
        """``on_change(available)``: after every probe (the metrics keep their gauge with it)."""
        self._bucket = bucket
        self._on_change = on_change
        self.problem: str | None = None
        """Why the bucket is unavailable (None: it answered the last probe)."""

    @property
    def shared(self) -> Sink:
        return self._bucket

    @property
    def local(self) -> Sink | None:
        return None

    async def probe(self) -> str | None:
        try:
            await asyncio.wait_for(self._bucket.store.check(), PROBE_TIMEOUT)
        except TimeoutError:
            problem: str | None = f"store {self._bucket.store}: no answer within {PROBE_TIMEOUT:g} s"
        except LpmError as err:
            problem = str(err)
        else:
            problem = None
        self._record(problem)
        return problem

    def unavailable(self, reason: str) -> None:
        self._record(f"store {self._bucket.store}: {reason}")

    def _record(self, problem: str | None) -> None:
        if (problem is None) != (self.problem is None):
            if problem is None:
                log.info("shared store available again", extra={"fields": {"store": str(self._bucket.store)}})
            else:
                log.warning("shared store unavailable; checkpoints fail until it is back", extra={
                    "fields": {"reason": problem}})
        self.problem = problem
        if self._on_change is not None:
            self._on_change(problem is None)
