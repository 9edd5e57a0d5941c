"""Events: what a person reads with ``kubectl describe`` instead of the agent's logs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from watcher.cluster.objects import meta
from watcher.errors import ApiError
from watcher.kube.bodies import Event
from watcher.kube.client import Kube

log = logging.getLogger(__name__)
COMPONENT = "lpm-agent"


async def record(kube: Kube, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False,
                 node: str) -> None:
    """Post a core/v1 Event about ``obj``. Best effort: an Event lost is logged, never fatal."""
    namespace = meta(obj).get("namespace") or "default"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body: Event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta(obj)['name'][:200]}-", "namespace": namespace},
        "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "Pod"),
                           "name": meta(obj)["name"], "namespace": meta(obj).get("namespace"),
                           "uid": meta(obj).get("uid")},
        "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT, "host": node}, "reportingComponent": COMPONENT,
        "reportingInstance": node, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    try:
        await kube.create(f"/api/v1/namespaces/{namespace}/events", body)
    except ApiError as err:
        log.warning("could not record event", extra={"fields": {"reason": reason, "error": str(err)}})
