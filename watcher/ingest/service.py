"""Ingesting kubelet archives: stage (one pass), identify, commit, record.

Blocking functions, run by the agent in a worker thread. The steps are separate so cluster
mode can stage every container of a pod first and commit them under one checkpoint ID; the
standalone path (``ingest_archive``) is the same steps for a one-container checkpoint.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from watcher.archive import names
from watcher.archive.identity import ArchiveIdentity, Identity, identify
from watcher.archive.stamp import ArchiveStamp, stamp_of
from watcher.archive.tarscan import TarScanner
from watcher.errors import AlreadyComplete, ArchiveChanged, ArchiveError, Cancelled, StoreError, UnsafeNameError
from watcher.store import catalog, commit, fsio, layout, retrieve
from watcher.store.ledger import Ledger, LedgerRecord
from watcher.store.manifest import Manifest
from watcher.zstream import CompressionSettings, StreamDigest, Tally, compress_stream

log = logging.getLogger(__name__)

CAPTURED = frozenset({"spec.dump", "config.dump"})


@dataclass
class StagedArchive:
    archive: names.ArchiveName
    stamp: ArchiveStamp
    identity: ArchiveIdentity
    digest: StreamDigest
    dump_name: str
    """The fsynced dump's temp name in this node's staging directory."""


@dataclass(frozen=True)
class IngestResult:
    manifest: Manifest
    duplicate: bool
    """True when the archive was already in the store and nothing new was written."""


def open_archive(path: Path) -> tuple[int, ArchiveStamp]:
    """Open a kubelet archive without following links or blocking; only regular files are archives."""
    try:
        fd = fsio.open_file(None, path, os.O_RDONLY, "kubelet archive", refuse=ArchiveError)
    except OSError as err:
        raise ArchiveError(f"archive {str(path)!r}: cannot open ({err.strerror})") from None
    info = os.fstat(fd)
    return fd, ArchiveStamp(path.name, info.st_size, info.st_mtime_ns)


def stage_archive(
    root_fd: int,
    path: Path,
    node: str,
    hint: Identity | None,
    settings: CompressionSettings,
    cancel: threading.Event,
    written: threading.Event | None = None,
    tally: Tally | None = None,
    also: Callable[[memoryview], None] | None = None,
) -> StagedArchive:
    """Read the archive once: check its tar structure, compress and hash it into staging.

    Raises ArchiveIncomplete when it ends before its end-of-archive blocks, ArchiveChanged
    when it grew or was replaced meanwhile (its writer was not done), and ArchiveError or
    IdentityError when it can never be ingested. Nothing is left in staging on failure.

    With ``written``, the archive is one this agent asked the runtime for and is read while the
    runtime writes it: waited for until it appears, followed as it grows, and taken as it is once
    ``written`` is set (the runtime answered) and the end of the file is reached; it must then be
    a whole archive like any other. Compression overlaps the runtime's write instead of following it.
    ``tally`` counts the bytes read and stored as they go; ``also`` is shown every raw chunk after the tar
    scanner (a reader of the CRIU images, ``watcher.cluster.sockets``), in the same single pass.
    """
    archive = names.parse(path.name)
    label = repr(path.name)
    src, stamp = open_archive(path) if written is None else open_when_there(path, written, cancel)
    try:
        with commit.staging(root_fd, node) as staging_fd:
            dst, temp = fsio.create_temp(staging_fd, layout.DUMP_FILE, "store staging")
            try:
                scanner = TarScanner(CAPTURED, label)
                observe = scanner.feed if also is None else both(scanner.feed, also)
                try:
                    with fsio.os_errors(f"ingest of {label} into the store"):
                        digest = compress_stream(src, dst, observe, settings, cancel, path.name,
                                                 None if written is None else Follow(written), tally)
                finally:
                    os.close(dst)
                scan = scanner.finish()
                if written is not None:
                    info = os.fstat(src)  # the file as its writer left it
                    stamp = ArchiveStamp(path.name, info.st_size, info.st_mtime_ns)
                check_unchanged(path, src, stamp, digest)
                identity = identify(scan.captured.get("spec.dump"), archive, scan.top_level, hint)
            except BaseException:
                fsio.discard(staging_fd, temp)
                raise
    finally:
        os.close(src)
    return StagedArchive(archive, stamp, identity, digest, temp)


def both(first: Callable[[memoryview], None], then: Callable[[memoryview], None]) -> Callable[[memoryview], None]:
    def observe(chunk: memoryview) -> None:
        first(chunk)
        then(chunk)
    return observe


# How often a followed archive is looked at again when the reader has caught up with its writer.
_FOLLOW_POLL = 0.01


def open_when_there(path: Path, written: threading.Event, cancel: threading.Event) -> tuple[int, ArchiveStamp]:
    """Open ``path`` once its writer has created it; an error if it is still not there once it said done."""
    while not (os.path.lexists(path) or written.is_set()):
        if cancel.is_set():
            raise Cancelled(f"ingest of {path.name!r} cancelled before the runtime created it")
        written.wait(_FOLLOW_POLL)
    return open_archive(path)


class Follow:
    """compress_stream's ``more`` for an archive still being written: at its current end, wait a moment
    and read again, until the writer is done; then read once more, to the file's true end."""

    def __init__(self, written: threading.Event) -> None:
        self._written = written
        self._last = False

    def __call__(self) -> bool:
        if self._last:
            return False
        self._last = self._written.wait(_FOLLOW_POLL)
        return True


