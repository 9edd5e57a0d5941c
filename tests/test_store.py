"""Ingest into the store and read back: layout, permissions, commit order, verification."""

import hashlib
import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from lab.archives import ArchiveSpec, Pod, archive_bytes, archive_name, make_archive
from watcher.errors import (
    ArchiveChanged,
    ChecksumMismatch,
    IdentityError,
    IncompleteCheckpoint,
    UnknownCheckpoint,
    UnsafeNameError,
)
from watcher.ingest import service
from watcher.store import catalog, fsio, layout, retrieve
from watcher.store.catalog import Checkpoint, Skipped
from watcher.zstream import Bounds, CompressionSettings, decompress_stream

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SETTINGS = CompressionSettings()


def ingest(store: Path, archive: Path, node="node-a", target=None):
    root = fsio.open_root(store, create=True)
    try:
        return service.ingest_archive(root, archive, node, SETTINGS, threading.Event(), NOW, target_node=target)
    finally:
        os.close(root)


def listing(store: Path):
    root = fsio.open_root(store, create=False)
    try:
        return list(catalog.scan(root))
    finally:
        os.close(root)


def test_ingest_commits_layout_manifest_and_marker(kube_dir, store):
    archive = make_archive(kube_dir, ArchiveSpec(memory=3 << 20))
    result = ingest(store, archive, target="node-b")
    manifest = result.manifest
    assert not result.duplicate
    base = store / manifest.pod_uid / manifest.checkpoint_id
    body = json.loads((base / "cart-api" / "manifest.json").read_text())
    assert body["artifactURI"] == manifest.ref.uri
    assert body["kubeletArchive"] == archive.name and body["runtime"] == "cri-o"
    assert body["sourceNode"] == "node-a" and body["targetNode"] == "node-b"
    assert body["uncompressedSize"] == archive.stat().st_size
    assert body["compressedSize"] == (base / "cart-api" / "dump.tar.zst").stat().st_size
    assert body["compressedSize"] < body["uncompressedSize"]
    marker = json.loads((base / ".checkpoint-complete").read_text())
    assert marker["containers"] == ["cart-api"] and marker["targetNode"] == "node-b"
    # Nothing but committed files under final names; staging is empty.
    assert sorted(p.name for p in base.rglob("*")) == [".checkpoint-complete", "cart-api", "dump.tar.zst",
                                                       "manifest.json"]
    assert not list((store / ".ingest" / "node-a" / "staging").iterdir())


