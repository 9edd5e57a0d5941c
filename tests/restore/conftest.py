"""Fixtures for the real-tool checks of checkpoint images, and two nodes' views of one store."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.pki import CertificateAuthority
from tests.restore.tools import Registry, RegistryTLS, Skopeo, run_registry


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    return Skopeo(tmp_path)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Debian's registry on loopback behind TLS from a test CA: clients verify it, as lpm always does."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CertificateAuthority(pki, "lpm-test-registry-ca")
    serving = ca.issue_serving("registry", ["127.0.0.1"])
    # skopeo takes every *.crt in a cert dir as a root: give it the CA alone, not the serving certificate.
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(ca.cert_file, trust / "ca.crt")
    yield from run_registry(tmp_path / "registry", RegistryTLS(serving.cert, serving.key, trust / "ca.crt"))


@pytest.fixture
def two_views(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    if os.geteuid() != 0 or shutil.which("bindfs") is None:
        pytest.fail("needs root and bindfs (FUSE) for a second view of the store: run scripts/setup --for-tests",
                    pytrace=False)
    store, view = tmp_path / "store-a", tmp_path / "view-b"
    store.mkdir(mode=0o700)
    view.mkdir(mode=0o700)
    subprocess.run(["bindfs", str(store), str(view)], check=True)
    try:
        yield store, view
    finally:
        subprocess.run(["umount", str(view)], check=True)
