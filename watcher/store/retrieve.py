"""Getting a kubelet archive back out of the store, verified, or not at all."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import zstandard

from watcher import zframe
from watcher.errors import ChecksumMismatch, UnsafeNameError
from watcher.store import catalog, fsio, layout
from watcher.store.manifest import Manifest
from watcher.zstream import Bounds, CompressionSettings, StreamDigest, decompress_stream


def _check(manifest: Manifest, digest: StreamDigest) -> None:
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


def _stream(root_fd: int, ref: layout.ArtifactRef, dst_fd: int | None,
            settings: CompressionSettings, cancel: threading.Event, hash_output: bool,
            tee: Callable[[bytes], None] | None = None, observe: Callable[[bytes], None] | None = None) -> Manifest:
    _, manifest = catalog.find(root_fd, ref)
    dir_fd = fsio.open_dir(root_fd, ref.segments, create=False, where=f"artifact {ref.uri}")
    try:
        src = fsio.open_regular(dir_fd, layout.DUMP_FILE, f"artifact {ref.uri}")
    finally:
        os.close(dir_fd)
    try:
        with fsio.os_errors(f"artifact {ref.uri}"):
            _check_frame(src, manifest, f"artifact {ref.uri}")
            try:
                digest = decompress_stream(src, dst_fd, settings, cancel, hash_output,
                                           Bounds(manifest.compressed_size, manifest.uncompressed_size,
                                                  f"artifact {ref.uri}"), tee, observe)
            except zstandard.ZstdError as err:
                raise ChecksumMismatch(f"artifact {ref.uri}: stored dump is not valid zstd ({err})") from None
    finally:
        os.close(src)
    _check(manifest, digest)
    return manifest


def verify(root_fd: int, ref: layout.ArtifactRef, settings: CompressionSettings,
           cancel: threading.Event) -> Manifest:
    """Read the whole dump back and check both of its recorded SHA-256 sums."""
    return _stream(root_fd, ref, None, settings, cancel, hash_output=True)


def stream(root_fd: int, ref: layout.ArtifactRef, settings: CompressionSettings, cancel: threading.Event,
           tee: Callable[[bytes], None], observe: Callable[[bytes], None]) -> Manifest:
    """Read the dump once, handing its stored bytes to ``tee`` and the archive's to ``observe``; then
    check both SHA-256 sums, both sizes and the zstd frame. Whatever the two were given is trusted only
    once this returns: a mismatch is raised after the last byte went past them."""
    return _stream(root_fd, ref, None, settings, cancel, True, tee, observe)


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
    out = out.absolute()
    where = f"output {out}"
    with fsio.os_errors(where):
        dir_fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_target(dir_fd, out.name, root_fd, where)
        fd, temp = fsio.create_temp(dir_fd, out.name, where)
        try:
            manifest = _stream(root_fd, ref, fd, settings, cancel, hash_output=False)
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


def _check_target(dir_fd: int, name: str, root_fd: int, where: str) -> None:
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
        if fsio.is_below(dir_fd, root_fd):
            raise UnsafeNameError(f"{where}: is inside the store, refused")
