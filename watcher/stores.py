"""The shared store, the node-local fallback, and which of them takes the next checkpoint.

The shared store is "available" when a probe through its open directory takes a write:
create, write, fsync and remove one small file, within ``PROBE_TIMEOUT`` (a dead NFS server
hangs such a write rather than failing it, so the probe runs in a thread and is given up on
after the timeout; at most one is in flight, or each hung probe would hold a thread for good).
A missing, read-only (EROFS), full (ENOSPC), broken (EIO, ESTALE) or silent store is not
available, and checkpoints go to the node's local store instead, with ``file://`` URIs and
``storageType: local``, until a mover brings them over (``watcher.mover``).

The shared store's directory fd keeps its number for the agent's lifetime, because the
cluster agent hands it to several stages. When the path comes to name another directory (the
store was removed and made again, or remounted), the probe opens the new one and ``dup2``s it
onto that number, so every holder follows; until then a write into the old, unlinked
directory fails (ENOENT), which is what makes the probe notice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from watcher.errors import LpmError, StoreError
from watcher.store import fsio, layout
from watcher.store.layout import StorageType

log = logging.getLogger("lpm.agent")

PROBE_TIMEOUT = 3.0
"""Seconds a probe write may take; below the DaemonSet's readiness probe timeout (5 s)."""


class Where(Protocol):
    """What an announcement says of a store: its kind, and the URI it gives an artifact (a ``Store``, or a
    bucket: ``watcher.cluster.sinks.BucketSink``)."""

    @property
    def kind(self) -> StorageType: ...

    def uri(self, ref: layout.ArtifactRef) -> str: ...


class InBucket:
    """A bucket's ``Where``: always shared, its URIs the layout's own (``shared://...``)."""

    @property
    def kind(self) -> StorageType:
        return StorageType.SHARED

    def uri(self, ref: layout.ArtifactRef) -> str:
        return ref.uri


@dataclass(frozen=True)
class Store:
    kind: StorageType
    path: Path
    fd: int

    def uri(self, ref: layout.ArtifactRef) -> str:
        return ref.uri if self.kind is StorageType.SHARED else ref.file_uri(self.path)


def open_local(path: Path) -> Store:
    """The node-local store, made if missing, 0700."""
    store = Store(StorageType.LOCAL, path, fsio.open_root(path, create=True))
    # A hostPath the kubelet made is 0755; what it holds is process memory, so narrow it as the store's.
    with fsio.os_errors(f"local store {path}"):
        os.fchmod(store.fd, fsio.DIR_MODE)
    return store


class Stores:
    """Both stores of one agent, and the shared one's last known availability."""

    def __init__(self, shared: Path, local: Path, node: str) -> None:
        if local.is_relative_to(shared) or shared.is_relative_to(local):
            # Inside the shared store it would be neither local nor safe from the collector.
            raise StoreError(f"local store {local}: overlaps the shared store {shared}; it must be a separate "
                             "directory on the node's own disk")
        self.shared = Store(StorageType.SHARED, shared, fsio.open_root(shared, create=True))
        self.local = open_local(local)
        # A dot-name: every reader of the store skips those. One per node, so agents never collide.
        self._probe_name = f".readyz-{node}"
        self._probe: asyncio.Future[None] | None = None
        self.problem: str | None = None
        """Why the shared store is unavailable (None: it took the last probe's write)."""
        self._listeners: list[Callable[[bool], None]] = []

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(available)`` after every probe (metrics keep their gauge with it)."""
        self._listeners.append(listener)

    async def probe(self) -> str | None:
        """Probe the shared store now; None when it is available, else the reason."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(self._probe_shared))
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), PROBE_TIMEOUT)
        except TimeoutError:
            problem: str | None = f"shared store {self.shared.path}: a write got no answer within {PROBE_TIMEOUT:g} s"
        except OSError as err:
            problem = f"shared store {self.shared.path}: not writable ({err.strerror or err})"
        except LpmError as err:
            problem = f"shared store {self.shared.path}: {err}"
        else:
            problem = None
        self._record(problem)
        return problem

    def unavailable(self, reason: str) -> None:
        """An ingest found the shared store failing: the next ones go local until a probe succeeds."""
        self._record(f"shared store {self.shared.path}: {reason}")

    def _record(self, problem: str | None) -> None:
        if (problem is None) != (self.problem is None):
            if problem is None:
                log.info("shared store available again", extra={"fields": {"store": str(self.shared.path)}})
            else:
                log.warning("shared store unavailable; checkpoints are held in the local store", extra={
                    "fields": {"reason": problem, "localStore": str(self.local.path)}})
        self.problem = problem
        for listener in self._listeners:
            listener(problem is None)

    def _probe_shared(self) -> None:
        """Create, write, fsync and remove one small file: what an ingest needs of the store, in brief."""
        path, fd = self.shared.path, self.shared.fd
        now = os.stat(path)  # FileNotFoundError: the mount or directory is gone
        held = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            fresh = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.dup2(fresh, fd, inheritable=False)
            finally:
                os.close(fresh)
            log.info("shared store directory replaced; following it", extra={"fields": {"store": str(path)}})
        write_probe(fd, self._probe_name)

    def local_writable(self) -> str | None:
        """None when the local store takes a write, else the reason (it is local disk: no timeout needed)."""
        try:
            write_probe(self.local.fd, self._probe_name)
        except OSError as err:
            return f"local store {self.local.path}: not writable ({err.strerror or err})"
        except LpmError as err:
            return f"local store {self.local.path}: {err}"
        return None


def write_probe(root_fd: int, name: str) -> None:
    # A symlink, FIFO, device or directory planted under this name is refused, not written through.
    fd = fsio.open_file(root_fd, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "store probe file")
    try:
        os.write(fd, b"ready\n")
        os.fsync(fd)  # on NFS the round trip to the server, which is what a dead server fails
    finally:
        os.close(fd)
        # Removed whether the write went through or not: on a full store the create succeeds and the write
        # fails, and an empty probe file left behind was the one thing in a full store not the user's.
        try:
            os.unlink(name, dir_fd=root_fd)
        except FileNotFoundError:
            # The name is the node's, not the process's: the node's other agent (old and new one during a
            # rollout) removed it after its own probe.
            pass
