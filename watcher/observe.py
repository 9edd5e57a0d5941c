"""What the agent tells operators over HTTP: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: Prometheus text. Durations of checkpoints (kubelet call to committed
  checkpoint), restores and directory ingests as histograms; bytes ingested and stored;
  failures by operation and reason; the store's usage, read at each scrape; whether the
  shared store is available, what the local store holds meanwhile, and what was moved back.
- ``/healthz``: 200 whenever the handler runs. It runs on the agent's event loop, so an
  answer IS the proof that the loop is not wedged; a wedged loop answers nothing and the
  kubelet's liveness probe times out.
- ``/readyz``: 200 once every API watch has listed its objects and a store takes a write;
  503 with the reasons otherwise. Degraded is ready: with the shared store unavailable the
  agent still checkpoints (into the local store), so it answers 200 with a ``degraded:``
  line saying why. A not-ready DaemonSet pod would stall rolling updates and page for the
  wrong thing; the degradation is alerted on from ``lpm_shared_store_available`` instead.
  In cluster mode a ready answer also says whether this node's runtime restores checkpoints
  (``restore: capable (...)``, ``not capable (...)`` or ``unknown (...)``). That never makes the
  agent unready either: it still checkpoints, and sources read the answer from its Lease.

One listening socket, dual-stack where the kernel has IPv6: the kubelet probes the pod's
address, whichever family the cluster uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watcher.errors import (
    ApiError,
    ArchiveError,
    EncryptionKeyError,
    IdentityError,
    LpmError,
    StoreError,
    UnsafeNameError,
)
from watcher.ingest.service import IngestResult
from watcher.kubelet import KubeletError
from watcher.runtime.capability import Capability, Verdict
from watcher.runtime.checkpoint import RuntimeCheckpointError
from watcher.store import fsio, transfer
from watcher.store.usage import StoreUsage, store_usage
from watcher.stores import Stores
from watcher.supervise import TaskHealth

log = logging.getLogger("lpm.agent")

# Seconds. Checkpoints include the runtime's CRIU dump, minutes for large memory.
USAGE_TIMEOUT = 2.0  # seconds a scrape waits for the store's statvfs
_DURATION_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Operation(StrEnum):
    CHECKPOINT = "checkpoint"
    """A checkpoint the agent asked the runtime or the kubelet for (a ContainerCheckpoint or PodCheckpoint)."""
    INGEST = "ingest"
    """An archive found in the kubelet's checkpoint directory."""
    RESTORE = "restore"
    """A checkpoint restored on the destination node."""


class Reason(StrEnum):
    KUBELET = "kubelet"
    RUNTIME = "runtime"
    """The node's runtime refused or failed a checkpoint asked over its CRI socket."""
    IDENTITY = "identity"
    ARCHIVE = "archive"
    UNSAFE_NAME = "unsafe_name"
    ENCRYPTION = "encryption"
    """A sealed dump whose key this agent does not hold, or another key under its ID (docs/encryption.md)."""
    STORE = "store"
    API = "api"
    OTHER = "other"


# First match wins: subclasses before their bases.
_REASONS: tuple[tuple[type[LpmError], Reason], ...] = (
    (KubeletError, Reason.KUBELET),
    (RuntimeCheckpointError, Reason.RUNTIME),
    (IdentityError, Reason.IDENTITY),
    (ArchiveError, Reason.ARCHIVE),
    (UnsafeNameError, Reason.UNSAFE_NAME),
    (EncryptionKeyError, Reason.ENCRYPTION),
    (StoreError, Reason.STORE),
    (ApiError, Reason.API),
)


def reason_of(err: LpmError) -> Reason:
    """The failure's label: a small fixed set, so the metric's series stay few."""
    return next((reason for kind, reason in _REASONS if isinstance(err, kind)), Reason.OTHER)


class _StoreUsage(Collector):
    """The store's usage, read when scraped (scrapes run off the event loop: see ``_metrics``).

    statvfs on a dead NFS server blocks until the server returns; a scrape must not. The read runs in a
    thread of its own and is waited for ``USAGE_TIMEOUT`` seconds; past that the scrape goes on without
    the usage samples (the availability gauge, which matters more then, still goes out), and while that
    read is stuck no second one is started, so a long outage holds one thread, not one per scrape.
    """

    def __init__(self, store: Path) -> None:
        self._store = store
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lpm-store-usage")
        self._pending: Future[StoreUsage] | None = None

    def collect(self) -> Iterator[Metric]:
        if self._pending is None or self._pending.done():
            self._pending = self._reader.submit(store_usage, self._store)
        try:
            usage = self._pending.result(timeout=USAGE_TIMEOUT)
        except (OSError, FutureTimeout):
            return  # no sample rather than a wrong one; /readyz says what is wrong with the store
        yield GaugeMetricFamily("lpm_store_used_bytes", "Bytes used on the store's filesystem", usage.used)
        yield GaugeMetricFamily("lpm_store_capacity_bytes", "Size of the store's filesystem in bytes", usage.capacity)
        yield GaugeMetricFamily("lpm_store_usage_ratio", "Used / (used + available), as df's Use%", usage.ratio)


