"""The subcommands of ``kubectl lpm``: each reads or writes a few API objects and prints ``views``.

``COMMANDS`` is the table ``main`` builds the parser from: a new subcommand is one entry (its flags and
its runner), nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from watcher.cluster.objects import API_VERSION, MIGRATION_LABEL, lpm_path, meta, migration_name, pod_path
from watcher.crypt import keyring
from watcher.errors import Conflict, LpmError, NotFound
from watcher.inspect import reader as inspect_reader
from watcher.inspect import render as inspect_render
from watcher.inspect import sources as inspect_sources
from watcher.inspect.model import Inspection
from watcher.kubectl import archive, keep, progress, views
from watcher.kubectl.follow import Display, follow
from watcher.kubectl.progress import Outcome
from watcher.kubectl.session import Session
from watcher.s3 import client as s3client
from watcher.s3.location import S3Location, store_argument
from watcher.s3.store import S3Store
from watcher.store import fsio
from watcher.zstream import CompressionSettings


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    """The API refused (RBAC, not found), the migration failed, or it was deleted while followed."""
    USAGE = 2
    """A wrong command line."""
    TIMEOUT = 2
    """``--timeout`` passed while following (the same code as a usage error: issue #14 asks for 2)."""
    INTERRUPTED = 130
    """Ctrl-C while following: the migration goes on."""


class UsageError(LpmError):
    """A command line argparse accepts but the command cannot run with."""


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Session], Awaitable[Exit]]


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=[o.value for o in views.Output if o is not views.Output.TABLE],
                        help="json|yaml: the objects; wide: more columns; name: kind/name only")


def _wait(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                        help=f"follow it until it succeeds or fails ({default_help})")
    parser.add_argument("--timeout", type=_duration, default=None,
                        help="give up following after this long (30s, 5m, 1h; exit 2); the migration goes on")


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (30s, 5m, 1h)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r}")
    return value


def _store(parser: argparse.ArgumentParser, required_for: str) -> None:
    parser.add_argument("--store", type=store_argument, default=os.environ.get("LPM_STORE") or None,
                        help=f"the shared store as mounted here, or s3://BUCKET/PREFIX ({required_for}; "
                             "env LPM_STORE)")


@contextlib.asynccontextmanager
async def _shared(store: Path | S3Location) -> AsyncIterator[Path | S3Store]:
    """The shared store: a directory as given, or the bucket, connected and checked (docs/s3.md)."""
    if isinstance(store, Path):
        yield store
        return
    async with s3client.connect(store) as client:
        bucket = S3Store(client, store)
        await bucket.check()
        yield bucket


def _pins(store: Path | S3Store) -> keep.Pins:
    return keep.DirectoryPins(store) if isinstance(store, Path) else keep.BucketPins(store)


# -- migrate -----------------------------------------------------------------------------------------------

def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pod", metavar="POD")
    parser.add_argument("--to", required=True, metavar="NODE", help="the node to move it to")
    parser.add_argument("--retain-original", action="store_true", help="keep the source pod after the restore")
    _wait(parser, "default when stdout is a terminal")


async def migrate(args: argparse.Namespace, session: Session) -> Exit:
    """Create the PodMigration the ``lpm.my.domain/migrate-to`` annotation would make the source's agent
    create (``watcher.cluster.migration.reconcile_annotated_pod``): named after the pod's UID, so a second
    ``migrate`` of the same pod finds the first one's instead of starting another. The body is built here
    rather than shared with the agent (whose modules this plugin leaves alone); tests/realstack/test_kubectl.py
    holds the two to the same object."""
    namespace = _namespace(args, session)
    pod = await session.kube.get(pod_path(namespace, args.pod))
    uid = meta(pod)["uid"]
    name = migration_name(args.pod, uid)
    spec: dict[str, Any] = {"podName": args.pod, "targetNode": args.to}
    if args.retain_original:
        spec["retainOriginalPod"] = True
    body = {"apiVersion": API_VERSION, "kind": "PodMigration",
            "metadata": {"name": name, "namespace": namespace, "labels": {f"{MIGRATION_LABEL}-pod-uid": uid}},
            "spec": spec}
    # From the create on, a Ctrl-C may land after the API server made the migration: say how to follow it,
    # wherever the interrupt lands (in the create's answer, or while following).
    with _goes_on_when_interrupted(namespace, name):
        try:
            migration = await session.kube.create(lpm_path("PodMigration", namespace), body)
            print(f"podmigration.lpm.my.domain/{name} created", flush=True)
        except Conflict:
            migration = await session.kube.get(lpm_path("PodMigration", namespace, name))
            if migration.get("spec") != spec | {"retainOriginalPod": bool(args.retain_original)}:
                raise LpmError(f"pod {namespace}/{args.pod} has a migration already, {name}, to "
                               f"{migration.get('spec', {}).get('targetNode')}; delete it to start another") from None
            print(f"podmigration.lpm.my.domain/{name} exists already", flush=True)
        if not _waiting(args):
            return Exit.OK
        return await _follow(session, namespace, name, migration, args)


