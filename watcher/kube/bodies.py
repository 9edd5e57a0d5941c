"""The Kubernetes bodies lpm writes, typed (STYLE.md: raw API payloads are TypedDicts).

Only what lpm sends is typed here; what it reads from the API server stays ``dict[str, Any]`` and
is checked field by field where it is used, since another writer may have put anything there.
lpm's own kinds are in ``watcher.cluster.objects``.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class ObjectMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]


class OwnerReference(TypedDict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool


class ObjectReference(TypedDict):
    """An Event's ``involvedObject``; namespace and uid are None for what has none."""

    apiVersion: str
    kind: str
    name: str
    namespace: str | None
    uid: str | None


class EventSource(TypedDict):
    component: str
    host: str


class Event(TypedDict):
    """core/v1 Event."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    involvedObject: ObjectReference
    reason: str
    message: str
    type: str
    """Normal or Warning."""
    source: EventSource
    reportingComponent: str
    reportingInstance: str
    firstTimestamp: str
    lastTimestamp: str
    count: int


class DeleteOptions(TypedDict, total=False):
    dryRun: list[str]


class Eviction(TypedDict):
    """policy/v1 Eviction: a pod removed only as its disruption budgets allow."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    deleteOptions: NotRequired[DeleteOptions]


class LeaseSpec(TypedDict):
    holderIdentity: str | None
    """None: released."""
    leaseDurationSeconds: int
    """Seconds the lease counts as held after ``renewTime``."""
    renewTime: str
    """MicroTime: RFC 3339 with exactly six fractional digits."""
    acquireTime: NotRequired[str | None]
    leaseTransitions: NotRequired[int]


class Lease(TypedDict):
    """coordination.k8s.io/v1 Lease: the agents' node Leases and the collectors' lock."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: LeaseSpec
