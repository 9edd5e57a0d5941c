"""Just enough of the protobuf wire format for the CRI calls lpm makes: no generated code, no I/O.

The agent asks its runtime two questions (``Version``, ``Status`` with ``verbose``) and reads a
handful of fields from the answers. A codec of varints, length-delimited fields and skipping of
everything else is about forty lines; generated stubs of the whole CRI API would be thousands,
pinned to one API revision. Unknown fields are skipped, as protobuf itself does, so a newer
runtime's answers still decode.
"""

from __future__ import annotations

from collections.abc import Iterator

from watcher.errors import LpmError

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


class WireError(LpmError):
    """A message that is not valid protobuf (truncated, or a wire type lpm does not know)."""


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative varints are not used by the CRI fields lpm writes")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_bool(field: int, value: bool) -> bytes:
    """Field ``field`` set to ``value``; proto3 leaves a false bool out entirely."""
    return encode_varint(field << 3 | VARINT) + b"\x01" if value else b""


def encode_uint(field: int, value: int) -> bytes:
    """Field ``field`` set to the non-negative ``value`` (int64 and uint64 alike); proto3 leaves 0 out."""
    return encode_varint(field << 3 | VARINT) + encode_varint(value) if value else b""


def encode_string(field: int, value: str) -> bytes:
    data = value.encode()
    return encode_varint(field << 3 | LENGTH) + encode_varint(len(data)) + data if data else b""


def encode_message(field: int, data: bytes) -> bytes:
    """Field ``field`` holding the embedded message ``data`` (itself encoded), even when it is empty."""
    return encode_varint(field << 3 | LENGTH) + encode_varint(len(data)) + data


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(at, min(at + _MAX_VARINT_BYTES, len(data))):
        value |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return value, i + 1
        shift += 7
    raise WireError(f"truncated or overlong varint at byte {at}")


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of every field: an int for varints and fixed widths, bytes
    for length-delimited ones (strings, nested messages, map entries)."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == VARINT:
            value, at = _varint(data, at)
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if at + width > len(data):
                raise WireError(f"field {number}: truncated fixed-width value")
            value, at = int.from_bytes(data[at:at + width], "little"), at + width
        elif wire == LENGTH:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise WireError(f"field {number}: {size} bytes announced, {len(data) - at} left")
            value, at = data[at:at + size], at + size
        else:  # groups (3, 4) are proto2-only and absent from the CRI API
            raise WireError(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


def strings(data: bytes) -> dict[int, str]:
    """The length-delimited fields of a message as text, by field number (the last one wins, as in
    protobuf)."""
    return {number: value.decode(errors="replace") for number, wire, value in fields(data)
            if wire == LENGTH and isinstance(value, bytes)}


def string_map(data: bytes, field: int) -> dict[str, str]:
    """A ``map<string, string>`` field: on the wire, repeated entries of {1: key, 2: value}."""
    entries: dict[str, str] = {}
    for number, wire, value in fields(data):
        if number == field and wire == LENGTH and isinstance(value, bytes):
            entry = strings(value)
            entries[entry.get(1, "")] = entry.get(2, "")
    return entries