@contextlib.contextmanager
def _goes_on_when_interrupted(namespace: str, name: str) -> Iterator[None]:
    """Ctrl-C (asyncio.run cancels the command's task, then raises KeyboardInterrupt): the migration goes on
    without us; say how to follow it again."""
    try:
        yield
    except asyncio.CancelledError:
        print(f"\nkubectl-lpm: stopped following; migration {namespace}/{name} goes on: follow it with "
              f"`{_again(namespace, name)}`", file=sys.stderr)
        raise


def _again(namespace: str, name: str) -> str:
    return f"kubectl lpm status {name} -n {namespace} --wait"


# -- status ------------------------------------------------------------------------------------------------

def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("migration", metavar="MIGRATION", nargs="?", help="one PodMigration (default: all)")
    _output(parser)
    _wait(parser, "only with MIGRATION")


async def status(args: argparse.Namespace, session: Session) -> Exit:
    if args.wait and not args.migration:
        raise UsageError("--wait follows one migration: name it")
    namespace = _namespace(args, session)
    if args.migration:
        migration = await session.kube.get(lpm_path("PodMigration", namespace, args.migration))
        if args.wait:
            with _goes_on_when_interrupted(namespace, args.migration):
                return await _follow(session, namespace, args.migration, migration, args)
        migrations = [migration]
    else:
        listed = await session.kube.get(lpm_path("PodMigration", None if _all(args) else namespace))
        migrations = sorted(listed.get("items") or [], key=lambda m: (meta(m).get("namespace", ""),
                                                                        meta(m).get("creationTimestamp", "")))
        if not migrations and args.output is None:
            print(f"No migrations found{'' if _all(args) else f' in {namespace} namespace'}.", file=sys.stderr)
            return Exit.OK
    sys.stdout.write(views.migration_table(migrations, _format(args), _all(args), datetime.now(UTC)))
    return Exit.OK


async def _follow(session: Session, namespace: str, name: str, migration: dict[str, Any],
                  args: argparse.Namespace) -> Exit:
    display = Display(sys.stdout, sys.stdout.isatty())
    try:
        async with asyncio.timeout(args.timeout):
            state = await follow(session.kube, namespace, name, display, meta(migration).get("creationTimestamp"))
    except TimeoutError:
        print(f"kubectl-lpm: migration {namespace}/{name} did not end within {args.timeout:g}s; it goes on: "
              f"follow it with `{_again(namespace, name)}`", file=sys.stderr)
        return Exit.TIMEOUT
    result = progress.outcome(state)
    if result is Outcome.DELETED or state is None:
        print(f"kubectl-lpm: migration {namespace}/{name} was deleted", file=sys.stderr)
        return Exit.FAILED
    if result is Outcome.FAILED:
        print(f"kubectl-lpm: migration {namespace}/{name} failed: {state.message or '(no reason given)'}",
              file=sys.stderr)
        return Exit.FAILED
    for line in progress.summary(state):
        print(line)
    return Exit.OK


# -- ls, pin, unpin ----------------------------------------------------------------------------------------

def _ls_arguments(parser: argparse.ArgumentParser) -> None:
    _output(parser)
    _store(parser, "to show which are pinned")


async def ls(args: argparse.Namespace, session: Session) -> Exit:
    namespace = _namespace(args, session)
    pods = (await session.kube.get(lpm_path("PodCheckpointContent"))).get("items") or []
    containers = (await session.kube.get(lpm_path("ContainerCheckpointContent"))).get("items") or []
    rows = [row for row in views.checkpoints(pods, containers) if _all(args) or row.namespace == namespace]
    if args.store is not None:
        async with _shared(args.store) as store:
            pins = _pins(store)
            rows = [await _with_pin(row, pins) for row in rows]
    if not rows and args.output is None:
        print(f"No checkpoints found{'' if _all(args) else f' in {namespace} namespace'}.", file=sys.stderr)
        return Exit.OK
    sys.stdout.write(views.checkpoint_table(rows, _format(args), _all(args), datetime.now(UTC)))
    return Exit.OK