def check_unchanged(path: Path, src: int, stamp: ArchiveStamp, digest: StreamDigest) -> None:
    after = os.fstat(src)
    now = stamp_of(path)
    if (
        digest.raw_size != stamp.size
        or (after.st_size, after.st_mtime_ns) != (stamp.size, stamp.mtime_ns)
        or now != stamp
    ):
        raise ArchiveChanged(f"archive {path.name!r}: changed while it was read (its writer is not done)")


def commit_staged(
    root_fd: int,
    node: str,
    staged: Sequence[StagedArchive],
    target_node: str | None,
    now: datetime,
) -> list[IngestResult]:
    """Commit staged archives of one pod as ONE checkpoint, marker last; record them in the ledger."""
    uids = {s.identity.identity.pod_uid for s in staged}
    containers = [s.identity.identity.container for s in staged]
    if len(uids) != 1 or len(set(containers)) != len(containers):
        raise ArchiveError("one checkpoint takes one archive per container of one pod")
    uid = uids.pop()
    cid = layout.make_checkpoint_id(uid, [(s.archive.file_name, known(s.digest.raw_sha256)) for s in staged],
                                    min(s.archive.taken_at for s in staged))
    with commit.staging(root_fd, node) as staging_fd:
        try:
            if commit.marker_exists(root_fd, uid, cid):
                results = [IngestResult(_committed(root_fd, uid, cid, c), True) for c in containers]
            else:
                try:
                    results = []
                    for item in staged:
                        manifest = manifest_for(item, cid, node, target_node)
                        commit.commit_container(root_fd, staging_fd, item.dump_name, manifest)
                        results.append(IngestResult(manifest, False))
                    commit.complete(root_fd, uid, cid, containers, now, target_node)
                except AlreadyComplete:
                    # Another agent committed these very archives first (the same node's old and new
                    # agent in a rollout both ingest them): a duplicate, not a store failure.
                    results = [IngestResult(_committed(root_fd, uid, cid, c), True) for c in containers]
        finally:
            # Staged dumps not moved into place (a duplicate, or a failure part-way) must
            # not pile up. A partial checkpoint stays invisible without its marker, and a
            # retry lands on the same ID and overwrites it.
            for item in staged:
                fsio.discard(staging_fd, item.dump_name)
    ledger = Ledger(root_fd, node)
    for item in staged:
        ledger.record(LedgerRecord(item.stamp, uid, cid, item.identity.identity.container, verified=False))
    return results


def _committed(root_fd: int, uid: str, cid: str, container: str) -> Manifest:
    return catalog.find(root_fd, layout.ArtifactRef(uid, cid, container))[1]


