"""The store's names and addresses, as pure functions (ARCHITECTURE.md, "Store layout").

    <store>/<podUID>/<checkpointID>/<container>/dump.tar.zst
    <store>/<podUID>/<checkpointID>/<container>/manifest.json
    <store>/<podUID>/<checkpointID>/.checkpoint-complete

Every segment that ends up in a path passes one of the validators below first, so no
identity read from an archive or URI taken from the API can name a place outside the store:
``..``, ``/``, NUL, newlines, empty and absolute segments are refused by construction (the
patterns admit none of them). Symlinks are the filesystem's business: see ``fsio``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import PurePath

from watcher.errors import UnsafeNameError

DUMP_FILE = "dump.tar.zst"
MANIFEST_FILE = "manifest.json"
MARKER_FILE = ".checkpoint-complete"
# A checkpoint directory holding this (any content, any type) is never collected: the operator's pin, and
# the mover's while a checkpoint travels from a node's local store (watcher.store.transfer).
KEEP_FILE = ".keep"
URI_SCHEME = "shared://"
FILE_SCHEME = "file://"
# Names that start with a dot are never pod UIDs, checkpoint IDs or containers, so the
# store's own bookkeeping lives under them and every reader skips them.
INGEST_LEDGER_DIR = ".ingest"
COLLECTOR_DIR = ".gc"

# A pod UID is a UUID in practice; admit what a path segment can safely hold.
_POD_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# Container names and namespaces are DNS-1123 labels (Kubernetes validates them).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Pod names are DNS-1123 subdomains. They never become path segments, but they are
# printed and matched against file names, so they get the same strictness.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_CHECKPOINT_ID = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{8})$")
_NODE_NAME = _DNS_SUBDOMAIN


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None or ".." in value:
        shown = repr(value) if not isinstance(value, (str, list, dict)) or len(value) <= 80 else \
            f"{repr(value)[:80]}... ({len(value)} long)"  # read from a file: it may be a megabyte
        raise UnsafeNameError(f"unsafe {kind} {shown}: must be {rule}")
    return value


def pod_uid(value: object) -> str:
    return _check("pod UID", value, _POD_UID, "letters, digits, '-' or '_' (at most 128)")


def container_name(value: object) -> str:
    return _check("container name", value, _DNS_LABEL, "a DNS-1123 label")


def namespace(value: object) -> str:
    return _check("namespace", value, _DNS_LABEL, "a DNS-1123 label")


def pod_name(value: object) -> str:
    return _check("pod name", value, _DNS_SUBDOMAIN, "a DNS-1123 subdomain")


def node_name(value: object) -> str:
    return _check("node name", value, _NODE_NAME, "a DNS-1123 subdomain")


def checkpoint_id(value: object) -> str:
    return _check("checkpoint ID", value, _CHECKPOINT_ID, "YYYYMMDDTHHMMSSZ-xxxxxxxx")


def make_checkpoint_id(uid: str, archives: Iterable[tuple[str, str]], taken_at: datetime) -> str:
    """The ID of the checkpoint made of these kubelet archives (name, SHA-256 of its bytes) of pod ``uid``.

    Deterministic in (pod UID, archive names and contents), so re-ingesting the same archives after a
    crash or restart lands on the same directory instead of a duplicate. The contents count because
    a name does not identify a checkpoint: the kubelet names archives to the second and its runtime
    overwrites one of the same name, so two checkpoints of a container within one second share a name
    (the second must not be taken for the first). The time prefix (UTC, second precision) makes IDs
    sort by age for people and the collector.
    """
    pairs = sorted(set(archives))
    if not pairs:
        raise ValueError("a checkpoint needs at least one archive")
    digest = hashlib.sha256("\0".join([pod_uid(uid), *(f"{name}\0{sha}" for name, sha in pairs)]).encode())
    stamp = taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{digest.hexdigest()[:8]}"


class StorageType(str, Enum):
    """Where a checkpoint is held: the API's ``storageType``."""

    SHARED = "shared"
    """The shared store every node mounts: ``shared://`` URIs, restorable anywhere."""
    LOCAL = "local"
    """The taking node's local store, while the shared one is unavailable: ``file://`` URIs."""


