"""A kubelet checkpoint archive re-written as one reproducible, uncompressed OCI layer.

The layer holds the archive's files at its root, which is where podman, CRI-O and
containerd look for ``config.dump``, ``spec.dump`` and ``checkpoint/``. Entries go out in
sorted order with uid/gid 0, empty owner names, mtime 0 and permission bits only, in PAX
format, so the same files always give the same bytes (for one version of ``tarfile``'s
header encoder) whatever order, owners or times the runtime wrote.

Two steps over one open file: ``index_archive`` reads only the headers (``tarfile`` seeks
over the data) and checks every name; ``write_layer`` then copies each member's data by
offset into one reused buffer while hashing, so memory does not grow with the archive.
The archive comes verified from the store, but this reads it as untrusted all the same:
it is what a runtime will unpack as root on the destination node. And ``tarfile`` is not
what the runtime unpacks with (Go's ``archive/tar`` is), so the index is also read a second
way, by lpm's tar scanner, which refuses whatever Go and ``tarfile`` could name or frame
differently; the two readings must then agree member for member (name, kind, data offset and
size), or the archive is refused. A forged dump from another node's write never went
through the ingest's scan: this is where it meets one.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from enum import Enum
from typing import BinaryIO

from watcher.archive.tarscan import EXTENDED_HEADER_CAP, Member, TarScanner
from watcher.errors import ArchiveError

BLOCK = tarfile.BLOCKSIZE
# Headers are indexed before anything is written (sorting needs them all). CRIU writes
# tens of image files per process; 65536 entries is far past any real container and
# bounds the index (about 1 KiB of Python objects per entry) for a hostile one.
MEMBER_CAP = 1 << 16
COPY_CHUNK = 1 << 20
_SCAN_CHUNK = 1 << 18
_END_OF_ARCHIVE = bytes(2 * BLOCK)


class Kind(Enum):
    FILE = "file"
    DIR = "directory"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class Entry:
    name: str
    """Normalised: relative, no empty, ``.`` or ``..`` segments, no trailing slash."""
    kind: Kind
    mode: int
    size: int
    offset: int
    """Where the member's data starts in the source archive."""
    target: str = ""
    """A symlink's target, checked to stay inside the layer."""


TAR_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
ZSTD_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"


@dataclass(frozen=True)
class LayerDigest:
    digest: str
    """``sha256:<hex>`` of the blob as stored."""
    size: int
    media_type: str = TAR_MEDIA_TYPE
    diff_id: str = ""
    """``sha256:<hex>`` of the tar the blob decompresses to; empty for an uncompressed layer (its digest)."""


class _HeaderReader:
    """The archive as ``tarfile`` sees it: headers only, so any one read is capped.

    ``tarfile`` reads a pax or GNU long-name header whole, whatever size it claims; the
    cap (the tar scanner's) stops a hostile archive from making us buffer gigabytes.
    Member data never goes through here: ``write_layer`` copies it by offset.
    """

    def __init__(self, file: BinaryIO, where: str) -> None:
        self._file = file
        self._where = where

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > EXTENDED_HEADER_CAP:
            raise ArchiveError(f"{self._where}: a tar header of {size} bytes exceeds the {EXTENDED_HEADER_CAP} cap")
        return self._file.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def index_archive(file: BinaryIO, where: str) -> list[Entry]:
    """Every member of the archive in ``file``, checked and sorted by name."""
    entries: dict[str, Entry] = {}
    try:
        # The stub wants a file that can also write and close; reading uses read/seek/tell.
        with tarfile.open(fileobj=_HeaderReader(file, where), mode="r:") as tar:  # type: ignore[call-overload]
            while (member := tar.next()) is not None:
                if len(entries) == MEMBER_CAP:
                    raise ArchiveError(f"{where}: more than {MEMBER_CAP} entries")
                entry = _entry(member, where)
                if entry.name in entries:
                    raise ArchiveError(f"{where}: {entry.name!r} appears twice")
                entries[entry.name] = entry
            end = tar.offset
    except (tarfile.TarError, ValueError, EOFError) as err:
        # tarfile lets a malformed pax record out as a bare ValueError ("+19 path=..." for one).
        raise ArchiveError(f"{where}: not a readable tar archive ({err or type(err).__name__})") from None
    # tarfile ends quietly at a corrupt header or at a truncated end; an archive that the
    # runtime finished has its two zero blocks right after the last member.
    if os.pread(file.fileno(), len(_END_OF_ARCHIVE), end) != _END_OF_ARCHIVE:
        raise ArchiveError(f"{where}: no end-of-archive blocks at byte {end} (truncated or corrupt)")
    check_links(entries, where)
    _same_as_scanner(file.fileno(), list(entries.values()), where)
    return [entries[name] for name in sorted(entries)]


