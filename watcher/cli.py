"""``lpm``: the command line. Tests outside this repository rely on these flags exactly.

    lpm agent --standalone --node NAME --checkpoint-dir DIR --store DIR [--delete-ingested] [--force-polling]
    lpm agent --node NAME [--kubeconfig FILE] [--namespace NS] ...  (cluster mode)
              [--checkpoint-via runtime] [--runtime-endpoint unix:///run/containerd/containerd.sock]
              [--runtime-checkpoint-dir DIR]   (checkpoints from the node's runtime, the default)
              --checkpoint-via kubelet --kubelet-ca FILE [--kubelet-token-file FILE]  (from the kubelet's API)
              both modes: [--health-port 8080]  (/metrics, /healthz, /readyz; 0: any free port)
                          [--local-store DIR] [--move-interval 30]  (while the shared store is unavailable)
    lpm ingest ARCHIVE --store DIR --node NAME [--target-node NAME]
    lpm store ls --store DIR [--json]
    lpm store verify --store DIR [--json]
    lpm store get URI --store DIR [--local-store DIR] -o FILE
    lpm inspect ARCHIVE|CHECKPOINT [--store DIR] [-o text|json] [--env] [--memory PID [--memory-limit BYTES]]
    lpm gc --store DIR [--once] [--interval 10m] [--retention 24h] [--stale-after 1h] [--dry-run]
           [--standalone | --kubeconfig FILE]      (the collector: package lpm_gc, folder gc/)

Errors end as one line on stderr naming the thing and the reason, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from lpm_gc import cli as gc_cli
from watcher import logs
from watcher.agent import StandaloneAgent, StandaloneConfig
from watcher.agent_s3 import S3AgentConfig, S3Readiness, S3StandaloneAgent
from watcher.cluster.sinks import BucketPlaces, BucketSink
from watcher.cluster_agent import BucketStores, ClusterAgent, ClusterConfig, RestoreSettings
from watcher.crypt import keyring
from watcher.crypt.keyring import Keyring
from watcher.errors import KeyringError, KeyUnavailable, LpmError
from watcher.ingest import s3 as s3ingest
from watcher.ingest import service
from watcher.inspect import reader as inspect_reader
from watcher.inspect import render as inspect_render
from watcher.inspect import sources as inspect_sources
from watcher.kubelet import KubeletSettings
from watcher.observe import AgentMetrics, Readiness, ReadinessCheck, serving
from watcher.restore.importer import ContainerdImporter, ContainersStorageImporter, Importer, RegistryImporter
from watcher.restore.source import BucketSource, DirectorySource
from watcher.restore.standalone import RestorerSettings, StandaloneRestorer
from watcher.runtime.checkpoint import Settings as RuntimeCheckpointSettings
from watcher.s3 import client as s3client
from watcher.s3 import location as s3location
from watcher.s3 import retrieve as s3retrieve
from watcher.s3.location import S3Location
from watcher.s3.store import S3Store
from watcher.store import catalog, fsio, layout, retrieve
from watcher.store.catalog import Checkpoint, Skipped
from watcher.store.layout import StorageType
from watcher.stores import Stores, open_local
from watcher.supervise import Supervisor
from watcher.watch.dirwatch import WatchSettings
from watcher.zstream import CompressionSettings

SHUTDOWN_GRACE = 4.0  # seconds; the contract is "exits 0 within 5 s of SIGTERM"
RESTORER_GRACE = 0.5  # seconds, after the ingest's own (it ran meanwhile): the restorer checks stop each round


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
AGENT_NAMESPACE = "live-pod-migration-controller-system"
CRIO_ENDPOINT = "unix:///var/run/crio/crio.sock"
CHECKPOINT_VIA = ("runtime", "kubelet")
LOCAL_STORE = "/var/lib/lpm/local-store"


def _local_store_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--local-store", type=Path, default=Path(_env("LPM_LOCAL_STORE", LOCAL_STORE) or LOCAL_STORE),
                        help=f"{help} (env LPM_LOCAL_STORE, default {LOCAL_STORE})")


# The first is the default: CRI-O's and podman's store, the runtime lpm's live test restores with.
IMPORTERS = ("containers-storage", "containerd", "registry")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _path_env(name: str) -> Path | None:
    value = _env(name)
    return Path(value) if value else None


_STORE_HELP = ("the store: a directory, or s3://BUCKET/PREFIX (endpoint, region, credentials and CA bundle from "
               "the standard AWS variables and files; docs/s3.md) (env LPM_STORE)")


def _store_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--store", type=s3location.store_argument, help=help,
                        default=s3location.store_argument(_env("LPM_STORE", "/mnt/checkpoints") or ""))


def _compression_flags(parser: argparse.ArgumentParser) -> None:
    defaults = CompressionSettings()
    parser.add_argument("--zstd-level", type=int, default=int(_env("LPM_ZSTD_LEVEL", str(defaults.level)) or 1),
                        help=f"zstd level (default {defaults.level}; env LPM_ZSTD_LEVEL)")
    parser.add_argument("--zstd-threads", type=int,
                        default=int(_env("LPM_ZSTD_THREADS", str(defaults.threads)) or 0),
                        help=f"zstd worker threads (default {defaults.threads}; env LPM_ZSTD_THREADS)")


def _compression(args: argparse.Namespace) -> CompressionSettings:
    return CompressionSettings(level=args.zstd_level, threads=args.zstd_threads, encryption=_keyring(args))


def _encryption_flags(parser: argparse.ArgumentParser, writes: bool) -> None:
    parser.add_argument("--encryption-keys", type=Path, default=_path_env("LPM_ENCRYPTION_KEYS"),
                        help="encryption at rest: a directory of key-encryption keys, one 32-byte file each, its "
                             "name the key ID; sealed dumps are opened with the key their manifest names"
                             + (", and new ones sealed" if writes else "")
                             + " (env LPM_ENCRYPTION_KEYS; default: none, dumps are stored plain)")
    if writes:
        parser.add_argument("--encryption-key-id", default=_env("LPM_ENCRYPTION_KEY_ID"),
                            help="the key new dumps are sealed with (env LPM_ENCRYPTION_KEY_ID; default: the "
                                 "last key ID in sort order)")


def _keyring(args: argparse.Namespace) -> Keyring | None:
    current = getattr(args, "encryption_key_id", None)
    if args.encryption_keys is None:
        if current:
            raise KeyringError("--encryption-key-id needs --encryption-keys (env LPM_ENCRYPTION_KEYS)")
        return None
    return keyring.load(args.encryption_keys, current or None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpm", description="live pod migration: checkpoint storage and transport")
    commands = parser.add_subparsers(dest="command", required=True)

    agent = commands.add_parser("agent", help="run the node agent until SIGINT/SIGTERM (cluster mode by default)")
    agent.add_argument("--standalone", action="store_true",
                       help="no cluster: ingest the kubelet checkpoint directory into the store")
    agent.add_argument("--node", default=_env("LPM_NODE_NAME"), help="this node's name (env LPM_NODE_NAME)")
    agent.add_argument("--checkpoint-dir", type=Path,
                       default=Path(_env("LPM_CHECKPOINT_DIR", "/var/lib/kubelet/checkpoints") or ""),
                       help="kubelet checkpoint directory (env LPM_CHECKPOINT_DIR)")
    _store_flag(agent, "shared checkpoint store: a directory, or s3://BUCKET/PREFIX with --standalone "
                       "(docs/s3.md) (env LPM_STORE)")
    _local_store_flag(agent, "node-local store: checkpoints taken while the shared store is unavailable are "
                             "held here, with file:// URIs, and moved to the shared store once it is back")
    agent.add_argument("--move-interval", type=float, default=float(_env("LPM_MOVE_INTERVAL", "30") or "30"),
                       help="seconds between looks at the local store for checkpoints to move to the shared "
                            "store (default 30; env LPM_MOVE_INTERVAL)")
    agent.add_argument("--delete-ingested", action="store_true",
                       help="remove a kubelet archive after its stored copy is verified")
    agent.add_argument("--force-polling", action="store_true",
                       help="poll the checkpoint directory instead of inotify (network filesystems)")
    agent.add_argument("--kubeconfig", type=Path, default=None,
                       help="cluster mode: kubeconfig file (default: the pod's in-cluster service account)")
    agent.add_argument("--kubelet-ca", type=Path, default=_path_env("LPM_KUBELET_CA"),
                       help="cluster mode: CA of the kubelets' serving certificates (env LPM_KUBELET_CA)")
    agent.add_argument("--kubelet-token-file", type=Path,
                       default=Path(_env("LPM_KUBELET_TOKEN_FILE", IN_CLUSTER_TOKEN) or IN_CLUSTER_TOKEN),
                       help="cluster mode: bearer token for the kubelet (env LPM_KUBELET_TOKEN_FILE)")
    agent.add_argument("--checkpoint-via", choices=CHECKPOINT_VIA, default=_env("LPM_CHECKPOINT_VIA", "runtime"),
                       help="cluster mode: who takes checkpoints: runtime (the node's runtime over its CRI socket, "
                            "--runtime-endpoint; no API permission needed, so an agent can dump only its own "
                            "node's pods) or kubelet (the kubelet's checkpoint API; needs create on "
                            "nodes/checkpoint, for every node) (default runtime; env LPM_CHECKPOINT_VIA)")
    agent.add_argument("--runtime-checkpoint-dir", type=Path, default=_path_env("LPM_RUNTIME_CHECKPOINT_DIR"),
                       help="--checkpoint-via runtime: the checkpoint directory as the runtime sees it, where it "
                            "is told to write archives (default: --checkpoint-dir; env LPM_RUNTIME_CHECKPOINT_DIR)")
    agent.add_argument("--checkpoint-timeout", "--kubelet-timeout", type=int, default=120,
                       help="cluster mode: seconds the runtime may take per container checkpoint (default 120)")
    # A string default goes through ``type`` too: a bad value from the environment is a usage error.
    agent.add_argument("--max-concurrent-checkpoints", type=_positive,
                       default=_env("LPM_MAX_CONCURRENT_CHECKPOINTS", "4"),
                       help="cluster mode: checkpoints this node takes and ingests at once; more wait, and their "
                            "status says so (default 4, within the DaemonSet's 1 GiB; env "
                            "LPM_MAX_CONCURRENT_CHECKPOINTS)")
    agent.add_argument("--restore", action="store_true",
                       help="standalone: also import every checkpoint whose completion marker names this node "
                            "as its target into the node's runtime, ready to restore (cluster mode always "
                            "restores the PodMigrations that target it)")
    agent.add_argument("--restore-work-dir", type=Path,
                       default=Path(_env("LPM_RESTORE_WORK_DIR", "/var/lib/lpm/restore") or ""),
                       help="node-local scratch space for restores; standalone --restore also records there "
                            "what it imported (env LPM_RESTORE_WORK_DIR)")
    agent.add_argument("--importer", choices=IMPORTERS, default=_env("LPM_IMPORTER", IMPORTERS[0]),
                       help="restores: where checkpoint images go for this node's runtime: "
                            "containers-storage (CRI-O, podman; skopeo), containerd (ctr, CRI namespace "
                            "k8s.io), or registry (push; nodes pull) (default containers-storage; env LPM_IMPORTER)")
    agent.add_argument("--import-prefix", default=_env("LPM_IMPORT_PREFIX", "") or "",
                       help="restores: command prefix under which skopeo or ctr reaches the node, "
                            "e.g. 'nsenter -t 1 -m --' (env LPM_IMPORT_PREFIX)")
    agent.add_argument("--containerd-address",
                       default=_env("LPM_CONTAINERD_ADDRESS", "/run/containerd/containerd.sock"),
                       help="--importer containerd: the daemon's socket (env LPM_CONTAINERD_ADDRESS)")
    agent.add_argument("--ctr", default=_env("LPM_CTR", "ctr"),
                       help="--importer containerd: the ctr binary (default: ctr on PATH; env LPM_CTR)")
    agent.add_argument("--registry", default=_env("LPM_REGISTRY"),
                       help="--importer registry: host[:port][/path] every node pulls from (env LPM_REGISTRY)")
    agent.add_argument("--registry-cert-dir", type=Path, default=_path_env("LPM_REGISTRY_CERT_DIR"),
                       help="--importer registry: directory of *.crt CAs for the registry's TLS "
                            "(default: the system's; env LPM_REGISTRY_CERT_DIR)")
    agent.add_argument("--registry-auth-file", type=Path, default=_path_env("LPM_REGISTRY_AUTH_FILE"),
                       help="--importer registry: push credentials, containers-auth.json format "
                            "(env LPM_REGISTRY_AUTH_FILE)")
    agent.add_argument("--runtime-endpoint", default=_env("LPM_RUNTIME_ENDPOINT"),
                       help="cluster mode: this node's CRI socket, asked whether the runtime restores checkpoints "
                            "(unix:///path; 'none': read the Node's status instead; default from --importer: "
                            "containerd: --containerd-address, containers-storage: CRI-O's "
                            f"{CRIO_ENDPOINT}, registry: none; env LPM_RUNTIME_ENDPOINT)")
    agent.add_argument("--namespace", default=_env("LPM_NAMESPACE"),
                       help="cluster mode: the agent's namespace, where every node's agent keeps its Lease "
                            "(env LPM_NAMESPACE; default: the service account's namespace in a pod, else "
                            f"{AGENT_NAMESPACE})")
    agent.add_argument("--marker-poll", type=float, default=float(_env("LPM_MARKER_POLL", "10") or "10"),
                       help="seconds between polls of the store's completion markers: the fallback to the "
                            "PodMigration watch, and standalone --restore's only signal (default 10; "
                            "env LPM_MARKER_POLL)")
    agent.add_argument("--restore-store-patience", type=float, metavar="S",
                       default=float(_env("LPM_RESTORE_STORE_PATIENCE", "600") or "600"),
                       help="cluster mode: seconds a restore waits for a store that fails on its side (an S3 or "
                            "NFS server away) before its migration fails; the migration stays Restoring and says "
                            "so meanwhile, and the source pod runs on (default 600; env LPM_RESTORE_STORE_PATIENCE)")
    agent.add_argument("--health-port", type=int, default=int(_env("LPM_HEALTH_PORT", "8080") or "8080"),
                       help="serve /metrics, /healthz and /readyz on this port, all addresses "
                            "(0: any free port, logged; env LPM_HEALTH_PORT, default 8080)")
    agent.add_argument("--debounce", type=float, default=2.0,
                       help="seconds an archive must be unchanged before it is read (default 2)")
    agent.add_argument("--give-up-after", type=float, default=600.0, metavar="S",
                       help="seconds an unfinished archive (no end-of-archive blocks) may stay unchanged before "
                            "it is refused with a warning and lpm_archives_given_up; a rewrite is read afresh "
                            "(default 600)")
    _compression_flags(agent)
    _encryption_flags(agent, writes=True)

    ingest = commands.add_parser("ingest", help="ingest one kubelet archive and print its artifact URI")
    ingest.add_argument("archive", type=Path)
    _store_flag(ingest, _STORE_HELP)
    ingest.add_argument("--node", default=_env("LPM_NODE_NAME"))
    ingest.add_argument("--target-node", default=None)
    _compression_flags(ingest)
    _encryption_flags(ingest, writes=True)

    store = commands.add_parser("store", help="read the checkpoint store")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    ls = store_commands.add_parser("ls", help="list complete checkpoints")
    _store_flag(ls, _STORE_HELP)
    ls.add_argument("--json", action="store_true", help="one JSON object per line per checkpoint")
    ls.add_argument("--local", action="store_true",
                    help="--store is a node's local store (--local-store): print the file:// addresses "
                         "that lpm store get reads, not the shared:// ones its manifests keep")
    verify = store_commands.add_parser(
        "verify", help="read back every complete checkpoint: both SHA-256 sums, both sizes, the zstd frame",
        description="Exit 0 when every complete checkpoint holds, 1 when one does not (each is named, "
                    "with the reason), 2 on a usage error.")
    _store_flag(verify, _STORE_HELP)
    verify.add_argument("--json", action="store_true", help="one JSON object per line per checkpoint")
    _encryption_flags(verify, writes=False)
    get = store_commands.add_parser("get", help="write a checkpoint's original kubelet archive, verified")
    get.add_argument("uri")
    _store_flag(get, _STORE_HELP)
    _local_store_flag(get, "where file:// URIs are read from")
    get.add_argument("-o", "--output", type=Path, required=True)
    _encryption_flags(get, writes=False)

    inspect = commands.add_parser(
        "inspect", help="what a checkpoint holds (processes, memory, files, sockets, mounts, root-fs diff), "
        "read from an archive or the store without restoring it")
    inspect.add_argument("checkpoint", metavar="ARCHIVE|CHECKPOINT",
                         help="a checkpoint archive's path, or a stored checkpoint: shared://... URI, "
                         "podUID/checkpointID[/container], or a checkpoint ID")
    inspect.add_argument("--store", type=Path, default=Path(_env("LPM_STORE", "/mnt/checkpoints") or ""))
    _local_store_flag(inspect, "the node-local store, for file:// URIs (env LPM_LOCAL_STORE)")
    _encryption_flags(inspect, writes=False)
    inspect.add_argument("-o", "--output", choices=("text", "json"), default="text")
    inspect.add_argument("--env", action="store_true",
                         help="also show the processes' environment variables (they often hold secrets)")
    inspect.add_argument("--memory", type=int, metavar="PID", default=None,
                         help="also show this process's memory contents (secrets too), up to --memory-limit")
    inspect.add_argument("--memory-limit", type=_positive, default=1 << 20, metavar="BYTES")
    gc_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup()
    try:
        if args.command == "agent":
            return _agent(args)
        if args.command == "ingest":
            return _ingest(args) if isinstance(args.store, Path) else asyncio.run(_s3_ingest(args))
        if args.command == "gc":
            return gc_cli.run(args)
        if args.command == "inspect":
            return _inspect(args)
        if not isinstance(args.store, Path):
            return asyncio.run(_s3_store_command(args))
        if args.store_command == "ls":
            return _ls(args)
        if args.store_command == "verify":
            return _verify(args)
        return _get(args)
    except LpmError as err:
        print(f"lpm: {err}", file=sys.stderr)
        return 1


def _node(args: argparse.Namespace) -> str:
    if not args.node:
        raise LpmError("no node name: pass --node or set LPM_NODE_NAME")
    return layout.node_name(args.node)


def _agent(args: argparse.Namespace) -> int:
    at = args.store if isinstance(args.store, S3Location) else None
    if at is not None and args.standalone:
        return _s3_agent(args, at)
    config = StandaloneConfig(
        node=_node(args),
        store=args.store.resolve() if at is None else at,
        watch=WatchSettings(directory=args.checkpoint_dir, debounce=args.debounce,
                            force_polling=args.force_polling, give_up_after=args.give_up_after),
        compression=_compression(args),
        delete_ingested=args.delete_ingested,
        local_store=args.local_store.resolve(),
        move_interval=args.move_interval,
    )
    if at is not None:
        return _s3_cluster_agent(args, config, at)
    stores = Stores(args.store.resolve(), config.local_store, config.node)
    metrics = AgentMetrics(args.store.resolve(), config.local_store)
    stores.on_change(lambda available: metrics.shared_store_available.set(1 if available else 0))
    readiness = Readiness.of(stores)
    if args.standalone:
        ingest = StandaloneAgent(config, metrics, stores)
        agent: Agent = ingest
        if args.restore:
            # The shared store only: a checkpoint another node holds locally is not restorable from here yet.
            source = DirectorySource(stores.shared.fd, config.compression, ingest.cancel)
            agent = _WithRestorer(ingest, StandaloneRestorer(_restorer_settings(args, config.node), source, metrics),
                                  metrics)
        return asyncio.run(_run_until_signal(agent, args.health_port, metrics, readiness))
    return asyncio.run(_run_until_signal(ClusterAgent(_cluster_config(args, config), metrics, readiness, stores),
                                         args.health_port, metrics, readiness))


def _cluster_config(args: argparse.Namespace, base: StandaloneConfig) -> ClusterConfig:
    endpoint = runtime_endpoint(args.runtime_endpoint, args.importer, args.containerd_address)
    return ClusterConfig(base, args.kubeconfig, _checkpoints(args, endpoint),
                         RestoreSettings(args.restore_work_dir, make_importer(args), marker_poll=args.marker_poll,
                                         store_patience=args.restore_store_patience),
                         namespace=args.namespace or _in_cluster_namespace() or AGENT_NAMESPACE,
                         runtime_endpoint=endpoint, max_concurrent_checkpoints=args.max_concurrent_checkpoints)


def _s3_cluster_agent(args: argparse.Namespace, base: StandaloneConfig, at: S3Location) -> int:
    """``lpm agent --store s3://...``: migrations over a bucket (docs/s3.md), the local store holding only this
    node's ingest ledger."""
    cluster = _cluster_config(args, base)

    async def run() -> int:
        async with s3client.connect(at) as client:
            store = S3Store(client, at)
            await store.check()
            # Once here rather than before every checkpoint: the source's own ingests do not ask it again.
            await store.require_conditional_put(base.node)
            metrics = AgentMetrics(None, base.local_store)
            local = open_local(base.local_store)
            places = BucketPlaces(BucketSink(store, local.fd),
                                  lambda available: metrics.shared_store_available.set(1 if available else 0))
            readiness = Readiness(places.probe, None, str(store))
            agent = ClusterAgent(cluster, metrics, readiness, BucketStores(store, local, places))
            return await _serve_until_signal(agent, args.health_port, metrics, readiness)

    return asyncio.run(run())


