"""The checkpoint image writer on real kubelet archives: layout, reproducibility, memory, store."""

import io
import json
import os
import stat
import tarfile
import threading
import tracemalloc
from datetime import UTC, datetime

import pytest

from lab.archives import ArchiveSpec, make_archive
from tests.restore.support import PODMAN_CONFIG, checkpoint_tar, layout_files, read_blob
from watcher.errors import ImageError
from watcher.ingest import service
from watcher.restore.image import Platform, write_image
from watcher.store import fsio, retrieve
from watcher.zstream import CompressionSettings

AMD64 = Platform("amd64")


def test_layout_holds_the_archive_files_at_the_layer_root(tmp_path):
    archive = make_archive(tmp_path, ArchiveSpec(memory=300_000, config=PODMAN_CONFIG))
    image = write_image(archive, tmp_path / "image", "cart-api", "ckpt-1", AMD64)

    assert json.loads((image.path / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((image.path / "index.json").read_bytes())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest_digest]
    manifest = json.loads(read_blob(image.path, image.manifest_digest))
    assert manifest["annotations"]["io.podman.annotations.checkpoint.runtime.name"] == "crun"
    assert manifest["annotations"]["io.kubernetes.cri-o.annotations.checkpoint.name"] == "cart-api"
    config = json.loads(read_blob(image.path, image.config_digest))
    assert config["rootfs"]["diff_ids"] == [image.layer.digest] == [manifest["layers"][0]["digest"]]
    # Exactly the three blobs, each named by the SHA-256 of its bytes (checked by read_blob).
    assert layout_files(image.path) == sorted(
        ["oci-layout", "index.json"] + [f"blobs/sha256/{d[7:]}" for d in
                                        (image.manifest_digest, image.config_digest, image.layer.digest)])

    layer = read_blob(image.path, image.layer.digest)
    assert len(layer) == image.layer.size
    with tarfile.open(fileobj=io.BytesIO(layer)) as copied, tarfile.open(archive) as source:
        names = copied.getnames()
        assert names == sorted(source.getnames())
        for member in copied.getmembers():
            assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0)
            original = source.getmember(member.name)
            assert member.mode == original.mode and member.type == original.type
            if member.isfile():
                assert copied.extractfile(member).read() == source.extractfile(original).read()


def test_same_archive_gives_byte_identical_images(tmp_path):
    archive = make_archive(tmp_path, ArchiveSpec(memory=1 << 20, config=PODMAN_CONFIG))
    first = write_image(archive, tmp_path / "one", "cart-api", "ckpt", AMD64)
    second = write_image(archive, tmp_path / "two", "cart-api", "ckpt", AMD64)
    assert second.manifest_digest == first.manifest_digest
    assert {name: (first.path / name).read_bytes() for name in layout_files(first.path)} == {
        name: (second.path / name).read_bytes() for name in layout_files(second.path)}


def test_order_owners_and_times_of_the_source_do_not_change_the_image(tmp_path):
    # The same files written by two runtimes, in another order, at another time, by another user.
    plain = checkpoint_tar(tmp_path / "plain.tar")
    other = checkpoint_tar(tmp_path / "other.tar", reverse=True, mtime=1764065472, uid=1000,
                           uname="crio", mode_bits=0o4000)
    assert plain.read_bytes() != other.read_bytes()
    one = write_image(plain, tmp_path / "one", "cart-api", "ckpt", AMD64)
    two = write_image(other, tmp_path / "two", "cart-api", "ckpt", AMD64)
    assert (one.layer, one.manifest_digest) == (two.layer, two.manifest_digest)


def test_different_checkpoints_give_different_images(tmp_path):
    # make_archive writes fresh random pages each time: another dump of the same container.
    first = make_archive(tmp_path, ArchiveSpec(memory=1 << 20), name="first.tar")
    second = make_archive(tmp_path, ArchiveSpec(memory=1 << 20), name="second.tar")
    one = write_image(first, tmp_path / "one", "cart-api", "ckpt", AMD64)
    two = write_image(second, tmp_path / "two", "cart-api", "ckpt", AMD64)
    assert one.layer.digest != two.layer.digest
    assert one.manifest_digest != two.manifest_digest


def test_memory_does_not_grow_with_the_archive(tmp_path):
    archive = make_archive(tmp_path, ArchiveSpec(memory=96 << 20))
    # tracemalloc sees every Python allocation (the copy buffer, the header index, any
    # bytes object a read makes), which is where holding the archive would show.
    tracemalloc.start()
    try:
        image = write_image(archive, tmp_path / "image", "cart-api", "ckpt", AMD64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.layer.size > 96 << 20
    # The 1 MiB copy buffer and small change; holding the archive would be 96 MiB.
    assert peak < 2 << 20, f"peak {peak} bytes for a {archive.stat().st_size} byte archive"


def test_from_the_store_dump_to_the_same_image(tmp_path, kube_dir, store):
    """The destination's path: dump.tar.zst in the store, verified back to the archive, then the image."""
    archive = make_archive(kube_dir, ArchiveSpec(memory=2 << 20, config=PODMAN_CONFIG))
    direct = write_image(archive, tmp_path / "direct", "cart-api", "ckpt", AMD64)
    settings, cancel = CompressionSettings(), threading.Event()
    root = fsio.open_root(store, create=True)
    try:
        now = datetime.now(UTC)
        manifest = service.ingest_archive(root, archive, "node-a", settings, cancel, now).manifest
        retrieve.get(root, manifest.ref, tmp_path / "retrieved.tar", settings, cancel)
    finally:
        os.close(root)
    image = write_image(tmp_path / "retrieved.tar", tmp_path / "image", manifest.container_name, "ckpt", AMD64)
    assert image.manifest_digest == direct.manifest_digest


def test_the_image_is_private_whatever_the_umask(tmp_path):
    """The layer is the process's memory: no other user may read it, as in the store."""
    archive = make_archive(tmp_path, ArchiveSpec())
    old = os.umask(0)
    try:
        image = write_image(archive, tmp_path / "image", "cart-api", "ckpt", AMD64)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in [image.path, *image.path.rglob("*")]}
    assert modes == {name: 0o700 if (tmp_path / name).is_dir() else 0o600 for name in modes}


def test_existing_output_is_refused_and_left_alone(tmp_path):
    archive = make_archive(tmp_path, ArchiveSpec())
    out = tmp_path / "image"
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(ImageError, match="already exists"):
        write_image(archive, out, "cart-api", "ckpt", AMD64)
    assert [p.name for p in out.iterdir()] == ["keep"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    archive = make_archive(tmp_path, ArchiveSpec())
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ImageError, match="unusable image tag"):
        write_image(archive, tmp_path / "image", "cart-api", "no/slashes", AMD64)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
