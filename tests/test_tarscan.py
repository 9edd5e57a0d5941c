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


class _Sink:
    def __init__(self, name: str, seen: dict) -> None:
        self.name, self.seen, self.data, self.closed = name, seen, bytearray(), False

    def feed(self, chunk) -> None:
        assert not self.closed
        self.data += chunk

    def close(self) -> None:
        self.closed = True
        self.seen[self.name] = bytes(self.data)


@pytest.mark.parametrize("chunk", [1, 511, 512, 4096, 1 << 20])
def test_a_tap_sees_each_tapped_members_data_exactly_once_whatever_the_chunking(chunk):
    rng = random.Random(chunk)
    members = [(f"checkpoint/img-{i}.img", rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000]))) for i in range(8)]
    data = tar_of(("spec.dump", b"{}"), *members)
    seen: dict[str, bytes] = {}
    asked = []

    def tap(member):
        asked.append(member.name)
        return _Sink(member.name, seen) if member.name.endswith(".img") and "3" not in member.name else None

    scanner = TarScanner(frozenset({"spec.dump"}), "tapped.tar", tap=tap)
    for start in range(0, len(data), chunk):
        scanner.feed(data[start : start + chunk])
    result = scanner.finish()
    # Captured members are not offered to the tap; every other one is, once, in order.
    assert asked == [name for name, _ in members] and result.captured == {"spec.dump": b"{}"}
    assert seen == {name: body for name, body in members if "3" not in name}


def test_a_tapped_member_cut_short_is_never_closed():
    seen: dict[str, bytes] = {}
    data = tar_of(("a.img", bytes(5000)))
    scanner = TarScanner(frozenset(), "cut.tar", tap=lambda member: _Sink(member.name, seen))
    scanner.feed(data[:2000])
    with pytest.raises(ArchiveIncomplete, match="inside the data of 'a.img'"):
        scanner.finish()
    assert seen == {}