async def _with_pin(row: views.Checkpoint, pins: keep.Pins) -> views.Checkpoint:
    if row.directory is None:
        return row
    try:
        return replace(row, pinned=await pins.is_pinned(row.directory))
    except LpmError as err:  # gone from the store, or unreadable: unknown, said once per row
        print(f"kubectl-lpm: {row.name}: {err}", file=sys.stderr)
        return row


def _pin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a name from `kubectl lpm ls`")
    _store(parser, "required")


async def pin(args: argparse.Namespace, session: Session) -> Exit:
    store, directory = await _checkpoint_directory(args, session)
    async with _shared(store) as opened:
        done = await _pins(opened).pin(directory)
    print(f"{args.checkpoint} {'pinned' if done else 'was pinned already'}")
    return Exit.OK


async def unpin(args: argparse.Namespace, session: Session) -> Exit:
    store, directory = await _checkpoint_directory(args, session)
    async with _shared(store) as opened:
        done = await _pins(opened).unpin(directory)
    print(f"{args.checkpoint} {'unpinned' if done else 'was not pinned'}")
    return Exit.OK


async def _checkpoint_directory(args: argparse.Namespace,
                                session: Session) -> tuple[Path | S3Location, keep.Directory]:
    store, row = await _stored_checkpoint(args, session, "pins live in the shared store", "pinned")
    assert row.directory is not None
    return store, row.directory


async def _stored_checkpoint(args: argparse.Namespace, session: Session, why: str,
                             done: str) -> tuple[Path | S3Location, views.Checkpoint]:
    """The checkpoint content object ``args.checkpoint`` as ``ls`` shows it, with a directory in the shared store."""
    if args.store is None:
        raise UsageError(f"{why}: mount it and pass --store DIR, or pass --store s3://BUCKET/PREFIX "
                         "(or set LPM_STORE)")
    row, _ = await _content(args.checkpoint, session)
    if row.directory is None:
        raise LpmError(f"checkpoint {args.checkpoint} is held in node {row.node}'s local store, not the "
                       f"shared one: it can be {done} once the agent has moved it there")
    return args.store, row


async def _content(checkpoint: str, session: Session) -> tuple[views.Checkpoint, list[dict[str, Any]]]:
    """The checkpoint's row and its artifacts (one per container: name, URI, SHA-256) as the API has them."""
    for kind in ("PodCheckpointContent", "ContainerCheckpointContent"):
        try:
            obj = await session.kube.get(lpm_path(kind, name=checkpoint))
        except NotFound:
            continue
        spec = obj.get("spec", {})
        if kind == "PodCheckpointContent":
            [row] = views.checkpoints([obj], [])
            return row, list(spec.get("containers") or [])
        [row] = views.checkpoints([], [obj])
        return row, [spec]
    raise LpmError(f"checkpoint {checkpoint} not found (no PodCheckpointContent or ContainerCheckpointContent "
                   "of that name)")


# -- get ---------------------------------------------------------------------------------------------------

