"""Who takes a container's checkpoint for the source: the node's runtime (default) or its kubelet.

- ``RuntimeCheckpointer``: CRI ``CheckpointContainer`` on this node's runtime socket. Needs the socket
  (the restore-containerd and restore-containers-storage components mount it) and no API permission:
  an agent can dump only its own node's pods (docs/threat-model.md, rule 8).
- ``KubeletCheckpointer``: the kubelet's ``POST /checkpoint``, for nodes where the agent may not reach the
  runtime (restore-registry). Needs ``create nodes/checkpoint``, which RBAC cannot limit to one node: every
  agent's token can then dump any pod on any node (deploy/components/checkpoint-kubelet says so).

Both leave the archive in the kubelet's checkpoint directory under the kubelet's naming, so the rest of
the source's path (claims, ingest, the collector's hygiene) is one path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from watcher.archive import names
from watcher.backoff import grace
from watcher.cluster.nodes import endpoint_of
from watcher.cluster.objects import meta, node_path
from watcher.kube.client import Kube
from watcher.kubelet import KubeletClient, KubeletSettings
from watcher.runtime import checkpoint as runtime_checkpoint
from watcher.runtime.checkpoint import RuntimeCheckpointError

log = logging.getLogger(__name__)


class Checkpointer(Protocol):
    def planned(self, pod: Mapping[str, Any], container: str) -> str | None:
        """The file name the next checkpoint of ``container`` will be written under, where the caller may
        know it before asking (to read the archive while it is written); None where the writer names it."""

    async def checkpoint(self, pod: Mapping[str, Any], container: str, name: str | None) -> str:
        """Checkpoint ``container`` of ``pod`` (into ``name``, from ``planned``); the file name of its archive
        in the checkpoint directory."""

    async def settle(self) -> None:
        """Wait for the checkpoint calls still under way (bounded): the agent stops only after them."""

    async def close(self) -> None: ...


class KubeletCheckpointer:
    def __init__(self, kube: Kube, node: str, settings: KubeletSettings) -> None:
        self._kube = kube
        self._node = node
        self._settings = settings
        self._client = KubeletClient(settings)

    def planned(self, pod: Mapping[str, Any], container: str) -> None:
        return None  # the kubelet names its archives itself, and says the name only in its answer

    async def checkpoint(self, pod: Mapping[str, Any], container: str, name: str | None) -> str:
        endpoint = endpoint_of(await self._kube.get(node_path(self._node)), self._settings.port)
        path = await self._client.checkpoint(endpoint, meta(pod)["namespace"], meta(pod)["name"], container)
        return path.name

    async def settle(self) -> None:
        """The kubelet cancels the runtime's call when its request is dropped (``watcher.kubelet``): wait for
        each request still out, up to the kubelet's deadline for the runtime and the reply's grace."""
        timeout = self._settings.checkpoint_timeout
        await _settle(self._client.in_flight, timeout + grace(timeout))

    async def close(self) -> None:
        await self.settle()
        await self._client.close()


class RuntimeCheckpointer:
    def __init__(self, settings: runtime_checkpoint.Settings) -> None:
        self._settings = settings
        self._in_flight: set[asyncio.Task[None]] = set()
        """Calls still running, their waiters gone or not (see ``runtime_checkpoint.checkpoint``)."""

    def planned(self, pod: Mapping[str, Any], container: str) -> str:
        # The kubelet's naming, to the microsecond: a name no earlier checkpoint has, so the file that appears
        # under it can only be this checkpoint's.
        return names.format_name(meta(pod)["name"], meta(pod)["namespace"], container, datetime.now(UTC))

    async def checkpoint(self, pod: Mapping[str, Any], container: str, name: str | None) -> str:
        archive = name or self.planned(pod, container)
        path = await runtime_checkpoint.checkpoint(self._settings, container_id(pod, container), archive,
                                                   self._in_flight)
        return path.name

    async def settle(self) -> None:
        """Cut short, a call would leave its container paused: each gets the runtime's timeout and its grace."""
        await _settle(self._in_flight, self._settings.timeout + grace(self._settings.timeout))

    async def close(self) -> None:
        await self.settle()


async def _settle(in_flight: set[asyncio.Task[Any]], limit: float) -> None:
    """Wait up to ``limit`` seconds for the checkpoint calls in ``in_flight`` (the agent is stopping)."""
    if not in_flight:
        return
    log.warning("waiting for checkpoint calls under way before stopping", extra={"fields": {
        "calls": len(in_flight), "atMostSeconds": limit}})
    _, left = await asyncio.wait(set(in_flight), timeout=limit)
    if left:
        log.error("checkpoint calls still under way at shutdown; their containers may stay paused", extra={
            "fields": {"calls": len(left)}})


def container_id(pod: Mapping[str, Any], container: str) -> str:
    """The runtime's ID of a running ``container`` of ``pod``, from the pod's status (``containerd://<id>``)."""
    what = f"pod {meta(pod)['namespace']}/{meta(pod)['name']} container {container}"
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") != container:
            continue
        if "running" not in (status.get("state") or {}):
            raise RuntimeCheckpointError(f"{what} is not running ({sorted(status.get('state') or {})}): "
                                         "nothing to checkpoint")
        scheme, sep, found = str(status.get("containerID", "")).partition("://")
        if not sep or not found:
            raise RuntimeCheckpointError(f"{what}: the pod's status names no runtime container ID "
                                         f"({status.get('containerID')!r})")
        return found
    raise RuntimeCheckpointError(f"{what}: not in the pod's status yet (not started)")
