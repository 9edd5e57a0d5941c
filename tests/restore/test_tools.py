"""lpm's checkpoint images as the real tools see them: skopeo reads the layout, a real registry keeps it."""

import json

from lab.archives import ArchiveSpec, make_archive
from tests.restore.support import PODMAN_CONFIG, layout_files, read_blob
from watcher.restore.image import (
    CRIO_NAME,
    CRIU_NAME,
    CRIU_ROOTFS_IMAGE,
    PODMAN_NAME,
    PODMAN_RUNTIME,
    host_platform,
    write_image,
)

ANNOTATIONS = {CRIO_NAME: "cart-api", CRIU_NAME: "cart-api", PODMAN_NAME: "cart-api",
               CRIU_ROOTFS_IMAGE: "localhost/counter:1", PODMAN_RUNTIME: "crun"}


def checkpoint_image(tmp_path, tag="ckpt-1"):
    archive = make_archive(tmp_path, ArchiveSpec(memory=3 << 20, config=PODMAN_CONFIG))
    return write_image(archive, tmp_path / "image", "cart-api", tag)


def test_skopeo_inspects_the_layout(tmp_path, skopeo):
    image = checkpoint_image(tmp_path)
    for reference in (f"oci:{image.path}:ckpt-1", f"oci:{image.path}"):  # by tag; the only image
        seen = json.loads(skopeo("inspect", reference))
        assert seen["Digest"] == image.manifest_digest
        assert seen["Layers"] == [image.layer.digest]
        assert (seen["Architecture"], seen["Os"]) == (host_platform().architecture, "linux")
    raw = skopeo("inspect", "--raw", f"oci:{image.path}:ckpt-1").encode()
    assert raw == read_blob(image.path, image.manifest_digest)
    assert json.loads(raw)["annotations"] == ANNOTATIONS
    config = skopeo("inspect", "--config", "--raw", f"oci:{image.path}:ckpt-1").encode()
    assert config == read_blob(image.path, image.config_digest)


def test_a_real_registry_keeps_the_manifest_digest(tmp_path, skopeo, registry):
    image = checkpoint_image(tmp_path)
    remote = f"docker://{registry.address}/lpm/ckpt:ckpt-1"
    # --preserve-digests: without it skopeo 1.9 gzips the uncompressed layer on the way to a registry, which makes
    # a new manifest with a new digest. TLS verified against the test CA, as everywhere.
    skopeo("copy", "--preserve-digests", "--dest-cert-dir", str(registry.cert_dir), f"oci:{image.path}:ckpt-1", remote)

    seen = json.loads(skopeo("inspect", "--cert-dir", str(registry.cert_dir), remote))
    assert seen["Digest"] == image.manifest_digest
    assert seen["Layers"] == [image.layer.digest]
    raw = skopeo("inspect", "--raw", "--cert-dir", str(registry.cert_dir), remote).encode()
    assert raw == read_blob(image.path, image.manifest_digest)
    assert json.loads(raw)["annotations"] == ANNOTATIONS

    # And back: what a node would pull is the very layout that was written, blob for blob.
    pulled = tmp_path / "pulled"
    skopeo("copy", "--preserve-digests", "--src-cert-dir", str(registry.cert_dir), remote, f"oci:{pulled}:ckpt-1")
    assert {name: (pulled / name).read_bytes() for name in layout_files(pulled) if name.startswith("blobs/")} == {
        name: (image.path / name).read_bytes() for name in layout_files(image.path) if name.startswith("blobs/")}
