"""A migration whose image goes through containers-storage (CRI-O's), restored by podman + CRIU.

Until CRI-O runs in the lab, this is the one restore, end to end, from what lpm's ``containers-storage``
importer writes (the real-node migration, over containerd, is tests/realstack/test_real_nodes.py). The
scenario is lab/podman_live.py's ``migrate_counter``: it raises ``MigrationFailed`` unless the counter
goes on in the restored pod on node-b from its last value and the source pod is deleted.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from lab.controlplane import ControlPlane
from lab.podman_live import migrate_counter
from lab.sandbox import Sandbox, rootfs


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(rootfs(), tmp_path_factory.mktemp("live-share")) as box:
        yield box


@pytest.mark.asyncio
async def test_counter_restored_from_containers_storage_by_podman(control_plane: ControlPlane,
                                                                 sandbox: Sandbox) -> None:
    await migrate_counter(control_plane, sandbox, print)
