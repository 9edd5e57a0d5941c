"""The collector's Prometheus metrics.

How full the store is comes from ``watcher.store.usage``, which the agent reports too. The
alert rule (deploy/overlays/alerting) fires on ``lpm_gc_store_usage_ratio > 0.8`` (or the
agents' ``lpm_store_usage_ratio``); the collector also logs a warning every pass above that line.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from watcher.store.usage import StoreUsage


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
