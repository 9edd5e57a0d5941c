"""The base images, pulled on the destination while the source still checkpoints.

A restored container runs on the image its checkpoint was taken from. The runtime pulls that image during
the restore when the node lacks it (containerd's restore does, by the ``NAME@sha256:DIGEST`` the source's
container status reported), and then the pull is inside the freeze window. So when a migration to this node
starts, its agent has its runtime pull those images at once, beside the checkpoint; the restore waits for a
pull still under way rather than starting a second one. A pull that fails is logged and changes nothing:
the restore pulls (or fails) as it would have. Only digest references are pulled (what the restore looks
up); an image known to the node only by its ID was not pulled from anywhere, and is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.cluster.objects import MigrationPhase, meta, pod_path
from watcher.cluster.reads import get_or_none
from watcher.errors import LpmError
from watcher.kube.client import Kube
from watcher.runtime import images

log = logging.getLogger(__name__)

EARLY = frozenset({MigrationPhase.PENDING.value, MigrationPhase.CHECKPOINTING.value})
"""The phases a migration's base images are pulled in: from its start until its checkpoint is complete."""
PULL_TIMEOUT = 900.0
"""Seconds one pull may take; an image larger than that is pulled by the restore as before."""
_REMEMBERED = 1024
"""Migrations whose pulls are remembered; the oldest are forgotten past that (their restores are long done)."""


def references(pod: Mapping[str, Any]) -> dict[str, str]:
    """Container name -> the ``NAME@sha256:DIGEST`` its status reports (pure); others are left out."""
    found: dict[str, str] = {}
    for status in pod.get("status", {}).get("containerStatuses") or []:
        image = status.get("imageID") or ""
        name, _, digest = image.partition("@sha256:")
        if name and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            found[status.get("name", "")] = image
    return found


@dataclass
class EarlyPulls:
    kube: Kube
    node: str
    endpoint: str
    """This node's CRI socket."""
    _pulls: OrderedDict[str, asyncio.Task[None]] = field(default_factory=OrderedDict)
    """By migration UID: all its pulls, as one task."""

    def begin(self, migration: Mapping[str, Any]) -> None:
        """Start pulling the base images of ``migration`` once, if it comes to this node and is early enough."""
        uid = meta(migration)["uid"]
        if (migration["spec"]["targetNode"] != self.node or uid in self._pulls
                or migration.get("status", {}).get("phase", MigrationPhase.PENDING.value) not in EARLY):
            return
        self._pulls[uid] = asyncio.create_task(self._pull_all(migration), name=f"early pulls {uid}")
        while len(self._pulls) > _REMEMBERED:
            _, oldest = self._pulls.popitem(last=False)
            oldest.cancel()

    async def settled(self, migration: Mapping[str, Any]) -> None:
        """Wait for the migration's early pulls, if any, to end (each is bounded by ``PULL_TIMEOUT``)."""
        task = self._pulls.get(meta(migration)["uid"])
        if task is not None:
            await asyncio.gather(asyncio.shield(task), return_exceptions=True)

    async def close(self) -> None:
        for task in self._pulls.values():
            task.cancel()
        await asyncio.gather(*self._pulls.values(), return_exceptions=True)

    async def _pull_all(self, migration: Mapping[str, Any]) -> None:
        namespace, name = meta(migration)["namespace"], meta(migration)["name"]
        try:
            pod = await get_or_none(self.kube, pod_path(namespace, migration["spec"]["podName"]))
        except LpmError as err:  # a head start only: the restore pulls as it always did
            log.info("base images not pulled early: the source pod could not be read", extra={"fields": {
                "migration": f"{namespace}/{name}", "reason": str(err)}})
            return
        wanted = references(pod or {})
        await asyncio.gather(*(self._pull(f"{namespace}/{name}", container, reference)
                               for container, reference in wanted.items()))

    async def _pull(self, migration: str, container: str, reference: str) -> None:
        started = time.monotonic()
        fields = {"migration": migration, "container": container, "image": reference}
        try:
            pulled = await images.pull_if_absent(self.endpoint, reference, PULL_TIMEOUT)
        except images.PullFailed as err:
            log.warning("base image not pulled early; the restore pulls it", extra={"fields": {
                **fields, "reason": str(err)}})
            return
        if pulled:
            log.info("base image pulled early", extra={"fields": {
                **fields, "seconds": round(time.monotonic() - started, 3)}})
        else:
            log.info("base image on the node already", extra={"fields": fields})
