"""The stored dump as the checkpoint image's layer, streamed to the runtime: no copy on the node.

The store already holds what an OCI layer of media type ``tar+zstd`` is: one zstd frame of the
kubelet's tar. So the destination sends ``dump.tar.zst`` to the runtime as it is, inside the OCI
archive ``ctr images import`` reads from a pipe::

    oci-layout
    blobs/sha256/<checksumSHA256>      the stored dump, byte for byte (digest: the stored SHA-256)
    blobs/sha256/<config>              rootfs.diff_ids = [the raw archive's SHA-256]
    blobs/sha256/<image manifest>      the layer as tar+zstd, the checkpoint annotations (image.py)
    index.json                         last, and only once every check below has held

and reads the dump only once: each stored piece goes to the runtime and, decompressed on another
thread, through lpm's tar scanner, while both SHA-256 sums are computed (retrieve.stream). Before,
the dump was decompressed to a file, re-written as a normalised uncompressed layer and copied again
into the runtime's content store: three passes over the raw size inside the freeze window.

Why this is as safe as the normalised layer (docs/restore-layer.md says it at length):

- The bytes the runtime unpacks are the ones lpm checked. The runtime names the blob by the SHA-256
  it computes itself and finds the layer by the digest in the image manifest, which is the stored
  SHA-256 that lpm verified over the same bytes; when unpacking it checks the tar's SHA-256 against
  the config's diff ID, which is the raw SHA-256 that lpm verified too.
- What those bytes hold was checked with the rules the normalised layer enforces: the names every
  reader resolves alike (the tar scanner, tested against Go's archive/tar), only files, directories
  and symlinks, links that stay inside, nothing under a file or link, no name twice; and, because
  here nothing is normalised, no setuid, setgid or sticky bits and no pax records beyond names,
  sizes, times and owners (no xattrs, so no file capabilities). An archive outside those rules is
  refused, not repaired.
- Nothing is imported unless every check holds: ``index.json`` goes out last. A failed check ends
  the stream without it, so the runtime holds at most an unreferenced blob (its garbage collector
  takes it) and no image.

Runtimes that read an OCI layout directory (skopeo, for containers-storage and registries) keep the
normalised path (pipeline.py).
"""

from __future__ import annotations

import hashlib
import tarfile
from typing import BinaryIO

from watcher.archive.tarscan import Member, TarScanner
from watcher.errors import ArchiveError, ChecksumMismatch
from watcher.restore import layer
from watcher.restore.image import (
    OCI_LAYOUT,
    Platform,
    check_names,
    config_dump_entry,
    host_platform,
    parse_config_dump,
    plan_image,
)
from watcher.restore.source import Source
from watcher.store import layout
from watcher.store.manifest import Manifest

