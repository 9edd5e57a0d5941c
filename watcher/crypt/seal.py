"""The sealed dump format, ``lpm-seal-v1`` (docs/encryption.md): a stream cut into AES-256-GCM chunks.

A sealed dump is a 12-byte header, then chunks: every chunk but the last holds exactly
``chunk_size`` plaintext bytes, the last holds 0 to ``chunk_size``; each is its ciphertext
followed by the 16-byte GCM tag. The nonce of chunk ``i`` is ``i`` as 11 big-endian bytes and a
last-chunk flag byte (1 on the last chunk, else 0), and every chunk's associated data is the
header: the STREAM construction (Hoang, Reyhanitabar, Rogaway and Vizár, 2015). So:

- a nonce never repeats under one data key: one key seals one dump, and the counter only grows;
- reordered, swapped, duplicated or dropped chunks fail (their index is in the nonce), and so do
  chunks from another dump (another data key);
- a dump cut after any chunk fails: the chunk that now ends it was sealed as not-last; bytes
  added after the last chunk make it not-last; a header edited to another chunk size fails every tag.

Every dump has its own random 32-byte data key. The manifest holds it wrapped (AES-256-GCM under
the key-encryption key, with the artifact URI as associated data, so a wrapped key moved to
another artifact's manifest does not open) and the key's ID.

Pure: no files. The store streams bytes through ``Sealer`` on ingest and ``Opener`` on every read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = "lpm-seal-v1"
MAGIC = b"LPMSEAL"
VERSION = 1
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
HEADER_SIZE = len(MAGIC) + 1 + 4
CHUNK_SIZE = 1 << 20
"""What the writer uses: per chunk the tag costs 16 bytes in a MiB and the reader holds two chunks."""
MAX_CHUNK_SIZE = 8 << 20
MIN_CHUNK_SIZE = 4096
_HEADER = struct.Struct(">7sBI")
_WRAP_CONTEXT = b"lpm dump key v1\0"
WRAPPED_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE


class SealError(ValueError):
    """The sealed bytes do not open: damaged, cut, reordered, or sealed under another key. Says where."""


@dataclass(frozen=True)
class Sealed:
    """What a manifest records of an encrypted dump (its ``encryption`` object)."""

    key_id: str
    """The key-encryption key's ID: its file name in ``--encryption-keys``."""
    wrapped_key: bytes
    """The dump's data key, wrapped: nonce (12) || AES-256-GCM ciphertext of the key (32) || tag (16)."""
    format: str = FORMAT


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(NONCE_SIZE - 1, "big") + (b"\x01" if last else b"\x00")


def header(chunk_size: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, chunk_size)


