"""The byte mover: one pass over a stream, read -> (observe, sha256) -> zstd -> sha256 -> write.

It runs as one blocking loop in a worker thread. Measured here (bench/ingest.py) that beats
per-chunk ``aiofiles`` calls: zstd and hashlib release the GIL on large buffers, so the loop
overlaps with the event loop instead of bouncing every chunk through it. It parses nothing
itself: the ``observe`` callable (the tar scanner) sees every raw chunk, which is how the
archive is checked and identified without being read twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from watcher.crypt import seal
from watcher.crypt.keyring import DumpKey, Keyring
from watcher.errors import Cancelled, ChecksumMismatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompressionSettings:
    """How archives are compressed; the defaults are what bench/ingest.py chose on 2 cores."""

    level: int = 1
    """zstd level. 1 is CPU-cheap and CRIU dumps (zero pages, text) still shrink well."""
    threads: int = 2
    """zstd worker threads; 0 compresses in the calling thread."""
    chunk_size: int = 1 << 20
    """Bytes read per step: bounds memory, and the granularity of cancellation."""
    progress_interval: float = 5.0
    """Seconds between progress log lines of one long ingest."""
    encryption: Keyring | None = None
    """Encryption at rest (docs/encryption.md): when set, new dumps are sealed with its current key, and
    sealed dumps are opened with whichever of its keys their manifest names. None: plain dumps only."""


@dataclass
class Tally:
    """Bytes through one ingest so far, read by another thread to report progress (each field is one int
    stored at a time, which another thread always reads whole)."""

    read: int = 0
    """Raw archive bytes read."""
    written: int = 0
    """Bytes written to the store (compressed, and sealed when encryption is on)."""


@dataclass(frozen=True)
class StreamDigest:
    raw_size: int
    raw_sha256: str | None
    """None when the caller did not ask for it (see ``decompress_stream``)."""
    compressed_size: int
    compressed_sha256: str
    """Size and SHA-256 of the bytes written or read: the sealed bytes when the dump is sealed."""
    dump_key: DumpKey | None = None
    """The sealed dump's data key, for its manifest (compress_stream with encryption on)."""


def compress_stream(
    src_fd: int,
    dst_fd: int,
    observe: Callable[[memoryview], None],
    settings: CompressionSettings,
    cancel: threading.Event,
    label: str,
    more: Callable[[], bool] | None = None,
    tally: Tally | None = None,
) -> StreamDigest:
    """Copy ``src_fd`` to ``dst_fd`` as one zstd frame, sealed when ``settings.encryption`` is set; hash both
    sides (the output's SHA-256 is of the bytes written); fsync the output. ``tally``, when given, counts
    the bytes as they go (a migration's progress in its status).

    At the end of the input, ``more`` (when given) is asked whether to read again: a file still being
    written is followed until its writer says it is done (``ingest.service.Follow``).
    """
    compressor = zstandard.ZstdCompressor(
        level=settings.level, threads=settings.threads, write_checksum=True
    ).compressobj()
    dump_key = settings.encryption.new_dump_key() if settings.encryption is not None else None
    sealer = seal.Sealer(dump_key.data_key) if dump_key is not None else None
    encode = sealer.feed if sealer is not None else _plain
    raw_hash, out_hash = hashlib.sha256(), hashlib.sha256()
    raw_size = out_size = 0
    buffer = bytearray(settings.chunk_size)
    view = memoryview(buffer)
    started = next_report = time.monotonic()
    next_report += settings.progress_interval
    while True:
        if cancel.is_set():
            raise Cancelled(f"ingest of {label} cancelled at byte {raw_size}")
        count = os.readv(src_fd, [buffer])
        if not count:
            if more is not None and more():
                continue
            break
        chunk = view[:count]
        observe(chunk)
        raw_hash.update(chunk)
        raw_size += count
        out_size += _emit(dst_fd, encode(compressor.compress(chunk)), out_hash)
        if tally is not None:
            tally.read, tally.written = raw_size, out_size
        now = time.monotonic()
        if now >= next_report:
            next_report = now + settings.progress_interval
            log.info(
                "ingest progress",
                extra={"fields": {"archive": label, "bytesRead": raw_size, "bytesWritten": out_size,
                                  "mbPerSecond": round(raw_size / (now - started) / 1e6, 1)}},
            )
    tail = compressor.flush()
    if sealer is not None:
        tail = sealer.feed(tail) + sealer.finish()
    out_size += _emit(dst_fd, tail, out_hash)
    if stat.S_ISREG(os.fstat(dst_fd).st_mode):  # a pipe (the S3 store's upload, watcher.ingest.s3) has no fsync
        os.fsync(dst_fd)
    if tally is not None:
        tally.written = out_size
    return StreamDigest(raw_size, raw_hash.hexdigest(), out_size, out_hash.hexdigest(), dump_key)


