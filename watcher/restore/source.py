"""Where a restore reads checkpoints from: a directory store, or an S3 bucket (docs/s3.md).

The restore pipeline makes four reads of a store: the completion markers (standalone mode's only signal),
a container's manifest, the dump streamed once through every check (the streamed import), and the archive
to a file, verified (the normalised import). Both stores give the same answers with the same checks: the
bucket's reads are ``watcher.s3.retrieve``'s, which feed the filesystem store's very reader.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from watcher.errors import LpmError
from watcher.restore.markers import read_markers
from watcher.s3 import retrieve as s3retrieve
from watcher.s3.location import ObjectKind, classify
from watcher.s3.store import S3Store
from watcher.store import catalog, fsio, layout, retrieve
from watcher.store.manifest import Manifest, Marker
from watcher.zstream import CompressionSettings

log = logging.getLogger(__name__)

Piece = Callable[[bytes], None]


class Source(Protocol):
    async def markers(self) -> list[Marker]:
        """Every readable completion marker."""

    async def find(self, ref: layout.ArtifactRef) -> Manifest:
        """The manifest of ``ref``, in a complete checkpoint, or a clear error."""

    def stream(self, ref: layout.ArtifactRef, tee: Piece, observe: Piece) -> Manifest:
        """On a worker thread: ``watcher.store.retrieve.stream``, the dump once, every check made."""

    async def get(self, ref: layout.ArtifactRef, out: Path) -> Manifest:
        """The kubelet archive to ``out``, verified (``watcher.store.retrieve.get``)."""


@dataclass(frozen=True)
class DirectorySource:
    root_fd: int
    compression: CompressionSettings
    cancel: threading.Event

    async def markers(self) -> list[Marker]:
        def read() -> list[Marker]:
            with fsio.os_errors("store: reading completion markers"):
                return list(read_markers(self.root_fd))

        return await asyncio.to_thread(read)

    async def find(self, ref: layout.ArtifactRef) -> Manifest:
        _, manifest = await asyncio.to_thread(catalog.find, self.root_fd, ref)
        return manifest

    def stream(self, ref: layout.ArtifactRef, tee: Piece, observe: Piece) -> Manifest:
        return retrieve.stream(self.root_fd, ref, self.compression, self.cancel, tee=tee, observe=observe)

    async def get(self, ref: layout.ArtifactRef, out: Path) -> Manifest:
        return await asyncio.to_thread(retrieve.get, self.root_fd, ref, out, self.compression, self.cancel)


@dataclass
class BucketSource:
    store: S3Store
    compression: CompressionSettings
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop
    """The loop the store's client runs on: ``stream`` is called from a worker thread and runs its reads there."""
    _markers: dict[str, Marker] = field(default_factory=dict)
    """By key. A marker is put once and never rewritten, so each is read once; one LIST a poll finds new ones."""

    async def markers(self) -> list[Marker]:
        keys = [item.key async for item in self.store.objects(self.store.location.root)
                if classify(self.store.location, item.key).kind is ObjectKind.MARKER]
        for gone in set(self._markers) - set(keys):
            del self._markers[gone]  # collected: a new checkpoint would have another ID
        for key in keys:
            if key not in self._markers:
                info = classify(self.store.location, key)
                try:
                    self._markers[key] = await self.store.read_marker(info.uid, info.cid)
                except LpmError as err:  # as read_markers does: one bad marker does not hide the others
                    log.warning("store entry passed over", extra={"fields": {"path": key, "reason": str(err)}})
        return [self._markers[key] for key in sorted(self._markers)]

    async def find(self, ref: layout.ArtifactRef) -> Manifest:
        _, manifest = await self.store.find(ref)
        return manifest

    def stream(self, ref: layout.ArtifactRef, tee: Piece, observe: Piece) -> Manifest:
        reading = s3retrieve.stream(self.store, ref, self.compression, self.cancel, tee, observe)
        return asyncio.run_coroutine_threadsafe(reading, self.loop).result()

    async def get(self, ref: layout.ArtifactRef, out: Path) -> Manifest:
        return await s3retrieve.get(self.store, ref, out, self.compression, self.cancel)
