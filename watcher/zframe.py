"""The structure of a stored dump: exactly one zstd frame, whole, with its content checksum.

Decoding alone cannot tell: python-zstandard yields what a frame that ends early holds and stops
without an error, and it stops at the end of the first frame without looking at what follows. So a
dump cut short is caught only by the recorded sizes, and bytes after the frame by nothing at all in
``store get`` (which does not hash its output). The frame's own layout says where it ends (RFC
8878, section 3.1.1): a header, blocks each with a 3-byte header giving its type, size and whether
it is the last, then the 4-byte checksum. Walking those headers reads a few bytes per block, which
is cheap beside decompressing. Pure: the caller supplies ``read_at(offset, length)``.
"""

from __future__ import annotations

from collections.abc import Callable

_MAGIC = b"\x28\xb5\x2f\xfd"
_DICT_ID_SIZES = (0, 1, 2, 4)
_RAW, _RLE, _COMPRESSED = 0, 1, 2


class FrameError(ValueError):
    """Not exactly one whole zstd frame with a content checksum; the message says where and why."""


def check_frame(read_at: Callable[[int, int], bytes], length: int, max_blocks: int) -> None:
    """Check that the ``length`` bytes are one whole frame with a checksum, of at most ``max_blocks`` blocks.

    ``max_blocks`` bounds the walk: a forged dump of empty 3-byte blocks would otherwise cost a
    Python loop per 3 bytes.
    """

    def take(offset: int, count: int, what: str) -> bytes:
        data = read_at(offset, count)
        if len(data) != count:
            raise FrameError(f"ends at byte {offset + len(data)} inside the {what}, cut short")
        return data

    if take(0, 4, "magic number") != _MAGIC:
        raise FrameError("does not start with the zstd magic number")
    descriptor = take(4, 1, "frame header")[0]
    content_size_flag, single_segment = descriptor >> 6, descriptor >> 5 & 1
    if descriptor & 0x08:
        raise FrameError("sets the frame header's reserved bit")
    if not descriptor & 0x04:
        raise FrameError("has no content checksum (lpm always writes one)")
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[content_size_flag]
    offset = 5 + (0 if single_segment else 1) + _DICT_ID_SIZES[descriptor & 0x03] + content_size_bytes
    for _ in range(max_blocks):
        header = int.from_bytes(take(offset, 3, "block header"), "little")
        last, kind, size = header & 1, header >> 1 & 3, header >> 3
        if kind not in (_RAW, _RLE, _COMPRESSED):
            raise FrameError(f"has a block of the reserved type at byte {offset}")
        offset += 3 + (1 if kind == _RLE else size)
        if offset > length:
            raise FrameError(f"ends at byte {length} inside a block that runs to byte {offset}, cut short")
        if last:
            break
    else:
        raise FrameError(f"has more than {max_blocks} blocks for what it holds")
    take(offset, 4, "content checksum")
    end = offset + 4
    if end < length:
        raise FrameError(f"holds {length - end} bytes after its zstd frame, which ends at byte {end}")
