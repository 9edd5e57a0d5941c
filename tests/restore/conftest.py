"""Fixtures for the real-tool checks of checkpoint images, and two nodes' views of one store."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.restore.tools import Registry, Skopeo, run_registry


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    return Skopeo(tmp_path)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield from run_registry(tmp_path / "registry")


@pytest.fixture
def two_views(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    if os.geteuid() != 0 or shutil.which("bindfs") is None:
        pytest.fail("needs root and bindfs (FUSE) for a second view of the store: run scripts/setup --for-tests", pytrace=False)
    store, view = tmp_path / "store-a", tmp_path / "view-b"
    store.mkdir(mode=0o700)
    view.mkdir(mode=0o700)
    subprocess.run(["bindfs", str(store), str(view)], check=True)
    try:
        yield store, view
    finally:
        subprocess.run(["umount", str(view)], check=True)