def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a name from `kubectl lpm ls`")
    parser.add_argument("-c", "--container", help="whose archive (needed when the checkpoint holds several)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                        help="where the archive goes: a new file, or a regular file it replaces")
    _store(parser, "required")
    parser.add_argument("--encryption-keys", type=Path, default=os.environ.get("LPM_ENCRYPTION_KEYS") or None,
                        help="the key-encryption keys sealed dumps need (env LPM_ENCRYPTION_KEYS)")


async def get(args: argparse.Namespace, session: Session) -> Exit:
    """Write one container's original checkpoint archive, verified against the SHA-256 the API recorded for
    it when it was announced (so a store rewritten behind the API's back is refused) and the store's own."""
    if args.store is None:
        raise UsageError("archives live in the shared store: mount it and pass --store DIR, or pass --store "
                         "s3://BUCKET/PREFIX (or set LPM_STORE)")
    row, artifacts = await _content(args.checkpoint, session)
    by_name = {a.get("containerName", ""): a for a in artifacts}
    name = args.container or (next(iter(by_name)) if len(by_name) == 1 else None)
    if name is None:
        raise UsageError(f"checkpoint {args.checkpoint} holds containers {', '.join(sorted(by_name))}: name one "
                         "with -c")
    if name not in by_name:
        raise LpmError(f"checkpoint {args.checkpoint} has no container {name} (it holds "
                       f"{', '.join(sorted(by_name))})")
    artifact = by_name[name]
    if not str(artifact.get("artifactURI", "")).startswith("shared://"):
        raise LpmError(f"checkpoint {args.checkpoint} is held in node {row.node}'s local store, not the shared one: "
                       "it can be read once the agent has moved it there")
    keys = keyring.load(args.encryption_keys, None) if args.encryption_keys is not None else None
    settings = CompressionSettings(encryption=keys)
    async with _shared(args.store) as store:
        if isinstance(store, Path):
            manifest = await asyncio.to_thread(archive.write, store, artifact, args.output, settings)
        else:
            manifest = await archive.write_from_bucket(store, artifact, args.output, settings)
    print(f"{args.output}: container {name} of {args.checkpoint}, {manifest.uncompressed_size} bytes, SHA-256 verified")
    return Exit.OK


# -- inspect -------------------------------------------------------------------------------------------------

def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a PodCheckpointContent or ContainerCheckpointContent name (from ls)")
    _store(parser, "required")
    # No argparse choices: completion offers one set of values per flag name, and -o's are ls's and status's.
    parser.add_argument("-o", "--output", default="text", help="text (the default) or json")
    parser.add_argument("--encryption-keys", type=Path, default=os.environ.get("LPM_ENCRYPTION_KEYS") or None,
                        help="the key-encryption keys, for a sealed checkpoint (env LPM_ENCRYPTION_KEYS)")
    parser.add_argument("--env", action="store_true",
                        help="also show the processes' environment variables (they often hold secrets)")
    parser.add_argument("--memory", type=int, metavar="PID", default=None,
                        help="also show this process's memory contents (secrets too), up to --memory-limit")
    parser.add_argument("--memory-limit", type=int, default=1 << 20, metavar="BYTES")


async def inspect(args: argparse.Namespace, session: Session) -> Exit:
    """``lpm inspect`` on the checkpoint a content object names: read from the shared store, as the CLI does."""
    if args.output not in ("text", "json"):
        raise UsageError(f"inspect prints text or json, not {args.output!r}")
    store, row = await _stored_checkpoint(args, session, "checkpoints are read from the shared store", "inspected")
    assert row.directory is not None
    if isinstance(store, S3Location):
        raise UsageError(f"inspect reads a mounted store, not {store}: write the archive with `kubectl lpm get "
                         f"{args.checkpoint} -o FILE --store {store}`, then run `lpm inspect FILE`")
    options = inspect_reader.Options(environment=args.env, memory_pid=args.memory, memory_limit=args.memory_limit)
    keys = keyring.load(args.encryption_keys) if args.encryption_keys is not None else None
    uid, checkpoint_id = row.directory

    def read() -> list[Inspection]:
        root = fsio.open_root(store.resolve(), create=False)
        try:
            refs = [ref for container in row.containers for ref in
                    inspect_sources.find_stored(root, f"{uid}/{checkpoint_id}/{container}", str(store))]
            return [inspect_sources.inspect_stored(root, ref, CompressionSettings(encryption=keys), options)
                    for ref in refs]
        finally:
            os.close(root)

    inspections = await asyncio.to_thread(read)
    print(inspect_render.to_json(inspections) if args.output == "json" else inspect_render.to_text(inspections),
          end="\n" if args.output == "json" else "")
    return Exit.OK


# -- the table ---------------------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "migrate": Command("move a running pod to another node", _migrate_arguments, migrate),
    "status": Command("show migrations, or follow one (--wait)", _status_arguments, status),
    "ls": Command("list checkpoints", _ls_arguments, ls),
    "pin": Command("keep a checkpoint from the collector", _pin_arguments, pin),
    "unpin": Command("let the collector's rules apply to a checkpoint again", _pin_arguments, unpin),
    "get": Command("write a checkpoint's original archive, verified", _get_arguments, get),
    "inspect": Command("what a checkpoint holds: processes, memory, files, sockets (established TCP flagged), "
                       "mounts, root-filesystem diff", _inspect_arguments, inspect),
}


def _namespace(args: argparse.Namespace, session: Session) -> str:
    given: str | None = getattr(args, "namespace", None)
    return given or session.namespace


def _all(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "all_namespaces", False))


def _format(args: argparse.Namespace) -> views.Output:
    return views.Output(args.output) if args.output else views.Output.TABLE


def _waiting(args: argparse.Namespace) -> bool:
    return bool(sys.stdout.isatty() if args.wait is None else args.wait)
