"""What to delete, decided from the scan alone: a pure function, no I/O, no clock.

Rules (issue 5), applied in this order:

1. An incomplete checkpoint, a staging file, an empty pod directory or an S3 store's multipart upload
   whose newest mtime (or part) is older than ``stale_after`` was abandoned (a live write touches its
   files every chunk, and sends a part every 8 MiB).
   A fresher one may be being written right now and is left alone.
2. A complete checkpoint older than ``retention`` (by its manifests' ``creationTime``) expired.
3. Limits with parity to checkpoint-restore-operator, on what is left, oldest first: count per
   container, per pod, per namespace, then total size per namespace, then overall.

A ``.keep`` pin wins over every rule, and like checkpoint-restore-operator's pins, a pinned
checkpoint still counts toward the limits: the limit takes the next-oldest unpinned one.
Whether an API object still references a checkpoint is not decided here (it needs the API);
the collector asks for the checkpoints this plan names, and keeps those it cannot clear.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from lpm_gc.entries import Entry, Kind


class Reason(str, Enum):
    ABANDONED = "abandoned"
    STALE_STAGING = "stale-staging"
    ABANDONED_UPLOAD = "abandoned-upload"
    """An S3 store's multipart upload with no part sent for ``stale_after``: aborted."""
    EMPTY_POD = "empty-pod-dir"
    RETENTION = "retention"
    MAX_PER_CONTAINER = "max-per-container"
    MAX_PER_POD = "max-per-pod"
    MAX_PER_NAMESPACE = "max-per-namespace"
    MAX_SIZE_PER_NAMESPACE = "max-size-per-namespace"
    MAX_TOTAL_SIZE = "max-total-size"
    KUBELET_ARCHIVE = "kubelet-archive-ingested"
    """Not planned here: the kubelet directory's own rule (``kubelet``), reported alike."""


@dataclass(frozen=True)
class Policy:
    retention: float | None = 86400.0
    """Seconds a complete checkpoint is kept after its creationTime; None keeps them forever."""
    stale_after: float = 3600.0
    """Seconds without any write after which an incomplete checkpoint counts as abandoned."""
    max_per_container: int | None = None
    """Checkpoints holding one container (namespace/pod name/container) kept, newest first."""
    max_per_pod: int | None = None
    """Checkpoints of one pod (namespace/pod name: a recreated pod keeps its name) kept."""
    max_per_namespace: int | None = None
    max_size_per_namespace: int | None = None
    """Bytes of complete checkpoints kept per namespace."""
    max_total_size: int | None = None
    """Bytes of complete checkpoints kept in the whole store."""


@dataclass(frozen=True, slots=True)  # one per deletion: tens of thousands on a big store
class Deletion:
    entry: Entry
    reason: Reason


@dataclass(frozen=True)
class Plan:
    deletions: list[Deletion] = field(default_factory=list)
    kept_pinned: list[Entry] = field(default_factory=list)
    """Pinned entries that a rule would otherwise have deleted (each once)."""


_STALE_REASON = {Kind.INCOMPLETE: Reason.ABANDONED, Kind.STAGING: Reason.STALE_STAGING,
                 Kind.EMPTY_POD: Reason.EMPTY_POD, Kind.UPLOAD: Reason.ABANDONED_UPLOAD}


def _age_order(entry: Entry) -> tuple[float, str, str]:
    # Oldest first; the names break ties so that a plan never depends on listing order.
    # (Only complete checkpoints have a ``created``; the others sort by name among themselves.)
    return (entry.created, entry.name, entry.parent)


def plan(entries: Iterable[Entry], policy: Policy, now: float) -> Plan:
    deletions: list[Deletion] = []
    pinned: dict[Entry, None] = {}  # ordered set: a pin may block several rules
    survivors: list[Entry] = []

    def decide(entry: Entry, reason: Reason) -> None:
        if entry.pinned:
            pinned[entry] = None
        else:
            deletions.append(Deletion(entry, reason))

    for entry in sorted(entries, key=_age_order):
        if entry.kind is not Kind.COMPLETE:
            if now - entry.modified > policy.stale_after:
                decide(entry, _STALE_REASON[entry.kind])
        elif policy.retention is not None and now - entry.created > policy.retention:
            decide(entry, Reason.RETENTION)
        else:
            survivors.append(entry)

    alive = dict.fromkeys(survivors)  # ordered set, oldest first; limits remove from it

    def limit(budget: int | None, weight: Callable[[Entry], int],
              keys: Callable[[Entry], Iterable[tuple[str, ...]]], reason: Reason) -> None:
        if budget is not None:
            _apply(alive, budget, weight, keys, reason, decide)

    def one(entry: Entry) -> int:
        return 1

    def size(entry: Entry) -> int:
        return entry.size

    limit(policy.max_per_container, one, lambda e: [(e.namespace, e.pod_name, c) for c in e.containers],
          Reason.MAX_PER_CONTAINER)
    limit(policy.max_per_pod, one, lambda e: [(e.namespace, e.pod_name)], Reason.MAX_PER_POD)
    limit(policy.max_per_namespace, one, lambda e: [(e.namespace,)], Reason.MAX_PER_NAMESPACE)
    limit(policy.max_size_per_namespace, size, lambda e: [(e.namespace,)], Reason.MAX_SIZE_PER_NAMESPACE)
    limit(policy.max_total_size, size, lambda e: [()], Reason.MAX_TOTAL_SIZE)
    return Plan(deletions, list(pinned))


def _apply(
    alive: dict[Entry, None],
    budget: int,
    weight: Callable[[Entry], int],
    keys: Callable[[Entry], Iterable[tuple[str, ...]]],
    reason: Reason,
    decide: Callable[[Entry, Reason], None],
) -> None:
    """Within each group whose weight is over ``budget``, drop the oldest unpinned entries until it fits.

    A count limit weighs every entry 1; a size limit weighs its bytes.
    """
    groups: dict[tuple[str, ...], list[Entry]] = defaultdict(list)
    for entry in alive:  # oldest first, so each group is too
        for key in keys(entry):
            groups[key].append(entry)
    for key in sorted(groups):
        group = [e for e in groups[key] if e in alive]  # a multi-container checkpoint may be gone already
        excess = sum(map(weight, group)) - budget
        for entry in group:
            if excess <= 0:
                break
            decide(entry, reason)
            if not entry.pinned:
                del alive[entry]
                excess -= weight(entry)