def test_store_is_0700_directories_and_0600_files_whatever_the_umask(kube_dir, store):
    old = os.umask(0)
    try:
        ingest(store, make_archive(kube_dir))
    finally:
        os.umask(old)
    for path in [store, *store.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_reingest_is_idempotent_even_without_the_ledger(kube_dir, store):
    archive = make_archive(kube_dir)
    first = ingest(store, archive)
    assert ingest(store, archive).duplicate  # via the ledger
    for record in (store / ".ingest").rglob("*.json"):
        record.unlink()  # as after a crash between the marker and the ledger record
    again = ingest(store, archive)
    assert again.duplicate and again.manifest == first.manifest
    assert len([e for e in listing(store) if isinstance(e, Checkpoint)]) == 1


def test_get_returns_the_original_bytes(kube_dir, store, tmp_path):
    archive = make_archive(kube_dir, ArchiveSpec(memory=2 << 20))
    ref = ingest(store, archive).manifest.ref
    out = tmp_path / "out.tar"
    root = fsio.open_root(store, create=False)
    retrieve.get(root, ref, out, SETTINGS, threading.Event())
    assert out.read_bytes() == archive.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_tampered_dump_fails_checksum_and_leaves_no_output(kube_dir, store, tmp_path):
    manifest = ingest(store, make_archive(kube_dir, ArchiveSpec(memory=1 << 20))).manifest
    dump = store / manifest.pod_uid / manifest.checkpoint_id / "cart-api" / "dump.tar.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    out = tmp_path / "out.tar"
    with pytest.raises(ChecksumMismatch, match=manifest.ref.uri):
        retrieve.get(fsio.open_root(store, create=False), manifest.ref, out, SETTINGS, threading.Event())
    assert list(tmp_path.glob("*out.tar*")) == []


def test_incomplete_checkpoint_is_invisible_and_unreadable(kube_dir, store, tmp_path):
    manifest = ingest(store, make_archive(kube_dir)).manifest
    (store / manifest.pod_uid / manifest.checkpoint_id / ".checkpoint-complete").unlink()
    assert [e for e in listing(store) if isinstance(e, Checkpoint)] == []
    with pytest.raises(IncompleteCheckpoint, match="no completion marker"):
        retrieve.get(fsio.open_root(store, create=False), manifest.ref, tmp_path / "o", SETTINGS, threading.Event())


def test_marker_listing_a_missing_container_is_not_a_checkpoint(kube_dir, store):
    manifest = ingest(store, make_archive(kube_dir)).manifest
    marker = store / manifest.pod_uid / manifest.checkpoint_id / ".checkpoint-complete"
    body = json.loads(marker.read_text())
    body["containers"].append("sidecar")
    marker.write_text(json.dumps(body))
    [entry] = listing(store)
    assert isinstance(entry, Skipped) and "sidecar" in entry.reason


def test_symlink_in_the_store_is_refused_not_followed(kube_dir, store, tmp_path):
    manifest = ingest(store, make_archive(kube_dir)).manifest
    outside = tmp_path / "outside"
    (store / manifest.pod_uid).rename(outside)
    (store / manifest.pod_uid).symlink_to(outside)
    with pytest.raises(UnsafeNameError, match="symlink"):
        retrieve.get(fsio.open_root(store, create=False), manifest.ref, tmp_path / "o", SETTINGS, threading.Event())
    [entry] = listing(store)
    assert isinstance(entry, Skipped) and "symlink" in entry.reason
    # And an ingest of the same pod must not write through the link either.
    other = make_archive(kube_dir, name=archive_name(Pod(), "2026-11-25T11:00:00Z"))
    before = sorted(p.name for p in outside.rglob("*"))
    with pytest.raises(UnsafeNameError, match="symlink"):
        ingest(store, other)
    assert sorted(p.name for p in outside.rglob("*")) == before
    assert not list((store / ".ingest" / "node-a" / "staging").iterdir())


def test_unknown_artifact(store, kube_dir, tmp_path):
    ingest(store, make_archive(kube_dir))
    ref = layout.ArtifactRef("0000", "20260101T000000Z-00000000", "x")
    with pytest.raises(UnknownCheckpoint, match="does not exist"):
        retrieve.get(fsio.open_root(store, create=False), ref, tmp_path / "o", SETTINGS, threading.Event())


def test_one_checkpoint_for_all_containers_of_a_pod_marker_last(kube_dir, store):
    pods = [Pod(container=name) for name in ("cart-api", "envoy", "log-shipper")]
    paths = [make_archive(kube_dir, ArchiveSpec(pod=p, memory=100_000)) for p in pods]
    root = fsio.open_root(store, create=True)
    staged = [service.stage_archive(root, p, "node-a", None, SETTINGS, threading.Event()) for p in paths]
    # Until commit, nothing is visible.
    assert [e for e in listing(store) if isinstance(e, Checkpoint)] == []
    results = service.commit_staged(root, "node-a", staged, "node-b", NOW)
    assert len({r.manifest.checkpoint_id for r in results}) == 1
    [checkpoint] = [e for e in listing(store) if isinstance(e, Checkpoint)]
    assert checkpoint.marker.containers == ("cart-api", "envoy", "log-shipper")
    assert checkpoint.summary()["artifactURIs"].keys() == {"cart-api", "envoy", "log-shipper"}


def test_staging_is_clean_after_a_refused_archive(kube_dir, store):
    bad = kube_dir / archive_name(Pod())
    bad.write_bytes(archive_bytes(ArchiveSpec(spec={"annotations": {}})))
    with pytest.raises(IdentityError, match="no Kubernetes identity"):
        ingest(store, bad)
    assert not list((store / ".ingest" / "node-a" / "staging").iterdir())
    assert listing(store) == []


def test_archive_changed_while_read_is_not_committed(kube_dir, store):
    """The writer touched the file after the ingest began: re-checked before commit, refused."""
    archive = make_archive(kube_dir, ArchiveSpec(memory=384 << 20))
    staging = store / ".ingest" / "node-a" / "staging"
    touched = threading.Event()

    def touch_once_reading_began():
        while not (staging.exists() and any(staging.iterdir())):
            pass
        os.utime(archive, ns=(0, archive.stat().st_mtime_ns + 1))
        touched.set()

    toucher = threading.Thread(target=touch_once_reading_began, daemon=True)
    toucher.start()
    with pytest.raises(ArchiveChanged, match="changed while it was read"):
        ingest(store, archive)
    assert touched.is_set()
    assert listing(store) == [] and not list(staging.iterdir())


def test_long_ingests_log_progress(kube_dir, store, caplog):
    archive = make_archive(kube_dir, ArchiveSpec(memory=64 << 20))
    root = fsio.open_root(store, create=True)
    with caplog.at_level("INFO", logger="watcher.zstream"):
        service.ingest_archive(root, archive, "node-a", CompressionSettings(progress_interval=0.0, chunk_size=4 << 20),
                               threading.Event(), NOW)
    progress = [r for r in caplog.records if r.getMessage() == "ingest progress"]
    assert len(progress) >= 10
    assert progress[-1].fields["archive"] == archive.name and progress[-1].fields["bytesRead"] > 0


def _bounded(src: Path, dst: Path, compressed: int, raw: int) -> tuple[Exception, int, int]:
    """decompress_stream over real files with these bounds: (its error, bytes it read, bytes it wrote)."""
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(ChecksumMismatch) as caught:
            decompress_stream(src_fd, dst_fd, SETTINGS, threading.Event(), True, Bounds(compressed, raw, "dump d"))
        return caught.value, os.lseek(src_fd, 0, os.SEEK_CUR), dst.stat().st_size
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def test_decompression_stops_at_the_promised_uncompressed_size(tmp_path):
    bomb = tmp_path / "bomb.zst"
    bomb.write_bytes(zstandard.ZstdCompressor().compress(bytes(256 << 20)))  # 256 MiB of zeros in ~8 KiB
    error, _, written = _bounded(bomb, tmp_path / "out", bomb.stat().st_size, 1 << 20)
    assert str(error) == ("dump d: stored dump decompresses to more than the manifest's uncompressedSize "
                          "(1048576 bytes); stopped there")
    assert written <= 1 << 20, written


def test_decompression_stops_reading_past_the_promised_compressed_size(tmp_path):
    dump = tmp_path / "dump.zst"
    dump.write_bytes(zstandard.ZstdCompressor().compress(os.urandom(8 << 20)))  # incompressible: ~8 MiB
    error, read, _ = _bounded(dump, tmp_path / "out", 1 << 20, 8 << 20)
    assert str(error) == ("dump d: stored dump is longer than the manifest's compressedSize (1048576 bytes); "
                          "not read further")
    assert read == (1 << 20) + 1, read


def test_a_forged_dump_that_expands_is_refused_by_get_before_it_fills_the_disk(kube_dir, store, tmp_path):
    result = ingest(store, make_archive(kube_dir))
    ref = result.manifest.ref
    base = store / ref.pod_uid / ref.checkpoint_id / ref.container
    # 64 MiB of zeros: 512 blocks, few enough to pass the frame walk, so decompression's bound stops it.
    forged = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(64 << 20))
    (base / "dump.tar.zst").write_bytes(forged)
    body = json.loads((base / "manifest.json").read_text())
    (base / "manifest.json").write_text(json.dumps({
        **body, "checksumSHA256": hashlib.sha256(forged).hexdigest(), "compressedSize": len(forged)}))
    out = tmp_path / "out.tar"
    root = fsio.open_root(store, create=False)
    try:
        with pytest.raises(ChecksumMismatch, match=f"artifact {ref.uri}: stored dump decompresses to more than "
                                                   f"the manifest's uncompressedSize \\({body['uncompressedSize']} "
                                                   "bytes\\); stopped there"):
            retrieve.get(root, ref, out, SETTINGS, threading.Event())
        with pytest.raises(ChecksumMismatch, match="decompresses to more than the manifest's uncompressedSize"):
            retrieve.verify(root, ref, SETTINGS, threading.Event())
    finally:
        os.close(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["kubelet-checkpoints", "store"])