def _checkpoints(args: argparse.Namespace, endpoint: str | None) -> KubeletSettings | RuntimeCheckpointSettings:
    if args.checkpoint_via == "kubelet":
        if args.kubelet_ca is None:
            raise LpmError("--checkpoint-via kubelet needs the kubelets' CA: pass --kubelet-ca or set LPM_KUBELET_CA "
                           "(lpm never skips TLS verification)")
        return KubeletSettings(ca_file=args.kubelet_ca, token_file=args.kubelet_token_file,
                               checkpoint_timeout=args.checkpoint_timeout, checkpoint_dir=args.checkpoint_dir)
    if endpoint is None:
        raise LpmError("--checkpoint-via runtime needs this node's CRI socket (--runtime-endpoint, or an --importer "
                       "that reaches the runtime); where the agent has no access to the node (--importer registry), "
                       "use --checkpoint-via kubelet")
    return RuntimeCheckpointSettings(endpoint, args.runtime_checkpoint_dir or args.checkpoint_dir, args.checkpoint_dir,
                                     timeout=args.checkpoint_timeout)


def runtime_endpoint(given: str | None, importer: str, containerd_address: str) -> str | None:
    """The CRI socket to ask: as given ('none': no socket), else the runtime the importer feeds."""
    if given:
        return None if given == "none" else given
    if importer == "containerd":
        return containerd_address if "://" in containerd_address else f"unix://{containerd_address}"
    if importer == "containers-storage":
        return CRIO_ENDPOINT
    return None  # registry: the agent may have no access to the node's runtime at all


