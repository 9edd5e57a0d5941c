"""Checkpoint pins: the collector's ``.keep`` file in a checkpoint's directory of the shared store.

The pin lives in the store, not in the API, because that is where the collector reads it
(``lpm_gc.scanner``), and reads it again right before each deletion (``lpm_gc.runner``): a ``.keep``
of any type in ``<store>/<podUID>/<checkpointID>/`` keeps that checkpoint, all its containers, from every
rule. So pinning needs the shared store mounted where ``kubectl lpm`` runs (``--store``), and the
checkpoint's directory comes from its content object's artifact URIs, validated segments only.
Over a bucket (``--store s3://BUCKET/PREFIX``) the pin is the key ``PREFIX/<podUID>/<checkpointID>/.keep``,
which the collector reads there the same way (docs/s3.md); it is put only beside a completion marker.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from watcher.errors import AlreadyComplete, UnknownCheckpoint
from watcher.s3.store import S3Store
from watcher.store import fsio, layout

Directory = tuple[str, str]
"""A checkpoint's place in the shared store: (pod UID, checkpoint ID)."""


class Pins(Protocol):
    async def is_pinned(self, directory: Directory) -> bool: ...

    async def pin(self, directory: Directory) -> bool:
        """Pin it; False when it was pinned already."""

    async def unpin(self, directory: Directory) -> bool:
        """Unpin it; False when it was not pinned."""


@dataclass(frozen=True)
class DirectoryPins:
    store: Path

    async def is_pinned(self, directory: Directory) -> bool:
        return await asyncio.to_thread(is_pinned, self.store, directory)

    async def pin(self, directory: Directory) -> bool:
        return await asyncio.to_thread(pin, self.store, directory)

    async def unpin(self, directory: Directory) -> bool:
        return await asyncio.to_thread(unpin, self.store, directory)


@dataclass(frozen=True)
class BucketPins:
    store: S3Store

    async def is_pinned(self, directory: Directory) -> bool:
        return await self.store.exists(await self._key(directory))

    async def pin(self, directory: Directory) -> bool:
        try:  # a conditional put: of two pins racing, one says "was pinned already", as on a directory
            await self.store.put_once(await self._key(directory), b"")
        except AlreadyComplete:
            return False
        return True

    async def unpin(self, directory: Directory) -> bool:
        key = await self._key(directory)
        if not await self.store.exists(key):
            return False
        await self.store.delete(key)
        return True

    async def _key(self, directory: Directory) -> str:
        """The pin's key, once the checkpoint is known complete there: a pin never makes a checkpoint appear."""
        uid, cid = layout.pod_uid(directory[0]), layout.checkpoint_id(directory[1])
        location = self.store.location
        if not await self.store.exists(location.marker_key(uid, cid)):
            raise UnknownCheckpoint(f"store {location}: no complete checkpoint {uid}/{cid}")
        return location.key(uid, cid, layout.KEEP_FILE)


@contextmanager
def _in_checkpoint(store: Path, directory: Directory) -> Iterator[int]:
    """The checkpoint's directory, open (validated segments, no symlink followed); its OS errors name the pin."""
    root = fsio.open_root(store, create=False)
    try:
        fd = fsio.open_dir(root, [layout.pod_uid(directory[0]), layout.checkpoint_id(directory[1])],
                           create=False, where=f"store {store}")
    finally:
        os.close(root)
    try:
        with fsio.os_errors(f"store {store}: {'/'.join(directory)}/{layout.KEEP_FILE}"):
            yield fd
    finally:
        os.close(fd)


def is_pinned(store: Path, directory: Directory) -> bool:
    with _in_checkpoint(store, directory) as fd:
        try:
            os.stat(layout.KEEP_FILE, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
    return True


def pin(store: Path, directory: Directory) -> bool:
    """Create the ``.keep``; False when it was there already."""
    with _in_checkpoint(store, directory) as fd:
        try:
            os.close(os.open(layout.KEEP_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, fsio.FILE_MODE, dir_fd=fd))
        except FileExistsError:
            return False
        os.fsync(fd)  # the pin must outlive a crash: a collector could run right after
    return True


def unpin(store: Path, directory: Directory) -> bool:
    """Remove the ``.keep``; False when there was none."""
    with _in_checkpoint(store, directory) as fd:
        try:
            os.unlink(layout.KEEP_FILE, dir_fd=fd)
        except FileNotFoundError:
            return False
        os.fsync(fd)
    return True
