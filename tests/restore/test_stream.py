"""The streamed restore: the stored dump is the checkpoint image's zstd layer, checked on its way to a real
containerd, and nothing is imported unless every check holds."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import tarfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from lab.archives import ArchiveSpec, Pod, make_archive
from tests.restore.containerd import Containerd, run_containerd
from tests.restore.support import PODMAN_CONFIG, Member, checkpoint_tar
from tests.restore.test_hostile import CASES
from watcher.crypt.keyring import Keyring
from watcher.errors import ArchiveError, ChecksumMismatch, KeyUnavailable, LpmError
from watcher.ingest import service
from watcher.restore import stream
from watcher.restore.image import CRIU_NAME, Platform
from watcher.restore.importer import ContainerdImporter
from watcher.restore.layer import ZSTD_MEDIA_TYPE
from watcher.restore.pipeline import import_checkpoint, repository
from watcher.restore.source import DirectorySource
from watcher.store import catalog, fsio
from watcher.store.manifest import Manifest
from watcher.zstream import CompressionSettings

SETTINGS = CompressionSettings()


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    with run_containerd() as daemon:
        yield daemon


@pytest.fixture
def root(store: Path) -> Iterator[int]:
    fd = fsio.open_root(store, create=True)
    yield fd
    os.close(fd)


def _ingest(root: int, archive: Path) -> Manifest:
    return service.ingest_archive(root, archive, "node-a", SETTINGS, threading.Event(), datetime.now(UTC),
                                  target_node="node-b").manifest


def _pod(name: str) -> Pod:
    return Pod(uid=str(uuid.uuid4()), namespace="shop", name=name, container="app")


def _forge(root: int, store: Path, manifest: Manifest, raw: bytes) -> Manifest:
    """Replace the stored dump by zstd(``raw``) with a manifest that matches it in every sum (what another
    node that can write the volume could plant); the forged manifest."""
    ref = manifest.ref
    container = store / ref.pod_uid / ref.checkpoint_id / ref.container
    dump = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    (container / "dump.tar.zst").write_bytes(dump)
    body = json.loads((container / "manifest.json").read_text()) | {
        "checksumSHA256": hashlib.sha256(dump).hexdigest(), "compressedSize": len(dump),
        "uncompressedSHA256": hashlib.sha256(raw).hexdigest(), "uncompressedSize": len(raw)}
    (container / "manifest.json").write_text(json.dumps(body))
    return catalog.find(root, ref)[1]


def _images(containerd: Containerd) -> list[str]:
    return [name for name in containerd.ctr("images", "ls", "-q").stdout.split() if not name.startswith("sha256:")]


def _import(root: int, manifest: Manifest, containerd: Containerd, work: Path) -> str:
    importer = ContainerdImporter(address=containerd.address, ctr=str(containerd.ctr_binary))
    imported = asyncio.run(import_checkpoint(DirectorySource(root, SETTINGS, threading.Event()), manifest.ref, work,
                                             importer, manifest.checksum_sha256))
    return imported.reference


def test_containerd_unpacks_the_stored_dump_itself_as_the_layer(root, store, kube_dir, containerd, tmp_path):
    archive = make_archive(kube_dir, ArchiveSpec(pod=_pod("cart-0"), memory=4 << 20, config=PODMAN_CONFIG))
    manifest = _ingest(root, archive)
    work = tmp_path / "work"
    reference = _import(root, manifest, containerd, work)
    assert reference == f"localhost/{repository(manifest)}:{manifest.checkpoint_id.lower()}"
    assert not work.exists()  # nothing was written on the node but what containerd keeps

    row = next(line.split() for line in containerd.ctr("images", "check").stdout.splitlines()
               if line.startswith(reference + " "))
    assert "complete" in row and row[-1] == "true", row  # every blob there, and unpacked for the snapshotter
    image_manifest = json.loads(containerd.ctr("content", "get", row[2]).stdout)
    [layer] = image_manifest["layers"]
    assert layer == {"mediaType": ZSTD_MEDIA_TYPE, "digest": f"sha256:{manifest.checksum_sha256}",
                     "size": manifest.compressed_size}
    assert image_manifest["annotations"][CRIU_NAME] == "app"
    config = json.loads(containerd.ctr("content", "get", image_manifest["config"]["digest"]).stdout)
    assert config["rootfs"]["diff_ids"] == [f"sha256:{manifest.uncompressed_sha256}"]
    # The layer containerd holds is the store's dump, byte for byte.
    held = containerd.ctr_bytes("content", "get", layer["digest"])
    ref = manifest.ref
    assert held == (store / ref.pod_uid / ref.checkpoint_id / ref.container / "dump.tar.zst").read_bytes()

    # A restart of the agent imports again: same name, nothing duplicated.
    assert _import(root, manifest, containerd, work) == reference
    assert _images(containerd).count(reference) == 1


def test_a_dump_that_fails_a_check_never_becomes_an_image(root, store, kube_dir, containerd, tmp_path):
    flipped = _ingest(root, make_archive(kube_dir, ArchiveSpec(pod=_pod("flip"), memory=1 << 20,
                                                               config=PODMAN_CONFIG)))
    dump = store / flipped.pod_uid / flipped.checkpoint_id / "app" / "dump.tar.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    # The zstd frame's own checksum or the SHA-256, whichever sees it first: either names the dump.
    with pytest.raises(ChecksumMismatch, match=f"^artifact {re.escape(flipped.ref.uri)}: stored dump "):
        _import(root, flipped, containerd, tmp_path / "work")

    setuid = _ingest(root, make_archive(kube_dir, ArchiveSpec(pod=_pod("suid"), memory=1 << 20,
                                                              config=PODMAN_CONFIG)))
    suid_tar = checkpoint_tar(tmp_path / "suid.tar", extra=[Member("checkpoint/x", b"x", mode=0o4755)])
    setuid = _forge(root, store, setuid, suid_tar.read_bytes())
    with pytest.raises(ArchiveError, match="'checkpoint/x' has mode 4755"):
        _import(root, setuid, containerd, tmp_path / "work")
    assert _images(containerd) == []  # the cut archive left no image behind


def _stream_refusal(root: int, manifest: Manifest) -> tuple[LpmError, bytes]:
    out = io.BytesIO()
    with pytest.raises(LpmError) as caught:
        stream.write_archive(DirectorySource(root, SETTINGS, threading.Event()), manifest.ref, manifest, out, "ckpt",
                             Platform("amd64"))
    return caught.value, out.getvalue()


NOT_NORMALISED = {
    "setuid": ([Member("checkpoint/x", b"x", mode=0o4755)], [], "'checkpoint/x' has mode 4755"),
    "sticky directory": ([Member("tmp", kind=tarfile.DIRTYPE, mode=0o1777)], [], "'tmp' has mode 1777"),
    "xattr": ([Member("checkpoint/x", b"x", pax=(("SCHILY.xattr.security.capability", "x"),))], [],
              "'checkpoint/x' carries pax records SCHILY.xattr.security.capability"),
}


# Where the stream's reader (the tar scanner, as ingest reads) words a refusal unlike tarfile's index.
SCANNER_SAYS = {"duplicate name": "config.dump appears twice",
                "oversized pax header": "extended header of .* bytes exceeds the",
                "config.dump is a directory": "config.dump is not a regular file"}


@pytest.mark.parametrize("case", [*CASES, *NOT_NORMALISED])
def test_a_forged_archive_is_refused_before_the_index_goes_out(root, store, kube_dir, tmp_path, case):
    extra, drop, message = {**CASES, **NOT_NORMALISED}[case]
    message = SCANNER_SAYS.get(case, message)
    manifest = _ingest(root, make_archive(kube_dir, ArchiveSpec(pod=_pod("forged"), memory=64 << 10,
                                                                config=PODMAN_CONFIG)))
    manifest = _forge(root, store, manifest,
                      checkpoint_tar(tmp_path / "forged.tar", extra=extra, drop=drop).read_bytes())
    error, sent = _stream_refusal(root, manifest)
    assert isinstance(error, ArchiveError), error
    assert re.search(message, str(error)), str(error)
    assert f"artifact {manifest.ref.uri}: " in str(error)  # the message names the checkpoint
    with tarfile.open(fileobj=io.BytesIO(sent + bytes(1024))) as tar:
        names = tar.getnames()
    assert "index.json" not in names  # what the runtime got is no image


def test_the_stream_matches_the_manifest_it_was_given(root, store, kube_dir):
    manifest = _ingest(root, make_archive(kube_dir, ArchiveSpec(pod=_pod("moved"), memory=64 << 10,
                                                                config=PODMAN_CONFIG)))
    _, current = catalog.find(root, manifest.ref)
    assert current == manifest
    stale = Manifest(**{**manifest.__dict__, "compressed_size": manifest.compressed_size + 1})
    error, _ = _stream_refusal(root, stale)
    assert str(error) == f"artifact {manifest.ref.uri}: its manifest changed while the dump was read"


def test_a_sealed_checkpoint_streams_opened_and_only_with_its_key(store, kube_dir, containerd, tmp_path):
    """Encryption at rest (docs/encryption.md): the layer containerd gets is the opened zstd stream, checked in
    a first read; without the key nothing is sent."""
    ring = Keyring({"k1": os.urandom(32)})
    sealed_settings = CompressionSettings(encryption=ring)
    root = fsio.open_root(store, create=True)
    try:
        archive = make_archive(kube_dir, ArchiveSpec(pod=_pod("sealed"), memory=2 << 20, config=PODMAN_CONFIG))
        manifest = service.ingest_archive(root, archive, "node-a", sealed_settings, threading.Event(),
                                          datetime.now(UTC), target_node="node-b").manifest
        assert manifest.encryption is not None
        importer = ContainerdImporter(address=containerd.address, ctr=str(containerd.ctr_binary))
        with pytest.raises(KeyUnavailable, match="k1"):
            asyncio.run(import_checkpoint(DirectorySource(root, SETTINGS, threading.Event()), manifest.ref,
                                          tmp_path / "work", importer, manifest.checksum_sha256))
        assert _images(containerd) == []
        imported = asyncio.run(import_checkpoint(DirectorySource(root, sealed_settings, threading.Event()),
                                                 manifest.ref, tmp_path / "work", importer, manifest.checksum_sha256))
    finally:
        os.close(root)
    row = next(line.split() for line in containerd.ctr("images", "check").stdout.splitlines()
               if line.startswith(imported.reference + " "))
    assert "complete" in row and row[-1] == "true", row
    [layer] = json.loads(containerd.ctr("content", "get", row[2]).stdout)["layers"]
    opened = zstandard.ZstdDecompressor().decompressobj().decompress(
        containerd.ctr_bytes("content", "get", layer["digest"]))
    assert hashlib.sha256(opened).hexdigest() == manifest.uncompressed_sha256  # the archive, opened, and no key in it
    assert layer["digest"] != f"sha256:{manifest.checksum_sha256}"  # not the sealed bytes
