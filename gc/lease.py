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
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from watcher.kube.bodies import Lease

log = logging.getLogger("lpm.gc.lease")

LEASE_NAME = "lpm-gc"
DURATION = 60  # seconds
_SKEW = timedelta(seconds=5)
_MARGIN = 10.0  # seconds before our Lease could expire in another collector's eyes that we stop
_TIMEOUT = 10  # seconds per request


def _micro_time(moment: datetime) -> str:
    # MicroTime wants exactly six fractional digits; isoformat() drops them when they are 0.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    def __init__(self, api: Any, namespace: str, identity: str, name: str = LEASE_NAME,
                 duration: int = DURATION) -> None:
        """``api`` is a kubernetes-asyncio ``CoordinationV1Api``."""
        self._api = api
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
                lease = await self._api.read_namespaced_lease(self._name, self._namespace, _request_timeout=_TIMEOUT)
                if lease.spec.holder_identity == self._identity:
                    await self._write(lease, holder=None, acquired=None)
            except Exception as err:  # it expires on its own; say so and go on  # noqa: BLE001
                log.info("collector lease not released; it expires by itself",
                         extra={"fields": {"lease": self._where, "error": _describe(err)}})

    @property
    def _where(self) -> str:
        return f"{self._namespace}/{self._name}"

    async def _take(self) -> bool:
        try:
            lease = await self._api.read_namespaced_lease(self._name, self._namespace, _request_timeout=_TIMEOUT)
        except ApiException as err:
            if err.status != 404:
                raise
            return await self._create()
        spec = lease.spec
        now = datetime.now(UTC)
        holder = spec.holder_identity
        if holder and holder != self._identity and not self._expired(spec, now):
            log.info("another collector holds the lease; skipping this pass",
                     extra={"fields": {"lease": self._where, "holder": holder}})
            return False
        try:
            await self._write(lease, holder=self._identity, acquired=now,
                              transitions=(spec.lease_transitions or 0) + (holder != self._identity))
        except ApiException as err:
            if err.status == 409:  # another collector wrote it first
                return False
            raise
        return True

    def _expired(self, spec: Any, now: datetime) -> bool:
        renewed = spec.renew_time or spec.acquire_time
        if renewed is None:
            return True
        duration = timedelta(seconds=spec.lease_duration_seconds or self._duration)
        return bool(renewed + duration + _SKEW < now)  # bool(): the client's objects are untyped

    async def _create(self) -> bool:
        now = _micro_time(datetime.now(UTC))
        body: Lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": self._name, "namespace": self._namespace},
                       "spec": {"holderIdentity": self._identity, "leaseDurationSeconds": self._duration,
                                "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
        try:
            await self._api.create_namespaced_lease(self._namespace, body, _request_timeout=_TIMEOUT)
        except ApiException as err:
            if err.status == 409:  # created by another collector between our read and create
                return False
            raise
        return True

    async def _write(self, lease: Any, holder: str | None, acquired: datetime | None,
                     transitions: int | None = None) -> Any:
        spec = lease.spec
        now = datetime.now(UTC)
        acquire_time = acquired or spec.acquire_time
        body: Lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": self._name, "namespace": self._namespace,
                                    "resourceVersion": lease.metadata.resource_version},
                       "spec": {"holderIdentity": holder, "leaseDurationSeconds": self._duration,
                                "acquireTime": _micro_time(acquire_time) if acquire_time else None,
                                "renewTime": _micro_time(now),
                                "leaseTransitions": transitions if transitions is not None else spec.lease_transitions}}
        return await self._api.replace_namespaced_lease(self._name, self._namespace, body, _request_timeout=_TIMEOUT)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._duration / 3)
            started = time.monotonic()
            try:
                lease = await self._api.read_namespaced_lease(self._name, self._namespace, _request_timeout=_TIMEOUT)
                if lease.spec.holder_identity != self._identity:
                    log.error("collector lease taken over; stopping deletions",
                              extra={"fields": {"lease": self._where, "holder": lease.spec.holder_identity}})
                    self._valid_until = 0.0
                    return
                await self._write(lease, holder=self._identity, acquired=None)
            except Exception as err:  # retried until the lease runs out; held() says when  # noqa: BLE001
                log.warning("collector lease renewal failed",
                            extra={"fields": {"lease": self._where, "error": _describe(err)}})
                continue
            self._valid_until = started + self._duration - _MARGIN


def _describe(err: BaseException) -> str:
    status = getattr(err, "status", None)
    return f"{status} {getattr(err, 'reason', '')}".strip() if status else f"{err.__class__.__name__}: {err}"
