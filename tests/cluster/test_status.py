"""The one status transition every reconciler writes with (``watcher.cluster.status.transition``)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.cluster.objects import MigrationPhase, Phase
from watcher.cluster.status import transition

SOURCE_DONE = frozenset({"CheckpointComplete", "Restoring", "Succeeded", "Failed"})


@pytest.mark.parametrize("status, phase, message, settled, fields, expected", [
    # a fresh object moves, with its fields
    ({}, Phase.RUNNING, "checkpointing", None, {}, {"phase": "Running", "message": "checkpointing"}),
    ({"phase": "Running", "message": "checkpointing"}, Phase.SUCCEEDED, "checkpoint s3://x", None,
     {"ready": True, "boundContentName": "c-1"},
     {"phase": "Succeeded", "message": "checkpoint s3://x", "ready": True, "boundContentName": "c-1"}),
    # what it said before stays unless overwritten
    ({"phase": "Restoring", "message": "restoring on node-b", "sourceNode": "node-a"}, MigrationPhase.FAILED,
     "restore failed: gone", None, {},
     {"phase": "Failed", "message": "restore failed: gone", "sourceNode": "node-a"}),
    # finished objects are final: a late writer never flips them
    ({"phase": "Succeeded", "message": "done"}, Phase.FAILED, "too late", None, {}, None),
    ({"phase": "Failed", "message": "no"}, Phase.RUNNING, "checkpointing", None, {}, None),
    # said already: a repeat would only move its timestamps
    ({"phase": "Checkpointing", "message": "checkpointing on node-a", "startTime": "2026-12-02T03:00:00Z"},
     MigrationPhase.CHECKPOINTING, "checkpointing on node-a", SOURCE_DONE, {"startTime": "2026-12-02T03:05:00Z"},
     None),
    ({"phase": "Checkpointing", "message": "checkpointing on node-a"}, MigrationPhase.CHECKPOINTING,
     "checkpointing on node-c", SOURCE_DONE, {},
     {"phase": "Checkpointing", "message": "checkpointing on node-c"}),
    # settled is the writer's: the source's half stops where the destination takes over
    ({"phase": "Restoring", "message": "restoring on node-b"}, MigrationPhase.FAILED, "pod gone", SOURCE_DONE, {},
     None),
    ({"phase": "Restoring", "message": "restoring on node-b"}, MigrationPhase.SUCCEEDED, "running on node-b",
     None, {"completionTime": "2026-12-02T03:09:00Z"},
     {"phase": "Succeeded", "message": "running on node-b", "completionTime": "2026-12-02T03:09:00Z"}),
    # a kubelet archive's record may be made Succeeded over anything but Succeeded
    ({"phase": "Failed", "message": "old"}, Phase.SUCCEEDED, "taken without a request", frozenset({"Succeeded"}),
     {}, {"phase": "Succeeded", "message": "taken without a request"}),
])
def test_transition(status: dict[str, Any], phase: Phase | MigrationPhase, message: str,
                    settled: frozenset[str] | None, fields: dict[str, Any], expected: dict[str, Any] | None) -> None:
    kwargs: dict[str, Any] = {} if settled is None else {"settled": settled}
    assert transition(dict(status), phase, message, **kwargs, **fields) == expected


RESTORING = MigrationPhase.RESTORING
WAITING = "restored pod running on node-b; waiting to remove source pod shop/web-0: eviction refused"


@pytest.mark.parametrize("status, expected", [
    # a note that stays in its phase: written in it only, and only once
    ({"phase": "Restoring", "message": "restored pod web-0-r created on node-b", "handover": "RestoredReady"},
     {"phase": "Restoring", "message": WAITING, "handover": "RestoredReady"}),
    ({"phase": "Restoring", "message": WAITING}, None),
    ({"phase": "Succeeded", "message": "running on node-b as web-0-r"}, None),
    ({"phase": "CheckpointComplete", "message": "checkpoint 5e0b/20261202T030000Z"}, None),
    ({}, None),
])
def test_a_note_within_its_phase(status: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert transition(dict(status), RESTORING, WAITING, within={RESTORING.value}) == expected
