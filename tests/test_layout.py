"""Store names and URIs: deterministic IDs, and nothing that can point outside the store."""

from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath

import pytest

from watcher.errors import UnsafeNameError
from watcher.store import layout

UID = "6f1c2a4e-1b7d-4c1e-9a51-3e2d9c0b7a10"
CID = "20261125T101112Z-1cff5d03"


def test_checkpoint_id_is_deterministic_in_uid_and_archive_names_and_contents():
    when = datetime(2026, 11, 25, 11, 11, 12, tzinfo=timezone(timedelta(hours=1)))
    a, b = ("a.tar", "1" * 64), ("b.tar", "2" * 64)
    first = layout.make_checkpoint_id(UID, [b, a], when)
    assert first == layout.make_checkpoint_id(UID, [a, b], when)
    assert first.startswith("20261125T101112Z-")  # UTC, whatever the node's zone
    assert first != layout.make_checkpoint_id(UID, [a], when)
    assert first != layout.make_checkpoint_id("another-uid", [a, b], when)
    # The same name over other bytes (the kubelet overwrote it within the second): another checkpoint.
    assert first != layout.make_checkpoint_id(UID, [("a.tar", "3" * 64), b], when)


def test_uri_round_trip():
    ref = layout.parse_uri(f"shared://{UID}/{CID}/cart-api/dump.tar.zst")
    assert (ref.pod_uid, ref.checkpoint_id, ref.container) == (UID, CID, "cart-api")
    assert ref.uri == f"shared://{UID}/{CID}/cart-api/dump.tar.zst"


@pytest.mark.parametrize("uri, reason", [
    (f"shared://../{CID}/c/dump.tar.zst", "unsafe pod UID"),
    (f"shared://{UID}/../c/dump.tar.zst", "unsafe checkpoint ID"),
    (f"shared://{UID}/{CID}/../dump.tar.zst", "unsafe container name"),
    (f"shared:///etc/{CID}/c/dump.tar.zst", "malformed"),
    (f"shared://{UID}//{CID}/c/dump.tar.zst", "malformed"),
    (f"shared://{UID}/{CID}/c/manifest.json", "malformed"),
    (f"shared://{UID}/{CID}/c/dump.tar.zst/x", "malformed"),
    (f"shared://{UID}/{CID}/c\0/dump.tar.zst", "NUL"),
    (f"shared://{UID}/{CID}/c\n/dump.tar.zst", "newline"),
    (f"shared://{UID}/{CID}/Cart/dump.tar.zst", "unsafe container name"),
    (f"s3://{UID}/{CID}/c/dump.tar.zst", "scheme s3://"),
    ("/var/lib/kubelet/checkpoints/x.tar", "scheme (none)"),
    ("file:///var/lib/kubelet/checkpoints/x.tar", "scheme file://"),
])
def test_unsafe_or_foreign_uris_are_refused_with_the_reason(uri, reason):
    with pytest.raises(UnsafeNameError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        layout.parse_uri(uri)


@pytest.mark.parametrize("check, value", [
    (layout.pod_uid, "a/b"), (layout.pod_uid, ".."), (layout.pod_uid, ""), (layout.pod_uid, "a\0b"),
    (layout.container_name, "a..b"), (layout.container_name, "-x"), (layout.container_name, "x" * 64),
    (layout.namespace, "kube_system"), (layout.pod_name, "a\nb"), (layout.node_name, "node/1"),
    (layout.checkpoint_id, "20261125T101112Z-XYZ"), (layout.pod_uid, 7),
])
def test_segment_validators_refuse_hostile_values(check, value):
    with pytest.raises(UnsafeNameError, match="unsafe"):
        check(value)


LOCAL = PurePosixPath("/var/lib/lpm/local-store")


def test_local_uri_round_trip_names_the_same_place_as_the_shared_one():
    ref = layout.ArtifactRef(UID, CID, "cart-api")
    uri = ref.file_uri(LOCAL)
    assert uri == f"file:///var/lib/lpm/local-store/{UID}/{CID}/cart-api/dump.tar.zst"
    assert layout.parse_local_uri(uri, LOCAL) == ref
    assert layout.parse_location(uri, LOCAL) == (layout.StorageType.LOCAL, ref)
    assert layout.parse_location(ref.uri, LOCAL) == (layout.StorageType.SHARED, ref)


@pytest.mark.parametrize("uri, reason", [
    ("file:///var/lib/kubelet/checkpoints/x.tar", "not in the local store"),
    ("file:///etc/passwd", "not in the local store"),
    (f"file:///var/lib/lpm/local-store-2/{UID}/{CID}/c/dump.tar.zst", "not in the local store"),
    (f"file://var/lib/lpm/local-store/{UID}/{CID}/c/dump.tar.zst", "not in the local store"),
    (f"file:///var/lib/lpm/local-store/../{UID}/{CID}/c/dump.tar.zst", "malformed"),
    (f"file:///var/lib/lpm/local-store/{UID}/../c/dump.tar.zst", "unsafe checkpoint ID"),
    (f"file:///var/lib/lpm/local-store/{UID}//{CID}/c/dump.tar.zst", "malformed"),
    (f"file:///var/lib/lpm/local-store/{UID}/{CID}/c/manifest.json", "malformed"),
    (f"file:///var/lib/lpm/local-store/{UID}/{CID}/c\0/dump.tar.zst", "NUL"),
    (f"shared://{UID}/{CID}/c/dump.tar.zst", "not in the local store"),
])
def test_local_uris_outside_the_local_store_or_unsafe_are_refused(uri, reason):
    with pytest.raises(UnsafeNameError, match=reason):
        layout.parse_local_uri(uri, LOCAL)


def test_a_relative_local_store_is_refused():
    with pytest.raises(UnsafeNameError, match="absolute"):
        layout.ArtifactRef(UID, CID, "c").file_uri(PurePosixPath("local-store"))
