"""Before a migration's checkpoint: can the target node take it? Decided from the target's Lease.

The source pod is frozen and dumped by the checkpoint; a target that cannot restore would leave the
workload with nowhere to go. So a migration is refused, before any kubelet call, when the target's
agent says its runtime cannot restore, or when no live agent is there to say anything (no Lease, or
one not renewed within its duration). "Unknown" goes on, with a warning: refusing it would block
every runtime lpm does not know and every node whose runtime socket the agent cannot reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from watcher.cluster.presence import CAPABILITY_ANNOTATION, CAPABLE_ANNOTATION, DURATION, lease_name, lease_path
from watcher.errors import NotFound
from watcher.kube.client import Kube
from watcher.runtime.capability import Verdict

SKEW = timedelta(seconds=5)  # what NTP leaves between the target's clock and ours


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: str
    """Why refused; for an allowed migration, what to warn about ("" when nothing)."""


def _renewed(lease: Mapping[str, Any]) -> datetime | None:
    text = lease.get("spec", {}).get("renewTime") or lease.get("spec", {}).get("acquireTime")
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def admit(target: str, namespace: str, lease: Mapping[str, Any] | None, now: datetime) -> Admission:
    """Whether a migration to ``target`` may checkpoint, from the target's Lease (None: there is none)."""
    where = f"{namespace}/{lease_name(target)}"
    if lease is None:
        return Admission(False, f"no lpm agent on {target}: no Lease {where}")
    renewed = _renewed(lease)
    duration = lease.get("spec", {}).get("leaseDurationSeconds") or DURATION
    if renewed is None:
        return Admission(False, f"no live lpm agent on {target}: Lease {where} has no renewTime")
    if renewed + timedelta(seconds=duration) + SKEW < now:
        return Admission(False, f"no live lpm agent on {target}: Lease {where} last renewed "
                                f"{renewed.strftime('%Y-%m-%dT%H:%M:%SZ')}, over {duration} s ago")
    annotations = lease.get("metadata", {}).get("annotations") or {}
    verdict, reason = annotations.get(CAPABLE_ANNOTATION), annotations.get(CAPABILITY_ANNOTATION, "no reason given")
    if verdict == Verdict.NOT_CAPABLE.value:
        return Admission(False, f"target node {target} cannot restore checkpoints: {reason}")
    if verdict == Verdict.CAPABLE.value:
        return Admission(True, "")
    return Admission(True, f"target node {target} may not restore checkpoints: its capability is unknown ({reason})")


async def check_target(kube: Kube, namespace: str, target: str, now: datetime) -> Admission:
    """Read the target's Lease and decide; API errors other than 404 propagate (retried as any)."""
    try:
        lease: Mapping[str, Any] | None = await kube.get(lease_path(namespace, target))
    except NotFound:
        lease = None
    return admit(target, namespace, lease, now)
