"""Cluster mode's lock: a coordination.k8s.io/v1 Lease, held for one pass and renewed meanwhile.

Taking it is an optimistic write: create it, or replace it carrying the resourceVersion that
was read, so of two collectors racing for a free or expired Lease the API server lets exactly
one win (the other gets 409 and skips the pass). A Lease is expired when its ``renewTime`` plus
``leaseDurationSeconds`` is past; that compares clocks across nodes, which Kubernetes already
needs in sync, and ``_SKEW`` absorbs what NTP leaves.

While a pass runs, a task renews the Lease every third of its duration. ``held()`` turns
False once the last successful renewal is older than the duration minus a margin, *before*
another collector may take it over: the runner checks it before every deletion and stops.
Any API error while acquiring counts as "not acquired": no lock, no deletions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from watcher.errors import ApiError, Conflict, NotFound
from watcher.kube.bodies import Lease
from watcher.kube.client import Kube

log = logging.getLogger("lpm.gc.lease")

LEASE_NAME = "lpm-gc"
DURATION = 60  # seconds
_SKEW = timedelta(seconds=5)
_MARGIN = 10.0  # seconds before our Lease could expire in another collector's eyes that we stop
_TIMEOUT = 10  # seconds per request


def _micro_time(moment: datetime) -> str:
    # MicroTime wants exactly six fractional digits; isoformat() drops them when they are 0.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime:
    """A MicroTime (or Time) as the API server writes it; ValueError for anything else."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class LeaseLock:
    def __init__(self, kube: Kube, namespace: str, identity: str, name: str = LEASE_NAME,
                 duration: int = DURATION) -> None:
        self._kube = kube
        self._leases = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases"
        self._path = f"{self._leases}/{quote(name, safe='')}"
        self._namespace = namespace
        self._identity = identity
        self._name = name
        self._duration = duration
        self._valid_until = 0.0  # time.monotonic() after which we no longer count as holder
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> bool:
        started = time.monotonic()
        try:
            taken = await self._take()
        except Exception as err:  # unknown is not "free": no lock, no deletions  # noqa: BLE001
            log.warning("collector lease unavailable; skipping this pass",
                        extra={"fields": {"lease": self._where, "error": _describe(err)}})
            return False
        if taken:
            self._valid_until = started + self._duration - _MARGIN
            self._renewer = asyncio.create_task(self._renew(), name="gc-lease-renewer")
        return taken

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self.held():
            self._valid_until = 0.0
            try:
                lease = await self._kube.get(self._path, timeout=_TIMEOUT)
                if lease.get("spec", {}).get("holderIdentity") == self._identity:
                    await self._write(lease, holder=None, acquired=None)
            except Exception as err:  # it expires on its own; say so and go on  # noqa: BLE001
                log.info("collector lease not released; it expires by itself",
                         extra={"fields": {"lease": self._where, "error": _describe(err)}})

    @property
    def _where(self) -> str:
        return f"{self._namespace}/{self._name}"

    async def _take(self) -> bool:
        try:
            lease = await self._kube.get(self._path, timeout=_TIMEOUT)
        except NotFound:
            return await self._create()
        spec = lease.get("spec", {})
        now = datetime.now(UTC)
        holder = spec.get("holderIdentity")
        if holder and holder != self._identity and not self._expired(spec, now):
            log.info("another collector holds the lease; skipping this pass",
                     extra={"fields": {"lease": self._where, "holder": holder}})
            return False
        try:
            await self._write(lease, holder=self._identity, acquired=now,
                              transitions=(spec.get("leaseTransitions") or 0) + (holder != self._identity))
        except Conflict:  # another collector wrote it first
            return False
        return True

    def _expired(self, spec: Mapping[str, Any], now: datetime) -> bool:
        renewed = spec.get("renewTime") or spec.get("acquireTime")
        if renewed is None:
            return True
        duration = timedelta(seconds=spec.get("leaseDurationSeconds") or self._duration)
        # A time that does not parse raises: acquire() counts that as "not acquired", never as expired.
        return _parse_time(renewed) + duration + _SKEW < now

    async def _create(self) -> bool:
        now = _micro_time(datetime.now(UTC))
        body: Lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": self._name, "namespace": self._namespace},
                       "spec": {"holderIdentity": self._identity, "leaseDurationSeconds": self._duration,
                                "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
        try:
            await self._kube.create(self._leases, body, timeout=_TIMEOUT)
        except Conflict:  # created by another collector between our read and create
            return False
        return True

    async def _write(self, lease: Mapping[str, Any], holder: str | None, acquired: datetime | None,
                     transitions: int | None = None) -> None:
        """Replace ``lease`` as read (its resourceVersion: a collector that wrote in between makes this 409)."""
        spec = lease.get("spec", {})
        body: Lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": self._name, "namespace": self._namespace,
                                    "resourceVersion": lease["metadata"]["resourceVersion"]},
                       "spec": {"holderIdentity": holder, "leaseDurationSeconds": self._duration,
                                "acquireTime": _micro_time(acquired) if acquired else spec.get("acquireTime"),
                                "renewTime": _micro_time(datetime.now(UTC)),
                                "leaseTransitions": transitions if transitions is not None
                                else spec.get("leaseTransitions", 0)}}
        await self._kube.replace(self._path, body, timeout=_TIMEOUT)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._duration / 3)
            started = time.monotonic()
            try:
                lease = await self._kube.get(self._path, timeout=_TIMEOUT)
                holder = lease.get("spec", {}).get("holderIdentity")
                if holder != self._identity:
                    log.error("collector lease taken over; stopping deletions",
                              extra={"fields": {"lease": self._where, "holder": holder}})
                    self._valid_until = 0.0
                    return
                await self._write(lease, holder=self._identity, acquired=None)
            except Exception as err:  # retried until the lease runs out; held() says when  # noqa: BLE001
                log.warning("collector lease renewal failed",
                            extra={"fields": {"lease": self._where, "error": _describe(err)}})
                continue
            self._valid_until = started + self._duration - _MARGIN


def _describe(err: BaseException) -> str:
    if isinstance(err, ApiError):
        return str(err)  # method, path, status and the server's message (watcher.kube.client)
    return f"{err.__class__.__name__}: {err}"
