"""One collection pass, and the loop of passes: lock, scan, plan, check references, delete, report.

Reports go to the output stream (``lpm gc`` gives it stdout) as one JSON object per line: one
``deletion`` line per deletion with its reason, then one ``summary`` line per pass. Diagnostics
(warnings, errors, the lease) go to the JSON log on stderr like every lpm command's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from lpm_gc import kubelet, runner
from lpm_gc.entries import Entry, Kind
from lpm_gc.lock import Lock
from lpm_gc.metrics import Metrics
from lpm_gc.planner import Deletion, Policy, Reason, plan
from lpm_gc.references import NoReferences, Reference, References, Unknown
from lpm_gc.scanner import Scan, scan
from watcher.errors import LpmError
from watcher.s3.location import S3Location
from watcher.store import fsio
from watcher.store.usage import USAGE_WARNING, store_usage

log = logging.getLogger("lpm.gc")


@dataclass(frozen=True)
class Settings:
    store: Path | S3Location
    policy: Policy
    dry_run: bool = False
    kubelet: kubelet.KubeletSettings | None = None


@dataclass
class Summary:
    dry_run: bool
    lock: str = "held"
    """held: this pass deleted; busy: another collector holds the lock, or the Lease could not be
    taken (the API did not answer): nothing deleted; none: a dry run takes no lock."""
    scanned: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    kept_pinned: int = 0
    kept_unknown: int = 0
    kept_referenced: int = 0
    kept_in_use: int = 0
    errors: int = 0
    started_at: float = field(default_factory=time.time)
    duration: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "summary", "dryRun": self.dry_run, "lock": self.lock, "scanned": self.scanned,
            "deleted": self.deleted, "bytesFreed": self.bytes_freed, "keptPinned": self.kept_pinned,
            "keptUnknown": self.kept_unknown, "keptReferenced": self.kept_referenced,
            "keptInUse": self.kept_in_use, "errors": self.errors, "startedAt": round(self.started_at, 3),
            "durationSeconds": round(self.duration, 3), **self.usage,
        }


ReferenceSource = Callable[[], Awaitable[References]]


class Backend(Protocol):
    """What a pass needs of the store: a filesystem directory (``FsBackend``) or an S3 store (``lpm_gc.s3``)."""

    root_fd: int | None
    """The filesystem store's directory (its usage, the kubelet sweep's ledger); None for an S3 store."""

    async def scan(self) -> Scan: ...

    def delete(self, entry: Entry, stale_after: float) -> runner.Outcome:
        """Delete one planned entry unless a re-check says otherwise; called from the deleting thread."""


class FsBackend:
    def __init__(self, root_fd: int) -> None:
        self.root_fd: int | None = root_fd
        self._fd = root_fd

    async def scan(self) -> Scan:
        return await asyncio.to_thread(scan, self._fd)

    def delete(self, entry: Entry, stale_after: float) -> runner.Outcome:
        return runner.delete(self._fd, entry, stale_after)


OpenBackend = Callable[[], AbstractAsyncContextManager[Backend]]


async def _no_references() -> References:
    return NoReferences()


class Collector:
    def __init__(self, settings: Settings, lock: Lock, metrics: Metrics, out: TextIO,
                 references: ReferenceSource = _no_references, open_backend: OpenBackend | None = None) -> None:
        self._settings = settings
        self._open_backend = open_backend or self._open_directory
        self._lock = lock
        self.metrics = metrics
        self._out = out
        self._out_lock = threading.Lock()  # deletion lines come from a worker thread
        self._references = references
        self.stopping = threading.Event()

    async def run_pass(self) -> Summary:
        """One pass. Raises StoreError when the store itself cannot be read."""
        settings = self._settings
        summary = Summary(dry_run=settings.dry_run, lock="none" if settings.dry_run else "held")
        started = time.monotonic()
        async with self._open_backend() as backend:
            if backend.root_fd is not None:
                self._usage(backend.root_fd, summary)
            if settings.dry_run or await self._lock.acquire():
                try:
                    await self._collect(backend, summary)
                finally:
                    await self._lock.release()
            else:
                summary.lock = "busy"
            if settings.kubelet is not None and backend.root_fd is not None:
                await asyncio.to_thread(self._kubelet, backend.root_fd, settings.kubelet, summary)
        summary.duration = time.monotonic() - started
        self.metrics.duration.observe(summary.duration)
        self.metrics.last_pass.set(time.time())
        self._emit(summary.to_json())
        return summary

    @contextlib.asynccontextmanager
    async def _open_directory(self) -> AsyncIterator[Backend]:
        store = self._settings.store
        assert isinstance(store, Path), "an S3 store's collector is given its open_backend (lpm_gc.cli)"
        root_fd = fsio.open_root(store, create=False)
        try:
            yield FsBackend(root_fd)
        finally:
            os.close(root_fd)

    def _usage(self, root_fd: int, summary: Summary) -> None:
        usage = store_usage(root_fd)
        self.metrics.record_usage(usage)
        summary.usage = {"storeUsedBytes": usage.used, "storeCapacityBytes": usage.capacity,
                         "storeUsagePercent": round(usage.ratio * 100, 1)}
        if usage.ratio > USAGE_WARNING:
            log.warning("checkpoint store is more than 80% full",
                        extra={"fields": {"store": str(self._settings.store), **summary.usage}})

    async def _collect(self, backend: Backend, summary: Summary) -> None:
        policy = self._settings.policy
        found = await backend.scan()
        decided = plan(found.entries, policy, time.time())
        summary.scanned = len(found.entries) + len(found.damaged)
        for path, why in found.damaged:
            log.warning("store entry kept: cannot judge it", extra={"fields": {"path": path, "reason": why}})
        summary.kept_unknown += len(found.damaged)
        summary.kept_pinned += len(decided.kept_pinned)
        self.metrics.kept.labels("unknown").inc(len(found.damaged))
        self.metrics.kept.labels("pinned").inc(len(decided.kept_pinned))
        del found  # the plan holds what it needs; the scan's list can go before the deletions
        references: References = NoReferences()
        if any(d.entry.kind is Kind.COMPLETE for d in decided.deletions):
            references = await self._references()
            if isinstance(references, Unknown):
                log.warning("cannot tell which checkpoints the API still references; keeping them",
                            extra={"fields": {"reason": references.why}})
        await asyncio.to_thread(self._delete, backend, decided.deletions, references, summary)

    def _delete(self, backend: Backend, deletions: list[Deletion], references: References, summary: Summary) -> None:
        stale_after = self._settings.policy.stale_after
        for done, deletion in enumerate(deletions):
            if self.stopping.is_set() or not (self._settings.dry_run or self._lock.held()):
                log.warning("pass cut short: stopping, or the collector lock was lost",
                            extra={"fields": {"left": len(deletions) - done}})
                return
            entry = deletion.entry
            if entry.kind is Kind.COMPLETE:
                answer = references.of(entry)
                if answer is Reference.REFERENCED:
                    summary.kept_referenced += 1
                    self.metrics.kept.labels("referenced").inc()
                    continue
                if answer is Reference.UNKNOWN:
                    summary.kept_unknown += 1
                    self.metrics.kept.labels("unknown").inc()
                    continue
            if self._settings.dry_run:
                self._deleted(deletion, summary)
                continue
            try:
                outcome = backend.delete(entry, stale_after)
            except LpmError as err:
                summary.errors += 1
                self.metrics.errors.inc()
                log.error("deletion failed", extra={"fields": {"path": entry.path, "error": str(err)}})
                continue
            if outcome is runner.Outcome.DELETED:
                self._deleted(deletion, summary)
            elif outcome is runner.Outcome.PINNED:
                summary.kept_pinned += 1
                self.metrics.kept.labels("pinned").inc()
            elif outcome is runner.Outcome.ALIVE:
                summary.kept_in_use += 1
                self.metrics.kept.labels("in-use").inc()

    def _deleted(self, deletion: Deletion, summary: Summary) -> None:
        entry = deletion.entry
        summary.deleted += 1
        summary.bytes_freed += entry.size
        if not self._settings.dry_run:
            self.metrics.deletions.labels(deletion.reason.value).inc()
            self.metrics.freed.inc(entry.size)
        self._emit(_deletion_line(entry, deletion.reason, self._settings.dry_run))

    def _kubelet(self, root_fd: int, settings: kubelet.KubeletSettings, summary: Summary) -> None:
        dry_run = self._settings.dry_run

        def report(path: str, size: int) -> None:
            if not dry_run:
                self.metrics.deletions.labels(Reason.KUBELET_ARCHIVE.value).inc()
                self.metrics.freed.inc(size)
            self._emit({"event": "deletion", "dryRun": dry_run, "reason": Reason.KUBELET_ARCHIVE.value,
                        "path": path, "bytes": size})

        def warn(path: str, why: str) -> None:
            log.warning("kubelet archive kept", extra={"fields": {"path": path, "reason": why}})

        try:
            swept = kubelet.sweep(root_fd, settings, time.time(), dry_run, report, warn)
        except (OSError, LpmError) as err:
            summary.errors += 1
            self.metrics.errors.inc()
            log.error("kubelet checkpoint directory not swept",
                      extra={"fields": {"directory": str(settings.directory), "error": str(err)}})
            return
        summary.deleted += swept.deleted
        summary.bytes_freed += swept.freed
        summary.kept_pinned += swept.kept_pinned
        summary.kept_unknown += swept.kept_unknown
        summary.errors += swept.errors
        self.metrics.errors.inc(swept.errors)

    def _emit(self, line: dict[str, Any]) -> None:
        with self._out_lock:
            self._out.write(json.dumps(line, sort_keys=True) + "\n")
            self._out.flush()


def _deletion_line(entry: Entry, reason: Reason, dry_run: bool) -> dict[str, Any]:
    line: dict[str, Any] = {"event": "deletion", "dryRun": dry_run, "reason": reason.value, "path": entry.path,
                            "kind": entry.kind.value, "bytes": entry.size}
    if entry.kind is Kind.COMPLETE:
        line.update(podUID=entry.parent, checkpointID=entry.name, podNamespace=entry.namespace,
                    podName=entry.pod_name)
    return line


async def run(collector: Collector, interval: float, once: bool, stop: asyncio.Event) -> int:
    """Passes every ``interval`` seconds until ``stop``; with ``once``, one pass.

    In the loop an unreadable store is logged and retried next pass (a shared volume comes
    back); a single pass raises it, and ``lpm gc --once`` exits non-zero.
    """
    while True:
        task = asyncio.create_task(collector.run_pass(), name="gc-pass")
        stopper = asyncio.create_task(stop.wait(), name="gc-stop")
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            collector.stopping.set()  # the deleting thread stops before its next deletion
        try:
            await task
        except LpmError as err:
            if once:
                raise
            collector.metrics.errors.inc()
            log.error("collection pass failed", extra={"fields": {"error": str(err)}})
        finally:
            stopper.cancel()
        if once or stop.is_set():
            return 0
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
        else:
            return 0