def manifest_for(item: StagedArchive, cid: str, node: str, target_node: str | None) -> Manifest:
    who = item.identity.identity
    dump_key = item.digest.dump_key
    # A sealed dump's data key is wrapped only now: the wrap is bound to the artifact URI, known once the
    # archive has been read to its end. Until then the key is only in this process's memory.
    uri = layout.ArtifactRef(who.pod_uid, cid, who.container).uri
    return Manifest(
        pod_uid=who.pod_uid,
        pod_namespace=who.namespace,
        pod_name=who.pod_name,
        container_name=who.container,
        checkpoint_id=cid,
        creation_time=item.archive.taken_at,
        source_node=node,
        target_node=target_node,
        runtime=item.identity.runtime,
        kubelet_archive=item.archive.file_name,
        checksum_sha256=item.digest.compressed_sha256,
        compressed_size=item.digest.compressed_size,
        uncompressed_sha256=known(item.digest.raw_sha256),
        uncompressed_size=item.digest.raw_size,
        encryption=dump_key.wrap(uri) if dump_key is not None else None,
    )


def known(digest: str | None) -> str:
    if digest is None:  # compress_stream always hashes its input
        raise AssertionError("ingest produced no SHA-256 of the archive")
    return digest


def ledger_record(ledger_fd: int, node: str, path: Path) -> LedgerRecord | None:
    """The ledger's record of this exact archive version (name, size, mtime), if it has one.

    A record that does not read is this node's own bookkeeping gone bad: the archive is ingested
    again (same deterministic checkpoint ID, never a duplicate) and its record written afresh.
    """
    try:
        record = Ledger(ledger_fd, node).lookup(path.name)
    except (StoreError, UnsafeNameError) as err:
        log.warning("ledger record unreadable; ingesting the archive again",
                    extra={"fields": {"archive": path.name, "reason": str(err)}})
        return None
    return record if record is not None and record.stamp == stamp_of(path) else None


def already_ingested(root_fd: int, node: str, path: Path) -> IngestResult | None:
    """The committed checkpoint of this exact archive version, if the ledger has one."""
    record = ledger_record(root_fd, node, path)
    if record is None:
        return None
    try:
        return IngestResult(catalog.find(root_fd, record.ref)[1], True)
    except StoreError:
        return None  # the collector removed it, or it was damaged: ingest it afresh


def ingest_archive(
    root_fd: int,
    path: Path,
    node: str,
    settings: CompressionSettings,
    cancel: threading.Event,
    now: datetime,
    target_node: str | None = None,
    hint: Identity | None = None,
) -> IngestResult:
    """Ingest one archive as a one-container checkpoint; idempotent."""
    known = already_ingested(root_fd, node, path)
    if known is not None:
        return known
    staged = stage_archive(root_fd, path, node, hint, settings, cancel)
    return commit_staged(root_fd, node, [staged], target_node, now)[0]


def verify_ingested(
    root_fd: int, path: Path, node: str, settings: CompressionSettings, cancel: threading.Event
) -> LedgerRecord:
    """Prove the store holds this kubelet archive's exact bytes, and say so in the ledger.

    The stored dump is read back and both SHA-256 sums checked, and the archive must be the
    very version that was ingested (size and mtime). The ledger's ``verified`` is what allows
    removing the kubelet's copy (``--delete-ingested``, or the collector after its grace).
    """
    ledger = Ledger(root_fd, node)
    record = ledger.lookup(path.name)
    if record is None or record.stamp != stamp_of(path):
        raise StoreError(f"archive {path.name!r}: not ingested in this version")
    if record.verified:
        return record
    manifest = retrieve.verify(root_fd, record.ref, settings, cancel)
    if manifest.uncompressed_size != record.stamp.size:
        raise StoreError(f"archive {path.name!r}: stored copy has another size")
    verified = LedgerRecord(record.stamp, record.pod_uid, record.checkpoint_id, record.container, verified=True)
    ledger.record(verified)
    return verified


def delete_verified(
    root_fd: int, path: Path, node: str, settings: CompressionSettings, cancel: threading.Event
) -> None:
    """Remove a kubelet archive once its stored copy is verified: it holds process memory."""
    record = verify_ingested(root_fd, path, node, settings, cancel)
    if stamp_of(path) != record.stamp:
        raise StoreError(f"archive {path.name!r}: changed during verification, kept")
    with fsio.os_errors(f"archive {path.name!r}: remove after verified ingest"):
        os.unlink(path)


def discard_staged(root_fd: int, node: str, staged: Sequence[StagedArchive]) -> None:
    """Drop staged dumps that will not be committed (another container of the pod failed)."""
    if staged:
        with commit.staging(root_fd, node) as staging_fd:
            for item in staged:
                fsio.discard(staging_fd, item.dump_name)
