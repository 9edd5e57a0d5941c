"""A push-mode tar scanner: fed the archive's bytes as they stream past, it checks the
structure and captures a few small metadata entries. It does no I/O.

Why not ``tarfile``: it pulls bytes itself (so it cannot ride along the compressor's single
pass without threads), and in stream mode it treats a truncated member or header as a
normal end of archive. lpm must tell a finished archive from one the kubelet's runtime is
still writing in place, so "complete" here means: every header checksums, every member's
data is all there, and two zero blocks close the archive.

Formats: ustar / POSIX pax (``x`` and ``g`` headers, as Go's archive/tar writes for CRI-O,
containerd and podman) and GNU long names (``L``/``K``). Untrusted input, so every size is
capped before anything is buffered.

One identity, whatever reads the tar. The runtimes unpack with Go's ``archive/tar`` and the
restore's layer writer with Python's ``tarfile``; the two resolve a member's name differently
when its name sources disagree (Go: a GNU long name beats a pax ``path``, an empty pax value
keeps the header's; ``tarfile``: the first extended header wins, and the ustar ``prefix``
field is read whatever the magic says), and they frame the data differently when a directory
or link claims a size. A hostile archive could then show lpm one ``spec.dump`` and the
runtime another. So a member is refused unless every reader must see the same name and the
same data: at most one pax header, one long name and one long link per member, never both a
long name and a pax ``path`` (nor a long link and a pax ``linkpath``), no empty name from an
extended header, no global header carrying what a reader would take as a member's name or
size, no header fields that ``tarfile`` and Go read as different names, no size on a
member that has no data, no trailing ``/`` on anything but a directory, no sparse files.
``tests/test_tar_identity.py`` checks these against Go's own reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from watcher.errors import ArchiveError, ArchiveIncomplete

BLOCK = 512
# Metadata entries the agent reads (spec.dump, config.dump) are kilobytes in practice;
# 1 MiB leaves room and bounds what a hostile archive can make us hold.
METADATA_CAP = 1 << 20
# pax and GNU long-name headers: generous for real paths, bounded for hostile ones.
EXTENDED_HEADER_CAP = 1 << 20

_REGULAR = (b"0", b"\0", b"7")
_DIRECTORY = b"5"
_PAX_LOCAL = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_EXTENDED = (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK)
# Members that have no data whatever their size field says (Go's isHeaderOnlyType; tarfile
# agrees): hard link, symlink, character and block device, directory, FIFO.
_HEADER_ONLY = (b"1", b"2", b"3", b"4", b"5", b"6")
# Types the readers disagree on: tarfile takes Solaris ``X`` as a pax header, Go as a member;
# old GNU sparse ``S`` members may be followed by extension blocks lpm does not frame.
_REFUSED_TYPES = {b"X": "a Solaris extended header", b"S": "an old GNU sparse file"}
# pax records that change a member's name or framing in some reader: refused in a global
# header (Go ignores them there, tarfile applies them), and GNU.sparse.* anywhere.
_NAMING_KEYS = ("path", "linkpath", "size")
_MAGIC_USTAR = b"ustar\x00"
_TRAILER_STAR = b"tar\x00"


@dataclass(frozen=True)
class Member:
    """One member as every reader sees it: its normalised name, type, data offset and size."""

    name: str
    kind: bytes
    offset: int
    size: int
    mode: int = 0
    """The header's mode field, all of it (special bits included)."""
    target: str = ""
    """A link's target, from whichever single source names it (pax ``linkpath``, GNU long link, header)."""
    records: frozenset[str] = frozenset()
    """The keys of the member's pax records (xattrs show up here)."""


@dataclass
class ScanResult:
    captured: dict[str, bytes] = field(default_factory=dict)
    entries: int = 0
    # Top-level names seen, for telling runtimes apart (containerd adds ``status``).
    top_level: set[str] = field(default_factory=set)
    # Every member, in order, when the scanner was asked to keep them (the layer writer's cross-check).
    members: list[Member] = field(default_factory=list)


