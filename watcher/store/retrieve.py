"""Getting a kubelet archive back out of the store, verified, or not at all.

A sealed dump (encryption at rest, docs/encryption.md) is opened with the key its manifest names,
from ``settings.encryption``; without that key nothing is read or written (KeyUnavailable, or
WrongKey, naming the key ID), and ``verify_stored`` still checks the stored bytes' SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import zstandard

from watcher import zframe
from watcher.crypt import keyring, seal
from watcher.errors import Cancelled, ChecksumMismatch, UnsafeNameError
from watcher.store import catalog, fsio, layout
from watcher.store.manifest import Manifest
from watcher.zstream import Bounds, CompressionSettings, StreamDigest, decompress_stream


def check_digest(manifest: Manifest, digest: StreamDigest) -> None:
    where = f"artifact {manifest.ref.uri}"
    if (digest.compressed_sha256, digest.compressed_size) != (manifest.checksum_sha256, manifest.compressed_size):
        raise ChecksumMismatch(
            f"{where}: stored dump has sha256 {digest.compressed_sha256} ({digest.compressed_size} bytes), "
            f"manifest says {manifest.checksum_sha256} ({manifest.compressed_size} bytes)"
        )
    if digest.raw_size != manifest.uncompressed_size or digest.raw_sha256 not in (None, manifest.uncompressed_sha256):
        raise ChecksumMismatch(
            f"{where}: decompressed archive has sha256 {digest.raw_sha256} ({digest.raw_size} bytes), "
            f"manifest says {manifest.uncompressed_sha256} ({manifest.uncompressed_size} bytes)"
        )


_S = TypeVar("_S")

_CHUNK = 1 << 20
"""Bytes read per step where nothing decompresses (verify_stored)."""

# A zstd block holds at most 128 KiB; ingest's blocks hold about that. One block per KiB on average is
# far more than any dump lpm wrote has, and bounds the header walk of a forged one.
_BYTES_PER_BLOCK = 1024


def _check_frame(src: int, manifest: Manifest, where: str) -> None:
    length = os.fstat(src).st_size
    if length != manifest.compressed_size:
        return  # decompress_stream stops at the bound, and the size check names both numbers
    try:
        zframe.check_frame(lambda offset, count: os.pread(src, count, offset), length,
                           max(1024, manifest.uncompressed_size // _BYTES_PER_BLOCK))
    except zframe.FrameError as err:
        raise ChecksumMismatch(f"{where}: stored dump is not one whole zstd frame: it {err}") from None


def data_key(manifest: Manifest, settings: CompressionSettings) -> bytes | None:
    """The sealed dump's data key (None for a plain dump); KeyUnavailable or WrongKey naming the key ID."""
    if manifest.encryption is None:
        return None
    where = f"artifact {manifest.ref.uri}"
    if settings.encryption is None:
        raise keyring.no_keys(manifest.encryption, where)
    return settings.encryption.data_key(manifest.encryption, manifest.ref.uri, where)


def _open(root_fd: int, ref: layout.ArtifactRef, settings: CompressionSettings) -> tuple[Manifest, bytes | None, int]:
    """The manifest, the data key and the open dump: the key first, so a missing key opens nothing."""
    _, manifest = catalog.find(root_fd, ref)
    key = data_key(manifest, settings)
    return manifest, key, catalog.open_dump(root_fd, ref, f"artifact {ref.uri}")


def _stream(manifest: Manifest, key: bytes | None, src: int, dst_fd: int | None,
            settings: CompressionSettings, cancel: threading.Event, hash_output: bool,
            tee: Callable[[bytes], None] | None = None, observe: Callable[[bytes], None] | None = None) -> Manifest:
    """Read the open dump ``src`` (closed here) to its end, checked against ``manifest``."""
    where = f"artifact {manifest.ref.uri}"
    try:
        with fsio.os_errors(where):
            if key is None:
                _check_frame(src, manifest, where)
            try:
                digest = decompress_stream(src, dst_fd, settings, cancel, hash_output,
                                           Bounds(manifest.compressed_size, manifest.uncompressed_size, where),
                                           seal.Opener(key) if key is not None else None, tee, observe)
            except zstandard.ZstdError as err:
                raise ChecksumMismatch(f"{where}: stored dump is not valid zstd ({err})") from None
    finally:
        os.close(src)
    check_digest(manifest, digest)
    return manifest


def verify(root_fd: int, ref: layout.ArtifactRef, settings: CompressionSettings,
           cancel: threading.Event) -> Manifest:
    """Read the whole dump back and check both of its recorded SHA-256 sums."""
    return _stream(*_open(root_fd, ref, settings), None, settings, cancel, hash_output=True)


