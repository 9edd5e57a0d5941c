"""Ingesting kubelet archives into an S3 store: stage (one pass, as a multipart upload), identify, commit.

The filesystem path's steps (``watcher.ingest.service``) with the S3 store's primitives (``watcher.s3.store``):
the archive is read once on a worker thread (tar check, identity, zstd, both SHA-256 sums, sealed when
encryption is on) into a pipe, and the event loop sends what comes out of the pipe as the parts of one
multipart upload into this node's staging prefix, so memory holds two parts whatever the dump's size. Once
the archive's identity is known the server copies the staged dump to its key, the manifest is put, and the
marker last, once, conditionally. Before anything is uploaded the server must show it honours that
condition (``S3Store.require_conditional_put``): lpm never races another writer to publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from watcher.archive import names
from watcher.archive.identity import Identity, identify
from watcher.archive.stamp import ArchiveStamp
from watcher.archive.tarscan import TarScanner
from watcher.errors import (
    AlreadyComplete,
    ArchiveError,
    IncompleteCheckpoint,
    LpmError,
    UnknownCheckpoint,
)
from watcher.ingest.service import (
    CAPTURED,
    Follow,
    IngestResult,
    StagedArchive,
    both,
    check_unchanged,
    known,
    ledger_record,
    manifest_for,
    open_archive,
    open_when_there,
)
from watcher.s3.store import PART_SIZE, S3Store, part_size, read_part_from
from watcher.store import layout
from watcher.store.ledger import Ledger, LedgerRecord
from watcher.zstream import CompressionSettings, StreamDigest, Tally, compress_stream

_PIPE_SIZE = 1 << 20


async def stage_archive(store: S3Store, path: Path, node: str, hint: Identity | None,
                        settings: CompressionSettings, cancel: threading.Event,
                        written: threading.Event | None = None, tally: Tally | None = None,
                        also: Callable[[memoryview], None] | None = None) -> StagedArchive:
    """Read the archive once into a staging object (``dump_name`` is its token); nothing is left staged on
    failure (an upload the server did not let us abort is the collector's, after ``--stale-after``).
    ``written``, ``tally`` and ``also`` are ``service.stage_archive``'s: an archive read while the runtime
    writes it (in parts of ``PART_SIZE``, its size unknown: a dump past 10,000 of them fails the early read,
    and the finished archive is read again), the bytes counted, the raw chunks shown to another reader."""
    archive = names.parse(path.name)
    label = repr(path.name)
    stop = _Either(cancel)
    src, stamp = (open_archive(path) if written is None
                  else await asyncio.to_thread(open_when_there, path, written, stop))
    token = secrets.token_hex(16)
    key = store.location.staging_key(node, token)
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    scanner = TarScanner(CAPTURED, label)
    observe = scanner.feed if also is None else both(scanner.feed, also)

    def compress() -> StreamDigest:
        try:
            return compress_stream(src, write_fd, observe, settings, stop, path.name,
                                   None if written is None else Follow(written), tally)
        finally:
            os.close(write_fd)  # the uploader sees the end

    try:
        reader = asyncio.ensure_future(asyncio.to_thread(compress))
        try:
            uploaded = await store.upload(key, read_part_from(read_fd),
                                          part_size(stamp.size) if written is None else PART_SIZE)
        except BaseException:
            stop.set()  # the reader stops at its next chunk; what it wrote meanwhile is drained
            await asyncio.to_thread(_drain, read_fd)
            with contextlib.suppress(BaseException):
                await reader
            raise
        try:
            digest = await reader  # its error (a bad archive, cancelled) wins: the upload only ended early
            if uploaded != digest.compressed_size:
                raise LpmError(f"ingest of {label}: uploaded {uploaded} bytes of {digest.compressed_size}")
            scan = scanner.finish()
            if written is not None:
                info = os.fstat(src)  # the file as its writer left it
                stamp = ArchiveStamp(path.name, info.st_size, info.st_mtime_ns)
            check_unchanged(path, src, stamp, digest)
            identity = identify(scan.captured.get("spec.dump"), archive, scan.top_level, hint)
        except BaseException:
            with contextlib.suppress(LpmError):
                await store.delete(key)
            raise
    finally:
        os.close(read_fd)
        os.close(src)
    return StagedArchive(archive, stamp, identity, digest, token)


class _Either(threading.Event):
    """compress_stream's ``cancel``: set when the agent's is, or once the upload failed (``set`` here)."""

    def __init__(self, outer: threading.Event) -> None:
        super().__init__()
        self._outer = outer

    def is_set(self) -> bool:
        return super().is_set() or self._outer.is_set()


def _drain(fd: int) -> None:
    while os.read(fd, _PIPE_SIZE):
        pass


async def commit_staged(store: S3Store, node: str, staged: Sequence[StagedArchive], target_node: str | None,
                        now: datetime, ledger_fd: int | None = None) -> list[IngestResult]:
    """Commit staged archives of one pod as ONE checkpoint, marker last (``service.commit_staged``); with
    ``ledger_fd`` (a node-local directory), record them in this node's ingest ledger there."""
    results = await _commit(store, node, staged, target_node, now)
    if ledger_fd is not None:
        await asyncio.to_thread(_record, ledger_fd, node, staged, results)
    return results


async def _commit(store: S3Store, node: str, staged: Sequence[StagedArchive], target_node: str | None,
                  now: datetime) -> list[IngestResult]:
    uids = {s.identity.identity.pod_uid for s in staged}
    containers = [s.identity.identity.container for s in staged]
    if len(uids) != 1 or len(set(containers)) != len(containers):
        raise ArchiveError("one checkpoint takes one archive per container of one pod")
    uid = uids.pop()
    cid = layout.make_checkpoint_id(uid, [(s.archive.file_name, known(s.digest.raw_sha256)) for s in staged],
                                    min(s.archive.taken_at for s in staged))
    try:
        if await store.exists(store.location.marker_key(uid, cid)):
            return await _duplicates(store, uid, cid, containers)
        results = []
        for item in staged:
            manifest = manifest_for(item, cid, node, target_node)
            await store.copy(store.location.staging_key(node, item.dump_name), store.location.dump_key(manifest.ref),
                             item.digest.compressed_size)
            await store.put_manifest(manifest)
            results.append(IngestResult(manifest, False))
        try:
            await store.complete(uid, cid, containers, now, target_node)
        except AlreadyComplete:
            # Another writer published these very archives first: a duplicate, not a failure.
            return await _duplicates(store, uid, cid, containers)
        return results
    finally:
        for item in staged:
            with contextlib.suppress(LpmError):
                await store.delete(store.location.staging_key(node, item.dump_name))


def _record(ledger_fd: int, node: str, staged: Sequence[StagedArchive], results: list[IngestResult]) -> None:
    """After the marker, as over a directory: a crash before it costs one re-read, never a duplicate."""
    ledger = Ledger(ledger_fd, node)
    for item, result in zip(staged, results, strict=True):  # both in the order of the pod's containers
        m = result.manifest
        ledger.record(LedgerRecord(item.stamp, m.pod_uid, m.checkpoint_id, m.container_name, verified=False))


async def _duplicates(store: S3Store, uid: str, cid: str, containers: list[str]) -> list[IngestResult]:
    return [IngestResult((await store.find(layout.ArtifactRef(uid, cid, c)))[1], True) for c in containers]


async def already_ingested(store: S3Store, ledger_fd: int, node: str, path: Path) -> IngestResult | None:
    """The checkpoint in the bucket of this exact archive version, if the node-local ledger has one
    (``service.already_ingested``): the archive is then neither read nor uploaded again."""
    record = await asyncio.to_thread(ledger_record, ledger_fd, node, path)
    if record is None:
        return None
    try:
        return IngestResult((await store.find(record.ref))[1], True)
    except (UnknownCheckpoint, IncompleteCheckpoint):
        return None  # collected, or never completed: ingest it afresh (the bucket away is raised: retried)


async def ingest_archive(store: S3Store, path: Path, node: str, settings: CompressionSettings,
                         cancel: threading.Event, now: datetime, target_node: str | None = None,
                         hint: Identity | None = None, ledger_fd: int | None = None) -> IngestResult:
    """Ingest one archive as a one-container checkpoint; idempotent (same archive, same checkpoint ID). With
    ``ledger_fd``, an archive the ledger there says is in the bucket is not read again."""
    if ledger_fd is not None and (known_result := await already_ingested(store, ledger_fd, node, path)) is not None:
        return known_result
    await store.require_conditional_put(node)
    staged = await stage_archive(store, path, node, hint, settings, cancel)
    return (await commit_staged(store, node, [staged], target_node, now, ledger_fd))[0]