class MemberSink(Protocol):
    """Where a tapped member's data goes, as it streams past (``TarScanner``'s ``tap``)."""

    def feed(self, chunk: memoryview) -> None: ...

    def close(self) -> None:
        """The member's last byte went past (not called when the archive ends inside it)."""


Tap = Callable[[Member], "MemberSink | None"]
"""Asked at each member that is not captured (its name checked and normalised): a sink for its data, or None."""


class TarScanner:
    """Feed bytes with ``feed``; call ``finish`` at end of input."""

    def __init__(self, capture: frozenset[str], where: str, keep_members: bool = False, tap: Tap | None = None) -> None:
        self._capture_names = capture
        self._where = where
        self._keep_members = keep_members
        self._tap = tap
        self._tapped: MemberSink | None = None
        self._offset = 0  # archive offset of the block being assembled or the data consumed
        self._block = bytearray()
        self._zero_blocks = 0
        self._ended = False
        self._content_left = 0
        self._pad_left = 0
        self._sink: bytearray | None = None
        self._sink_kind: bytes | None = None
        self._entry_name = ""
        # The extended headers waiting for their member (None: none seen for it yet).
        self._pax: dict[str, str] | None = None
        self._long_name: str | None = None
        self._long_link: str | None = None
        self.result = ScanResult()

    @property
    def ended(self) -> bool:
        return self._ended

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        pos, size = 0, len(view)
        while pos < size:
            if self._ended:
                self._check_trailer(view[pos:])
                self._offset += size - pos
                return
            if self._content_left or self._pad_left:
                pos += self._consume_data(view, pos)
                continue
            take = min(BLOCK - len(self._block), size - pos)
            self._block += view[pos : pos + take]
            pos += take
            if len(self._block) == BLOCK:
                block = bytes(self._block)
                self._block.clear()
                self._on_block(block)
                self._offset += BLOCK

    def finish(self) -> ScanResult:
        if not self._ended:
            if self._content_left or self._pad_left:
                detail = f"inside the data of {self._entry_name!r}"
            else:
                detail = "before its end-of-archive blocks"
            raise ArchiveIncomplete(
                f"archive {self._where}: ends at byte {self._offset + len(self._block)} {detail} "
                "(still being written, or truncated)"
            )
        return self.result

    def _fail(self, reason: str) -> ArchiveError:
        return ArchiveError(f"archive {self._where}: {reason} (at byte {self._offset})")

    def _consume_data(self, view: memoryview, pos: int) -> int:
        start = pos
        if self._content_left:
            take = min(self._content_left, len(view) - pos)
            if self._sink is not None:
                self._sink += view[pos : pos + take]
            elif self._tapped is not None:
                self._tapped.feed(view[pos : pos + take])
            self._content_left -= take
            pos += take
            self._offset += take
        if not self._content_left and self._pad_left and pos < len(view):
            take = min(self._pad_left, len(view) - pos)
            self._pad_left -= take
            pos += take
            self._offset += take
        if not self._content_left and not self._pad_left:
            self._end_member()
        return pos - start

    def _check_trailer(self, rest: memoryview) -> None:
        # Writers pad after the two zero blocks (GNU tar to 10 KiB records); anything
        # else there is not part of a tar archive.
        if rest.tobytes().strip(b"\0"):
            raise self._fail("non-zero data after the end-of-archive blocks")

    def _on_block(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self._ended = True
            return
        if self._zero_blocks:
            raise self._fail("a header follows a lone zero block")
        self._on_header(block)

    def _on_header(self, block: bytes) -> None:
        stored = _number(block[148:156])
        if stored is None or stored not in _checksums(block):
            if self._offset == 0:
                raise ArchiveError(f"archive {self._where}: not a tar archive (bad header checksum)")
            raise self._fail("bad tar header checksum")
        kind = block[156:157]
        if kind in _REFUSED_TYPES:
            raise self._fail(f"{_REFUSED_TYPES[kind]} (type {kind!r}), which tar readers frame or name differently")
        size = _number(block[124:136])
        if size is None:
            raise self._fail("unreadable size field in tar header")
        pax = self._pax or {}
        if kind in _EXTENDED:
            self._check_extended_order(kind)
            name = f"<{kind.decode()} header>"
        else:
            if "size" in pax:
                size = _pax_int(pax["size"], self._fail)
            name = self._member_name(block, kind, pax)
            if kind in _HEADER_ONLY and size:
                raise self._fail(f"{name!r} is a {_TYPE_NAMES[kind]} that claims {size} bytes of data; tar readers "
                                 "disagree on where the next header starts")
        self._content_left = size
        self._pad_left = -size % BLOCK
        self._sink = None
        self._sink_kind = kind
        self._entry_name = name
        if kind in _EXTENDED:
            if size > EXTENDED_HEADER_CAP:
                raise self._fail(f"extended header of {size} bytes exceeds the {EXTENDED_HEADER_CAP} cap")
            self._sink = bytearray()
        else:
            self.result.entries += 1
            normal = _normalise(name)
            if normal is None:
                raise self._fail(f"unsafe member name {name!r} (absolute, '..' or NUL)")
            if normal:
                self.result.top_level.add(normal.split("/", 1)[0])
            if self._keep_members or self._tap is not None:
                target = pax.get("linkpath", self._long_link if self._long_link is not None else
                                 _cstring(block[157:257]))
                member = Member(normal, kind, self._offset + BLOCK, size, _number(block[100:108]) or 0, target,
                                frozenset(pax))
                if self._keep_members:
                    self.result.members.append(member)
                if self._tap is not None and normal not in self._capture_names:
                    self._tapped = self._tap(member)
            if normal in self._capture_names:
                if normal in self.result.captured:
                    raise self._fail(f"{normal} appears twice")
                if kind not in _REGULAR:
                    raise self._fail(f"{normal} is not a regular file")
                if size > METADATA_CAP:
                    raise self._fail(f"{normal} is {size} bytes, over the {METADATA_CAP} cap")
                self._sink = bytearray()
                self._entry_name = normal
            self._pax = None
            self._long_name = None
            self._long_link = None
        if not self._content_left and not self._pad_left:
            self._end_member()

    def _check_extended_order(self, kind: bytes) -> None:
        """At most one of each extended header per member, and no global one in between.

        Go keeps the last of two pax headers or long names, tarfile the first; Go drops the
        pending ones at a global header, lpm and tarfile would not.
        """
        if kind == _PAX_LOCAL and self._pax is not None:
            raise self._fail("two pax headers for one member (tar readers keep different ones)")
        if kind == _GNU_LONGNAME and self._long_name is not None:
            raise self._fail("two GNU long names for one member (tar readers keep different ones)")
        if kind == _GNU_LONGLINK and self._long_link is not None:
            raise self._fail("two GNU long link names for one member (tar readers keep different ones)")
        if kind == _PAX_GLOBAL and (self._pax is not None or self._long_name is not None
                                    or self._long_link is not None):
            raise self._fail("a pax global header between a member's extended headers and the member "
                             "(Go drops them there, other readers do not)")

    def _member_name(self, block: bytes, kind: bytes, pax: dict[str, str]) -> str:
        """The member's name, once every source of it is known to agree for every reader."""
        if "path" in pax and self._long_name is not None:
            raise self._fail(f"member carries both a GNU long name {self._long_name!r} and a pax path "
                             f"{pax['path']!r} (Go takes the long name, tarfile whichever header comes first)")
        if "linkpath" in pax and self._long_link is not None:
            raise self._fail(f"member carries both a GNU long link name {self._long_link!r} and a pax linkpath "
                             f"{pax['linkpath']!r}")
        for key in ("path", "linkpath"):
            if pax.get(key) == "":
                raise self._fail(f"empty pax {key} (Go keeps the header's name, other readers take it as empty)")
        if self._long_name == "" or self._long_link == "":
            raise self._fail("empty GNU long name (Go keeps the header's name, other readers take it as empty)")
        if "path" in pax:
            name = pax["path"]
        elif self._long_name is not None:
            name = self._long_name
        else:
            name = _header_name(block, self._fail)
        if name.endswith("/") and kind != _DIRECTORY:
            raise self._fail(f"{name!r} ends in '/' but is a {_TYPE_NAMES.get(kind, f'type {kind!r} member')} "
                             "(Go and tarfile may take it for a directory)")
        return name
    def _end_member(self) -> None:
        if self._tapped is not None:
            tapped, self._tapped = self._tapped, None
            tapped.close()
        kind, sink = self._sink_kind, self._sink
        self._sink = None
        self._sink_kind = None
        if sink is None:
            return
        if kind == _PAX_LOCAL:
            self._pax = _parse_pax(bytes(sink), self._fail)
            sparse = sorted(key for key in self._pax if key.startswith("GNU.sparse."))
            if sparse:
                raise self._fail(f"pax records {', '.join(sparse)}: a GNU sparse file, which readers name and "
                                 "frame differently")
        elif kind == _PAX_GLOBAL:
            records = _parse_pax(bytes(sink), self._fail)
            naming = sorted(key for key in records if key in _NAMING_KEYS or key.startswith("GNU.sparse."))
            if naming:
                raise self._fail(f"pax global header sets {', '.join(naming)}, which Go ignores and tarfile "
                                 "applies to members")
        elif kind == _GNU_LONGNAME:
            self._long_name = _cstring(bytes(sink))
        elif kind == _GNU_LONGLINK:
            self._long_link = _cstring(bytes(sink))
        else:
            self.result.captured[self._entry_name] = bytes(sink)


_TYPE_NAMES = {b"0": "regular file", b"\0": "regular file", b"7": "regular file", b"1": "hard link",
               b"2": "symlink", b"3": "character device", b"4": "block device", b"5": "directory", b"6": "FIFO"}


def _header_name(block: bytes, fail: Callable[[str], ArchiveError]) -> str:
    """The name from the header's own fields, as Go's archive/tar reads it; refused when tarfile reads another.

    Go takes the ``prefix`` field only under the POSIX magic (131 bytes of it when the star
    trailer is there, else 155); tarfile takes all 155 bytes whatever the magic (a GNU header
    keeps times there).
    """
    name = _cstring(block[0:100])
    go_prefix = ""
    if block[257:263] == _MAGIC_USTAR:
        go_prefix = _cstring(block[345:476] if block[508:512] == _TRAILER_STAR else block[345:500])
    python_prefix = _cstring(block[345:500])
    if go_prefix != python_prefix:
        raise fail(f"header prefix field reads as {python_prefix!r} to tarfile but {go_prefix!r} to Go")
    return f"{go_prefix}/{name}" if go_prefix else name


def _cstring(field_bytes: bytes) -> str:
    return field_bytes.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field_bytes: bytes) -> int | None:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field_bytes and field_bytes[0] & 0x80:
        value = int.from_bytes(field_bytes[1:], "big")
        return None if field_bytes[0] == 0xFF else value  # 0xFF: negative, never valid here
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def _checksums(block: bytes) -> tuple[int, int]:
    """Unsigned and signed header sums with the checksum field counted as spaces."""
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return unsigned, signed


def _parse_pax(data: bytes, fail: Callable[[str], ArchiveError]) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise fail("malformed pax header")
        digits = data[pos:space]
        # Decimal digits only: int() would also take "+12", " 12" or "1_2", which tarfile does not.
        if not digits or len(digits) > 20 or not all(0x30 <= byte <= 0x39 for byte in digits):
            raise fail("malformed pax record length")
        length = int(digits)
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise fail("malformed pax record")
        key, _, value = record[:-1].partition(b"=")
        if not key:
            raise fail("pax record with an empty keyword")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _pax_int(text: str, fail: Callable[[str], ArchiveError]) -> int:
    # ASCII digits of an int64, as Go parses it: str.isdigit() also takes "²" (which int() refuses)
    # and Arabic-Indic digits (which Go refuses).
    if not text or len(text) > 18 or not all("0" <= char <= "9" for char in text):
        raise fail(f"pax size {text[:40]!r} is not a decimal number of at most 18 digits")
    return int(text)


def _normalise(name: str) -> str | None:
    """Member name without a leading ``./`` or trailing ``/``; None when unsafe."""
    if "\0" in name or name.startswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        return None
    return "/".join(parts)