def _plain(data: bytes) -> bytes:
    return data


def _emit(fd: int, data: bytes, digest: hashlib._Hash) -> int:
    if data:
        digest.update(data)
        _write_all(fd, data)
    return len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass(frozen=True)
class Bounds:
    """What a stored dump's manifest promises. The manifest is as forgeable as the dump, but it is
    what the caller will check against at the end, so nothing past it needs reading: a few KiB of
    zstd can stand for terabytes, which would fill the disk of whoever reads it before any check."""

    compressed_size: int
    raw_size: int
    where: str
    """Names the dump in the error."""


def decompress_stream(
    src_fd: int,
    dst_fd: int | None,
    settings: CompressionSettings,
    cancel: threading.Event,
    hash_output: bool,
    bounds: Bounds,
    opener: seal.Opener | None = None,
    tee: Callable[[bytes], None] | None = None,
    observe: Callable[[bytes], None] | None = None,
) -> StreamDigest:
    """Inverse of compress_stream: decompress ``src_fd`` into ``dst_fd``, hashing the input.

    The compressed bytes are always hashed: that SHA-256 (the manifest's and the API's
    ``checksumSHA256``) is what proves the stored dump is the one that was written. The
    frame's own content checksum (written by compress_stream) then proves decompression
    gave back those bytes. ``hash_output`` adds the SHA-256 of the decompressed archive on a
    second thread; it costs CPU (SHA-256 runs at about 1.2 GB/s here) and is for when the
    original must be proven independently, such as before deleting the kubelet's copy.

    Output is produced in ``chunk_size`` pieces: a megabyte of compressed zero pages can
    stand for gigabytes, so nothing here may hold a whole chunk's expansion. With no
    ``dst_fd`` the bytes are only checked. Reading stops with ChecksumMismatch as soon as the
    input is longer than ``bounds.compressed_size`` or the output would be longer than
    ``bounds.raw_size``: no byte past either is read or written.

    With an ``opener`` the stored bytes are a sealed dump: they are hashed as stored, then opened
    chunk by chunk, and read to their end (after the zstd frame) so the last chunk is authenticated:
    a sealed dump cut after any chunk fails here as ChecksumMismatch.

    ``tee`` is handed the zstd stream as it is decompressed (the stored bytes, or a sealed dump's
    plaintext), ``observe`` every decompressed piece: the streamed restore sends the first on as the
    image's layer and scans the tar in the second. Each runs on a thread of its own, so neither holds
    up the decompression.
    """
    in_hash, out_hash = hashlib.sha256(), hashlib.sha256()

    def consume(piece: bytes) -> None:
        if hash_output:
            out_hash.update(piece)
        if observe is not None:
            observe(piece)
        if dst_fd is not None:
            _write_all(dst_fd, piece)

    size = 0
    with _Offload(in_hash.update) as hash_input, _Offload(consume) as output, _Offload(tee or _drop) as teed:
        source = StoredReader(src_fd, cancel, hash_input.put, bounds, opener)
        zstd_in = source if tee is None else _Teed(source, teed.put)
        for piece in zstandard.ZstdDecompressor().read_to_iter(
            zstd_in,  # type: ignore[arg-type]  # zstandard needs only read(); its stubs ask for IO[bytes]
            read_size=settings.chunk_size, write_size=settings.chunk_size
        ):
            if size + len(piece) > bounds.raw_size:
                raise ChecksumMismatch(f"{bounds.where}: stored dump decompresses to more than the manifest's "
                                       f"uncompressedSize ({bounds.raw_size} bytes); stopped there")
            output.put(piece)
            size += len(piece)
        if opener is not None:
            # zstd stops at its frame's end; what the sealed dump holds after it (and its last chunk's tag)
            # is read here. Plaintext after the frame inside an authenticated chunk could only come from a
            # holder of the key, so the frame walk plain dumps get (zframe) has nothing left to catch.
            if source.read(settings.chunk_size):
                raise ChecksumMismatch(f"{bounds.where}: sealed dump holds bytes after its zstd frame")
            while source.read(settings.chunk_size):
                pass
    if dst_fd is not None:
        os.fsync(dst_fd)
    return StreamDigest(size, out_hash.hexdigest() if hash_output else None, source.size, in_hash.hexdigest())