_BLOCK = tarfile.BLOCKSIZE
# pax records that say no more than a plain header could: anything else (SCHILY.xattr.*, say) would be
# applied by the runtime as it unpacks, and the normalised layer never carried it.
_PLAIN_RECORDS = frozenset({"path", "linkpath", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"})


_OTHER_KINDS = {b"1": "hard link", b"3": "device node", b"4": "device node", b"6": "FIFO"}


class _ImporterGone(Exception):  # noqa: N818  (a signal carried through the store's reader, never raised out)
    """Writing to the importer failed (it exited and closed the pipe): not the store's fault, so it must
    not pass through the store reader's OSError mapping, which would call the checkpoint unreadable."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _ArchiveOut:
    """The OCI archive's tar, written member by member to a stream (a pipe to the runtime's importer)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._left = 0
        self._pad = 0

    def begin(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, 0
        self._out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))
        self._left, self._pad = size, -size % _BLOCK

    def write(self, data: bytes) -> None:
        if len(data) > self._left:  # the store's reader stops at compressedSize; this is the tar's own guard
            raise ArchiveError(f"OCI archive member overrun by {len(data) - self._left} bytes")
        try:
            self._out.write(data)
        except OSError as err:
            raise _ImporterGone(err) from None
        self._left -= len(data)

    def end(self) -> None:
        if self._left:
            raise ArchiveError(f"OCI archive member short by {self._left} bytes")
        self._out.write(bytes(self._pad))

    def add(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self.write(data)
        self.end()

    def close(self) -> None:
        self._out.write(bytes(2 * _BLOCK))


class _LayerScan:
    """The raw archive as it streams past: read by the tar scanner, then held to the layer's rules."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._scanner = TarScanner(frozenset({"config.dump"}), where, keep_members=True)

    def feed(self, piece: bytes) -> None:
        self._scanner.feed(piece)
        if len(self._scanner.result.members) > layer.MEMBER_CAP:  # before the list grows any further
            raise ArchiveError(f"{self._where}: more than {layer.MEMBER_CAP} entries")

    def finish(self) -> bytes:
        """config.dump's bytes, once the whole archive is known to follow the rules."""
        result = self._scanner.finish()
        entries: dict[str, layer.Entry] = {}
        for member in result.members:
            entry = _entry(member, self._where)
            if entry.name in entries:
                raise ArchiveError(f"{self._where}: {entry.name!r} appears twice")
            entries[entry.name] = entry
        layer.check_links(entries, self._where)
        config_dump_entry(list(entries.values()), self._where)
        return result.captured["config.dump"]


def _entry(member: Member, where: str) -> layer.Entry:
    kind = layer.KINDS.get(member.kind)
    if kind is None:
        what = _OTHER_KINDS.get(member.kind, f"tar entry of type {member.kind!r}")
        raise ArchiveError(f"{where}: {member.name!r} is a {what}; only files, directories and symlinks may be "
                           "in a checkpoint image's layer")
    if not member.name:
        raise ArchiveError(f"{where}: unsafe member name '.' (the archive's root itself, which a layer cannot hold)")
    if member.mode & 0o7000:
        raise ArchiveError(f"{where}: {member.name!r} has mode {member.mode:o} (setuid, setgid or sticky), "
                           "which the runtime would apply as it unpacks")
    extra = sorted(member.records - _PLAIN_RECORDS)
    if extra:
        raise ArchiveError(f"{where}: {member.name!r} carries pax records {', '.join(extra)[:200]}, which the "
                           "runtime would apply as it unpacks (xattrs, say)")
    return layer.Entry(member.name, kind, member.mode & 0o777, member.size, member.offset, member.target)


def _opened_layer(source: Source, ref: layout.ArtifactRef) -> tuple[str, int]:
    """A sealed dump read whole and checked: its opened zstd stream's SHA-256 (hex) and size."""
    digest, size = hashlib.sha256(), 0

    def count(piece: bytes) -> None:
        nonlocal size
        digest.update(piece)
        size += len(piece)

    source.stream(ref, count, lambda piece: None)
    return digest.hexdigest(), size


def write_archive(source: Source, ref: layout.ArtifactRef, manifest: Manifest, out: BinaryIO, tag: str,
                  platform: Platform | None = None) -> None:
    """Write the checkpoint image of ``ref`` to ``out`` as an OCI archive, its layer the stored dump.

    ``manifest`` is the store's, as read before (it names the blob up front); ``index.json`` is
    written only once the dump matched it in full and its archive passed the layer's rules, so a
    failure raises with the archive cut short and nothing importable in it.
    """
    where = f"artifact {ref.uri}"
    check_names(ref.container, tag)
    platform = platform or host_platform()
    tar = _ArchiveOut(out)
    tar.add("oci-layout", OCI_LAYOUT)
    sent = hashlib.sha256()
    if manifest.encryption is None:
        digest, size = manifest.checksum_sha256, manifest.compressed_size  # the stored bytes are the layer
    else:
        # Sealed (docs/encryption.md): the layer is the opened zstd stream, whose digest and size no manifest
        # records. A first read checks the whole dump and learns them; the second, the one sent, must give
        # the same bytes again (a dump changed in between fails here, and in containerd's own digest check).
        digest, size = _opened_layer(source, ref)

    def tee(piece: bytes) -> None:
        if manifest.encryption is not None:  # a plain dump's bytes are hashed as stored, by retrieve
            sent.update(piece)
        tar.write(piece)

    tar.begin(f"blobs/sha256/{digest}", size)
    scan = _LayerScan(where)
    try:
        read = source.stream(ref, tee, scan.feed)
    except _ImporterGone as gone:
        raise gone.cause from None  # the importer's own error says why it stopped reading
    if read != manifest:
        raise ArchiveError(f"{where}: its manifest changed while the dump was read")
    tar.end()
    if manifest.encryption is not None and sent.hexdigest() != digest:
        raise ChecksumMismatch(f"{where}: the opened dump changed between its check and its import")
    config = parse_config_dump(scan.finish(), where)
    blob = layer.LayerDigest(f"sha256:{digest}", size, layer.ZSTD_MEDIA_TYPE,
                             f"sha256:{manifest.uncompressed_sha256}")
    plan = plan_image(blob, ref.container, config, platform, tag)
    for image_blob in (plan.config, plan.manifest):
        tar.add(f"blobs/sha256/{image_blob.digest.removeprefix('sha256:')}", image_blob.data)
    tar.add("index.json", plan.index)
    tar.close()
