"""How full the store's filesystem is: what the agent and the collector both report.

Usage is computed as ``df`` computes Use%: used / (used + available to unprivileged
writers), because that is when ingest starts failing with ENOSPC, not when the last
root-reserved block goes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

USAGE_WARNING = 0.8
"""The line the alert (deploy/overlays/alerting) and the collector's warning are drawn at."""


@dataclass(frozen=True)
class StoreUsage:
    used: int
    capacity: int
    available: int
    """Bytes an unprivileged writer (the agent) can still write."""

    @property
    def ratio(self) -> float:
        denominator = self.used + self.available
        return self.used / denominator if denominator else 0.0


def store_usage(root: int | Path) -> StoreUsage:
    """Usage of the filesystem holding ``root`` (an open directory fd or a path)."""
    info = os.statvfs(root)
    return StoreUsage(used=(info.f_blocks - info.f_bfree) * info.f_frsize,
                      capacity=info.f_blocks * info.f_frsize,
                      available=info.f_bavail * info.f_frsize)
