"""The S3 store end to end through the ``lpm`` command line, against a real S3 server (s3proxy, HTTPS).

Ingest -> ls -> verify -> get; the layout in the bucket; a duplicate; two writers racing for one marker;
a server that ignores the condition; bad URLs, a missing bucket, wrong credentials, an untrusted CA.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab.archives import ArchiveSpec, Pod, make_archive
from lab.s3server import S3Server
from tests.s3.conftest import Bucket, legacy_version
from tests.support import lpm
from watcher.errors import ChecksumMismatch
from watcher.ingest import s3 as s3ingest
from watcher.ingest import service
from watcher.s3 import client as s3client
from watcher.s3 import location
from watcher.s3 import retrieve as s3retrieve
from watcher.s3.store import S3Store
from watcher.store import fsio, layout, retrieve
from watcher.zstream import CompressionSettings


def _layout_keys(prefix: str, uri: str) -> list[str]:
    uid, cid, container = uri.removeprefix("shared://").split("/")[:3]
    return sorted([f"{prefix}/{uid}/{cid}/.checkpoint-complete", f"{prefix}/{uid}/{cid}/{container}/dump.tar.zst",
                   f"{prefix}/{uid}/{cid}/{container}/manifest.json"])


def test_ingest_ls_verify_get_round_trip(bucket: Bucket, archive_dir: Path, tmp_path: Path) -> None:
    archive = make_archive(archive_dir, ArchiveSpec(memory=64 << 20))  # ~21 MiB stored: three parts of 8 MiB
    uri = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a", "--target-node", "node-b",
              check=True).stdout.strip()
    assert uri.startswith(f"shared://{Pod().uid}/") and uri.endswith("/cart-api/dump.tar.zst")
    # The layout under the prefix, and nothing else: no staging object, no upload left behind.
    assert bucket.keys() == _layout_keys("checkpoints", uri), bucket.keys()
    assert bucket.uploads() == []
    listed = [json.loads(line) for line in lpm("store", "ls", "--store", bucket.url, "--json",
                                               check=True).stdout.splitlines()]
    assert listed == [{
        "podUID": Pod().uid, "podNamespace": "shop-prod", "podName": "cart-7d9f8-x2x4z",
        "checkpointID": uri.split("/")[3], "containers": ["cart-api"], "creationTime": "2026-11-25T10:11:12Z",
        "targetNode": "node-b", "artifactURIs": {"cart-api": uri},
    }]
    verified = lpm("store", "verify", "--store", bucket.url)
    assert (verified.returncode, verified.stdout) == (0, f"ok  {Pod().uid}/{uri.split('/')[3]}\n"), verified
    out = tmp_path / "restored.tar"
    lpm("store", "get", uri, "--store", bucket.url, "-o", str(out), check=True)
    assert out.read_bytes() == archive.read_bytes()
    # The manifest records the stored bytes, as on a filesystem store.
    base = "checkpoints/" + uri.removeprefix("shared://").removesuffix("dump.tar.zst")
    manifest = json.loads(bucket.get(base + "manifest.json"))
    dump = bucket.get(base + "dump.tar.zst")
    assert (manifest["checksumSHA256"], manifest["compressedSize"]) == (hashlib.sha256(dump).hexdigest(), len(dump))


def test_a_second_ingest_is_a_duplicate_and_adds_nothing(bucket: Bucket, archive_dir: Path) -> None:
    archive = make_archive(archive_dir, ArchiveSpec(memory=1 << 20))
    uri = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a", check=True).stdout.strip()
    before = bucket.keys()
    assert lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-b", check=True).stdout.strip() == uri
    assert bucket.keys() == before and bucket.uploads() == []


def test_two_writers_racing_publish_once(bucket: Bucket, archive_dir: Path) -> None:
    """Two agents ingest the same archive at once: both end with its URI, exactly one published it."""
    archive = make_archive(archive_dir, ArchiveSpec(memory=8 << 20))
    store_at = location.parse(bucket.url)

    async def race() -> list[bool]:
        async with s3client.connect(store_at) as one, s3client.connect(store_at) as other:
            results = await asyncio.gather(*(
                s3ingest.ingest_archive(S3Store(client, store_at), archive, node, CompressionSettings(),
                                        threading.Event(), datetime.now(UTC))
                for client, node in ((one, "node-a"), (other, "node-b"))))
        assert len({r.manifest.ref.uri for r in results}) == 1
        return [r.duplicate for r in results]

    duplicates = asyncio.run(race())
    assert sorted(duplicates) == [False, True], duplicates
    assert len([k for k in bucket.keys() if k.endswith(".checkpoint-complete")]) == 1, bucket.keys()
    assert bucket.uploads() == [] and not [k for k in bucket.keys() if "/.ingest/" in k], bucket.keys()


def test_the_marker_put_is_refused_to_a_second_writer(bucket: Bucket, archive_dir: Path) -> None:
    archive = make_archive(archive_dir, ArchiveSpec(memory=1 << 20))
    uri = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a", check=True).stdout.strip()
    uid, cid = uri.removeprefix("shared://").split("/")[:2]
    store_at = location.parse(bucket.url)
    marker_key = store_at.marker_key(uid, cid)
    before = bucket.get(marker_key)

    async def second_writer() -> None:
        async with s3client.connect(store_at) as client:
            await S3Store(client, store_at).complete(uid, cid, ["cart-api"], datetime.now(UTC), "node-z")

    with pytest.raises(s3client.AlreadyComplete, match="another writer published first"):
        asyncio.run(second_writer())
    assert bucket.get(marker_key) == before  # not replaced


def test_a_server_that_ignores_the_condition_gets_nothing_published(
        tmp_path: Path, archive_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = S3Server(tmp_path / "legacy", version=legacy_version())
    legacy.start()
    try:
        for name, value in legacy.env.items():
            monkeypatch.setenv(name, value)
        old = Bucket(legacy, "lpm-legacy")
        old.create()
        archive = make_archive(archive_dir, ArchiveSpec(memory=1 << 20))
        result = lpm("ingest", str(archive), "--store", old.url, "--node", "node-a")
        assert result.returncode == 1, result
        assert "ignores the condition" in result.stderr and "publishes nothing" in result.stderr, result.stderr
        assert old.keys() == [] and old.uploads() == [], (old.keys(), old.uploads())
    finally:
        legacy.stop()


@pytest.mark.parametrize(("url", "reason"), [
    ("s3://", "is not a bucket name"),
    ("s3://ab/x", "is not a bucket name"),
    ("s3://bucket/../etc", "prefix segment '..'"),
    ("s3://bucket/.ingest", "prefix segment '.ingest'"),
    ("s3://bucket/x?versionId=1", "no query"),
])
def test_a_bad_store_url_is_refused_naming_it(url: str, reason: str) -> None:
    result = lpm("store", "ls", "--store", url)
    assert result.returncode == 2 and reason in result.stderr and url.split("?")[0] in result.stderr, result


def test_a_missing_bucket_is_named(s3_env: S3Server) -> None:
    result = lpm("store", "ls", "--store", "s3://lpm-no-such-bucket/x")
    assert result.returncode == 1, result
    assert "bucket lpm-no-such-bucket does not exist" in result.stderr, result.stderr


def test_wrong_credentials_are_said_without_showing_them(
        bucket: Bucket, archive_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-4242")
    archive = make_archive(archive_dir, ArchiveSpec(memory=1 << 20))
    result = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a")
    assert result.returncode == 1 and "refused the credentials" in result.stderr, result
    assert "not-the-secret-4242" not in result.stderr + result.stdout
    assert bucket.keys() == [] and bucket.uploads() == []


def test_a_server_certificate_from_an_unknown_ca_is_refused(
        bucket: Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The system's CAs, not the test CA: the server's certificate does not verify, and lpm says so.
    monkeypatch.delenv("AWS_CA_BUNDLE")
    result = lpm("store", "ls", "--store", bucket.url)
    assert result.returncode == 1 and "TLS verification failed" in result.stderr, result


def test_a_plain_http_endpoint_is_refused(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.server.endpoint.replace("https://", "http://"))
    result = lpm("store", "ls", "--store", bucket.url)
    assert result.returncode == 1 and "is not https" in result.stderr, result


def test_a_dump_over_the_copy_limit_is_copied_in_parts(bucket: Bucket) -> None:
    """Above S3's 5 GiB CopyObject limit the staged dump is copied part by part (limits scaled down here)."""
    store_at = location.parse(bucket.url)
    data = bytes(range(256)) * (48 * 1024)  # 12 MiB: three ranges of 5, 5 and 2 MiB

    async def run() -> None:
        async with s3client.connect(store_at) as client:
            store = S3Store(client, store_at)
            await store.put("checkpoints/source", data)
            await store.copy("checkpoints/source", "checkpoints/copied", len(data), limit=len(data) - 1,
                             part=5 << 20)

    asyncio.run(run())
    assert bucket.get("checkpoints/copied") == data
    assert bucket.uploads() == []


