"""``lpm gc``: the command line of the collector (tests outside this repository rely on it).

    lpm gc --store DIR [--once] [--interval 10m] [--retention 24h] [--stale-after 1h] [--dry-run]
           [--standalone | --kubeconfig FILE]

plus the optional limits, kubelet hygiene and metrics flags below. ``watcher.cli`` registers
the subcommand and hands the parsed arguments to ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lpm_gc import s3 as s3gc
from lpm_gc.collector import Backend, Collector, ReferenceSource, Settings
from lpm_gc.collector import run as run_passes
from lpm_gc.kubelet import KubeletSettings
from lpm_gc.lock import FileLock, Lock
from lpm_gc.metrics import Metrics
from lpm_gc.planner import Policy
from watcher.crypt import keyring
from watcher.errors import LpmError
from watcher.s3 import client as s3client
from watcher.s3 import location as s3location
from watcher.s3.location import S3Location
from watcher.s3.store import S3Store
from watcher.store import fsio, layout

log = logging.getLogger("lpm.gc")

LEASE_NAMESPACE = "live-pod-migration-controller-system"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^(\d+)(|k|M|G|T|Ki|Mi|Gi|Ti)$")
_SIZE_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
               "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}

DESCRIPTION = """\
Collect garbage in the checkpoint store: complete checkpoints older than the retention
(by their manifests' creationTime), abandoned writes (no completion marker, nothing written
for --stale-after), stale staging files, empty pod directories, checkpoints over the
optional limits (oldest first), and with --checkpoint-dir this node's kubelet archives that
are ingested and verified. A .keep file in a checkpoint directory pins it. In cluster mode a
checkpoint still referenced by a ContainerCheckpointContent, PodCheckpointContent or an
unfinished PodMigration is kept, and so is every checkpoint when the API cannot answer.

Output: stdout carries the report, one JSON object per line: {"event": "deletion", "reason",
"path", "bytes", "dryRun", ...} per deletion (with --dry-run: what would be deleted), then
{"event": "summary", "scanned", "deleted", "bytesFreed", "keptPinned", "keptUnknown",
"keptReferenced", "keptInUse", "errors", "lock", ...} per pass; "lock": "busy" means another
collector holds the lock (or the Lease could not be taken) and this pass deleted nothing.
stderr carries the JSON log.

