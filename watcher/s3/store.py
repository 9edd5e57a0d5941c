"""The S3 store's reads and writes: a thin runner over the client, deciding nothing the pure parts decide.

The commit protocol is the filesystem store's (ARCHITECTURE.md) with S3's primitives:

- a dump is streamed as a multipart upload in ``PART_SIZE`` parts into the node's staging prefix (its pod,
  and so its key, is known only once the archive has been read to its end; S3 has no rename), then copied
  by the server to its key and the staging object deleted;
- the manifest is put after the dump;
- the completion marker is put last, once, with ``If-None-Match: *``: of two writers only one publishes,
  the other gets 412 and takes the checkpoint as a duplicate. A server that ignores the condition would let
  both "win", so before anything is uploaded the writer checks that the server refuses a second conditional
  put of one key (``require_conditional_put``) and otherwise publishes nothing (ConditionalPutUnsupported).

A crash leaves at most an incomplete multipart upload or a staging object (the collector removes both after
``--stale-after``), or a checkpoint prefix without its marker, which readers do not see.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from watcher.errors import AlreadyComplete, IncompleteCheckpoint, LpmError, StoreError, UnknownCheckpoint
from watcher.s3 import client as s3client
from watcher.s3.client import Client, ConditionalPutUnsupported
from watcher.s3.location import ObjectKind, S3Location, classify
from watcher.store import layout
from watcher.store.catalog import Checkpoint, Skipped
from watcher.store.commit import MANIFEST_CAP, MARKER_CAP
from watcher.store.manifest import Manifest, Marker, decode, encode

PART_SIZE = 8 << 20
"""Bytes per uploaded part, at least: what a dump costs in memory while it is written (two parts, one read
while the other is sent, each copied a few times on its way out; bench/s3.py measures it). A dump whose
archive is too big for 10,000 of them gets larger parts (``part_size``)."""
MAX_PARTS = 10_000
_MAX_PART = 5 << 30  # S3's limit for one part
COPY_LIMIT = 5 << 30
"""The largest object one CopyObject copies (S3's limit); larger ones are copied in parts."""
COPY_PART = 1 << 30
FEED_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float
    """Seconds since the epoch."""


@dataclass(frozen=True)
class Upload:
    """An incomplete multipart upload."""

    key: str
    upload_id: str
    initiated: float


class S3Store:
    def __init__(self, client: Client, location: S3Location) -> None:
        self.client = client
        self.location = location
        self.bucket = location.bucket

    def __str__(self) -> str:
        return str(self.location)

    async def check(self) -> None:
        """The bucket is there and the credentials are taken: a clear error before anything else."""
        try:
            with s3client.errors(f"store {self.location}"):
                await self.client.head_bucket(Bucket=self.bucket)
        except UnknownCheckpoint:
            raise StoreError(f"store {self.location}: bucket {self.bucket} does not exist") from None

    # -- listing ---------------------------------------------------------------------------------------

    async def objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        with s3client.errors(f"store {self.location}: list {prefix or '/'}"):
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(str(item["Key"]), int(item["Size"]), item["LastModified"].timestamp())

    async def uploads(self) -> list[Upload]:
        """Every incomplete multipart upload under the store's prefix."""
        found = []
        with s3client.errors(f"store {self.location}: list incomplete uploads"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.location.root):
                for item in page.get("Uploads", []):
                    found.append(Upload(str(item["Key"]), str(item["UploadId"]), item["Initiated"].timestamp()))
        return found

    async def last_activity(self, upload: Upload) -> float:
        """When the upload last took a part (its start if none): how a live upload is told from a dead one."""
        newest = upload.initiated
        with s3client.errors(f"store {self.location}: parts of the upload of {upload.key}"):
            paginator = self.client.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id):
                for part in page.get("Parts", []):
                    newest = max(newest, part["LastModified"].timestamp())
        return newest

    async def abort(self, upload: Upload) -> None:
        with s3client.errors(f"store {self.location}: abort upload of {upload.key}"):
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)

    # -- small objects ---------------------------------------------------------------------------------

    async def exists(self, key: str) -> bool:
        try:
            with s3client.errors(f"store {self.location}: {key}"):
                await self.client.head_object(Bucket=self.bucket, Key=key)
        except UnknownCheckpoint:
            return False
        return True

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            with s3client.errors(f"store {self.location}: {key}"):
                answer = await self.client.head_object(Bucket=self.bucket, Key=key)
        except UnknownCheckpoint:
            return None
        return ObjectInfo(key, int(answer["ContentLength"]), answer["LastModified"].timestamp())

    async def read_small(self, key: str, cap: int) -> bytes:
        """The whole object, or StoreError when it is larger than ``cap`` bytes (read no further)."""
        where = f"store {self.location}: {key}"
        with s3client.errors(where):
            response = await self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{cap}")
            async with response["Body"] as body:
                data: bytes = await body.read()
        if len(data) > cap:
            raise StoreError(f"{where}: larger than {cap} bytes, refused")
        return data

    async def put(self, key: str, data: bytes) -> None:
        with s3client.errors(f"store {self.location}: put {key}"):
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    async def put_once(self, key: str, data: bytes) -> None:
        """Put ``key`` only if nothing is there (``If-None-Match: *``); AlreadyComplete if something is."""
        with s3client.errors(f"store {self.location}: put {key} once"):
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")

    async def delete(self, key: str) -> None:
        with s3client.errors(f"store {self.location}: delete {key}"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def require_conditional_put(self, node: str) -> None:
        """Refuse to write into a store whose server does not refuse a second ``If-None-Match: *`` put.

        Such a server would let two writers of one checkpoint both put its marker, each believing it
        published (a server that ignores an unknown header answers 200 to both). Checked with a key of
        this node's staging prefix, removed after; a crash leaves it to the collector as stale staging.
        """
        key = self.location.staging_key(node, secrets.token_hex(16))
        where = f"store {self.location}"
        try:
            await self.put_once(key, b"lpm conditional put probe\n")
            try:
                await self.put_once(key, b"lpm conditional put probe, second writer\n")
            except AlreadyComplete:
                return  # refused: the server honours the condition
            raise ConditionalPutUnsupported(
                f"{where}: the server accepted a second put of one key with If-None-Match: *; it ignores the "
                "condition, so two writers could both publish a checkpoint. lpm publishes nothing into it")
        except ConditionalPutUnsupported as err:
            raise ConditionalPutUnsupported(f"{where}: conditional puts (If-None-Match: *) are not supported "
                                            f"({err}); lpm publishes nothing into it") from None
        finally:
            try:
                await self.delete(key)
            except LpmError:
                pass  # stale staging to the collector

    # -- catalog ---------------------------------------------------------------------------------------

    async def scan(self) -> list[Checkpoint | Skipped]:
        """Every checkpoint under the prefix, as ``watcher.store.catalog.scan`` gives them: complete and
        consistent ones as Checkpoint, others Skipped (``damaged`` false for a write in progress)."""
        markers: set[tuple[str, str]] = set()
        seen: dict[tuple[str, str], None] = {}
        strange: list[Skipped] = []
        async for item in self.objects(self.location.root):
            info = classify(self.location, item.key)
            if info.kind is ObjectKind.OTHER:
                strange.append(Skipped(item.key, info.reason))
            elif info.kind not in (ObjectKind.STAGING, ObjectKind.COLLECTOR):
                seen.setdefault((info.uid, info.cid))
                if info.kind is ObjectKind.MARKER:
                    markers.add((info.uid, info.cid))
        out: list[Checkpoint | Skipped] = list(strange)
        for uid, cid in sorted(seen):
            if (uid, cid) not in markers:
                out.append(Skipped(f"{uid}/{cid}", "incomplete (no completion marker)", damaged=False))
                continue
            try:
                out.append(await self.load_checkpoint(uid, cid))
            except LpmError as err:
                out.append(Skipped(f"{uid}/{cid}", str(err)))
        return out

    async def read_marker(self, uid: str, cid: str) -> Marker:
        key = self.location.marker_key(uid, cid)
        where = f"{self.location}/{uid}/{cid}/{layout.MARKER_FILE}"
        return Marker.from_json(decode(await self.read_small(key, MARKER_CAP), where), where)

    async def read_manifest(self, ref: layout.ArtifactRef) -> Manifest:
        where = f"{self.location}/{'/'.join(ref.segments)}/{layout.MANIFEST_FILE}"
        data = await self.read_small(self.location.manifest_key(ref), MANIFEST_CAP)
        return Manifest.from_json(decode(data, where), where)

    async def load_checkpoint(self, uid: str, cid: str) -> Checkpoint:
        """Read and cross-check a checkpoint whose marker exists (as ``catalog.load_checkpoint``)."""
        where = f"checkpoint {uid}/{cid}"
        marker = await self.read_marker(uid, cid)
        if marker.pod_uid != uid or marker.checkpoint_id != cid:
            raise IncompleteCheckpoint(f"{where}: marker names {marker.pod_uid}/{marker.checkpoint_id}")
        manifests = []
        for name in marker.containers:
            ref = layout.ArtifactRef(uid, cid, name)
            try:
                manifest = await self.read_manifest(ref)
            except UnknownCheckpoint as err:
                raise IncompleteCheckpoint(f"{where}: marker lists container {name}, but: {err}") from None
            if not await self.exists(self.location.dump_key(ref)):
                raise IncompleteCheckpoint(f"{where}: marker lists container {name}, which has no dump")
            if (manifest.pod_uid, manifest.checkpoint_id, manifest.container_name) != (uid, cid, name):
                raise IncompleteCheckpoint(f"{where}/{name}: manifest belongs to {manifest.ref.uri}")
            manifests.append(manifest)
        return Checkpoint(marker, tuple(manifests))

    async def find(self, ref: layout.ArtifactRef) -> tuple[Checkpoint, Manifest]:
        """The complete checkpoint holding ``ref`` and its manifest, or a clear error."""
        if not await self.exists(self.location.marker_key(ref.pod_uid, ref.checkpoint_id)):
            if not [o async for o in self.objects(self.location.checkpoint_prefix(ref.pod_uid, ref.checkpoint_id))]:
                raise UnknownCheckpoint(f"artifact {ref.uri}: no such checkpoint in {self.location}")
            raise IncompleteCheckpoint(f"artifact {ref.uri}: checkpoint is incomplete (no completion marker)")
        checkpoint = await self.load_checkpoint(ref.pod_uid, ref.checkpoint_id)
        for manifest in checkpoint.manifests:
            if manifest.container_name == ref.container:
                return checkpoint, manifest
        raise IncompleteCheckpoint(f"artifact {ref.uri}: container {ref.container} is not in the checkpoint's marker")

    # -- streams ---------------------------------------------------------------------------------------

    async def feed(self, key: str, limit: int, fd: int) -> None:
        """Write the object's first ``limit`` bytes into ``fd`` (a pipe another thread reads). Stops quietly
        when the reader closed its end: it has what it needed, or failed and says why itself."""
        with s3client.errors(f"store {self.location}: read {key}"):
            response = await self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{limit - 1}")
            async with response["Body"] as body:
                while chunk := await body.read(FEED_CHUNK):
                    try:
                        await asyncio.to_thread(_write_all, fd, chunk)
                    except BrokenPipeError:
                        return

    async def upload(self, key: str, read_part: Callable[[int], bytes], part_size: int = PART_SIZE) -> int:
        """Stream ``read_part(part_size)`` (empty at the end) into ``key`` as one multipart upload; its size.

        The next part is read while the last one is sent: two parts in memory, whatever the dump's size. On
        any failure the upload is aborted; if even that fails (the server went away), the collector aborts
        it once it is older than ``--stale-after``.
        """
        where = f"store {self.location}: upload {key}"
        with s3client.errors(where):
            upload_id = str((await self.client.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"])
        try:
            parts: list[dict[str, Any]] = []
            size = 0
            part = await asyncio.to_thread(read_part, part_size)
            while True:
                number = len(parts) + 1
                if number > MAX_PARTS:
                    raise StoreError(f"{where}: larger than {MAX_PARTS} parts of {part_size} bytes")
                # Both finish before either's error is raised: no read of the pipe outlives this call.
                sent, following = await asyncio.gather(
                    self._part(key, upload_id, number, part), asyncio.to_thread(read_part, part_size),
                    return_exceptions=True)
                for outcome in (sent, following):
                    if isinstance(outcome, BaseException):
                        raise outcome
                assert isinstance(sent, str) and isinstance(following, bytes)
                parts.append({"PartNumber": number, "ETag": sent})
                size += len(part)
                if not following:
                    break
                part = following
            with s3client.errors(where):
                await self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                            MultipartUpload={"Parts": parts})
            return size
        except BaseException:
            try:
                await asyncio.shield(self.abort(Upload(key, upload_id, 0.0)))
            except LpmError:
                pass
            raise

    async def _part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        with s3client.errors(f"store {self.location}: upload {key}, part {number}"):
            answer = await self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                   PartNumber=number, Body=data)
        return str(answer["ETag"])

    async def copy(self, source: str, key: str, size: int, limit: int = COPY_LIMIT, part: int = COPY_PART) -> None:
        """Copy ``source`` to ``key`` on the server (S3 has no rename): one CopyObject up to ``limit``
        bytes, else a multipart copy in ``part``-byte ranges."""
        where = f"store {self.location}: copy {source} to {key}"
        with s3client.errors(where):
            if size <= limit:
                await self.client.copy_object(Bucket=self.bucket, Key=key,
                                              CopySource={"Bucket": self.bucket, "Key": source})
                return
            upload_id = str((await self.client.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"])
        try:
            parts = []
            with s3client.errors(where):
                for number, start in enumerate(range(0, size, part), start=1):
                    answer = await self.client.upload_part_copy(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": source},
                        CopySourceRange=f"bytes={start}-{min(start + part, size) - 1}")
                    parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
                await self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                            MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                await asyncio.shield(self.abort(Upload(key, upload_id, 0.0)))
            except LpmError:
                pass
            raise

    # -- publishing ------------------------------------------------------------------------------------

    async def put_manifest(self, manifest: Manifest) -> None:
        await self.put(self.location.manifest_key(manifest.ref), encode(manifest.to_json()))

    async def complete(self, uid: str, cid: str, containers: list[str], completed_at: datetime,
                       target_node: str | None) -> Marker:
        """Publish the checkpoint (``watcher.store.commit.complete``): every container in place, then the
        marker, once, conditionally. AlreadyComplete when another writer published it first."""
        where = f"checkpoint {uid}/{cid}"
        for name in containers:
            ref = layout.ArtifactRef(uid, cid, name)
            manifest = await self.read_manifest(ref)
            if manifest.checkpoint_id != cid or not await self.exists(self.location.dump_key(ref)):
                raise StoreError(f"{where}/{name}: dump or manifest missing, cannot complete")
        marker = Marker(cid, uid, tuple(containers), completed_at, target_node)
        await self.put_once(self.location.marker_key(uid, cid), encode(marker.to_json()))
        return marker


def part_size(archive_size: int) -> int:
    """The part size for the dump of an archive of ``archive_size`` bytes: ``PART_SIZE``, or larger (whole
    MiB) when 10,000 of those would not hold it. zstd grows an incompressible archive by a few bytes per
    128 KiB block; a 1% margin covers that and a sealed dump's tags. Pure."""
    needed = -(-(archive_size + archive_size // 100) // MAX_PARTS)
    size = max(PART_SIZE, -(-needed // (1 << 20)) * (1 << 20))
    if size > _MAX_PART:
        raise StoreError(f"an archive of {archive_size} bytes needs parts of more than 5 GiB; S3 takes at most "
                         f"{MAX_PARTS} parts of 5 GiB")
    return size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_part_from(fd: int) -> Callable[[int], bytes]:
    """``upload``'s ``read_part`` over a pipe: up to ``size`` bytes, fewer only at the end."""
    def read_part(size: int) -> bytes:
        chunks, have = [], 0
        while have < size:
            chunk = os.read(fd, min(size - have, FEED_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            have += len(chunk)
        return b"".join(chunks)
    return read_part
