"""Where ``lpm inspect`` reads from: a checkpoint archive on disk, or a stored dump in lpm's store.

Both are read once, front to back, in pieces (never whole in memory nor copied to disk) and fed to
``reader.Collector``. A stored dump is read through ``retrieve.stream``: decompressed (a sealed one
opened with its key) and checked against its manifest's SHA-256 sums and sizes; an inspection of a
dump that fails those checks is not returned.
"""

from __future__ import annotations

import gzip
import threading
from pathlib import Path
from typing import Protocol

import zstandard

from watcher.errors import ArchiveError, UnknownCheckpoint
from watcher.inspect.model import Inspection, TcpConnection, established_tcp
from watcher.inspect.reader import Collector, Options
from watcher.store import catalog, fsio, layout, retrieve
from watcher.zstream import CompressionSettings

CHUNK = 1 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"


class _Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def inspect_archive(path: Path, options: Options | None = None) -> Inspection:
    """A kubelet, CRI-O, containerd or podman checkpoint archive: a tar, or one podman compressed (zstd, gzip)."""
    where = str(path)
    collector = Collector(where, options)
    with fsio.os_errors(f"archive {where}"), open(path, "rb") as raw:
        start = raw.read(4)
        raw.seek(0)
        stream: _Reader
        if start.startswith(_ZSTD_MAGIC):
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK)
        elif start.startswith(_GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            stream = raw
        size = 0
        try:
            while chunk := stream.read(CHUNK):
                collector.feed(chunk)
                size += len(chunk)
        except (zstandard.ZstdError, gzip.BadGzipFile, EOFError) as err:
            raise ArchiveError(f"archive {where}: compressed stream is damaged ({err})") from None
    return collector.finish(size)


def inspect_stored(root_fd: int, ref: layout.ArtifactRef, settings: CompressionSettings,
                   options: Options | None = None) -> Inspection:
    """One container's dump in the store (``dump.tar.zst``), verified as it is read."""
    collector = Collector(ref.uri, options)
    manifest = retrieve.stream(root_fd, ref, settings, threading.Event(), _drop, collector.feed)
    return collector.finish(manifest.uncompressed_size)


def established_tcp_in_stored(root_fd: int, ref: layout.ArtifactRef,
                              settings: CompressionSettings) -> list[TcpConnection]:
    """The established TCP connections in one stored dump (issue 14 item 3: warn before a restore breaks them).

    Reads the dump once. A caller that reads it anyway (the streamed restore hands every decompressed piece to
    an ``observe`` callback) can instead feed a ``reader.Collector`` there and call ``established_tcp`` on
    its ``finish``: no second read."""
    return established_tcp(inspect_stored(root_fd, ref, settings))


def _drop(piece: bytes) -> None:
    pass  # the compressed stream itself is not wanted, only what it decompresses to




def find_stored(root_fd: int, name: str, store: str) -> list[layout.ArtifactRef]:
    """The dumps ``name`` means in the store: ``shared://...`` (one container), ``podUID/checkpointID[/container]``
    or a checkpoint ID alone (every container of that checkpoint). Complete checkpoints only."""
    if name.startswith(layout.URI_SCHEME):
        return [layout.parse_uri(name)]
    parts = name.strip("/").split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise UnknownCheckpoint(f"checkpoint {name!r}: expected shared://..., podUID/checkpointID[/container], "
                                "a checkpoint ID, or an archive's path")
    refs = []
    for entry in catalog.scan(root_fd):
        if not isinstance(entry, catalog.Checkpoint):
            continue
        marker = entry.marker
        if len(parts) == 1 and marker.checkpoint_id != parts[0]:
            continue
        if len(parts) >= 2 and (marker.pod_uid, marker.checkpoint_id) != (parts[0], parts[1]):
            continue
        refs += [m.ref for m in entry.manifests if len(parts) < 3 or m.container_name == parts[2]]
    if not refs:
        raise UnknownCheckpoint(f"checkpoint {name!r}: no complete checkpoint of that name in store {store} "
                                "(lpm store ls lists them)")
    return refs