@pytest.mark.parametrize(("change", "reason"), [
    (lambda dump: dump[:-100], "it ends at byte"),
    (lambda dump: dump[:-2], "inside the content checksum, cut short"),
    (lambda dump: dump + b"\0" * 8, "it holds 8 bytes after its zstd frame"),
    (lambda dump: b"\0" * 4 + dump[4:], "it does not start with the zstd magic number"),
], ids=["cut in a block", "cut in the checksum", "bytes after the frame", "no magic"])
def test_get_refuses_a_dump_that_is_not_one_whole_frame_even_when_its_manifest_agrees(kube_dir, store, tmp_path,
                                                                                       change, reason):
    ref = ingest(store, make_archive(kube_dir)).manifest.ref
    base = store / ref.pod_uid / ref.checkpoint_id / ref.container
    dump = change((base / "dump.tar.zst").read_bytes())
    (base / "dump.tar.zst").write_bytes(dump)
    body = json.loads((base / "manifest.json").read_text())
    (base / "manifest.json").write_text(json.dumps(
        {**body, "checksumSHA256": hashlib.sha256(dump).hexdigest(), "compressedSize": len(dump)}))
    root = fsio.open_root(store, create=False)
    try:
        with pytest.raises(ChecksumMismatch) as caught:
            retrieve.get(root, ref, tmp_path / "out.tar", SETTINGS, threading.Event())
    finally:
        os.close(root)
    assert str(caught.value).startswith(f"artifact {ref.uri}: stored dump is not one whole zstd frame: "), caught.value
    assert reason in str(caught.value), caught.value
    assert not (tmp_path / "out.tar").exists()


def test_a_frame_of_more_blocks_than_its_promised_content_needs_is_refused_without_decompressing(kube_dir, store,
                                                                                                tmp_path):
    ref = ingest(store, make_archive(kube_dir)).manifest.ref
    base = store / ref.pod_uid / ref.checkpoint_id / ref.container
    forged = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(512 << 20))  # 4096 blocks of zeros
    (base / "dump.tar.zst").write_bytes(forged)
    body = json.loads((base / "manifest.json").read_text())
    (base / "manifest.json").write_text(json.dumps(
        {**body, "checksumSHA256": hashlib.sha256(forged).hexdigest(), "compressedSize": len(forged)}))
    root = fsio.open_root(store, create=False)
    try:
        with pytest.raises(ChecksumMismatch, match="stored dump is not one whole zstd frame: it has more than 1024 "
                                                   "blocks for what it holds"):
            retrieve.verify(root, ref, SETTINGS, threading.Event())
    finally:
        os.close(root)