def verify_stored(root_fd: int, ref: layout.ArtifactRef, cancel: threading.Event) -> Manifest:
    """Check only the stored bytes against the manifest's ``checksumSHA256`` and ``compressedSize``: what can
    be checked of a sealed dump without its key."""
    _, manifest = catalog.find(root_fd, ref)
    where = f"artifact {ref.uri}"
    src = catalog.open_dump(root_fd, ref, where)
    digest, size = hashlib.sha256(), 0
    try:
        with fsio.os_errors(where):
            # At most one byte past the recorded size: enough to know the dump is longer.
            while chunk := os.read(src, min(_CHUNK, manifest.compressed_size + 1 - size)):
                if cancel.is_set():
                    raise Cancelled(f"{where}: verification cancelled at byte {size}")
                digest.update(chunk)
                size += len(chunk)
    finally:
        os.close(src)
    if (digest.hexdigest(), size) != (manifest.checksum_sha256, manifest.compressed_size):
        longer = "more than " if size > manifest.compressed_size else ""
        raise ChecksumMismatch(f"{where}: stored dump has sha256 {digest.hexdigest()} ({longer}{size} bytes), "
                               f"manifest says {manifest.checksum_sha256} ({manifest.compressed_size} bytes)")
    return manifest



def stream(root_fd: int, ref: layout.ArtifactRef, settings: CompressionSettings, cancel: threading.Event,
           tee: Callable[[bytes], None], observe: Callable[[bytes], None]) -> Manifest:
    """Read the dump once, handing its zstd stream (a sealed dump's opened) to ``tee`` and the archive's bytes
    to ``observe``; then check both SHA-256 sums, both sizes and the zstd frame. Whatever the two were given
    is trusted only once this returns: a mismatch is raised after the last byte went past them."""
    return _stream(*_open(root_fd, ref, settings), None, settings, cancel, True, tee, observe)


def get(root_fd: int, ref: layout.ArtifactRef, out: Path, settings: CompressionSettings,
        cancel: threading.Event) -> Manifest:
    """Write the original archive bytes to ``out``; on any failure ``out`` is left untouched.

    Verified by the dump's SHA-256 (``checksumSHA256``), the zstd content checksum and the
    recorded size; the second SHA-256 (of the output) would halve throughput for no gain.
    ``out`` is written by renaming a temp file over it, so what it names must be a regular file
    or nothing: a rename over ``/dev/sda`` would replace the device node, one over a FIFO a
    pipe some program reads. And never inside the store itself, where it would be a file no
    writer made.
    """
    # The key before the output: without it nothing is created, not even a temp file.
    return write_output(out, root_fd, lambda: _open(root_fd, ref, settings), lambda opened: os.close(opened[2]),
                        lambda opened, fd: _stream(*opened, fd, settings, cancel, hash_output=False))


def read_open(manifest: Manifest, key: bytes | None, src: int, dst_fd: int | None, settings: CompressionSettings,
              cancel: threading.Event, hash_output: bool, tee: Callable[[bytes], None] | None = None,
              observe: Callable[[bytes], None] | None = None) -> Manifest:
    """Read the open dump ``src`` (closed here) to its end into ``dst_fd`` (None: only checked), against
    ``manifest``: both sizes, the SHA-256 of the stored bytes, the zstd content checksum, and with
    ``hash_output`` the archive's. ``src`` may be a pipe (the S3 store's reads, watcher.s3.retrieve): the
    walk over the zstd frame's headers needs a file and is skipped there; the sums and sizes still hold."""
    return _stream(manifest, key, src, dst_fd, settings, cancel, hash_output, tee, observe)


def write_output(out: Path, root_fd: int | None, open_source: Callable[[], _S], close_source: Callable[[_S], None],
                 write: Callable[[_S, int], Manifest]) -> Manifest:
    """``get``'s output: check ``out`` (a regular file or nothing, not inside the store ``root_fd``), open the
    source, write it into a temp file beside ``out`` (``write`` takes over the source) and rename that over
    ``out``; on any failure the temp file is removed and ``out`` left as it was."""
    out = out.absolute()
    where = f"output {out}"
    with fsio.os_errors(where):
        dir_fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_target(dir_fd, out.name, root_fd, where)
        source = open_source()
        try:
            fd, temp = fsio.create_temp(dir_fd, out.name, where)
        except BaseException:
            close_source(source)
            raise
        try:
            manifest = write(source, fd)
        except BaseException:
            os.close(fd)
            fsio.discard(dir_fd, temp)
            raise
        os.close(fd)
        try:
            fsio.publish(dir_fd, temp, out.name, where)
        except BaseException:
            fsio.discard(dir_fd, temp)
            raise
    finally:
        os.close(dir_fd)
    return manifest


def _check_target(dir_fd: int, name: str, root_fd: int | None, where: str) -> None:
    """Refuse an output that is not a regular file (or a link to one), or that lies inside the store."""
    with fsio.os_errors(where):
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            try:
                target = os.stat(name, dir_fd=dir_fd).st_mode
            except FileNotFoundError:
                target = None  # a dangling link: the rename replaces the link, nothing else
            if target is not None and not stat.S_ISREG(target):
                raise UnsafeNameError(f"{where}: is a symlink to {fsio.kind_of(target)}, refused")
        elif mode is not None and not stat.S_ISREG(mode):
            raise UnsafeNameError(f"{where}: is {fsio.kind_of(mode)}, refused")
        if root_fd is not None and fsio.is_below(dir_fd, root_fd):
            raise UnsafeNameError(f"{where}: is inside the store, refused")