@dataclass(frozen=True)
class ArtifactRef:
    """One container's dump in the store, addressed by validated segments."""

    pod_uid: str
    checkpoint_id: str
    container: str

    def __post_init__(self) -> None:
        pod_uid(self.pod_uid)
        checkpoint_id(self.checkpoint_id)
        container_name(self.container)

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}{self.pod_uid}/{self.checkpoint_id}/{self.container}/{DUMP_FILE}"

    @property
    def segments(self) -> tuple[str, str, str]:
        return (self.pod_uid, self.checkpoint_id, self.container)

    def file_uri(self, local_store: PurePath) -> str:
        """``file://<local store>/<podUID>/<checkpointID>/<container>/dump.tar.zst``.

        Not percent-encoded: every segment is validated plain text, and ``parse_local_uri``
        is this function's exact inverse (it refuses anything it would not have made).
        """
        return f"{FILE_SCHEME}{_local_root(local_store)}/{'/'.join(self.segments)}/{DUMP_FILE}"


def _local_root(local_store: PurePath) -> str:
    root = str(local_store)
    if not local_store.is_absolute() or ".." in local_store.parts:
        raise UnsafeNameError(f"local store {root!r}: must be an absolute, normalised path")
    return root.rstrip("/")


def parse_uri(uri: str) -> ArtifactRef:
    """Parse ``shared://<podUID>/<checkpointID>/<container>/dump.tar.zst``.

    Anything else is refused with the reason: another scheme, extra or missing segments,
    or a segment that could walk out of the store. ``file://`` URIs name a node's local
    store (``parse_local_uri``) or a legacy kubelet archive (resolved by ingesting it).
    """
    if not isinstance(uri, str) or "\0" in uri or "\n" in uri:
        raise UnsafeNameError(f"unsafe artifact URI {uri!r}: contains NUL or a newline")
    if not uri.startswith(URI_SCHEME):
        scheme = uri.split("://", 1)[0] + "://" if "://" in uri else "(none)"
        raise UnsafeNameError(
            f"unsupported artifact URI {uri!r}: scheme {scheme} is not {URI_SCHEME}"
        )
    return _segments(uri, uri[len(URI_SCHEME) :], URI_SCHEME)


def _segments(uri: str, rest: str, prefix: str) -> ArtifactRef:
    parts = rest.split("/")
    if len(parts) != 4 or parts[3] != DUMP_FILE:
        raise UnsafeNameError(
            f"malformed artifact URI {uri!r}: expected "
            f"{prefix}<podUID>/<checkpointID>/<container>/{DUMP_FILE}"
        )
    try:
        return ArtifactRef(parts[0], parts[1], parts[2])
    except UnsafeNameError as err:
        raise UnsafeNameError(f"unsafe artifact URI {uri!r}: {err}") from None


def parse_local_uri(uri: str, local_store: PurePath) -> ArtifactRef:
    """Parse ``file://<local store>/<podUID>/<checkpointID>/<container>/dump.tar.zst``.

    Only a path in THIS node's local store is accepted; any other ``file://`` path (a
    kubelet archive, ``/etc/shadow``, another store) is refused, as are the same unsafe
    segments ``parse_uri`` refuses.
    """
    if not isinstance(uri, str) or "\0" in uri or "\n" in uri:
        raise UnsafeNameError(f"unsafe artifact URI {uri!r}: contains NUL or a newline")
    prefix = f"{FILE_SCHEME}{_local_root(local_store)}/"
    if not uri.startswith(prefix):
        raise UnsafeNameError(f"artifact URI {uri!r} is not in the local store {local_store}")
    return _segments(uri, uri[len(prefix) :], prefix)


def parse_location(uri: str, local_store: PurePath | None) -> tuple[StorageType, ArtifactRef]:
    """Which store holds ``uri`` and where in it: ``shared://`` anywhere, ``file://`` in the local store."""
    if isinstance(uri, str) and uri.startswith(FILE_SCHEME) and local_store is not None:
        return StorageType.LOCAL, parse_local_uri(uri, local_store)
    return StorageType.SHARED, parse_uri(uri)
