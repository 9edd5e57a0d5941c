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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from watcher.errors import ArchiveError, ArchiveIncomplete

BLOCK = 512
# Metadata entries the agent reads (spec.dump, config.dump) are kilobytes in practice;
# 1 MiB leaves room and bounds what a hostile archive can make us hold.
METADATA_CAP = 1 << 20
# pax and GNU long-name headers: generous for real paths, bounded for hostile ones.
EXTENDED_HEADER_CAP = 1 << 20

_REGULAR = (b"0", b"\0", b"7")
_PAX_LOCAL = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"


@dataclass
class ScanResult:
    captured: dict[str, bytes] = field(default_factory=dict)
    entries: int = 0
    # Top-level names seen, for telling runtimes apart (containerd adds ``status``).
    top_level: set[str] = field(default_factory=set)


class TarScanner:
    """Feed bytes with ``feed``; call ``finish`` at end of input."""

    def __init__(self, capture: frozenset[str], where: str) -> None:
        self._capture_names = capture
        self._where = where
        self._offset = 0  # archive offset of the block being assembled or the data consumed
        self._block = bytearray()
        self._zero_blocks = 0
        self._ended = False
        self._content_left = 0
        self._pad_left = 0
        self._sink: bytearray | None = None
        self._sink_kind: bytes | None = None
        self._entry_name = ""
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
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
        size = _number(block[124:136])
        if size is None:
            raise self._fail("unreadable size field in tar header")
        if "size" in self._pax and kind not in (_PAX_LOCAL, _PAX_GLOBAL):
            size = _pax_int(self._pax["size"], self._fail)
        name = self._member_name(block, kind)
        self._content_left = size
        self._pad_left = -size % BLOCK
        self._sink = None
        self._sink_kind = kind
        self._entry_name = name
        if kind in (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
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
            if normal in self._capture_names:
                if normal in self.result.captured:
                    raise self._fail(f"{normal} appears twice")
                if kind not in _REGULAR:
                    raise self._fail(f"{normal} is not a regular file")
                if size > METADATA_CAP:
                    raise self._fail(f"{normal} is {size} bytes, over the {METADATA_CAP} cap")
                self._sink = bytearray()
                self._entry_name = normal
            self._pax = {}
            self._long_name = None
        if not self._content_left and not self._pad_left:
            self._end_member()

    def _member_name(self, block: bytes, kind: bytes) -> str:
        if kind in (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            return f"<{kind.decode(errors='replace')} header>"
        if "path" in self._pax:
            return self._pax["path"]
        if self._long_name is not None:
            return self._long_name
        name = _cstring(block[0:100])
        if block[257:263] == b"ustar\x00":  # POSIX ustar: a prefix field extends the name
            prefix = _cstring(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        return name

    def _end_member(self) -> None:
        kind, sink = self._sink_kind, self._sink
        self._sink = None
        self._sink_kind = None
        if sink is None:
            return
        if kind == _PAX_LOCAL:
            self._pax = _parse_pax(bytes(sink), self._fail)
        elif kind == _GNU_LONGNAME:
            self._long_name = bytes(sink).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind in (_PAX_GLOBAL, _GNU_LONGLINK):
            pass  # global defaults and link targets do not change what lpm reads
        else:
            self.result.captured[self._entry_name] = bytes(sink)


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
        try:
            length = int(data[pos:space])
        except ValueError:
            raise fail("malformed pax record length") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise fail("malformed pax record")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _pax_int(text: str, fail: Callable[[str], ArchiveError]) -> int:
    if not text.isdigit():
        raise fail(f"pax size {text!r} is not a number")
    return int(text)


def _normalise(name: str) -> str | None:
    """Member name without a leading ``./`` or trailing ``/``; None when unsafe."""
    if "\0" in name or name.startswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        return None
    return "/".join(parts)
