"""Shared fixtures: real directories, real archives, the real ``lpm`` command."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def kube_dir(tmp_path: Path) -> Path:
    """A kubelet checkpoint directory as the kubelet makes it (0700)."""
    path = tmp_path / "kubelet-checkpoints"
    path.mkdir(mode=0o700)
    return path

@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


from tests.inspect.fixtures import archives, checkpointctl  # noqa: E402,F401  (real CRIU archives, checkpointctl)
from tests.realstack.fixtures import *  # noqa: E402,F401,F403  (the session's real control plane)