def test_the_streamed_restores_read_gives_what_the_filesystem_store_gives(
        bucket: Bucket, archive_dir: Path, tmp_path: Path) -> None:
    """The read a streamed restore makes (the zstd stream to the runtime, the archive to the layer's scan),
    from the bucket and from a directory holding the same archive: the same bytes; a dump changed in the
    bucket fails after its last byte went by, naming both sums."""
    archive = make_archive(archive_dir, ArchiveSpec(memory=6 << 20))
    uri = lpm("ingest", str(archive), "--store", bucket.url, "--node", "node-a", check=True).stdout.strip()
    root = fsio.open_root(tmp_path / "store", create=True)
    service.ingest_archive(root, archive, "node-a", CompressionSettings(), threading.Event(), datetime.now(UTC))
    ref = layout.parse_uri(uri)
    from_dir: tuple[list[bytes], list[bytes]] = ([], [])
    retrieve.stream(root, ref, CompressionSettings(), threading.Event(), from_dir[0].append, from_dir[1].append)
    store_at = location.parse(bucket.url)

    async def read() -> tuple[list[bytes], list[bytes]]:
        got: tuple[list[bytes], list[bytes]] = ([], [])
        async with s3client.connect(store_at) as client:
            await s3retrieve.stream(S3Store(client, store_at), ref, CompressionSettings(), threading.Event(),
                                    got[0].append, got[1].append)
        return got

    from_bucket = asyncio.run(read())
    assert b"".join(from_bucket[1]) == b"".join(from_dir[1]) == archive.read_bytes()
    assert b"".join(from_bucket[0]) == bucket.get(store_at.dump_key(ref))
    # Tampered in the bucket: one byte of the dump changed.
    dump = bytearray(bucket.get(store_at.dump_key(ref)))
    dump[len(dump) // 2] ^= 1
    bucket.call("put_object", Key=store_at.dump_key(ref), Body=bytes(dump))
    with pytest.raises(ChecksumMismatch, match="stored dump has sha256|not valid zstd"):
        asyncio.run(read())