class _LocalCheckpoints(Collector):
    """What the local store holds, read when scraped: checkpoints waiting for the shared store."""

    def __init__(self, local_store: Path | None) -> None:
        self._local_store = local_store

    def collect(self) -> Iterator[Metric]:
        held = []
        if self._local_store is not None:
            try:
                fd = fsio.open_root(self._local_store, create=False)
            except LpmError:
                return  # no sample rather than a wrong one
            try:
                held = transfer.local_checkpoints(fd)
            except (LpmError, OSError):
                return
            finally:
                os.close(fd)
        yield GaugeMetricFamily("lpm_local_checkpoints", "Complete checkpoints held in the node's local store "
                                "because the shared store was unavailable", len(held))
        yield GaugeMetricFamily("lpm_local_checkpoint_bytes", "Bytes of the dumps held in the node's local store",
                                sum(m.compressed_size for c in held for m in c.manifests))


class _RestoreCapability(Collector):
    """``lpm_runtime_restore_capable``: one series, labelled with what was assessed last (none before)."""

    def __init__(self) -> None:
        self.current: Capability | None = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "lpm_runtime_restore_capable", "1 when this node's container runtime restores containers from "
            "checkpoint images, else 0 (verdict=false: it cannot; verdict=unknown: it could not be told)",
            labels=["runtime", "version", "verdict"])
        if self.current is not None:
            c = self.current
            family.add_metric([c.runtime, c.version, c.verdict.value], 1 if c.verdict is Verdict.CAPABLE else 0)
        yield family


class AgentMetrics:
    """One registry per agent, so tests (and two agents in one process) never share counters."""

    def __init__(self, store: Path | None, local_store: Path | None = None, tasks: TaskHealth | None = None) -> None:
        """``store``: the shared store's directory, whose filesystem usage is exported (None: an S3 store)."""
        self.tasks = tasks or TaskHealth()
        """The supervised background tasks: /healthz fails while one keeps failing."""
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # memory, CPU, open fds: what a leak looks like
        if store is not None:
            r.register(_StoreUsage(store))
        r.register(_LocalCheckpoints(local_store))
        self._restore = _RestoreCapability()
        r.register(self._restore)
        self.shared_store_available = Gauge(
            "lpm_shared_store_available", "1 when the shared store took the last probe's write, else 0 "
            "(checkpoints then go to the local store)", registry=r)
        self.shared_store_available.set(1)
        self.held_locally = Counter(
            "lpm_checkpoints_held_locally", "Checkpoints committed to the local store because the shared "
            "store was unavailable", registry=r)
        self.moved_to_shared = Counter(
            "lpm_checkpoints_moved_to_shared", "Checkpoints moved from the local store into the shared store",
            registry=r)
        self.checkpoint_duration = Histogram(
            "lpm_checkpoint_duration_seconds",
            "From the kubelet call to the committed checkpoint, all containers of one request",
            buckets=_DURATION_BUCKETS, registry=r)
        # Observed by the restore stage on the destination node.
        self.restore_duration = Histogram(
            "lpm_restore_duration_seconds", "From the stored checkpoint to the restored container",
            buckets=_DURATION_BUCKETS, registry=r)
        # Observed by the destination's agent when the restored pod's containers all run (status.freezeWindow).
        self.freeze_window = Histogram(
            "lpm_freeze_window_seconds", "From the source's call for the checkpoint to the restored pod's "
            "containers running, per migration (spans two nodes' clocks)", buckets=_DURATION_BUCKETS, registry=r)
        self.ingest_duration = Histogram(
            "lpm_ingest_duration_seconds", "Ingest of one archive found in the kubelet's checkpoint directory",
            buckets=_DURATION_BUCKETS, registry=r)
        self.given_up = Counter(
            "lpm_archives_given_up", "Kubelet archives refused because they stayed unfinished (no end-of-archive "
            "blocks) and unchanged for --give-up-after seconds", registry=r)
        self.ingested_bytes = Counter(
            "lpm_ingested_bytes", "Bytes of kubelet archives read into the store (uncompressed)", registry=r)
        self.stored_bytes = Counter(
            "lpm_stored_bytes", "Bytes written to the store for them (zstd-compressed)", registry=r)
        self.failures = Counter(
            "lpm_failures", "Operations that ended in failure, by operation and reason",
            ["operation", "reason"], registry=r)
        self.task_restarts = Counter(
            "lpm_task_restarts", "Background tasks restarted after an unexpected exception, by task",
            ["task"], registry=r)
        self.tasks.listeners.append(lambda task, count: self.task_restarts.labels(task).inc(count))
        # Every series exists from the start at 0, so increase() sees the first failure too.
        for operation in Operation:
            for reason in Reason:
                self.failures.labels(operation.value, reason.value)

    def ingested(self, result: IngestResult, seconds: float) -> None:
        """An archive from the directory, stored (or found stored already: then only a ledger lookup)."""
        if result.duplicate:
            return
        self.ingest_duration.observe(seconds)
        self._stored([result])

    def checkpointed(self, results: list[IngestResult], seconds: float) -> None:
        """One requested checkpoint, committed."""
        self.checkpoint_duration.observe(seconds)
        self._stored(results)

    def _stored(self, results: list[IngestResult]) -> None:
        for result in results:
            if not result.duplicate:  # already counted when it was first stored
                self.ingested_bytes.inc(result.manifest.uncompressed_size)
                self.stored_bytes.inc(result.manifest.compressed_size)

    def failed(self, operation: Operation, err: LpmError) -> None:
        self.failures.labels(operation.value, reason_of(err).value).inc()

    def restore_capability(self, capability: Capability) -> None:
        self._restore.current = capability


