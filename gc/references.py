"""Does an lpm API object still reference a checkpoint? Yes, no, or unknown — never a guess.

A checkpoint is referenced by a ContainerCheckpointContent whose ``artifactURI`` points into
it, a PodCheckpointContent naming its pod UID and checkpoint ID (or an artifact URI in it),
and by an unfinished PodMigration of its pod (namespace and pod name: a migration in flight
may be about to announce any of that pod's checkpoints).

Content object names are not derived from checkpoints, so there is nothing to GET by name.
Instead each pass lists the three kinds completely (paginated): an object absent from a
complete list of every kind is a positive "not found". Any failure — a connection error, a
timeout, 403, 404 for a kind whose CRD is missing, 410 when a continue token expires — makes
the answer UNKNOWN for every checkpoint, and the collector keeps them all (checkpoint-restore-
operator deletes everything when its lookup errors; this is the opposite, on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from lpm_gc.entries import Entry
from watcher.errors import UnsafeNameError
from watcher.kube.client import Kube
from watcher.store import layout

GROUP = "lpm.my.domain"
VERSION = "v1"
_PAGE = 500
_TIMEOUT = 30  # seconds per request: a hung API server is an unknown answer, not a hung pass
_FINISHED = frozenset({"Succeeded", "Failed"})


class Reference(Enum):
    REFERENCED = "referenced"
    UNREFERENCED = "unreferenced"
    UNKNOWN = "unknown"


class References(Protocol):
    def of(self, entry: Entry) -> Reference: ...


class NoReferences:
    """Standalone: there is no API, so no object can reference a checkpoint."""

    def of(self, entry: Entry) -> Reference:
        return Reference.UNREFERENCED


@dataclass(frozen=True)
class Unknown:
    """The API did not give a complete answer; ``why`` says what failed."""

    why: str

    def of(self, entry: Entry) -> Reference:
        return Reference.UNKNOWN


@dataclass(frozen=True)
class Snapshot:
    checkpoints: frozenset[tuple[str, str]]
    """(pod UID, checkpoint ID) named by a content object."""
    migrating: frozenset[tuple[str, str]]
    """(namespace, pod name) of every unfinished PodMigration."""

    def of(self, entry: Entry) -> Reference:
        if (entry.parent, entry.name) in self.checkpoints or (entry.namespace, entry.pod_name) in self.migrating:
            return Reference.REFERENCED
        return Reference.UNREFERENCED


Object = dict[str, Any]


def snapshot_of(container_contents: Iterable[Object], pod_contents: Iterable[Object],
                migrations: Iterable[Object]) -> Snapshot:
    """The references held by complete lists of the three kinds (pure; raw API objects in)."""
    checkpoints: set[tuple[str, str]] = set()
    for obj in container_contents:
        _add_uri(checkpoints, _spec(obj).get("artifactURI"))
    for obj in pod_contents:
        spec = _spec(obj)
        checkpoints.add((str(spec.get("podUID")), str(spec.get("checkpointID"))))
        for container in spec.get("containers") or []:
            if isinstance(container, dict):
                _add_uri(checkpoints, container.get("artifactURI"))
    migrating = {
        (str(obj.get("metadata", {}).get("namespace")), str(_spec(obj).get("podName")))
        for obj in migrations
        if (obj.get("status") or {}).get("phase") not in _FINISHED
    }
    return Snapshot(frozenset(checkpoints), frozenset(migrating))


def _spec(obj: Object) -> Object:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _add_uri(into: set[tuple[str, str]], uri: object) -> None:
    # file:// artifacts live on a node, not in the store; a malformed URI references nothing in it.
    if isinstance(uri, str) and uri.startswith(layout.URI_SCHEME):
        try:
            ref = layout.parse_uri(uri)
        except UnsafeNameError:
            return
        into.add((ref.pod_uid, ref.checkpoint_id))


async def lookup(kube: Kube) -> Snapshot | Unknown:
    """List every ContainerCheckpointContent, PodCheckpointContent and PodMigration.

    Every exception is an UNKNOWN answer: whatever went wrong, it is not evidence that an object is absent.
    """
    try:
        return snapshot_of(await _list_all(kube, "containercheckpointcontents"),
                           await _list_all(kube, "podcheckpointcontents"),
                           await _list_all(kube, "podmigrations"))
    except Exception as err:  # see the docstring: any failure means "unknown"  # noqa: BLE001
        # An API error (watcher.kube.client's) names the method, path, status and the server's message.
        return Unknown(f"listing lpm objects failed: {err.__class__.__name__}: {err}")


async def _list_all(kube: Kube, plural: str) -> list[Object]:
    items: list[Object] = []
    token: str | None = None
    while True:
        query: dict[str, Any] = {"limit": _PAGE}
        if token:
            query["continue"] = token
        page = await kube.get(f"/apis/{GROUP}/{VERSION}/{plural}", query, timeout=_TIMEOUT)
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items
