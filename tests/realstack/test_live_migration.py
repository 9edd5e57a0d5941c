"""A live migration end to end: a counter in memory moves from node-a to node-b and goes on.

The scenario is lab/live.py's ``migrate_counter``, the very code path of the README's live demo
(scripts/demo_live.py): it raises ``MigrationFailed`` unless the counter goes on in the restored
pod on node-b from its last value (no reset, no gap), the pod is the one restored from the
source, and the source pod is deleted. Its progress lines (phases, counter values, the freeze
window and the restore's step times) are printed: pytest shows them with ``-s`` or on failure.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from lab.controlplane import ControlPlane
from lab.live import migrate_counter
from lab.sandbox import Sandbox, rootfs


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(rootfs(), tmp_path_factory.mktemp("live-share")) as box:
        yield box


@pytest.mark.asyncio
async def test_counter_survives_migration_from_node_a_to_node_b(control_plane: ControlPlane,
                                                                 sandbox: Sandbox) -> None:
    await migrate_counter(control_plane, sandbox, print)
