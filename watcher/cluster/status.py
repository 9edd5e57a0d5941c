"""Status updates that survive concurrent writers: read, change, write with the resourceVersion.

A 409 means someone else wrote in between; re-read and apply the change again (bounded). The change is
a pure function of the fresh status; ``transition`` is the one that moves a phase.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from watcher.cluster.objects import MigrationPhase, Phase, lpm_path
from watcher.errors import Conflict
from watcher.kube.client import Kube

ATTEMPTS = 5

Mutation = Callable[[dict[str, Any]], dict[str, Any] | None]
"""Given the fresh status (a copy), return the new one, or None when nothing needs to change."""

FINISHED = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})
"""The phases every request and migration ends in (the two enums share their values)."""


def transition(status: dict[str, Any], phase: Phase | MigrationPhase, message: str, *,
               settled: Collection[str] = FINISHED, within: Collection[str] | None = None,
               **fields: Any) -> dict[str, Any] | None:
    """``status`` moved to ``phase`` with ``message`` and ``fields`` (a ``Mutation``, once bound).

    None, so nothing is written, when the fresh status is in a ``settled`` phase — a writer that decided
    on an older read must not flip a finished object, nor one another agent has taken on from there — or
    outside ``within`` when given (a note that stays in its phase: ``within={phase}``), or when it says
    this already: a repeat would only move the fields' timestamps (``startTime``)."""
    if status.get("phase") in settled or (within is not None and status.get("phase") not in within):
        return None
    if status.get("phase") == phase.value and status.get("message") == message:
        return None
    status.update({"phase": phase.value, "message": message, **fields})
    return status


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def update_status(kube: Kube, kind: str, namespace: str | None, name: str, mutate: Mutation) -> dict[str, Any]:
    """Write ``mutate``'s status; the object as it stands after (unchanged when ``mutate`` said None)."""
    for _ in range(ATTEMPTS):
        obj = await kube.get(lpm_path(kind, namespace, name))
        status = mutate(copy.deepcopy(obj.get("status", {})))
        if status is None:
            return obj
        obj["status"] = status
        try:
            return await kube.replace(lpm_path(kind, namespace, name, status=True), obj)
        except Conflict:
            continue
    raise Conflict(f"{kind} {namespace}/{name}: status kept changing under us ({ATTEMPTS} tries)", 409)
