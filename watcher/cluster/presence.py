"""This node's agent announces itself: a Lease saying it is alive and whether its runtime restores.

One coordination.k8s.io/v1 Lease per node, ``lpm-node-<node>`` in the agent's namespace, renewed
every ``RENEW`` seconds with annotations ``lpm.my.domain/restore-capable`` (``true`` | ``false`` |
``unknown``) and ``lpm.my.domain/restore-capability`` (why). A source agent reads the target's Lease
before it checkpoints anything (``watcher.cluster.admission``). A Lease rather than a Node annotation:
the agent needs no write access to Node objects, which RBAC cannot narrow to one's own node, and a
Lease that stops being renewed is itself the news that no agent runs there.

The capability is re-assessed at every renewal (two CRI calls on a local socket), so a runtime
reconfigured or upgraded under a running agent is seen within one period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

from watcher.cluster.objects import GROUP, node_path
from watcher.errors import ApiError, Conflict, LpmError, NotFound
from watcher.kube.bodies import Lease
from watcher.kube.client import Kube
from watcher.runtime import cri
from watcher.runtime.capability import Capability, RuntimeFacts, Verdict, decide, from_node_info, parse_config

log = logging.getLogger("lpm.agent")

CAPABLE_ANNOTATION = f"{GROUP}/restore-capable"
CAPABILITY_ANNOTATION = f"{GROUP}/restore-capability"
RENEW = 30.0  # seconds between renewals
DURATION = 90  # seconds a Lease counts as live after its renewal: three renewals may be missed


def lease_name(node: str) -> str:
    return f"lpm-node-{node}"


def lease_path(namespace: str, node: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases"
    return path if node is None else f"{path}/{quote(lease_name(node), safe='')}"


def micro_time(moment: datetime) -> str:
    # MicroTime wants exactly six fractional digits.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(namespace: str, node: str, capability: Capability, now: datetime) -> Lease:
    """The whole Lease as this node's agent writes it (created, or replacing the last one)."""
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease_name(node), "namespace": namespace,
                     "annotations": {CAPABLE_ANNOTATION: capability.verdict.value,
                                     CAPABILITY_ANNOTATION: capability.reason}},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": DURATION, "renewTime": micro_time(now)},
    }


async def assess(kube: Kube, node: str, endpoint: str | None) -> Capability:
    """Ask the runtime over CRI; without an endpoint, or when it does not answer, read what the kubelet
    reported in the Node's status (which cannot show the runtime's config)."""
    unreachable = ""
    if endpoint:
        try:
            report = await cri.query(endpoint)
        except LpmError as err:
            unreachable = str(err)
        else:
            return decide(RuntimeFacts(report.name, report.version, parse_config(report.info), "CRI"))
    try:
        obj = await kube.get(node_path(node))
        reported = obj.get("status", {}).get("nodeInfo", {}).get("containerRuntimeVersion", "")
        capability = decide(from_node_info(reported))
    except ApiError as err:
        capability = Capability(Verdict.UNKNOWN, "", "", f"the Node's status could not be read: {err}")
    if unreachable:
        return Capability(capability.verdict, capability.runtime, capability.version,
                          f"{capability.reason}; {unreachable}")
    return capability


class Announcer:
    """Keeps this node's Lease written; ``current`` is the last assessment (for /readyz and metrics)."""

    def __init__(self, kube: Kube, namespace: str, node: str, endpoint: str | None,
                 on_change: Callable[[Capability], None]) -> None:
        self._kube = kube
        self._namespace = namespace
        self._node = node
        self._endpoint = endpoint
        self._on_change = on_change
        self.current: Capability | None = None

    async def renew(self) -> None:
        """Assess the runtime again and write the Lease. An API error is logged: the next renewal tries
        again, and meanwhile the Lease going stale tells sources the truth."""
        capability = await assess(self._kube, self._node, self._endpoint)
        if capability != self.current:
            log.log(logging.INFO if capability.verdict is Verdict.CAPABLE else logging.WARNING,
                    "restore capability", extra={"fields": {"verdict": capability.verdict.value,
                                                            "reason": capability.reason}})
            self.current = capability
            self._on_change(capability)
        try:
            await self._write(capability)
        except ApiError as err:
            log.warning("node lease not written", extra={"fields": {"error": str(err)}})

    async def run(self, stop: asyncio.Event) -> None:
        """Renew every ``RENEW`` seconds until ``stop`` (the first write is the caller's ``renew()``)."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=RENEW)
                return
            except TimeoutError:
                await self.renew()

    async def _write(self, capability: Capability) -> None:
        body = lease_body(self._namespace, self._node, capability, datetime.now(UTC))
        try:
            existing = await self._kube.get(lease_path(self._namespace, self._node))
        except NotFound:
            await self._kube.create(lease_path(self._namespace), body)
            return
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        try:
            await self._kube.replace(lease_path(self._namespace, self._node), body)
        except Conflict:
            pass  # another writer in between (this node's previous agent, mid-rollout): renewed next time

