"""The pure part of the checkpoint image: annotations, config, manifest and index, table-tested."""

import hashlib
import json

import pytest

from watcher.errors import ArchiveError, ImageError, UnsafeNameError
from watcher.restore.image import (
    CRIO_NAME,
    CRIU_NAME,
    CRIU_ROOTFS_IMAGE,
    PODMAN_NAME,
    PODMAN_RUNTIME,
    ConfigDump,
    Platform,
    checkpoint_annotations,
    parse_config_dump,
    plan_image,
)
from watcher.restore.layer import LayerDigest

LAYER = LayerDigest("sha256:" + "ab" * 32, 281088)
PODMAN_DUMP = ConfigDump(rootfs_image_name="localhost/counter:1", runtime="crun")
AMD64 = Platform("amd64")


@pytest.mark.parametrize(("config", "expected"), [
    (PODMAN_DUMP, {CRIO_NAME: "cart-api", CRIU_NAME: "cart-api", PODMAN_NAME: "cart-api",
                   CRIU_ROOTFS_IMAGE: "localhost/counter:1", PODMAN_RUNTIME: "crun"}),
    # CRI-O's config.dump may carry no runtime: podman's key is left out, not guessed.
    (ConfigDump("app:1", None), {CRIO_NAME: "cart-api", CRIU_NAME: "cart-api", PODMAN_NAME: "cart-api",
                                 CRIU_ROOTFS_IMAGE: "app:1"}),
    (ConfigDump(None, None), {CRIO_NAME: "cart-api", CRIU_NAME: "cart-api", PODMAN_NAME: "cart-api"}),
])
def test_annotations(config, expected):
    assert checkpoint_annotations("cart-api", config) == expected


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"id": "0123", "rootfsImageName": "app:1", "runtime": "crun"}', ConfigDump("app:1", "crun")),
    (b'{"id": "0123", "rootfsImageName": "app:1"}', ConfigDump("app:1", None)),
    (b'{"rootfsImageName": "", "runtime": null}', ConfigDump(None, None)),
])
def test_config_dump_fields(data, expected):
    assert parse_config_dump(data, "archive a.tar") == expected


@pytest.mark.parametrize(("data", "message"), [
    (b"{not json", "config.dump is not valid JSON"),
    (b"\xff\xfe", "config.dump is not valid JSON"),
    (b'["crun"]', "config.dump is not a JSON object"),
    (b'{"runtime": 7}', "field 'runtime' is not a string"),
    (b'{"rootfsImageName": {"name": "x"}}', "field 'rootfsImageName' is not a string"),
])
def test_bad_config_dump_is_refused(data, message):
    with pytest.raises(ArchiveError, match=message):
        parse_config_dump(data, "archive a.tar")


def test_plan_is_the_oci_documents_with_annotations_on_the_manifest():
    plan = plan_image(LAYER, "cart-api", PODMAN_DUMP, AMD64, "ckpt-1")
    config = json.loads(plan.config.data)
    manifest = json.loads(plan.manifest.data)
    index = json.loads(plan.index)
    assert config == {"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [LAYER.digest]}}
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"] == {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": plan.config.digest, "size": len(plan.config.data)}
    assert manifest["layers"] == [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": LAYER.digest, "size": LAYER.size}]
    assert manifest["annotations"] == checkpoint_annotations("cart-api", PODMAN_DUMP)
    assert index["manifests"] == [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": plan.manifest.digest, "size": len(plan.manifest.data),
                                   "annotations": {"org.opencontainers.image.ref.name": "ckpt-1"}}]
    assert "annotations" not in index  # podman reads the manifest's, nowhere else
    for blob in (plan.config, plan.manifest):
        assert blob.digest == "sha256:" + hashlib.sha256(blob.data).hexdigest()


def test_plan_is_deterministic_and_canonical():
    first = plan_image(LAYER, "cart-api", PODMAN_DUMP, AMD64, "ckpt-1")
    assert plan_image(LAYER, "cart-api", PODMAN_DUMP, AMD64, "ckpt-1") == first
    # Sorted keys, no spaces: the bytes do not depend on dict order or on json's defaults.
    manifest = json.loads(first.manifest.data)
    assert first.manifest.data == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("change", [
    {"layer": LayerDigest("sha256:" + "cd" * 32, 281088)},
    {"container": "cart-web"},
    {"config": ConfigDump("localhost/counter:2", "crun")},
    {"config": ConfigDump("localhost/counter:1", "runc")},
    {"platform": Platform("arm64")},
])
def test_every_input_shows_in_the_manifest_digest(change):
    base = {"layer": LAYER, "container": "cart-api", "config": PODMAN_DUMP, "platform": AMD64}
    first = plan_image(base["layer"], base["container"], base["config"], base["platform"], "t")
    moved = {**base, **change}
    second = plan_image(moved["layer"], moved["container"], moved["config"], moved["platform"], "t")
    assert second.manifest.digest != first.manifest.digest


def test_the_tag_names_the_image_but_is_not_part_of_it():
    one = plan_image(LAYER, "cart-api", PODMAN_DUMP, AMD64, "one")
    two = plan_image(LAYER, "cart-api", PODMAN_DUMP, AMD64, "two")
    assert one.manifest == two.manifest and one.index != two.index


@pytest.mark.parametrize("tag", ["", "-lead", "a/b", "a:b", "x" * 129, "../up"])
def test_unusable_tag_is_refused(tag):
    with pytest.raises(ImageError, match="unusable image tag"):
        plan_image(LAYER, "cart-api", PODMAN_DUMP, AMD64, tag)


@pytest.mark.parametrize("container", ["", "Cart", "cart/api", "../x", "a" * 64])
def test_unsafe_container_name_is_refused(container):
    with pytest.raises(UnsafeNameError):
        plan_image(LAYER, container, PODMAN_DUMP, AMD64, "t")