def _same_as_scanner(fd: int, indexed: list[Entry], where: str) -> None:
    """Read the archive again with lpm's scanner; both readings must name and place every member alike."""
    scanner = TarScanner(frozenset(), where, keep_members=True)
    buffer = memoryview(bytearray(_SCAN_CHUNK))  # one reused buffer: memory must not grow with the archive
    offset = 0
    while count := os.preadv(fd, [buffer], offset):
        scanner.feed(buffer[:count])
        offset += count
    scanned = scanner.finish().members
    if len(scanned) != len(indexed):
        raise ArchiveError(f"{where}: tarfile reads {len(indexed)} members, lpm's tar scanner {len(scanned)}")
    for number, (entry, member) in enumerate(zip(indexed, scanned, strict=True), 1):
        if (entry.name, entry.kind, entry.offset) != (member.name, KINDS.get(member.kind), member.offset) or (
                entry.kind is Kind.FILE and entry.size != member.size):
            raise ArchiveError(f"{where}: member {number} reads as {entry.name!r} ({entry.kind.value}, "
                               f"{entry.size} bytes at {entry.offset}) to tarfile but as {_show(member)} to "
                               "lpm's tar scanner")


KINDS = {b"0": Kind.FILE, b"\0": Kind.FILE, b"7": Kind.FILE, b"5": Kind.DIR, b"2": Kind.SYMLINK}


def _show(member: Member) -> str:
    kind = KINDS.get(member.kind)
    what = kind.value if kind else f"type {member.kind!r}"
    return f"{member.name!r} ({what}, {member.size} bytes at {member.offset})"


def _entry(member: tarfile.TarInfo, where: str) -> Entry:
    name = _safe_name(member.name, where)
    # Permission bits only: setuid/setgid/sticky mean nothing on checkpoint data.
    mode = member.mode & 0o777
    if member.isreg() and not member.issparse():
        return Entry(name, Kind.FILE, mode, member.size, member.offset_data)
    if member.isdir():
        return Entry(name, Kind.DIR, mode, 0, member.offset_data)
    if member.issym():
        return Entry(name, Kind.SYMLINK, mode, 0, member.offset_data, member.linkname)
    # Hard links would need their target earlier in the layer than sorted order promises,
    # and devices or FIFOs have no place in a checkpoint: no runtime writes any of them.
    raise ArchiveError(f"{where}: {name!r} is a {_kind_name(member)}; only files, directories and symlinks are copied")


def _safe_name(raw: str, where: str) -> str:
    """``raw`` as a relative path inside the layer, or an error: absolute, ``..``, NUL, not UTF-8."""
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if raw.startswith("/") or "\0" in raw or ".." in parts or not parts:
        raise ArchiveError(f"{where}: unsafe member name {raw!r} (absolute, '..', NUL or empty)")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveError(f"{where}: member name {raw!r} is not UTF-8") from None
    return "/".join(parts)


def check_links(entries: dict[str, Entry], where: str) -> None:
    """Symlinks must resolve inside the layer, and no path may lead through one (or a file).

    Checked on names alone (lexically), which is sound only when no path component is
    itself a symlink; so a member under a symlink, or a target passing through one, is
    refused rather than resolved. CRIU's ``parent`` link to a pre-dump is the real case.
    """
    links = {name for name, entry in entries.items() if entry.kind is Kind.SYMLINK}
    for name, entry in entries.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            above = entries.get("/".join(parts[:depth]))
            if above is not None and above.kind is not Kind.DIR:
                raise ArchiveError(f"{where}: {name!r} lies under the {above.kind.value} {above.name!r}")
        if entry.kind is Kind.SYMLINK and not _resolves_inside(parts[:-1], entry.target, links):
            raise ArchiveError(f"{where}: symlink {name!r} -> {entry.target!r} points outside the archive")


def _resolves_inside(directory: list[str], target: str, links: set[str]) -> bool:
    if not target or target.startswith("/") or "\0" in target:
        return False
    path = list(directory)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not path:
                return False
            path.pop()
            continue
        path.append(part)
        if "/".join(path) in links:
            return False  # a chain: lexical resolution no longer says where it ends
    return True


def _kind_name(member: tarfile.TarInfo) -> str:
    if member.islnk():
        return "hard link"
    if member.issparse():
        return "sparse file"
    if member.ischr() or member.isblk():
        return "device node"
    if member.isfifo():
        return "FIFO"
    return f"tar entry of type {member.type!r}"


def _header(entry: Entry) -> bytes:
    """The normalised tar header(s) for ``entry``: only its name, kind, mode, size and target."""
    info = tarfile.TarInfo(entry.name)
    info.type = {Kind.FILE: tarfile.REGTYPE, Kind.DIR: tarfile.DIRTYPE, Kind.SYMLINK: tarfile.SYMTYPE}[entry.kind]
    info.mode = entry.mode
    info.size = entry.size
    info.linkname = entry.target
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def write_layer(src_fd: int, entries: list[Entry], out: BinaryIO, where: str) -> LayerDigest:
    """Write the layer to ``out`` in one pass, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(COPY_CHUNK)
    view = memoryview(buffer)

    def emit(data: bytes | memoryview) -> None:
        nonlocal size
        digest.update(data)
        out.write(data)
        size += len(data)

    for entry in entries:
        emit(_header(entry))
        if entry.kind is not Kind.FILE:
            continue
        done = 0
        while done < entry.size:
            count = os.preadv(src_fd, [view[: min(COPY_CHUNK, entry.size - done)]], entry.offset + done)
            if not count:
                raise ArchiveError(f"{where}: {entry.name!r} ends after {done} of its {entry.size} bytes")
            emit(view[:count])
            done += count
        emit(bytes(-entry.size % BLOCK))
    emit(_END_OF_ARCHIVE)
    return LayerDigest(f"sha256:{digest.hexdigest()}", size)
