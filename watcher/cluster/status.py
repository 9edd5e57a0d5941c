"""Status updates that survive concurrent writers: read, change, write with the resourceVersion.

A 409 means someone else wrote in between; re-read and apply the change again (bounded).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from watcher.cluster.objects import lpm_path
from watcher.errors import Conflict
from watcher.kube.client import Kube

ATTEMPTS = 5

Mutation = Callable[[dict[str, Any]], dict[str, Any] | None]
"""Given the fresh object, return its new status, or None when nothing needs to change."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def update_status(kube: Kube, kind: str, namespace: str | None, name: str, mutate: Mutation) -> dict[str, Any]:
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
