"""Moving checkpoints held in the node's local store into the shared store, once it is back.

The local store has the shared store's layout and commit protocol, so a move is a second
commit of the same bytes under the same checkpoint ID: every dump is copied into the shared
store's staging directory with its SHA-256 checked against the manifest on the way, renamed
into place, the manifests written, the marker last. Only then (and, in cluster mode, once the
API says ``shared``) is the local copy removed: its directory is first renamed to a dot-name
readers skip, so a crash mid-removal leaves something invisible that the next pass finishes.

Crash-safe at every step: before the shared marker the local copy is complete; after it both
are; the local copy goes only after. The shared copy is pinned (``.keep``, written before its
marker) until the API names it: a checkpoint held locally past the retention would otherwise be
expired and unreferenced (its contents still say ``file://``) the moment its marker appears, and
the collector could take it between that marker and the switch. Idempotent: a checkpoint already complete in the shared
store is compared (checksums of every container) instead of copied again, and the ID is the
same in both stores, so a move never makes a duplicate.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading

from watcher.errors import AlreadyComplete, Cancelled, ChecksumMismatch, LpmError, StoreError
from watcher.store import catalog, commit, fsio, layout
from watcher.store.catalog import Checkpoint
from watcher.store.ledger import Ledger

_CHUNK = 1 << 20
_REMOVED_PREFIX = ".moved-"
"""A local checkpoint directory being removed after its move; every reader skips dot-names."""
_SLACK = 1 << 20
"""Per container, beyond its dump: its manifest, the marker, the directories and what the filesystem rounds up."""


def room_needed(checkpoint: Checkpoint) -> int:
    """Bytes the shared store must have free to take ``checkpoint``: a copy into a store with less would run
    out of space part-way, and be tried again, and run out again, every round the store is that full."""
    return sum(manifest.compressed_size + _SLACK for manifest in checkpoint.manifests)


def local_checkpoints(local_fd: int) -> list[Checkpoint]:
    """The complete checkpoints in the local store: what is waiting to be moved."""
    return [entry for entry in catalog.scan(local_fd) if isinstance(entry, Checkpoint)]


def copy_to_shared(local_fd: int, shared_fd: int, node: str, checkpoint: Checkpoint,
                   cancel: threading.Event) -> bool:
    """Commit ``checkpoint`` into the shared store; False when it was there already (checked equal)."""
    uid, cid = checkpoint.marker.pod_uid, checkpoint.marker.checkpoint_id
    if commit.marker_exists(shared_fd, uid, cid):
        _check_same(shared_fd, checkpoint)
        _copy_ledger(local_fd, shared_fd, node, uid, cid)
        return False
    try:
        with commit.staging(shared_fd, node) as staging_fd:
            for manifest in checkpoint.manifests:
                staged = _copy_dump(local_fd, staging_fd, manifest.ref, manifest.checksum_sha256,
                                    manifest.compressed_size, cancel)
                try:
                    commit.commit_container(shared_fd, staging_fd, staged, manifest)
                finally:
                    fsio.discard(staging_fd, staged)  # already renamed away unless the commit failed
        _pin(shared_fd, uid, cid, node)
        commit.complete(shared_fd, uid, cid, checkpoint.marker.containers, checkpoint.marker.completed_at,
                        checkpoint.marker.target_node)
    except AlreadyComplete:
        # Committed meanwhile by another writer (the node's other agent's mover during a rollout: they
        # share the local store): compared, as if it had been there before.
        _check_same(shared_fd, checkpoint)
        _copy_ledger(local_fd, shared_fd, node, uid, cid)
        return False
    _copy_ledger(local_fd, shared_fd, node, uid, cid)
    return True


def _pin_text(node: str) -> bytes:
    return f"pinned by the lpm agent on {node} while this checkpoint moves from its local store\n".encode()


def _pin(shared_fd: int, uid: str, cid: str, node: str) -> None:
    fd = fsio.open_dir(shared_fd, [uid, cid], create=False, where=f"shared checkpoint {uid}/{cid}")
    try:
        fsio.write_atomic(fd, layout.KEEP_FILE, _pin_text(node), f"shared checkpoint {uid}/{cid}")
    finally:
        os.close(fd)


def unpin(shared_fd: int, node: str, checkpoint: Checkpoint) -> None:
    """Drop the mover's pin once the API names the shared copy; a pin with other content is an operator's
    and stays."""
    uid, cid = checkpoint.marker.pod_uid, checkpoint.marker.checkpoint_id
    where = f"shared checkpoint {uid}/{cid}"
    fd = fsio.open_dir(shared_fd, [uid, cid], create=False, where=where)
    try:
        if not fsio.is_regular(fd, layout.KEEP_FILE):
            return
        if fsio.read_small(fd, layout.KEEP_FILE, 4096, where) == _pin_text(node):
            with fsio.os_errors(f"{where}: remove {layout.KEEP_FILE}"):
                os.unlink(layout.KEEP_FILE, dir_fd=fd)
                os.fsync(fd)
    finally:
        os.close(fd)


def _copy_dump(local_fd: int, staging_fd: int, ref: layout.ArtifactRef, sha256: str, size: int,
               cancel: threading.Event) -> str:
    """Copy one dump into shared staging, fsynced; returns its temp name. Checked against the manifest."""
    where = f"local artifact {ref.uri}"
    src = catalog.open_dump(local_fd, ref, where)
    try:
        dst, temp = fsio.create_temp(staging_fd, layout.DUMP_FILE, "shared store staging")
        try:
            digest, copied = hashlib.sha256(), 0
            with fsio.os_errors(f"move of {ref.uri} into the shared store"):
                while chunk := os.read(src, _CHUNK):
                    if cancel.is_set():
                        raise Cancelled(f"move of {ref.uri}: the agent is stopping")
                    digest.update(chunk)
                    copied += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(dst, view):]
                os.fsync(dst)
            if (digest.hexdigest(), copied) != (sha256, size):
                raise ChecksumMismatch(f"{where}: has sha256 {digest.hexdigest()} ({copied} bytes), its manifest "
                                       f"says {sha256} ({size} bytes); not moved")
        except BaseException:
            os.close(dst)
            fsio.discard(staging_fd, temp)
            raise
        os.close(dst)
    finally:
        os.close(src)
    return temp


def _check_same(shared_fd: int, checkpoint: Checkpoint) -> None:
    uid, cid = checkpoint.marker.pod_uid, checkpoint.marker.checkpoint_id
    fd = fsio.open_dir(shared_fd, [uid, cid], create=False, where=f"shared checkpoint {uid}/{cid}")
    try:
        shared = catalog.load_checkpoint(fd, uid, cid)
    finally:
        os.close(fd)
    ours = {(m.container_name, m.checksum_sha256, m.compressed_size) for m in checkpoint.manifests}
    theirs = {(m.container_name, m.checksum_sha256, m.compressed_size) for m in shared.manifests}
    if ours != theirs:
        raise ChecksumMismatch(f"checkpoint {uid}/{cid}: the shared store holds other bytes under this ID; "
                               "the local copy is kept")


def _copy_ledger(local_fd: int, shared_fd: int, node: str, uid: str, cid: str) -> None:
    """The shared store's ledger learns these archives, so the collector may clean the kubelet's copies."""
    shared = Ledger(shared_fd, node)
    for record in Ledger(local_fd, node).records_of(uid, cid):
        shared.record(record)


def remove_local(local_fd: int, node: str, checkpoint: Checkpoint) -> None:
    """Remove a moved checkpoint from the local store: hidden first (one rename), then deleted."""
    uid, cid = checkpoint.marker.pod_uid, checkpoint.marker.checkpoint_id
    pod_fd = fsio.open_dir(local_fd, [uid], create=False, where=f"local checkpoint {uid}/{cid}")
    try:
        with fsio.os_errors(f"local checkpoint {uid}/{cid}: remove after its move"):
            os.rename(cid, _REMOVED_PREFIX + cid, src_dir_fd=pod_fd, dst_dir_fd=pod_fd)
            os.fsync(pod_fd)
    finally:
        os.close(pod_fd)
    ledger = Ledger(local_fd, node)
    for record in ledger.records_of(uid, cid):
        ledger.forget(record.stamp.name)
    sweep_removed(local_fd)


def sweep_removed(local_fd: int) -> int:
    """Delete hidden leftovers of moves (a crash can stop one mid-removal); returns how many."""
    removed = 0
    for uid in fsio.list_dirs(local_fd):
        try:
            pod_fd = fsio.open_dir(local_fd, [layout.pod_uid(uid)], create=False, where="local store")
        except LpmError:
            continue  # the catalog reports such entries; a sweep only removes what it recognises
        try:
            for name in os.listdir(pod_fd):
                if name.startswith(_REMOVED_PREFIX):
                    # dir_fd: rmtree walks with file descriptors and never follows a symlink.
                    with fsio.os_errors(f"local store: remove {uid}/{name}"):
                        shutil.rmtree(name, dir_fd=pod_fd)
                    removed += 1
            with fsio.os_errors(f"local store: {uid}"):
                empty = not os.listdir(pod_fd)
        finally:
            os.close(pod_fd)
        if empty:
            try:
                os.rmdir(uid, dir_fd=local_fd)
            except OSError:
                pass  # an ingest made a new checkpoint of this pod meanwhile: keep it
    return removed


def shared_copy_complete(shared_fd: int, checkpoint: Checkpoint) -> None:
    """Raise unless the shared store holds ``checkpoint`` complete with the same bytes (checked right
    before the local copy goes: the shared store may have failed again since the copy)."""
    uid, cid = checkpoint.marker.pod_uid, checkpoint.marker.checkpoint_id
    if not commit.marker_exists(shared_fd, uid, cid):
        raise StoreError(f"checkpoint {uid}/{cid}: not complete in the shared store; the local copy is kept")
    _check_same(shared_fd, checkpoint)
