"""Committing checkpoints into the store (ARCHITECTURE.md, "Commit protocol").

A dump is streamed into the writing node's staging directory, because its pod (and so its
final directory) is only known once the archive has been read to its end. It is then
renamed into ``<podUID>/<checkpointID>/<container>/dump.tar.zst`` (same filesystem, so the
rename is atomic, also for readers on other NFS clients), the manifest is written beside it
with the same temp -> fsync -> rename -> fsync-dir steps, and only after the last container
the completion marker is written, once. The marker alone decides visibility: readers and
the collector treat a checkpoint directory without it as not there (or, if old, abandoned).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from datetime import datetime

from watcher.errors import AlreadyComplete, StoreError
from watcher.store import fsio, layout
from watcher.store.manifest import Manifest, Marker, decode, encode

_STAGING = "staging"
MARKER_CAP = 1 << 20
MANIFEST_CAP = 1 << 20


def node_state_dir(root_fd: int, node: str) -> int:
    """``<store>/.ingest/<node>``: one node's own bookkeeping; only that node's agent writes it."""
    return fsio.open_dir(
        root_fd, [layout.INGEST_LEDGER_DIR, layout.node_name(node)], create=True, where="store ingest state"
    )


@contextlib.contextmanager
def staging(root_fd: int, node: str) -> Iterator[int]:
    state = node_state_dir(root_fd, node)
    try:
        fd = fsio.open_dir(state, [_STAGING], create=True, where="store staging")
    finally:
        os.close(state)
    try:
        yield fd
    finally:
        os.close(fd)


def sweep_staging(root_fd: int, node: str, idle_seconds: float) -> int:
    """Remove staging files of this node untouched for ``idle_seconds``; returns the count.

    A live ingest writes its staging file every chunk, so one idle that long was left by a
    crashed or killed process. Only this node's agents and ``lpm ingest`` write here.
    """
    cutoff = time.time() - idle_seconds
    idle = []
    with staging(root_fd, node) as fd:
        # Mapped here, once: an ESTALE from a replaced NFS directory used to end the sweeper's task.
        with fsio.os_errors(f"store staging of node {node}"):
            for name in os.listdir(fd):
                try:
                    if os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime < cutoff:
                        idle.append(name)
                except FileNotFoundError:
                    continue
        for name in idle:
            fsio.discard(fd, name)
    return len(idle)


def marker_exists(root_fd: int, uid: str, cid: str) -> bool:
    try:
        fd = fsio.open_dir(root_fd, [uid, cid], create=False, where="checkpoint")
    except StoreError:
        return False
    try:
        return fsio.is_regular(fd, layout.MARKER_FILE)
    finally:
        os.close(fd)


def read_marker(checkpoint_fd: int, where: str) -> Marker:
    data = fsio.read_small(checkpoint_fd, layout.MARKER_FILE, MARKER_CAP, where)
    return Marker.from_json(decode(data, f"{where}/{layout.MARKER_FILE}"), f"{where}/{layout.MARKER_FILE}")


def read_manifest(container_fd: int, where: str) -> Manifest:
    data = fsio.read_small(container_fd, layout.MANIFEST_FILE, MANIFEST_CAP, where)
    return Manifest.from_json(decode(data, f"{where}/{layout.MANIFEST_FILE}"), f"{where}/{layout.MANIFEST_FILE}")


def commit_container(root_fd: int, staging_fd: int, staged: str, manifest: Manifest) -> None:
    """Move one container's staged dump (a name in staging) into place, then write its manifest.

    Raises AlreadyComplete, touching nothing, when the checkpoint got its marker meanwhile: another
    writer committed the same checkpoint (same ID: same archives) first, and a complete checkpoint's
    files are not replaced under its readers.
    """
    where = f"checkpoint {manifest.pod_uid}/{manifest.checkpoint_id}/{manifest.container_name}"
    checkpoint_fd = fsio.open_dir(root_fd, manifest.ref.segments[:2], create=True, where=where)
    try:
        if fsio.is_regular(checkpoint_fd, layout.MARKER_FILE):
            raise AlreadyComplete(f"{where}: committed meanwhile by another writer")
        fd = fsio.open_dir(checkpoint_fd, manifest.ref.segments[2:], create=True, where=where)
    finally:
        os.close(checkpoint_fd)
    try:
        with fsio.os_errors(f"{where}: move {layout.DUMP_FILE} into place"):
            os.rename(staged, layout.DUMP_FILE, src_dir_fd=staging_fd, dst_dir_fd=fd)
            os.fsync(fd)
            os.fsync(staging_fd)
        fsio.write_atomic(fd, layout.MANIFEST_FILE, encode(manifest.to_json()), where)
    finally:
        os.close(fd)


def complete(
    root_fd: int,
    uid: str,
    cid: str,
    containers: Sequence[str],
    completed_at: datetime,
    target_node: str | None,
) -> Marker:
    """Publish the checkpoint: check every container is in place, then write the marker once.

    Raises AlreadyComplete when the marker is there, or appears before ours: the marker is written
    once, by whichever writer of this checkpoint comes first, and never replaced.
    """
    where = f"checkpoint {uid}/{cid}"
    marker = Marker(cid, uid, tuple(containers), completed_at, target_node)
    fd = fsio.open_dir(root_fd, [uid, cid], create=False, where=where)
    try:
        if fsio.is_regular(fd, layout.MARKER_FILE):
            raise AlreadyComplete(f"{where}: already complete; a marker is written once")
        for name in containers:
            container_fd = fsio.open_dir(fd, [name], create=False, where=where)
            try:
                manifest = read_manifest(container_fd, f"{where}/{name}")
                if not fsio.is_regular(container_fd, layout.DUMP_FILE) or manifest.checkpoint_id != cid:
                    raise StoreError(f"{where}/{name}: dump or manifest missing, cannot complete")
            finally:
                os.close(container_fd)
        if not fsio.write_once(fd, layout.MARKER_FILE, encode(marker.to_json()), where):
            raise AlreadyComplete(f"{where}: completed meanwhile by another writer; a marker is written once")
    finally:
        os.close(fd)
    return marker
