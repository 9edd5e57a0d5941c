"""Getting a kubelet archive back out of an S3 store, verified, or not at all (``watcher.store.retrieve``).

The dump is fetched with a GET whose range ends one byte past the manifest's ``compressedSize`` (enough to
know it is longer, no more) and fed through a pipe into the filesystem store's very reader on a worker
thread: the same checks (both sizes, the stored bytes' SHA-256, the zstd content checksum, the archive's
SHA-256 where asked), the same sealed-dump opening, the same output handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from watcher.errors import ChecksumMismatch
from watcher.s3.store import S3Store
from watcher.store import layout, retrieve
from watcher.store.manifest import Manifest
from watcher.zstream import CompressionSettings

_T = TypeVar("_T")
_PIPE_SIZE = 1 << 20


async def read_through(store: S3Store, manifest: Manifest, consume: Callable[[int], _T]) -> _T:
    """Run ``consume(fd)`` on a worker thread over the dump's bytes (``fd`` is the read end of a pipe, which
    ``consume`` closes) while they are fetched. A failure of the fetch (the server went away) wins over the
    reader's (which then only sees the stream end early)."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    reader = asyncio.ensure_future(asyncio.to_thread(consume, read_fd))
    try:
        await store.feed(store.location.dump_key(manifest.ref), manifest.compressed_size + 1, write_fd)
    except BaseException:
        os.close(write_fd)
        with contextlib.suppress(BaseException):
            await reader
        raise
    os.close(write_fd)
    return await reader


async def opened(store: S3Store, ref: layout.ArtifactRef, settings: CompressionSettings
                 ) -> tuple[Manifest, bytes | None]:
    """The manifest and the data key: the key first, so a missing key reads nothing."""
    _, manifest = await store.find(ref)
    return manifest, retrieve.data_key(manifest, settings)


async def verify(store: S3Store, ref: layout.ArtifactRef, settings: CompressionSettings,
                 cancel: threading.Event) -> Manifest:
    """Read the whole dump back and check both of its recorded SHA-256 sums."""
    manifest, key = await opened(store, ref, settings)
    return await read_through(store, manifest, lambda fd: retrieve.read_open(
        manifest, key, fd, None, settings, cancel, hash_output=True))


async def stream(store: S3Store, ref: layout.ArtifactRef, settings: CompressionSettings, cancel: threading.Event,
                 tee: Callable[[bytes], None], observe: Callable[[bytes], None]) -> Manifest:
    """``watcher.store.retrieve.stream`` over the bucket, the streamed restore's read: the dump once, its zstd
    stream (a sealed dump's opened) to ``tee``, the archive's bytes to ``observe``, then both SHA-256 sums,
    both sizes and the zstd checksum checked; what the two were given is trusted only once this returns."""
    manifest, key = await opened(store, ref, settings)
    return await read_through(store, manifest, lambda fd: retrieve.read_open(
        manifest, key, fd, None, settings, cancel, True, tee, observe))


async def verify_stored(store: S3Store, ref: layout.ArtifactRef) -> Manifest:
    """Check only the stored bytes against ``checksumSHA256`` and ``compressedSize`` (no key needed)."""
    _, manifest = await store.find(ref)

    def digest(fd: int) -> tuple[str, int]:
        sha, size = hashlib.sha256(), 0
        try:
            while chunk := os.read(fd, _PIPE_SIZE):
                sha.update(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        return sha.hexdigest(), size

    sha, size = await read_through(store, manifest, digest)
    if (sha, size) != (manifest.checksum_sha256, manifest.compressed_size):
        longer = "more than " if size > manifest.compressed_size else ""
        raise ChecksumMismatch(f"artifact {ref.uri}: stored dump has sha256 {sha} ({longer}{size} bytes), "
                               f"manifest says {manifest.checksum_sha256} ({manifest.compressed_size} bytes)")
    return manifest


async def get(store: S3Store, ref: layout.ArtifactRef, out: Path, settings: CompressionSettings,
              cancel: threading.Event) -> Manifest:
    """Write the original archive bytes to ``out``, verified; on any failure ``out`` is left untouched."""
    manifest, key = await opened(store, ref, settings)
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    held = [read_fd]  # the reader takes it over once the output exists; until then it is ours to close

    def take(_: None) -> None:
        os.close(held.pop())

    def write(_: None, dst: int) -> Manifest:
        return retrieve.read_open(manifest, key, held.pop(), dst, settings, cancel, hash_output=False)

    def run() -> Manifest:
        try:
            return retrieve.write_output(out, None, lambda: None, take, write)
        finally:
            while held:  # refused before it took the pipe: closing it ends the fetch (EPIPE)
                os.close(held.pop())

    writer = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        await store.feed(store.location.dump_key(ref), manifest.compressed_size + 1, write_fd)
    except BaseException:
        os.close(write_fd)
        with contextlib.suppress(BaseException):
            await writer
        raise
    os.close(write_fd)
    return await writer
