"""The fallback signal: completion markers in the store, polled.

The API watch (PodMigration reaching ``CheckpointComplete``) is the primary way a destination
agent learns of a checkpoint for its node. A missed or late event must not strand a migration,
and inotify cannot stand in for it: it does not see writes made by another NFS client. So the
store is polled — every ``interval`` seconds, the ``.checkpoint-complete`` markers are read (the
markers only, not every manifest) and each one naming this node as ``targetNode`` that has not
been acted on is traced back to its PodMigration, which is then poked (handed to the same
worker the watch feeds, which re-reads it and decides: a poke never acts by itself).

A marker counts as acted on once its PodMigration is past the checkpoint phase; until then it
is looked at again every round, for at most ``patience`` seconds (a checkpoint ingested with
``--target-node`` but no PodMigration, or one whose announcement failed, is given up on, once,
with a log line).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.cluster.objects import MIGRATION_LABEL, MigrationPhase, lpm_path, meta
from watcher.errors import LpmError, NotFound
from watcher.kube.client import Kube
from watcher.store import fsio, layout
from watcher.store.commit import read_marker
from watcher.store.manifest import Marker

log = logging.getLogger(__name__)

_PAST_CHECKPOINT = {MigrationPhase.CHECKPOINT_COMPLETE.value, MigrationPhase.RESTORING.value,
                    MigrationPhase.SUCCEEDED.value, MigrationPhase.FAILED.value}
_ACTIVE = {MigrationPhase.CHECKPOINT_COMPLETE.value, MigrationPhase.RESTORING.value}


@dataclass
class PollState:
    acted: set[str] = field(default_factory=set)
    """Checkpoint IDs whose PodMigration was found past the checkpoint phase (or given up on)."""
    first_seen: dict[str, float] = field(default_factory=dict)
    """Checkpoint ID -> monotonic time its marker was first seen unacted on."""


@dataclass(frozen=True)
class Plan:
    look_up: tuple[Marker, ...]
    """Markers for this node not yet acted on: find their PodMigration."""
    give_up: tuple[Marker, ...]
    """Markers looked up for longer than the patience allows: stop looking."""
    forget: frozenset[str]
    """Checkpoint IDs in the state whose marker is gone (collected): drop them."""


def plan(markers: Iterable[Marker], node: str, state: PollState, now: float, patience: float) -> Plan:
    """Which markers to trace back to a PodMigration this round (pure)."""
    look_up, give_up, present = [], [], set()
    for marker in markers:
        present.add(marker.checkpoint_id)
        if marker.target_node != node or marker.checkpoint_id in state.acted:
            continue
        if now - state.first_seen.get(marker.checkpoint_id, now) > patience:
            give_up.append(marker)
        else:
            look_up.append(marker)
    forget = frozenset((state.acted | set(state.first_seen)) - present)
    return Plan(tuple(look_up), tuple(give_up), forget)


def read_markers(root_fd: int) -> Iterator[Marker]:
    """Every readable completion marker in the store; an unreadable entry is logged and passed over."""
    for uid in fsio.list_dirs(root_fd):
        try:
            pod_fd = fsio.open_dir(root_fd, [layout.pod_uid(uid)], create=False, where="store")
        except LpmError as err:
            log.warning("store entry passed over", extra={"fields": {"path": uid, "reason": str(err)}})
            continue
        try:
            for cid in fsio.list_dirs(pod_fd):
                try:
                    fd = fsio.open_dir(pod_fd, [layout.checkpoint_id(cid)], create=False, where=f"{uid}/{cid}")
                except LpmError as err:
                    log.warning("store entry passed over", extra={"fields": {"path": f"{uid}/{cid}",
                                                                             "reason": str(err)}})
                    continue
                try:
                    if fsio.is_regular(fd, layout.MARKER_FILE):
                        yield read_marker(fd, f"checkpoint {uid}/{cid}")
                except LpmError as err:
                    log.warning("store entry passed over", extra={"fields": {"path": f"{uid}/{cid}",
                                                                             "reason": str(err)}})
                finally:
                    os.close(fd)
        finally:
            os.close(pod_fd)


async def migration_of(kube: Kube, node: str, marker: Marker,
                       contents: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The PodMigration that made this checkpoint for this node, or None if the API does not (yet) say.

    Traced as the checkpoint was announced: PodCheckpointContent (``checkpointID``) ->
    its PodCheckpoint (``podCheckpointRef``) -> the PodMigration named by its migration label.
    """
    for content in contents:
        spec = content.get("spec", {})
        if spec.get("checkpointID") != marker.checkpoint_id or spec.get("podUID") != marker.pod_uid:
            continue
        ref = spec.get("podCheckpointRef", {})
        try:
            checkpoint = await kube.get(lpm_path("PodCheckpoint", ref["namespace"], ref["name"]))
            owner = meta(checkpoint).get("labels", {}).get(MIGRATION_LABEL)
            if not owner:
                continue  # a PodCheckpoint asked for by itself, not by a migration
            migration = await kube.get(lpm_path("PodMigration", ref["namespace"], owner))
        except (NotFound, KeyError):
            continue
        if migration.get("spec", {}).get("targetNode") == node:
            return migration
    return None


