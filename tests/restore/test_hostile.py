"""Archives a runtime would unpack as root on the destination: refused, with the reason, leaving nothing."""

import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.restore.support import BASE, Member, checkpoint_tar, dir_, link, write_tar
from watcher.archive.tarscan import EXTENDED_HEADER_CAP, METADATA_CAP
from watcher.errors import ArchiveError
from watcher.restore.image import Platform, write_image
from watcher.restore.layer import MEMBER_CAP

CASES = {
    "absolute name": ([Member("/etc/cron.d/evil", b"x")], [], "unsafe member name '/etc/cron.d/evil'"),
    "dot-dot name": ([Member("../evil", b"x")], [], r"unsafe member name '\.\./evil'"),
    "dot-dot inside a name": ([Member("checkpoint/../../evil", b"x")], [], "unsafe member name"),
    "the root itself": ([dir_(".")], [], r"unsafe member name '\.'"),
    "absolute symlink": ([link("checkpoint/etc", "/etc")], [], r"symlink 'checkpoint/etc' -> '/etc' points outside"),
    "symlink climbing out": ([link("checkpoint/up", "../../etc")], [], "points outside the archive"),
    "empty symlink target": ([link("checkpoint/nothing", "")], [], "points outside the archive"),
    # Lexically checkpoint/self/../.. is the root; on disk self is checkpoint, so it is the root's parent.
    "symlink through a symlink": ([link("checkpoint/self", "."), link("checkpoint/esc", "self/../..")], [],
                                  "'checkpoint/esc' -> 'self/../..' points outside"),
    "member under a symlink": ([Member("checkpoint/parent/pages-2.img", b"x")], [],
                               "'checkpoint/parent/pages-2.img' lies under the symlink 'checkpoint/parent'"),
    "member under a file": ([Member("config.dump/x", b"x")], [], "'config.dump/x' lies under the file 'config.dump'"),
    "hard link": ([Member("checkpoint/hard", kind=tarfile.LNKTYPE, target="config.dump")], [],
                  "'checkpoint/hard' is a hard link"),
    "hard link outside": ([Member("checkpoint/hard", kind=tarfile.LNKTYPE, target="/etc/shadow")], [], "hard link"),
    "device node": ([Member("checkpoint/mem", kind=tarfile.CHRTYPE)], [], "'checkpoint/mem' is a device node"),
    "FIFO": ([Member("checkpoint/pipe", kind=tarfile.FIFOTYPE)], [], "is a FIFO"),
    "duplicate name": ([Member("config.dump", b"{}")], [], "'config.dump' appears twice"),
    "duplicate after normalising": ([Member("./spec.dump", b"{}")], [], "'spec.dump' appears twice"),
    "oversized pax header": ([Member("checkpoint/x", b"x", pax=(("comment", "x" * EXTENDED_HEADER_CAP),))], [],
                             "tar header of .* bytes exceeds the"),
    "no spec.dump": ([], ["spec.dump"], r"not a checkpoint archive \(no spec.dump\)"),
    "no checkpoint directory": ([], ["checkpoint", "pre-checkpoint"], r"no checkpoint/"),
    "config.dump is a directory": ([dir_("config.dump")], ["config.dump"], r"no config.dump"),
    "config.dump not JSON": ([Member("config.dump", b"{oops")], ["config.dump"], "config.dump is not valid JSON"),
    "config.dump runtime not a string": ([Member("config.dump", json.dumps({"runtime": ["crun"]}).encode())],
                                         ["config.dump"], "field 'runtime' is not a string"),
    "config.dump over the cap": ([Member("config.dump", b" " * (METADATA_CAP + 1))], ["config.dump"],
                                 "config.dump is .* bytes, over the"),
}


def refused(archive: Path, message: str) -> None:
    out = archive.parent / "image"
    before = sorted(os.listdir(archive.parent))
    with pytest.raises(ArchiveError, match=message) as caught:
        write_image(archive, out, "cart-api", "ckpt", Platform("amd64"))
    assert str(archive) in str(caught.value)  # the message names the archive
    assert sorted(os.listdir(archive.parent)) == before  # no image, no half-written sibling


def test_the_base_archive_is_accepted(tmp_path):
    """The cases below differ from an archive that is fine, symlink to a pre-dump included."""
    image = write_image(checkpoint_tar(tmp_path / "ok.tar"), tmp_path / "image", "cart-api", "ckpt", Platform("amd64"))
    assert image.path.is_dir()


@pytest.mark.parametrize("case", CASES)
def test_hostile_member_is_refused(tmp_path, case):
    extra, drop, message = CASES[case]
    refused(checkpoint_tar(tmp_path / "hostile.tar", extra=extra, drop=drop), message)


def test_non_utf8_name_is_refused(tmp_path):
    archive = write_tar(tmp_path / "bytes.tar", [*BASE, Member("checkpoint/\udcff.img", b"x")], fmt=tarfile.GNU_FORMAT)
    refused(archive, "is not UTF-8")


def member_end(archive: Path, name: str) -> tuple[int, int]:
    with tarfile.open(archive) as tar:
        member = tar.getmember(name)
        return member.offset, member.offset_data + member.size


def test_archive_cut_inside_a_member_is_refused(tmp_path):
    archive = checkpoint_tar(tmp_path / "cut.tar")
    _, end = member_end(archive, "checkpoint/pages-1.img")
    os.truncate(archive, end - 1000)
    refused(archive, "not a readable tar archive|ends after")


def test_archive_without_its_end_blocks_is_refused(tmp_path):
    """Still being written in place: every member whole, the two zero blocks not yet there."""
    archive = checkpoint_tar(tmp_path / "unfinished.tar")
    _, end = member_end(archive, "rootfs-diff.tar")
    os.truncate(archive, end)
    refused(archive, "no end-of-archive blocks")


def test_corrupt_header_in_the_middle_is_refused(tmp_path):
    # tarfile stops quietly at a bad header past the first; the image would lose every member after it.
    archive = checkpoint_tar(tmp_path / "corrupt.tar")
    header, _ = member_end(archive, "config.dump")
    with open(archive, "r+b") as file:
        file.seek(header + 148)
        file.write(b"9999999\0")
    refused(archive, "no end-of-archive blocks")


@pytest.mark.parametrize("data", [b"", os.urandom(4096), b"\0" * 10240])
def test_not_a_tar_archive_is_refused(tmp_path, data):
    archive = tmp_path / "junk.tar"
    archive.write_bytes(data)
    refused(archive, "not a readable tar archive|not a checkpoint archive")


def test_too_many_members_is_refused(tmp_path):
    members = [*BASE, *(Member(f"checkpoint/f{i}") for i in range(MEMBER_CAP))]
    refused(write_tar(tmp_path / "many.tar", members, fmt=tarfile.GNU_FORMAT), f"more than {MEMBER_CAP} entries")
