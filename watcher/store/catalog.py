"""Reading the store: complete checkpoints only, and why any other entry was passed over."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from watcher.errors import IncompleteCheckpoint, LpmError
from watcher.store import fsio, layout
from watcher.store.commit import read_manifest, read_marker
from watcher.store.manifest import Manifest, Marker, rfc3339


@dataclass(frozen=True)
class Checkpoint:
    marker: Marker
    manifests: tuple[Manifest, ...]  # in the marker's container order

    def summary(self, local_store: PurePath | None = None) -> dict[str, Any]:
        """The ``lpm store ls --json`` line (a contract other tools rely on). ``local_store``: this is a
        node-local store, whose checkpoints are addressed ``file://`` (their manifests keep ``shared://``)."""
        first = self.manifests[0]
        return {
            "podUID": self.marker.pod_uid,
            "podNamespace": first.pod_namespace,
            "podName": first.pod_name,
            "checkpointID": self.marker.checkpoint_id,
            "containers": list(self.marker.containers),
            "creationTime": rfc3339(first.creation_time),
            "targetNode": self.marker.target_node,
            "artifactURIs": {m.container_name: m.ref.uri if local_store is None else m.ref.file_uri(local_store)
                             for m in self.manifests},
        }


@dataclass(frozen=True)
class Skipped:
    """A checkpoint directory that is not listed, and the reason."""

    path: str
    reason: str
    damaged: bool = True
    """False for a write in progress (no marker yet): not listed, but nothing to report."""


def scan(root_fd: int) -> Iterator[Checkpoint | Skipped]:
    """Every checkpoint directory: Checkpoint when complete and consistent, else Skipped.

    Directories without a marker are Skipped with ``damaged`` false: they are writes in progress
    (or abandoned ones the collector will remove), not errors. Every other Skipped is one a
    reader must report: one bad checkpoint is passed over, never the end of the listing.
    """
    for uid in fsio.list_dirs(root_fd):
        try:
            pod_fd = fsio.open_dir(root_fd, [layout.pod_uid(uid)], create=False, where="store")
        except LpmError as err:
            yield Skipped(uid, str(err))
            continue
        try:
            for cid in fsio.list_dirs(pod_fd):
                yield _load(pod_fd, uid, cid)
        finally:
            os.close(pod_fd)


def _load(pod_fd: int, uid: str, cid: str) -> Checkpoint | Skipped:
    where = f"{uid}/{cid}"
    try:
        fd = fsio.open_dir(pod_fd, [layout.checkpoint_id(cid)], create=False, where="checkpoint")
    except LpmError as err:
        return Skipped(where, str(err))
    try:
        if not fsio.is_regular(fd, layout.MARKER_FILE):
            return Skipped(where, "incomplete (no completion marker)", damaged=False)
        return load_checkpoint(fd, uid, cid)
    except LpmError as err:
        return Skipped(where, str(err))
    finally:
        os.close(fd)


def load_checkpoint(checkpoint_fd: int, uid: str, cid: str) -> Checkpoint:
    """Read and cross-check a checkpoint whose marker exists."""
    where = f"checkpoint {uid}/{cid}"
    marker = read_marker(checkpoint_fd, where)
    if marker.pod_uid != uid or marker.checkpoint_id != cid:
        raise IncompleteCheckpoint(f"{where}: marker names {marker.pod_uid}/{marker.checkpoint_id}")
    manifests = []
    for name in marker.containers:
        try:
            container_fd = fsio.open_dir(checkpoint_fd, [name], create=False, where=where)
        except LpmError as err:
            raise IncompleteCheckpoint(f"{where}: marker lists container {name}, but: {err}") from None
        try:
            manifest = read_manifest(container_fd, f"{where}/{name}")
            if not fsio.is_regular(container_fd, layout.DUMP_FILE):
                raise IncompleteCheckpoint(f"{where}: marker lists container {name}, which has no dump")
        finally:
            os.close(container_fd)
        if (manifest.pod_uid, manifest.checkpoint_id, manifest.container_name) != (uid, cid, name):
            raise IncompleteCheckpoint(f"{where}/{name}: manifest belongs to {manifest.ref.uri}")
        manifests.append(manifest)
    return Checkpoint(marker, tuple(manifests))


def find(root_fd: int, ref: layout.ArtifactRef) -> tuple[Checkpoint, Manifest]:
    """The complete checkpoint holding ``ref`` and its manifest, or a clear error."""
    fd = fsio.open_dir(root_fd, [ref.pod_uid, ref.checkpoint_id], create=False, where=f"artifact {ref.uri}")
    try:
        if not fsio.is_regular(fd, layout.MARKER_FILE):
            raise IncompleteCheckpoint(f"artifact {ref.uri}: checkpoint is incomplete (no completion marker)")
        checkpoint = load_checkpoint(fd, ref.pod_uid, ref.checkpoint_id)
    finally:
        os.close(fd)
    for manifest in checkpoint.manifests:
        if manifest.container_name == ref.container:
            return checkpoint, manifest
    raise IncompleteCheckpoint(f"artifact {ref.uri}: container {ref.container} is not in the checkpoint's marker")


def open_dump(root_fd: int, ref: layout.ArtifactRef, where: str) -> int:
    """``ref``'s dump.tar.zst, open for reading: a regular file reached without following a link, or an error
    naming ``where``."""
    dir_fd = fsio.open_dir(root_fd, ref.segments, create=False, where=where)
    try:
        return fsio.open_regular(dir_fd, layout.DUMP_FILE, where)
    finally:
        os.close(dir_fd)