Poke = Callable[[str, dict[str, Any]], None]


Scan = Callable[[], Awaitable[list[Marker]]]
"""The store's readable completion markers: ``watcher.restore.source.Source.markers``, a directory or a bucket."""


async def poll_round(kube: Kube, node: str, scan: Scan, state: PollState, poke: Poke, patience: float) -> None:
    """One look at the store: poke the PodMigration of every new marker for this node."""
    markers = await scan()
    now = time.monotonic()
    todo = plan(markers, node, state, now, patience)
    state.acted -= todo.forget
    for cid in todo.forget:
        state.first_seen.pop(cid, None)
    for marker in todo.give_up:
        log.warning("completion marker for this node has no PodMigration; no longer looking", extra={"fields": {
            "checkpoint": f"{marker.pod_uid}/{marker.checkpoint_id}", "patienceSeconds": patience}})
        state.acted.add(marker.checkpoint_id)
        state.first_seen.pop(marker.checkpoint_id, None)
    if not todo.look_up:
        return
    contents = (await kube.get(lpm_path("PodCheckpointContent"))).get("items", [])
    for marker in todo.look_up:
        state.first_seen.setdefault(marker.checkpoint_id, now)
        migration = await migration_of(kube, node, marker, contents)
        phase = (migration or {}).get("status", {}).get("phase")
        if migration is None or phase not in _PAST_CHECKPOINT:
            continue  # not announced yet, or still checkpointing: look again next round
        if phase in _ACTIVE:
            log.info("completion marker pokes its migration", extra={"fields": {
                "checkpoint": f"{marker.pod_uid}/{marker.checkpoint_id}",
                "migration": f"{meta(migration)['namespace']}/{meta(migration)['name']}", "phase": phase}})
            poke("MODIFIED", {"metadata": {"namespace": meta(migration)["namespace"],
                                           "name": meta(migration)["name"]}})
        state.acted.add(marker.checkpoint_id)
        state.first_seen.pop(marker.checkpoint_id, None)


async def poll_markers(kube: Kube, node: str, scan: Scan, poke: Poke, stop: asyncio.Event,
                       interval: float, patience: float = 600.0) -> None:
    """Run ``poll_round`` every ``interval`` seconds until ``stop``; a failed round is logged and retried."""
    state = PollState()
    while not stop.is_set():
        try:
            await poll_round(kube, node, scan, state, poke, patience)
        except LpmError as err:  # the API or the store unavailable for a while: the next round retries
            log.warning("marker poll failed", extra={"fields": {"reason": str(err)}})
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
