"""The collector over an S3 store (docs/s3.md): its scan, its re-checked deletions and its standalone lock.

The same entries, plan and rules as on a filesystem store (``lpm_gc.planner``): a complete checkpoint
(marker present) expires by its manifests' ``creationTime``; a checkpoint prefix without a marker, a staging
object, or an incomplete multipart upload untouched for ``stale_after`` (its newest object, or part) was
abandoned. What cannot be judged (a key no writer makes, a marker whose manifests do not read) is kept and
reported. Each deletion looks again first, as ``lpm_gc.runner`` does: a ``.keep`` that appeared pins it; a
marker or a fresh write that appeared makes it alive; a complete checkpoint loses its marker before anything
else, so readers stop seeing it first and a pass cut short leaves an incomplete one, never a marker over
missing objects.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field

from lpm_gc.entries import Entry, Kind
from lpm_gc.runner import Outcome
from lpm_gc.scanner import Scan
from watcher.errors import AlreadyComplete, LpmError, UnknownCheckpoint
from watcher.s3.location import KeyInfo, ObjectKind, S3Location, classify
from watcher.s3.store import ObjectInfo, S3Store

LOCK_NAME = "lock"


@dataclass
class _Group:
    objects: list[tuple[KeyInfo, ObjectInfo]] = field(default_factory=list)

    def has(self, kind: ObjectKind) -> bool:
        return any(info.kind is kind for info, _ in self.objects)

    @property
    def newest(self) -> float:
        return max(item.modified for _, item in self.objects)

    @property
    def size(self) -> int:
        return sum(item.size for _, item in self.objects)


def group(location: S3Location, objects: list[ObjectInfo]) -> tuple[dict[tuple[str, str], _Group],
                                                                    list[Entry], list[tuple[str, str]]]:
    """Pure: the listing by checkpoint, the staging objects as entries, and every key no writer makes."""
    groups: dict[tuple[str, str], _Group] = defaultdict(_Group)
    staging: list[Entry] = []
    damaged: list[tuple[str, str]] = []
    for item in objects:
        info = classify(location, item.key)
        if info.kind is ObjectKind.OTHER:
            damaged.append((item.key, info.reason))
        elif info.kind is ObjectKind.STAGING:
            staging.append(Entry(Kind.STAGING, info.node, info.name, modified=item.modified, size=item.size))
        elif info.kind is not ObjectKind.COLLECTOR:
            groups[(info.uid, info.cid)].objects.append((info, item))
    return groups, staging, damaged


async def scan(store: S3Store) -> Scan:
    """Every checkpoint, staging object and incomplete upload under the store's prefix."""
    objects = [item async for item in store.objects(store.location.root)]
    groups, staging, damaged = group(store.location, objects)
    found = Scan(entries=staging, damaged=damaged)
    for (uid, cid), members in sorted(groups.items()):
        pinned = members.has(ObjectKind.KEEP)
        if not members.has(ObjectKind.MARKER):
            found.entries.append(Entry(Kind.INCOMPLETE, uid, cid, modified=members.newest, size=members.size,
                                       pinned=pinned))
            continue
        try:
            checkpoint = await store.load_checkpoint(uid, cid)
        except LpmError as err:
            found.damaged.append((f"{uid}/{cid}", str(err)))
            continue
        first = checkpoint.manifests[0]
        created = max(m.creation_time.timestamp() for m in checkpoint.manifests)
        found.entries.append(Entry(Kind.COMPLETE, uid, cid, first.pod_namespace, first.pod_name,
                                   checkpoint.marker.containers, created, members.newest, members.size, pinned))
    for upload in await store.uploads():
        if not upload.key.startswith(store.location.root):
            continue
        found.entries.append(Entry(Kind.UPLOAD, upload.key, upload.upload_id,
                                   modified=await store.last_activity(upload)))
    return found


async def delete(store: S3Store, entry: Entry, stale_after: float) -> Outcome:
    """Delete one planned entry unless a re-check says otherwise. Raises StoreError on failure."""
    try:
        if entry.kind is Kind.UPLOAD:
            return await _upload(store, entry, stale_after)
        if entry.kind is Kind.STAGING:
            key = store.location.staging_key(entry.parent, entry.name)
            now = await store.head(key)
            if now is None:
                return Outcome.GONE
            if time.time() - now.modified <= stale_after:
                return Outcome.ALIVE
            await store.delete(key)
            return Outcome.DELETED
        return await _checkpoint(store, entry, stale_after)
    except UnknownCheckpoint:
        return Outcome.GONE


async def _upload(store: S3Store, entry: Entry, stale_after: float) -> Outcome:
    matching = [u for u in await store.uploads() if (u.key, u.upload_id) == (entry.parent, entry.name)]
    if not matching:
        return Outcome.GONE
    upload = matching[0]
    if time.time() - await store.last_activity(upload) <= stale_after:
        return Outcome.ALIVE
    await store.abort(upload)
    return Outcome.DELETED


async def _checkpoint(store: S3Store, entry: Entry, stale_after: float) -> Outcome:
    prefix = store.location.checkpoint_prefix(entry.parent, entry.name)
    now = [item async for item in store.objects(prefix)]
    if not now:
        return Outcome.GONE
    kinds = {classify(store.location, item.key).kind for item in now}
    if ObjectKind.KEEP in kinds:
        return Outcome.PINNED
    if entry.kind is Kind.INCOMPLETE and (ObjectKind.MARKER in kinds
                                          or time.time() - max(i.modified for i in now) <= stale_after):
        return Outcome.ALIVE
    marker = store.location.marker_key(entry.parent, entry.name)
    if ObjectKind.MARKER in kinds:
        await store.delete(marker)  # readers stop seeing it before any dump goes
    for item in now:
        if item.key != marker:
            await store.delete(item.key)
    return Outcome.DELETED


class S3Lock:
    """The standalone collector's lock in an S3 store: ``.gc/lock`` put with ``If-None-Match: *``.

    Taken without waiting, like the file lock: a collector that finds it skips its pass. A holder that died
    leaves it behind, so a lock older than ``stale_after`` is taken over (deleted, then put conditionally:
    of two collectors taking over at once, one wins). In a cluster the Lease is the lock, as on a volume.
    """

    def __init__(self, store: S3Store, stale_after: float) -> None:
        self._store = store
        self._stale_after = stale_after
        self._key = store.location.collector_key(LOCK_NAME)
        self._held = False

    async def acquire(self) -> bool:
        body = json.dumps({"holder": socket.gethostname(), "since": time.time()}).encode()
        for _ in range(2):
            try:
                await self._store.put_once(self._key, body)
            except AlreadyComplete:
                there = await self._store.head(self._key)
                if there is not None and time.time() - there.modified <= self._stale_after:
                    return False
                await self._store.delete(self._key)  # its holder died: take it over
                continue
            self._held = True
            return True
        return False

    def held(self) -> bool:
        return self._held

    async def release(self) -> None:
        if self._held:
            self._held = False
            await self._store.delete(self._key)


class S3Backend:
    """The collector's view of an S3 store (``lpm_gc.collector.Backend``); deletions come from a worker thread."""

    def __init__(self, store: S3Store, loop: asyncio.AbstractEventLoop) -> None:
        self.root_fd: int | None = None  # no directory: no volume usage, no kubelet sweep
        self.store = store
        self._loop = loop

    async def scan(self) -> Scan:
        return await scan(self.store)

    def delete(self, entry: Entry, stale_after: float) -> Outcome:
        return asyncio.run_coroutine_threadsafe(delete(self.store, entry, stale_after), self._loop).result()
