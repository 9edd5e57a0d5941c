"""The collector's Prometheus metrics, and how full the store's filesystem is.

Usage is computed as ``df`` computes Use%: used / (used + available to unprivileged
writers), because that is when ingest starts failing with ENOSPC, not when the last
root-reserved block goes. The alert rule (issue 6) fires on ``lpm_gc_store_usage_ratio > 0.8``;
the collector also logs a warning every pass above that line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

USAGE_WARNING = 0.8


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


def store_usage(root_fd: int) -> StoreUsage:
    info = os.fstatvfs(root_fd)
    return StoreUsage(used=(info.f_blocks - info.f_bfree) * info.f_frsize,
                      capacity=info.f_blocks * info.f_frsize,
                      available=info.f_bavail * info.f_frsize)


class Metrics:
    """One registry per collector, so tests (and two collectors in one process) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.used = Gauge("lpm_gc_store_used_bytes", "Bytes used on the store's filesystem", registry=r)
        self.capacity = Gauge("lpm_gc_store_capacity_bytes", "Size of the store's filesystem in bytes", registry=r)
        self.usage = Gauge("lpm_gc_store_usage_ratio",
                           "Used / (used + available), as df's Use%; alert above 0.8", registry=r)
        self.freed = Counter("lpm_gc_freed_bytes", "Bytes freed by deletions", registry=r)
        self.deletions = Counter("lpm_gc_deletions", "Deletions by reason", ["reason"], registry=r)
        self.kept = Counter("lpm_gc_kept", "Entries a rule selected but the collector kept, by why",
                            ["because"], registry=r)
        self.errors = Counter("lpm_gc_errors", "Deletions or reads that failed, and passes that could not run",
                              registry=r)
        self.duration = Histogram("lpm_gc_pass_duration_seconds", "Duration of one collection pass",
                                  buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900), registry=r)
        self.last_pass = Gauge("lpm_gc_last_pass_timestamp_seconds", "When the last pass ended", registry=r)

    def record_usage(self, usage: StoreUsage) -> None:
        self.used.set(usage.used)
        self.capacity.set(usage.capacity)
        self.usage.set(usage.ratio)

    def serve(self, port: int) -> int:
        """Serve /metrics on ``port`` (0: any free port) in a daemon thread; returns the port."""
        server, _ = start_http_server(port, registry=self.registry)
        return int(server.server_address[1])
