"""Fixtures for the real-tool checks of checkpoint images."""

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