def parse_header(data: bytes) -> int:
    """The chunk size a header declares; SealError unless it is one this reader accepts."""
    magic, version, chunk_size = _HEADER.unpack(data)
    assert isinstance(chunk_size, int)
    if magic != MAGIC:
        raise SealError("does not start with the sealed dump header")
    if version != VERSION:
        raise SealError(f"is sealed in format version {version}, this reader knows {VERSION}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise SealError(f"declares chunks of {chunk_size} bytes, outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    return chunk_size


def wrap(kek: bytes, data_key: bytes, key_id: str, context: str) -> Sealed:
    """Wrap ``data_key`` under ``kek``, bound to ``context`` (the artifact URI)."""
    nonce = os.urandom(NONCE_SIZE)
    return Sealed(key_id, nonce + AESGCM(kek).encrypt(nonce, data_key, _WRAP_CONTEXT + context.encode()))


def unwrap(kek: bytes, sealed: Sealed, context: str) -> bytes:
    """The data key, or SealError when ``kek`` is not the key that wrapped it for ``context``."""
    nonce, body = sealed.wrapped_key[:NONCE_SIZE], sealed.wrapped_key[NONCE_SIZE:]
    try:
        return AESGCM(kek).decrypt(nonce, body, _WRAP_CONTEXT + context.encode())
    except InvalidTag:
        raise SealError("wrapped data key does not open") from None


class Sealer:
    """Seal a stream fed in pieces of any size; ``finish`` seals the last chunk. Output starts with the header."""

    def __init__(self, data_key: bytes, chunk_size: int = CHUNK_SIZE) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        self._aead = AESGCM(data_key)
        self._chunk_size = chunk_size
        self._header = header(chunk_size)
        self._pending = bytearray(self._header)  # the header goes out with the first output
        self._plain = bytearray()
        self._index = 0
        self._finished = False

    def feed(self, data: bytes | memoryview) -> bytes:
        """Take plaintext; return the sealed chunks it completed (possibly nothing)."""
        if self._finished:
            raise ValueError("sealer already finished")
        self._plain += data
        size = self._chunk_size
        # Strictly more than a chunk: the chunk sealed here is followed by at least one byte, so it is
        # not the last. The last one is sealed by finish() with whatever remains (0 to chunk_size bytes).
        if len(self._plain) <= size:
            return b""
        out: list[bytes] = [bytes(self._pending)] if self._pending else []
        self._pending = bytearray()
        start = 0
        with memoryview(self._plain) as view:
            while len(self._plain) - start > size:
                out.append(self._aead.encrypt(_nonce(self._index, False), view[start:start + size], self._header))
                self._index += 1
                start += size
        del self._plain[:start]
        # One chunk per call is the common case (zstd hands out ~128 KiB at a time): returned without a copy.
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """Seal what remains as the last chunk; return it (with the header when nothing came out before)."""
        if self._finished:
            raise ValueError("sealer already finished")
        self._finished = True
        out = self._pending + self._aead.encrypt(_nonce(self._index, True), bytes(self._plain), self._header)
        self._plain = bytearray()
        return bytes(out)


class Opener:
    """Open a sealed stream. Either fed in pieces of any size (``feed``, then ``finish`` at the end of the
    input, which opens the last chunk, so a cut stream fails there), holding at most two chunks; or, when
    the reader knows where the input ends, chunk by chunk (``begin`` with the header, then ``open`` each
    ``step``-byte chunk saying whether it is the last), which copies nothing. Errors are SealError saying
    what is wrong, and where."""

    def __init__(self, data_key: bytes) -> None:
        self._aead = AESGCM(data_key)
        self._buffer = bytearray()
        self._header: bytes | None = None
        self.step = 0
        """Bytes of a whole sealed chunk (chunk size + tag); 0 until the header is read."""
        self._index = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def index(self) -> int:
        """The index of the next chunk to open."""
        return self._index

    def begin(self, header_bytes: bytes) -> int:
        """Take the header; returns ``step``."""
        if len(header_bytes) < HEADER_SIZE:
            raise SealError("ends inside its header")
        self.step = parse_header(header_bytes) + TAG_SIZE
        self._header = bytes(header_bytes)
        return self.step

    def open(self, chunk: bytes | memoryview, last: bool) -> bytes:
        """The plaintext of the next chunk (``step`` bytes unless it is the last, which may be shorter)."""
        if self._header is None or self._finished:
            raise SealError("has a chunk before its header or after its last chunk")
        try:
            plain = self._aead.decrypt(_nonce(self._index, last), chunk, self._header)
        except InvalidTag:
            what = "last chunk" if last else "chunk"
            raise SealError(f"{what} {self._index} (at byte {HEADER_SIZE + self._index * self.step}) does not "
                            "authenticate: damaged, reordered, cut short, or not sealed with this dump's key") from None
        self._index += 1
        self._finished = last
        return plain

    def feed(self, data: bytes | memoryview) -> bytes:
        if self._finished:
            if data:
                raise SealError("has bytes after its last chunk")
            return b""
        self._buffer += data
        if self._header is None:
            if len(self._buffer) < HEADER_SIZE:
                return b""
            self.begin(bytes(self._buffer[:HEADER_SIZE]))
            del self._buffer[:HEADER_SIZE]
        step = self.step
        if len(self._buffer) <= step:
            return b""
        out: list[bytes] = []
        start = 0
        with memoryview(self._buffer) as view:
            while len(self._buffer) - start > step:  # followed by more: not the last chunk
                out.append(self.open(view[start:start + step], last=False))
                start += step
        del self._buffer[:start]
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """The last chunk's plaintext; SealError when the stream ended early or its end was altered."""
        if self._finished:
            return b""
        if self._header is None:
            raise SealError("ends inside its header")
        if len(self._buffer) < TAG_SIZE:
            raise SealError(f"ends inside chunk {self._index}")
        plain = self.open(bytes(self._buffer), last=True)
        self._buffer = bytearray()
        return plain