class ReadinessCheck(Protocol):
    """What /readyz asks: ``Readiness`` (a directory store), or the S3 agent's (``watcher.agent_s3``)."""

    restore: Capability | None

    async def check(self) -> tuple[list[str], str | None]:
        """(problems: not ready while any, the degradation: ready but held locally, or None)."""


class Readiness:
    """Ready = every registered API watch has listed once, and a store (shared, else local) takes a write."""

    def __init__(self, probe: Callable[[], Awaitable[str | None]], local_writable: Callable[[], str | None] | None,
                 store: str) -> None:
        """``probe``: None when the shared store is available, else why; ``local_writable``: the same of the
        local store, whose checkpoints are held while the shared one is not (None: no local store, so the
        shared one unavailable is not ready); ``store``: the shared store, as a log line names it."""
        self._probe = probe
        self._local_writable = local_writable
        self._store = store
        self._watches: dict[str, asyncio.Event] = {}
        self._was: tuple[bool, bool] | None = None
        self.restore: Capability | None = None
        """This node's runtime's capability, once assessed (cluster mode)."""

    def watch(self, name: str) -> asyncio.Event:
        """The event an informer sets once its first list is done (its ``synced``)."""
        event = self._watches[name] = asyncio.Event()
        return event

    async def check(self) -> tuple[list[str], str | None]:
        """(problems: not ready while any, the degradation: ready but held locally, or None)."""
        problems = [f"watch {name} not established yet" for name, synced in self._watches.items()
                    if not synced.is_set()]
        degraded = await self._probe()
        if degraded is not None:
            local = ("no local store to hold checkpoints in" if self._local_writable is None
                     else await asyncio.to_thread(self._local_writable))
            if local is not None:
                problems += [degraded, local]
                degraded = None
        self._log_change(problems, degraded)
        return problems, degraded

    def _log_change(self, problems: list[str], degraded: str | None) -> None:
        now = (not problems, degraded is not None)
        if now == self._was:
            return
        self._was = now
        if problems:
            log.warning("agent not ready", extra={"fields": {"problems": problems}})
        elif degraded is not None:
            log.warning("agent ready, degraded", extra={"fields": {"reason": degraded}})
        else:
            log.info("agent ready", extra={"fields": {"store": self._store}})

    @classmethod
    def of(cls, stores: Stores) -> Readiness:
        """Both stores directories: ready, degraded, while the local one takes what the shared one cannot."""
        return cls(stores.probe, stores.local_writable, str(stores.shared.path))


def _listen(port: int) -> socket.socket:
    """One socket on every address: IPv6 with IPv4 mapped in, or IPv4 alone without IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", port)
    except OSError as err:
        if err.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serving(port: int, metrics: AgentMetrics, readiness: ReadinessCheck) -> AsyncIterator[int]:
    """Serve the endpoints on ``port`` (0: any free port) while the block runs; yields the port."""

    async def healthz(_: web.Request) -> web.Response:
        failing = metrics.tasks.failing()
        if failing:
            return web.Response(status=503, text="\n".join(failing) + "\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems, degraded = await readiness.check()
        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        lines = ["ok"]
        if degraded is not None:
            lines.append(f"degraded: {degraded}; checkpoints are held in the local store")
        if readiness.restore is not None:
            lines.append(f"restore: {readiness.restore.summary()}")
        return web.Response(text="\n".join(lines) + "\n")

    async def metrics_page(_: web.Request) -> web.Response:
        # In a thread: the store usage collector calls statvfs, which blocks on a hung NFS server, and
        # the event loop must keep answering /healthz and doing the agent's work meanwhile.
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    try:
        sock = _listen(port)
    except OSError as err:
        raise LpmError(f"health endpoints: cannot listen on port {port}: {err.strerror or err}") from None
    # No access log: probes every few seconds would drown it. A short shutdown timeout: the agent's
    # contract is to exit within 5 s of SIGTERM, and a scrape in flight is worth no more than a second.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        bound: int = sock.getsockname()[1]
        log.info("health endpoints served", extra={"fields": {"port": bound}})
        yield bound
    finally:
        await runner.cleanup()
        sock.close()
