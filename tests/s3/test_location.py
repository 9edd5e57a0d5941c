"""The S3 store's names, pure: URLs, keys, and a listing taken apart (no server needed)."""

from __future__ import annotations

import pytest

from lab.archives import Pod
from lpm_gc.entries import Kind
from lpm_gc.s3 import group
from watcher.errors import StoreError, UnsafeNameError
from watcher.s3.location import ObjectKind, S3Location, classify, parse
from watcher.s3.store import MAX_PARTS, PART_SIZE, ObjectInfo, part_size
from watcher.store import layout

CID = "20261125T101112Z-455e15c3"
REF = layout.ArtifactRef(Pod().uid, CID, "cart-api")


@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://lpm-checkpoints", "lpm-checkpoints", ""),
    ("s3://lpm-checkpoints/", "lpm-checkpoints", ""),
    ("s3://lpm/cluster-a/checkpoints/", "lpm", "cluster-a/checkpoints"),
    ("s3://my.bucket.example/x", "my.bucket.example", "x"),
])
def test_store_urls(url: str, bucket: str, prefix: str) -> None:
    assert parse(url) == S3Location(bucket, prefix)
    assert str(parse(url)) == url.rstrip("/")


@pytest.mark.parametrize(("url", "reason"), [
    ("/mnt/checkpoints", "must start with s3://"),
    ("s3:/bucket", "must start with s3://"),
    ("s3://", "is not a bucket name"),
    ("s3://a/", "is not a bucket name"),
    ("s3://bucket..x/", "is not a bucket name"),
    ("s3://bucket/a//b", "prefix segment ''"),
    ("s3://bucket/../b", "prefix segment '..'"),
    ("s3://bucket/.gc", "prefix segment '.gc'"),
    ("s3://bucket/a b", "prefix segment 'a b'"),
    ("s3://bucket/x#frag", "no query, fragment"),
    ("s3://bucket/x\nrm", "no query, fragment, NUL or newline"),
])
def test_bad_store_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UnsafeNameError, match=reason):
        parse(url)


def test_keys_are_the_filesystem_layout_under_the_prefix() -> None:
    at = S3Location("b", "p/q")
    assert at.dump_key(REF) == f"p/q/{Pod().uid}/{CID}/cart-api/dump.tar.zst"
    assert at.manifest_key(REF) == f"p/q/{Pod().uid}/{CID}/cart-api/manifest.json"
    assert at.marker_key(Pod().uid, CID) == f"p/q/{Pod().uid}/{CID}/.checkpoint-complete"
    assert S3Location("b", "").marker_key(Pod().uid, CID) == f"{Pod().uid}/{CID}/.checkpoint-complete"
    with pytest.raises(UnsafeNameError):
        at.staging_key("node-a", "../../x")
    with pytest.raises(UnsafeNameError):
        at.marker_key("..", CID)


@pytest.mark.parametrize(("key", "kind"), [
    (f"p/{Pod().uid}/{CID}/cart-api/dump.tar.zst", ObjectKind.DUMP),
    (f"p/{Pod().uid}/{CID}/cart-api/manifest.json", ObjectKind.MANIFEST),
    (f"p/{Pod().uid}/{CID}/.checkpoint-complete", ObjectKind.MARKER),
    (f"p/{Pod().uid}/{CID}/.keep", ObjectKind.KEEP),
    ("p/.ingest/node-a/staging/" + "0" * 32, ObjectKind.STAGING),
    ("p/.gc/lock", ObjectKind.COLLECTOR),
    ("p/notes.txt", ObjectKind.OTHER),
    (f"p/{Pod().uid}/{CID}/cart-api/dump.tar", ObjectKind.OTHER),
    (f"p/{Pod().uid}/not-an-id/cart-api/dump.tar.zst", ObjectKind.OTHER),
    (f"p/{Pod().uid}/{CID}/Bad_Name/dump.tar.zst", ObjectKind.OTHER),
    ("p/.ingest/node-a/staging/short", ObjectKind.OTHER),
    ("q/anything", ObjectKind.OTHER),
])
def test_listed_keys_are_taken_apart_or_called_other(key: str, kind: ObjectKind) -> None:
    info = classify(S3Location("b", "p"), key)
    assert info.kind is kind, info
    if kind is ObjectKind.OTHER:
        assert info.reason, info


def test_a_listing_groups_into_the_collectors_entries() -> None:
    at = S3Location("b", "p")
    objects = [
        ObjectInfo(at.dump_key(REF), 100, 10.0),
        ObjectInfo(at.manifest_key(REF), 2, 12.0),
        ObjectInfo(at.marker_key(REF.pod_uid, CID), 1, 13.0),
        ObjectInfo(at.staging_key("node-a", "a" * 32), 50, 5.0),
        ObjectInfo("p/.gc/lock", 1, 1.0),
        ObjectInfo("p/junk", 7, 1.0),
    ]
    groups, staging, damaged = group(at, objects)
    [(key, members)] = groups.items()
    assert key == (REF.pod_uid, CID) and members.size == 103 and members.newest == 13.0
    assert members.has(ObjectKind.MARKER) and not members.has(ObjectKind.KEEP)
    assert [(e.kind, e.parent, e.name, e.size, e.modified) for e in staging] == [
        (Kind.STAGING, "node-a", "a" * 32, 50, 5.0)]
    assert damaged == [("p/junk", "not a name of the store's layout")]


@pytest.mark.parametrize("archive", [0, 1, PART_SIZE, 10 << 30, 78 << 30, 80 << 30, 2 << 40, 45 << 40])
def test_parts_are_8_mib_unless_10000_would_not_hold_the_dump(archive: int) -> None:
    size = part_size(archive)
    assert size >= PART_SIZE and size % (1 << 20) == 0, size
    assert size * MAX_PARTS >= archive * 1.01, (archive, size)
    # No larger than it must be: one MiB less would not hold it.
    assert size == PART_SIZE or (size - (1 << 20)) * MAX_PARTS < archive * 1.01, (archive, size)


def test_an_archive_no_multipart_upload_can_hold_is_refused_up_front() -> None:
    with pytest.raises(StoreError, match="needs parts of more than 5 GiB"):
        part_size(50 << 40)