def _in_cluster_namespace() -> str | None:
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def make_importer(args: argparse.Namespace) -> Importer:
    prefix = tuple(shlex.split(args.import_prefix))
    if args.importer == "containerd":
        return ContainerdImporter(address=args.containerd_address, prefix=prefix, ctr=args.ctr)
    if args.importer == "registry":
        if not args.registry:
            raise LpmError("--importer registry needs --registry (or LPM_REGISTRY): the registry nodes pull from")
        try:
            return RegistryImporter(args.registry, args.registry_cert_dir, args.registry_auth_file, prefix)
        except ValueError as err:
            raise LpmError(str(err)) from None
    return ContainersStorageImporter(prefix)


class Agent(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...

    async def settle(self) -> None:
        """Once stopped: what must end before the shutdown's grace starts (checkpoint calls under way)."""


def _restorer_settings(args: argparse.Namespace, node: str) -> RestorerSettings:
    return RestorerSettings(node, args.restore_work_dir, make_importer(args), args.marker_poll)


class _WithRestorer:
    """Standalone mode with its destination half beside the ingest, a supervised task of its own."""

    def __init__(self, agent: Agent, restorer: StandaloneRestorer, metrics: AgentMetrics) -> None:
        self._agent = agent
        self._metrics = metrics
        self._restorer = restorer

    async def settle(self) -> None:
        await self._agent.settle()

    async def run(self, stop: asyncio.Event) -> None:
        supervisor = Supervisor(self._metrics.tasks)
        supervisor.start("restorer", lambda: self._restorer.run(stop))
        try:
            await self._agent.run(stop)  # until stop
        finally:
            await supervisor.close(RESTORER_GRACE)
            self._restorer.close()


async def _run_until_signal(agent: Agent, health_port: int, metrics: AgentMetrics,
                            readiness: Readiness) -> int:
    return await _serve_until_signal(agent, health_port, metrics, readiness)


async def _serve_until_signal(agent: Agent, health_port: int, metrics: AgentMetrics,
                              readiness: ReadinessCheck) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(health_port, metrics, readiness):
        return await _until_stopped(agent, stop)


async def _until_stopped(agent: Agent, stop: asyncio.Event) -> int:
    task = asyncio.create_task(agent.run(stop), name="agent")
    await asyncio.wait([task, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # the agent ended on its own: that is an error worth its traceback
        return 1
    # A checkpoint call cut short leaves its container paused (watcher.runtime.checkpoint): those end first,
    # however long they take within their own timeout; the promise of an exit within 5 s holds without them.
    await agent.settle()
    try:
        await asyncio.wait_for(task, timeout=SHUTDOWN_GRACE)
    except TimeoutError:
        logging.getLogger("lpm.agent").error("shutdown took too long; exiting anyway")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    node = _node(args)
    target = layout.node_name(args.target_node) if args.target_node else None
    root_fd = fsio.open_root(args.store.resolve(), create=True)
    result = service.ingest_archive(root_fd, args.archive, node, _compression(args), threading.Event(),
                                    datetime.now(UTC), target_node=target)
    print(result.manifest.ref.uri)
    return 0


def _ls(args: argparse.Namespace) -> int:
    store = args.store.resolve()
    root_fd = fsio.open_root(store, create=False)
    return _print_listing(catalog.scan(root_fd), str(store), store if args.local else None, args.json)


def _print_listing(entries: Iterable[Checkpoint | Skipped], store: str, local: Path | None, as_json: bool) -> int:
    damaged: list[Skipped] = []
    for entry in entries:
        if not isinstance(entry, Checkpoint):
            if entry.damaged:
                damaged.append(entry)
            continue
        summary = entry.summary(local)
        if as_json:
            print(json.dumps(summary, sort_keys=True))
        else:
            print(f"{summary['creationTime']}  {summary['podNamespace']}/{summary['podName']}  "
                  f"{summary['podUID']}/{summary['checkpointID']}  {','.join(summary['containers'])}")
    # The listing stands (exit 0: every complete checkpoint is in it); what it left out is said, once each.
    if damaged:
        print(f"lpm: skipped {len(damaged)} damaged checkpoint(s) in {store}:", file=sys.stderr)
        for entry in damaged:
            print(f"lpm:   {entry.path}: {entry.reason}", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    store = args.store.resolve()
    if not store.is_dir():
        print(f"lpm: store {store}: does not exist or is not a directory", file=sys.stderr)
        return 2  # nothing was verified: as much a usage error as a mistyped flag
    settings = CompressionSettings(encryption=_keyring(args))
    root_fd = fsio.open_root(store, create=False)
    checked = bad = 0
    for entry in catalog.scan(root_fd):
        if isinstance(entry, Skipped) and not entry.damaged:
            continue  # a write in progress: not a checkpoint yet
        path = entry.path if isinstance(entry, Skipped) else f"{entry.marker.pod_uid}/{entry.marker.checkpoint_id}"
        reasons = [entry.reason] if isinstance(entry, Skipped) else _failures(root_fd, entry, settings)
        checked += 1
        bad += bool(reasons)
        if args.json:
            print(json.dumps({"checkpoint": path, "ok": not reasons, "reasons": reasons}, sort_keys=True))
        else:
            print(f"bad {path}: {'; '.join(reasons)}" if reasons else f"ok  {path}")
    if bad:
        print(f"lpm: {bad} of {checked} checkpoint(s) in {store} failed verification", file=sys.stderr)
    return 1 if bad else 0


def _failures(root_fd: int, checkpoint: Checkpoint, settings: CompressionSettings) -> list[str]:
    """Why each container of ``checkpoint`` does not read back as its manifest says (empty: all hold).

    A sealed dump whose key is not at hand cannot be read back: that is reported, naming the key ID, with
    what can be checked without it, the stored bytes' SHA-256.
    """
    reasons = []
    for manifest in checkpoint.manifests:
        try:
            retrieve.verify(root_fd, manifest.ref, settings, threading.Event())
        except KeyUnavailable as err:
            try:
                retrieve.verify_stored(root_fd, manifest.ref, threading.Event())
            except LpmError as stored:
                reasons.append(f"{err}; and {stored}")
            else:
                reasons.append(f"{err}; its stored bytes match their sha256 {manifest.checksum_sha256}, "
                               "its contents are not checked")
        except LpmError as err:
            reasons.append(str(err))
    return reasons


def _get(args: argparse.Namespace) -> int:
    local_store = args.local_store.resolve()
    kind, ref = layout.parse_location(args.uri, local_store)
    root_fd = fsio.open_root(local_store if kind is StorageType.LOCAL else args.store.resolve(), create=False)
    retrieve.get(root_fd, ref, args.output, CompressionSettings(encryption=_keyring(args)), threading.Event())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    options = inspect_reader.Options(environment=args.env, memory_pid=args.memory, memory_limit=args.memory_limit)
    target = Path(args.checkpoint)
    if not args.checkpoint.startswith((layout.URI_SCHEME, layout.FILE_SCHEME)) and target.is_file():
        inspections = [inspect_sources.inspect_archive(target, options)]
    else:
        local_store = args.local_store.resolve()
        if args.checkpoint.startswith(layout.FILE_SCHEME):
            _, ref = layout.parse_location(args.checkpoint, local_store)
            root_fd, refs = fsio.open_root(local_store, create=False), [ref]
        else:
            store = args.store.resolve()
            root_fd = fsio.open_root(store, create=False)
            refs = inspect_sources.find_stored(root_fd, args.checkpoint, str(store))
        settings = CompressionSettings(encryption=_keyring(args))
        try:
            inspections = [inspect_sources.inspect_stored(root_fd, ref, settings, options) for ref in refs]
        finally:
            os.close(root_fd)
    print(inspect_render.to_json(inspections) if args.output == "json" else inspect_render.to_text(inspections),
          end="\n" if args.output == "json" else "")
    return 0


async def _s3_store_command(args: argparse.Namespace) -> int:
    """``lpm store ls/verify/get --store s3://...``: the same output and exit codes as on a directory."""
    async with s3client.connect(args.store) as client:
        store = S3Store(client, args.store)
        await store.check()
        if args.store_command == "ls":
            if args.local:
                raise LpmError("--local names a node's local store, a directory; not an s3:// store")
            return _print_listing(await store.scan(), str(store), None, args.json)
        settings = CompressionSettings(encryption=_keyring(args))
        if args.store_command == "verify":
            return await _s3_verify(store, settings, args.json)
        kind, ref = layout.parse_location(args.uri, args.local_store.resolve())
        if kind is StorageType.LOCAL:
            root_fd = fsio.open_root(args.local_store.resolve(), create=False)
            retrieve.get(root_fd, ref, args.output, settings, threading.Event())
        else:
            await s3retrieve.get(store, ref, args.output, settings, threading.Event())
        return 0


async def _s3_verify(store: S3Store, settings: CompressionSettings, as_json: bool) -> int:
    checked = bad = 0
    for entry in await store.scan():
        if isinstance(entry, Skipped) and not entry.damaged:
            continue  # a write in progress: not a checkpoint yet
        path = entry.path if isinstance(entry, Skipped) else f"{entry.marker.pod_uid}/{entry.marker.checkpoint_id}"
        reasons = [entry.reason] if isinstance(entry, Skipped) else await _s3_failures(store, entry, settings)
        checked += 1
        bad += bool(reasons)
        if as_json:
            print(json.dumps({"checkpoint": path, "ok": not reasons, "reasons": reasons}, sort_keys=True))
        else:
            print(f"bad {path}: {'; '.join(reasons)}" if reasons else f"ok  {path}")
    if bad:
        print(f"lpm: {bad} of {checked} checkpoint(s) in {store} failed verification", file=sys.stderr)
    return 1 if bad else 0


async def _s3_failures(store: S3Store, checkpoint: Checkpoint, settings: CompressionSettings) -> list[str]:
    """``_failures`` over an S3 store."""
    reasons = []
    for manifest in checkpoint.manifests:
        try:
            await s3retrieve.verify(store, manifest.ref, settings, threading.Event())
        except KeyUnavailable as err:
            try:
                await s3retrieve.verify_stored(store, manifest.ref)
            except LpmError as stored:
                reasons.append(f"{err}; and {stored}")
            else:
                reasons.append(f"{err}; its stored bytes match their sha256 {manifest.checksum_sha256}, "
                               "its contents are not checked")
        except LpmError as err:
            reasons.append(str(err))
    return reasons


async def _s3_ingest(args: argparse.Namespace) -> int:
    node = _node(args)
    target = layout.node_name(args.target_node) if args.target_node else None
    async with s3client.connect(args.store) as client:
        store = S3Store(client, args.store)
        await store.check()
        result = await s3ingest.ingest_archive(store, args.archive, node, _compression(args), threading.Event(),
                                               datetime.now(UTC), target_node=target)
    print(result.manifest.ref.uri)
    return 0


def _s3_agent(args: argparse.Namespace, at: S3Location) -> int:
    """``lpm agent --standalone --store s3://...`` (docs/s3.md: no local fallback or mover yet)."""
    node = _node(args)
    watch = WatchSettings(directory=args.checkpoint_dir, debounce=args.debounce, force_polling=args.force_polling,
                          give_up_after=args.give_up_after)

    async def run() -> int:
        async with s3client.connect(at) as client:
            store = S3Store(client, at)
            await store.check()
            local = open_local(args.local_store.resolve())  # the ingest ledger's, as in cluster mode
            metrics = AgentMetrics(None, local.path)
            ingest = S3StandaloneAgent(S3AgentConfig(node, store, watch, _compression(args), args.delete_ingested,
                                                     local.fd), metrics)
            agent: Agent = ingest
            if args.restore:
                source = BucketSource(store, _compression(args), ingest.cancel, asyncio.get_running_loop())
                agent = _WithRestorer(ingest, StandaloneRestorer(_restorer_settings(args, node), source, metrics),
                                      metrics)
            return await _serve_until_signal(agent, args.health_port, metrics, S3Readiness(store))

    return asyncio.run(run())