Exit status: 0, unless the store cannot be read (with --once: that pass fails; in the loop
the error is logged and retried) or the arguments are wrong."""


def duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``10m``, ``1h30m``, ``1.5h`` or ``7d``."""
    parts = _DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 10m, 24h or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def size(text: str) -> int:
    """Bytes in a size such as ``500Mi``, ``20Gi`` or ``10G``."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 500Mi, 20Gi or 10G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return value


def add_parser(commands: Any) -> None:
    gc = commands.add_parser("gc", help="collect garbage in the checkpoint store",
                             description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    gc.add_argument("--store", type=s3location.store_argument, metavar="DIR|s3://BUCKET/PREFIX",
                    default=s3location.store_argument(os.environ.get("LPM_STORE") or "/mnt/checkpoints"),
                    help="shared checkpoint store: a directory, or an S3 store (docs/s3.md) (env LPM_STORE)")
    gc.add_argument("--once", action="store_true", help="one pass, then exit (the CronJob)")
    gc.add_argument("--interval", type=duration, metavar="DURATION", default=duration("10m"),
                    help="time between passes (default 10m)")
    gc.add_argument("--retention", type=duration, metavar="DURATION", default=None,
                    help="delete complete checkpoints older than this (default: env RETENTION_HOURS, else 24h)")
    gc.add_argument("--stale-after", type=duration, metavar="DURATION", default=duration("1h"),
                    help="an incomplete checkpoint or staging file untouched this long is abandoned (default 1h)")
    gc.add_argument("--dry-run", action="store_true", help="delete nothing; report what would be deleted")
    mode = gc.add_mutually_exclusive_group()
    mode.add_argument("--standalone", action="store_true", help="no cluster: a lock file, no reference checks")
    mode.add_argument("--kubeconfig", type=Path, metavar="FILE", default=None,
                      help="cluster mode with this kubeconfig (default without --standalone: in-cluster config)")
    gc.add_argument("--lease-namespace", metavar="NS", default=os.environ.get("POD_NAMESPACE") or LEASE_NAMESPACE,
                    help=f"namespace of the collectors' Lease (env POD_NAMESPACE, default {LEASE_NAMESPACE})")
    limits = gc.add_argument_group("limits (checkpoint-restore-operator parity; oldest deleted first)")
    limits.add_argument("--max-per-container", type=count, metavar="N",
                        help="checkpoints kept per namespace/pod/container")
    limits.add_argument("--max-per-pod", type=count, metavar="N", help="checkpoints kept per namespace/pod name")
    limits.add_argument("--max-per-namespace", type=count, metavar="N", help="checkpoints kept per namespace")
    limits.add_argument("--max-size-per-namespace", type=size, metavar="SIZE",
                        help="bytes kept per namespace, e.g. 50Gi")
    limits.add_argument("--max-total-size", type=size, metavar="SIZE", help="bytes kept in the whole store, e.g. 500Gi")
    hygiene = gc.add_argument_group("kubelet directory hygiene (on a node)")
    hygiene.add_argument("--checkpoint-dir", type=Path, metavar="DIR", default=None,
                         help="kubelet checkpoint directory whose ingested, verified archives are removed")
    hygiene.add_argument("--node", metavar="NAME", default=os.environ.get("LPM_NODE_NAME"),
                         help="this node's name, whose ingest ledger vouches for them (env LPM_NODE_NAME)")
    hygiene.add_argument("--kubelet-grace", type=duration, metavar="DURATION", default=duration("1h"),
                         help="leave a verified archive this long after it was written (default 1h)")
    hygiene.add_argument("--encryption-keys", type=Path, metavar="DIR",
                         default=Path(os.environ["LPM_ENCRYPTION_KEYS"]) if os.environ.get("LPM_ENCRYPTION_KEYS")
                         else None,
                         help="the agents' key-encryption keys (env LPM_ENCRYPTION_KEYS): a sealed stored copy is "
                              "verified with them; without its key the archive is kept")
    gc.add_argument("--metrics-port", type=int, metavar="PORT", default=_int_env("LPM_GC_METRICS_PORT"),
                    help="serve Prometheus metrics on this port (0: any free port, logged; env LPM_GC_METRICS_PORT)")


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _retention(args: argparse.Namespace) -> float:
    if args.retention is not None:
        return float(args.retention)
    hours = os.environ.get("RETENTION_HOURS")
    if not hours:
        return 24 * 3600.0
    try:
        value = float(hours)
    except ValueError:
        raise LpmError(f"RETENTION_HOURS={hours!r} is not a number of hours") from None
    if value < 0:
        raise LpmError(f"RETENTION_HOURS={hours!r} is negative")
    return value * 3600


def settings_from(args: argparse.Namespace) -> Settings:
    hygiene = None
    if args.checkpoint_dir is not None and isinstance(args.store, S3Location):
        raise LpmError("--checkpoint-dir: the kubelet directory's sweep trusts the node's ingest ledger, kept in a "
                       "filesystem store; not with an s3:// store")
    if args.checkpoint_dir is not None:
        if not args.node:
            raise LpmError("--checkpoint-dir needs --node (or LPM_NODE_NAME): whose ingest ledger to trust")
        keys = keyring.load(args.encryption_keys) if args.encryption_keys is not None else None
        hygiene = KubeletSettings(args.checkpoint_dir, layout.node_name(args.node), args.kubelet_grace, keys)
    policy = Policy(retention=_retention(args), stale_after=args.stale_after,
                    max_per_container=args.max_per_container, max_per_pod=args.max_per_pod,
                    max_per_namespace=args.max_per_namespace, max_size_per_namespace=args.max_size_per_namespace,
                    max_total_size=args.max_total_size)
    store = args.store if isinstance(args.store, S3Location) else args.store.resolve()
    return Settings(store=store, policy=policy, dry_run=args.dry_run, kubelet=hygiene)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    return asyncio.run(_main(args, settings))


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    if args.metrics_port is not None:
        port = metrics.serve(args.metrics_port)
        log.info("metrics served", extra={"fields": {"port": port}})
    if isinstance(settings.store, S3Location):
        return await _s3_main(args, settings, metrics, stop)
    if args.standalone:
        root_fd = fsio.open_root(settings.store, create=False)
        try:
            collector = Collector(settings, FileLock(root_fd), metrics, sys.stdout)
            return await run_passes(collector, args.interval, args.once, stop)
        finally:
            os.close(root_fd)
    from lpm_gc import cluster  # kubernetes-asyncio only where there is a cluster

    async with cluster.connect(args.kubeconfig) as kube:
        lock: Lock = cluster.lease_lock(kube, args.lease_namespace, _identity())
        references: ReferenceSource = cluster.reference_source(kube)
        collector = Collector(settings, lock, metrics, sys.stdout, references)
        return await run_passes(collector, args.interval, args.once, stop)


async def _s3_main(args: argparse.Namespace, settings: Settings, metrics: Metrics, stop: asyncio.Event) -> int:
    """The collector over an S3 store: the same passes, its scan and deletions those of ``lpm_gc.s3``."""
    assert isinstance(settings.store, S3Location)
    async with s3client.connect(settings.store) as client:
        store = S3Store(client, settings.store)
        await store.check()
        backend = s3gc.S3Backend(store, asyncio.get_running_loop())

        @contextlib.asynccontextmanager
        async def open_backend() -> AsyncIterator[Backend]:
            yield backend

        if args.standalone:
            collector = Collector(settings, s3gc.S3Lock(store, settings.policy.stale_after), metrics, sys.stdout,
                                  open_backend=open_backend)
            return await run_passes(collector, args.interval, args.once, stop)
        from lpm_gc import cluster

        async with cluster.connect(args.kubeconfig) as kube:
            collector = Collector(settings, cluster.lease_lock(kube, args.lease_namespace, _identity()), metrics,
                                  sys.stdout, cluster.reference_source(kube), open_backend)
            return await run_passes(collector, args.interval, args.once, stop)


def _identity() -> str:
    # The pod's name in a cluster (the downward API sets POD_NAME); unique per process anyway.
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"
