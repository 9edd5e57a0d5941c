"""The tar scanner on real tar archives: complete, truncated, hostile, any chunking."""

import io
import json
import random
import tarfile

import pytest

from lab.archives import ArchiveSpec, Pod, archive_bytes, crio_spec
from watcher.archive.tarscan import METADATA_CAP, TarScanner
from watcher.errors import ArchiveError, ArchiveIncomplete

WANTED = frozenset({"spec.dump", "config.dump"})


def scan(data: bytes, chunk: int = 1 << 16):
    scanner = TarScanner(WANTED, "test.tar")
    for start in range(0, len(data), chunk):
        scanner.feed(data[start : start + chunk])
    return scanner.finish()


def tar_of(*members: tuple[str, bytes], fmt=tarfile.PAX_FORMAT, kind=tarfile.REGTYPE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_complete_archive_is_read_and_metadata_captured():
    data = archive_bytes(ArchiveSpec(memory=300_000))
    result = scan(data)
    assert json.loads(result.captured["spec.dump"]) == crio_spec(Pod())
    assert "rootfsImageName" in json.loads(result.captured["config.dump"])
    assert {"checkpoint", "spec.dump", "config.dump", "rootfs-diff.tar"} <= result.top_level


@pytest.mark.parametrize("chunk", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_result_does_not_depend_on_chunking(chunk):
    data = archive_bytes(ArchiveSpec(memory=20_000))
    assert scan(data, chunk).captured == scan(data).captured


def test_every_truncation_is_incomplete_never_complete():
    data = archive_bytes(ArchiveSpec(memory=8192))
    end = len(data.rstrip(b"\0"))  # last byte of real content; the zero blocks come after it
    cuts = sorted(set(random.Random(1).sample(range(1, end), 150)) | {1, 511, 512, 513, end, end + 512})
    for cut in cuts:
        with pytest.raises(ArchiveIncomplete, match="ends at byte"):
            scan(data[:cut])


def test_gnu_format_and_long_names_are_understood():
    long_dir = "checkpoint/" + "d" * 150
    data = tar_of((long_dir + "/pages-1.img", b"x" * 700), ("spec.dump", b"{}"), fmt=tarfile.GNU_FORMAT)
    assert scan(data).captured == {"spec.dump": b"{}"}


def test_not_a_tar():
    with pytest.raises(ArchiveError, match="not a tar archive"):
        scan(b"PK\x03\x04 this is a zip file" + bytes(2000))


def test_empty_file_is_incomplete():
    with pytest.raises(ArchiveIncomplete):
        scan(b"")


def test_corrupt_header_in_the_middle():
    data = bytearray(tar_of(("a", b"1" * 600), ("spec.dump", b"{}")))
    second_header = 512 + 1024  # after member a's header and its 600 bytes padded to 1024
    data[second_header + 5] ^= 0xFF
    with pytest.raises(ArchiveError, match="checksum"):
        scan(bytes(data))


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/shadow", "checkpoint/../../x"])
def test_hostile_member_names_are_refused(name):
    with pytest.raises(ArchiveError, match="unsafe member name"):
        scan(tar_of((name, b"x")))


def test_duplicate_spec_dump_fails_closed():
    with pytest.raises(ArchiveError, match="spec.dump appears twice"):
        scan(tar_of(("spec.dump", b"{}"), ("./spec.dump", b"{}")))


def test_spec_dump_must_be_a_regular_file():
    with pytest.raises(ArchiveError, match="not a regular file"):
        scan(tar_of(("spec.dump", b""), kind=tarfile.SYMTYPE))


def test_oversized_metadata_is_refused_before_it_is_buffered():
    with pytest.raises(ArchiveError, match="over the"):
        scan(tar_of(("spec.dump", b" " * (METADATA_CAP + 1))))


def test_trailing_garbage_after_end_is_refused():
    with pytest.raises(ArchiveError, match="after the end-of-archive"):
        scan(tar_of(("a", b"1")) + b"garbage")
