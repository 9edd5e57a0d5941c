"""What the collector knows about one thing in the store, in as few bytes as it can.

A pass holds one ``Entry`` per checkpoint (100,000 of them in the scale bench), so an entry
is a tuple, not an object with a ``__dict__``, and strings shared between entries (pod UIDs,
namespaces, pod names, container lists) are one object each (see ``scanner``). Manifests are
read, reduced to the fields below and dropped.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from watcher.store import layout

_STAGING = "staging"  # <store>/.ingest/<node>/staging, the agents' own (watcher.store.commit)


class Kind(Enum):
    COMPLETE = "complete"
    """A checkpoint with its completion marker: readers see it."""
    INCOMPLETE = "incomplete"
    """A checkpoint directory without a marker: a write in progress, or an abandoned one."""
    EMPTY_POD = "empty-pod"
    """A pod directory that holds no checkpoint."""
    STAGING = "staging"
    """A file in a node's ingest staging directory: a dump on its way into the store."""
    UPLOAD = "upload"
    """An S3 store's incomplete multipart upload (docs/s3.md): a dump on its way in, or a writer's remains."""


class Entry(NamedTuple):
    """One name in one directory of the store, and what the planner needs to judge it.

    ``parent``/``name`` by kind: a checkpoint is ``<parent=pod UID>/<name=checkpoint ID>``; an
    empty pod directory is ``<name=pod UID>`` (``parent`` empty); a staging file is
    ``.ingest/<parent=node>/staging/<name>``; an S3 store's incomplete upload is ``<parent=key>`` with
    ``name`` its upload ID.
    """

    kind: Kind
    parent: str
    name: str
    namespace: str = ""
    pod_name: str = ""
    containers: tuple[str, ...] = ()
    created: float = 0.0
    """Newest manifest ``creationTime`` of a complete checkpoint, seconds since the epoch."""
    modified: float = 0.0
    """Newest mtime of the entry and everything under it, seconds since the epoch."""
    size: int = 0
    """Bytes of every regular file under the entry (what deleting it frees)."""
    pinned: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        """The entry's path below the store root, one directory at a time."""
        if self.kind is Kind.EMPTY_POD:
            return (self.name,)
        if self.kind is Kind.STAGING:
            return (layout.INGEST_LEDGER_DIR, self.parent, _STAGING, self.name)
        if self.kind is Kind.UPLOAD:
            return (self.parent,)
        return (self.parent, self.name)

    @property
    def path(self) -> str:
        return "/".join(self.segments)
