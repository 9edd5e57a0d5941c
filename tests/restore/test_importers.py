"""The importers that are not podman's: a real containerd, and a real registry behind TLS.

(containerd's streamed import of a stored checkpoint: tests/restore/test_stream.py. Both restore for real
on the lab's real nodes: tests/realstack/test_real_nodes.py over containerd,
tests/realstack/test_crio_nodes.py over CRI-O from containers-storage.)
"""

import asyncio
import json

import pytest

from lab.archives import ArchiveSpec, make_archive
from tests.restore.containerd import binaries
from tests.restore.support import PODMAN_CONFIG
from watcher.restore.image import CRIU_NAME, write_image
from watcher.restore.importer import ContainerdImporter, ImportFailed, RegistryImporter

REPOSITORY = "lpm-checkpoint-shop-cart-cart-api"
TAG = "20261125t183000z-0123abcd"


@pytest.fixture
def image(tmp_path):
    archive = make_archive(tmp_path, ArchiveSpec(memory=2 << 20, config=PODMAN_CONFIG))
    (tmp_path / "work").mkdir()  # as the destination's per-restore work directory
    return write_image(archive, tmp_path / "work" / "image", "cart-api", TAG)


def test_containerd_not_there_is_a_clear_import_failure(tmp_path):
    importer = ContainerdImporter(address=str(tmp_path / "no-such.sock"), ctr=str(binaries() / "ctr"))
    with pytest.raises(ImportFailed) as err:
        # More than a pipe holds: the feed meets the closed pipe, and ctr's own error is what is raised.
        asyncio.run(importer.import_archive(lambda out: out.write(bytes(4 << 20)), TAG, REPOSITORY))
    message = str(err.value)
    assert message.startswith(f"import of localhost/{REPOSITORY}:{TAG}: ctr failed: ")
    assert "no-such.sock" in message


def test_a_registry_push_is_pinned_by_digest_and_verified_by_tls(image, registry, skopeo):
    importer = RegistryImporter(f"{registry.address}/lpm", cert_dir=registry.cert_dir)
    reference = asyncio.run(importer.import_image(image.path, TAG, REPOSITORY))
    assert reference == f"{registry.address}/lpm/{REPOSITORY}@{image.manifest_digest}"

    # What a node pulls by that reference is the manifest lpm wrote and verified, annotations and all.
    raw = skopeo("inspect", "--raw", "--cert-dir", str(registry.cert_dir), f"docker://{reference}")
    assert json.loads(raw)["annotations"][CRIU_NAME] == "cart-api"
    tagged = json.loads(skopeo("inspect", "--cert-dir", str(registry.cert_dir),
                               f"docker://{registry.address}/lpm/{REPOSITORY}:{TAG}"))
    assert tagged["Digest"] == image.manifest_digest


def test_a_registry_whose_certificate_is_not_trusted_is_refused(image, registry, tmp_path):
    # No CA given: the system's roots do not know the test CA, and lpm never turns verification off.
    importer = RegistryImporter(registry.address)
    with pytest.raises(ImportFailed) as err:
        asyncio.run(importer.import_image(image.path, TAG, REPOSITORY))
    assert f"import of {registry.address}/{REPOSITORY}:{TAG}: skopeo failed" in str(err.value)
    assert "certificate" in str(err.value)
    assert not (tmp_path / "registry" / "storage" / "docker" / "registry" / "v2" / "repositories").exists()


@pytest.mark.parametrize("registry", ["https://registry.example:5000", "user:pw@host", "host/Repo", "host:5000/x:tag",
                                      "", "host/../x"])
def test_a_registry_that_is_not_host_port_path_is_refused_up_front(registry):
    with pytest.raises(ValueError, match="expected host\\[:port\\]\\[/path\\]"):
        RegistryImporter(registry)