def _drop(piece: bytes) -> None:
    pass  # no tee: the third consumer thread idles


class _Teed:
    """``read`` of another reader, each piece also handed to ``tee``."""

    def __init__(self, inner: StoredReader, tee: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._tee = tee

    def read(self, size: int) -> bytes:
        data = self._inner.read(size)
        if data:
            self._tee(data)
        return data


class _Offload:
    """Hand each piece to another thread (write it, hash it).

    Decompressing runs at several GB/s; writing and SHA-256 (about 1.2 GB/s here) are the
    slow parts, and all of them release the GIL. Overlapping them with the read-decompress
    loop is what lets a verified read keep up with ``zstd -d`` (bench/ingest.py).
    The queue is short, so memory stays at a few pieces whatever the expansion, and an
    error in the consumer is raised in the caller's thread.
    """

    _DEPTH = 4

    def __init__(self, consume: Callable[[bytes], None]) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytes | None] = queue.Queue(self._DEPTH)
        self._thread = threading.Thread(target=self._run, name="zstream-consumer", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> _Offload:
        self._thread.start()
        return self

    def put(self, piece: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(piece)

    def __exit__(self, kind: object, *_: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and kind is None:
            raise self._error

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._consume(piece)
                except BaseException as err:  # re-raised in the producer's thread  # noqa: BLE001
                    self._error = err


class StoredReader:
    """A file-like ``read`` over a stored dump: at most one byte past the manifest's ``compressedSize`` is
    read, and every byte read is handed to ``hash_input`` as it was stored. A sealed dump (``opener``) is
    opened chunk by chunk, so ``read`` returns its plaintext, a whole chunk at a time whatever ``size``
    asks (zstandard takes what it is given). Its last chunk is the one that reaches the end of the file:
    sealed as last, it alone opens there, and the end is checked right after it."""

    def __init__(self, fd: int, cancel: threading.Event, hash_input: Callable[[bytes], None], bounds: Bounds,
                 opener: seal.Opener | None = None) -> None:
        self._fd = fd
        self._cancel = cancel
        self._hash_input = hash_input
        self._bounds = bounds
        self._opener = opener
        self._end = os.fstat(fd).st_size if opener is not None else 0
        self.size = 0

    def read(self, size: int) -> bytes:
        if self._opener is None:
            return self._read(size)
        try:
            return self._read_sealed(self._opener)
        except seal.SealError as err:
            raise ChecksumMismatch(f"{self._bounds.where}: sealed dump {err}") from None

    def _read_sealed(self, opener: seal.Opener) -> bytes:
        if opener.finished:
            return b""
        if not opener.step:
            opener.begin(self._read_exact(seal.HEADER_SIZE))
        remaining = max(self._end - self.size, 0)
        last = remaining <= opener.step
        wanted = remaining if last else opener.step
        chunk = self._read_exact(wanted)
        if len(chunk) < wanted:
            raise seal.SealError(f"ends inside chunk {opener.index} (the file shrank while it was read)")
        plain = opener.open(chunk, last)
        if last and self._read(1):
            raise seal.SealError("has bytes after its last chunk (the file grew while it was read)")
        return plain

    def _read_exact(self, count: int) -> bytes:
        data = self._read(count)
        if len(data) == count or not data:
            return data
        parts = [data]
        got = len(data)
        while got < count and (more := self._read(count - got)):
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def _read(self, size: int) -> bytes:
        if self._cancel.is_set():
            raise Cancelled(f"read cancelled at byte {self.size}")
        # At most one byte past the bound: enough to know the dump is longer than promised.
        data = os.read(self._fd, min(size, self._bounds.compressed_size + 1 - self.size))
        self.size += len(data)
        if self.size > self._bounds.compressed_size:
            raise ChecksumMismatch(f"{self._bounds.where}: stored dump is longer than the manifest's "
                                   f"compressedSize ({self._bounds.compressed_size} bytes); not read further")
        self._hash_input(data)
        return data
